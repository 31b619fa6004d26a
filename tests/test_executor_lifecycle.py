"""The migration lifecycle (executor/lifecycle.py): what each command does in each state,
the abort preview, and ``apply(stop_before_contract=True)`` on a real server."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from helpers import index_must_exist, make_orders, migration_state

from onlineschema import AddColumn, AddIndex, DropColumn, DropIndex, Executor, Refused
from onlineschema.errors import Terminated
from onlineschema.executor import apply_through_contract
from onlineschema.executor.lifecycle import (
    CONTRACT_MARKER,
    TRANSITIONS,
    Command,
    MigrationState,
    Outcome,
    decide,
    hold_contract,
    undo_preview,
)
from onlineschema.plan import Action, Plan, Step, StepKind
from onlineschema.state import STATES

Conn = psycopg.Connection[tuple[Any, ...]]


@pytest.mark.server_independent
def test_every_command_has_an_outcome_in_every_state() -> None:
    assert tuple(MigrationState) == STATES
    for command in Command:
        assert set(TRANSITIONS[command]) == {None, *MigrationState}, command


@pytest.mark.server_independent
@pytest.mark.parametrize(
    ("command", "state", "outcome"),
    [
        (Command.APPLY, None, Outcome.START),
        (Command.APPLY, "paused", Outcome.RUN),
        (Command.APPLY, "awaiting_contract", Outcome.NOTHING),
        (Command.APPLY, "completed", Outcome.NOTHING),
        (Command.APPLY, "aborted", Outcome.REFUSE),
        (Command.RESUME, "failed", Outcome.RUN),
        (Command.RESUME, "awaiting_contract", Outcome.REFUSE),
        (Command.RESUME, "aborted", Outcome.NOTHING),
        (Command.CONTRACT, "awaiting_contract", Outcome.RUN),
        (Command.CONTRACT, "completed", Outcome.REFUSE),
        (Command.CONTRACT, "aborting", Outcome.REFUSE),
        (Command.ABORT, "awaiting_contract", Outcome.RUN),
        (Command.ABORT, "completed", Outcome.REFUSE),
        (Command.ABORT, None, Outcome.REFUSE),
    ],
)
def test_decide(command: Command, state: str | None, outcome: Outcome) -> None:
    assert decide(command, state) is outcome


def _step(sid: str, undo: bool = True) -> Step:
    return Step(
        id=sid,
        phase="expand",
        action="add_column",
        description=f"step {sid}",
        statements=("SELECT 1",),
        undo=(Action(f"SELECT '{sid}'"),) if undo else (),
    )


@pytest.mark.server_independent
def test_undo_preview_is_what_abort_undoes_newest_first() -> None:
    plan = Plan(
        steps=(_step("a"), _step("b"), _step("c", undo=False), _step("d"), _step("e")),
        server_version=180000,
    )
    states = {
        "a": {"state": "done"},
        "b": {"state": "undone"},  # an earlier abort got this far
        "c": {"state": "done"},  # nothing to undo
        "d": {"state": "failed"},  # may have half run: undo it
        "e": {"state": "pending"},
    }
    assert [s.id for s in undo_preview(plan, states)] == ["d", "a"]


@pytest.mark.server_independent
def test_hold_contract_marker_is_a_marker_step() -> None:
    plan = hold_contract(Plan(steps=(_step("a"),), server_version=180000))
    marker = plan.steps[-1]
    assert marker.id == CONTRACT_MARKER and marker.kind is StepKind.MARKER
    assert Plan.from_dict(plan.to_dict()).steps[-1].kind is StepKind.MARKER


def test_stop_before_contract_holds_the_contract_phase(dsn: str, conn: Conn) -> None:
    make_orders(conn, rows=50)
    conn.execute("CREATE INDEX orders_amount_idx ON orders (amount)")
    changes = [AddColumn("orders", "status", "text"), DropIndex("orders_amount_idx")]
    with Executor(dsn) as ex:
        result = ex.apply(changes, "held", stop_before_contract=True)
        assert result.state == "awaiting_contract"
        index_must_exist(conn, "orders_amount_idx", valid=True)
        assert [s.id for s in result.plan.steps][-1] == CONTRACT_MARKER
        # the same apply again reports it, resume refuses, contract finishes it
        assert ex.apply(changes, "held").state == "awaiting_contract"
        with pytest.raises(Refused, match="waiting for its contract phase"):
            ex.resume("held")
        assert ex.contract("held").state == "completed"
    assert migration_state(conn, "held") == "completed"
    gone = conn.execute("SELECT to_regclass('orders_amount_idx')").fetchone()
    assert gone == (None,)


def test_restart_aborted_starts_afresh(dsn: str, conn: Conn) -> None:
    make_orders(conn, rows=50)
    changes = [AddColumn("orders", "status", "text")]
    with Executor(dsn) as ex:
        ex.apply(changes, "again", stop_before_contract=True)
        assert ex.abort("again").state == "aborted"
        with pytest.raises(Refused, match="was aborted"):
            ex.apply(changes, "again")
        assert ex.apply(changes, "again", restart_aborted=True).state == "completed"
    assert migration_state(conn, "again") == "completed"


def test_apply_through_contract_and_forget(dsn: str, conn: Conn) -> None:
    """What the framework integrations run: the whole change, contract included (or held
    with ``contract=False``); then the record of a finished migration is forgotten, and
    that of an unfinished one is refused."""
    make_orders(conn, rows=50)
    conn.execute("ALTER TABLE orders ADD COLUMN legacy text, ADD COLUMN old text")
    with Executor(dsn) as ex:
        held = apply_through_contract(ex, [DropColumn("orders", "old")], "held", contract=False)
        assert held.state == "awaiting_contract"
        whole = apply_through_contract(ex, [DropColumn("orders", "legacy")], "whole")
        assert whole.state == "completed"
        with pytest.raises(Refused, match="only a finished one can be forgotten"):
            ex.forget("held")
        ex.forget("whole")
        assert ex.record("whole") is None and ex.record("held") is not None
    assert migration_state(conn, "held") == "awaiting_contract"
    columns = conn.execute(
        "SELECT array_agg(attname::text ORDER BY attname) FROM pg_attribute"
        " WHERE attrelid = 'orders'::regclass AND attnum > 0 AND NOT attisdropped"
    ).fetchone()
    assert columns is not None and "legacy" not in columns[0] and "old" in columns[0]


@pytest.mark.parametrize(
    ("interrupt", "reason"),
    [(KeyboardInterrupt, "interrupted (Ctrl-C)"), (Terminated, "interrupted (SIGTERM)")],
)
def test_an_interrupted_run_is_recorded_paused_whoever_called(
    dsn: str, conn: Conn, interrupt: type[KeyboardInterrupt], reason: str
) -> None:
    """Ctrl-C (or SIGTERM, as the CLI raises it) stops ``apply`` called from Python, as a
    framework's migrate calls it: the executor itself records the stop (paused, how),
    gives the migration up, and ``resume`` finishes it."""

    class StopAtSecondStep:
        def step_started(self, step: Step, index: int, total: int) -> None:
            if index == 1:
                raise interrupt()

        def step_finished(self, step: Step, index: int, total: int, skipped: bool) -> None:
            pass

    make_orders(conn, rows=50)
    changes = [AddColumn("orders", "status", "text"), AddIndex("orders", ["status"])]
    with Executor(dsn, observer=StopAtSecondStep()) as ex:
        with pytest.raises(interrupt):
            ex.apply(changes, "stopped")
        assert ex.lock_holder("stopped") is None
    row = conn.execute(
        "SELECT state, last_error FROM onlineschema.migrations WHERE name = 'stopped'"
    ).fetchone()
    assert row == ("paused", reason)
    with Executor(dsn) as ex:
        assert ex.resume("stopped").state == "completed"
    index_must_exist(conn, "orders_status_idx", valid=True)


def test_mark_interrupted_pauses_only_a_running_migration(dsn: str, conn: Conn) -> None:
    make_orders(conn, rows=50)
    with Executor(dsn) as ex:
        ex.apply([AddColumn("orders", "status", "text")], "done_one")
        ex.mark_interrupted("done_one")
        assert migration_state(conn, "done_one") == "completed"
        conn.execute("UPDATE onlineschema.migrations SET state = 'running'")
        ex.mark_interrupted("done_one", "interrupted (test)")
    assert migration_state(conn, "done_one") == "paused"
