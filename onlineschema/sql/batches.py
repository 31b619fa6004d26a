"""Every statement a backfill sends to the user's table, composed with ``psycopg.sql``.

The batch ``UPDATE`` and the slice it covers (a key range, a keyset window, a range of
heap blocks), the reads that freeze and cut the work at start, ``EXPLAIN`` of a batch, the
backfill's own ``VACUUM`` and its permission check, and the transaction-local settings a
backfill runs under. Names go through ``sql.Identifier`` and values through
``sql.Literal``; the only text inserted as-is are the ``SET`` expressions, the ``WHERE``
filter and the key type names, which the planner took from the catalog or validated with
``onlineschema.expressions`` before they reached a step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql


@dataclass
class Spec:
    """What a backfill step fills: its table, ``SET`` list, filters and key."""

    schema: str
    table: str
    set: list[list[str]]
    where: str | None
    only_null: str | None
    key: list[str]
    key_types: list[str]
    strategy: str

    @classmethod
    def from_details(cls, d: dict[str, Any]) -> Spec:
        return cls(
            schema=d["schema"],
            table=d["table"],
            set=d["set"],
            where=d.get("where"),
            only_null=d.get("only_null"),
            key=list(d.get("key", [])),
            key_types=list(d.get("key_types", [])),
            strategy=d["strategy"],
        )

    @property
    def rel(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.table)

    @property
    def regclass(self) -> str:
        return sql.Identifier(self.schema, self.table).as_string(None)

    def set_clause(self) -> sql.Composable:
        return sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), sql.SQL(e)) for c, e in self.set
        )

    def filters(self) -> list[sql.Composable]:
        out: list[sql.Composable] = []
        if self.only_null:
            out.append(sql.SQL("{} IS NULL").format(sql.Identifier(self.only_null)))
        if self.where:
            out.append(sql.SQL("({})").format(sql.SQL(self.where)))
        return out

    def key_row(self) -> sql.Composable:
        return sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(k) for k in self.key))

    def key_value(self, values: Sequence[str]) -> sql.Composable:
        parts = [
            sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(t))
            for v, t in zip(values, self.key_types, strict=True)
        ]
        # one key column: key_row() is a plain value, so compare with a plain value
        # (``ROW(x)`` would be a record: "operator does not exist: text <= record")
        if len(parts) == 1:
            return sql.SQL("({})").format(parts[0])
        return sql.SQL("ROW({})").format(sql.SQL(", ").join(parts))

    def key_text(self) -> sql.Composable:
        return sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in self.key)

    def key_order(self, direction: str = "") -> sql.Composable:
        """``ORDER BY`` list of the key, qualified so that a bare name never resolves to
        the ``col::text`` output column of the same name (which would sort as text)."""
        return sql.SQL(", ").join(
            sql.SQL("{}{}").format(sql.Identifier(self.schema, self.table, k), sql.SQL(direction))
            for k in self.key
        )


# --- freezing and cutting the work ----------------------------------------------------------


def sample_count(spec: Spec, percent: float) -> sql.Composed:
    """Rows in a ``percent`` sample of the table's blocks."""
    return sql.SQL("SELECT count(*) FROM {} TABLESAMPLE SYSTEM ({})").format(
        spec.rel, sql.Literal(percent)
    )


def key_bounds(spec: Spec) -> sql.Composed:
    """Smallest and largest value of a single integer key."""
    k = sql.Identifier(spec.key[0])
    return sql.SQL("SELECT min({k}), max({k}) FROM {t}").format(k=k, t=spec.rel)


def last_key(spec: Spec) -> sql.Composed:
    """The largest key, as text."""
    return sql.SQL("SELECT {c} FROM {t} ORDER BY {o} LIMIT 1").format(
        c=spec.key_text(), t=spec.rel, o=spec.key_order(" DESC")
    )


def key_sample(spec: Spec, percent: float) -> sql.Composed:
    """The keys, as text and sorted, of a ``percent`` sample of the table's blocks."""
    return sql.SQL("SELECT {c} FROM {t} TABLESAMPLE SYSTEM ({p}) ORDER BY {o}").format(
        c=spec.key_text(), t=spec.rel, p=sql.Literal(percent), o=spec.key_order()
    )


# --- one batch ------------------------------------------------------------------------------


def key_range(spec: Spec, lo: Any, hi: Any) -> sql.Composed:
    """A single integer key in ``[lo, hi)``."""
    k = sql.Identifier(spec.key[0])
    return sql.SQL("{k} >= {lo} AND {k} < {hi}").format(k=k, lo=sql.Literal(lo), hi=sql.Literal(hi))


def key_after(spec: Spec, values: Sequence[str]) -> sql.Composed:
    """The key (a row of columns) after ``values``."""
    return sql.SQL("{} > {}").format(spec.key_row(), spec.key_value(values))


def key_upto(spec: Spec, values: Sequence[str]) -> sql.Composed:
    """The key (a row of columns) at or before ``values``."""
    return sql.SQL("{} <= {}").format(spec.key_row(), spec.key_value(values))


def keyset_upper(spec: Spec, conds: Sequence[sql.Composable], size: int) -> sql.Composed:
    """The key ending a keyset batch of ``size`` rows within ``conds``, as text."""
    return sql.SQL("SELECT {c} FROM {t} WHERE {w} ORDER BY {o} OFFSET {n} LIMIT 1").format(
        c=spec.key_text(),
        t=spec.rel,
        w=sql.SQL(" AND ").join(conds),
        o=spec.key_order(),
        n=sql.Literal(max(size - 1, 0)),
    )


def block_range(lo: int, hi: int) -> sql.Composed:
    """Rows in heap blocks ``[lo, hi)``."""
    return sql.SQL("ctid >= {}::tid AND ctid < {}::tid").format(
        sql.Literal(f"({lo},0)"), sql.Literal(f"({hi},0)")
    )


def update(spec: Spec, conds: Sequence[sql.Composable]) -> sql.Composed:
    """The batch ``UPDATE`` of the rows matching every one of ``conds``."""
    return sql.SQL("UPDATE {t} AS {a} SET {s} WHERE {w}").format(
        t=spec.rel,
        a=sql.Identifier(spec.table),
        s=spec.set_clause(),
        w=sql.SQL(" AND ").join(conds),
    )


def explain(statement: sql.Composable) -> sql.Composed:
    return sql.SQL("EXPLAIN (FORMAT JSON) {}").format(statement)


# --- the backfill's own VACUUM --------------------------------------------------------------


def vacuum(spec: Spec) -> sql.Composed:
    # INDEX_CLEANUP OFF: the heap's dead versions are pruned and their space is reused by
    # the next batches, without a pass over every index each time; the indexes' dead
    # entries are left to autovacuum (the dead-row count the backfill leaves triggers it).
    # TRUNCATE false: cutting empty pages off the table's end takes an ACCESS EXCLUSIVE
    # lock (reads wait too), without lock_timeout, held while the truncation's WAL is
    # flushed; the next batches would reuse those pages anyway
    return sql.SQL("VACUUM (SKIP_LOCKED, INDEX_CLEANUP OFF, TRUNCATE false) {}").format(spec.rel)


def may_vacuum(server_version: int) -> sql.Composed:
    """Whether the current role may VACUUM the table of oid ``%s`` (owner, database owner,
    superuser, or MAINTAIN from PostgreSQL 17)."""
    maintain = sql.SQL(
        " OR has_table_privilege(c.oid, 'MAINTAIN')" if server_version >= 170000 else ""
    )
    return sql.SQL(
        "SELECT pg_has_role(c.relowner, 'USAGE') OR pg_has_role(d.datdba, 'USAGE')"
        " OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user){}"
        " FROM pg_class c, pg_database d"
        " WHERE c.oid = %s AND d.datname = current_database()"
    ).format(maintain)
