"""Every change kind through the pgroll-style lifecycle, on a real server.

For each change: apply the expand phase -> check the catalog (and what "old code" that
does not know the change sees) -> ``abort`` -> check the table is exactly as before ->
applying the aborted name again is refused -> apply again under a new name, stop after
the expand phase again -> ``resume`` to the end -> check the final catalog and data.

How a migration is stopped after its expand phase: the test passes the executor an
observer whose ``step_finished`` hook, right after the step that ends the window (by
default the last step of the ``expand`` phase), calls ``Executor.pause(name)`` through a
*second* executor, i.e. writes the pause flag into ``onlineschema.control`` from another
connection, exactly what an operator's ``onlineschema pause`` does. The running executor
reads the flag before its next step (and after its last one) and stops with ``Paused``,
leaving the migration ``paused``: resumable and abortable. For a plan of a single step
(an index, a default, a backfill...) the pause arrives while that step runs, and the
executor stops right after it instead of recording the migration as completed. A
backfill reads the flag between batches, which is how ``mid_backfill=True`` stops one
half-way. Nothing is mocked and nothing sleeps: the stop point is deterministic.

Drops (index, constraint) run in the contract phase and cannot be undone: for them the
test checks that abort is refused with the way forward. ``VALIDATE`` cannot be undone
either: abort keeps the constraint validated, and that is the only difference.

"Exactly as before" is ``catalog_snapshot`` (pg_class, pg_attribute, pg_attrdef, pg_index,
pg_constraint and pg_trigger rows of the table and its indexes) taken after ``VACUUM``
both times, with ``ignore_dropped_columns``: an aborted ``ADD COLUMN`` leaves an
invisible ``attisdropped`` placeholder that only a table rewrite removes (and relnatts
counts it); everything else must be identical, down to ``relfilenode`` (no rewrite).

PostgreSQL 18 makes NOT NULL with ``ADD CONSTRAINT ... NOT NULL ... NOT VALID`` +
``VALIDATE``; 15 and 16 with a helper ``CHECK (col IS NOT NULL) NOT VALID``, ``VALIDATE``,
``SET NOT NULL`` (no scan) and a dropped helper. Tests whose checks differ carry the
``pg`` marker.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from helpers import (
    catalog_snapshot,
    column_default,
    constraint_names,
    invalid_indexes,
    migration_state,
    trigger_names,
)

from onlineschema import (
    BackfillSettings,
    Change,
    Executor,
    Paused,
    Refused,
    Settings,
    Step,
)

Conn = psycopg.Connection[Any]
Check = Callable[[Conn], object]  # the result is ignored; checks assert


#: small batches read the pause flag before every batch: a backfill can be stopped midway
SMALL_BATCHES = Settings(
    backfill=BackfillSettings(
        batch_initial=100, batch_min=10, batch_max=100, duty_cycle=1.0, control_interval=0.0
    )
)


@dataclass
class PauseAt:
    """Observer that pauses migration ``name`` from another connection right after the
    step ``stop(step)`` picks finishes, or after the first backfill batch."""

    dsn: str
    name: str
    stop: Callable[[Step], bool] | None = None
    mid_backfill: bool = False
    finished: list[str] = field(default_factory=list)
    requested: bool = False

    def _pause(self) -> None:
        if not self.requested:
            self.requested = True
            with Executor(self.dsn) as operator:
                operator.pause(self.name)

    def step_started(self, step: Step, index: int, total: int) -> None:
        pass

    def step_finished(self, step: Step, index: int, total: int, skipped: bool) -> None:
        self.finished.append(step.id)
        if self.stop is not None and self.stop(step):
            self._pause()

    def backfill_progress(self, step_id: str, rows_done: int, *rest: Any) -> None:
        if self.mid_backfill:
            self._pause()


def end_of_expand(changes: Sequence[Change], dsn: str) -> Callable[[Step], bool]:
    """The last step of the expand phase, or the first step when there is none."""
    with Executor(dsn) as ex:
        steps = ex.plan(changes).steps
    expand = [s.id for s in steps if s.phase == "expand"]
    last = expand[-1] if expand else steps[0].id
    return lambda step: step.id == last


def after_action(*actions: str) -> Callable[[Step], bool]:
    return lambda step: step.action in actions


def run_until_paused(
    dsn: str,
    changes: Sequence[Change],
    name: str,
    stop: Callable[[Step], bool] | None = None,
    *,
    mid_backfill: bool = False,
    settings: Settings | None = None,
) -> PauseAt:
    """Apply ``changes`` as ``name`` and stop where ``stop`` says (default: end of the
    expand phase); the migration must be left ``paused``."""
    if stop is None and not mid_backfill:
        stop = end_of_expand(changes, dsn)
    observer = PauseAt(dsn, name, stop, mid_backfill)
    with Executor(dsn, settings, observer=observer) as ex, pytest.raises(Paused):
        ex.apply(changes, name)
    assert observer.requested, "the stop point was never reached"
    with Executor(dsn) as ex:
        status = ex.status(name)[0]
    assert status["state"] == "paused", status
    return observer


def vacuumed_snapshots(
    conn: Conn, tables: Sequence[str], *, mask_oids: bool = False
) -> dict[str, str]:
    for t in tables:
        conn.execute(f'VACUUM "{t}"')
    snaps = {t: catalog_snapshot(conn, t, ignore_dropped_columns=True) for t in tables}
    if mask_oids:  # a constraint taken off and put back is a new row with a new oid
        snaps = {t: re.sub(r'"oid": "\d+"', '"oid": "*"', s) for t, s in snaps.items()}
    return snaps


def no_leftovers(conn: Conn, tables: Sequence[str]) -> None:
    """No helper trigger, function, constraint or invalid index of onlineschema remains."""
    for t in tables:
        assert not [n for n in trigger_names(conn, t) if n.startswith("onlineschema")]
        assert not [n for n in constraint_names(conn, t) if n.startswith("onlineschema")]
        assert invalid_indexes(conn, t) == []
    fns = conn.execute("SELECT proname FROM pg_proc WHERE proname LIKE 'onlineschema%'").fetchall()
    assert fns == []


def lifecycle(
    dsn: str,
    conn: Conn,
    changes: Sequence[Change],
    *,
    tables: Sequence[str] = ("orders",),
    stop: Callable[[Step], bool] | None = None,
    mid_backfill: bool = False,
    settings: Settings | None = None,
    after_expand: Check,
    during_window: Check | None = None,
    after_abort: Check | None = None,
    after_finish: Check,
    mask_oids: bool = False,
) -> None:
    """expand -> check -> abort -> same as before -> same name refused -> expand under a
    new name -> check -> resume -> final check."""
    before = vacuumed_snapshots(conn, tables, mask_oids=mask_oids)

    run_until_paused(dsn, changes, "first", stop, mid_backfill=mid_backfill, settings=settings)
    after_expand(conn)
    if during_window:
        during_window(conn)

    with Executor(dsn) as ex:
        result = ex.abort("first")
    assert result.state == "aborted"
    assert migration_state(conn, "first") == "aborted"
    if after_abort:
        after_abort(conn)
    no_leftovers(conn, tables)
    assert vacuumed_snapshots(conn, tables, mask_oids=mask_oids) == before

    with Executor(dsn) as ex, pytest.raises(Refused) as refused:
        ex.apply(changes, "first")
    assert "'first' was aborted" in str(refused.value)
    assert "new --name" in str(refused.value)

    run_until_paused(dsn, changes, "second", stop, mid_backfill=mid_backfill, settings=settings)
    after_expand(conn)
    if during_window:
        during_window(conn)
    with Executor(dsn, settings) as ex:
        assert ex.resume("second").state == "completed"
    assert migration_state(conn, "second") == "completed"
    no_leftovers(conn, tables)
    after_finish(conn)


def contract_lifecycle(
    dsn: str,
    conn: Conn,
    changes: Sequence[Change],
    *,
    before_contract: Check,
    after: Check,
    tables: Sequence[str] = ("orders",),
    mask_oids: bool = False,
) -> None:
    """A contract-only change: apply stops before it (awaiting_contract) -> abort leaves
    the table as it was -> apply under a new name -> contract -> final check; abort after
    the contract is refused."""
    before = vacuumed_snapshots(conn, tables, mask_oids=mask_oids)
    with Executor(dsn) as ex:
        assert ex.apply(changes, "first").state == "awaiting_contract"
    assert migration_state(conn, "first") == "awaiting_contract"
    before_contract(conn)
    with Executor(dsn) as ex:
        assert ex.abort("first").state == "aborted"
    no_leftovers(conn, tables)
    assert vacuumed_snapshots(conn, tables, mask_oids=mask_oids) == before
    with Executor(dsn) as ex:
        assert ex.apply(changes, "second").state == "awaiting_contract"
        assert ex.contract("second").state == "completed"
    assert migration_state(conn, "second") == "completed"
    after(conn)
    with Executor(dsn) as ex, pytest.raises(Refused) as refused:
        ex.abort("second")
    assert "already completed" in str(refused.value)


def run_until_paused_in_contract(dsn: str, name: str, stop: Callable[[Step], bool]) -> None:
    observer = PauseAt(dsn, name, stop, False)
    with Executor(dsn, observer=observer) as ex, pytest.raises(Paused):
        ex.contract(name)
    assert observer.requested


def default_is(conn: Conn, column: str, default: str | None) -> None:
    assert column_default(conn, "orders", column) == default


def drop_lifecycle(dsn: str, conn: Conn, change: Change, gone: Check) -> None:
    """A drop runs in the contract phase and cannot be undone: abort after it is refused
    with the way forward (resume), which finishes the migration."""
    run_until_paused(dsn, [change], "drop", lambda step: step.phase == "contract")
    gone(conn)
    with Executor(dsn) as ex, pytest.raises(Refused) as refused:
        ex.abort("drop")
    assert "cannot be undone" in str(refused.value)
    assert "resume drop" in str(refused.value)
    assert migration_state(conn, "drop") == "paused"
    with Executor(dsn) as ex:
        assert ex.resume("drop").state == "completed"
    gone(conn)


SIZE = "CASE WHEN amount > 100 THEN 'big' ELSE 'small' END"
