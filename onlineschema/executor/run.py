"""Running a migration's steps once its executor holds it: forward (the step loop), back
(abort's undo), and joining another process's backfill."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog

from ..backfill import BackfillRunner, NotJoinable
from ..errors import AlreadyRunning, LockBudgetExhausted, OnlineSchemaError, Paused, Refused
from ..lease import Lease
from ..plan import Plan, Step, StepKind
from ..reconnect import is_disconnect
from ..state import StateStore
from .lifecycle import (
    Command,
    Outcome,
    contract_steps_blocking_abort,
    decide,
    finishes_contract,
    kept_backfills,
    undo_preview,
    waits_for_contract,
)
from .lifecycle import MigrationState as S
from .runtime import Runtime
from .steps import run_step, run_undo

__all__ = [
    "Joinable",
    "Result",
    "abort_steps",
    "join_backfill",
    "joinable_backfill",
    "run_steps",
]

log = structlog.stdlib.get_logger("onlineschema.executor")


@dataclass
class Result:
    name: str
    state: str
    steps_run: int
    steps_skipped: int
    seconds: float
    plan: Plan

    def __post_init__(self) -> None:
        self.state = str(self.state)  # a MigrationState's value


def run_steps(rt: Runtime, plan: Plan, *, contract: bool, lease: Lease | None) -> Result:
    """Run the unfinished steps of ``plan`` (migration ``rt.migration``) in order, up to
    its contract phase unless ``contract``; record how the migration ends."""
    name, store, observer = rt.migration, rt.store, rt.observer
    t0 = time.monotonic()
    run = skipped = 0
    states = store.steps(name)
    total = len(plan.steps)
    # once `contract` has started a breaking step, a resume (after a crash or a
    # lock-budget pause) finishes the contract phase instead of stopping in it
    contract = contract or finishes_contract(plan, states)
    try:
        for i, step in enumerate(plan.steps):
            if states[step.id]["state"] == "done":
                continue
            if waits_for_contract(step, contract):
                store.set_state(name, S.AWAITING_CONTRACT)
                log.info("migration_awaiting_contract", migration=name)
                return Result(name, S.AWAITING_CONTRACT, run, skipped, time.monotonic() - t0, plan)
            if store.control(name).get("paused"):
                raise Paused(
                    f"migration {name} was paused; `onlineschema resume {name}` continues it"
                )
            if lease is not None and lease.lost.is_set():
                raise AlreadyRunning(
                    f"migration {name!r}: this process lost its lease (not renewed in"
                    f" {lease.ttl:g}s) and another may have taken it over",
                    "see `onlineschema status`",
                )
            if observer:
                observer.step_started(step, i, total)
            did = run_step(rt, step)
            run += did
            skipped += not did
            if observer:
                observer.step_finished(step, i, total, not did)
        # a pause asked for while the last step ran still stops here: the migration
        # stays resumable (and abortable) instead of silently completing
        if store.control(name).get("paused"):
            raise Paused(f"migration {name} was paused; `onlineschema resume {name}` continues it")
    except (LockBudgetExhausted, Paused) as exc:
        store.set_state(name, S.PAUSED, str(exc))
        log.warning("migration_paused", migration=name, reason=str(exc))
        raise
    except (OnlineSchemaError, psycopg.Error) as exc:
        if not is_disconnect(exc):  # a lost connection is carried on, not failed
            store.set_state(name, S.FAILED, str(exc))
        raise
    store.set_state(name, S.COMPLETED)
    secs = time.monotonic() - t0
    log.info(
        "migration_completed",
        migration=name,
        steps_run=run,
        steps_skipped=skipped,
        seconds=round(secs, 3),
    )
    return Result(name, S.COMPLETED, run, skipped, secs, plan)


def abort_steps(rt: Runtime) -> Result:
    """Undo what migration ``rt.migration`` created, newest first (its executor holds
    it); refuse when it is finished or has run contract steps that cannot be undone."""
    name, store = rt.migration, rt.store
    t0 = time.monotonic()
    try:
        row = store.require(name)
        if decide(Command.ABORT, row["state"]) is not Outcome.RUN:
            raise Refused(
                f"migration {name!r} is already {row['state']}; abort undoes only an"
                " unfinished migration",
                "write a new migration that reverses it",
            )
        plan = Plan.from_dict(row["plan"])
        states = store.steps(name)
        contract_done = contract_steps_blocking_abort(plan, states)
        if contract_done:
            raise Refused(
                f"migration {name!r} has already run contract steps ({', '.join(contract_done)})"
                " that cannot be undone",
                f"finish it with `onlineschema resume {name}` instead",
            )
        store.set_state(name, S.ABORTING)
        for step in kept_backfills(plan, states):
            log.warning("abort_keeps_backfilled_rows", migration=name, step=step.id)
        todo = undo_preview(plan, states)
        for step in todo:
            log.info("step_undo", migration=name, step=step.id)
            run_undo(rt, step)
        store.set_state(name, S.ABORTED)
        log.info("migration_aborted", migration=name, steps_undone=len(todo))
        return Result(name, S.ABORTED, len(todo), 0, time.monotonic() - t0, plan)
    except LockBudgetExhausted as exc:
        store.set_state(name, S.FAILED, str(exc))
        raise


@dataclass
class Joinable:
    """The backfill another process is running for a migration: its record, plan, step."""

    row: dict[str, Any]
    plan: Plan
    step: Step


def joinable_backfill(store: StateStore, name: str) -> Joinable:
    """The backfill another process is running for ``name``, or AlreadyRunning when it
    is not in one that workers could join."""
    row = store.require(name)
    plan = Plan.from_dict(row["plan"])
    states = store.steps(name)
    current = next((s for s in plan.steps if states[s.id]["state"] != "done"), None)
    if (
        current is None
        or current.kind is not StepKind.BACKFILL
        or states[current.id]["state"] != "running"
    ):
        raise AlreadyRunning(
            f"migration {name!r} is being run by another process and is not in a backfill"
            " that workers could join",
            "wait for it to finish, or `onlineschema pause` it; see `onlineschema status`",
        )
    return Joinable(row, plan, current)


def join_backfill(
    runner: BackfillRunner, store: StateStore, name: str, found: Joinable, t0: float
) -> Result:
    """Work on the chunks of the backfill ``found`` (``runner`` joins it) until none is
    left to claim."""
    try:
        runner.run()
    except NotJoinable as exc:
        raise AlreadyRunning(str(exc), "try again in a moment") from None
    state = (store.get(name) or found.row)["state"]
    log.info("backfill_join_done", migration=name, step=found.step.id)
    return Result(name, state, 0, 0, time.monotonic() - t0, found.plan)
