"""The backfill's coordinator: live control, throttle signals, progress, its VACUUM.

One coordinator per backfill process, on the runner's own connection. It reads the pause
flag and live settings every ``control_interval`` seconds, the throttle's signals every
``signal_interval``, and writes progress (rows, rate, ETA, throttle) to the backfill's row
about every second. With one worker the worker ticks it between batches (same thread),
and a ``SignalReader`` thread reads the signals on a connection of its own meanwhile; with
worker threads the main thread ticks it, signals included, while they run.

Threads share three things here, each under the runner's one lock: the first error that
stopped the backfill (``Stop``), the rows done (``add_rows``) and the sessions the
backfill owns (``pids``). Everything else is the coordinator's thread's alone, or a single
attribute another thread only reads (``settings``, replaced whole; ``batch_size``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import psycopg

from ..errors import Paused, Refused
from ..sql.batches import Spec
from ..state import BackfillStore, StateStore
from ..throttle import Context, Throttle
from .chunks import Chunk, fraction_done, load_chunks
from .settings import BackfillSettings
from .vacuum import BackfillVacuum
from .wal import MB, read_supply


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


class Stopped(Exception):
    """Internal: stop working (pause requested, another worker failed)."""


class Stop:
    """Asks every worker of this process to stop after its batch; keeps the first error."""

    def __init__(self, lock: threading.Lock) -> None:
        self._event = threading.Event()
        self._lock = lock
        self.error: BaseException | None = None

    def request(self, error: BaseException | None) -> None:
        with self._lock:
            if self.error is None and error is not None:
                self.error = error
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> None:
        self._event.wait(seconds)

    def check(self) -> None:
        if self._event.is_set():
            raise Stopped()

    def raise_error(self, migration: str) -> None:
        if self.error is not None:
            raise self.error
        raise Paused(f"migration {migration}: the backfill stopped")


class Coordinator:
    """Control polling, signal ticks, progress/ETA writes and the VACUUM of one backfill."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        store: StateStore,
        records: BackfillStore,
        spec: Spec,
        settings: BackfillSettings,
        *,
        throttle: Throttle,
        observer: Observer | None,
        workers: int,
        join: bool,
        log: Any,
        lock: threading.Lock,
        stop: Stop,
    ) -> None:
        self.conn = conn
        self.store = store
        self.records = records
        self.migration = records.migration
        self.step_id = records.step_id
        self.strategy = spec.strategy
        self.schema, self.table = spec.schema, spec.table
        self.base_settings = settings
        self.settings = settings
        self.throttle = throttle
        self.observer = observer
        self.workers = workers
        self.join = join
        self.log = log
        self.lock = lock
        self.stop = stop
        self.vacuum = BackfillVacuum(conn, spec, log)
        self.pids: set[int] = set()
        self.next_control = 0.0
        self._stored: dict[str, Any] | None = None
        self._next_signal = 0.0
        #: a SignalReader reads the signals: tick leaves them alone
        self.signals_apart = False
        self._next_progress = 0.0
        self.table_oid = 0
        self.server_version = 0
        self.rows_total: int | None = None
        self.rows_done = 0  # whole backfill, as last known
        self.commits = 0  # batches this process committed
        self._rows0 = 0
        self._fraction0 = 0.0
        self._active0 = 0.0
        self._throttled0 = 0.0
        self.t0 = time.monotonic()
        self.rate = 0.0
        self.eta: float | None = None
        self.batch_size = settings.batch_initial  # the last batch size a worker chose

    def chunks(self) -> list[Chunk]:
        return load_chunks(self.conn, self.records)

    def resume_from(self, row: dict[str, Any], chunks: Sequence[Chunk]) -> None:
        """Take up the backfill's row and chunks as the last run left them."""
        self.rows_total = row["rows_total"]
        self._active0 = float(row["active_seconds"] or 0.0)
        self._throttled0 = float(row["throttled_seconds"] or 0.0)
        self.batch_size = int(row["batch_size"] or self.settings.batch_initial)
        self._rows0 = self.rows_done = sum(c.rows_done for c in chunks)
        self._fraction0 = fraction_done(self.strategy, chunks)

    def start(self, pid: int) -> None:
        """The run starts now, on the session ``pid``."""
        self.t0 = time.monotonic()
        self.pids.add(pid)
        self._adopt_claimers()
        self.vacuum.allowed = not self.join and self.vacuum.permitted(
            self.table_oid, self.server_version
        )
        self.vacuum.rows_at = self.rows_done
        if not self.join:
            self._check_wal()
            # baselines are taken before the first batch; a process joining a backfill
            # takes none: the application's latency it would measure includes the
            # backfill's load
            self.throttle.prime(self.context(), self.settings)

    def _check_wal(self) -> None:
        """Warn when the server has fewer WAL segments ready than the backfill will
        write (``wal.py``): commits would wait while the server creates new ones."""
        supply = read_supply(self.conn, self.table_oid, 1.0 - self._fraction0)
        if supply is None:
            self.log.debug("backfill_wal_supply_unreadable")
        elif supply.short:
            self.log.warning(
                "backfill_wal_short",
                needed_mb=supply.needed // MB,
                ready_mb=supply.ready // MB,
                min_wal_size_mb=supply.min_wal_size // MB,
                advice=supply.advice(),
            )

    def add_rows(self, n: int) -> None:
        """A batch of ``n`` rows committed."""
        with self.lock:
            self.rows_done += n
            self.commits += 1

    def our_commits(self) -> int:
        with self.lock:
            return self.commits

    def adopt(self, conn: psycopg.Connection[Any]) -> None:
        """``conn`` is one of the backfill's sessions: the signals leave it out of the
        application's."""
        with self.lock:
            self.pids.add(int(conn.info.backend_pid))

    def our_pids(self) -> list[int]:
        with self.lock:
            pids = set(self.pids)
        if self.vacuum.pid is not None:
            pids.add(self.vacuum.pid)
        return sorted(pids)

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self.next_control:
            self.next_control = now + self.settings.control_interval
            self.control()
        if not self.signals_apart and now >= self._next_signal:
            self._next_signal = now + self.settings.signal_interval
            self.throttle.poll(self.context(), self.settings)
        if not self.join and (now >= self._next_progress or self.throttle.changed):
            self._next_progress = now + max(min(self.settings.control_interval, 1.0), 0.2)
            self.throttle.changed = False
            self.write_progress()
            self.vacuum.manage(self.rows_done, self.rows_total, self.settings)

    def context(self, conn: psycopg.Connection[Any] | None = None) -> Context:
        """What the throttle's signals read with (by default on the coordinator's
        connection)."""
        return Context(
            conn or self.conn,
            self.table_oid,
            self.our_pids,
            (self.schema, self.table),
            self.our_commits,
        )

    def _adopt_claimers(self) -> None:
        """Joining a backfill another process runs: that process's batch sessions are
        the backfill's, not the application's (else its batches would read as an
        application at work, and the joiner would rest for them)."""
        if self.join:
            with self.lock:
                self.pids.update(self.records.claimers(self.conn))

    def control(self) -> None:
        self._adopt_claimers()
        ctl = self.store.control(self.migration)
        if ctl.get("paused"):
            self.stop.request(
                Paused(
                    f"migration {self.migration} was paused; run `onlineschema resume"
                    f" {self.migration}` to continue"
                )
            )
        overrides = dict(ctl.get("settings") or {})
        if self._stored is None:  # the live settings stored before this run started
            self._stored = dict(overrides)
        # a setting given when this run started (apply/resume --set, a settings file, the
        # API) is newer than a live one stored before it: the start's value wins until
        # the live one is changed again while the run goes
        given = self.base_settings.given()
        overrides = {
            k: v
            for k, v in overrides.items()
            if not (k in given and k in self._stored and self._stored[k] == v)
        }
        try:
            new = self.base_settings.with_overrides(overrides)
        except ValueError as exc:
            self.log.warning("backfill_bad_setting", settings=overrides, error=str(exc))
            return
        if new != self.settings:
            self.log.info("backfill_settings_changed", settings=overrides)
            self.settings = new

    def write_progress(self) -> None:
        chunks = self.chunks()
        rows_done = sum(c.rows_done for c in chunks)
        fraction = fraction_done(self.strategy, chunks)
        elapsed = max(time.monotonic() - self.t0, 1e-6)
        with self.lock:
            self.rows_done = rows_done
        self.rate = (rows_done - self._rows0) / elapsed
        if fraction >= 1.0:
            self.eta = 0.0
        elif fraction > self._fraction0:
            # wall time, throttled time included, per share of the work done in this run
            self.eta = elapsed * (1.0 - fraction) / (fraction - self._fraction0)
        else:
            self.eta = None
        self.records.write_progress(
            self.conn,
            rows_done=rows_done,
            batches=sum(c.batches for c in chunks),
            busy_seconds=sum(c.busy_seconds for c in chunks),
            batch_size=self.batch_size,
            throttle_reason=self.throttle.reason,
            throttled_seconds=self._throttled0 + self.throttle.throttled_seconds(),
            active_seconds=self._active0 + elapsed,
            rows_per_second=round(self.rate, 3),
            eta_seconds=None if self.eta is None else round(self.eta, 3),
            progress=round(fraction, 6),
            workers=self.workers,
        )
        if self.workers > 1 or self.throttle.engaged:  # throttled: no batch notifies
            self.notify(rows_done)

    def notify(self, rows_done: int) -> None:
        """Tell the observer (a progress display) where the backfill is."""
        if self.observer is not None:
            self.observer.backfill_progress(
                self.step_id,
                rows_done,
                self.rows_total,
                self.rate,
                self.eta,
                self.throttle.reason,
            )

    def finish(self) -> None:
        """End the VACUUM, close the throttle, save the progress (keeping the error that
        stopped the run, if any)."""
        self.vacuum.end(self.rows_done, self.rows_total, self.settings)
        self.throttle.close()
        if not self.join and not self.conn.closed and not self.conn.broken:
            try:
                self.write_progress()
            except psycopg.Error as exc:  # keep the error that stopped us
                self.log.warning("backfill_progress_not_saved", error=str(exc))


class SignalReader:
    """Reads the throttle's signals every ``signal_interval`` seconds, on a connection and
    a thread of their own, while one worker runs its batches on the coordinator's
    connection.

    That worker could read them only between its batches, and that is when the
    application's sessions are not waiting on one: ``active_sessions`` would count them
    running queries only then and read their latency low, however long the batches made
    them wait. Read on the clock, the readings fall in batches and rests alike.

    A dropped connection loses readings until it is opened again (the next interval), not
    the backfill; anything else stops the backfill with that error.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        connect: Callable[[], psycopg.Connection[Any]],
        first: psycopg.Connection[Any],
    ) -> None:
        self.c = coordinator
        self.connect = connect
        self.conn: psycopg.Connection[Any] | None = first
        coordinator.adopt(first)
        self._done = threading.Event()
        self._down = False  #: the connection is lost (said once)
        self._thread = threading.Thread(target=self._main, name="onlineschema-signals", daemon=True)

    def __enter__(self) -> SignalReader:
        self.c.signals_apart = True
        try:
            self._read()  # before the first batch, as the worker would have
        except BaseException:
            self.c.signals_apart = False
            if self.conn is not None:
                self.conn.close()
            raise
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.c.signals_apart = False
        if self.conn is not None:
            self.conn.close()

    def _main(self) -> None:
        try:
            while not self._done.wait(self.c.settings.signal_interval):
                self._read()
        except BaseException as exc:
            self.c.stop.request(exc)

    def _read(self) -> None:
        if self.conn is None or self.conn.closed or self.conn.broken:
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            try:
                self.conn = self.connect()
            except (Refused, psycopg.Error) as exc:  # the next interval tries again
                self._lost(str(exc))
                return
            self.c.adopt(self.conn)
            self._down = False
            self.c.log.info("backfill_signals_reconnected")
        try:
            self.c.throttle.poll(self.c.context(self.conn), self.c.settings)
        except psycopg.OperationalError as exc:
            self.conn.close()
            self._lost(str(exc))

    def _lost(self, error: str) -> None:
        if self._down:
            return
        self._down = True
        self.c.log.warning(
            "backfill_signals_connection_lost",
            error=error,
            effect="no signal is read until it is back (tried every signal_interval)",
        )
