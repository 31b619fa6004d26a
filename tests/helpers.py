"""Spec-like assertions on the live catalog, in the style of pgroll's test helpers.

Each helper reads the catalog through an autocommit psycopg connection and fails with a
message that says what was expected and what was found::

    column_must_exist(conn, "orders", "status", type="text", nullable=False)
    index_must_exist(conn, "orders_status_idx", valid=True, unique=False)
    constraint_must_exist(conn, "orders", "orders_user_id_fkey", validated=True, type="f")
    must_not_insert(conn, "INSERT INTO orders (user_id) VALUES (%s)", (999,))

``catalog_snapshot`` dumps what defines a table (its ``pg_class``, ``pg_attribute``,
``pg_index``, ``pg_constraint`` and ``pg_trigger`` rows and those of its indexes, plus its
column defaults from ``pg_attrdef``) as text, so "the catalog is unchanged" is a string
comparison that shows the difference when it fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

Conn = psycopg.Connection[Any]

#: pg_class fields that change without any schema change (VACUUM, ANALYZE, freezing).
VOLATILE_CLASS_FIELDS = (
    "relpages",
    "reltuples",
    "relallvisible",
    "relallfrozen",  # PostgreSQL 18
    "relfrozenxid",
    "relminmxid",
)


def _one(conn: Conn, query: str, params: Sequence[Any] | dict[str, Any] = ()) -> Any:
    row = conn.execute(query, params).fetchone()  # type: ignore[arg-type]
    return row[0] if row else None


def _regclass(table: str, schema: str = "public") -> str:
    return sql.Identifier(schema, table).as_string(None)


# --- columns ---------------------------------------------------------------------------


def _column(conn: Conn, table: str, column: str, schema: str = "public") -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,"
            " pg_get_expr(d.adbin, d.adrelid) AS default"
            " FROM pg_attribute a"
            " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
            " WHERE a.attrelid = to_regclass(%s) AND a.attname = %s AND a.attnum > 0"
            " AND NOT a.attisdropped",
            (_regclass(table, schema), column),
        )
        return cur.fetchone()


def column_must_exist(
    conn: Conn,
    table: str,
    column: str,
    type: str | None = None,
    nullable: bool | None = None,
    default: str | None = None,
    *,
    schema: str = "public",
) -> None:
    """The column exists; ``type`` as ``format_type`` prints it (``"text"``,
    ``"timestamp with time zone"``), ``nullable`` as ``attnotnull`` says, ``default`` as
    ``pg_get_expr`` prints it."""
    col = _column(conn, table, column, schema)
    assert col is not None, f"column {table}.{column} should exist"
    if type is not None:
        assert col["type"] == type, f"column {table}.{column} is {col['type']}, expected {type}"
    if nullable is not None:
        assert col["attnotnull"] == (not nullable), (
            f"column {table}.{column} should be {'nullable' if nullable else 'NOT NULL'}"
        )
    if default is not None:
        assert col["default"] == default, (
            f"column {table}.{column} has default {col['default']!r}, expected {default!r}"
        )


def column_must_not_exist(conn: Conn, table: str, column: str, *, schema: str = "public") -> None:
    assert _column(conn, table, column, schema) is None, f"column {table}.{column} should not exist"


def column_default(conn: Conn, table: str, column: str, *, schema: str = "public") -> str | None:
    col = _column(conn, table, column, schema)
    assert col is not None, f"column {table}.{column} should exist"
    return col["default"]  # type: ignore[no-any-return]


# --- indexes ---------------------------------------------------------------------------


def _index(conn: Conn, name: str, schema: str = "public") -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT i.indisvalid, i.indisready, i.indisunique, i.indisprimary,"
            " pg_get_indexdef(i.indexrelid) AS def, am.amname"
            " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_am am ON am.oid = c.relam"
            " WHERE i.indexrelid = to_regclass(%s)",
            (_regclass(name, schema),),
        )
        return cur.fetchone()


def index_must_exist(
    conn: Conn,
    name: str,
    valid: bool | None = True,
    unique: bool | None = None,
    *,
    method: str | None = None,
    definition_contains: Sequence[str] = (),
    schema: str = "public",
) -> str:
    """The index exists (valid and ready unless ``valid`` says otherwise); returns its
    ``pg_get_indexdef``."""
    idx = _index(conn, name, schema)
    assert idx is not None, f"index {name} should exist"
    if valid is not None:
        is_valid = idx["indisvalid"] and idx["indisready"]
        assert is_valid == valid, f"index {name} should be {'valid' if valid else 'invalid'}"
    if unique is not None:
        assert idx["indisunique"] == unique, f"index {name} unique is {idx['indisunique']}"
    if method is not None:
        assert idx["amname"] == method, f"index {name} uses {idx['amname']}, expected {method}"
    for part in definition_contains:
        assert part in idx["def"], f"index {name} definition {idx['def']!r} lacks {part!r}"
    return str(idx["def"])


def index_must_not_exist(conn: Conn, name: str, *, schema: str = "public") -> None:
    assert _one(conn, "SELECT to_regclass(%s)", (_regclass(name, schema),)) is None, (
        f"relation {name} should not exist"
    )


def invalid_indexes(conn: Conn, table: str, *, schema: str = "public") -> list[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = to_regclass(%s) AND NOT i.indisvalid ORDER BY 1",
        (_regclass(table, schema),),
    ).fetchall()
    return [r[0] for r in rows]


# --- constraints -----------------------------------------------------------------------


def _constraint(conn: Conn, table: str, name: str, schema: str = "public") -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT contype::text AS type, convalidated, pg_get_constraintdef(oid) AS def"
            " FROM pg_constraint WHERE conrelid = to_regclass(%s) AND conname = %s",
            (_regclass(table, schema), name),
        )
        return cur.fetchone()


def constraint_must_exist(
    conn: Conn,
    table: str,
    name: str,
    validated: bool | None = None,
    type: str | None = None,
    *,
    definition_contains: Sequence[str] = (),
    schema: str = "public",
) -> str:
    """The constraint exists; ``type`` is ``pg_constraint.contype`` (``c`` check, ``f``
    foreign key, ``u`` unique, ``p`` primary key, ``n`` not null on 18). Returns
    ``pg_get_constraintdef``."""
    con = _constraint(conn, table, name, schema)
    assert con is not None, f"constraint {name} on {table} should exist"
    if validated is not None:
        assert con["convalidated"] == validated, (
            f"constraint {name} should be {'validated' if validated else 'NOT VALID'}"
        )
    if type is not None:
        assert con["type"] == type, f"constraint {name} has type {con['type']}, expected {type}"
    for part in definition_contains:
        assert part in con["def"], f"constraint {name} definition {con['def']!r} lacks {part!r}"
    return str(con["def"])


def constraint_must_not_exist(conn: Conn, table: str, name: str, *, schema: str = "public") -> None:
    assert _constraint(conn, table, name, schema) is None, (
        f"constraint {name} on {table} should not exist"
    )


def constraint_names(conn: Conn, table: str, *, schema: str = "public") -> list[str]:
    rows = conn.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) ORDER BY 1",
        (_regclass(table, schema),),
    ).fetchall()
    return [r[0] for r in rows]


def trigger_names(conn: Conn, table: str, *, schema: str = "public") -> list[str]:
    rows = conn.execute(
        "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal"
        " ORDER BY 1",
        (_regclass(table, schema),),
    ).fetchall()
    return [r[0] for r in rows]


# --- data ------------------------------------------------------------------------------


def must_insert(conn: Conn, query: str, params: Sequence[Any] = ()) -> None:
    """The statement succeeds (in a transaction that is rolled back: nothing is kept)."""
    with conn.transaction():
        conn.execute(query, params)
        raise psycopg.Rollback()


def must_not_insert(
    conn: Conn,
    query: str,
    params: Sequence[Any] = (),
    error: type[psycopg.Error] = psycopg.errors.IntegrityError,
) -> psycopg.Error:
    """The statement fails with ``error`` (an integrity error by default); it runs in a
    transaction of its own, so the connection is usable afterwards. Returns the error."""
    try:
        with conn.transaction():
            conn.execute(query, params)
    except error as exc:
        return exc
    raise AssertionError(f"{query} {tuple(params)!r} should have failed with {error.__name__}")


def relfilenode(conn: Conn, table: str, *, schema: str = "public") -> int:
    """Changes exactly when the table is rewritten."""
    return int(
        _one(conn, "SELECT pg_relation_filenode(to_regclass(%s))", (_regclass(table, schema),))
    )


def count(conn: Conn, query: str, params: Sequence[Any] = ()) -> int:
    return int(_one(conn, query, params))


# --- catalog snapshot ------------------------------------------------------------------

_SNAPSHOT_QUERIES = {
    "pg_class": "SELECT to_jsonb(c) - %(skip)s::text[] AS row FROM pg_class c"
    " WHERE c.oid = ANY(%(rels)s) ORDER BY c.relname",
    "pg_attribute": "SELECT to_jsonb(a) AS row FROM pg_attribute a"
    " WHERE a.attrelid = ANY(%(rels)s) AND (NOT a.attisdropped OR NOT %(ignore_dropped)s)"
    " ORDER BY a.attrelid::regclass::text, a.attnum",
    "pg_attrdef": "SELECT jsonb_build_object('adnum', d.adnum,"
    " 'expr', pg_get_expr(d.adbin, d.adrelid)) AS row FROM pg_attrdef d"
    " WHERE d.adrelid = %(table)s ORDER BY d.adnum",
    "pg_index": "SELECT to_jsonb(i) AS row FROM pg_index i"
    " WHERE i.indrelid = %(table)s ORDER BY i.indexrelid::regclass::text",
    "pg_constraint": "SELECT to_jsonb(k) AS row FROM pg_constraint k"
    " WHERE k.conrelid = %(table)s ORDER BY k.conname",
    "pg_trigger": "SELECT to_jsonb(t) AS row FROM pg_trigger t"
    " WHERE t.tgrelid = %(table)s ORDER BY t.tgname",
}


def catalog_snapshot(
    conn: Conn, table: str, *, schema: str = "public", ignore_dropped_columns: bool = False
) -> str:
    """A text dump of the catalog rows that define ``table`` and its indexes.

    Left out: the ``pg_class`` fields that VACUUM/ANALYZE change without any schema
    change (``VOLATILE_CLASS_FIELDS``). With ``ignore_dropped_columns``, also the
    placeholder rows that ``DROP COLUMN`` leaves in ``pg_attribute`` (``attisdropped``,
    invisible to every query, kept until the table is rewritten) and ``relnatts``, which
    counts them: what an aborted ``ADD COLUMN`` cannot take back. Compare a snapshot
    taken after ``VACUUM`` with one taken after ``VACUUM``: PostgreSQL clears
    ``relhastriggers``/``relhasindex`` only when it vacuums.
    """
    oid = _one(conn, "SELECT to_regclass(%s)::oid", (_regclass(table, schema),))
    assert oid is not None, f"table {schema}.{table} does not exist"
    rels = [oid] + [
        r[0]
        for r in conn.execute(
            "SELECT indexrelid FROM pg_index WHERE indrelid = %s", (oid,)
        ).fetchall()
    ]
    skip = list(VOLATILE_CLASS_FIELDS) + (["relnatts"] if ignore_dropped_columns else [])
    params = {"rels": rels, "table": oid, "skip": skip, "ignore_dropped": ignore_dropped_columns}
    out: list[str] = []
    for catalog, query in _SNAPSHOT_QUERIES.items():
        out.append(f"-- {catalog}")
        for (row,) in conn.execute(query, params).fetchall():
            out.append(_canonical(row))
    return "\n".join(out)


def _canonical(row: Any) -> str:
    import json

    return json.dumps(row, sort_keys=True, default=str)


def state_rows(conn: Conn, schema: str = "onlineschema") -> list[tuple[Any, ...]]:
    """Every migration recorded in the state schema (empty when the schema is absent)."""
    if _one(conn, "SELECT to_regclass(%s)", (_regclass("migrations", schema),)) is None:
        return []
    return conn.execute(
        sql.SQL("SELECT name, state FROM {} ORDER BY name").format(
            sql.Identifier(schema, "migrations")
        )
    ).fetchall()


def migration_state(conn: Conn, name: str, schema: str = "onlineschema") -> str | None:
    return dict(state_rows(conn, schema)).get(name)


# --- fixtures' data --------------------------------------------------------------------


def make_orders(conn: Conn, rows: int = 2000) -> None:
    """``users(id bigserial pk, name text)`` with 100 users and ``orders(id bigserial pk,
    user_id bigint, amount int, n int not null default 0, note text)`` with ``rows`` rows:
    user_id cycles over the users, amount = id % 300, note is NULL on every tenth row."""
    conn.execute("CREATE TABLE users (id bigserial PRIMARY KEY, name text)")
    conn.execute("INSERT INTO users (name) SELECT 'user ' || g FROM generate_series(1, 100) g")
    conn.execute(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint, amount int,"
        " n int NOT NULL DEFAULT 0, note text)"
    )
    conn.execute(
        "INSERT INTO orders (user_id, amount, note)"
        " SELECT 1 + g %% 100, g %% 300, CASE WHEN g %% 10 = 0 THEN NULL ELSE 'note ' || g END"
        " FROM generate_series(1, %s) g",
        (rows,),
    )
    conn.execute("ANALYZE users, orders")


# --- DDL recorder: what DDL ran anywhere in the database ------------------------------

_DDL_RECORDER_SETUP = """
CREATE SCHEMA ddl_recorder;
CREATE SEQUENCE ddl_recorder.events;
CREATE TABLE ddl_recorder.log (
    seq bigserial PRIMARY KEY, event text, tag text, object text, query text,
    app text DEFAULT current_setting('application_name'));
CREATE FUNCTION ddl_recorder.on_start() RETURNS event_trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    PERFORM nextval('ddl_recorder.events');
    INSERT INTO ddl_recorder.log (event, tag, query) VALUES (tg_event, tg_tag, current_query());
END $$;
CREATE FUNCTION ddl_recorder.on_drop() RETURNS event_trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    PERFORM nextval('ddl_recorder.events');
    INSERT INTO ddl_recorder.log (event, tag, object, query)
    SELECT tg_event, tg_tag, d.object_type || ' ' || d.object_identity, current_query()
    FROM pg_event_trigger_dropped_objects() d;
END $$;
CREATE EVENT TRIGGER ddl_recorder_start ON ddl_command_start
    EXECUTE FUNCTION ddl_recorder.on_start();
CREATE EVENT TRIGGER ddl_recorder_drop ON sql_drop EXECUTE FUNCTION ddl_recorder.on_drop();
"""

_DDL_RECORDER_TEARDOWN = """
DROP EVENT TRIGGER ddl_recorder_start;
DROP EVENT TRIGGER ddl_recorder_drop;
DROP SCHEMA ddl_recorder CASCADE;
"""


class DdlRecorder:
    """Records every DDL command started (``ddl_command_start``: CREATE, ALTER, DROP,
    COMMENT, GRANT, ...) and every object dropped (``sql_drop``) in the database, by any
    session, while it is active: ``with DdlRecorder(superuser_conn) as ddl: ...`` then
    ``ddl.seen()`` and ``ddl.count()``. Event triggers need a superuser connection
    (autocommit). A command rolled back takes its log row with it, but not its count (a
    sequence): ``count()`` sees DDL run in a transaction that was then rolled back."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.active = False

    def __enter__(self) -> DdlRecorder:
        self.conn.execute(_DDL_RECORDER_SETUP)
        self.active = True
        return self

    def seen(self) -> list[tuple[Any, ...]]:
        """(event, tag, dropped object, query, application_name) of each DDL recorded."""
        return self.conn.execute(
            "SELECT event, tag, object, left(query, 200), app FROM ddl_recorder.log ORDER BY seq"
        ).fetchall()

    def count(self) -> int:
        """Event trigger firings, rolled-back ones included."""
        row = self.conn.execute(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM ddl_recorder.events"
        ).fetchone()
        assert row is not None
        return int(row[0])

    def __exit__(self, *exc: object) -> None:
        if self.active:
            self.active = False
            self.conn.execute(_DDL_RECORDER_TEARDOWN)
