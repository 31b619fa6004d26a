"""The schema assumed when there is no database (``alembic upgrade --sql``).

Each recipe's ``assume()`` makes the schema one in which its change is valid: every
table a change names exists, every column, constraint and index it uses exists in the
state the change needs (a column made NOT NULL is nullable, a constraint validated is
NOT VALID...), unless an earlier change of the list creates it. ``catalog()`` then gives
the ``Catalog`` the planner plans against, and ``assumptions`` the lines a script header
lists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from ..catalog import Catalog, ColumnInfo, ConstraintInfo, IndexInfo, TableInfo

#: provolatile of built-in functions often used in defaults and backfills (PostgreSQL 15-18,
#: the most volatile overload): ``now()`` is a fast default, ``gen_random_uuid()`` is not.
#: Other functions are assumed volatile offline, which is safe (never a table rewrite).
BUILTIN_VOLATILITY: dict[str, str] = {
    **dict.fromkeys(
        "abs array_length btrim ceil char_length decode encode floor initcap jsonb_set left"
        " lower lpad ltrim make_interval md5 mod octet_length position power regexp_replace"
        " replace right round rpad rtrim sha256 sign split_part sqrt string_to_array strpos"
        " substring trunc upper".split(),
        "i",
    ),
    **dict.fromkeys(
        "age array_to_string concat concat_ws current_setting date_part date_trunc extract"
        " format json_build_object jsonb_build_object length now statement_timestamp timezone"
        " to_char to_date to_json to_jsonb to_number to_timestamp transaction_timestamp".split(),
        "s",
    ),
    **dict.fromkeys(
        "clock_timestamp currval gen_random_uuid nextval random random_normal timeofday"
        " uuidv4 uuidv7".split(),
        "v",
    ),
}

#: the key column assumed for a table that a ``Backfill`` updates (never rendered as SQL:
#: the backfill is rendered as a command that plans against the live table)
ASSUMED_KEY = "(primary key)"


@dataclasses.dataclass
class AssumedTable:
    schema: str
    name: str
    columns: dict[str, ColumnInfo] = dataclasses.field(default_factory=dict)
    indexes: dict[str, IndexInfo] = dataclasses.field(default_factory=dict)
    constraints: dict[str, ConstraintInfo] = dataclasses.field(default_factory=dict)
    primary_key: tuple[str, ...] = ()


@dataclasses.dataclass
class AssumedSchema:
    default_schema: str
    tables: dict[tuple[str, str], AssumedTable] = dataclasses.field(default_factory=dict)
    #: relations created by the migration itself (``RunSQL.creates``)
    created_tables: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    created_cols: set[tuple[str, str, str]] = dataclasses.field(default_factory=set)
    created_cons: set[tuple[str, str, str]] = dataclasses.field(default_factory=set)
    #: tables that get a primary key in this migration
    pk_changes: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    index_owner: dict[tuple[str, str], tuple[str, str]] = dataclasses.field(default_factory=dict)
    assumptions: list[str] = dataclasses.field(default_factory=list)

    def key(self, schema: str | None, name: str) -> tuple[str, str]:
        return (schema or self.default_schema, name)

    def table(self, schema: str | None, name: str) -> AssumedTable | None:
        """The table, assumed to exist (None when the migration creates it)."""
        key = self.key(schema, name)
        if key in self.created_tables:
            return None
        t = self.tables.get(key)
        if t is None:
            t = self.tables[key] = AssumedTable(key[0], name)
            self.assumptions.append(f"table {key[0]}.{name} exists")
        return t

    def column(
        self,
        t: AssumedTable | None,
        name: str,
        *,
        notnull: bool = False,
        default: str | None = None,
    ) -> None:
        if t is None or (t.schema, t.name, name) in self.created_cols or name in t.columns:
            return
        t.columns[name] = ColumnInfo(name, "unknown", 0, notnull, default, "", "")
        state = " NOT NULL" if notnull else ""
        state += " with a default" if default is not None else ""
        self.assumptions.append(f"column {t.schema}.{t.name}.{name} exists{state}")

    def constraint(self, t: AssumedTable | None, name: str, *, validated: bool) -> None:
        if t is None or (t.schema, t.name, name) in self.created_cons or name in t.constraints:
            return
        t.constraints[name] = ConstraintInfo(name, "c", validated, "", (), None, None)
        self.assumptions.append(
            f"constraint {name} exists on {t.schema}.{t.name}"
            + ("" if validated else " and is NOT VALID")
        )

    def index(self, schema: str | None, name: str) -> None:
        """An index that exists and backs no constraint (on a table of its own)."""
        s = schema or self.default_schema
        if (s, name) in self.index_owner:
            return
        owner = AssumedTable(s, f"(table of index {name})")
        owner.indexes[name] = IndexInfo(name, True, True, False, False, (), False, "", None)
        self.tables[(s, owner.name)] = owner
        self.index_owner[(s, name)] = (s, owner.name)
        self.assumptions.append(f"index {s}.{name} exists and backs no constraint")

    def catalog(
        self, server_version: int, search_path: tuple[str, ...], functions: Iterable[str]
    ) -> Catalog:
        """The catalog of the assumed schema (``functions``: those the changes call)."""
        catalog = Catalog(server_version=server_version, search_path=search_path)
        catalog.volatility = dict(BUILTIN_VOLATILITY)
        for fn in functions:
            if fn not in BUILTIN_VOLATILITY:
                self.assumptions.append(
                    f"function {fn}() is volatile (its default or fill is batched)"
                )
        for i, t in enumerate(self.tables.values(), start=1):
            catalog.tables[(t.schema, t.name)] = TableInfo(
                schema=t.schema,
                name=t.name,
                oid=i,
                relkind="r",
                reltuples=-1.0,
                pages=0,
                columns=t.columns,
                indexes=t.indexes,
                constraints=t.constraints,
                triggers=(),
                primary_key=t.primary_key,
                referenced_by=(),
            )
        catalog.index_owner = self.index_owner
        return catalog
