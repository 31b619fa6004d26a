"""The add_index recipe: its golden plans and its lifecycle on a real server (moved from
test_lifecycle.py)."""

from __future__ import annotations

import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import (
    Conn,
    lifecycle,
)
from helpers import (
    index_must_exist,
    index_must_not_exist,
    must_not_insert,
)
from psycopg import errors as pgerr

from onlineschema import (
    AddIndex,
)

INDEX_CASES = {
    "unique": (
        AddIndex("orders", columns=("note",), unique=True),
        "orders_note_idx",  # PostgreSQL's own name for CREATE UNIQUE INDEX ON orders (note)
        {"unique": True, "definition_contains": ["UNIQUE", "(note)"]},
    ),
    "expression": (
        AddIndex("orders", expressions=("lower(note)",), name="orders_lower_note_idx"),
        "orders_lower_note_idx",
        {"definition_contains": ["lower(note)"]},
    ),
    "partial": (
        AddIndex("orders", columns=("user_id",), where="note IS NULL"),
        "orders_user_id_idx",
        {"definition_contains": ["WHERE (note IS NULL)"]},
    ),
    "hash": (
        AddIndex("orders", columns=("note",), using="hash", name="orders_note_hash"),
        "orders_note_hash",
        {"method": "hash"},
    ),
    "gin": (
        AddIndex(
            "orders",
            expressions=("to_tsvector('simple', coalesce(note, ''))",),
            using="gin",
            name="orders_note_fts",
        ),
        "orders_note_fts",
        {"method": "gin", "definition_contains": ["to_tsvector"]},
    ),
    "include": (
        AddIndex("orders", columns=("user_id",), include=("amount",), name="orders_user_cover"),
        "orders_user_cover",
        {"definition_contains": ["INCLUDE (amount)"]},
    ),
}


@pytest.mark.parametrize("kind", sorted(INDEX_CASES))
def test_add_index(dsn: str, orders: Conn, kind: str) -> None:
    change, name, expect = INDEX_CASES[kind]

    def built(conn: Conn) -> None:
        index_must_exist(conn, name, valid=True, **expect)  # type: ignore[arg-type]

    lifecycle(
        dsn,
        orders,
        [change],
        after_expand=built,
        after_abort=lambda c: index_must_not_exist(c, name),
        after_finish=built,
    )
    if kind == "unique":
        must_not_insert(
            orders,
            "INSERT INTO orders (user_id, note) VALUES (1, 'note 1')",
            (),
            pgerr.UniqueViolation,
        )


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("add_index"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
