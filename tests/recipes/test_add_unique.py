"""The add_unique recipe: its golden plans and its lifecycle on a real server (moved from
test_lifecycle.py)."""

from __future__ import annotations

import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import (
    Check,
    Conn,
    after_action,
    lifecycle,
)
from helpers import (
    column_must_exist,
    constraint_must_exist,
    constraint_must_not_exist,
    index_must_exist,
    index_must_not_exist,
    must_not_insert,
)
from psycopg import errors as pgerr

from onlineschema import (
    AddUnique,
)


def test_add_unique_from_a_concurrent_index(dsn: str, orders: Conn) -> None:
    def index_only(conn: Conn) -> None:
        index_must_exist(conn, "users_name_key", valid=True, unique=True)
        constraint_must_not_exist(conn, "users", "users_name_key")

    def constraint(conn: Conn) -> None:
        constraint_must_exist(conn, "users", "users_name_key", validated=True, type="u")
        index_must_exist(conn, "users_name_key", valid=True, unique=True)
        must_not_insert(
            conn, "INSERT INTO users (name) VALUES ('user 1')", (), pgerr.UniqueViolation
        )

    lifecycle(
        dsn,
        orders,
        [AddUnique("users", ("name",))],
        tables=("users",),
        stop=after_action("create_index"),
        after_expand=index_only,
        after_abort=lambda c: index_must_not_exist(c, "users_name_key"),
        after_finish=constraint,
    )


def _primary_key_lifecycle(dsn: str, conn: Conn, not_valid: Check, final: Check) -> None:
    """AddUnique(primary_key=True) on a table without one, over a nullable column: a
    concurrent unique index, NOT NULL the online way, then the index becomes the key.
    Stopped after the NOT VALID step, so abort must drop both the index and the check."""
    conn.execute("CREATE TABLE events (code text, payload text)")
    conn.execute("INSERT INTO events SELECT 'e' || g, 'p' FROM generate_series(1, 1500) g")

    def expanded(conn: Conn) -> None:
        index_must_exist(conn, "events_pkey", valid=True, unique=True)
        constraint_must_not_exist(conn, "events", "events_pkey")
        not_valid(conn)
        must_not_insert(conn, "INSERT INTO events (code) VALUES (NULL)")

    def finished(conn: Conn) -> None:
        constraint_must_exist(conn, "events", "events_pkey", validated=True, type="p")
        column_must_exist(conn, "events", "code", nullable=False)
        index_must_exist(conn, "events_pkey", valid=True, unique=True)
        must_not_insert(conn, "INSERT INTO events (code) VALUES ('e1')", (), pgerr.UniqueViolation)
        final(conn)

    lifecycle(
        dsn,
        conn,
        [AddUnique("events", ("code",), primary_key=True)],
        tables=("events",),
        stop=after_action("add_not_null_not_valid", "add_check_not_valid"),
        after_expand=expanded,
        after_abort=lambda c: index_must_not_exist(c, "events_pkey"),
        after_finish=finished,
    )


@pytest.mark.pg(">=18")
def test_add_primary_key_on_nullable_column_pg18(dsn: str, conn: Conn) -> None:
    _primary_key_lifecycle(
        dsn,
        conn,
        lambda c: constraint_must_exist(c, "events", "events_code_not_null", validated=False),
        lambda c: constraint_must_exist(c, "events", "events_code_not_null", validated=True),
    )


@pytest.mark.pg("<18")
def test_add_primary_key_on_nullable_column_pg15_16(dsn: str, conn: Conn) -> None:
    helper = "onlineschema_nn_events_code"
    _primary_key_lifecycle(
        dsn,
        conn,
        lambda c: constraint_must_exist(c, "events", helper, validated=False, type="c"),
        lambda c: constraint_must_not_exist(c, "events", helper),
    )


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("add_unique"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
