"""The one execution policy (onlineschema.session): what each kind of step and each undo
action runs under, and the one way durations are written."""

from __future__ import annotations

from typing import Any

import pytest

from onlineschema import Settings
from onlineschema.executor.steps import undo_steps
from onlineschema.plan import Action, Step
from onlineschema.session import Policy, Timeouts, batch_settings, ms, timeouts_for

pytestmark = pytest.mark.server_independent

POLICY = Policy.from_settings(
    Settings(lock_timeout=0.25, statement_timeout=3, index_lock_timeout=42)
)


def test_durations_are_written_one_way() -> None:
    assert [ms(0.5), ms(2), ms(60), ms(1.005), ms(0.0004)] == [
        "500ms",
        "2000ms",
        "60000ms",
        "1005ms",  # rounded, not cut to 1004ms
        "0ms",
    ]
    assert (POLICY.lock_timeout, POLICY.statement_timeout, POLICY.index_lock_timeout) == (
        "250ms",
        "3000ms",
        "42000ms",
    )
    # a batch always has a statement timeout, however small its setting
    assert "set_config('statement_timeout', '1ms', true)" in batch_settings(0.5, 0.0001).as_string(
        None
    )


def step(**kw: Any) -> Step:
    return Step(id="s", phase="expand", action="x", description="x", statements=("SELECT 1",), **kw)


def test_each_kind_of_step_runs_under_its_timeouts() -> None:
    brief = step()
    scan = step(scans=True, statement_timeout=0)
    concurrently = step(transactional=False, statement_timeout=0)
    build = step(
        transactional=False,
        statement_timeout=0,
        details={"index": {"schema": "public", "name": "i"}},
    )
    rebuild = step(transactional=False, statement_timeout=0, details={"waits_for_snapshots": True})
    assert timeouts_for(brief, POLICY) == Timeouts("250ms", "3000ms", local=True)
    assert timeouts_for(scan, POLICY) == Timeouts("250ms", "0", local=True)
    assert timeouts_for(concurrently, POLICY) == Timeouts("250ms", "0", local=False)
    assert timeouts_for(build, POLICY) == Timeouts("42000ms", "0", local=False)
    assert timeouts_for(rebuild, POLICY) == Timeouts("42000ms", "0", local=False)
    assert (build.waits_for_snapshots, rebuild.waits_for_snapshots) == (True, True)
    assert not concurrently.waits_for_snapshots


def test_undo_steps_carry_the_timeouts_abort_runs_them_under() -> None:
    """``abort`` and the offline abort script both take an undo's timeouts from its step:
    a brief action under the lock and statement timeouts, a scan without a statement
    timeout, one outside a transaction under index_lock_timeout."""
    done = step(
        undo=(
            Action("ALTER TABLE t DROP COLUMN c"),
            Action("ALTER TABLE t VALIDATE CONSTRAINT k", scans=True),
            Action("DROP INDEX CONCURRENTLY i", transactional=False),
        )
    )
    got = [timeouts_for(undo, POLICY) for undo, _ in undo_steps(done)]
    assert got == [
        Timeouts("250ms", "3000ms", local=True),
        Timeouts("250ms", "0", local=True),
        Timeouts("42000ms", "0", local=False),
    ]
