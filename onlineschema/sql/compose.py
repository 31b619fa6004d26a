"""The three primitives every composer in ``onlineschema.sql`` uses."""

from __future__ import annotations

from psycopg import sql


def render(q: sql.Composable) -> str:
    return q.as_string(None)


def qname(schema: str, name: str) -> sql.Composable:
    return sql.Identifier(schema, name)


def ident(name: str) -> str:
    return render(sql.Identifier(name))
