"""Catalog checks: the postconditions that say whether a step's result is in the
catalog (what makes a step safe to run again after a crash), and the compile probes
that check user expressions against a live table without reading it (``EXPLAIN``).
Composed with ``psycopg.sql`` like every statement in ``onlineschema.sql``."""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from .compose import qname, render

_REL = (
    "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = {schema} AND c.relname = {rel}"
)


def _rel(schema: str, rel: str) -> sql.Composable:
    return sql.SQL(_REL).format(schema=sql.Literal(schema), rel=sql.Literal(rel))


def q_column_exists(schema: str, table: str, column: str, *, exists: bool = True) -> str:
    q = sql.SQL(
        "SELECT {neg} EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = ({rel}) "
        "AND attname = {col} AND NOT attisdropped)"
    ).format(neg=sql.SQL("" if exists else "NOT"), rel=_rel(schema, table), col=sql.Literal(column))
    return render(q)


def q_column_notnull(schema: str, table: str, column: str, notnull: bool = True) -> str:
    return render(
        sql.SQL(
            "SELECT coalesce((SELECT attnotnull FROM pg_attribute WHERE attrelid = ({rel}) "
            "AND attname = {col} AND NOT attisdropped), false) = {v}"
        ).format(rel=_rel(schema, table), col=sql.Literal(column), v=sql.Literal(notnull))
    )


def q_column_has_default(schema: str, table: str, column: str, has: bool = True) -> str:
    return render(
        sql.SQL(
            "SELECT {neg} EXISTS (SELECT 1 FROM pg_attrdef d JOIN pg_attribute a "
            "ON a.attrelid = d.adrelid AND a.attnum = d.adnum "
            "WHERE d.adrelid = ({rel}) AND a.attname = {col})"
        ).format(
            neg=sql.SQL("" if has else "NOT"), rel=_rel(schema, table), col=sql.Literal(column)
        )
    )


def q_constraint(schema: str, table: str, name: str, *, validated: bool | None = None) -> str:
    cond: sql.Composable = sql.SQL("")
    if validated is not None:
        cond = sql.SQL(" AND convalidated = {}").format(sql.Literal(validated))
    return render(
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = ({rel}) "
            "AND conname = {name}{cond})"
        ).format(rel=_rel(schema, table), name=sql.Literal(name), cond=cond)
    )


def q_constraint_absent(schema: str, table: str, name: str) -> str:
    return render(
        sql.SQL(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = ({rel}) "
            "AND conname = {name})"
        ).format(rel=_rel(schema, table), name=sql.Literal(name))
    )


def q_index_valid(schema: str, name: str) -> str:
    return render(
        sql.SQL(
            "SELECT coalesce((SELECT indisvalid AND indisready FROM pg_index "
            "WHERE indexrelid = ({rel})), false)"
        ).format(rel=_rel(schema, name))
    )


def q_index_exists(schema: str, name: str) -> str:
    return render(sql.SQL("SELECT EXISTS ({rel})").format(rel=_rel(schema, name)))


def q_index_attached(schema: str, name: str, parent_schema: str, parent: str) -> str:
    """Is index ``name`` a partition of index ``parent``?"""
    return render(
        sql.SQL(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = ({rel})"
            " AND inhparent = ({prel}))"
        ).format(rel=_rel(schema, name), prel=_rel(parent_schema, parent))
    )


def q_has_rows(schema: str, table: str) -> str:
    """Has the table a row? (reads at most one; ACCESS SHARE)"""
    return render(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {}) AS has_rows").format(qname(schema, table))
    )


def q_column_identity(schema: str, table: str, column: str) -> str:
    return render(
        sql.SQL(
            "SELECT coalesce((SELECT attidentity <> '' FROM pg_attribute WHERE attrelid = ({rel}) "
            "AND attname = {col} AND NOT attisdropped), false)"
        ).format(rel=_rel(schema, table), col=sql.Literal(column))
    )


def q_relation_absent(schema: str, name: str) -> str:
    return render(sql.SQL("SELECT NOT EXISTS ({rel})").format(rel=_rel(schema, name)))


def q_trigger_exists(schema: str, table: str, trigger: str, *, exists: bool = True) -> str:
    return render(
        sql.SQL(
            "SELECT {neg} EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = ({rel}) "
            "AND tgname = {name})"
        ).format(
            neg=sql.SQL("" if exists else "NOT"), rel=_rel(schema, table), name=sql.Literal(trigger)
        )
    )


def q_index_state(schema: str, name: str) -> str:
    """(indisvalid, indisready) of an index, no row when it does not exist."""
    return render(
        sql.SQL("SELECT indisvalid, indisready FROM pg_index WHERE indexrelid = ({rel})").format(
            rel=_rel(schema, name)
        )
    )


def explain(query: sql.Composable) -> str:
    return render(sql.SQL("EXPLAIN {}").format(query))


def q_compile_expression(schema: str, table: str | None, expr: str, type_: str | None) -> str:
    """A query that compiles ``expr`` (over ``table``'s rows) without running it."""
    value: sql.Composable = sql.SQL("({})").format(sql.SQL(expr))
    if type_:
        value = sql.SQL("{}::{}").format(value, sql.SQL(type_))
    q = sql.SQL("SELECT {}").format(value)
    if table:
        q = sql.SQL("{} FROM {} AS {}").format(q, qname(schema, table), sql.Identifier(table))
    return explain(q)


def q_compile_condition(schema: str, table: str, cond: str) -> str:
    return explain(
        sql.SQL("SELECT 1 FROM {} AS {} WHERE ({})").format(
            qname(schema, table), sql.Identifier(table), sql.SQL(cond)
        )
    )


def q_type_probe(type_: str) -> str:
    """``SELECT NULL::<type> LIMIT 0``: its result description carries the type's oid and
    typmod. ``type_`` has been through ``expressions.check_type``."""
    return render(sql.SQL("SELECT NULL::{} LIMIT 0").format(sql.SQL(type_)))


def q_column_type(schema: str, table: str, column: str, formatted: str) -> str:
    """True when the column's ``format_type`` is ``formatted``."""
    return render(
        sql.SQL(
            "SELECT coalesce((SELECT format_type(atttypid, atttypmod) = {f} FROM pg_attribute"
            " WHERE attrelid = ({rel}) AND attname = {col} AND NOT attisdropped), false)"
        ).format(f=sql.Literal(formatted), rel=_rel(schema, table), col=sql.Literal(column))
    )


def q_compile_reverse(column: str, new_type: str, expr: str, old_type: str, alias: str) -> str:
    """Compiles ``expr`` (which names ``column``, meaning the value in the new type) as
    the sync trigger evaluates it."""
    return explain(
        sql.SQL("SELECT CAST(({e}) AS {old}) FROM (SELECT NULL::{new} AS {col}) AS {alias}").format(
            e=sql.SQL(expr),
            old=sql.SQL(old_type),
            new=sql.SQL(new_type),
            col=sql.Identifier(column),
            alias=sql.Identifier(alias),
        )
    )


def q_columns_absent(schema: str, table: str, columns: Sequence[str]) -> str:
    return render(
        sql.SQL(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = ({rel}) "
            "AND attname = ANY({cols}) AND NOT attisdropped)"
        ).format(rel=_rel(schema, table), cols=sql.Literal(list(columns)))
    )


def q_compile_fk_join(
    schema: str,
    table: str,
    columns: Sequence[str],
    ref_schema: str,
    ref_table: str,
    ref_columns: Sequence[str],
) -> str:
    """Compiles only if each referencing column can be compared with its referenced one
    (what a foreign key needs), without reading either table."""
    on = sql.SQL(" AND ").join(
        sql.SQL("a.{} = b.{}").format(sql.Identifier(c), sql.Identifier(r))
        for c, r in zip(columns, ref_columns, strict=True)
    )
    return explain(
        sql.SQL("SELECT 1 FROM {} AS a JOIN {} AS b ON {}").format(
            qname(schema, table), qname(ref_schema, ref_table), on
        )
    )
