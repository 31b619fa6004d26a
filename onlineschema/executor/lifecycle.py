"""A migration's lifecycle: its states and what each command does in each of them.

The executor, the CLI and the Alembic integration all read the rules here instead of
restating them::

    (none) --apply--> running --> completed
                         |  \\--> awaiting_contract --contract--> running --> completed
                         |--> paused / failed --resume/apply--> running
                         \\--abort--> aborting --> aborted

``decide(command, state)`` says whether a command starts the migration, runs it (on),
finds nothing to do, or is refused; :func:`undo_preview` is the list of steps ``abort``
undoes, and :func:`contract_steps_blocking_abort` the done contract steps that make
``abort`` refuse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from ..errors import AlreadyRunning
from ..plan import Plan, Step, StepKind
from ..state import StateStore

__all__ = [
    "CONTRACT_MARKER",
    "TRANSITIONS",
    "Command",
    "MigrationState",
    "Outcome",
    "contract_steps_blocking_abort",
    "decide",
    "hold_contract",
    "lock_migration",
    "undo_preview",
]


class MigrationState(StrEnum):
    """The ``state`` column of ``onlineschema.migrations``."""

    RUNNING = "running"
    PAUSED = "paused"
    FAILED = "failed"
    AWAITING_CONTRACT = "awaiting_contract"
    COMPLETED = "completed"
    ABORTING = "aborting"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        """Completed or aborted: nothing more runs for it."""
        return self in (MigrationState.COMPLETED, MigrationState.ABORTED)


class Command(StrEnum):
    APPLY = "apply"
    RESUME = "resume"
    CONTRACT = "contract"
    ABORT = "abort"


class Outcome(StrEnum):
    #: nothing is recorded: plan the changes and run them
    START = "start"
    #: run the migration on from its first unfinished step (abort: undo it)
    RUN = "run"
    #: already where the command would take it: report its state, run nothing
    NOTHING = "nothing"
    #: refused before anything runs
    REFUSE = "refuse"


S = MigrationState
_UNFINISHED = (S.RUNNING, S.PAUSED, S.FAILED, S.ABORTING)

#: what each command does with a migration in each state (None: no record)
TRANSITIONS: Mapping[Command, Mapping[MigrationState | None, Outcome]] = {
    Command.APPLY: {
        None: Outcome.START,
        **dict.fromkeys(_UNFINISHED, Outcome.RUN),
        S.AWAITING_CONTRACT: Outcome.NOTHING,
        S.COMPLETED: Outcome.NOTHING,
        S.ABORTED: Outcome.REFUSE,
    },
    Command.RESUME: {
        None: Outcome.REFUSE,
        **dict.fromkeys(_UNFINISHED, Outcome.RUN),
        S.AWAITING_CONTRACT: Outcome.REFUSE,
        S.COMPLETED: Outcome.NOTHING,
        S.ABORTED: Outcome.NOTHING,
    },
    Command.CONTRACT: {
        None: Outcome.REFUSE,
        S.AWAITING_CONTRACT: Outcome.RUN,
        S.RUNNING: Outcome.RUN,
        S.PAUSED: Outcome.RUN,
        S.FAILED: Outcome.RUN,
        S.ABORTING: Outcome.REFUSE,
        S.COMPLETED: Outcome.REFUSE,
        S.ABORTED: Outcome.REFUSE,
    },
    Command.ABORT: {
        None: Outcome.REFUSE,
        **dict.fromkeys(_UNFINISHED, Outcome.RUN),
        S.AWAITING_CONTRACT: Outcome.RUN,
        S.COMPLETED: Outcome.REFUSE,
        S.ABORTED: Outcome.REFUSE,
    },
}


def state_of(row: Mapping[str, Any] | None) -> MigrationState | None:
    """The state of a ``migrations`` row (None for no row)."""
    return None if row is None else MigrationState(row["state"])


def decide(command: Command, state: MigrationState | str | None) -> Outcome:
    """What ``command`` does with a migration in ``state``."""
    return TRANSITIONS[command][None if state is None else MigrationState(state)]


def undo_preview(plan: Plan, states: Mapping[str, Mapping[str, Any]]) -> list[Step]:
    """The steps ``abort`` undoes, newest first: those that ran (not pending, not undone
    yet) and have something to undo."""
    return [
        s
        for s in reversed(plan.steps)
        if s.undo and states.get(s.id, {}).get("state") not in (None, "pending", "undone")
    ]


def kept_backfills(plan: Plan, states: Mapping[str, Mapping[str, Any]]) -> list[Step]:
    """Backfills that ran and that ``abort`` leaves as they are (the rows they changed
    keep their values), newest first."""
    out = []
    for s in reversed(plan.steps):
        spec = s.backfill_spec
        ran = states.get(s.id, {}).get("state") not in (None, "pending")
        if ran and spec is not None and not spec.only_null and not s.undo:
            out.append(s)
    return out


def contract_steps_blocking_abort(
    plan: Plan, states: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """Done contract steps that cannot be undone (dropping only the migration's own
    helpers does not count): ``abort`` refuses while there are any."""
    return [
        s.id
        for s in plan.steps
        if s.phase == "contract"
        and states[s.id]["state"] == "done"
        and not s.undo
        and not s.cleans_up_helpers
    ]


def finishes_contract(plan: Plan, states: Mapping[str, Mapping[str, Any]]) -> bool:
    """Has the contract phase started a breaking step? Then a resume finishes it instead
    of stopping before it."""
    return any(
        s.phase == "contract" and s.breaking and states[s.id]["state"] != "pending"
        for s in plan.steps
    )


def waits_for_contract(step: Step, contract: bool) -> bool:
    """Does the run stop (``awaiting_contract``) before ``step``?"""
    return step.phase == "contract" and step.breaking and not contract


#: the step an expand-only plan ends with: the migration waits there for ``contract``
CONTRACT_MARKER = "finish"


def hold_contract(plan: Plan) -> Plan:
    """``plan`` with its contract steps held for the contract phase, ending with a marker
    step, so the migration always stops ``awaiting_contract`` (even with nothing to
    drop): what ``apply(..., stop_before_contract=True)`` runs."""
    steps: list[Step] = [
        dataclasses.replace(s, breaking=True, details={**s.details, "held_for_contract": True})
        if s.phase == "contract"
        else s
        for s in plan.steps
    ]
    steps.append(
        Step(
            id=CONTRACT_MARKER,
            phase="contract",
            action=CONTRACT_MARKER,
            description="finish the migration (the application no longer needs the old shape)",
            breaking=True,
            details={"held_for_contract": True},
            kind=StepKind.MARKER,
        )
    )
    return dataclasses.replace(plan, steps=tuple(steps))


def lock_migration(store: StateStore, name: str) -> None:
    """Take migration ``name``'s advisory lock (one process runs a migration), or refuse
    with who holds it."""
    store.ensure()
    if store.try_lock(name):
        return
    holder = store.lock_holder(name)
    who = ""
    fix = "wait for it to finish, or `onlineschema pause` it; see `onlineschema status`"
    if holder:
        who = (
            f" (database session pid {holder['pid']}, application"
            f" {holder.get('application_name') or '?'}, {holder.get('state') or '?'})"
        )
        fix += (
            f". If that process died, its session may still be finishing a statement;"
            f" it ends by itself, or end it with SELECT pg_terminate_backend({holder['pid']})"
        )
    raise AlreadyRunning(f"migration {name!r} is being run by another process{who}", fix)
