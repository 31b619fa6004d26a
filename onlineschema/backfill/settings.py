"""How a backfill batches and throttles itself: ``BackfillSettings`` and its live overrides
(``onlineschema set NAME key=value``, read back from the state schema while it runs)."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace
from typing import Any

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m|h)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


def _parse_bytes(v: Any) -> int:
    text = str(v).strip().lower().replace(" ", "").removesuffix("/s")
    num = text.rstrip("kmgtb")
    unit = text[len(num) :]
    if unit not in _UNITS:
        raise ValueError(f"not a size: {v!r} (use e.g. 64MB)")
    return int(float(num) * _UNITS[unit])


def _parse_float(key: str, v: Any) -> float:
    """A number; ``80%`` -> 0.8; a duration with a unit (``50ms``, ``2s``) -> seconds."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    text = str(v).strip()
    if text.endswith("%"):
        return float(text[:-1]) / 100
    m = _DURATION.match(text)
    if m and m.group(2):
        return float(m.group(1)) * _SECONDS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        raise ValueError(
            f"{key}: not a number or duration: {v!r} (e.g. 50ms, 2s, 0.8, 80%)"
        ) from None


@dataclass(frozen=True)
class BackfillSettings:
    """How a backfill batches and throttles itself. Every field can be changed while it
    runs (``onlineschema set NAME key=value``); the running process picks changes up within
    ``control_interval`` seconds. Thresholds come in pairs: pause above ``max_*``, carry on
    at or below ``resume_*`` (a resume threshold above its pause threshold counts as equal).
    """

    #: the lock-hold budget: seconds per batch the batch size aims at. A batch holds the
    #: row locks of every row it updated until it commits, so an application write to one
    #: of them waits up to this long (plus the commit). 30 ms keeps that wait (and the
    #: longest stretch in which a busy application completes nothing) under 50 ms, the
    #: point where users start to notice, with room for the commit and for a batch that
    #: runs long; the per-batch overhead (~1 ms) stays a few percent. While sessions wait
    #: on its batches a worker aims lower (down to a quarter of this), and grows back.
    batch_target: float = 0.03
    batch_min: int = 10
    batch_max: int = 200_000
    batch_initial: int = 1_000
    #: a batch running longer is cancelled, split in four and retried
    batch_statement_timeout: float = 10.0
    #: the most of each worker's wall time spent in batches WHILE the application is at
    #: work: the ceiling of the share app_latency_target adapts, and the share while the
    #: application is affected (a session waited on a batch in the last
    #: ``signal_interval`` seconds, the latency probe reads above
    #: ``resume_latency_ratio``, or busy_sessions); with nothing affected a worker does
    #: not rest. 1.0 = never rest. The application's slowest transactions follow this
    #: share, not its mean: in benchmarks/lock_impact.py's saturated closed loop its p99
    #: was 1.3-2.8x its own with the ceiling at 0.25, 2.4-4.5x without one (its README)
    duty_cycle: float = 0.25
    sleep: float = 0.0  #: fixed extra rest between batches, seconds
    #: bytes of WAL a second this process's batches may write (e.g. 4MB, or 4MB/s; 0 =
    #: no cap): after each batch a worker rests until the WAL it wrote fits under the cap,
    #: with the application at work or not. Every commit of the application waits for
    #: the WAL written before it to reach the disk; on a disk whose flushes take tens of
    #: milliseconds the backfill's WAL makes those waits longer (docs/backfill.md, Tuning)
    max_wal_rate: int = 0
    #: pause while a standby's replay lag exceeds this many seconds (0 = off) ...
    max_replica_lag: float = 10.0
    #: ... and carry on when it is back at or under this
    resume_replica_lag: float = 2.0
    #: pause while a standby is more than this many bytes of WAL behind (0 = off) ...
    max_replica_lag_bytes: int = 0
    resume_replica_lag_bytes: int = 0
    #: also read the lag on this standby (its DSN), not only in pg_stat_replication
    replica_dsn: str | None = None
    #: pause (and halve the batch) when a session waited longer than this on a batch's locks
    max_blocked_wait: float = 0.5
    #: ... for this long
    blocked_cooldown: float = 1.0
    #: keep the application's latency, as Little's law gives it (sessions running a
    #: query over transactions a second), at or under this multiple of its own before
    #: the backfill, by adapting the duty cycle between 5 % and duty_cycle; 0 = off. A
    #: saturated application keeps about 1 / this of its throughput. An idle database
    #: at the start has no baseline: then busy_sessions below applies. The mean moves
    #: little while the slowest transactions slow a lot: at 1.3 the application's p99
    #: was 2.9-5.0x its own in benchmarks/lock_impact.py, at 1.1 2.4-3.0x (its README)
    app_latency_target: float = 1.1
    #: without that baseline: rest between batches (duty_cycle) while, on average over
    #: the signal readings, at least this many sessions other than the backfill's run a
    #: query on the server (pg_stat_activity, state 'active'); 0 = off.
    busy_sessions: float = 1.0
    #: the application's latency, as a probe query measures it against its own baseline
    #: (taken before the first batch): "auto" (a one-block read of the table, which also
    #: waits behind any lock queued on the table, writing a few bytes of WAL, so that
    #: its commit waits for the flush like the application's writes), "off", or the SQL
    #: of a query that stands for the application's (run read-only, at most 1 s)
    latency_probe: str = "auto"
    #: pause while the probe takes more than this many times its baseline ...
    max_latency_ratio: float = 4.0
    #: ... carry on at or under this; between the two, rest at duty_cycle
    resume_latency_ratio: float = 2.0
    #: probe latencies are compared as at least this many seconds (ignores noise on a
    #: sub-millisecond baseline)
    latency_floor: float = 0.005
    #: batches commit with synchronous_commit off: their locks go as soon as the commit
    #: record is written, not after the WAL flush. A crash can lose the last batches, but
    #: each batch's rows and its chunk's cursor commit together, so resume redoes exactly
    #: those; the step's end is committed durably (which flushes every batch before it).
    synchronous_commit: bool = False
    #: pause while a transaction holding a lock on the table has held back vacuum this long
    max_transaction_age: float = 600.0
    resume_transaction_age: float = 600.0
    #: pause while a vacuum of the table (autovacuum or another session's) runs
    pause_on_vacuum: bool = False
    #: a signal that cannot be read: "continue" (reported once) or "pause" until readable
    on_unreadable_signal: str = "continue"
    #: plain VACUUM (INDEX_CLEANUP OFF) of the table every this many rows (0 = a tenth
    #: of the table, at least 100,000 rows), so later batches reuse the space of the row
    #: versions earlier ones replaced; off with vacuum=false
    vacuum: bool = True
    vacuum_every: int = 0
    #: chunks the range is cut into (0 = 4 per worker, at least 16)
    chunks: int = 0
    signal_interval: float = 1.0  #: how often the signals are read
    control_interval: float = 2.0  #: how often the live settings and pause flag are read

    def __post_init__(self) -> None:
        if self.on_unreadable_signal not in ("continue", "pause"):
            raise ValueError("on_unreadable_signal must be 'continue' or 'pause'")
        if not 0 < self.duty_cycle <= 1:
            raise ValueError("duty_cycle must be in (0, 1]")
        if self.batch_min < 1 or self.batch_max < self.batch_min:
            raise ValueError("need 1 <= batch_min <= batch_max")
        if self.batch_target <= 0 or self.batch_statement_timeout <= 0:
            raise ValueError("batch_target and batch_statement_timeout must be positive")
        if self.app_latency_target < 0 or 0 < self.app_latency_target <= 1:
            raise ValueError("app_latency_target must be 0 (off) or above 1, e.g. 1.1")
        if self.max_latency_ratio < 0 or self.resume_latency_ratio < 0:
            raise ValueError("max_latency_ratio and resume_latency_ratio must be >= 0")
        if self.max_wal_rate < 0:
            raise ValueError("max_wal_rate must be >= 0 (bytes a second, e.g. 4MB; 0 = no cap)")

    def given(self) -> set[str]:
        """The settings that differ from the defaults."""
        default = BackfillSettings()
        return {f.name for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}

    def with_overrides(self, overrides: dict[str, Any]) -> BackfillSettings:
        """These settings with ``overrides`` (strings from the CLI or JSON values) applied;
        unknown keys are ignored, bad values raise ValueError."""
        known = {f.name for f in fields(self)}
        clean: dict[str, Any] = {}
        for k, v in overrides.items():
            if k not in known:
                continue
            cur = getattr(self, k)
            if isinstance(cur, bool):
                clean[k] = (
                    v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes", "on")
                )
            elif k.endswith("_bytes") or k == "max_wal_rate":
                clean[k] = _parse_bytes(v)
            elif isinstance(cur, int):
                clean[k] = int(_parse_float(k, v))
            elif isinstance(cur, float):
                clean[k] = _parse_float(k, v)
            elif isinstance(cur, str):
                clean[k] = str(v)
            else:
                clean[k] = None if v in (None, "", "none") else str(v)
        return replace(self, **clean)
