"""The run_sql recipe: its golden plans and its lifecycle on a real server."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import Conn, lifecycle
from helpers import column_must_exist, index_must_exist, must_not_insert

from onlineschema import AddColumn, AddIndex, Executor, RunSQL


def _comment(conn: Conn) -> Any:
    row = conn.execute("SELECT obj_description('orders'::regclass, 'pg_class')").fetchone()
    assert row is not None
    return row[0]


def test_run_sql_step_lifecycle(dsn: str, orders: Conn) -> None:
    """A statement run as written, lock-guarded on the tables it touches; it has no undo,
    so abort keeps what it did (and says nothing can be put back for it)."""
    change = RunSQL("COMMENT ON TABLE orders IS 'archived'", touches=("orders",))
    with Executor(dsn) as ex:
        (step,) = ex.plan([change]).steps
    assert (step.phase, step.lock, step.tables, step.undo) == (
        "expand",
        "ShareRowExclusiveLock",
        ("public.orders",),
        (),
    )

    def commented(conn: Conn) -> None:
        assert _comment(conn) == "archived"

    def kept(conn: Conn) -> None:
        commented(conn)
        conn.execute("COMMENT ON TABLE orders IS NULL")  # as before, for the next round

    lifecycle(
        dsn, orders, [change], after_expand=commented, after_abort=kept, after_finish=commented
    )


def test_a_table_created_by_the_migration_is_used_by_later_changes(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    changes = [
        RunSQL("CREATE TABLE archive (id bigint PRIMARY KEY, note text)", creates=("archive",)),
        AddColumn("archive", "kind", "text", nullable=False),
        AddIndex("archive", ("kind",)),
    ]
    with Executor(dsn) as ex:
        assert ex.apply(changes, "archive").state == "completed"
    column_must_exist(conn, "archive", "kind", type="text", nullable=False)
    index_must_exist(conn, "archive_kind_idx", valid=True)
    must_not_insert(conn, "INSERT INTO archive (id) VALUES (1)")


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("run_sql"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
