"""Errors raised by onlineschema.

Each error carries the CLI exit code it maps to, so the CLI never has to guess:

* 2: refused before any DDL ran (bad input, unsupported, already running);
* 3: stopped with the migration resumable (the lock-wait budget was spent, the
  connection was lost for longer than the reconnect budget, a pause or a signal);
* 1: any other failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class OnlineSchemaError(Exception):
    """Base class of every error onlineschema raises on purpose."""

    exit_code = 1


class Refused(OnlineSchemaError):
    """The request was refused before any DDL ran. Nothing was changed."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}" if fix else problem)


class PreflightError(Refused):
    """One or more problems found by checking the request against the catalog."""

    def __init__(self, problems: Sequence[Refused]) -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            only = self.problems[0]
            super().__init__(only.problem, only.fix)
        else:
            text = "\n".join(f"- {p}" for p in self.problems)
            OnlineSchemaError.__init__(self, f"{len(self.problems)} problems:\n{text}")
            self.problem = text
            self.fix = None


class UnsupportedStatement(Refused):
    """A SQL statement that the SQL front end does not turn into an online change."""


class AlreadyRunning(Refused):
    """Another executor holds this migration's advisory lock."""


class UnknownMigration(Refused):
    """No migration of that name is recorded in the state schema."""


class ConnectionFailed(OnlineSchemaError):
    """The database could not be reached."""

    exit_code = 2


class LockBudgetExhausted(OnlineSchemaError):
    """A step could not get its lock within the retry budget; the migration is resumable."""

    exit_code = 3

    def __init__(self, step_id: str, attempts: int, blockers: Sequence[dict[str, Any]]) -> None:
        self.step_id = step_id
        self.attempts = attempts
        self.blockers = list(blockers)
        who = "; ".join(describe_blocker(b) for b in self.blockers) or "no blocker seen"
        super().__init__(
            f"step {step_id} did not get its lock after {attempts} attempts; "
            f"blocked by: {who}. The migration is paused and resumable: "
            "end or wait out those sessions, then run `onlineschema resume <name>`."
        )


class Paused(OnlineSchemaError):
    """The migration was paused from outside (`onlineschema pause`); it is resumable."""

    exit_code = 3


class ConnectionLost(OnlineSchemaError):
    """The connection to the database was lost and could not be made again within the
    reconnect budget; nothing is lost and the migration is resumable."""

    exit_code = 3


class StepFailed(OnlineSchemaError):
    """A step failed for a reason that retrying will not fix."""

    def __init__(self, step_id: str, message: str, hint: str | None = None) -> None:
        self.step_id = step_id
        self.hint = hint
        text = f"step {step_id} failed: {message}"
        if hint:
            text += f"\n  fix: {hint}"
        super().__init__(text)


def describe_blocker(b: dict[str, Any]) -> str:
    """One line about a blocking session, as logged and shown to the user."""
    parts = [f"pid {b.get('pid')}"]
    if b.get("application_name"):
        parts.append(f"app {b['application_name']!r}")
    if b.get("state"):
        parts.append(f"state {b['state']}")
    if b.get("xact_age_s") is not None:
        parts.append(f"in transaction for {b['xact_age_s']:.1f}s")
    if b.get("mode"):
        parts.append(f"holding {b['mode']}")
    if b.get("query"):
        parts.append(f"query {b['query']!r}")
    elif b.get("query_hidden"):
        parts.append(f"({b['query_hidden']})")
    return ", ".join(parts)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (the CLI turns it into this): stop as for Ctrl-C (psycopg cancels
    the running statement, the backfill workers stop after their batch), leaving the
    migration resumable."""


def interruption(exc: KeyboardInterrupt) -> str:
    """How a run was stopped, in the words ``status`` shows: ``interrupted (SIGTERM)``
    or ``interrupted (Ctrl-C)``."""
    return f"interrupted ({'SIGTERM' if isinstance(exc, Terminated) else 'Ctrl-C'})"
