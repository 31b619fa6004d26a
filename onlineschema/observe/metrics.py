"""Prometheus metrics of the migrations this process runs (``pip install
'onlineschema[metrics]'``): served over HTTP (``--metrics-port``) and/or written to a
file for node_exporter's textfile collector (``--metrics-textfile``, rewritten
atomically every ``textfile_interval`` seconds and at the end).

Every metric is labelled ``migration`` and, where it applies, ``step`` (a step id of the
plan), ``reason`` (a throttle signal name) or ``state``: a handful of values per
migration, never pids or SQL text. Fed by the executor's observer callbacks and by the
library's structured events (see :mod:`onlineschema.observe`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import TYPE_CHECKING, Any

import structlog

from ..errors import Refused

if TYPE_CHECKING:
    from ..plan import Plan, Step

log = structlog.stdlib.get_logger("onlineschema.metrics")

MIGRATION_STATES = ("running", "paused", "awaiting_contract", "completed", "failed", "interrupted")
STEP_STATES = ("pending", "running", "done", "skipped", "failed")

_BATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)


def _client() -> Any:
    try:
        import prometheus_client
    except ModuleNotFoundError:
        raise Refused(
            "metrics need the prometheus_client package",
            "pip install 'onlineschema[metrics]'",
        ) from None
    return prometheus_client


class MetricsObserver:
    """Keeps the metrics of the migrations run in this process, in its own registry."""

    def __init__(self) -> None:
        pc = _client()
        self._pc = pc
        self.registry = pc.CollectorRegistry()
        r = self.registry
        m, ms, msr = ["migration"], ["migration", "step"], ["migration", "step", "reason"]
        self.migration_state = pc.Gauge(
            "onlineschema_migration_state",
            "1 for the state the migration is in, 0 for the others",
            ["migration", "state"],
            registry=r,
        )
        self.start_time = pc.Gauge(
            "onlineschema_migration_start_time_seconds",
            "Unix time this process started (or resumed) the migration",
            m,
            registry=r,
        )
        self.steps = pc.Gauge(
            "onlineschema_migration_steps", "Steps in the migration's plan", m, registry=r
        )
        self.steps_done = pc.Gauge(
            "onlineschema_migration_steps_done",
            "Steps of the plan done (or found already done)",
            m,
            registry=r,
        )
        self.step_state = pc.Gauge(
            "onlineschema_step_state",
            "1 for the state the step is in, 0 for the others",
            ["migration", "step", "state"],
            registry=r,
        )
        self.step_seconds = pc.Gauge(
            "onlineschema_step_duration_seconds",
            "How long the step ran in this process (so far, while it runs)",
            ms,
            registry=r,
        )
        self.rows_done = pc.Gauge(
            "onlineschema_backfill_rows_done",
            "Rows the backfill has updated (all runs)",
            ms,
            registry=r,
        )
        self.rows_estimate = pc.Gauge(
            "onlineschema_backfill_rows_estimated",
            "Rows the backfill expects to update (estimate from the planner's statistics)",
            ms,
            registry=r,
        )
        self.rows_updated = pc.Counter(
            "onlineschema_backfill_rows_updated",
            "Rows updated by this process's backfill batches",
            ms,
            registry=r,
        )
        self.rate = pc.Gauge(
            "onlineschema_backfill_rows_per_second",
            "Rows per second of wall time (throttled time included) in this run",
            ms,
            registry=r,
        )
        self.eta = pc.Gauge(
            "onlineschema_backfill_eta_seconds",
            "Estimated seconds until the backfill is done (-1: not known yet)",
            ms,
            registry=r,
        )
        self.throttled = pc.Gauge(
            "onlineschema_backfill_throttled",
            "1 while the backfill is throttled for this reason",
            msr,
            registry=r,
        )
        self.throttled_seconds = pc.Counter(
            "onlineschema_backfill_throttled_seconds",
            "Seconds the backfill spent throttled, by reason",
            msr,
            registry=r,
        )
        self.throttle_events = pc.Counter(
            "onlineschema_backfill_throttle_events",
            "Times the throttle engaged, by reason",
            msr,
            registry=r,
        )
        self.batch_size = pc.Gauge(
            "onlineschema_backfill_batch_size_rows",
            "Rows the next batch aims at (adapted to batch_target)",
            ms,
            registry=r,
        )
        self.batch_seconds = pc.Histogram(
            "onlineschema_backfill_batch_duration_seconds",
            "Duration of each backfill batch (its transaction)",
            ms,
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_retries = pc.Counter(
            "onlineschema_backfill_batch_retries",
            "Backfill batches retried after a lock timeout, deadlock or serialization failure",
            ms,
            registry=r,
        )
        self.lock_retries = pc.Counter(
            "onlineschema_lock_retries",
            "Attempts of a step that gave up on its lock (lock_timeout) and were retried",
            ms,
            registry=r,
        )
        self.lock_waits = pc.Counter(
            "onlineschema_lock_waits",
            "Times a step waited, outside the lock queue, for a long transaction to end",
            ms,
            registry=r,
        )
        self.lock_budget_spent = pc.Counter(
            "onlineschema_lock_budget_exhausted",
            "Times a step spent its whole lock-wait budget (the migration paused)",
            ms,
            registry=r,
        )
        self.blockers = pc.Counter(
            "onlineschema_blockers_seen",
            "Sessions seen holding a lock a step needed (each session counted once per step)",
            ms,
            registry=r,
        )
        self.replica_lag_seconds = pc.Gauge(
            "onlineschema_replica_lag_seconds",
            "Replay lag of the standbys (the largest), as the backfill's throttle last read it",
            ["migration", "signal"],
            registry=r,
        )
        self.replica_lag_bytes = pc.Gauge(
            "onlineschema_replica_lag_bytes",
            "Bytes of WAL the standbys are behind (the most), as the throttle last read it",
            ["migration", "signal"],
            registry=r,
        )
        self.signal_seconds = pc.Gauge(
            "onlineschema_throttle_signal_seconds",
            "Each throttle signal's last reading in seconds (replica lag, age of the oldest"
            " long transaction on the table, longest lock wait behind a batch)",
            ["migration", "signal"],
            registry=r,
        )
        self.migration = ""
        self._lock = threading.Lock()
        self._step_t0: dict[str, float] = {}
        self._running_step: str | None = None
        self._last_rows: dict[str, int] = {}
        self._throttle: dict[str, tuple[str | None, float]] = {}
        self._blockers: dict[str, set[Any]] = {}
        self._server: Any = None
        self._textfile: str | None = None
        self._writer: threading.Thread | None = None
        self._stop = threading.Event()

    # --- exposition -------------------------------------------------------------------

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` on ``port`` (0: any free port); returns the port."""
        out = self._pc.start_http_server(port, addr=addr, registry=self.registry)
        server = out[0] if isinstance(out, tuple) else None
        self._server = server
        actual = int(server.server_port) if server is not None else port
        log.info("metrics_serving", port=actual)
        return actual

    def write_textfile(self, path: str | None = None) -> None:
        """Write the metrics to ``path`` atomically (a temporary file renamed over it)."""
        target = path or self._textfile
        if target:
            self._update_running()
            self._pc.write_to_textfile(target, self.registry)

    def start_textfile(self, path: str, interval: float = 5.0) -> None:
        """Rewrite ``path`` every ``interval`` seconds (and once now) until :meth:`close`."""
        self._textfile = path
        self.write_textfile()

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.write_textfile()
                except OSError as exc:
                    log.warning("metrics_textfile_failed", path=path, error=str(exc))

        self._writer = threading.Thread(target=loop, name="onlineschema-metrics", daemon=True)
        self._writer.start()

    def exposition(self) -> str:
        self._update_running()
        return bytes(self._pc.generate_latest(self.registry)).decode()

    def close(self) -> None:
        """Stop the writer (writing the file a last time) and the HTTP server."""
        self._stop.set()
        if self._writer is not None:
            self._writer.join(5)
        if self._textfile:
            try:
                self.write_textfile()
            except OSError as exc:
                log.warning("metrics_textfile_failed", path=self._textfile, error=str(exc))
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.shutdown()
                self._server.server_close()
            self._server = None

    def _update_running(self) -> None:
        with self._lock:
            step = self._running_step
            t0 = self._step_t0.get(step) if step else None
        if step and t0 is not None:
            self.step_seconds.labels(self.migration, step).set(time.monotonic() - t0)

    # --- observer callbacks -------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        for s in MIGRATION_STATES:
            self.migration_state.labels(self.migration, s).set(1 if s == state else 0)

    def _set_step(self, step: str, state: str) -> None:
        for s in STEP_STATES:
            self.step_state.labels(self.migration, step, s).set(1 if s == state else 0)

    def migration_started(self, name: str, plan: Plan) -> None:
        self.migration = name
        self._set_state("running")
        self.start_time.labels(name).set(time.time())
        self.steps.labels(name).set(len(plan.steps))
        self.steps_done.labels(name).set(0)
        for s in plan.steps:
            self._set_step(s.id, "pending")

    def migration_ended(self, name: str, state: str, error: BaseException | None) -> None:
        self._set_state(state if state in MIGRATION_STATES else "failed")
        with self._lock:
            step, self._running_step = self._running_step, None
        if step is not None and state not in ("completed", "awaiting_contract"):
            self._set_step(step, "failed")
        now = time.monotonic()
        for step_id, (reason, since) in list(self._throttle.items()):
            if reason:
                self._close_throttle(step_id, reason, since, now)
            self._throttle[step_id] = (None, now)
        from ..errors import LockBudgetExhausted

        if isinstance(error, LockBudgetExhausted):
            self.lock_budget_spent.labels(name, error.step_id).inc()

    def step_started(self, step: Step, index: int, total: int) -> None:
        with self._lock:
            self._running_step = step.id
            self._step_t0[step.id] = time.monotonic()
        self.steps_done.labels(self.migration).set(index)
        self._set_step(step.id, "running")

    def step_finished(self, step: Step, index: int, total: int, skipped: bool) -> None:
        with self._lock:
            self._running_step = None
            t0 = self._step_t0.get(step.id)
        if t0 is not None:
            self.step_seconds.labels(self.migration, step.id).set(time.monotonic() - t0)
        self.steps_done.labels(self.migration).set(index + 1)
        self._set_step(step.id, "skipped" if skipped else "done")
        if step.action == "backfill" and not skipped:
            self.eta.labels(self.migration, step.id).set(0)

    def backfill_progress(
        self,
        step_id: str,
        rows_done: int,
        rows_total: int | None,
        rate: float,
        eta: float | None,
        throttle: str | None,
    ) -> None:
        mig = self.migration
        self.rows_done.labels(mig, step_id).set(rows_done)
        if rows_total is not None:
            self.rows_estimate.labels(mig, step_id).set(max(rows_total, rows_done))
        self.rate.labels(mig, step_id).set(rate)
        self.eta.labels(mig, step_id).set(-1 if eta is None else eta)
        now = time.monotonic()
        with self._lock:
            reason, since = self._throttle.get(step_id, (None, now))
            self._throttle[step_id] = (throttle, now if throttle != reason else since)
        if throttle != reason:
            if reason:
                self._close_throttle(step_id, reason, since, now)
            for r in (throttle or "").split(","):
                if r:
                    self.throttled.labels(mig, step_id, r).set(1)
        elif reason:  # still throttled: count the time so far
            self._close_throttle(step_id, reason, since, now, keep=True)
            with self._lock:
                self._throttle[step_id] = (reason, now)

    def _close_throttle(
        self, step_id: str, reason: str, since: float, now: float, *, keep: bool = False
    ) -> None:
        for r in reason.split(","):
            self.throttled_seconds.labels(self.migration, step_id, r).inc(max(now - since, 0.0))
            if not keep:
                self.throttled.labels(self.migration, step_id, r).set(0)

    # --- structured events ------------------------------------------------------------------

    def event(self, ev: dict[str, Any]) -> None:
        name = ev.get("event")
        mig = self.migration
        if ev.get("migration") not in (None, mig):
            return
        step = str(ev.get("step") or self._running_step or "")
        if name == "backfill_batch":
            seconds = ev.get("seconds")
            if isinstance(seconds, int | float):
                self.batch_seconds.labels(mig, step).observe(float(seconds))
            rows = ev.get("rows")
            if isinstance(rows, int) and rows > 0:
                self.rows_updated.labels(mig, step).inc(rows)
            size = ev.get("next_batch_size")
            if isinstance(size, int):
                self.batch_size.labels(mig, step).set(size)
        elif name == "backfill_batch_retry":
            self.batch_retries.labels(mig, step).inc()
        elif name == "lock_retry":
            self.lock_retries.labels(mig, step).inc()
            self._saw_blockers(step, ev.get("blockers"))
        elif name == "waiting_for_blockers":
            self.lock_waits.labels(mig, step).inc()
            self._saw_blockers(step, ev.get("blockers"))
        elif name in ("backfill_throttled", "backfill_signal_read"):
            signal = str(ev.get("reason") or ev.get("signal") or "")
            if name == "backfill_throttled" and signal:
                self.throttle_events.labels(mig, step, signal).inc()
            secs, nbytes = ev.get("seconds"), ev.get("bytes")
            if signal and isinstance(secs, int | float):
                self.signal_seconds.labels(mig, signal).set(float(secs))
            if signal.startswith("replica_lag"):
                if isinstance(secs, int | float):
                    self.replica_lag_seconds.labels(mig, signal).set(float(secs))
                if isinstance(nbytes, int | float):
                    self.replica_lag_bytes.labels(mig, signal).set(float(nbytes))

    def _saw_blockers(self, step: str, blockers: Any) -> None:
        if not isinstance(blockers, list):
            return
        with self._lock:
            seen = self._blockers.setdefault(step, set())
            new = [
                b.get("pid") for b in blockers if isinstance(b, dict) and b.get("pid") not in seen
            ]
            seen.update(new)
        if new:
            self.blockers.labels(self.migration, step).inc(len(new))
