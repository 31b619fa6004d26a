"""The backfill engine: an UPDATE over a live table, in short batches, exactly once.

* Strategy per table: a single integer key -> ranges (``id >= a AND id < b``); another
  key -> keyset batches; no key -> ``ctid`` ranges (only for fills guarded by
  ``col IS NULL``, which a row moved by its own update cannot match again).
* The work is bounded at start (the largest key, or the table's last block, is frozen);
  rows written later get their value from the column default or the plan's trigger.
* Each batch commits its rows and the cursor in one transaction: a crash loses nothing
  and repeats nothing, even for a non-idempotent ``SET n = n + 1``.
* Batch size follows a target time per batch; a batch that hits its statement timeout
  is split, not retried as is. Lock timeouts, deadlocks and serialization failures are
  retried.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

import psycopg
import structlog
from psycopg import errors as pgerr
from psycopg import sql

from .errors import Paused, StepFailed
from .locks import RetryPolicy
from .state import StateStore

log = structlog.stdlib.get_logger("onlineschema.backfill")


@dataclass(frozen=True)
class BackfillSettings:
    """Tunable while running (``onlineschema set NAME key=value``)."""

    batch_target: float = 0.2  # seconds per batch
    batch_min: int = 10
    batch_max: int = 200_000
    batch_initial: int = 1_000
    batch_statement_timeout: float = 10.0
    #: share of wall time spent in batches; 1.0 = no pause between batches
    duty_cycle: float = 0.75
    sleep: float = 0.0  # fixed extra pause between batches, seconds
    #: pause while replica replay lag exceeds this many seconds (0 = off)
    max_replica_lag: float = 10.0
    #: ... and continue when it is back under this
    resume_replica_lag: float = 2.0
    #: pause while any session waits on a lock held by the backfill longer than this
    max_lock_waiters: float = 0.5
    #: what to do when a signal cannot be read: "continue" or "pause"
    on_unreadable_signal: str = "continue"
    replica_dsn: str | None = None
    control_interval: float = 2.0  # how often the live settings and pause flag are read

    def with_overrides(self, overrides: dict[str, Any]) -> BackfillSettings:
        known = {f.name: f.type for f in fields(self)}
        clean: dict[str, Any] = {}
        for k, v in overrides.items():
            if k not in known:
                continue
            cur = getattr(self, k)
            if isinstance(cur, bool):
                clean[k] = str(v).lower() in ("1", "true", "yes", "on")
            elif isinstance(cur, int):
                clean[k] = int(float(v))
            elif isinstance(cur, float):
                clean[k] = float(v)
            else:
                clean[k] = None if v in (None, "", "none") else str(v)
        return replace(self, **clean)


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
class Spec:
    schema: str
    table: str
    set: list[list[str]]
    where: str | None
    only_null: str | None
    key: list[str]
    key_types: list[str]
    strategy: str

    @classmethod
    def from_details(cls, d: dict[str, Any]) -> Spec:
        return cls(
            schema=d["schema"],
            table=d["table"],
            set=d["set"],
            where=d.get("where"),
            only_null=d.get("only_null"),
            key=list(d.get("key", [])),
            key_types=list(d.get("key_types", [])),
            strategy=d["strategy"],
        )

    @property
    def rel(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.table)

    def set_clause(self) -> sql.Composable:
        return sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), sql.SQL(e)) for c, e in self.set
        )

    def filters(self) -> list[sql.Composable]:
        out: list[sql.Composable] = []
        if self.only_null:
            out.append(sql.SQL("{} IS NULL").format(sql.Identifier(self.only_null)))
        if self.where:
            out.append(sql.SQL("({})").format(sql.SQL(self.where)))
        return out

    def key_row(self) -> sql.Composable:
        return sql.SQL("({})").format(sql.SQL(", ").join(sql.Identifier(k) for k in self.key))

    def key_value(self, values: Sequence[str]) -> sql.Composable:
        return sql.SQL("ROW({})").format(
            sql.SQL(", ").join(
                sql.SQL("{}::{}").format(sql.Literal(v), sql.SQL(t))
                for v, t in zip(values, self.key_types, strict=True)
            )
        )


@dataclass
class _Progress:
    cursor: Any
    end: Any
    rows_done: int
    rows_total: int | None
    batch_size: int
    busy: float
    throttled: float
    started: float = field(default_factory=time.monotonic)


class BackfillRunner:
    """Runs one backfill step to the end, or until paused or stopped."""

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
        throttle: Any = None,
    ) -> None:
        self.conn = conn
        self.store = store
        self.migration = migration
        self.step_id = step_id
        self.spec = Spec.from_details(details)
        self.base_settings = settings
        self.settings = settings
        self.lock_timeout = lock_timeout
        self.retry = retry
        self.sleep = sleep
        self.observer = observer
        self.throttle = throttle
        self._next_control = 0.0
        self.log = log.bind(
            migration=migration, step=step_id, table=f"{self.spec.schema}.{self.spec.table}"
        )

    # --- progress record ---------------------------------------------------------

    def _load(self) -> _Progress:
        row = self.store.backfill(self.migration, self.step_id)
        if row is None:
            self._init()
            row = self.store.backfill(self.migration, self.step_id)
            assert row is not None
        return _Progress(
            cursor=row["cursor"],
            end=row["end_key"],
            rows_done=row["rows_done"],
            rows_total=row["rows_total"],
            batch_size=row["batch_size"] or self.settings.batch_initial,
            busy=row["busy_seconds"],
            throttled=row["throttled_seconds"],
        )

    def _init(self) -> None:
        """Freeze the end of the work and record the starting cursor (one transaction)."""
        s = self.spec
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT reltuples::bigint FROM pg_class WHERE oid = {}::regclass").format(
                    sql.Literal(sql.Identifier(s.schema, s.table).as_string(None))
                )
            )
            est_row = cur.fetchone()
            estimate = int(est_row[0]) if est_row and est_row[0] and est_row[0] > 0 else None
            if s.strategy == "range":
                k = sql.Identifier(s.key[0])
                cur.execute(sql.SQL("SELECT min({k}), max({k}) FROM {t}").format(k=k, t=s.rel))
                lo, hi = cur.fetchone() or (None, None)
                cursor, end = lo, hi
                if estimate is None and lo is not None:
                    estimate = int(hi - lo + 1)
            elif s.strategy == "keyset":
                cols = sql.SQL(", ").join(
                    sql.SQL("{}::text").format(sql.Identifier(k)) for k in s.key
                )
                order = sql.SQL(", ").join(
                    sql.SQL("{} DESC").format(sql.Identifier(k)) for k in s.key
                )
                cur.execute(
                    sql.SQL("SELECT {c} FROM {t} ORDER BY {o} LIMIT 1").format(
                        c=cols, t=s.rel, o=order
                    )
                )
                last = cur.fetchone()
                cursor, end = None, (list(last) if last else None)
            else:  # ctid: blocks that exist now
                cur.execute(
                    sql.SQL(
                        "SELECT (pg_relation_size({r}) / current_setting('block_size')::int)::bigint"
                    ).format(r=sql.Literal(sql.Identifier(s.schema, s.table).as_string(None)))
                )
                row = cur.fetchone()
                cursor, end = 0, (int(row[0]) if row else 0)
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (migration, step_id, strategy, cursor, end_key, rows_total,"
                    " batch_size) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (migration, step_id) DO NOTHING"
                ).format(self.store.t("backfills")),
                (
                    self.migration,
                    self.step_id,
                    s.strategy,
                    json.dumps(cursor),
                    json.dumps(end),
                    estimate,
                    self.settings.batch_initial,
                ),
            )
        self.log.info("backfill_started", strategy=s.strategy, end=end, estimated_rows=estimate)

    # --- one batch ---------------------------------------------------------------

    def _batch_sql(self, p: _Progress, size: int) -> tuple[sql.Composed, Any, bool] | None:
        """The UPDATE for the next batch, the cursor after it, and whether it is the last."""
        s = self.spec
        conds = s.filters()
        if s.strategy == "range":
            if p.cursor is None or p.end is None or p.cursor > p.end:
                return None
            hi = min(p.cursor + size, p.end + 1)
            k = sql.Identifier(s.key[0])
            conds = [
                sql.SQL("{k} >= {lo} AND {k} < {hi}").format(
                    k=k, lo=sql.Literal(p.cursor), hi=sql.Literal(hi)
                ),
                *conds,
            ]
            return self._update(conds), hi, hi > p.end
        if s.strategy == "keyset":
            if p.end is None or p.cursor == p.end:
                return None
            key = s.key_row()
            lower = [sql.SQL("{} > {}").format(key, s.key_value(p.cursor))] if p.cursor else []
            upper = sql.SQL("{} <= {}").format(key, s.key_value(p.end))
            cols = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in s.key)
            order = sql.SQL(", ").join(sql.Identifier(k) for k in s.key)
            with self.conn.cursor() as cur:
                cur.execute(
                    sql.SQL("SELECT {c} FROM {t} WHERE {w} ORDER BY {o} OFFSET {n} LIMIT 1").format(
                        c=cols,
                        t=s.rel,
                        w=sql.SQL(" AND ").join([*lower, upper]),
                        o=order,
                        n=sql.Literal(max(size - 1, 0)),
                    )
                )
                row = cur.fetchone()
            hi = list(row) if row else p.end
            conds = [*lower, sql.SQL("{} <= {}").format(key, s.key_value(hi)), *conds]
            return self._update(conds), hi, hi == p.end
        # ctid
        if p.cursor >= p.end:
            return None
        hi = min(p.cursor + max(size // 50, 1), p.end)  # ~50 rows per 8 kB page
        conds = [
            sql.SQL("ctid >= {}::tid AND ctid < {}::tid").format(
                sql.Literal(f"({p.cursor},0)"), sql.Literal(f"({hi},0)")
            ),
            *conds,
        ]
        return self._update(conds), hi, hi >= p.end

    def _update(self, conds: list[sql.Composable]) -> sql.Composed:
        s = self.spec
        return sql.SQL("UPDATE {t} AS {a} SET {s} WHERE {w}").format(
            t=s.rel, a=sql.Identifier(s.table), s=s.set_clause(), w=sql.SQL(" AND ").join(conds)
        )

    def _run_batch(self, p: _Progress) -> tuple[int, Any, bool, float] | None:
        size = p.batch_size
        while True:
            try:
                return self._attempt(p, size)
            except pgerr.QueryCanceled as exc:
                if size <= self.settings.batch_min:
                    raise StepFailed(
                        self.step_id,
                        f"a batch of {size} rows still ran past its statement timeout"
                        f" ({self.settings.batch_statement_timeout}s): {exc}",
                        "raise batch_statement_timeout (onlineschema set NAME"
                        " batch_statement_timeout=30), or look for what slows the UPDATE",
                    ) from exc
                size = max(self.settings.batch_min, size // 4)
                p.batch_size = size
                self.log.warning("backfill_batch_split", new_batch_size=size)

    def _attempt(self, p: _Progress, size: int) -> tuple[int, Any, bool, float] | None:
        def once() -> tuple[int, Any, bool, float] | None:
            t0 = time.monotonic()
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.execute(
                    "SELECT set_config('lock_timeout', %s, true),"
                    " set_config('statement_timeout', %s, true)",
                    (
                        f"{int(self.lock_timeout * 1000)}ms",
                        f"{int(self.settings.batch_statement_timeout * 1000)}ms",
                    ),
                )
                built = self._batch_sql(p, size)
                if built is None:
                    return None
                stmt, new_cursor, last = built
                cur.execute(stmt)
                n = max(cur.rowcount, 0)
                elapsed = time.monotonic() - t0
                cur.execute(
                    sql.SQL(
                        "UPDATE {} SET cursor = %s, rows_done = rows_done + %s, batches = batches + 1,"
                        " batch_size = %s, busy_seconds = busy_seconds + %s, updated_at = now()"
                        " WHERE migration = %s AND step_id = %s"
                    ).format(self.store.t("backfills")),
                    (json.dumps(new_cursor), n, size, elapsed, self.migration, self.step_id),
                )
            return n, new_cursor, last, time.monotonic() - t0

        retrying = self.retry.retrying(
            retry_on=(pgerr.LockNotAvailable, pgerr.DeadlockDetected, pgerr.SerializationFailure),
            before_sleep=lambda st: self.log.warning(
                "backfill_batch_retry",
                attempt=st.attempt_number,
                error=type(st.outcome.exception()).__name__ if st.outcome else None,
            ),
            sleep=self.sleep,
        )
        return retrying(once)

    # --- main loop ----------------------------------------------------------------

    def _control(self) -> None:
        now = time.monotonic()
        if now < self._next_control:
            return
        self._next_control = now + self.settings.control_interval
        ctl = self.store.control(self.migration)
        if ctl.get("paused"):
            raise Paused(
                f"migration {self.migration} was paused; run `onlineschema resume"
                f" {self.migration}` to continue"
            )
        overrides = ctl.get("settings") or {}
        new = self.base_settings.with_overrides(overrides)
        if new != self.settings:
            self.log.info("backfill_settings_changed", settings=overrides)
            self.settings = new

    def run(self) -> int:
        p = self._load()
        self.log.info(
            "backfill_resumed" if p.rows_done else "backfill_running",
            rows_done=p.rows_done,
            cursor=p.cursor,
        )
        t_start = time.monotonic()
        done_at_start = p.rows_done
        while True:
            self._control()
            waited = 0.0
            if self.throttle is not None:
                waited = self.throttle.before_batch(self)
                p.throttled += waited
            result = self._run_batch(p)
            if result is None:
                break
            n, cursor, last, elapsed = result
            p.cursor, p.rows_done = cursor, p.rows_done + n
            p.busy += elapsed
            ratio = self.settings.batch_target / max(elapsed, 1e-3)
            p.batch_size = int(
                min(
                    max(p.batch_size * min(max(ratio, 0.5), 2.0), self.settings.batch_min),
                    self.settings.batch_max,
                )
            )
            wall = time.monotonic() - t_start
            rate = (p.rows_done - done_at_start) / wall if wall > 0 else 0.0
            eta = None
            if p.rows_total and rate > 0:
                eta = max(p.rows_total - p.rows_done, 0) / rate
            self.log.debug(
                "backfill_batch",
                rows=n,
                seconds=round(elapsed, 4),
                next_batch_size=p.batch_size,
                rows_done=p.rows_done,
            )
            if self.observer is not None:
                self.observer.backfill_progress(
                    self.step_id,
                    p.rows_done,
                    p.rows_total,
                    rate,
                    eta,
                    getattr(self.throttle, "reason", None),
                )
            if last:
                break
            duty = min(max(self.settings.duty_cycle, 0.01), 1.0)
            pause = elapsed * (1 - duty) / duty + self.settings.sleep
            if pause > 0:
                self.sleep(pause)
        self.log.info(
            "backfill_done", rows_done=p.rows_done, seconds=round(time.monotonic() - t_start, 3)
        )
        return p.rows_done
