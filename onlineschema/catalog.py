"""A snapshot of the live catalog: what the planner needs to know, read once at plan time.

The planner is a pure function of this snapshot, the server version and the requested
changes; nothing here is consulted again while a plan runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import dict_row

from .sql import checks
from .sql import views as view_sql

INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str  # format_type(), e.g. "character varying(20)"
    type_oid: int
    notnull: bool
    default: str | None
    identity: str  # '' or 'a' / 'd'
    generated: str  # '' or 's'
    typmod: int = -1
    collation: str | None = None  # a non-default collation, as SQL (quoted, qualified)
    #: the sequence the column owns (serial, identity): (schema, name, format_type of its type)
    sequence: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class IndexInfo:
    name: str
    valid: bool
    ready: bool
    unique: bool
    primary: bool
    columns: tuple[str | None, ...]  # None for an expression element
    partial: bool
    definition: str
    constraint: str | None  # the constraint this index backs, if any
    #: the partitioned index this one (of a partition) is attached to, if any
    parent_index: str | None = None


@dataclass(frozen=True)
class ConstraintInfo:
    name: str
    type: str  # 'c' check, 'f' foreign key, 'u' unique, 'p' primary key, 'n' not null, 'x'
    validated: bool
    definition: str
    columns: tuple[str, ...]
    ref_table: tuple[str, str] | None  # (schema, name) of the referenced table (FK)
    index: str | None
    ref_columns: tuple[str, ...] = ()  # the referenced columns (FK)
    #: inherited from a partitioned parent (or a parent table): dropped only there
    inherited: bool = False


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    oid: int
    relkind: str
    reltuples: float
    pages: int
    columns: dict[str, ColumnInfo]
    indexes: dict[str, IndexInfo]
    constraints: dict[str, ConstraintInfo]
    triggers: tuple[str, ...]
    primary_key: tuple[str, ...]
    referenced_by: tuple[tuple[str, str, str], ...]  # (schema, table, constraint) of FKs in
    #: objects that depend on the table or one of its columns and that dropping or
    #: replacing it would break: (column or '' for the table, catalog, description),
    #: e.g. ('total', 'pg_rewrite', 'rule _RETURN on view order_totals')
    dependents: tuple[tuple[str, str, str], ...] = ()
    #: whether the table had a row when the catalog was read (``SELECT EXISTS``), for
    #: the tables asked for in ``read_catalog(probe_rows=...)``; None: not looked at
    has_rows: bool | None = None
    #: plain views over a column, views on them included, recreated by a change of the
    #: column: (column, view schema, view name, depth: 1 = selects the column itself)
    views: tuple[tuple[str, str, str, int], ...] = ()
    #: what uses a column through a view or rule and cannot be recreated with it
    #: (materialized views, rules, triggers on those views, functions using them):
    #: (column, description)
    view_blockers: tuple[tuple[str, str], ...] = ()
    #: declarative partitioning (relkind 'p'): 'r' range, 'l' list, 'h' hash
    partition_strategy: str = ""
    #: the partition key's columns (None for an expression element)
    partition_key: tuple[str | None, ...] = ()
    #: the direct partitions (schema, name), in name order; each is read too
    partitions: tuple[tuple[str, str], ...] = ()
    #: the partitioned table this one is a partition of, and its bound
    parent: tuple[str, str] | None = None
    partition_bound: str = ""

    @property
    def partitioned(self) -> bool:
        return self.relkind == "p"


@dataclass
class Catalog:
    """What the planner knows of the database. Mutable only while being read."""

    server_version: int  # server_version_num, e.g. 180006
    search_path: tuple[str, ...]
    tables: dict[tuple[str, str], TableInfo] = field(default_factory=dict)
    #: (schema, index name) -> (schema, table name), for every index in the read schemas
    index_owner: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    #: function name -> provolatile ('i', 's', 'v'); the most volatile overload wins
    volatility: dict[str, str] = field(default_factory=dict)
    #: type text as written -> (format_type name, typtype, has domain constraints) or None
    types: dict[str, tuple[str, str, bool] | None] = field(default_factory=dict)
    #: relation names (schema, name) that exist but are not tables (views, sequences...)
    other_relations: set[tuple[str, str]] = field(default_factory=set)
    role_is_superuser: bool = False
    #: index access methods the server has (btree, hash, gin, ...)
    index_methods: frozenset[str] = frozenset()
    #: type text as written -> (type oid, typmod, format_type with the typmod)
    type_mods: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    #: (source type oid, target type oid) of binary-coercible casts (pg_cast castmethod 'b')
    binary_casts: set[tuple[int, int]] = field(default_factory=set)
    #: the session's TimeZone setting when the catalog was read
    timezone: str = ""
    #: (schema, name) of relations and of constraints whose names start with one of the
    #: ``name_prefixes`` read: what PostgreSQL's own naming of new objects must avoid
    relation_names: set[tuple[str, str]] = field(default_factory=set)
    constraint_names: set[tuple[str, str]] = field(default_factory=set)

    @property
    def major(self) -> int:
        return self.server_version // 10000

    def resolve_schema(self, schema: str | None, name: str) -> str:
        """The schema a table name resolves to: given, else the first on the search path
        that has it, else the first schema of the search path."""
        if schema:
            return schema
        for s in self.search_path:
            if (s, name) in self.tables:
                return s
        return self.search_path[0] if self.search_path else "public"

    def to_dict(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data (``Catalog.from_dict`` reads it back)."""
        return {
            "server_version": self.server_version,
            "search_path": list(self.search_path),
            "tables": [dataclasses.asdict(t) for _, t in sorted(self.tables.items())],
            "index_owner": sorted([*k, *v] for k, v in self.index_owner.items()),
            "volatility": dict(sorted(self.volatility.items())),
            "types": dict(sorted(self.types.items())),
            "other_relations": sorted(list(r) for r in self.other_relations),
            "role_is_superuser": self.role_is_superuser,
            "index_methods": sorted(self.index_methods),
            "type_mods": dict(sorted(self.type_mods.items())),
            "binary_casts": sorted(list(c) for c in self.binary_casts),
            "timezone": self.timezone,
            "relation_names": sorted(list(r) for r in self.relation_names),
            "constraint_names": sorted(list(r) for r in self.constraint_names),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Catalog:
        """Rebuild a snapshot from ``to_dict()`` output (after a JSON round trip): for
        planning without a server (golden plans, offline rendering)."""
        tables = {}
        for t in data["tables"]:
            info = TableInfo(
                **{
                    **_tuples(t),
                    "columns": {k: ColumnInfo(**_tuples(v)) for k, v in t["columns"].items()},
                    "indexes": {k: IndexInfo(**_tuples(v)) for k, v in t["indexes"].items()},
                    "constraints": {
                        k: ConstraintInfo(**_tuples(v)) for k, v in t["constraints"].items()
                    },
                }
            )
            tables[(info.schema, info.name)] = info
        return cls(
            server_version=data["server_version"],
            search_path=tuple(data["search_path"]),
            tables=tables,
            index_owner={(s, i): (ts, tn) for s, i, ts, tn in data["index_owner"]},
            volatility=dict(data["volatility"]),
            types={k: None if v is None else _tuple(v) for k, v in data["types"].items()},
            other_relations={(s, n) for s, n in data["other_relations"]},
            role_is_superuser=data["role_is_superuser"],
            index_methods=frozenset(data["index_methods"]),
            type_mods={k: _tuple(v) for k, v in data["type_mods"].items()},
            binary_casts={(s, t) for s, t in data["binary_casts"]},
            timezone=data["timezone"],
            relation_names={(s, n) for s, n in data.get("relation_names", ())},
            constraint_names={(s, n) for s, n in data.get("constraint_names", ())},
        )


def _tuple(value: Any) -> Any:
    """JSON lists back to the tuples the snapshot holds."""
    return tuple(_tuple(v) for v in value) if isinstance(value, list) else value


def _tuples(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _tuple(v) for k, v in fields.items()}


_TABLES_SQL = """
SELECT c.oid, n.nspname, c.relname, c.relkind, c.reltuples::float8 AS reltuples,
       c.relpages AS pages, coalesce(pg_get_expr(c.relpartbound, c.oid), '') AS bound,
       pt.partstrat::text AS strategy,
       ARRAY(SELECT a.attname FROM unnest(pt.partattrs::int2[]) WITH ORDINALITY k(attnum, ord)
             LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
             ORDER BY k.ord) AS partkey,
       (SELECT ARRAY[pn.nspname, p.relname] FROM pg_inherits i
          JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace
         WHERE i.inhrelid = c.oid AND c.relispartition) AS parent,
       ARRAY(SELECT ARRAY[kn.nspname, k.relname] FROM pg_inherits i
               JOIN pg_class k ON k.oid = i.inhrelid
               JOIN pg_namespace kn ON kn.oid = k.relnamespace
              WHERE i.inhparent = c.oid AND k.relispartition
              ORDER BY kn.nspname, k.relname) AS partitions
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_partitioned_table pt ON pt.partrelid = c.oid
WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%(schemas)s::text[], %(names)s::text[]))
"""

_COLUMNS_SQL = """
SELECT a.attrelid AS oid, a.attname, format_type(a.atttypid, a.atttypmod) AS type,
       a.atttypid::int AS type_oid, a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid) AS default, a.attidentity, a.attgenerated,
       a.atttypmod AS typmod,
       CASE WHEN a.attcollation <> 0 AND a.attcollation <> ty.typcollation
            THEN (SELECT quote_ident(cn.nspname) || '.' || quote_ident(co.collname)
                  FROM pg_collation co JOIN pg_namespace cn ON cn.oid = co.collnamespace
                  WHERE co.oid = a.attcollation) END AS collation
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
JOIN pg_type ty ON ty.oid = a.atttypid
WHERE a.attrelid = ANY(%(oids)s) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_INDEXES_SQL = """
SELECT i.indrelid AS oid, ic.relname AS name, i.indisvalid, i.indisready, i.indisunique,
       i.indisprimary, i.indpred IS NOT NULL AS partial, pg_get_indexdef(i.indexrelid) AS def,
       ARRAY(SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             ORDER BY k.ord) AS columns,
       (SELECT conname FROM pg_constraint WHERE conindid = i.indexrelid
          AND contype IN ('p', 'u', 'x') LIMIT 1) AS constraint,
       (SELECT p.relname FROM pg_inherits h JOIN pg_class p ON p.oid = h.inhparent
         WHERE h.inhrelid = i.indexrelid) AS parent_index
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = ANY(%(oids)s)
"""

_CONSTRAINTS_SQL = """
SELECT c.conrelid AS oid, c.conname, c.contype::text AS contype, c.convalidated,
       pg_get_constraintdef(c.oid) AS def,
       ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum
             ORDER BY k.ord) AS columns,
       rn.nspname AS ref_schema, r.relname AS ref_name, ic.relname AS index_name,
       ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum
             ORDER BY k.ord) AS ref_columns,
       (c.coninhcount > 0 OR c.conparentid <> 0) AS inherited
FROM pg_constraint c
LEFT JOIN pg_class r ON r.oid = c.confrelid
LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace
LEFT JOIN pg_class ic ON ic.oid = c.conindid AND c.contype IN ('p', 'u', 'x')
WHERE c.conrelid = ANY(%(oids)s)
"""

_REFERENCED_BY_SQL = """
SELECT c.confrelid AS oid, n.nspname, t.relname, c.conname
FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE c.contype = 'f' AND c.confrelid = ANY(%(oids)s)
"""

_SEQUENCES_SQL = """
SELECT d.refobjid AS oid, a.attname, sn.nspname, s.relname,
       format_type(sq.seqtypid, NULL) AS seqtype
FROM pg_depend d
JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_sequence sq ON sq.seqrelid = s.oid
JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = ANY(%(oids)s) AND d.deptype IN ('a', 'i')
"""

# What would stop a DROP (or make it take more with it): views and rules, policies,
# user triggers naming columns, functions with SQL bodies, generated columns and
# extended statistics. Indexes, constraints, defaults and owned sequences are read
# separately; internal objects (FK triggers) and the table's own row type are skipped.
_DEPENDENTS_SQL = """
SELECT d.refobjid AS oid, coalesce(a.attname, '') AS attname,
       d.classid::regclass::text AS catalog,
       pg_describe_object(d.classid, d.objid, d.objsubid) AS what
FROM pg_depend d
LEFT JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
  AND d.refobjsubid > 0
WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = ANY(%(oids)s)
  AND d.deptype IN ('n', 'a')
  AND (d.classid IN ('pg_rewrite'::regclass, 'pg_policy'::regclass, 'pg_proc'::regclass,
                     'pg_statistic_ext'::regclass, 'pg_publication_rel'::regclass)
       OR (d.classid = 'pg_trigger'::regclass AND d.refobjsubid > 0
           AND NOT (SELECT tgisinternal FROM pg_trigger WHERE oid = d.objid))
       OR (d.classid = 'pg_class'::regclass AND d.objid = d.refobjid AND d.objsubid > 0))
  AND NOT (d.classid = 'pg_rewrite'::regclass
           AND (SELECT ev_class FROM pg_rewrite WHERE oid = d.objid) = d.refobjid)
"""

_TRIGGERS_SQL = """
SELECT tgrelid AS oid, tgname FROM pg_trigger WHERE tgrelid = ANY(%(oids)s) AND NOT tgisinternal
"""

_INDEX_OWNERS_SQL = """
SELECT n.nspname, ic.relname AS index_name, t.relname AS table_name
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
WHERE (n.nspname, ic.relname) IN (SELECT * FROM unnest(%(schemas)s::text[], %(names)s::text[]))
"""

_VOLATILITY_SQL = """
SELECT lower(proname) AS name, max(provolatile::text) AS vol
FROM pg_proc WHERE lower(proname) = ANY(%(names)s) GROUP BY 1
"""


def read_catalog(
    conn: psycopg.Connection[Any],
    tables: Iterable[tuple[str | None, str]],
    *,
    index_names: Iterable[tuple[str | None, str]] = (),
    functions: Iterable[str] = (),
    types: Iterable[str] = (),
    probe_rows: Iterable[tuple[str | None, str]] = (),
    name_prefixes: Iterable[tuple[str | None, str]] = (),
) -> Catalog:
    """Read what the planner needs about ``tables`` (``(schema or None, name)`` pairs).

    Runs a handful of catalog queries in one read-only transaction; takes no table locks,
    except that ``probe_rows`` tables are looked into (``SELECT EXISTS (SELECT 1 FROM t)``,
    ACCESS SHARE, given up after a short lock_timeout) to tell an empty table.
    """
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT current_setting('server_version_num')::int AS v,"
            " current_schemas(false) AS sp,"
            " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS su"
        )
        head = cur.fetchone()
        assert head is not None
        cat = Catalog(
            server_version=head["v"],
            search_path=tuple(head["sp"]),
            role_is_superuser=bool(head["su"]),
        )
        cur.execute("SELECT amname FROM pg_am WHERE amtype = 'i'")
        cat.index_methods = frozenset(r["amname"] for r in cur.fetchall())
        wanted: set[tuple[str, str]] = set()
        for schema, name in tables:
            if schema:
                wanted.add((schema, name))
            else:
                wanted.update((s, name) for s in cat.search_path)
        _read_tables(cur, cat, wanted)

        idx_wanted: set[tuple[str, str]] = set()
        for schema, name in index_names:
            for s in [schema] if schema else cat.search_path:
                idx_wanted.add((s, name))
        if idx_wanted:
            # any relation of that name (an index, or a table in the way of a new index)
            _read_tables(cur, cat, idx_wanted - set(cat.tables))
            cur.execute(
                _INDEX_OWNERS_SQL,
                {"schemas": [s for s, _ in idx_wanted], "names": [n for _, n in idx_wanted]},
            )
            owners = {(r["nspname"], r["table_name"]) for r in cur.fetchall()}
            # read the owning tables too, so the planner sees the index in full
            _read_tables(cur, cat, owners - set(cat.tables))

        # the partition trees of the partitioned tables read, down to the leaves
        while True:
            below = {p for info in cat.tables.values() for p in info.partitions} - set(cat.tables)
            if not below:
                break
            _read_tables(cur, cat, below)

        cur.execute("SELECT current_setting('TimeZone') AS tz")
        tz = cur.fetchone()
        cat.timezone = tz["tz"] if tz else ""
        # tables whose foreign keys point at the tables read (a few levels deep): a
        # change to a referenced column (type, name, drop) must handle them too
        for _ in range(3):
            referencing = {
                (s, n) for info in cat.tables.values() for s, n, _ in info.referenced_by
            } - set(cat.tables)
            if not referencing:
                break
            _read_tables(cur, cat, referencing)

        fnames = sorted({f.lower() for f in functions})
        if fnames:
            cur.execute(_VOLATILITY_SQL, {"names": fnames})
            cat.volatility = {r["name"]: r["vol"] for r in cur.fetchall()}

        for t in sorted(set(types)):
            cur.execute(
                "SELECT format_type(ty.oid, NULL) AS name, ty.typtype::text AS typtype,"
                " EXISTS (SELECT 1 FROM pg_constraint WHERE contypid = ty.oid) AS constrained"
                " FROM pg_type ty WHERE ty.oid = to_regtype(%(t)s)",
                {"t": t},
            )
            row = cur.fetchone()
            cat.types[t] = (row["name"], row["typtype"], row["constrained"]) if row else None
            if row is not None:
                mod = _type_mod(cur, t)
                if mod is not None:
                    cat.type_mods[t] = mod
        if types:
            cur.execute(
                "SELECT castsource::int AS s, casttarget::int AS t FROM pg_cast"
                " WHERE castmethod = 'b'"
            )
            cat.binary_casts = {(r["s"], r["t"]) for r in cur.fetchall()}
        _read_names(cur, cat, name_prefixes)
        _probe_rows(cur, cat, probe_rows)  # last: it sets a lock_timeout
    return cat


_NAMES_SQL = """
SELECT n.nspname, c.relname AS name, 'r' AS kind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN unnest(%(schemas)s::text[], %(prefixes)s::text[]) w(s, p)
  ON n.nspname = w.s AND starts_with(c.relname, w.p)
UNION ALL
SELECT n.nspname, k.conname, 'c'
FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace
JOIN unnest(%(schemas)s::text[], %(prefixes)s::text[]) w(s, p)
  ON n.nspname = w.s AND starts_with(k.conname, w.p)
"""


def _read_names(
    cur: psycopg.Cursor[Any], cat: Catalog, prefixes: Iterable[tuple[str | None, str]]
) -> None:
    """Names in use that start with ``prefixes`` (``(schema or None, prefix)``)."""
    wanted = {(s, p) for schema, p in prefixes for s in ([schema] if schema else cat.search_path)}
    if not wanted:
        return
    cur.execute(_NAMES_SQL, {"schemas": [s for s, _ in wanted], "prefixes": [p for _, p in wanted]})
    for r in cur.fetchall():
        target = cat.relation_names if r["kind"] == "r" else cat.constraint_names
        target.add((r["nspname"], r["name"]))


def _probe_rows(
    cur: psycopg.Cursor[Any], cat: Catalog, tables: Iterable[tuple[str | None, str]]
) -> None:
    """Read ``TableInfo.has_rows``: one cheap ``SELECT EXISTS`` per table. A table that
    cannot be read at once (a lock held) stays unknown (None), as if it had rows."""
    wanted = sorted({(cat.resolve_schema(s, n), n) for s, n in tables} & set(cat.tables))
    if not wanted:
        return
    cur.execute("SELECT set_config('lock_timeout', '200ms', true)")
    for key in wanted:
        try:
            with cur.connection.transaction():
                cur.execute(checks.q_has_rows(*key))
                row = cur.fetchone()
        except psycopg.errors.LockNotAvailable:
            continue
        if row is not None:
            has_rows = bool(next(iter(row.values())))
            cat.tables[key] = dataclasses.replace(cat.tables[key], has_rows=has_rows)


def _type_mod(cur: psycopg.Cursor[Any], text: str) -> tuple[int, int, str] | None:
    """(oid, typmod, format_type) of a type as written (``varchar(20)``): the typmod is
    read from the result description of ``SELECT NULL::<type>``; PostgreSQL 15 and 16
    have no function that parses one (``to_regtypemod`` is 17+)."""
    try:
        with cur.connection.transaction():
            cur.execute(checks.q_type_probe(text))
            res = cur.pgresult
            assert res is not None
            oid, mod = int(res.ftype(0)), int(res.fmod(0))
            cur.execute("SELECT format_type(%s, %s) AS f", (oid, mod))
            row = cur.fetchone()
    except psycopg.Error:
        return None
    return (oid, mod, row["f"]) if row else None


def _read_tables(cur: psycopg.Cursor[Any], cat: Catalog, wanted: set[tuple[str, str]]) -> None:
    if not wanted:
        return
    cur.execute(_TABLES_SQL, {"schemas": [s for s, _ in wanted], "names": [n for _, n in wanted]})
    rels = cur.fetchall()
    oids: list[int] = []
    base: dict[int, dict[str, Any]] = {}
    for r in rels:
        if r["relkind"] in ("r", "p"):
            oids.append(r["oid"])
            base[r["oid"]] = r
        else:
            cat.other_relations.add((r["nspname"], r["relname"]))
    if not oids:
        return
    params = {"oids": oids}
    columns: dict[int, dict[str, ColumnInfo]] = {o: {} for o in oids}
    cur.execute(_COLUMNS_SQL, params)
    for r in cur.fetchall():
        columns[r["oid"]][r["attname"]] = ColumnInfo(
            name=r["attname"],
            type=r["type"],
            type_oid=r["type_oid"],
            notnull=r["attnotnull"],
            default=r["default"],
            identity=r["attidentity"] or "",
            generated=r["attgenerated"] or "",
            typmod=r["typmod"],
            collation=r["collation"],
        )
    cur.execute(_SEQUENCES_SQL, params)
    for r in cur.fetchall():
        col = columns[r["oid"]].get(r["attname"])
        if col is not None:
            columns[r["oid"]][col.name] = dataclasses.replace(
                col, sequence=(r["nspname"], r["relname"], r["seqtype"])
            )
    dependents: dict[int, list[tuple[str, str, str]]] = {o: [] for o in oids}
    cur.execute(_DEPENDENTS_SQL, params)
    for r in cur.fetchall():
        dependents[r["oid"]].append((r["attname"], r["catalog"], r["what"]))
    views: dict[int, list[tuple[str, str, str, int]]] = {o: [] for o in oids}
    cur.execute(view_sql.PLAN_VIEWS, params)
    for r in cur.fetchall():
        views[r["oid"]].append((r["col"], r["nspname"], r["relname"], r["depth"]))
    view_blockers: dict[int, list[tuple[str, str]]] = {o: [] for o in oids}
    cur.execute(view_sql.PLAN_BLOCKERS, params)
    for r in cur.fetchall():
        view_blockers[r["tbl"]].append((r["col"], r["what"]))
    indexes: dict[int, dict[str, IndexInfo]] = {o: {} for o in oids}
    cur.execute(_INDEXES_SQL, params)
    for r in cur.fetchall():
        indexes[r["oid"]][r["name"]] = IndexInfo(
            name=r["name"],
            valid=r["indisvalid"],
            ready=r["indisready"],
            unique=r["indisunique"],
            primary=r["indisprimary"],
            columns=tuple(r["columns"]),
            partial=r["partial"],
            definition=r["def"],
            constraint=r["constraint"],
            parent_index=r["parent_index"],
        )
    constraints: dict[int, dict[str, ConstraintInfo]] = {o: {} for o in oids}
    cur.execute(_CONSTRAINTS_SQL, params)
    for r in cur.fetchall():
        constraints[r["oid"]][r["conname"]] = ConstraintInfo(
            name=r["conname"],
            type=r["contype"],
            validated=r["convalidated"],
            definition=r["def"],
            columns=tuple(r["columns"]),
            ref_table=(r["ref_schema"], r["ref_name"]) if r["ref_name"] else None,
            index=r["index_name"],
            ref_columns=tuple(r["ref_columns"]),
            inherited=r["inherited"],
        )
    triggers: dict[int, list[str]] = {o: [] for o in oids}
    cur.execute(_TRIGGERS_SQL, params)
    for r in cur.fetchall():
        triggers[r["oid"]].append(r["tgname"])
    refs: dict[int, list[tuple[str, str, str]]] = {o: [] for o in oids}
    cur.execute(_REFERENCED_BY_SQL, params)
    for r in cur.fetchall():
        refs[r["oid"]].append((r["nspname"], r["relname"], r["conname"]))
    for oid in oids:
        r = base[oid]
        pk: tuple[str, ...] = ()
        for con in constraints[oid].values():
            if con.type == "p":
                pk = con.columns
        info = TableInfo(
            schema=r["nspname"],
            name=r["relname"],
            oid=oid,
            relkind=r["relkind"],
            reltuples=r["reltuples"],
            pages=r["pages"],
            columns=columns[oid],
            indexes=indexes[oid],
            constraints=constraints[oid],
            triggers=tuple(sorted(triggers[oid])),
            primary_key=pk,
            referenced_by=tuple(sorted(refs[oid])),
            dependents=tuple(sorted(set(dependents[oid]))),
            views=tuple(sorted(set(views[oid]))),
            view_blockers=tuple(sorted(set(view_blockers[oid]))),
            partition_strategy=r["strategy"] or "",
            partition_key=tuple(r["partkey"]) if r["strategy"] else (),
            partitions=tuple((s, n) for s, n in r["partitions"]),
            parent=(r["parent"][0], r["parent"][1]) if r["parent"] else None,
            partition_bound=r["bound"],
        )
        cat.tables[(info.schema, info.name)] = info
        for idx in info.indexes:
            cat.index_owner[(info.schema, idx)] = (info.schema, info.name)
