"""``CREATE INDEX CONCURRENTLY`` as a state machine.

valid -> keep it; invalid (or a ``_ccnew``/``_ccold`` leftover of a failed ``REINDEX``)
-> drop it concurrently and build again; after the build, verify ``indisvalid``. The
build runs outside a transaction under ``index_lock_timeout`` with no statement timeout,
and its guard waits out old snapshots first: the build waits for them anyway, and must
not be left half done (invalid) behind them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

import structlog
from psycopg import errors as pgerr
from psycopg.rows import dict_row

from ..errors import StepFailed
from ..plan import IndexBuild, Step
from ..sql import ddl
from .runtime import Runtime, render_session
from .session import Policy, Timeouts, session_settings, timeouts_for

log = structlog.stdlib.get_logger("onlineschema.executor")


def index_state(rt: Runtime, schema: str, index: str) -> tuple[bool, bool] | None:
    """``(indisvalid, indisready)`` of the index, or None when it does not exist."""
    with rt.conn.cursor() as cur:
        cur.execute(ddl.q_index_state(schema, index))
        row = cur.fetchone()
    return (bool(row[0]), bool(row[1])) if row else None


class IndexBuildStep:
    """Runs an INDEX_BUILD step (payload: :class:`~onlineschema.plan.IndexBuild`)."""

    reconcile_first: ClassVar[bool] = False

    def run(self, rt: Runtime, step: Step) -> None:
        info = step.index_build
        assert info is not None, f"step {step.id} has no index to build"
        timeouts = timeouts_for(step, rt.policy)
        self._drop_leftovers(rt, step, info, timeouts)

        def attempt() -> None:
            state = index_state(rt, info.schema, info.name)
            if state == (True, True):
                log.info("index_already_valid", step=step.id, index=info.name)
                return
            if state is not None:
                log.warning("index_invalid_dropped", step=step.id, index=info.name)
                self._drop(rt, step, info.schema, info.name, timeouts)
            try:
                self._build(rt, step, timeouts)
            except pgerr.UniqueViolation as exc:
                self._drop(rt, step, info.schema, info.name, timeouts)
                raise StepFailed(
                    step.id,
                    f"the table has duplicate values for unique index {info.name}: "
                    f"{(exc.diag.message_detail or '').strip()}",
                    "remove the duplicates, then `onlineschema resume`",
                ) from exc

        # The build takes SHARE UPDATE EXCLUSIVE but, like a SHARE lock, waits for every
        # transaction that may write the table: wait those out before it starts, so a
        # build is never left half-done (invalid) behind them.
        rt.guard(step, attempt, mode="ShareLock", waits_for_snapshots=True)
        if index_state(rt, info.schema, info.name) != (True, True):
            raise StepFailed(step.id, f"index {info.name} is not valid after its build")
        rt.store.step_state(rt.migration, step.id, "done")

    def render(self, step: Step, policy: Policy, ignores: Sequence[str]) -> list[str]:
        return render_session(step.statements, timeouts_for(step, policy), ignores)

    @staticmethod
    def _build(rt: Runtime, step: Step, timeouts: Timeouts) -> None:
        # no statement timeout: the build scans the table, under a lock that blocks no one
        build = Timeouts(timeouts.lock_timeout, "0", local=False)
        with rt.conn.cursor() as cur, session_settings(cur, build):
            for stmt in step.statements:
                cur.execute(stmt.encode())

    @staticmethod
    def _drop(rt: Runtime, step: Step, schema: str, index: str, timeouts: Timeouts) -> None:
        rt.autocommit(step, [ddl.drop_index(schema, index)], timeouts, waits_for_snapshots=True)

    def _drop_leftovers(
        self, rt: Runtime, step: Step, info: IndexBuild, timeouts: Timeouts
    ) -> None:
        with rt.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND NOT i.indisvalid AND starts_with(c.relname, %s)",
                (info.schema, info.name + "_cc"),
            )
            pattern = re.compile(re.escape(info.name) + r"_cc(new|old)\d*")
            leftovers = [r["relname"] for r in cur.fetchall() if pattern.fullmatch(r["relname"])]
        for left in leftovers:
            log.warning("index_leftover_dropped", step=step.id, index=left)
            self._drop(rt, step, info.schema, left, timeouts)
