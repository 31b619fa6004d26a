"""How fast a backfill goes: the size of each batch and the rest after it.

The rules, per worker, after every batch:

* **Lock-hold budget.** A batch holds the row lock of every row it updated until it
  commits, and an application write to one of them waits for that commit. The batch size
  aims at ``batch_target`` seconds per batch (the budget; 30 ms by default), correcting by
  at most 2x per batch toward the time the last batch took.
* **Waiters shrink it.** Each batch asks, just before it commits, which sessions wait on
  its locks (``pg_blocking_pids``; the backfill's own sessions excluded). Any waiter halves
  the worker's target (down to a quarter of ``batch_target``) so the next waits are
  shorter; a batch nobody waited on grows it back by a quarter, up to ``batch_target``
  (multiplicative decrease, gradual increase: the target settles where the application's
  writes only now and then meet a batch).
* **Rest to keep the application's latency.** When the backfill starts on a database
  the application is using, the ``active_sessions`` signal takes the application's
  latency by Little's law (sessions running a query over transactions a second) as a
  baseline, and from then on sets the duty cycle (the share of a worker's time spent in
  batches, from 5 % up to ``duty_cycle``) to keep that latency at or under
  ``app_latency_target`` times it. A worker rests after each batch so that batches take
  that share of its time.
* **Rest while the application is affected**, at most ``duty_cycle``: a session waited
  on one of this process's batches within the last ``signal_interval`` seconds, or a
  throttle signal reports strain (the latency probe between its resume and pause
  thresholds; with no Little's-law baseline, ``busy_sessions`` sessions running
  queries). On an idle database nothing is affected and the backfill runs at the speed
  of the UPDATE itself. Signals over their pause threshold pause it (``throttle``).
* **A cap on WAL**, when ``max_wal_rate`` is set: each batch reads the WAL position as
  it begins and ends, the WAL written while any batch of this process ran is counted
  once (two workers' batches overlap), and the workers together rest so that it stays
  under that many bytes a second (a token bucket without a burst: idle time is not
  saved up). It applies whether the application is at work or not: every commit of the
  application waits for the WAL written before it to reach the disk, so on a disk whose
  flushes take tens of milliseconds it is the backfill's WAL, not its locks, that the
  application feels (benchmarks/README.md).

GitLab's batched background migrations size batches toward a fixed share of a long
interval and pause on database health indicators; gh-ost rests a fixed ``nice-ratio``
and throttles on load or replica lag; spirit sizes chunks toward a target time (500 ms)
and throttles on replica lag. None of them looks at who waits on the rows a batch holds,
and all of them either always rest or never do. Here the rest, the size and the pause
follow what the application experiences.

Every decision is counted in ``PaceStats`` (batches, batches waited on, busy and rested
seconds) and logged with each ``backfill_batch`` event (``waiters``, ``target``,
``rest``), so tests and operators can see why the backfill went at the speed it did.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from .settings import BackfillSettings

#: the lowest a worker's target goes while sessions wait on its batches, as a share of
#: batch_target: below it the per-batch overhead (claim, cursor, commit) dominates
MIN_TARGET_SHARE = 0.25
#: a batch nobody waited on grows the worker's target by this factor
GROW = 1.25


@dataclass
class PaceStats:
    """What the pacing did in this run (all workers of this process)."""

    batches: int = 0
    waited_batches: int = 0  #: batches at least one session waited on
    busy_seconds: float = 0.0  #: time spent in batches
    rested_seconds: float = 0.0  #: time spent resting between batches (not throttled time)
    rests: int = 0  #: batches followed by a rest
    wal_bytes: int = 0  #: WAL written while the batches ran
    #: of rested_seconds, what max_wal_rate added to the rest the other rules gave
    wal_rested_seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass
class Decision:
    """After one batch: the next batch's size, the worker's target, the rest to take."""

    size: int
    target: float
    rest: float
    affected: bool
    duty: float = 1.0  #: the share of the worker's time to spend in batches (1.0: no rest)
    wal: int = 0  #: bytes of WAL counted for this batch (not counted for another)
    wal_capped: bool = False  #: max_wal_rate lengthened the rest


class Pace:
    """The pacing rules above, shared by the workers of one process (thread-safe)."""

    def __init__(
        self,
        strained: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
        duty: Callable[[], float | None] = lambda: None,
    ) -> None:
        self._strained = strained
        self._duty = duty
        self._clock = clock
        self._lock = threading.Lock()
        self._waited_at = -1e18
        #: when the WAL the batches wrote so far is paid for at max_wal_rate
        self._wal_due = -1e18
        #: the WAL the latest batches ran across (positions, disjoint, in order)
        self._wal_spans: list[tuple[float, float]] = []
        self.stats = PaceStats()

    def affected(self, s: BackfillSettings) -> bool:
        """Whether the application is affected now (rest between batches)."""
        with self._lock:
            recent = self._clock() - self._waited_at <= max(s.signal_interval, 0.1)
        return recent or self._strained()

    def after_batch(
        self,
        s: BackfillSettings,
        *,
        size: int,
        target: float,
        elapsed: float,
        last: bool,
        waiters: int,
        wal: tuple[float, float] | None = None,
    ) -> Decision:
        """Decide the next size and the rest after a batch of ``size`` rows that took
        ``elapsed`` seconds (``last``: it ended its chunk, cut short) with ``waiters``
        sessions waiting on it when it was about to commit, across the WAL positions
        ``wal`` (where it began, where it ended)."""
        target = min(target or s.batch_target, s.batch_target)
        if waiters:
            target = max(target / 2, s.batch_target * MIN_TARGET_SHARE)
            with self._lock:
                self._waited_at = self._clock()
        else:
            target = min(target * GROW, s.batch_target)
        ratio = target / max(elapsed, 1e-3)
        if last:  # the chunk's tail is cut short: it says nothing about a full batch
            ratio = min(ratio, 1.0)
        new = int(min(max(size * min(max(ratio, 0.5), 2.0), s.batch_min), s.batch_max))
        affected = self.affected(s)
        duty = min(max(s.duty_cycle, 0.01), 1.0) if affected else 1.0
        measured = self._duty()
        if measured is not None:  # the application's latency sets it, waiters still cap it
            duty = min(duty, measured)
            affected = affected or measured < 1.0
        rest = elapsed * (1 - duty) / duty
        wal_rest = 0.0
        with self._lock:
            written = self._count_wal(wal) if wal is not None else 0
            if s.max_wal_rate > 0:
                now = self._clock()
                # from the batch's start at the latest: a quiet spell is not saved up
                self._wal_due = max(self._wal_due, now - elapsed) + written / s.max_wal_rate
                wal_rest = max(self._wal_due - now - rest, 0.0)
            rest += wal_rest + s.sleep
            st = self.stats
            st.batches += 1
            st.waited_batches += 1 if waiters else 0
            st.busy_seconds += elapsed
            st.rested_seconds += rest
            st.rests += 1 if rest > 0 else 0
            st.wal_bytes += written
            st.wal_rested_seconds += wal_rest
        return Decision(new, target, rest, affected, duty, written, wal_capped=wal_rest > 0)

    def _count_wal(self, span: tuple[float, float]) -> int:
        """The bytes of ``span`` (WAL positions) no batch counted before (under the lock):
        the spans of the latest batches are kept merged, and the part of this one that
        overlaps them is not counted again."""
        lo, hi = span
        new = hi - lo - sum(max(min(b, hi) - max(a, lo), 0.0) for a, b in self._wal_spans)
        merged: list[tuple[float, float]] = []
        for a, b in sorted([*self._wal_spans, (lo, hi)]):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self._wal_spans = merged[-16:]  # a batch overlaps only the few latest
        return int(max(new, 0.0))
