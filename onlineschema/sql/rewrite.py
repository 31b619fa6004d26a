"""Rebuilding an index or a constraint on other columns starts from the definition
PostgreSQL prints (pg_get_indexdef / pg_get_constraintdef): it is parsed with pglast, its
column references are renamed, and it is printed again, so opclasses, collations,
orderings, INCLUDE lists, predicates, storage parameters and FK actions carry over."""

from __future__ import annotations

from typing import Any

import pglast
from pglast import ast

from ..expressions import deparse, walk


def _rename_refs(node: object, columns: dict[str, str]) -> None:
    for sub in walk(node):
        if isinstance(sub, ast.ColumnRef) and sub.fields:
            last = sub.fields[-1]
            if isinstance(last, ast.String) and last.sval in columns:
                sub.fields = (*sub.fields[:-1], ast.String(sval=columns[last.sval]))
        elif isinstance(sub, ast.IndexElem) and sub.name in columns:
            sub.name = columns[sub.name]


def index_references(definition: str, columns: set[str]) -> bool:
    """Does the index ``definition`` use any of ``columns`` (as a key, in an expression,
    in INCLUDE or in its predicate)?"""
    stmt: Any = pglast.parse_sql(definition)[0].stmt
    for sub in walk(stmt):
        if isinstance(sub, ast.ColumnRef) and sub.fields:
            last = sub.fields[-1]
            if isinstance(last, ast.String) and last.sval in columns:
                return True
        elif isinstance(sub, ast.IndexElem) and sub.name in columns:
            return True
    return False


def rebuild_index(definition: str, new_name: str, columns: dict[str, str]) -> str:
    """``CREATE [UNIQUE] INDEX CONCURRENTLY new_name ...`` like ``definition`` but on the
    renamed ``columns`` (old name -> new name)."""
    stmt: Any = pglast.parse_sql(definition)[0].stmt
    stmt.idxname = new_name
    stmt.concurrent = True
    stmt.if_not_exists = False
    _rename_refs(stmt, columns)
    return deparse(stmt)


def constraint_references(definition: str, columns: set[str]) -> bool:
    """Does a CHECK ``definition`` use any of ``columns``?"""
    stmt: Any = pglast.parse_sql(f"ALTER TABLE x ADD CONSTRAINT x {definition}")[0].stmt
    for sub in walk(stmt.cmds[0].def_):
        if isinstance(sub, ast.ColumnRef) and sub.fields:
            last = sub.fields[-1]
            if isinstance(last, ast.String) and last.sval in columns:
                return True
    return False


def rebuild_constraint(
    schema: str,
    table: str,
    name: str,
    definition: str,
    columns: dict[str, str],
    *,
    ref: tuple[str, str] | None = None,
    ref_columns: dict[str, str] | None = None,
) -> str:
    """``ALTER TABLE ... ADD CONSTRAINT name <definition> NOT VALID`` with the table's
    ``columns`` renamed; for a foreign key, ``ref`` (schema, table) is written out in
    full and ``ref_columns`` renames the referenced columns."""
    stmt: Any = pglast.parse_sql(f"ALTER TABLE x ADD CONSTRAINT x {definition}")[0].stmt
    con = stmt.cmds[0].def_
    con.conname = name
    con.skip_validation = True
    con.initially_valid = False
    if con.fk_attrs:
        con.fk_attrs = tuple(ast.String(sval=columns.get(a.sval, a.sval)) for a in con.fk_attrs)
        if ref is not None:
            con.pktable = ast.RangeVar(
                schemaname=ref[0], relname=ref[1], inh=True, relpersistence="p"
            )
        if ref_columns:
            con.pk_attrs = tuple(
                ast.String(sval=ref_columns.get(a.sval, a.sval)) for a in con.pk_attrs or ()
            )
    else:
        _rename_refs(con.raw_expr, columns)
    stmt.relation = ast.RangeVar(schemaname=schema, relname=table, inh=True, relpersistence="p")
    return deparse(stmt)
