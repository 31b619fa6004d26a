"""The backfill engine: prepare the work, run workers over its chunks, batch by batch.

``BackfillRunner`` freezes and cuts the work once, then runs one worker inline or
``workers`` worker threads, each on its own connection. A worker claims a chunk
(``chunks.Claims``) and fills it batch by batch: each batch locks its chunk's row, runs
its UPDATE and moves the chunk's cursor in one transaction. A batch that hits its
statement timeout is split; lock timeouts, deadlocks and serialization failures are
retried with backoff. The batch size and the rest after each batch are decided by
``pace.Pace``; a worker waits while the throttle is engaged. The
``Coordinator`` does the rest (control, signals, progress, VACUUM).

The timeouts every backfill transaction starts with (a batch, a claim, the cut at start)
are decided by the one execution policy (``onlineschema.session``: ``batch_settings``,
``claim_settings``, ``cut_settings``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import structlog
from psycopg import errors as pgerr
from psycopg import sql

from ..errors import LockBudgetExhausted, OnlineSchemaError, Refused, StepFailed
from ..locks import RetryPolicy
from ..plan import Step
from ..reconnect import drop_if_cut_short
from ..session import CLAIM_LOCK_TIMEOUT as CLAIM_LOCK_TIMEOUT
from ..session import backfill_timeouts as backfill_timeouts
from ..session import batch_settings, claim_settings, cut_settings
from ..sql import batches
from ..sql.batches import Spec
from ..state import BackfillStore, StateStore
from ..throttle import BATCH_END_SQL, WAL_POSITION, Throttle
from .chunks import Chunk, Claims, clone_connection, cut, density
from .coordinator import Coordinator, Observer, SignalReader, Stop, Stopped
from .pace import Pace
from .settings import BackfillSettings

log = structlog.stdlib.get_logger("onlineschema.backfill")


@dataclass
class Batch:
    """One batch's UPDATE, the chunk cursor after it, whether it ends the chunk, and how
    much of the chunk it covers (keys, blocks or rows, as the chunk measures itself)."""

    statement: sql.Composed
    cursor: Any
    last: bool
    scanned: float


def next_batch(
    spec: Spec, chunk: Chunk, size: int, density: float, conn: psycopg.Connection[Any]
) -> Batch | None:
    """The UPDATE of the next batch of ``size`` rows of ``chunk`` from its cursor (None
    when the chunk is finished). ``density`` is rows per key (range) or per block (ctid);
    the keyset strategy looks up the batch's upper key on ``conn``: run it inside the
    batch's transaction."""
    s = spec
    conds = s.filters()
    if s.strategy == "range":
        if chunk.cursor > chunk.hi:
            return None
        width = max(1, math.ceil(size / density))
        upper = min(chunk.cursor + width, chunk.hi + 1)
        conds = [batches.key_range(s, chunk.cursor, upper), *conds]
        return Batch(batches.update(s, conds), upper, upper > chunk.hi, upper - chunk.cursor)
    if s.strategy == "keyset":
        if chunk.cursor is not None and chunk.cursor == chunk.hi:
            return None
        lower = [batches.key_after(s, chunk.cursor)] if chunk.cursor is not None else []
        upper = batches.key_upto(s, chunk.hi)
        with conn.cursor() as cur:
            cur.execute(batches.keyset_upper(s, [*lower, upper], size))
            row = cur.fetchone()
        hi = list(row) if row else chunk.hi
        conds = [*lower, batches.key_upto(s, hi), *conds]
        return Batch(batches.update(s, conds), hi, hi == chunk.hi, float(size))
    # ctid
    if chunk.cursor >= chunk.hi:
        return None
    upper = min(chunk.cursor + max(math.ceil(size / density), 1), chunk.hi)
    conds = [batches.block_range(chunk.cursor, upper), *conds]
    return Batch(batches.update(s, conds), upper, upper >= chunk.hi, float(upper - chunk.cursor))


class NotJoinable(OnlineSchemaError):
    """There is no chunked backfill to join (yet)."""

    exit_code = 2


class RunnerSettings(Protocol):
    """What ``BackfillRunner.for_step`` reads of the executor's settings."""

    @property
    def lock_timeout(self) -> float: ...
    @property
    def retry(self) -> RetryPolicy: ...
    @property
    def backfill(self) -> BackfillSettings: ...


@dataclass
class _Worker:
    name: str
    conn: psycopg.Connection[Any]
    claims: Claims
    size: int
    inline: bool
    target: float = 0.0  #: this worker's batch time target now (see pace.py)
    waiters: int = 0  #: sessions that waited on its last batch
    #: the WAL positions (bytes) its last batch began and ended at (BATCH_END_SQL)
    wal: tuple[float, float] | None = None


class Batcher:
    """Runs one batch of a chunk on its worker's connection: the UPDATE and the chunk's new
    cursor in one transaction, retried on lock errors, split on statement timeouts; a
    batch that made sessions wait too long halves the worker's batch size."""

    def __init__(
        self,
        spec: Spec,
        records: BackfillStore,
        coordinator: Coordinator,
        *,
        lock_timeout: float,
        retry: RetryPolicy,
        sleep: Callable[[float], None],
        stop: Stop,
        log: Any,
    ) -> None:
        self.spec = spec
        self.records = records
        self.coordinator = coordinator
        self.throttle = coordinator.throttle
        self.step_id = records.step_id
        self.lock_timeout = lock_timeout
        self.retry = retry
        self.sleep = sleep
        self.stop = stop
        self.log = log
        self.density = 1.0  # rows per key (range) or per block (ctid)

    @property
    def settings(self) -> BackfillSettings:
        return self.coordinator.settings

    def locals(self) -> sql.Composed:
        """The transaction-local settings every batch runs under."""
        base = batch_settings(self.lock_timeout, self.settings.batch_statement_timeout)
        if self.settings.synchronous_commit:
            return base
        # the commit returns (and the locks go) before the WAL flush (BackfillSettings)
        return sql.SQL("{}, set_config('synchronous_commit', 'off', true)").format(base)

    def statement(self, chunk: Chunk, size: int, conn: psycopg.Connection[Any]) -> Batch | None:
        """The next batch of ``size`` rows of ``chunk`` (see ``next_batch``)."""
        return next_batch(self.spec, chunk, size, self.density, conn)

    def explain(self, conn: psycopg.Connection[Any], chunk: Chunk, size: int) -> dict[str, Any]:
        """``EXPLAIN (FORMAT JSON)`` of the next batch of ``chunk``, under the batch's own
        settings; nothing is changed."""
        with conn.transaction(force_rollback=True), conn.cursor() as cur:
            cur.execute(self.locals())
            batch = self.statement(chunk, size, conn)
            assert batch is not None, "the chunk is finished"
            cur.execute(batches.explain(batch.statement))
            row = cur.fetchone()
        assert row is not None
        plan: dict[str, Any] = row[0][0]["Plan"]
        return plan

    def _attempt(self, w: _Worker, chunk: Chunk, size: int) -> tuple[int, float, bool] | None:
        """Run one batch of ``chunk`` in one transaction with its cursor; None if the
        chunk turned out finished. Returns (rows, seconds, chunk finished)."""
        t0 = time.monotonic()
        waiters = (0, 0.0)
        wal: tuple[float, float] | None = None
        w.waiters, w.wal = 0, None
        with w.conn.transaction(), w.conn.cursor() as cur:
            cur.execute(sql.SQL("{}, {}").format(self.locals(), sql.SQL(WAL_POSITION)))
            start = cur.fetchone()
            assert start is not None
            row = self.records.lock_chunk(cur, chunk.chunk)
            if row is None or row[1]:
                return None
            chunk.cursor = row[0]
            batch = self.statement(chunk, size, w.conn)
            if batch is None:
                self.records.finish_chunk(cur, chunk.chunk)
                chunk.done = True
                return 0, time.monotonic() - t0, True
            cur.execute(batch.statement)
            n = max(cur.rowcount, 0)
            # who waits on this batch's locks (the backfill's own sessions aside): the
            # pace shrinks for them, the throttle pauses for long waits; and its WAL
            cur.execute(BATCH_END_SQL, (self.coordinator.our_pids(),))
            wrow = cur.fetchone()
            if wrow is not None:
                waiters = (int(wrow[0]), float(wrow[1]))
                wal = (float(start[-1]), float(wrow[2]))
            elapsed = time.monotonic() - t0
            self.records.advance_chunk(
                cur,
                chunk.chunk,
                cursor=batch.cursor,
                rows=n,
                scanned=batch.scanned,
                seconds=elapsed,
                done=batch.last,
            )
        chunk.cursor, chunk.done = batch.cursor, batch.last
        chunk.rows_done += n
        chunk.scanned += batch.scanned
        w.waiters, w.wal = waiters[0], wal
        if waiters[0]:
            self.throttle.feed_lock_wait(waiters[0], waiters[1], self.settings)
            if waiters[1] > self.settings.max_blocked_wait:
                w.size = max(self.settings.batch_min, w.size // 2)
        return n, time.monotonic() - t0, batch.last

    def run(self, w: _Worker, chunk: Chunk) -> tuple[int, float, bool] | None:
        """One batch with retries on lock errors and splits on statement timeouts."""
        retryable = (pgerr.LockNotAvailable, pgerr.DeadlockDetected, pgerr.SerializationFailure)
        while True:
            retrying = self.retry.retrying(
                retry_on=retryable,
                before_sleep=lambda st: self.log.warning(
                    "backfill_batch_retry",
                    worker=w.name,
                    attempt=st.attempt_number,
                    error=type(st.outcome.exception()).__name__ if st.outcome else None,
                ),
                sleep=self.sleep if w.inline else self.stop.wait,
            )
            size = w.size
            try:
                return retrying(self._attempt, w, chunk, size)
            except pgerr.QueryCanceled as exc:
                if self.stop.is_set():
                    raise Stopped() from exc
                if size <= self.settings.batch_min:
                    raise StepFailed(
                        self.step_id,
                        f"a batch of {size} rows still ran past its statement timeout"
                        f" ({self.settings.batch_statement_timeout}s): {exc}",
                        "raise batch_statement_timeout (onlineschema set NAME"
                        " batch_statement_timeout=30), or look for what slows the UPDATE",
                    ) from exc
                w.size = max(self.settings.batch_min, size // 4)
                self.log.warning("backfill_batch_split", worker=w.name, new_batch_size=w.size)
            except retryable as exc:
                raise LockBudgetExhausted(self.step_id, self.retry.max_attempts, []) from exc


class BackfillRunner:
    """Runs one backfill step to the end, or until paused or stopped.

    ``workers`` > 1 runs that many worker threads, each on its own connection (made with
    ``connect``, by default a copy of ``conn``'s parameters). ``join=True`` works on the
    chunks of a backfill that another process runs (it holds the migration) and returns
    when no chunk is left to claim, without touching the backfill's progress row.
    """

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        store: StateStore,
        migration: str,
        step_id: str,
        details: dict[str, Any],
        settings: BackfillSettings,
        *,
        lock_timeout: float,
        retry: RetryPolicy,
        sleep: Callable[[float], None] = time.sleep,
        observer: Observer | None = None,
        throttle: Throttle | None = None,
        workers: int = 1,
        join: bool = False,
        connect: Callable[[], psycopg.Connection[Any]] | None = None,
    ) -> None:
        self.conn = conn
        self.store = store
        self.migration = migration
        self.step_id = step_id
        self.records = BackfillStore.of(store, migration, step_id)
        self.spec = Spec.from_details(details)
        self.sleep = sleep
        self.workers = max(1, int(workers))
        self.join = join
        self.connect = connect or (lambda: clone_connection(self.conn))
        self.log = log.bind(
            migration=migration, step=step_id, table=f"{self.spec.schema}.{self.spec.table}"
        )
        self.throttle = throttle if throttle is not None else Throttle(logger=self.log)
        self._lock = threading.Lock()  # the one lock the threads share (see coordinator)
        self.stop = Stop(self._lock)
        self.coordinator = Coordinator(
            conn,
            store,
            self.records,
            self.spec,
            settings,
            throttle=self.throttle,
            observer=observer,
            workers=self.workers,
            join=join,
            log=self.log,
            lock=self._lock,
            stop=self.stop,
        )
        self.batcher = Batcher(
            self.spec,
            self.records,
            self.coordinator,
            lock_timeout=lock_timeout,
            retry=retry,
            sleep=sleep,
            stop=self.stop,
            log=self.log,
        )
        self._working = 0  # workers of this process inside _work
        #: sizes and rests (see pace.py); strain comes from the throttle's signals
        self.pace = Pace(strained=lambda: self.throttle.strained, duty=lambda: self.throttle.duty)

    @classmethod
    def for_step(
        cls,
        conn: psycopg.Connection[Any],
        store: StateStore,
        migration: str,
        step: Step,
        settings: RunnerSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        observer: Observer | None = None,
        workers: int = 1,
        join: bool = False,
    ) -> BackfillRunner:
        """The runner of the backfill ``step`` under the executor's ``settings``."""
        return cls(
            conn,
            store,
            migration,
            step.id,
            step.details,
            settings.backfill,
            lock_timeout=settings.lock_timeout,
            retry=settings.retry,
            sleep=sleep,
            observer=observer,
            workers=workers,
            join=join,
        )

    @property
    def settings(self) -> BackfillSettings:
        """The settings in force (live overrides included)."""
        return self.coordinator.settings

    # --- state -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Freeze the work and cut it into chunks (once; one transaction), then load it."""
        row = self.store.backfill(self.migration, self.step_id)
        if row is None:
            if self.join:
                raise NotJoinable(
                    f"migration {self.migration}: the backfill {self.step_id} has not started"
                    " yet; try again in a moment"
                )
            self._cut()
            row = self.store.backfill(self.migration, self.step_id)
            assert row is not None
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT %s::regclass::oid, current_setting('server_version_num')::int",
                (self.spec.regclass,),
            )
            orow = cur.fetchone()
        assert orow is not None
        self.coordinator.table_oid = int(orow[0])
        self.coordinator.server_version = int(orow[1])
        chunks = self.chunks()
        self.coordinator.resume_from(row, chunks)
        self.batcher.density = density(self.spec.strategy, chunks)

    def chunks(self) -> list[Chunk]:
        return self.coordinator.chunks()

    def _cut(self) -> None:
        n = self.settings.chunks or max(16, 4 * self.workers)
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(cut_settings())
            end, estimate, pieces = cut(cur, self.spec, n)
            self.records.create(
                cur,
                strategy=self.spec.strategy,
                end=end,
                rows_total=estimate,
                batch_size=self.settings.batch_initial,
                workers=self.workers,
                chunks=pieces,
            )
        self.log.info(
            "backfill_started",
            strategy=self.spec.strategy,
            end=end,
            estimated_rows=estimate,
            chunks=len(pieces),
        )

    def batch_locals(self) -> sql.Composed:
        """The transaction-local settings every batch runs under."""
        return self.batcher.locals()

    def explain_batch(self, size: int, chunk: Chunk | None = None) -> dict[str, Any]:
        """``EXPLAIN (FORMAT JSON)`` of the batch the runner would run next for ``chunk``
        (default: the first chunk), under the batch's own settings; nothing is changed."""
        return self.batcher.explain(self.conn, chunk or self.chunks()[0], size)

    # --- workers ------------------------------------------------------------------------

    def _rest(self, w: _Worker, seconds: float) -> None:
        """Rest between batches; the coordinator keeps ticking meanwhile."""
        if seconds <= 0:
            return
        if not w.inline:
            self.stop.wait(seconds)
            return
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            self.sleep(min(left, 0.25))
            self.coordinator.tick()
            self.stop.check()

    def _gate(self, w: _Worker) -> None:
        """Wait here while throttled; raise Stopped when the backfill must stop."""
        while True:
            if w.inline:
                self.coordinator.tick()
            self.stop.check()
            if not self.throttle.engaged:
                return
            if w.inline:
                self.sleep(min(0.2, max(self.settings.signal_interval, 0.01)))
            else:
                self.stop.wait(0.1)

    def _work(self, w: _Worker) -> None:
        """Claim chunks and fill them until none is left (or the backfill stops)."""
        with self._lock:
            self._working += 1
        counted = True
        try:
            while True:
                self._gate(w)
                chunk = w.claims.claim()
                if chunk is None:
                    if self.join or w.claims.remaining() == 0:
                        return
                    with self._lock:
                        if self._working > 1:
                            # this process's other workers are still at it: they finish
                            # their chunks and take over any a dead process leaves
                            self._working -= 1
                            counted = False
                            return
                    # the rest is claimed elsewhere: wait for it to be done (or freed)
                    if w.inline:
                        self._rest(w, 0.2)
                    else:
                        self.stop.wait(0.2)
                    continue
                self.log.debug("backfill_chunk_claimed", worker=w.name, chunk=chunk.chunk)
                try:
                    self._fill(w, chunk)
                finally:
                    # after an interrupt mid-statement the claim ends with the session
                    drop_if_cut_short(w.conn)
                    w.claims.release(chunk.chunk)
        finally:
            if counted:
                with self._lock:
                    self._working -= 1

    def _fill(self, w: _Worker, chunk: Chunk) -> None:
        while not chunk.done:
            self._gate(w)
            result = self.batcher.run(w, chunk)
            if result is None:
                return
            n, elapsed, last = result
            self.coordinator.add_rows(n)
            d = self.pace.after_batch(
                self.settings,
                size=w.size,
                target=w.target,
                elapsed=elapsed,
                last=last,
                waiters=w.waiters,
                wal=w.wal,
            )
            w.size, w.target = d.size, d.target
            self.coordinator.batch_size = w.size
            self.log.debug(
                "backfill_batch",
                worker=w.name,
                chunk=chunk.chunk,
                rows=n,
                seconds=round(elapsed, 4),
                waiters=w.waiters,
                wal=d.wal,
                target=round(d.target, 4),
                rest=round(d.rest, 4),
                affected=d.affected,
                duty=round(d.duty, 3),
                next_batch_size=w.size,
            )
            if w.inline:
                self.coordinator.notify(self.coordinator.rows_done)
            self._rest(w, d.rest)

    def _thread_main(self, w: _Worker) -> None:
        try:
            self._work(w)
        except Stopped:
            pass
        except BaseException as exc:
            self.log.error("backfill_worker_failed", worker=w.name, error=str(exc))
            self.stop.request(exc)
        finally:
            w.conn.close()

    # --- main ----------------------------------------------------------------------------

    def run(self) -> int:
        """Fill the table; returns the rows the whole backfill updated (all runs)."""
        c = self.coordinator
        c.control()  # live settings (e.g. `set NAME chunks=64`) apply from the start
        c.next_control = time.monotonic() + self.settings.control_interval
        self.prepare()
        c.start(int(self.conn.info.backend_pid))
        event = (
            "backfill_joined"
            if self.join
            else ("backfill_resumed" if c.rows_done else "backfill_running")
        )
        self.log.info(
            event,
            rows_done=c.rows_done,
            workers=self.workers,
            duty_cycle=self.settings.duty_cycle,
            batch_target=self.settings.batch_target,
            # what differs from the defaults (given at the start or set live)
            settings={
                k: "(given)" if k == "replica_dsn" else getattr(self.settings, k)
                for k in sorted(self.settings.given())
            },
        )
        try:
            if self.workers == 1:
                self._run_inline()
            else:
                self._run_threads()
        finally:
            c.finish()
        if not self.join:
            self.log.info(
                "backfill_done",
                rows_done=c.rows_done,
                seconds=round(time.monotonic() - c.t0, 3),
                throttled_seconds=round(self.throttle.throttled_seconds(), 3),
                **self.pace.stats.as_dict(),
            )
        return c.rows_done

    def _claims(self, conn: psycopg.Connection[Any]) -> Claims:
        return Claims(
            conn,
            self.store,
            self.migration,
            self.step_id,
            timeouts=claim_settings(),
        )

    def _run_inline(self) -> None:
        size = self.coordinator.batch_size
        w = _Worker("w0", self.conn, self._claims(self.conn), size, inline=True)
        try:
            with self._signal_reader():
                self._work(w)
        except Stopped:
            self.stop.raise_error(self.migration)

    def _signal_reader(self) -> AbstractContextManager[object]:
        """The signals read on their own connection (``SignalReader``), or, when no
        second connection can be opened, by the worker between its batches as before."""
        try:
            conn = self.connect()
        except Refused as exc:
            self.log.warning(
                "backfill_signals_between_batches",
                reason=exc.problem,
                effect="the application's latency reads low while batches make it wait",
            )
            return nullcontext()
        return SignalReader(self.coordinator, self.connect, conn)

    def _run_threads(self) -> None:
        workers: list[_Worker] = []
        size = self.coordinator.batch_size
        try:
            for i in range(self.workers):
                conn = self.connect()
                self.coordinator.adopt(conn)
                workers.append(_Worker(f"w{i}", conn, self._claims(conn), size, inline=False))
        except BaseException:
            for w in workers:
                w.conn.close()
            raise
        threads = [
            threading.Thread(
                target=self._thread_main, args=(w,), name=f"onlineschema-{w.name}", daemon=True
            )
            for w in workers
        ]
        for t in threads:
            t.start()
        try:
            while alive := [t for t in threads if t.is_alive()]:
                try:
                    self.coordinator.tick()
                except psycopg.Error as exc:
                    self.stop.request(exc)
                alive[0].join(0.05)
        except BaseException as exc:  # Ctrl-C: stop the workers after their batch
            self.stop.request(exc)
            for w in workers:
                if w.conn.closed is False:
                    w.conn.cancel_safe()
            raise
        finally:
            for t in threads:
                t.join()
        if self.stop.is_set():
            self.stop.raise_error(self.migration)
        if not self.join and self._claims(self.conn).remaining():
            # chunks other processes hold are not done yet: wait for them here
            try:
                claims = self._claims(self.conn)
                size = self.coordinator.batch_size
                self._work(_Worker("w-main", self.conn, claims, size, inline=True))
            except Stopped:
                self.stop.raise_error(self.migration)
