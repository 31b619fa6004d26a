"""Watching a migration from outside: metrics, hooks and the structured events behind them.

Two sources feed an observer:

* the executor's observer callbacks (``step_started``, ``step_finished``,
  ``backfill_progress``) plus the run's beginning and end (``migration_started``,
  ``migration_ended``), which :func:`run_observed` adds around every ``apply``,
  ``resume`` and ``contract``;
* the library's structured log events (``lock_retry``, ``waiting_for_blockers``,
  ``backfill_batch``, ``backfill_throttled``, ...), delivered to ``event(event_dict)``
  by the structlog processor :func:`tap`. The CLI puts it first in its processor chain;
  a program that configures structlog itself adds ``onlineschema.observe.tap`` as the
  first processor to get them (the library never configures logging);
* readings too frequent to log (the throttle's signal values, ``backfill_signal_read``),
  handed to the same subscribers directly with :func:`publish`.

Observers get each call on the thread that made it (a backfill worker, the tap of any
thread); every call is guarded: an observer that raises is logged and never stops the
migration. Observers that every run of this process should get (the CLI's
``--metrics-port``, ``--hook``) are installed with :func:`ambient`.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from ..errors import LockBudgetExhausted, Paused
from ..reconnect import is_disconnect

if TYPE_CHECKING:
    from ..executor import Executor
    from ..plan import Plan

log = structlog.stdlib.get_logger("onlineschema.observe")

T = TypeVar("T")

# --- structured events ----------------------------------------------------------------

_subscribers: list[Callable[[dict[str, Any]], None]] = []
_sub_lock = threading.Lock()
_in_tap = threading.local()


def subscribe(fn: Callable[[dict[str, Any]], None]) -> None:
    with _sub_lock:
        _subscribers.append(fn)


def unsubscribe(fn: Callable[[dict[str, Any]], None]) -> None:
    with _sub_lock, contextlib.suppress(ValueError):
        _subscribers.remove(fn)


def publish(event: dict[str, Any]) -> None:
    """Hand ``event`` to the subscribers directly (a reading too frequent to log)."""
    with _sub_lock:
        subs = list(_subscribers)
    for fn in subs:
        try:
            fn(dict(event))
        except Exception as exc:
            log.warning("observer_failed", observer=repr(fn), error=str(exc))


def tap(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: hands a copy of every event to the subscribers (put it
    first, before level filtering, so debug events such as ``backfill_batch`` count)."""
    with _sub_lock:
        subs = list(_subscribers)
    if not subs or getattr(_in_tap, "active", False):
        return event_dict
    ev = dict(event_dict)
    ev.setdefault("level", method)
    _in_tap.active = True  # an observer that logs must not feed itself
    try:
        for fn in subs:
            try:
                fn(ev)
            except Exception as exc:
                log.warning("observer_failed", observer=repr(fn), error=str(exc))
    finally:
        _in_tap.active = False
    return event_dict


# --- fan-out ---------------------------------------------------------------------------


class Fanout:
    """One observer made of several; each call goes to every target having the method,
    and a target that raises is logged (once per method) and skipped."""

    def __init__(self, targets: Sequence[Any]) -> None:
        self.targets = [t for t in targets if t is not None]
        self._warned: set[tuple[int, str]] = set()

    def _call(self, method: str, *args: Any) -> None:
        for t in self.targets:
            fn = getattr(t, method, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception as exc:
                if (id(t), method) not in self._warned:
                    self._warned.add((id(t), method))
                    log.warning(
                        "observer_failed", observer=type(t).__name__, call=method, error=str(exc)
                    )

    def migration_started(self, name: str, plan: Plan) -> None:
        self._call("migration_started", name, plan)

    def migration_ended(self, name: str, state: str, error: BaseException | None) -> None:
        self._call("migration_ended", name, state, error)

    def step_started(self, step: Any, index: int, total: int) -> None:
        self._call("step_started", step, index, total)

    def step_finished(self, step: Any, index: int, total: int, skipped: bool) -> None:
        self._call("step_finished", step, index, total, skipped)

    def backfill_progress(
        self,
        step_id: str,
        rows_done: int,
        rows_total: int | None,
        rate: float,
        eta: float | None,
        throttle: str | None,
    ) -> None:
        self._call("backfill_progress", step_id, rows_done, rows_total, rate, eta, throttle)

    def event(self, ev: dict[str, Any]) -> None:
        self._call("event", ev)


_ambient: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar(
    "onlineschema_observers", default=()
)


@contextlib.contextmanager
def ambient(*observers: Any) -> Iterator[None]:
    """Every migration run inside this block (this thread/context) is also seen by
    ``observers`` (e.g. a :class:`~onlineschema.observe.metrics.MetricsObserver`)."""
    token = _ambient.set(_ambient.get() + tuple(o for o in observers if o is not None))
    try:
        yield
    finally:
        _ambient.reset(token)


def ended_state(error: BaseException | None, result_state: str | None) -> str:
    """How a run ended, for hooks and metrics: the result's state, or from the error."""
    if error is None:
        return result_state or "completed"
    if is_disconnect(error):  # the executor connects again and carries on
        return "running"
    if isinstance(error, LockBudgetExhausted | Paused):
        return "paused"
    if isinstance(error, KeyboardInterrupt):
        return "interrupted"
    return "failed"


def run_observed(ex: Executor, name: str, plan: Plan, work: Callable[[], T]) -> T:
    """Run ``work`` (the executor's step loop for migration ``name``) with the executor's
    observer, its settings' hooks and the ambient observers all watching."""
    from .hooks import HookRunner

    s = ex.settings
    hooks = HookRunner(s.hooks, timeout=s.hook_timeout) if s.hooks else None
    extra = [hooks, *_ambient.get()]
    if not any(extra):
        return work()
    own = ex.observer
    fan = Fanout([own, *extra])
    ex.observer = fan
    subscribe(fan.event)
    fan.migration_started(name, plan)
    error: BaseException | None = None
    state: str | None = None
    try:
        result = work()
        state = getattr(result, "state", None)
        return result
    except BaseException as exc:
        error = exc
        raise
    finally:
        unsubscribe(fan.event)
        ex.observer = own
        fan.migration_ended(name, ended_state(error, state), error)
        if hooks is not None:
            hooks.close()
