"""How a backfill batches and throttles itself: ``BackfillSettings`` and its live overrides
(``onlineschema set NAME key=value``, read back from the state schema while it runs)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

_UNITS = {"": 1, "b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


def _parse_bytes(v: Any) -> int:
    text = str(v).strip().lower().replace(" ", "")
    num = text.rstrip("kmgtb")
    unit = text[len(num) :]
    if unit not in _UNITS:
        raise ValueError(f"not a size: {v!r} (use e.g. 64MB)")
    return int(float(num) * _UNITS[unit])


@dataclass(frozen=True)
class BackfillSettings:
    """How a backfill batches and throttles itself. Every field can be changed while it
    runs (``onlineschema set NAME key=value``); the running process picks changes up within
    ``control_interval`` seconds. Thresholds come in pairs: pause above ``max_*``, carry on
    at or below ``resume_*`` (a resume threshold above its pause threshold counts as equal).
    """

    batch_target: float = 0.2  #: seconds per batch the batch size aims at
    batch_min: int = 10
    batch_max: int = 200_000
    batch_initial: int = 1_000
    #: a batch running longer is cancelled, split in four and retried
    batch_statement_timeout: float = 10.0
    #: share of each worker's wall time spent in batches; 1.0 = no rest between batches
    duty_cycle: float = 0.5
    sleep: float = 0.0  #: fixed extra rest between batches, seconds
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
            elif k.endswith("_bytes"):
                clean[k] = _parse_bytes(v)
            elif isinstance(cur, int):
                clean[k] = int(float(v))
            elif isinstance(cur, float):
                clean[k] = float(v)
            else:
                clean[k] = None if v in (None, "", "none") else str(v)
        return replace(self, **clean)
