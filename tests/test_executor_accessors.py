"""The Executor's read accessors that the CLI, ``status --watch`` and ``verify`` use
instead of reaching into its state store."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from helpers import make_orders

from onlineschema import AddColumn, DropColumn, Executor
from onlineschema.errors import UnknownMigration

Conn = psycopg.Connection[tuple[Any, ...]]


def test_accessors_read_the_stored_migration(dsn: str, conn: Conn) -> None:
    make_orders(conn, rows=10)
    with Executor(dsn) as ex:
        result = ex.apply(
            [AddColumn("orders", "memo", "text"), DropColumn("orders", "note")],
            "acc",
            stop_before_contract=True,
        )
        assert result.state == "awaiting_contract"
        assert ex.require("acc")["state"] == "awaiting_contract"
        plan = ex.stored_plan("acc")
        assert plan.hash == result.plan.hash
        assert [s.id for s in plan.steps] == [s.id for s in result.plan.steps]
        states = ex.step_states("acc")
        assert list(states) == [s.id for s in plan.steps]
        assert {states[s.id]["state"] for s in plan.steps if s.phase != "contract"} == {"done"}
        assert states[plan.steps[-1].id]["state"] == "pending"
        assert ex.backfill_overrides("acc") == {}
        ex.set("acc", {"batch_max": 700})
        assert ex.backfill_overrides("acc") == {"batch_max": 700}
        assert ex.lock_holder("acc") is None  # nothing runs it now
        with pytest.raises(UnknownMigration, match="no migration named 'nope'"):
            ex.require("nope")
        with pytest.raises(UnknownMigration):
            ex.stored_plan("nope")


def test_lock_holder_is_the_session_running_the_migration(dsn: str, conn: Conn) -> None:
    make_orders(conn, rows=10)
    with Executor(dsn) as ex, Executor(dsn) as other:
        ex.apply([AddColumn("orders", "memo", "text")], "held", stop_before_contract=True)
        other._lock("held")  # what a running apply/resume holds
        try:
            holder = ex.lock_holder("held")
            assert holder is not None
            assert holder["pid"] == other.conn.info.backend_pid
        finally:
            other._unlock("held")
        assert ex.lock_holder("held") is None
