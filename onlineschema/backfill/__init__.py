"""The backfill engine: an UPDATE over a live table, in short batches, exactly once.

* Strategy per table: a single integer key -> ranges (``id >= a AND id < b``, no sort);
  another key -> keyset batches (``(a, b) > (x, y) AND (a, b) <= (p, q)``); no key ->
  ``ctid`` block ranges (only for fills guarded by ``col IS NULL``, which a row moved by
  its own update cannot match again). Batches run with ``enable_seqscan`` off, so each
  reads its slice through the key's index (or a TID range scan), never the whole table.
* The work is bounded at start: the largest key (or the table's last block) is frozen;
  rows written later get their value from the column default or the plan's trigger.
* The range is cut into chunks (``onlineschema.chunks``); workers claim chunks (see
  ``chunks.py``), each on its own connection. Each batch commits its rows and its chunk's
  cursor in one transaction: a crash loses nothing and repeats nothing, even for a
  non-idempotent ``SET n = n + 1``.
* Batch size follows a target time per batch; a batch that hits its statement timeout is
  split, not retried as is. Lock timeouts, deadlocks and serialization failures are
  retried with backoff.
* Between batches a worker rests so that batches take ``duty_cycle`` of its wall time, and
  waits while a throttle signal is engaged (``throttle.py``).
* Pause, live settings, signals, progress and a periodic plain ``VACUUM`` of the table
  (so that later batches reuse the space of the rows earlier ones replaced) are handled by
  one coordinator: between batches when there is one worker, from the main thread while
  worker threads run otherwise.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import structlog
from psycopg import errors as pgerr
from psycopg import sql

from ..errors import LockBudgetExhausted, OnlineSchemaError, Paused, Refused, StepFailed
from ..locks import RetryPolicy
from ..sql import batches
from ..sql.batches import Spec
from ..state import BackfillStore, StateStore
from ..throttle import LOCK_WAITERS_SQL, Context, Throttle
from .chunks import (
    Chunk,
    Claims,
    clone_connection,
    load_chunks,
    split_blocks,
    split_keys,
    split_range,
)
from .settings import BackfillSettings

__all__ = ["BackfillRunner", "BackfillSettings", "Batch", "NotJoinable", "Observer", "Spec"]

log = structlog.stdlib.get_logger("onlineschema.backfill")


class Observer(Protocol):
    def backfill_progress(
        self,
        step_id: str,
        rows_done: int,
        rows_total: int | None,
        rate: float,
        eta: float | None,
        throttle: str | None,
    ) -> None: ...


@dataclass
class Batch:
    """One batch's UPDATE, the chunk cursor after it, whether it ends the chunk, and how
    much of the chunk it covers (keys, blocks or rows, as the chunk measures itself)."""

    statement: sql.Composed
    cursor: Any
    last: bool
    scanned: float


class NotJoinable(OnlineSchemaError):
    """There is no chunked backfill to join (yet)."""

    exit_code = 2


class _Stop(Exception):
    """Internal: stop working (pause requested, another worker failed)."""


@dataclass
class _Worker:
    name: str
    conn: psycopg.Connection[Any]
    claims: Claims
    size: int
    inline: bool


class _Vacuum:
    """A plain VACUUM of the table on a connection of its own, in a thread."""

    def __init__(self, conn: psycopg.Connection[Any], statement: sql.Composed, rows: int) -> None:
        self.conn = conn
        self.pid = int(conn.info.backend_pid)
        self.rows = rows
        self.started = time.monotonic()
        self.error: BaseException | None = None
        self.cancelled = False
        self._statement = statement
        self.thread = threading.Thread(target=self._run, name="onlineschema-vacuum", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with self.conn.cursor() as cur:
                cur.execute("SET statement_timeout = 0")
                cur.execute(self._statement)
        except BaseException as exc:
            self.error = exc
        finally:
            self.conn.close()

    def cancel(self) -> None:
        self.cancelled = True
        if not self.conn.closed:
            self.conn.cancel_safe()


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
        self.base_settings = settings
        self.settings = settings
        self.lock_timeout = lock_timeout
        self.retry = retry
        self.sleep = sleep
        self.observer = observer
        self.workers = max(1, int(workers))
        self.join = join
        self.connect = connect or (lambda: clone_connection(self.conn))
        self.log = log.bind(
            migration=migration, step=step_id, table=f"{self.spec.schema}.{self.spec.table}"
        )
        self.throttle = throttle if throttle is not None else Throttle(logger=self.log)
        self._stop = threading.Event()
        self._stop_error: BaseException | None = None
        self._lock = threading.Lock()
        self._pids: set[int] = set()
        self._next_control = 0.0
        self._next_signal = 0.0
        self._next_progress = 0.0
        self._table_oid = 0
        self._rows_total: int | None = None
        self._rows_done = 0  # whole backfill, as last known
        self._rows0 = 0
        self._fraction0 = 0.0
        self._active0 = 0.0
        self._throttled0 = 0.0
        self._t0 = time.monotonic()
        self._rate = 0.0
        self._eta: float | None = None
        self._density = 1.0  # rows per key (range) or per block (ctid)
        self._vacuum: _Vacuum | None = None
        self._vacuum_rows = 0
        self._can_vacuum = False
        self._vacuum_reported = False
        self._finishing = False
        self._working = 0  # workers of this process inside _work
        self._batch_size = settings.batch_initial
        self._server_version = 0

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
            self._init()
            row = self.store.backfill(self.migration, self.step_id)
            assert row is not None
        self._rows_total = row["rows_total"]
        self._active0 = float(row["active_seconds"] or 0.0)
        self._throttled0 = float(row["throttled_seconds"] or 0.0)
        self._batch_size = int(row["batch_size"] or self.settings.batch_initial)
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT %s::regclass::oid, current_setting('server_version_num')::int",
                (self.spec.regclass,),
            )
            orow = cur.fetchone()
        assert orow is not None
        self._table_oid = int(orow[0])
        self._server_version = int(orow[1])
        chunks = self.chunks()
        self._rows0 = self._rows_done = sum(c.rows_done for c in chunks)
        self._fraction0 = self._fraction(chunks)
        self._density = self._estimate_density(chunks)

    def chunks(self) -> list[Chunk]:
        return load_chunks(self.conn, self.records)

    def _estimate_rows(self, cur: psycopg.Cursor[Any]) -> tuple[int, int]:
        """(estimated rows, current blocks) of the table, without reading all of it."""
        cur.execute(
            "SELECT c.reltuples::float8, c.relpages::bigint,"
            " (pg_relation_size(c.oid) / current_setting('block_size')::int)::bigint"
            " FROM pg_class c WHERE c.oid = %s::regclass",
            (self.spec.regclass,),
        )
        row = cur.fetchone()
        assert row is not None
        reltuples, relpages, blocks = float(row[0]), int(row[1]), int(row[2])
        if blocks == 0:
            return 0, 0
        if reltuples >= 0 and relpages > 0:
            return int(reltuples / relpages * blocks), blocks
        # never analyzed: count a sample of about 100 blocks
        pct = min(100.0, 100.0 * 100 / blocks)
        cur.execute(batches.sample_count(self.spec, pct))
        crow = cur.fetchone()
        return int((crow[0] if crow else 0) * 100.0 / pct), blocks

    def _chunk_count(self) -> int:
        return self.settings.chunks or max(16, 4 * self.workers)

    def _init(self) -> None:
        s = self.spec
        n = self._chunk_count()
        pieces: list[tuple[Any, Any, float]] = []  # (lo, hi, est_rows)
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("SELECT set_config('statement_timeout', '0', true)")
            estimate, blocks = self._estimate_rows(cur)
            end: Any = None
            if s.strategy == "range":
                cur.execute(batches.key_bounds(s))
                lo, hi = cur.fetchone() or (None, None)
                if lo is not None and hi is not None:
                    end = hi
                    span = hi - lo + 1
                    for a, b in split_range(lo, hi, n):
                        pieces.append((a, b, estimate * (b - a + 1) / span))
            elif s.strategy == "keyset":
                cur.execute(batches.last_key(s))
                last = cur.fetchone()
                if last is not None:
                    end = list(last)
                    pct = min(100.0, 100.0 * 200 / max(blocks, 1))
                    cur.execute(batches.key_sample(s, pct))
                    sample = [list(r) for r in cur.fetchall()]
                    keyed = split_keys(sample, end, n)
                    for a, b in keyed:
                        pieces.append((a, b, estimate / len(keyed)))
            else:  # ctid: the blocks that exist now
                end = blocks
                for a, b in split_blocks(blocks, n):
                    pieces.append((a, b, estimate * (b - a) / blocks))
            self.records.create(
                cur,
                strategy=s.strategy,
                end=end,
                rows_total=estimate,
                batch_size=self.settings.batch_initial,
                workers=self.workers,
                chunks=pieces,
            )
        self.log.info(
            "backfill_started",
            strategy=s.strategy,
            end=end,
            estimated_rows=estimate,
            chunks=len(pieces),
        )

    def _estimate_density(self, chunks: Sequence[Chunk]) -> float:
        if not chunks:
            return 1.0
        s = self.spec.strategy
        rows = sum(c.est_rows for c in chunks)
        if s == "range":
            span = sum(c.hi - c.lo + 1 for c in chunks)
            return min(max(rows / span, 1e-12), 1.0) if span > 0 and rows > 0 else 1.0
        if s == "ctid":
            blocks = sum(c.hi - c.lo for c in chunks)
            return max(rows / blocks, 1.0) if blocks > 0 and rows > 0 else 50.0
        return 1.0

    def _fraction(self, chunks: Sequence[Chunk]) -> float:
        if not chunks:
            return 1.0
        total = sum(max(c.est_rows, 1e-9) for c in chunks)
        return sum(max(c.est_rows, 1e-9) * c.fraction(self.spec.strategy) for c in chunks) / total

    # --- one batch ----------------------------------------------------------------------

    def batch_locals(self) -> sql.Composed:
        """The transaction-local settings every batch runs under."""
        return batches.set_locals(
            {
                "lock_timeout": f"{int(self.lock_timeout * 1000)}ms",
                "statement_timeout": f"{max(int(self.settings.batch_statement_timeout * 1000), 1)}ms",
                "enable_seqscan": "off",
            }
        )

    def batch_statement(
        self, chunk: Chunk, size: int, conn: psycopg.Connection[Any] | None = None
    ) -> Batch | None:
        """The UPDATE of the next batch of ``size`` rows of ``chunk`` from its cursor (None
        when the chunk is finished). The keyset strategy looks up the batch's upper key
        on ``conn``; run it inside the batch's transaction."""
        s = self.spec
        conds = s.filters()
        if s.strategy == "range":
            if chunk.cursor > chunk.hi:
                return None
            width = max(1, math.ceil(size / self._density))
            upper = min(chunk.cursor + width, chunk.hi + 1)
            conds = [batches.key_range(s, chunk.cursor, upper), *conds]
            return Batch(batches.update(s, conds), upper, upper > chunk.hi, upper - chunk.cursor)
        if s.strategy == "keyset":
            if chunk.cursor is not None and chunk.cursor == chunk.hi:
                return None
            lower = [batches.key_after(s, chunk.cursor)] if chunk.cursor is not None else []
            upper = batches.key_upto(s, chunk.hi)
            with (conn or self.conn).cursor() as cur:
                cur.execute(batches.keyset_upper(s, [*lower, upper], size))
                row = cur.fetchone()
            hi = list(row) if row else chunk.hi
            conds = [*lower, batches.key_upto(s, hi), *conds]
            return Batch(batches.update(s, conds), hi, hi == chunk.hi, float(size))
        # ctid
        if chunk.cursor >= chunk.hi:
            return None
        upper = min(chunk.cursor + max(math.ceil(size / self._density), 1), chunk.hi)
        conds = [batches.block_range(chunk.cursor, upper), *conds]
        return Batch(
            batches.update(s, conds), upper, upper >= chunk.hi, float(upper - chunk.cursor)
        )

    def explain_batch(self, size: int, chunk: Chunk | None = None) -> dict[str, Any]:
        """``EXPLAIN (FORMAT JSON)`` of the batch the runner would run next for ``chunk``
        (default: the first chunk), under the batch's own settings; nothing is changed."""
        chunk = chunk or self.chunks()[0]
        with self.conn.transaction(force_rollback=True), self.conn.cursor() as cur:
            cur.execute(self.batch_locals())
            batch = self.batch_statement(chunk, size, self.conn)
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
        with w.conn.transaction(), w.conn.cursor() as cur:
            cur.execute(self.batch_locals())
            row = self.records.lock_chunk(cur, chunk.chunk)
            if row is None or row[1]:
                return None
            chunk.cursor = row[0]
            batch = self.batch_statement(chunk, size, w.conn)
            if batch is None:
                self.records.finish_chunk(cur, chunk.chunk)
                chunk.done = True
                return 0, time.monotonic() - t0, True
            cur.execute(batch.statement)
            n = max(cur.rowcount, 0)
            if self.settings.max_blocked_wait > 0:
                cur.execute(LOCK_WAITERS_SQL)
                wrow = cur.fetchone()
                if wrow is not None:
                    waiters = (int(wrow[0]), float(wrow[1]))
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
        if waiters[0]:
            self.throttle.feed_lock_wait(waiters[0], waiters[1], self.settings)
            if waiters[1] > self.settings.max_blocked_wait:
                w.size = max(self.settings.batch_min, w.size // 2)
        return n, time.monotonic() - t0, batch.last

    def _run_batch(self, w: _Worker, chunk: Chunk) -> tuple[int, float, bool] | None:
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
                sleep=self.sleep if w.inline else self._wait,
            )
            size = w.size
            try:
                return retrying(self._attempt, w, chunk, size)
            except pgerr.QueryCanceled as exc:
                if self._stop.is_set():
                    raise _Stop() from exc
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

    # --- workers ------------------------------------------------------------------------

    def _request_stop(self, error: BaseException | None) -> None:
        with self._lock:
            if self._stop_error is None and error is not None:
                self._stop_error = error
        self._stop.set()

    def _wait(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stop()

    def _rest(self, w: _Worker, seconds: float) -> None:
        """Rest between batches; the coordinator keeps ticking meanwhile."""
        if seconds <= 0:
            return
        if not w.inline:
            self._stop.wait(seconds)
            return
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            self.sleep(min(left, 0.25))
            self._tick()
            self._check_stop()

    def _gate(self, w: _Worker) -> None:
        """Wait here while throttled; raise _Stop when the backfill must stop."""
        while True:
            if w.inline:
                self._tick()
            self._check_stop()
            if not self.throttle.engaged:
                return
            if w.inline:
                self.sleep(min(0.2, max(self.settings.signal_interval, 0.01)))
            else:
                self._stop.wait(0.1)

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
                        self._stop.wait(0.2)
                    continue
                self.log.debug("backfill_chunk_claimed", worker=w.name, chunk=chunk.chunk)
                try:
                    self._fill(w, chunk)
                finally:
                    w.claims.release(chunk.chunk)
        finally:
            if counted:
                with self._lock:
                    self._working -= 1

    def _fill(self, w: _Worker, chunk: Chunk) -> None:
        while not chunk.done:
            self._gate(w)
            result = self._run_batch(w, chunk)
            if result is None:
                return
            n, elapsed, last = result
            with self._lock:
                self._rows_done += n
            s = self.settings
            ratio = s.batch_target / max(elapsed, 1e-3)
            if last:  # the chunk's tail is cut short: it says nothing about a full batch
                ratio = min(ratio, 1.0)
            w.size = int(min(max(w.size * min(max(ratio, 0.5), 2.0), s.batch_min), s.batch_max))
            self._batch_size = w.size
            self.log.debug(
                "backfill_batch",
                worker=w.name,
                chunk=chunk.chunk,
                rows=n,
                seconds=round(elapsed, 4),
                next_batch_size=w.size,
            )
            if w.inline and self.observer is not None:
                self.observer.backfill_progress(
                    self.step_id,
                    self._rows_done,
                    self._rows_total,
                    self._rate,
                    self._eta,
                    self.throttle.reason,
                )
            duty = min(max(s.duty_cycle, 0.01), 1.0)
            self._rest(w, elapsed * (1 - duty) / duty + s.sleep)

    def _thread_main(self, w: _Worker) -> None:
        try:
            self._work(w)
        except _Stop:
            pass
        except BaseException as exc:
            self.log.error("backfill_worker_failed", worker=w.name, error=str(exc))
            self._request_stop(exc)
        finally:
            w.conn.close()

    # --- coordinator ----------------------------------------------------------------------

    def _our_pids(self) -> list[int]:
        with self._lock:
            pids = set(self._pids)
        if self._vacuum is not None:
            pids.add(self._vacuum.pid)
        return sorted(pids)

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_control:
            self._next_control = now + self.settings.control_interval
            self._control()
        if now >= self._next_signal:
            self._next_signal = now + self.settings.signal_interval
            self.throttle.poll(Context(self.conn, self._table_oid, self._our_pids), self.settings)
        if not self.join and (now >= self._next_progress or self.throttle.changed):
            self._next_progress = now + max(min(self.settings.control_interval, 1.0), 0.2)
            self.throttle.changed = False
            self._write_progress()
            self._manage_vacuum()

    def _control(self) -> None:
        ctl = self.store.control(self.migration)
        if ctl.get("paused"):
            self._request_stop(
                Paused(
                    f"migration {self.migration} was paused; run `onlineschema resume"
                    f" {self.migration}` to continue"
                )
            )
        overrides = ctl.get("settings") or {}
        try:
            new = self.base_settings.with_overrides(overrides)
        except ValueError as exc:
            self.log.warning("backfill_bad_setting", settings=overrides, error=str(exc))
            return
        if new != self.settings:
            self.log.info("backfill_settings_changed", settings=overrides)
            self.settings = new

    def _write_progress(self) -> None:
        chunks = self.chunks()
        rows_done = sum(c.rows_done for c in chunks)
        fraction = self._fraction(chunks)
        elapsed = max(time.monotonic() - self._t0, 1e-6)
        with self._lock:
            self._rows_done = rows_done
        self._rate = (rows_done - self._rows0) / elapsed
        if fraction >= 1.0:
            self._eta = 0.0
        elif fraction > self._fraction0:
            # wall time, throttled time included, per share of the work done in this run
            self._eta = elapsed * (1.0 - fraction) / (fraction - self._fraction0)
        else:
            self._eta = None
        self.records.write_progress(
            self.conn,
            rows_done=rows_done,
            batches=sum(c.batches for c in chunks),
            busy_seconds=sum(c.busy_seconds for c in chunks),
            batch_size=self._batch_size,
            throttle_reason=self.throttle.reason,
            throttled_seconds=self._throttled0 + self.throttle.throttled_seconds(),
            active_seconds=self._active0 + elapsed,
            rows_per_second=round(self._rate, 3),
            eta_seconds=None if self._eta is None else round(self._eta, 3),
            progress=round(fraction, 6),
            workers=self.workers,
        )
        if self.observer is not None and self.workers > 1:
            self.observer.backfill_progress(
                self.step_id,
                rows_done,
                self._rows_total,
                self._rate,
                self._eta,
                self.throttle.reason,
            )

    # --- vacuum ---------------------------------------------------------------------------

    def _vacuum_allowed(self) -> bool:
        with self.conn.cursor() as cur:
            cur.execute(batches.may_vacuum(self._server_version), (self._table_oid,))
            row = cur.fetchone()
        return bool(row and row[0])

    def _vacuum_every(self) -> int:
        if self.settings.vacuum_every > 0:
            return self.settings.vacuum_every
        return max(100_000, (self._rows_total or 0) // 10)

    def _manage_vacuum(self) -> None:
        v = self._vacuum
        if v is not None:
            if v.thread.is_alive():
                self._guard_vacuum(v)
                return
            self._vacuum = None
            if v.cancelled:
                self.log.info(
                    "backfill_vacuum_cancelled", seconds=round(time.monotonic() - v.started, 3)
                )
            elif v.error is not None:
                self.log.warning("backfill_vacuum_failed", error=str(v.error))
            else:
                self.log.info(
                    "backfill_vacuum",
                    rows_done=v.rows,
                    seconds=round(time.monotonic() - v.started, 3),
                )
        if (
            self._finishing
            or not self.settings.vacuum
            or self._rows_done - self._vacuum_rows < self._vacuum_every()
        ):
            return
        if not self._can_vacuum:
            if not self._vacuum_reported:
                self._vacuum_reported = True
                self.log.warning(
                    "backfill_vacuum_unavailable",
                    reason="only the table's owner (or MAINTAIN) may VACUUM it; autovacuum"
                    " will have to keep up with the dead rows",
                )
            return
        try:
            conn = clone_connection(self.conn, "onlineschema-vacuum")
        except Refused as exc:
            self._can_vacuum = False
            self.log.warning("backfill_vacuum_unavailable", reason=str(exc))
            return
        self._vacuum_rows = self._rows_done
        self._vacuum = _Vacuum(conn, batches.vacuum(self.spec), self._rows_done)

    def _guard_vacuum(self, v: _Vacuum) -> None:
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
        if row and row[0] > self.settings.max_blocked_wait > 0 and not v.cancelled:
            self.log.warning("backfill_vacuum_blocking", waited=round(float(row[0]), 3))
            v.cancel()

    def _end_vacuum(self, cancel: bool) -> None:
        self._finishing = True
        v = self._vacuum
        if v is None:
            return
        if cancel:
            v.cancel()
        v.thread.join()
        self._manage_vacuum()

    # --- main ----------------------------------------------------------------------------

    def run(self) -> int:
        """Fill the table; returns the rows the whole backfill updated (all runs)."""
        self._control()  # live settings (e.g. `set NAME chunks=64`) apply from the start
        self._next_control = time.monotonic() + self.settings.control_interval
        self.prepare()
        self._t0 = time.monotonic()
        self._pids.add(int(self.conn.info.backend_pid))
        self._can_vacuum = not self.join and self._vacuum_allowed()
        self._vacuum_rows = self._rows_done
        event = (
            "backfill_joined"
            if self.join
            else ("backfill_resumed" if self._rows_done else "backfill_running")
        )
        self.log.info(
            event,
            rows_done=self._rows_done,
            workers=self.workers,
            duty_cycle=self.settings.duty_cycle,
        )
        ok = False
        try:
            if self.workers == 1:
                self._run_inline()
            else:
                self._run_threads()
            ok = True
        finally:
            self._end_vacuum(cancel=not ok)
            self.throttle.close()
            if not self.join and not self.conn.closed and not self.conn.broken:
                try:
                    self._write_progress()
                except psycopg.Error as exc:  # keep the error that stopped us
                    self.log.warning("backfill_progress_not_saved", error=str(exc))
        if not self.join:
            self.log.info(
                "backfill_done",
                rows_done=self._rows_done,
                seconds=round(time.monotonic() - self._t0, 3),
                throttled_seconds=round(self.throttle.throttled_seconds(), 3),
            )
        return self._rows_done

    def _raise_stop(self) -> None:
        if self._stop_error is not None:
            raise self._stop_error
        raise Paused(f"migration {self.migration}: the backfill stopped")

    def _run_inline(self) -> None:
        w = _Worker("w0", self.conn, self._claims(self.conn), self._batch_size, inline=True)
        try:
            self._work(w)
        except _Stop:
            self._raise_stop()

    def _claims(self, conn: psycopg.Connection[Any]) -> Claims:
        return Claims(conn, self.store, self.migration, self.step_id)

    def _run_threads(self) -> None:
        workers: list[_Worker] = []
        try:
            for i in range(self.workers):
                conn = self.connect()
                self._pids.add(int(conn.info.backend_pid))
                workers.append(
                    _Worker(f"w{i}", conn, self._claims(conn), self._batch_size, inline=False)
                )
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
                    self._tick()
                except psycopg.Error as exc:
                    self._request_stop(exc)
                alive[0].join(0.05)
        except BaseException as exc:  # Ctrl-C: stop the workers after their batch
            self._request_stop(exc)
            for w in workers:
                if w.conn.closed is False:
                    w.conn.cancel_safe()
            raise
        finally:
            for t in threads:
                t.join()
        if self._stop.is_set():
            self._raise_stop()
        if not self.join and self._claims(self.conn).remaining():
            # chunks other processes hold are not done yet: wait for them here
            try:
                claims = self._claims(self.conn)
                self._work(_Worker("w-main", self.conn, claims, self._batch_size, inline=True))
            except _Stop:
                self._raise_stop()
