"""The backfill's own plain ``VACUUM`` of its table, in a thread, and its guard.

Every ``vacuum_every`` rows the coordinator starts a ``VACUUM (SKIP_LOCKED, INDEX_CLEANUP
OFF, TRUNCATE false)`` on a connection of its own, so that later batches reuse the space
of the row versions earlier ones replaced (none in the last ``vacuum_every`` rows, and the
one still running when the backfill ends is cancelled: no batch is left to reuse the
space). It never truncates the table: that takes an ACCESS EXCLUSIVE lock. A manual
VACUUM does not step aside for a waiting lock as autovacuum does, so while it runs the
coordinator cancels it as soon as it makes a session wait longer than
``max_blocked_wait``. Only the coordinator's thread calls ``BackfillVacuum``; the VACUUM
itself runs in a ``VacuumThread``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from psycopg import sql

from ..errors import Refused
from ..session import no_statement_timeout
from ..sql import batches
from ..sql.batches import Spec
from .chunks import clone_connection
from .settings import BackfillSettings


class VacuumThread:
    """A plain VACUUM of the table on a connection of its own, in a thread."""

    def __init__(self, conn: psycopg.Connection[Any], statement: sql.Composed, rows: int) -> None:
        self.conn = conn
        self.pid = int(conn.info.backend_pid)
        self.rows = rows
        self.started = time.monotonic()
        self.error: BaseException | None = None
        self.cancelled: str | None = None  #: why it was cancelled
        self._statement = statement
        self.thread = threading.Thread(target=self._run, name="onlineschema-vacuum", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.conn.cursor() as cur:
                no_statement_timeout(cur)
                cur.execute(self._statement)
        except BaseException as exc:
            self.error = exc
        finally:
            self.conn.close()

    def cancel(self, why: str) -> None:
        self.cancelled = why
        if not self.conn.closed:
            self.conn.cancel_safe()


class BackfillVacuum:
    """Starts, guards and reports the backfill's VACUUMs (one at a time).

    ``conn`` is the coordinator's connection: it reads the permission and the lock waits;
    each VACUUM gets a new connection with the same parameters.
    """

    def __init__(self, conn: psycopg.Connection[Any], spec: Spec, log: Any) -> None:
        self.conn = conn
        self.spec = spec
        self.log = log
        self.current: VacuumThread | None = None
        self.rows_at = 0  # rows done when the last VACUUM started (or the run began)
        self.allowed = False
        self._reported = False
        self._finishing = False

    @property
    def pid(self) -> int | None:
        """The backend of the VACUUM running now, if any."""
        return self.current.pid if self.current is not None else None

    def permitted(self, table_oid: int, server_version: int) -> bool:
        """Whether this role may VACUUM the table (owner, database owner, superuser or,
        from PostgreSQL 17, MAINTAIN)."""
        with self.conn.cursor() as cur:
            cur.execute(batches.may_vacuum(server_version), (table_oid,))
            row = cur.fetchone()
        return bool(row and row[0])

    def _every(self, settings: BackfillSettings, rows_total: int | None) -> int:
        if settings.vacuum_every > 0:
            return settings.vacuum_every
        return max(100_000, (rows_total or 0) // 10)

    def manage(self, rows_done: int, rows_total: int | None, settings: BackfillSettings) -> None:
        """Guard the running VACUUM, report the one that ended, start the next one due."""
        v = self.current
        if v is not None:
            if v.thread.is_alive():
                self._guard(v, settings)
                return
            self.current = None
            if v.cancelled:
                self.log.info(
                    "backfill_vacuum_cancelled",
                    why=v.cancelled,
                    seconds=round(time.monotonic() - v.started, 3),
                )
            elif v.error is not None:
                self.log.warning("backfill_vacuum_failed", error=str(v.error))
            else:
                self.log.info(
                    "backfill_vacuum",
                    rows_done=v.rows,
                    seconds=round(time.monotonic() - v.started, 3),
                )
        every = self._every(settings, rows_total)
        # rows left; negative when there is no estimate or it fell short (the table had
        # more rows than it said): then the VACUUMs go on to the end
        left = rows_total - rows_done if rows_total else -1
        if (
            self._finishing
            or not settings.vacuum
            or rows_done - self.rows_at < every
            or 0 <= left <= every  # too few batches left to reuse what it would free
        ):
            return
        if not self.allowed:
            if not self._reported:
                self._reported = True
                self.log.warning(
                    "backfill_vacuum_unavailable",
                    reason="only the table's owner (or MAINTAIN) may VACUUM it; autovacuum"
                    " will have to keep up with the dead rows",
                )
            return
        try:
            conn = clone_connection(self.conn, "onlineschema-vacuum")
        except Refused as exc:
            self.allowed = False
            self.log.warning("backfill_vacuum_unavailable", reason=str(exc))
            return
        self.rows_at = rows_done
        self.current = VacuumThread(conn, batches.vacuum(self.spec), rows_done)

    def _guard(self, v: VacuumThread, settings: BackfillSettings) -> None:
        """A manual VACUUM does not step aside for a waiting lock as autovacuum does:
        cancel ours when it makes someone wait too long."""
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT coalesce(max(extract(epoch FROM clock_timestamp() - waitstart)), 0)::float8"
                " FROM pg_locks WHERE CASE WHEN granted THEN false"
                " ELSE %s = ANY(pg_blocking_pids(pid)) END",
                (v.pid,),
            )
            row = cur.fetchone()
        if row and row[0] > settings.max_blocked_wait > 0 and not v.cancelled:
            self.log.warning("backfill_vacuum_blocking", waited=round(float(row[0]), 3))
            v.cancel("it made a session wait")

    def end(self, rows_done: int, rows_total: int | None, settings: BackfillSettings) -> None:
        """No new VACUUM from now on; cancel the running one and report it. A VACUUM
        serves the batches after it: when the backfill ends (done, paused or failed) none
        is left to serve. The pages it already cleaned stay clean; autovacuum, which the
        dead rows the backfill leaves set off, does the rest."""
        self._finishing = True
        v = self.current
        if v is None:
            return
        v.cancel("the backfill ended")
        v.thread.join()
        self.manage(rows_done, rows_total, settings)
