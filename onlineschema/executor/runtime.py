"""What a step handler runs a step with: the executor's connection, state, settings
and lock guard, plus the script lines every handler's render() shares."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg

from ..backfill import Observer as BackfillObserver
from ..locks import guarded
from ..plan import Step
from ..state import StateStore
from .session import Policy, Timeouts, session_settings
from .settings import Settings

__all__ = ["Observer", "Runtime", "render_session", "terminated"]


class Observer(BackfillObserver, Protocol):
    """What the CLI's progress display hooks into (every method optional in practice)."""

    def step_started(self, step: Step, index: int, total: int) -> None: ...
    def step_finished(self, step: Step, index: int, total: int, skipped: bool) -> None: ...


@dataclass
class Runtime:
    """What a handler runs a step with: the executor's connection, state and settings."""

    conn: psycopg.Connection[Any]
    store: StateStore
    settings: Settings
    migration: str
    sleep: Callable[[float], None] = time.sleep
    observer: Observer | None = None
    workers: int = 1

    @property
    def policy(self) -> Policy:
        return Policy.from_settings(self.settings)

    def guard(
        self,
        step: Step,
        attempt: Callable[[], Any],
        *,
        mode: str | None = None,
        waits_for_snapshots: bool = False,
    ) -> Any:
        """Run ``attempt`` under the lock guard (locks.guarded) for ``step``."""
        long_tx = self.settings.long_transaction
        return guarded(
            self.conn,
            attempt,
            step_id=step.id,
            tables=step.tables,
            mode=step.lock if mode is None else mode,
            policy=self.settings.retry,
            long_transaction=self.settings.lock_timeout if long_tx is None else long_tx,
            sleep=self.sleep,
            waits_for_snapshots=waits_for_snapshots,
        )

    def check(self, query: str | None) -> bool:
        """Does ``query`` (a postcondition) return true?"""
        if not query:
            return False
        with self.conn.cursor() as cur:
            cur.execute(query)
            row = cur.fetchone()
            return bool(row and row[0])

    def autocommit(
        self,
        step: Step,
        statements: Sequence[str],
        timeouts: Timeouts,
        *,
        waits_for_snapshots: bool = False,
    ) -> None:
        """Run ``statements`` outside a transaction under session ``timeouts``, guarded."""

        def attempt() -> None:
            with self.conn.cursor() as cur, session_settings(cur, timeouts):
                for stmt in statements:
                    cur.execute(stmt.encode())

        self.guard(step, attempt, waits_for_snapshots=waits_for_snapshots)


def terminated(stmts: Sequence[str], before: Sequence[str] = ()) -> list[str]:
    """Statements as script lines, each ending with ``;`` and preceded by ``before``."""
    out: list[str] = []
    for s in stmts:
        out.extend(before)
        out.append(s if s.rstrip().endswith(";") else s + ";")
    return out


def render_session(statements: Sequence[str], t: Timeouts, ignores: Sequence[str]) -> list[str]:
    """Statements outside a transaction: session timeouts set before, reset after."""
    return [
        f"SET lock_timeout = '{t.lock_timeout}';",
        f"SET statement_timeout = '{t.statement_timeout}';",
        *terminated(statements, ignores),
        "RESET lock_timeout;",
        "RESET statement_timeout;",
    ]
