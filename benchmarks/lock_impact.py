#!/usr/bin/env python
"""Lock-impact benchmark: what a live workload sees while a migration runs, for the same
migration run directly (plain SQL, one transaction) and through onlineschema.

A pgbench workload (the ``pgbench`` that ships with the server) runs against ``orders``
(``--rows``, default 1M) with every transaction logged (``pgbench --log``): a baseline
window, then the migration, then a tail window.

The server runs as production would (the default): data on disk, ``fsync``,
``synchronous_commit`` and ``full_page_writes`` on, ``shared_buffers`` a quarter of the
table's size (``--shared-buffers``). ``--ram`` runs it the old way instead: on a RAM
disk with durability off, where commits are free and lock hold times look shorter than
they are. The migration adds a NOT NULL column
filled from existing data, an index on it, a foreign key and a check (``MIGRATION_SQL``).

Runs, each on a fresh copy of the same database:

* contestants: ``direct`` (the script in one transaction) and ``onlineschema``; and, when
  asked for, ``control``: no migration, the workload alone for ``--control-seconds``
  (what the machine gives without us: its own stalls, to set ours against), and with
  ``--control-wal MB,...`` one control run for each rate, with a filler session beside
  the workload writing that many MB of WAL a second and nothing else (no lock on the
  workload's rows): what the WAL volume alone does to the workload;
* scenarios: ``none``, and ``blocker``: a session holding a read lock on ``orders`` in a
  transaction that lasts ``--blocker`` seconds (15) after the migration starts (it takes
  the lock 1 s before);
* modes: ``closed`` (``--clients`` clients as fast as they can: saturating) and ``open``
  (``pgbench --rate``: a fixed arrival rate, so a stall is counted in requests that wait,
  not in clients that stop asking).

For each run: migration time; throughput during the migration as a ratio of the
baseline's (the same run's first window), and per second: throughput, max latency and
the longest gap (no transaction completing), with the worst second's throughput ratio;
p50/p99/max latency of the transactions that overlap the migration and p99 as a ratio
of the baseline's; the longest gap between completed transactions during it;
transactions slower than 1 s; errors; and a correctness check of the final table. Results go to ``--out`` as JSON and
are printed as a Markdown table (the one in benchmarks/README.md).

    python benchmarks/lock_impact.py                 # full size (a quiet machine, ~10 min)
    python benchmarks/lock_impact.py --rows 50000 --baseline 5 --tail 5
    python benchmarks/lock_impact.py --report benchmarks/results/lock_impact.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from structlog.testing import capture_logs

from onlineschema import BackfillSettings, Executor, Settings
from onlineschema.cli.logs import configure
from onlineschema.cli.settings import start_settings
from onlineschema.embedded.server import LocalServer, find_bindir
from onlineschema.errors import OnlineSchemaError
from onlineschema.sqlinput import parse_sql

MIGRATION_SQL = """\
ALTER TABLE orders ADD COLUMN created_day date;
UPDATE orders SET created_day = (created_at AT TIME ZONE 'UTC')::date;
ALTER TABLE orders ALTER COLUMN created_day SET NOT NULL,
    ALTER COLUMN created_day SET DEFAULT CURRENT_DATE;
CREATE INDEX orders_created_day_idx ON orders (created_day);
ALTER TABLE orders ADD CONSTRAINT orders_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id);
ALTER TABLE orders ADD CONSTRAINT orders_amount_nonnegative CHECK (amount >= 0);
"""

SCHEMA_SQL = """\
CREATE TABLE users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL,
    created_at timestamptz NOT NULL
);
INSERT INTO users (email, created_at)
SELECT 'user' || g || '@example.com', now() - g * interval '1 minute'
FROM generate_series(1, %(users)s) AS g;
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL,
    amount numeric(12, 2) NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    note text
);
INSERT INTO orders (user_id, amount, created_at, updated_at, note)
SELECT 1 + (g::bigint * 7919) %% %(users)s, (g %% 50000) / 100.0,
       now() - (g %% 20000) * interval '37 minutes', now(),
       CASE WHEN g %% 4 = 0 THEN 'gift wrap, leave at the door' END
FROM generate_series(1, %(rows)s) AS g;
CREATE INDEX orders_user_id_idx ON orders (user_id);
"""

#: pgbench scripts and their weights: point reads 40 %, updates by id 40 %, inserts 20 %.
PGBENCH_SCRIPTS: dict[str, tuple[str, int]] = {
    "read": (
        "\\set id random(1, :rows)\n"
        "SELECT id, user_id, amount, created_at FROM orders WHERE id = :id;\n",
        4,
    ),
    "update": (
        "\\set id random(1, :rows)\n"
        "UPDATE orders SET amount = amount + 1, updated_at = now() WHERE id = :id;\n",
        4,
    ),
    "insert": (
        "\\set uid random(1, :users)\nINSERT INTO orders (user_id, amount) VALUES (:uid, 1);\n",
        2,
    ),
}

CONTESTANTS = ("direct", "onlineschema")
#: the workload alone, no migration (opt in: --contestants control,onlineschema)
CONTROL = "control"
SCENARIOS = ("none", "blocker")
MODES = ("closed", "open")
SLOW = 1.0  # a transaction slower than this counts as slow
MB = 2**20
#: a poller's sample: a tuple whose first item is the epoch it was taken at
SampleT = TypeVar("SampleT", bound=tuple[Any, ...])


# --- measurements ---------------------------------------------------------------------


@dataclass
class Txn:
    end: float  # completion, epoch seconds
    latency: float  # seconds (under --rate: from the scheduled start, lag included)
    script: int
    failed: bool = False

    @property
    def start(self) -> float:
        return self.end - self.latency


def read_logs(directory: Path, prefix: str) -> list[Txn]:
    """Parse pgbench's per-transaction logs (one file per thread)."""
    out: list[Txn] = []
    for path in sorted(directory.glob(prefix + ".*")):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) < 6:
                continue  # a line cut short
            end = int(parts[4]) + int(parts[5]) / 1e6
            if parts[2] in ("failed", "skipped"):
                out.append(Txn(end, 0.0, int(parts[3]), failed=True))
                continue
            out.append(Txn(end, int(parts[2]) / 1e6, int(parts[3])))
    out.sort(key=lambda t: t.end)
    return out


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)) - 1, 0)]


def window_stats(txns: Sequence[Txn], start: float, end: float) -> dict[str, Any]:
    """Throughput, latency percentiles and the longest gap inside ``[start, end]``."""
    seconds = max(end - start, 1e-9)
    ok = [t for t in txns if not t.failed]
    finished = [t.end for t in ok if start <= t.end <= end]
    overlapping = [t.latency for t in ok if t.end >= start and t.start <= end]
    points = [start, *finished, end]
    gap = max((b - a for a, b in itertools.pairwise(points)), default=seconds)
    return {
        "seconds": round(seconds, 3),
        "transactions": len(finished),
        "tps": round(len(finished) / seconds, 1),
        "p50_ms": round(_pct(overlapping, 50) * 1000, 2),
        "p99_ms": round(_pct(overlapping, 99) * 1000, 2),
        "max_ms": round(max(overlapping, default=0.0) * 1000, 2),
        "longest_gap_ms": round(gap * 1000, 2),
        "slower_than_1s": sum(1 for x in overlapping if x > SLOW),
        "failed": sum(1 for t in txns if t.failed and start <= t.end <= end),
    }


def per_second(txns: Sequence[Txn], start: float, end: float) -> list[dict[str, float]]:
    """For each whole second of ``[start, end]`` (the last one cut short): completed
    transactions per second, the p99 and max latency of those completed in it, and its
    longest gap (no transaction completing, the second's edges included)."""
    ok = [t for t in txns if not t.failed and start <= t.end <= end]
    out: list[dict[str, float]] = []
    i = 0
    lo = start
    while lo < end:
        hi = min(lo + 1.0, end)
        ends: list[float] = []
        latencies: list[float] = []
        while i < len(ok) and ok[i].end < hi:
            ends.append(ok[i].end)
            latencies.append(ok[i].latency)
            i += 1
        points = [lo, *ends, hi]
        gap = max(b - a for a, b in itertools.pairwise(points))
        span = max(hi - lo, 1e-9)
        out.append(
            {
                "t": round(lo - start, 3),
                "tps": round(len(ends) / span, 1),
                "p99_ms": round(_pct(latencies, 99) * 1000, 2),
                "max_ms": round(max(latencies, default=0.0) * 1000, 2),
                "gap_ms": round(gap * 1000, 2),
            }
        )
        lo = hi
    return out


# --- one run --------------------------------------------------------------------------


@dataclass
class Run:
    contestant: str
    scenario: str
    mode: str
    rate: float | None = None
    round: int = 1  #: which round of --repeat this run belongs to
    migration_seconds: float = 0.0
    finished: bool = False
    outcome: str = ""
    baseline: dict[str, Any] = field(default_factory=dict)
    during: dict[str, Any] = field(default_factory=dict)
    tail: dict[str, Any] = field(default_factory=dict)
    throughput_ratio: float = 0.0
    #: the worst whole second's throughput during the migration, over the baseline's
    worst_second_ratio: float = 0.0
    #: p99 latency during the migration over the baseline's p99
    p99_ratio: float = 0.0
    #: per second of the migration: tps, max latency, longest gap
    seconds: list[dict[str, float]] = field(default_factory=list)
    load_average: float = 0.0  #: 1-minute load average when the run ended
    #: per step of an onlineschema run: its seconds, longest gap and max latency
    steps: list[dict[str, Any]] = field(default_factory=list)
    #: how the backfill paced itself (batches, waited on, busy/rested/throttled seconds)
    backfill: dict[str, Any] = field(default_factory=dict)
    #: each stretch of STALL_MS or more with no transaction completing, and what ran then
    stalls: list[dict[str, Any]] = field(default_factory=list)
    #: ms a second pgbench's threads waited for a CPU: baseline, during, tail
    client_cpu_wait: dict[str, float] = field(default_factory=dict)
    #: times a second a backend found the WAL buffers full: baseline, during, tail
    wal_buffers_full: dict[str, float] = field(default_factory=dict)
    #: with --commit-probe: its commits' p50/p99/max ms, baseline, during, tail
    commit_probe: dict[str, dict[str, float]] = field(default_factory=dict)
    #: the backfill's VACUUMs: (started, ended) seconds into the migration
    vacuums: list[tuple[float, float]] = field(default_factory=list)
    #: checkpoints that ended during the run: (started, ended) seconds into the migration
    checkpoints: list[tuple[float, float]] = field(default_factory=list)
    slower_than_1s_total: int = 0
    errors: int = 0
    error_detail: list[str] = field(default_factory=list)
    correct: bool = False
    checks: dict[str, Any] = field(default_factory=dict)
    blocker_seconds: float | None = None
    #: a control run's filler: the MB of WAL a second it was asked for and wrote
    filler_mb_s: float = 0.0
    filler_wrote_mb_s: float = 0.0
    #: for the plots, not saved: (seconds since the migration started, latency) samples,
    #: completions per 0.25 s bin, and the blocker's window
    series: dict[str, Any] = field(default_factory=dict, repr=False)


class Pgbench:
    """pgbench in the background, its stderr lines timestamped as they arrive (so that
    errors before the end of the run can be told from the clients we end on purpose)."""

    def __init__(self, argv: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        self.lines: list[tuple[float, str]] = []
        self.stopped_at = math.inf
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.time(), line.rstrip("\n")))

    def stop(self, dsn: str) -> None:
        """End the run: terminate pgbench's sessions; it then exits and closes its logs."""
        self.stopped_at = time.time()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'pgbench' AND datname = current_database()"
            )
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)

    def cpu_wait(self) -> float:
        """Seconds pgbench's threads have spent runnable but waiting for a CPU (Linux
        schedstat; 0 where it cannot be read): the workload's clients share this
        machine's CPUs with the server and the migration, which an application on its
        own hosts would not."""
        total = 0.0
        for task in Path(f"/proc/{self.proc.pid}/task").glob("*"):
            try:
                total += int((task / "schedstat").read_text().split()[1]) / 1e9
            except (OSError, IndexError, ValueError):
                continue
        return total

    def errors(self) -> list[str]:
        """Clients aborted by an error before the run was ended."""
        return [
            line.strip()
            for at, line in self.lines
            if at < self.stopped_at and "aborted" in line and "Run was aborted" not in line
        ]


class Background(threading.Thread):
    """A daemon thread that runs until ``stop()`` (its loop waits on ``done``)."""

    #: seconds stop() waits for the thread to end (None: until it does)
    stop_timeout: float | None = 30.0

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.done = threading.Event()

    def stop(self) -> None:
        self.done.set()
        self.join(self.stop_timeout)


class WalFiller(Background):
    """Writes ``mb_s`` MB of WAL a second and nothing else: every ``tick`` seconds one
    transaction inserts into a table of its own (``wal_filler``: no lock the workload
    takes), committed with ``synchronous_commit`` off as the backfill's batches are, so
    its WAL reaches the disk with the workload's next commit flush. Each insert's WAL is
    read from ``EXPLAIN (ANALYZE, WAL)``, and the next one sized to keep the total on
    ``mb_s`` times the seconds since the start."""

    tick = 0.05

    def __init__(self, dsn: str, mb_s: float) -> None:
        super().__init__("wal-filler")
        self.dsn, self.rate = dsn, mb_s * MB
        self.error: BaseException | None = None
        self.written = 0  #: WAL bytes, as EXPLAIN reports them
        self.seconds = 0.0

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, application_name="wal-filler") as c:
                c.execute("CREATE TABLE IF NOT EXISTS wal_filler (id bigserial, pad text)")
                c.execute("SET synchronous_commit = off")
                per_row, t0 = 600.0, time.monotonic()
                while not self.done.wait(self.tick):
                    due = self.rate * (time.monotonic() - t0) - self.written
                    n = min(int(due / per_row), 20_000)
                    if n <= 0:
                        continue
                    plan = c.execute(
                        # rows of 512 bytes that do not compress
                        "EXPLAIN (ANALYZE, WAL, FORMAT JSON) INSERT INTO wal_filler (pad)"
                        " SELECT repeat(md5(random()::text), 16) FROM generate_series(1, %s)",
                        (n,),
                    ).fetchone()
                    assert plan is not None
                    wal = int(plan[0][0]["Plan"].get("WAL Bytes", 0))
                    self.written += wal
                    per_row = max(wal / n, 1.0)
                self.seconds = time.monotonic() - t0
        except BaseException as exc:  # reported by the caller
            self.error = exc

    @property
    def mb_s(self) -> float:
        return self.written / MB / max(self.seconds, 1e-9)


class CommitProbe(Background):
    """With ``--commit-probe MS``: every MS milliseconds a session of its own commits a
    transaction that wrote a few bytes of WAL (a transactional message, no table), so that
    the commit waits for the WAL flush as the workload's writes do; each commit's time is
    kept. What a commit costs on the server's disk, beside the workload's latencies."""

    def __init__(self, dsn: str, interval: float) -> None:
        super().__init__("commit-probe")
        self.dsn, self.interval = dsn, interval
        self.samples: list[tuple[float, float]] = []  #: (commit began, its seconds)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, application_name="commit-probe") as c:
                c.execute("SET synchronous_commit = on")
                c.commit()
                while not self.done.wait(self.interval):
                    c.execute("SELECT pg_logical_emit_message(true, 'probe', '')")
                    t0, m0 = time.time(), time.perf_counter()
                    c.commit()
                    self.samples.append((t0, time.perf_counter() - m0))
        except BaseException as exc:  # reported by the caller
            self.error = exc

    def window(self, start: float, end: float) -> dict[str, float]:
        """p50, p99 and max of the commits that began in ``[start, end)``, in ms."""
        ms = [d * 1000 for t, d in self.samples if start <= t < end]
        return {
            "n": len(ms),
            "p50_ms": round(_pct(ms, 50), 2),
            "p99_ms": round(_pct(ms, 99), 2),
            "max_ms": round(max(ms, default=0.0), 2),
        }

    def across(self, start: float, end: float) -> float | None:
        """The longest commit that overlapped ``[start, end]``, ms (None: none did)."""
        ms = [d * 1000 for t, d in self.samples if t <= end and t + d >= start]
        return round(max(ms), 1) if ms else None


class Blocker(threading.Thread):
    """Holds ACCESS SHARE on orders in an open transaction for ``seconds``."""

    def __init__(self, dsn: str, seconds: float) -> None:
        super().__init__(name="blocker", daemon=True)
        self.dsn, self.seconds = dsn, seconds
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.took = self.released = 0.0

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, application_name="long-report") as conn:
                conn.execute("SELECT count(*) FROM orders WHERE id <= 1000")
                self.took = time.time()
                self.ready.set()
                time.sleep(self.seconds)
                conn.rollback()
                self.released = time.time()
        except BaseException as exc:  # reported by the caller
            self.error = exc
            self.ready.set()


class ServerWatch(Background):
    """Polls the server every ``interval`` seconds: its WAL position (how much WAL was
    written when), its last checkpoint (``pg_control_checkpoint()``: a checkpoint shows
    when it ends, with the second it started) and whether the checkpointer is at work
    (any wait event but the idle ``CheckpointerMain``: a checkpoint in progress), and
    how often a backend found the WAL buffers full (``pg_stat_wal.wal_buffers_full``: it
    wrote WAL out itself first, holding the lock every commit's flush takes)."""

    interval = 0.1
    stop_timeout = None

    def __init__(self, dsn: str) -> None:
        super().__init__("server-watch")
        self.dsn = dsn
        self.samples: list[tuple[float, float, float]] = []  #: (epoch, WAL bytes, full)
        self.checkpoints: list[tuple[float, float]] = []  #: (started, seen ended), epoch
        self.checkpointing: list[float] = []  #: when the checkpointer was seen at work

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="server-watch") as c:
            last = None
            while not self.done.wait(self.interval):
                row = c.execute(
                    "SELECT (pg_current_wal_lsn() - '0/0')::float8,"
                    " extract(epoch FROM checkpoint_time)::float8,"
                    " (SELECT coalesce(wait_event, '') <> 'CheckpointerMain'"
                    " FROM pg_stat_activity WHERE backend_type = 'checkpointer'),"
                    " (SELECT wal_buffers_full FROM pg_stat_wal)::float8"
                    " FROM pg_control_checkpoint()"
                ).fetchone()
                assert row is not None
                now = time.time()
                self.samples.append((now, row[0], row[3]))
                if row[2]:
                    self.checkpointing.append(now)
                if last is not None and row[1] != last:
                    self.checkpoints.append((row[1], now))
                last = row[1]

    def wal_mb(self, start: float, end: float) -> float:
        """MB of WAL written in ``[start, end]`` (from the samples around it)."""
        return self._between(start, end, 1) / MB

    def buffers_full(self, start: float, end: float) -> int:
        """Times a backend found the WAL buffers full in ``[start, end]`` (as reported:
        backends report their WAL statistics about once a second)."""
        return int(self._between(start, end, 2))

    def _between(self, start: float, end: float, i: int) -> float:
        pair = around(self.samples, start, end)
        return 0.0 if pair is None else pair[1][i] - pair[0][i]


def around(samples: Sequence[SampleT], start: float, end: float) -> tuple[SampleT, SampleT] | None:
    """The last sample taken at or before ``start`` and the first at or after ``end``
    (samples are tuples in time order, their epoch first), or None if either is missing."""
    before = [x for x in samples if x[0] <= start]
    after = [x for x in samples if x[0] >= end]
    return (before[-1], after[0]) if before and after else None


class WaitSampler(Background):
    """With ``--sample-waits MS``: every MS milliseconds, what each backend of the
    database is doing (``pg_stat_activity``: who, state, wait event) and the machine's
    stall counters (``/proc/pressure``: time some task waited for a CPU or for I/O), so
    that a stall can be explained by what the clients waited on across it."""

    PRESSURE = ("cpu", "io")
    stop_timeout = None

    def __init__(self, dsn: str, interval: float) -> None:
        super().__init__("wait-sampler")
        self.dsn = dsn
        self.interval = interval
        #: (epoch, ((who, state, wait), ...), {resource: µs stalled so far})
        self.samples: list[tuple[float, tuple[tuple[str, str, str], ...], dict[str, int]]] = []

    @classmethod
    def pressure(cls) -> dict[str, int]:
        out = {}
        for name in cls.PRESSURE:
            path = Path("/proc/pressure") / name
            if path.exists():  # "some avg10=.. avg60=.. avg300=.. total=µs"
                out[name] = int(path.read_text().split()[4].partition("=")[2])
        return out

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True, application_name="wait-sampler") as c:
            cur = c.cursor()
            while not self.done.wait(self.interval):
                rows = cur.execute(
                    "SELECT CASE WHEN application_name = 'pgbench'"
                    " OR application_name LIKE 'onlineschema%'"
                    " THEN application_name ELSE backend_type END,"
                    " coalesce(state, ''),"
                    " coalesce(wait_event_type || ':' || wait_event, '')"
                    " FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                    " AND application_name NOT IN ('server-watch', 'wait-sampler')"
                ).fetchall()
                self.samples.append((time.time(), tuple(rows), self.pressure()))

    def across(self, start: float, end: float) -> dict[str, Any]:
        """What the samples in ``[start, end]`` saw: how often each backend was seen in
        each wait (idle ones and the idle waits of background processes left out), and
        the ms of CPU and I/O pressure in that window."""
        inside = [x for x in self.samples if start <= x[0] <= end]
        seen: dict[str, int] = {}
        for _, rows, _ in inside:
            for who, state, wait in rows:
                if state == "idle" or wait in IDLE_WAITS:
                    continue
                key = f"{who} {state or '-'} {wait or 'cpu'}"
                seen[key] = seen.get(key, 0) + 1
        pair = around(self.samples, start, end)
        pressure = {}
        if pair is not None:
            (_, _, was), (_, _, now) = pair
            for name in self.PRESSURE:
                if name in was and name in now:
                    pressure[f"{name}_ms"] = round((now[name] - was[name]) / 1000, 1)
        return {
            "samples": len(inside),
            "waits": dict(sorted(seen.items(), key=lambda kv: -kv[1])),
            "pressure": pressure,
        }


#: the waits of a background process with nothing to do (not worth reporting)
IDLE_WAITS = frozenset(
    {
        "Activity:CheckpointerMain",
        "Activity:WalWriterMain",
        "Activity:BgwriterMain",
        "Activity:BgwriterHibernate",
        "Activity:AutovacuumMain",
        "Activity:LogicalLauncherMain",
        "Activity:IoWorkerMain",
        "Activity:WalSummarizerWal",
        "Activity:SysLoggerMain",
        "Activity:ArchiverMain",
    }
)


class StepTimes:
    """Executor observer: when each step started and finished (epoch seconds)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.backfill: dict[str, Any] = {}  #: the backfill_done event's accounting
        #: what the backfill did when (epoch seconds): its batches and its VACUUMs
        self.events: list[dict[str, Any]] = []

    def step_started(self, step: Any, index: int, total: int) -> None:
        self.steps.append({"step": step.id, "start": time.time(), "end": None})

    def step_finished(self, step: Any, index: int, total: int, skipped: bool) -> None:
        if self.steps and self.steps[-1]["step"] == step.id:
            self.steps[-1]["end"] = time.time()

    def backfill_progress(self, *args: Any) -> None:
        pass


def _stamp(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    event["at"] = time.time()
    return event


def backfill_events(logs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The backfill's batches and VACUUMs as intervals (epoch seconds), from its events
    (each logged as it ended, with its duration)."""
    out: list[dict[str, Any]] = []
    for e in logs:
        if e["event"] == "backfill_batch":
            out.append(
                {
                    "kind": "batch",
                    "start": e["at"] - e["seconds"],
                    "end": e["at"],
                    "rows": e["rows"],
                    "waiters": e["waiters"],
                }
            )
        elif e["event"] in ("backfill_vacuum", "backfill_vacuum_cancelled"):
            out.append({"kind": "vacuum", "start": e["at"] - e["seconds"], "end": e["at"]})
    return out


#: a stretch with no transaction completing at least this long is a stall to explain
STALL_MS = 40.0


def stalls(
    txns: Sequence[Txn],
    start: float,
    end: float,
    times: StepTimes,
    watch: ServerWatch,
    sampler: WaitSampler | None = None,
    probe: CommitProbe | None = None,
) -> list[dict[str, Any]]:
    """Each stall of ``STALL_MS`` or more in ``[start, end]`` with what was going on: the
    step, the transactions in flight across it by script (reads stalled too: not a row
    lock), the backfill's batches and VACUUMs that overlapped it, the WAL written in the
    second before it, whether a checkpoint ran, with a sampler what the backends
    waited on across it and the machine's CPU and I/O pressure, and with a commit probe
    the longest of its commits that overlapped it."""
    scripts = list(PGBENCH_SCRIPTS)
    ok = [t for t in txns if not t.failed and start <= t.end <= end]
    points = [start, *(t.end for t in ok), end]
    out: list[dict[str, Any]] = []
    for a, b in itertools.pairwise(points):
        if (b - a) * 1000 < STALL_MS:
            continue
        across: dict[str, int] = {}
        for t in txns:
            if not t.failed and t.start <= a and t.end >= b:
                across[scripts[t.script]] = across.get(scripts[t.script], 0) + 1
        step = next(
            (st["step"] for st in times.steps if st["start"] <= a <= (st["end"] or end)), None
        )
        near = [e for e in times.events if e["start"] <= b and e["end"] >= a]
        out.append(
            {
                "at": round(a - start, 3),
                "gap_ms": round((b - a) * 1000, 1),
                "step": step,
                "in_flight": across,
                "batches": [
                    {
                        "ms": round((e["end"] - e["start"]) * 1000, 1),
                        "rows": e["rows"],
                        "waiters": e["waiters"],
                    }
                    for e in near
                    if e["kind"] == "batch"
                ],
                "vacuum": any(e["kind"] == "vacuum" for e in near),
                "wal_mb_before": round(watch.wal_mb(a - 1.0, a), 1),
                # checkpoint_time has whole seconds: the one it started in counts
                "checkpoint": any(c0 <= b and c1 >= a - 1.0 for c0, c1 in watch.checkpoints)
                or any(a - watch.interval <= t <= b + watch.interval for t in watch.checkpointing),
            }
        )
        if sampler is not None:
            out[-1].update(sampler.across(a, b))
        if probe is not None:
            out[-1]["probe_ms"] = probe.across(a, b)
    return out


def migrate(
    contestant: str, dsn: str, sets: Sequence[str] = (), times: StepTimes | None = None
) -> tuple[bool, str]:
    if contestant == "direct":
        with psycopg.connect(dsn, application_name="direct-migration") as conn:
            conn.execute(MIGRATION_SQL)  # one transaction, committed on exit
        return True, "completed"
    given = start_settings(sets, environ={})
    settings = Settings(backfill=BackfillSettings().with_overrides(given))
    with (
        capture_logs(processors=[_stamp]) as logs,
        Executor(dsn, settings, observer=times) as ex,
    ):
        result = ex.apply(parse_sql(MIGRATION_SQL), name="bench")
    if times is not None:  # how the backfill paced itself
        times.events = backfill_events(logs)
        done = next((e for e in logs if e["event"] == "backfill_done"), {})
        keys = ("seconds", "batches", "waited_batches", "busy_seconds", "rested_seconds")
        more = ("throttled_seconds", "wal_bytes", "wal_rested_seconds")
        times.backfill = {k: done[k] for k in (*keys, *more) if k in done}
        throttled: dict[str, int] = {}
        for e in logs:
            if e["event"] == "backfill_throttled":
                throttled[e["reason"]] = throttled.get(e["reason"], 0) + 1
        times.backfill["throttled"] = throttled
        # the Little's-law controller: (latency ratio, duty cycle, when: epoch seconds
        # until the run makes them seconds into the migration) at each adjustment
        times.backfill["duty"] = [
            (round(e["latency_ratio"], 2), round(e["duty"], 3), e["at"])
            for e in logs
            if e["event"] == "backfill_duty"
        ]
    return result.state == "completed", result.state


def check_table(dsn: str, rows: int, updates: int, inserts: int, slack: int) -> dict[str, Any]:
    """The migrated table is what the script says, and no write of the workload was lost.

    ``slack``: transactions that may have committed without being logged (those in flight
    when the workload was stopped: at most one per client)."""
    with psycopg.connect(dsn, autocommit=True) as conn:

        def one(query: str, params: Sequence[Any] = ()) -> Any:
            row = conn.execute(query.encode(), params).fetchone()
            return row[0] if row else None

        count = int(one("SELECT count(*) FROM orders"))
        total = float(one("SELECT sum(amount) FROM orders"))
        checks: dict[str, Any] = {
            "column_not_null": bool(
                one(
                    "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'orders'::regclass"
                    " AND attname = 'created_day'"
                )
            ),
            "constraints_validated": not one(
                "SELECT count(*) FROM pg_constraint WHERE conrelid = 'orders'::regclass"
                " AND NOT convalidated"
            ),
            "fk_and_check_present": one(
                "SELECT count(*) FROM pg_constraint WHERE conrelid = 'orders'::regclass"
                " AND conname IN ('orders_user_id_fkey', 'orders_amount_nonnegative')"
            )
            == 2,
            "index_valid": bool(
                one(
                    "SELECT i.indisvalid AND i.indisready FROM pg_index i"
                    " WHERE i.indexrelid = 'orders_created_day_idx'::regclass"
                )
            ),
            "no_nulls": not one("SELECT count(*) FROM orders WHERE created_day IS NULL"),
            "existing_rows_filled_from_data": not one(
                "SELECT count(*) FROM orders WHERE id <= %s"
                " AND created_day IS DISTINCT FROM (created_at AT TIME ZONE 'UTC')::date",
                (rows,),
            ),
            "row_count": count,
            "expected_row_count": rows + inserts,
            "rows_ok": 0 <= count - (rows + inserts) <= slack,
        }
        # each logged update added 1 to an amount and each insert brought 1
        initial = float(
            one("SELECT sum((g %% 50000) / 100.0) FROM generate_series(1, %s) g", (rows,))
        )
        gained = round(total - initial)
        checks["amount_gained"] = gained
        checks["expected_amount_gained"] = updates + inserts
        checks["no_lost_writes"] = 0 <= gained - (updates + inserts) <= 2 * slack
    checks["ok"] = all(v for k, v in checks.items() if isinstance(v, bool))
    return checks


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server: LocalServer | None = None
        self._made_basedir: Path | None = None
        self.pgbench = find_bindir(args.pg) / "pgbench"
        # pgbench's per-transaction logs go to a RAM disk: written on the server's disk,
        # they would be throttled with the server's writes (the kernel's dirty-page
        # limits) and stall the workload's clients, not the server
        shm = Path("/dev/shm")
        self.workdir = Path(
            tempfile.mkdtemp(prefix="lock-impact-", dir=shm if shm.is_dir() else None)
        )
        self.users = args.users or max(args.rows // 20, 100)
        for name, (text, _weight) in PGBENCH_SCRIPTS.items():
            (self.workdir / f"{name}.sql").write_text(text)

    def server_settings(self) -> dict[str, str]:
        """As production runs (default), or durability off (``--ram``)."""
        a = self.args
        settings = {"max_connections": "100", "log_min_messages": "warning"}
        if a.ram:
            return settings  # the embedded server's defaults: fsync, sync commit off
        # a quarter of the table (about 100 bytes a row with its indexes), at least 16MB
        shared = a.shared_buffers or f"{max(16, a.rows * 100 // 4 // 2**20)}MB"
        settings |= {
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "shared_buffers": shared,
            # a fresh cluster has no WAL segments to recycle: each new 16 MB segment is
            # zero-filled and synced while every commit waits (100-200 ms here, every few
            # seconds of heavy writing); a server in steady state recycles its segments
            "wal_init_zero": "on" if a.wal_init_zero else "off",
        }
        if a.warm_wal:  # keep (recycle) that much WAL at each checkpoint
            settings["min_wal_size"] = f"{a.warm_wal}MB"
            settings["max_wal_size"] = f"{max(2 * a.warm_wal, 1024)}MB"
        for item in a.server_sets:  # last word
            key, _, value = item.partition("=")
            settings[key.strip()] = value.strip()
        return settings

    def setup(self) -> None:
        a = self.args
        basedir = Path(a.basedir) if a.basedir else None
        if basedir is None and not a.ram:  # on disk, not in /dev/shm
            parent = Path(tempfile.mkdtemp(prefix="lock-impact-", dir="/var/tmp"))
            parent.chmod(0o755)  # the server's OS user (when we are root) must enter it
            self._made_basedir = parent
            basedir = parent / "pg"
        self.server = LocalServer(a.pg, basedir=basedir, settings=self.server_settings()).start()
        base = self.server.create_database("bench_base")
        t0 = time.monotonic()
        with psycopg.connect(base, autocommit=True) as conn:
            with psycopg.ClientCursor(conn) as cur:  # client-side binding: several statements
                cur.execute(SCHEMA_SQL, {"rows": self.args.rows, "users": self.users})
            conn.execute("VACUUM ANALYZE users, orders")
        print(f"built orders ({self.args.rows:,} rows) in {time.monotonic() - t0:.1f}s",
              file=sys.stderr)  # fmt: skip
        if a.warm_wal:
            self.warm_wal(base)

    def warm_wal(self, dsn: str) -> None:
        """Write ``--warm-wal`` MB of WAL (messages, no table) and checkpoint, so that the
        runs write their WAL into recycled segments, as a server in steady state does,
        instead of creating a file for every 16 MB."""
        t0 = time.monotonic()
        with psycopg.connect(dsn, autocommit=True) as conn:
            for _ in range(self.args.warm_wal):
                conn.execute("SELECT pg_logical_emit_message(false, 'w', repeat('x', 1048576))")
            conn.execute("CHECKPOINT")
            conn.execute("CHECKPOINT")
            row = conn.execute("SELECT count(*) FROM pg_ls_waldir()").fetchone()
        print(f"warmed the WAL: {row[0] if row else '?'} segments in"
              f" {time.monotonic() - t0:.1f}s", file=sys.stderr)  # fmt: skip

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self._made_basedir is not None:
            shutil.rmtree(self._made_basedir, ignore_errors=True)

    def _pgbench(self, dbname: str, prefix: str, rate: float | None) -> Pgbench:
        assert self.server is not None
        a = self.args
        argv = [
            str(self.pgbench), "-n", "-M", "prepared",
            "-c", str(a.clients), "-j", str(a.threads), "-T", "3600",
            "-D", f"rows={a.rows}", "-D", f"users={self.users}",
            "-l", f"--log-prefix={self.workdir / prefix}",
            "-h", "127.0.0.1", "-p", str(self.server.port), "-U", "postgres",
        ]  # fmt: skip
        for name, (_text, weight) in PGBENCH_SCRIPTS.items():
            argv += ["-f", f"{self.workdir / name}.sql@{weight}"]
        if rate:
            argv += ["--rate", str(rate)]
        argv.append(dbname)
        return Pgbench(argv)

    def run(
        self,
        contestant: str,
        scenario: str,
        mode: str,
        rate: float | None,
        round_: int = 1,
        filler_mb_s: float = 0.0,
    ) -> Run:
        assert self.server is not None
        a = self.args
        dbname = f"bench_{contestant}_{scenario}_{mode}"
        self.server.drop_database(dbname)
        dsn = self.server.create_database(dbname, template="bench_base")
        prefix = f"{dbname}.r{round_}.log"
        run = Run(contestant, scenario, mode, rate if mode == "open" else None, round_)
        run.filler_mb_s = filler_mb_s
        blocker: Blocker | None = None
        filler: WalFiller | None = None
        print(f"run {dbname} (round {round_}) ...", file=sys.stderr)
        if a.warm_wal:  # recycle the segments the last run wrote
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute("CHECKPOINT")
        t_launch = time.time()
        proc = self._pgbench(dbname, prefix, run.rate)
        watch = ServerWatch(dsn)
        watch.start()
        sampler = WaitSampler(dsn, a.sample_waits / 1000) if a.sample_waits else None
        if sampler is not None:
            sampler.start()
        probe = CommitProbe(dsn, a.commit_probe / 1000) if a.commit_probe else None
        if probe is not None:
            probe.start()
        waits: list[tuple[float, float]] = []  # (when, pgbench's CPU wait so far)
        try:
            time.sleep(1.0)  # the clients are connected: the baseline window opens
            waits.append((time.time(), proc.cpu_wait()))
            time.sleep(a.baseline - (2.0 if scenario == "blocker" else 1.0))
            if scenario == "blocker":
                run.blocker_seconds = a.blocker
                blocker = Blocker(dsn, a.blocker + 1.0)
                blocker.start()
                blocker.ready.wait(10)
                time.sleep(1.0)  # the blocker is an old transaction when the migration starts
            t_start = time.time()
            waits.append((t_start, proc.cpu_wait()))
            times = StepTimes()
            try:
                if contestant == CONTROL:
                    if filler_mb_s:
                        filler = WalFiller(dsn, filler_mb_s)
                        filler.start()
                    time.sleep(a.control_seconds)
                    run.finished, run.outcome = True, "no migration"
                    if filler is not None:  # (the finally stops it too, if this is not reached)
                        filler.stop()
                        run.filler_wrote_mb_s = round(filler.mb_s, 2)
                        run.outcome += f", {run.filler_wrote_mb_s:.1f} MB/s of WAL from a filler"
                else:
                    run.finished, run.outcome = migrate(contestant, dsn, a.sets, times)
            except (OnlineSchemaError, psycopg.Error) as exc:
                run.finished, run.outcome = False, f"failed: {str(exc).splitlines()[0]}"
            t_end = time.time()
            waits.append((t_end, proc.cpu_wait()))
            if blocker is not None:
                blocker.join()
            time.sleep(a.tail)
            t_stop = time.time()
            waits.append((t_stop, proc.cpu_wait()))
        finally:
            if filler is not None:
                filler.stop()
            watch.stop()
            if sampler is not None:
                sampler.stop()
            if probe is not None:
                probe.stop()
            proc.stop(dsn)
        txns = read_logs(self.workdir, prefix)
        run.migration_seconds = round(t_end - t_start, 3)
        for name, ((t0, w0), (t1, w1)) in zip(
            ("baseline", "during", "tail"), itertools.pairwise(waits), strict=False
        ):
            run.client_cpu_wait[name] = round((w1 - w0) / max(t1 - t0, 1e-9) * 1000, 1)
            run.wal_buffers_full[name] = round(watch.buffers_full(t0, t1) / max(t1 - t0, 1e-9), 1)
            if probe is not None:
                run.commit_probe[name] = probe.window(t0, t1)
        run.baseline = window_stats(txns, t_launch + 1.0, t_start)
        run.during = window_stats(txns, t_start, t_end)
        run.tail = window_stats(txns, t_end, t_stop)
        if run.baseline["tps"]:
            run.throughput_ratio = round(run.during["tps"] / run.baseline["tps"], 3)
        run.seconds = per_second(txns, t_start, t_end)
        run.backfill = times.backfill
        run.backfill["duty"] = [
            (ratio, duty, round(at - t_start, 2))
            for ratio, duty, at in run.backfill.get("duty", [])
        ]
        run.stalls = stalls(txns, t_start, t_end, times, watch, sampler, probe)
        run.vacuums = [
            (round(e["start"] - t_start, 1), round(e["end"] - t_start, 1))
            for e in times.events
            if e["kind"] == "vacuum"
        ]
        run.checkpoints = [
            (round(c0 - t_start, 1), round(c1 - t_start, 1)) for c0, c1 in watch.checkpoints
        ]
        for x in run.seconds:
            lo = t_start + x["t"]
            x["wal_mb"] = round(watch.wal_mb(lo, lo + 1.0), 1)
            x["checkpointing"] = any(lo <= t < lo + 1.0 for t in watch.checkpointing)
        for st in times.steps:  # which step the stalls happen in
            w = window_stats(txns, st["start"], st["end"] or t_end)
            run.steps.append(
                {
                    "step": st["step"],
                    "seconds": w["seconds"],
                    "longest_gap_ms": w["longest_gap_ms"],
                    "max_ms": w["max_ms"],
                }
            )
        whole = [x for x in run.seconds if x["t"] + 1.0 <= run.migration_seconds] or run.seconds
        if run.baseline["tps"] and whole:
            run.worst_second_ratio = round(min(x["tps"] for x in whole) / run.baseline["tps"], 3)
        if run.baseline["p99_ms"]:
            run.p99_ratio = round(run.during["p99_ms"] / run.baseline["p99_ms"], 2)
        run.load_average = round(os.getloadavg()[0], 2)
        run.slower_than_1s_total = sum(1 for t in txns if not t.failed and t.latency > SLOW)
        run.series = plot_series(txns, t_start, t_end, t_launch + 1.0, t_stop)
        if blocker is not None:
            run.series["blocker"] = (blocker.took - t_start, blocker.released - t_start)
        aborted = proc.errors()
        run.errors = sum(1 for t in txns if t.failed) + len(aborted)
        run.error_detail = aborted[:5]
        if blocker is not None and blocker.error is not None:
            run.error_detail.append(f"blocker: {blocker.error!r}")
        if probe is not None and probe.error is not None:
            run.error_detail.append(f"commit probe: {probe.error!r}")
            run.errors += 1
        if filler is not None and filler.error is not None:
            run.error_detail.append(f"filler: {filler.error!r}")
            run.errors += 1
        script_ids = {name: i for i, name in enumerate(PGBENCH_SCRIPTS)}
        updates = sum(1 for t in txns if not t.failed and t.script == script_ids["update"])
        inserts = sum(1 for t in txns if not t.failed and t.script == script_ids["insert"])
        if contestant == CONTROL:  # nothing migrated: nothing to check but the workload's
            run.correct = run.errors == 0
        elif run.finished:
            run.checks = check_table(dsn, a.rows, updates, inserts, slack=a.clients)
            run.correct = bool(run.checks["ok"])
        if not a.keep:
            self.server.drop_database(dbname)
            for path in self.workdir.glob(prefix + ".*"):
                path.unlink()
        print(
            f"  {contestant}/{scenario}/{mode}: migration {run.migration_seconds:.2f}s"
            f" ({run.outcome}), gap {run.during['longest_gap_ms']:.0f} ms,"
            f" max {run.during['max_ms']:.0f} ms, ratio {run.throughput_ratio:.2f}"
            f" (worst second {run.worst_second_ratio:.2f}), p99 x{run.p99_ratio:.1f},"
            f" load {run.load_average:.1f},"
            f" slow {run.slower_than_1s_total}, errors {run.errors}, correct {run.correct}",
            file=sys.stderr,
        )
        return run


# --- plots ----------------------------------------------------------------------------


def plot_series(
    txns: Sequence[Txn], t0: float, t_end: float, first: float, last: float, keep: int = 15000
) -> dict[str, Any]:
    """A sample of the transactions small enough to plot: every one slower than 20 ms and
    an even spread of the others; and completions per 0.25 s."""
    ok = [t for t in txns if not t.failed and first <= t.end <= last]
    slow = [t for t in ok if t.latency > 0.02]
    rest = [t for t in ok if t.latency <= 0.02]
    stride = max(len(rest) // max(keep - len(slow), 1), 1)
    sample = slow + rest[::stride]
    bins: dict[int, int] = {}
    for t in ok:
        b = int((t.end - t0) // 0.25)
        bins[b] = bins.get(b, 0) + 1
    lo, hi = int((first - t0) // 0.25), int((last - t0) // 0.25)
    return {
        "points": [(t.start - t0, t.latency) for t in sample],
        "tps": [(b * 0.25, bins.get(b, 0) / 0.25) for b in range(lo, hi)],
        "migration": (0.0, t_end - t0),
    }


def plot(runs: Sequence[Run], mode: str, path: Path) -> None:
    """One figure per mode: scenarios in rows, contestants in columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in runs if r.mode == mode and r.series]
    scenarios = [s for s in SCENARIOS if any(r.scenario == s for r in chosen)]
    contestants = [c for c in CONTESTANTS if any(r.contestant == c for r in chosen)]
    if not chosen:
        return
    top_tps = max((v for r in chosen for _, v in r.series["tps"]), default=1.0)
    fig, axes = plt.subplots(
        len(scenarios), len(contestants), figsize=(6 * len(contestants), 3.4 * len(scenarios)),
        sharex=True, sharey=True, squeeze=False,
    )  # fmt: skip
    for i, scenario in enumerate(scenarios):
        for j, contestant in enumerate(contestants):
            ax = axes[i][j]
            r = next(
                (x for x in chosen if x.scenario == scenario and x.contestant == contestant), None
            )
            if r is None:
                ax.set_visible(False)
                continue
            pts = r.series["points"]
            ax.scatter(
                [p[0] for p in pts], [max(p[1], 1e-4) * 1000 for p in pts],
                s=2, alpha=0.35, linewidths=0, color="#1f77b4", label="transaction latency",
            )  # fmt: skip
            lo, hi = r.series["migration"]
            ax.axvspan(lo, hi, color="orange", alpha=0.15, label="migration")
            if "blocker" in r.series:
                b0, b1 = r.series["blocker"]
                ax.axvspan(b0, b1, ymin=0, ymax=0.04, color="black", alpha=0.6,
                           label="blocker's transaction")  # fmt: skip
            ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            twin = ax.twinx()
            tps = r.series["tps"]
            twin.plot([t for t, _ in tps], [v for _, v in tps], color="#555555",
                      linewidth=0.8, alpha=0.7, label="throughput (tps)")  # fmt: skip
            twin.set_ylim(0, top_tps * 1.05)
            if j == len(contestants) - 1:
                twin.set_ylabel("tps")
            d = r.during
            ax.set_title(
                f"{contestant}, {'no blocker' if scenario == 'none' else 'blocker'}:"
                f" migration {r.migration_seconds:.1f} s, gap {d['longest_gap_ms']:.0f} ms,"
                f" max {d['max_ms']:.0f} ms",
                fontsize=9, loc="left",
            )  # fmt: skip
            if j == 0:
                ax.set_ylabel("latency (ms)")
            if i == len(scenarios) - 1:
                ax.set_xlabel("seconds since the migration started")
    handles: dict[str, Any] = {}
    for ax in fig.axes:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    fig.legend(list(handles.values()), list(handles), loc="lower center", ncols=len(handles),
               fontsize=8, markerscale=4)  # fmt: skip
    loop = "closed loop (saturating)" if mode == "closed" else "open loop (pgbench --rate)"
    fig.suptitle(f"Lock impact, {loop}: pgbench latency and throughput", fontsize=11)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- targets and report ---------------------------------------------------------------


def targets(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, checked on the onlineschema runs; with several rounds
    (``--repeat``), checked in each round: met when met in every round, and in how many."""
    rounds = sorted({r.get("round", 1) for r in runs})
    if len(rounds) == 1:
        return _targets(runs)
    merged: dict[str, dict[str, Any]] = {}
    for n in rounds:
        for t in _targets([r for r in runs if r.get("round", 1) == n]):
            m = merged.setdefault(
                t["target"], {"target": t["target"], "met": True, "rounds_met": 0, "values": []}
            )
            m["met"] = m["met"] and t["met"]
            m["rounds_met"] += 1 if t["met"] else 0
            m["values"].append(f"round {n}: {t['value']}")
    return [
        {"target": m["target"], "met": m["met"],
         "value": f"{m['rounds_met']}/{len(rounds)} rounds; " + "; ".join(m["values"])}
        for m in merged.values()
    ]  # fmt: skip


def _targets(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    ours = [r for r in runs if r["contestant"] == "onlineschema"]
    out = []

    def add(name: str, rs: list[dict[str, Any]], ok: bool, value: str) -> None:
        if rs:
            out.append({"target": name, "met": ok, "value": value})

    gaps = [r for r in ours if r["mode"] == "closed"]
    add(
        "longest workload gap < 0.05 s (closed loop, both scenarios)",
        gaps,
        all(r["during"]["longest_gap_ms"] < 50 for r in gaps),
        ", ".join(f"{r['scenario']}: {r['during']['longest_gap_ms']:.0f} ms" for r in gaps),
    )
    add(
        "p99 latency during the migration <= 3x the baseline's (closed loop)",
        gaps,
        all(r.get("p99_ratio", 99) <= 3 for r in gaps),
        ", ".join(f"{r['scenario']}: x{r.get('p99_ratio', 0):.1f}" for r in gaps),
    )
    blocked = [r for r in ours if r["scenario"] == "blocker"]
    add(
        "finishes with the blocker in the way, unattended",
        blocked,
        all(r["finished"] for r in blocked),
        ", ".join(f"{r['mode']}: {r['outcome']}" for r in blocked),
    )
    opened = [r for r in ours if r["mode"] == "open"]
    add(
        "no request over 1 s (open loop)",
        opened,
        all(r["slower_than_1s_total"] == 0 for r in opened),
        ", ".join(f"{r['scenario']}: {r['slower_than_1s_total']}" for r in opened),
    )
    unblocked = [r for r in gaps if r["scenario"] == "none"]
    add(
        "throughput during the migration >= 0.7 of baseline (closed loop, no reader)",
        unblocked,
        all(r["throughput_ratio"] >= 0.7 for r in unblocked),
        ", ".join(f"{r['scenario']}: {r['throughput_ratio']:.2f}" for r in unblocked),
    )
    add(
        "final table correct, no lost writes (every run, both contestants)",
        list(runs),
        all(r["correct"] for r in runs),
        f"{sum(1 for r in runs if r['correct'])}/{len(runs)} runs",
    )
    return out


def _server_mode(result: dict[str, Any]) -> str:
    st = result["server"]["settings"]
    warm = result["params"].get("warm_wal")
    return (
        f"fsync={st.get('fsync')}, synchronous_commit={st.get('synchronous_commit')},"
        f" wal_init_zero={st.get('wal_init_zero')},"
        + (f" min_wal_size={warm}MB (warmed)," if warm else "")
        + f" shared_buffers={st.get('shared_buffers')} (8kB pages),"
        f" {'RAM disk' if result['params'].get('ram') else 'on disk'}"
    )


def _median_worst(values: list[float], worst: Callable[..., float], fmt: str, x: str = "") -> str:
    return f"{x}{statistics.median(values):{fmt}} / {x}{worst(values):{fmt}}"


def who(r: Mapping[str, Any]) -> str:
    """The run's contestant, with a control run's filler (--control-wal)."""
    filler = r.get("filler_mb_s")
    return str(r["contestant"]) + (f" +{filler:g} MB/s WAL" if filler else "")


def summary(runs: Sequence[dict[str, Any]]) -> list[str]:
    """With several rounds: the median and the worst of each run's figures over them."""
    if len({r.get("round", 1) for r in runs}) < 2:
        return []
    lines = [
        "",
        "Over the rounds (median / worst):",
        "",
        "| mode | scenario | contestant | rounds | migration | tps ratio | worst 1 s |"
        " p99 (x base) | max | longest gap | > 1 s | correct |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    mw = _median_worst
    keys = dict.fromkeys((r["mode"], r["scenario"], who(r)) for r in runs)
    for mode, scenario, contestant in keys:
        rs = [r for r in runs if (r["mode"], r["scenario"], who(r)) == (mode, scenario, contestant)]
        lines.append(
            f"| {mode} | {scenario} | {contestant} | {len(rs)} |"
            f" {mw([r['migration_seconds'] for r in rs], max, '.1f')} s |"
            f" {mw([r['throughput_ratio'] for r in rs], min, '.2f')} |"
            f" {mw([r.get('worst_second_ratio', 0) for r in rs], min, '.2f')} |"
            f" {mw([r.get('p99_ratio', 0) for r in rs], max, '.1f', 'x')} |"
            f" {mw([r['during']['max_ms'] for r in rs], max, '.0f')} ms |"
            f" {mw([r['during']['longest_gap_ms'] for r in rs], max, '.0f')} ms |"
            f" {mw([r['slower_than_1s_total'] for r in rs], max, '.0f')} |"
            f" {sum(1 for r in rs if r['correct'])}/{len(rs)} |"
        )  # fmt: skip
    return lines


def markdown(result: dict[str, Any]) -> str:
    p = result["params"]
    lines = [
        f"{p['rows']:,} rows; {p['clients']} clients / {p['threads']} threads; baseline"
        f" {p['baseline']} s, tail {p['tail']} s; blocker {p['blocker']} s;"
        f" open-loop rate {result.get('open_rate') or '-'} tps;"
        f" PostgreSQL {result['server']['version']}; {result['machine']['cpus']} CPUs;"
        f" server: {_server_mode(result)}"
        + (f"; backfill settings: {' '.join(p['sets'])}" if p.get("sets") else "")
        + ".",
        "",
        "| round | mode | scenario | contestant | migration | finished | tps ratio | worst 1 s |"
        " p50 | p99 (x base) | max | longest gap (baseline's) | > 1 s | errors | correct | load |",
        "|---:|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in result["runs"]:
        d = r["during"]
        lines.append(
            f"| {r.get('round', 1)} | {r['mode']} | {r['scenario']} | {who(r)} |"
            f" {r['migration_seconds']:.2f} s | {'yes' if r['finished'] else 'no'} |"
            f" {r['throughput_ratio']:.2f} | {r.get('worst_second_ratio', 0):.2f} |"
            f" {d['p50_ms']:.1f} ms | {d['p99_ms']:.1f} ms (x{r.get('p99_ratio', 0):.1f}) |"
            f" {d['max_ms']:.0f} ms |"
            f" {d['longest_gap_ms']:.0f} ms ({r['baseline'].get('longest_gap_ms', 0):.0f} ms) |"
            f" {r['slower_than_1s_total']} | {r['errors']} | {'yes' if r['correct'] else 'NO'} |"
            f" {r.get('load_average', 0):.1f} |"
        )
    ours = [r for r in result["runs"] if r["contestant"] == "onlineschema" and r.get("seconds")]
    repeated = len({r.get("round", 1) for r in result["runs"]}) > 1

    def tag(r: dict[str, Any]) -> str:
        return f"{r['mode']}/{r['scenario']}" + (f" round {r.get('round', 1)}" if repeated else "")

    if ours:
        lines += [
            "",
            "Per second of the onlineschema migrations (tps / max latency ms / longest gap"
            " ms / MB of WAL written; * a checkpoint at work), baseline tps in brackets:",
            "",
        ]
        for r in ours:
            cells = " ".join(
                f"{x['tps']:.0f}/{x['max_ms']:.0f}/{x['gap_ms']:.0f}/{x.get('wal_mb', 0):.0f}"
                + ("*" if x.get("checkpointing") else "")
                for x in r["seconds"]
            )
            lines.append(f"- {tag(r)} [{r['baseline']['tps']:.0f}]: {cells}")
        lines += ["", "Per step (seconds / longest gap ms / max latency ms):", ""]
        for r in ours:
            cells = "; ".join(
                f"{x['step']} {x['seconds']:.2f}/{x['longest_gap_ms']:.0f}/{x['max_ms']:.0f}"
                for x in r.get("steps", [])
            )
            lines.append(f"- {tag(r)}: {cells}")
        lines += ["", "Backfill pacing (from its `backfill_done` event):", ""]
        for r in ours:
            b = r.get("backfill") or {}
            lines.append(
                f"- {tag(r)}: {b.get('batches', '?')} batches,"
                f" {b.get('waited_batches', '?')} waited on; busy {b.get('busy_seconds', '?')} s,"
                f" rested {b.get('rested_seconds', '?')} s,"
                f" throttled {b.get('throttled_seconds', '?')} s {b.get('throttled') or ''}"
                + (
                    f"; {b['wal_bytes'] / MB:.0f} MB of WAL across the batches, of the rest"
                    f" {b['wal_rested_seconds']:.1f} s for max_wal_rate"
                    if "wal_bytes" in b
                    else ""
                )
            )
        for key, title in (
            ("client_cpu_wait", "The workload's clients waiting for a CPU (pgbench's threads, ms a second"),
            ("wal_buffers_full", "WAL buffers found full (times a second"),
        ):  # fmt: skip
            if not all(key in r for r in ours):
                continue
            lines += ["", f"{title}: baseline / during / tail):", ""]
            for r in ours:
                w = r.get(key) or {}
                lines.append(
                    f"- {tag(r)}: {w.get('baseline', 0):.0f} / {w.get('during', 0):.0f}"
                    f" / {w.get('tail', 0):.0f}"
                )
        if all("vacuums" in r for r in ours):
            lines += [
                "",
                "The backfill's VACUUMs and the checkpoints that ended (seconds into the"
                " migration, started-ended); seconds with the checkpointer at work:",
                "",
            ]
            for r in ours:
                vac = ", ".join(f"{a:.1f}-{b:.1f}" for a, b in r.get("vacuums", []))
                ck = ", ".join(f"{a:.0f}-{b:.1f}" for a, b in r.get("checkpoints", []))
                busy = sum(1 for x in r["seconds"] if x.get("checkpointing"))
                watched = any("checkpointing" in x for x in r["seconds"])
                lines.append(
                    f"- {tag(r)}: VACUUM {vac or 'none'}; checkpoints {ck or 'none'}"
                    + (f"; checkpointer at work in {busy} of {len(r['seconds'])} seconds"
                       if watched else "")
                )  # fmt: skip
    # the control runs' stalls beside ours: what the machine does without a migration
    alone = [r for r in result["runs"] if r["contestant"] == CONTROL]
    probed = [r for r in alone + ours if r.get("commit_probe")]
    if probed:
        lines += [
            "",
            "A commit's wait for the WAL flush, as the commit probe saw it (a session"
            f" committing a few bytes of WAL every {result['params'].get('commit_probe', 0):g} ms;"
            " p50 / p99 / max ms), baseline; during; tail:",
            "",
        ]
        for r in probed:
            cells = "; ".join(
                f"{w['p50_ms']:.1f} / {w['p99_ms']:.1f} / {w['max_ms']:.1f}"
                for w in (r["commit_probe"].get(k) for k in ("baseline", "during", "tail"))
                if w
            )
            lines.append(f"- {who(r)} {tag(r)}: {cells}")
    if alone + ours and all("stalls" in r for r in alone + ours):  # (older results: none)
        lines += [
            "",
            f"Stalls of {STALL_MS:.0f} ms or more (seconds into the migration: the stretch"
            " with no transaction completing; the step; transactions in flight across it;"
            " the backfill's batches overlapping it, ms/rows/waiters; a VACUUM running;"
            " with --sample-waits, what the backends waited on across it; with"
            " --commit-probe, the probe's longest commit across it). Their rate"
            f" first; `{CONTROL}` is the workload alone:",
            "",
        ]
        for r in alone + ours:
            n, minutes = len(r["stalls"]), r["migration_seconds"] / 60
            wal = [x["wal_mb"] for x in r["seconds"] if "wal_mb" in x]
            lines.append(
                f"- {who(r)} {tag(r)}: {n} in {r['migration_seconds']:.0f} s"
                f" ({n / max(minutes, 1e-9):.2f} a minute)"
                + (f", {sum(wal) / len(wal):.1f} MB of WAL a second" if wal else "")
            )
        lines.append("")
        for r in alone + ours:
            stalled: list[str] = []
            for x in r.get("stalls", []):
                flight = ", ".join(f"{n} {k}" for k, n in x["in_flight"].items()) or "none"
                batch = " ".join(f"{b['ms']:.0f}/{b['rows']}/{b['waiters']}" for b in x["batches"])
                stalled.append(
                    f"{x['at']:.1f} s: {x['gap_ms']:.0f} ms, {x['step'] or '-'};"
                    f" in flight: {flight}; batches: {batch or 'none'}"
                    + ("; VACUUM" if x["vacuum"] else "")
                    + (
                        f"; WAL {x['wal_mb_before']:.0f} MB in the second before"
                        if "wal_mb_before" in x
                        else ""
                    )
                    + ("; checkpoint" if x.get("checkpoint") else "")
                    + (
                        f"; the probe's longest commit across it {x['probe_ms']:.0f} ms"
                        if x.get("probe_ms") is not None
                        else ""
                    )
                    + (
                        f"; waits ({x['samples']} samples): "
                        + ", ".join(f"{n} {k}" for k, n in list(x["waits"].items())[:6])
                        + "".join(f"; {k} {v:.0f}" for k, v in x["pressure"].items())
                        if x.get("samples")
                        else ""
                    )
                )
            lines.append(f"- {who(r)} {tag(r)}: " + (" | ".join(stalled) or "none"))
    lines += summary(result["runs"])
    lines += ["", "| target (onlineschema runs) | met | value |", "|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {'yes' if t['met'] else '**no**'} | {t['value']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=None, help="default: rows / 20")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--baseline", type=float, default=10.0, help="seconds before the migration")
    ap.add_argument("--tail", type=float, default=10.0, help="seconds after the migration")
    ap.add_argument("--blocker", type=float, default=15.0, help="seconds the blocker holds on")
    ap.add_argument(
        "--rate", type=float, default=None,
        help="open-loop rate in tps (default: half the closed-loop baseline throughput)",
    )  # fmt: skip
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument(
        "--contestants", default=",".join(CONTESTANTS),
        help=f"of {', '.join((*CONTESTANTS, CONTROL))} ({CONTROL}: the workload alone)",
    )  # fmt: skip
    ap.add_argument(
        "--control-seconds", type=float, default=120.0, metavar="S",
        help=f"how long the {CONTROL} run's workload runs alone (its 'migration')",
    )  # fmt: skip
    ap.add_argument(
        "--control-wal", default=[0.0], metavar="MB,...",
        type=lambda v: [float(x) for x in v.split(",")],
        help=f"a {CONTROL} run for each: a filler session writes that many MB of WAL a"
        " second beside the workload (0: none)",
    )  # fmt: skip
    ap.add_argument("--pg", type=int, default=18, help="server major version")
    ap.add_argument(
        "--basedir", default=None,
        help="server directory (default: a new one in /var/tmp; with --ram, in /dev/shm)",
    )  # fmt: skip
    ap.add_argument(
        "--ram", action="store_true",
        help="the old mode: a RAM disk, fsync and synchronous_commit off",
    )  # fmt: skip
    ap.add_argument(
        "--wal-init-zero", action="store_true",
        help="zero-fill new WAL segments (the server default; off by default here, see"
        " benchmarks/README.md)",
    )  # fmt: skip
    ap.add_argument(
        "--warm-wal", type=int, default=0, metavar="MB",
        help="write MB of WAL before the runs and keep that much (min_wal_size), with a"
        " checkpoint before each run: WAL goes into recycled segments, as in steady state",
    )  # fmt: skip
    ap.add_argument(
        "--shared-buffers", default=None, metavar="SIZE",
        help="server shared_buffers (default: a quarter of the table, e.g. 23MB at 1M rows)",
    )  # fmt: skip
    ap.add_argument(
        "--server-set", dest="server_sets", action="append", default=[], metavar="NAME=VALUE",
        help="a server setting (postgresql.conf), over the defaults above, e.g. wal_buffers=16MB",
    )  # fmt: skip
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
        help="a backfill setting for the onlineschema runs (as `onlineschema set`)",
    )  # fmt: skip
    ap.add_argument(
        "--sample-waits", type=float, default=0.0, metavar="MS",
        help="sample pg_stat_activity's wait events and /proc/pressure every MS ms, and"
        " report what the clients waited on across each stall (costs some CPU)",
    )  # fmt: skip
    ap.add_argument(
        "--commit-probe", type=float, default=0.0, metavar="MS",
        help="every MS ms a session commits a few bytes of WAL; report its commits' times"
        " (the WAL flush a write waits for) per window and across each stall",
    )  # fmt: skip
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "lock_impact.json"))
    ap.add_argument("--keep", action="store_true", help="keep databases and pgbench logs")
    ap.add_argument(
        "--plots", default=str(Path(__file__).parent.parent / "docs" / "img"),
        help="directory for lock_impact_closed.png and lock_impact_open.png ('' for none)",
    )  # fmt: skip
    ap.add_argument("--report", metavar="JSON", help="only print the Markdown table of a result")
    ap.add_argument(
        "--repeat", type=int, default=1, metavar="N",
        help="run every run N times (in rounds) and report the median and worst of each",
    )  # fmt: skip
    args = ap.parse_args(argv)
    unknown = set(args.contestants.split(",")) - {*CONTESTANTS, CONTROL}
    if unknown:
        ap.error(f"unknown contestant(s) {', '.join(sorted(unknown))}")
    if args.report:
        print(markdown(json.loads(Path(args.report).read_text())))
        return 0
    configure("console", "warning")
    bench = Bench(args)
    runs: list[Run] = []
    rate = args.rate
    try:
        bench.setup()
        assert bench.server is not None
        with psycopg.connect(bench.server.dsn(), autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            version = row[0] if row else "?"
            settings: dict[str, str] = dict(
                conn.execute(
                    "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                    (
                        [
                            "fsync",
                            "synchronous_commit",
                            "full_page_writes",
                            "wal_init_zero",
                            "min_wal_size",
                            "shared_buffers",
                            "wal_buffers",
                            "max_connections",
                            "data_directory",
                            *(i.partition("=")[0].strip() for i in args.server_sets),
                        ],
                    ),
                ).fetchall()
            )
        # rounds one after another, each with every run: a drift of the machine (the
        # disk's flush times, another process) then touches every run of a round alike
        for round_ in range(1, args.repeat + 1):
            for mode in args.modes.split(","):
                for scenario in args.scenarios.split(","):
                    for contestant in args.contestants.split(","):
                        if mode == "open" and rate is None:
                            closed = [r for r in runs if r.mode == "closed" and r.baseline]
                            rate = round(closed[0].baseline["tps"] * 0.5, -1) if closed else 500.0
                        for filler in args.control_wal if contestant == CONTROL else [0.0]:
                            runs.append(bench.run(contestant, scenario, mode, rate, round_, filler))
    finally:
        bench.close()
    result: dict[str, Any] = {
        "benchmark": "lock_impact",
        "command": "python benchmarks/lock_impact.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },
        "server": {"version": version, "settings": settings},
        "params": {
            k: getattr(args, k)
            for k in (
                "rows",
                "clients",
                "threads",
                "baseline",
                "tail",
                "blocker",
                "ram",
                "sets",
                "wal_init_zero",
                "warm_wal",
                "repeat",
                "control_seconds",
                "control_wal",
                "sample_waits",
                "commit_probe",
            )
        }
        | {"users": bench.users},
        "open_rate": rate,
        "migration_sql": MIGRATION_SQL,
        "runs": [{k: v for k, v in asdict(r).items() if k != "series"} for r in runs],
    }
    result["targets"] = targets(result["runs"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.plots:  # the first round's runs
        for mode in sorted({r.mode for r in runs}):
            plot(
                [r for r in runs if r.round == 1],
                mode,
                Path(args.plots) / f"lock_impact_{mode}.png",
            )
    print(markdown(result))
    print(f"\nresults: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
