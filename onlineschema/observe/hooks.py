"""Hooks: run a command (or call a function) when something happens to a migration.

Events: ``started``, ``step_started``, ``step_finished``, ``progress`` (every
``progress_interval`` seconds of a backfill), ``throttled`` (a backfill's throttle
engaged, with its reason), ``lock_budget_spent`` (a step gave up on its lock; the
migration is paused, resumable), ``completed`` (also when it stops awaiting its contract
phase: ``ONLINESCHEMA_STATE`` says which) and ``failed``.

The facts go to a command in environment variables (as gh-ost does):
``ONLINESCHEMA_EVENT``, ``ONLINESCHEMA_MIGRATION``, ``ONLINESCHEMA_STEP``,
``ONLINESCHEMA_STEP_INDEX``, ``ONLINESCHEMA_STEPS_TOTAL``, ``ONLINESCHEMA_ROWS_DONE``,
``ONLINESCHEMA_ROWS_TOTAL``, ``ONLINESCHEMA_ROWS_PER_SECOND``, ``ONLINESCHEMA_ETA_SECONDS``,
``ONLINESCHEMA_REASON``, ``ONLINESCHEMA_STATE``, ``ONLINESCHEMA_ERROR`` (those that apply);
a callable gets the same mapping as its one argument.

Hooks never stop or slow the migration: they run one at a time on their own thread,
from a bounded queue (when it is full the event is dropped, and that is logged); a hook
that fails or runs longer than ``timeout`` seconds is logged (a command is killed, with
its process group). At the end of a run every hook still queued runs, each within
``timeout``, so ``completed`` and ``failed`` hooks run before the process exits even
behind one that hangs.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

import structlog

if TYPE_CHECKING:
    from ..plan import Plan, Step

log = structlog.stdlib.get_logger("onlineschema.hooks")

EVENTS = (
    "started",
    "step_started",
    "step_finished",
    "progress",
    "throttled",
    "lock_budget_spent",
    "completed",
    "failed",
)

#: a hook: a shell command, or a callable given the ONLINESCHEMA_* facts
Hook = Union[str, Callable[[Mapping[str, str]], object]]  # noqa: UP007 - a runtime alias

PREFIX = "ONLINESCHEMA_"


def parse_hook(text: str) -> tuple[str, str]:
    """``"completed=notify.sh"`` -> ``("completed", "notify.sh")``; ValueError if bad."""
    event, sep, command = text.partition("=")
    event = event.strip().lower().replace("-", "_")
    if not sep or not command.strip():
        raise ValueError(f"{text!r} is not EVENT=COMMAND")
    if event not in EVENTS:
        raise ValueError(f"unknown hook event {event!r} (events: {', '.join(EVENTS)})")
    return event, command.strip()


def check_hooks(hooks: Mapping[str, Sequence[Hook]]) -> None:
    bad = sorted(set(hooks) - set(EVENTS))
    if bad:
        raise ValueError(f"unknown hook event(s) {', '.join(bad)} (events: {', '.join(EVENTS)})")


class HookRunner:
    """An observer that turns a migration's events into hook runs (see module doc)."""

    def __init__(
        self,
        hooks: Mapping[str, Sequence[Hook]],
        *,
        timeout: float = 10.0,
        progress_interval: float = 5.0,
        queue_size: int = 100,
    ) -> None:
        check_hooks(hooks)
        self.hooks = {k: list(v) for k, v in hooks.items() if v}
        self.timeout = timeout
        self.progress_interval = progress_interval
        self._queue: queue.Queue[tuple[str, Hook, dict[str, str]] | None] = queue.Queue(
            maxsize=queue_size
        )
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # when the worker took the hook it runs now (close() waits for it by this)
        self._taken = time.monotonic()
        self.migration = ""
        self.total = 0
        self._last_progress: dict[str, float] = {}
        self._throttle: dict[str, str | None] = {}
        self.dropped = 0

    # --- the observer side (any thread) -------------------------------------------------

    def migration_started(self, name: str, plan: Plan) -> None:
        self.migration = name
        self.total = len(plan.steps)
        self.fire("started", STEPS_TOTAL=self.total)

    def step_started(self, step: Step, index: int, total: int) -> None:
        self.fire("step_started", STEP=step.id, STEP_INDEX=index + 1, STEPS_TOTAL=total)

    def step_finished(self, step: Step, index: int, total: int, skipped: bool) -> None:
        self.fire(
            "step_finished",
            STEP=step.id,
            STEP_INDEX=index + 1,
            STEPS_TOTAL=total,
            STATE="skipped" if skipped else "done",
        )

    def backfill_progress(
        self,
        step_id: str,
        rows_done: int,
        rows_total: int | None,
        rate: float,
        eta: float | None,
        throttle: str | None,
    ) -> None:
        facts: dict[str, Any] = {
            "STEP": step_id,
            "ROWS_DONE": rows_done,
            "ROWS_TOTAL": rows_total,
            "ROWS_PER_SECOND": round(rate, 1),
            "ETA_SECONDS": None if eta is None else round(eta, 1),
            "REASON": throttle,
        }
        with self._lock:
            was = self._throttle.get(step_id)
            self._throttle[step_id] = throttle
            now = time.monotonic()
            due = now - self._last_progress.get(step_id, -1e9) >= self.progress_interval
            if due:
                self._last_progress[step_id] = now
        if throttle and throttle != was:
            self.fire("throttled", **facts)
        if due:
            self.fire("progress", **facts)

    def migration_ended(self, name: str, state: str, error: BaseException | None) -> None:
        from ..errors import LockBudgetExhausted

        text = str(error).strip().splitlines()[0] if error is not None and str(error) else None
        if isinstance(error, LockBudgetExhausted):
            self.fire("lock_budget_spent", STEP=error.step_id, STATE=state, ERROR=text)
        elif state in ("completed", "awaiting_contract"):
            self.fire("completed", STATE=state)
        elif state in ("failed", "interrupted"):
            self.fire("failed", STATE=state, ERROR=text or type(error).__name__ if error else None)

    # --- queue and worker -----------------------------------------------------------------

    def fire(self, event: str, **facts: Any) -> None:
        """Queue the hooks of ``event`` with ``facts`` (never blocks)."""
        targets = self.hooks.get(event)
        if not targets:
            return
        env = {f"{PREFIX}EVENT": event, f"{PREFIX}MIGRATION": self.migration}
        env.update({PREFIX + k: str(v) for k, v in facts.items() if v is not None})
        self._ensure_thread()
        for hook in targets:
            try:
                self._queue.put_nowait((event, hook, env))
            except queue.Full:
                self.dropped += 1
                log.warning("hook_dropped", hook_event=event, reason="too many hooks queued")

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="onlineschema-hooks", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            self._taken = time.monotonic()
            if item is None:
                return
            event, hook, env = item
            try:
                self._run(event, hook, env)
            except Exception as exc:  # never let the worker die
                log.warning("hook_failed", hook_event=event, error=str(exc))

    def _run(self, event: str, hook: Hook, env: dict[str, str]) -> None:
        t0 = time.monotonic()
        if isinstance(hook, str):
            ok = self._run_command(event, hook, env)
        else:
            ok = self._run_callable(event, hook, env)
        if ok:
            log.debug("hook_done", hook_event=event, seconds=round(time.monotonic() - t0, 3))

    def _run_command(self, event: str, command: str, facts: dict[str, str]) -> bool:
        env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
        env.update(facts)
        proc = subprocess.Popen(
            command,
            shell=True,  # a hook is a command line the operator wrote, as in gh-ost
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)
            log.warning("hook_timed_out", hook_event=event, command=command, timeout=self.timeout)
            return False
        if proc.returncode != 0:
            tail = out.decode(errors="replace").strip()[-500:]
            log.warning(
                "hook_failed",
                hook_event=event,
                command=command,
                exit_code=proc.returncode,
                output=tail,
            )
            return False
        return True

    def _run_callable(
        self, event: str, fn: Callable[[Mapping[str, str]], object], env: dict[str, str]
    ) -> bool:
        # a thread of its own, so that one that hangs costs at most `timeout` here
        outcome: dict[str, BaseException] = {}

        def call() -> None:
            try:
                fn(dict(env))
            except BaseException as exc:
                outcome["error"] = exc

        t = threading.Thread(target=call, name=f"onlineschema-hook-{event}", daemon=True)
        t.start()
        t.join(self.timeout)
        if t.is_alive():
            log.warning("hook_timed_out", hook_event=event, hook=repr(fn), timeout=self.timeout)
            return False
        if "error" in outcome:
            log.warning("hook_failed", hook_event=event, hook=repr(fn), error=str(outcome["error"]))
            return False
        return True

    def close(self) -> None:
        """Run the hooks still queued, each within the hook timeout, then stop the worker.

        Each hook gets its own ``timeout`` (and a second more for a killed command to be
        reaped), so one that hangs cannot use up the time of the ``completed`` or
        ``failed`` hook queued behind it; if the worker takes no new hook in that time
        it is left to its thread."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        per_hook = self.timeout + 1.0
        try:  # behind the hooks queued (a full queue has room once the worker takes one)
            self._queue.put(None, timeout=per_hook)
        except queue.Full:
            log.warning("hooks_left_running", queued=self._queue.qsize())
            return
        # from now (the worker may have idled long), and from each hook it takes after
        taken, since = self._taken, time.monotonic()
        while True:
            thread.join(max(since + per_hook - time.monotonic(), 0.0))
            if not thread.is_alive():
                return
            if self._taken == taken:  # no new hook in a hook's time: this one hangs
                log.warning("hooks_left_running", queued=self._queue.qsize())
                return
            taken = since = self._taken
