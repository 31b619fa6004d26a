"""How each kind of step runs, and how it reads as a psql script: one handler per
:class:`~onlineschema.plan.StepKind`, so the executor and the script renderer follow the
same rules (``STEP_HANDLERS``). Nothing here branches on ``Step.action``: it is a label.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from typing import ClassVar, Protocol

import psycopg
import structlog
from pglast import keywords
from psycopg import errors as pgerr
from psycopg import sql

from ..backfill import BackfillRunner
from ..errors import LockBudgetExhausted, Paused, StepFailed
from ..plan import Action, Step, StepKind
from ..reconnect import is_disconnect
from .index_build import IndexBuildStep
from .runtime import Runtime, render_session, terminated
from .session import Policy, Timeouts, local_settings, timeouts_for

log = structlog.stdlib.get_logger("onlineschema.executor")

__all__ = [
    "STEP_HANDLERS",
    "StepHandler",
    "backfill_command",
    "backfill_runner",
    "run_step",
    "run_undo",
    "undo_steps",
    "with_backfill_command",
]


class StepHandler(Protocol):
    """Runs one kind of step (and records it done), and renders it for psql."""

    #: the step is not atomic: check its postcondition first, and when it holds record
    #: the step done without running it again
    reconcile_first: ClassVar[bool]

    def run(self, rt: Runtime, step: Step) -> None: ...

    def render(self, step: Step, policy: Policy, ignores: Sequence[str]) -> list[str]: ...


class TransactionStep:
    """``BEGIN; SET LOCAL`` timeouts; the statements; record done; ``COMMIT``."""

    reconcile_first: ClassVar[bool] = False

    def run(self, rt: Runtime, step: Step) -> None:
        timeouts = timeouts_for(step, rt.policy)

        def attempt() -> None:
            with rt.conn.transaction(), rt.conn.cursor() as cur:
                local_settings(cur, timeouts)
                for stmt in step.statements:
                    cur.execute(stmt.encode())
                rt.store.step_state(rt.migration, step.id, "done", cur=cur)

        rt.guard(step, attempt)

    def render(self, step: Step, policy: Policy, ignores: Sequence[str]) -> list[str]:
        t = timeouts_for(step, policy)
        return [
            "BEGIN;",
            f"SET LOCAL lock_timeout = '{t.lock_timeout}';",
            f"SET LOCAL statement_timeout = '{t.statement_timeout}';",
            *terminated(step.statements, ignores),
            "COMMIT;",
        ]


class AutocommitStep:
    """Outside a transaction (``CONCURRENTLY``): reconciled by its postcondition."""

    reconcile_first: ClassVar[bool] = True

    def run(self, rt: Runtime, step: Step) -> None:
        rt.autocommit(
            step,
            step.statements,
            timeouts_for(step, rt.policy),
            waits_for_snapshots=step.waits_for_snapshots,
        )
        rt.store.step_state(rt.migration, step.id, "done")

    def render(self, step: Step, policy: Policy, ignores: Sequence[str]) -> list[str]:
        return render_session(step.statements, timeouts_for(step, policy), ignores)


class BackfillStep:
    """A batched, resumable UPDATE (onlineschema.backfill); a script cannot batch it, so
    it renders as the command that runs it, commented out."""

    reconcile_first: ClassVar[bool] = False

    def run(self, rt: Runtime, step: Step) -> None:
        backfill_runner(rt, step).run()
        rt.store.step_state(rt.migration, step.id, "done")

    def render(self, step: Step, policy: Policy, ignores: Sequence[str]) -> list[str]:
        return [
            "-- This step updates existing rows in batches; run it with:",
            f"--   {backfill_command(step)}",
        ]


def backfill_runner(rt: Runtime, step: Step, *, join: bool = False) -> BackfillRunner:
    """The backfill engine for a BACKFILL step: as the process running the migration,
    or (``join``) as a guest working on the chunks of the process that runs it."""
    return BackfillRunner(
        rt.conn,
        rt.store,
        rt.migration,
        step.id,
        step.details,
        rt.settings.backfill,
        lock_timeout=rt.settings.lock_timeout,
        retry=rt.settings.retry,
        sleep=rt.sleep,
        observer=None if join else rt.observer,
        workers=rt.workers,
        join=join,
    )


class MarkerStep:
    """No SQL: recorded done when reached."""

    reconcile_first: ClassVar[bool] = False

    def run(self, rt: Runtime, step: Step) -> None:
        rt.store.step_state(rt.migration, step.id, "done")

    def render(self, step: Step, policy: Policy, ignores: Sequence[str]) -> list[str]:
        return ["-- (nothing to run: this step marks a point of the migration)"]


STEP_HANDLERS: Mapping[StepKind, StepHandler] = {
    StepKind.TRANSACTION: TransactionStep(),
    StepKind.AUTOCOMMIT: AutocommitStep(),
    StepKind.INDEX_BUILD: IndexBuildStep(),
    StepKind.BACKFILL: BackfillStep(),
    StepKind.MARKER: MarkerStep(),
}


def with_backfill_command(step: Step) -> Step:
    """Give a backfill step the ``onlineschema backfill`` command line that does its work
    on its own, for the SQL script rendering."""
    d = step.details
    if step.kind is not StepKind.BACKFILL or "command" in d or "table" not in d:
        return step
    table = f"{_ident(d['schema'])}.{_ident(d['table'])}"
    parts = ["onlineschema", "backfill", "--table", table]
    for column, expr in d.get("set", ()):
        parts += ["--set", f"{_ident(column)} = {expr}"]
    conds = []
    if d.get("only_null"):
        conds.append(f"{_ident(d['only_null'])} IS NULL")
    if d.get("where"):
        conds.append(f"({d['where']})" if d.get("only_null") else d["where"])
    if conds:
        parts += ["--where", " AND ".join(conds)]
    command = " ".join(shlex.quote(p) for p in parts)
    return dataclasses.replace(step, details={**d, "command": command})


def backfill_command(step: Step, default: str = "onlineschema backfill") -> str:
    """The command line that runs a backfill step on its own."""
    return str(with_backfill_command(step).details.get("command", default))


def _ident(name: str) -> str:
    """An identifier as a person would write it: bare when that reads back the same."""
    if re.fullmatch(r"[a-z_][a-z0-9_]*", name) and name not in (
        keywords.RESERVED_KEYWORDS | keywords.COL_NAME_KEYWORDS | keywords.TYPE_FUNC_NAME_KEYWORDS
    ):
        return name
    return sql.Identifier(name).as_string(None)


# --- running one step ------------------------------------------------------------------


def run_step(rt: Runtime, step: Step) -> bool:
    """Run one step with its handler and record how it went; False when it was found
    already done (its postcondition held before it ran)."""
    slog = log.bind(migration=rt.migration, step=step.id)
    rt.store.step_started(rt.migration, step.id)
    t0 = time.monotonic()
    handler = STEP_HANDLERS[step.kind]
    if handler.reconcile_first and rt.check(step.postcondition):
        rt.store.step_state(rt.migration, step.id, "done")
        slog.info("step_skipped", reason="postcondition already holds")
        return False
    slog.info("step_started", action=step.action, lock=step.lock_text, tables=step.tables)
    try:
        handler.run(rt, step)
    except (LockBudgetExhausted, Paused, StepFailed) as exc:
        rt.store.step_state(rt.migration, step.id, "failed", str(exc))
        raise
    except psycopg.Error as exc:
        if is_disconnect(exc):  # not the step's fault: the executor reconnects
            raise
        msg = (exc.diag.message_primary or str(exc)).strip()
        rt.store.step_state(rt.migration, step.id, "failed", msg)
        raise StepFailed(step.id, msg, _hint(step, exc)) from exc
    if step.postcondition and not rt.check(step.postcondition):
        rt.store.step_state(rt.migration, step.id, "failed", "postcondition does not hold")
        raise StepFailed(step.id, "the step ran but its result is not in the catalog")
    slog.info("step_done", seconds=round(time.monotonic() - t0, 3))
    return True


def _hint(step: Step, exc: psycopg.Error) -> str | None:
    # a validation: a transactional step that scans (VALIDATE CONSTRAINT)
    if isinstance(exc, pgerr.CheckViolation) and step.kind is StepKind.TRANSACTION and step.scans:
        return (
            "existing rows break the constraint: fix them (e.g. a Backfill), then"
            " `onlineschema resume`, or `onlineschema abort` to remove it"
        )
    if isinstance(exc, pgerr.ForeignKeyViolation):
        return (
            "existing rows reference missing rows: fix them, then `onlineschema resume`,"
            " or `onlineschema abort`"
        )
    if isinstance(exc, pgerr.NotNullViolation):
        return "some rows are still NULL: backfill them, then `onlineschema resume`"
    if isinstance(exc, pgerr.QueryCanceled):
        return "the statement was cancelled (statement_timeout or an operator); `onlineschema resume` retries it"
    return None


# --- undo ------------------------------------------------------------------------------

#: squawk's compatibility rules that fire when abort drops what the expand created
_UNDO_RULES = (
    ("DROP COLUMN", "ban-drop-column"),
    ("DROP CONSTRAINT", "ban-drop-constraint"),
    ("DROP FUNCTION", "ban-drop-function"),
    ("DROP NOT NULL", "ban-drop-not-null"),
)


def _undo_ignores(statement: str) -> list[dict[str, str]]:
    text = " ".join(statement.split()).upper()
    return [
        {"rule": rule, "why": "abort removes what this migration created; nothing else uses it"}
        for words, rule in _UNDO_RULES
        if words in text
    ]


def undo_steps(step: Step) -> list[tuple[Step, Action]]:
    """``step``'s undo actions as steps of their own, in order (``abort`` runs them, and
    ``alembic downgrade --sql`` renders them, both under ``timeouts_for`` of the step): a
    brief action under the lock timeout, one that scans or runs outside a transaction
    under SHARE UPDATE EXCLUSIVE without a statement timeout, the latter under
    ``index_lock_timeout``."""
    out: list[tuple[Step, Action]] = []
    for i, action in enumerate(step.undo):
        brief = action.transactional and not action.scans
        undo = Step(
            id=f"undo.{step.id}" + (f".{i + 1}" if len(step.undo) > 1 else ""),
            phase=step.phase,
            action="undo",
            description=f"undo: {step.description}",
            statements=(action.sql,),
            transactional=action.transactional,
            lock="AccessExclusiveLock" if brief else "ShareUpdateExclusiveLock",
            tables=step.tables,
            statement_timeout=None if brief else 0,
            details={
                "squawk_ignore": _undo_ignores(action.sql),
                **({} if action.transactional else {"index_lock_timeout": True}),
            },
        )
        out.append((undo, action))
    return out


def run_undo(rt: Runtime, step: Step) -> None:
    """Run ``step``'s undo actions (abort), then record the step ``undone``."""
    for undo, action in undo_steps(step):
        timeouts = timeouts_for(undo, rt.policy)
        # undoing an index build waits out old snapshots as the build did
        snapshots = step.waits_for_snapshots
        if timeouts.local:

            def attempt(sql_text: str = action.sql, t: Timeouts = timeouts) -> None:
                with rt.conn.transaction(), rt.conn.cursor() as cur:
                    local_settings(cur, t)
                    cur.execute(sql_text.encode())

            rt.guard(undo, attempt, waits_for_snapshots=snapshots)
        else:
            rt.autocommit(undo, [action.sql], timeouts, waits_for_snapshots=snapshots)
    rt.store.step_state(rt.migration, step.id, "undone")
