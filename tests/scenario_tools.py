"""Helpers for the scenario tests (concurrency, crash, squawk): live sessions around a
migration, and migration processes that can be killed at a chosen moment.

* ``Writer``: a thread writing to a table in a loop on its own connection, recording how
  long each statement took, so a test can say how long the application was blocked.
* ``Blocker``: a session that opens a transaction, takes a lock (or a snapshot) and sits
  idle in it until released, by the test or by a timer.
* ``MigrationProcess``: ``python -m onlineschema ...`` in a subprocess, killed with
  SIGKILL once a condition holds in the database.
* ``wait_until``: poll with a deadline instead of sleeping and hoping.

Everything waits with a deadline and fails with a message saying what it waited for.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psycopg

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

#: application_name of the executor's connection (onlineschema.connection); its helper
#: connections (backfill workers, vacuum) are named "onlineschema-..."
EXECUTOR_APP = "onlineschema"


def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float,
    what: str,
    interval: float = 0.02,
) -> Any:
    """Call ``condition`` until it returns something truthy; return that. Fails the test
    (AssertionError naming ``what``) when ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def query_value(dsn: str, query: str, params: Sequence[Any] = ()) -> Any:
    """First column of the first row of ``query`` (None when there is no row)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


# --- the application: a writer -------------------------------------------------------


@dataclass
class Sample:
    started: float  # time.monotonic() when the statement was sent
    seconds: float  # how long it took
    kind: str  # "insert" or "update"


class Writer(threading.Thread):
    """Inserts and updates rows of ``table`` in a loop, each statement in its own
    transaction, and records the latency of each.

    ``insert_sql`` and ``update_sql`` take one named parameter, ``%(i)s``, a counter. A statement error
    stops the loop and is re-raised by ``stop()``.
    """

    def __init__(
        self,
        dsn: str,
        insert_sql: str,
        update_sql: str,
        *,
        pause: float = 0.005,
        statement_timeout: str = "60s",
    ) -> None:
        super().__init__(name="writer", daemon=True)
        self.dsn = dsn
        self.insert_sql = insert_sql
        self.update_sql = update_sql
        self.pause = pause
        self.statement_timeout = statement_timeout
        self.samples: list[Sample] = []
        self.error: BaseException | None = None
        self.pid: int | None = None
        self._halt = threading.Event()
        self._ready = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            with psycopg.connect(
                self.dsn, autocommit=True, application_name="scenario-writer"
            ) as conn:
                conn.execute(
                    "SELECT set_config('statement_timeout', %s, false)", (self.statement_timeout,)
                )
                self.pid = conn.info.backend_pid
                self._ready.set()
                i = 0
                while not self._halt.is_set():
                    i += 1
                    for kind, stmt in (("insert", self.insert_sql), ("update", self.update_sql)):
                        t0 = time.monotonic()
                        conn.execute(stmt, {"i": i})
                        with self._lock:
                            self.samples.append(Sample(t0, time.monotonic() - t0, kind))
                    time.sleep(self.pause)
        except BaseException as exc:  # reported by stop()
            self.error = exc
            self._ready.set()

    def start_writing(self, timeout: float = 30.0) -> Writer:
        self.start()
        if not self._ready.wait(timeout):
            raise AssertionError("the writer did not connect in time")
        if self.error:
            raise self.error
        return self

    def stop(self, timeout: float = 90.0) -> None:
        self._halt.set()
        self.join(timeout)
        if self.is_alive():
            raise AssertionError("the writer did not stop (a statement is still blocked)")
        if self.error is not None:
            raise AssertionError(f"the writer failed: {self.error!r}") from self.error

    def count(self) -> int:
        with self._lock:
            return len(self.samples)

    def wait_for_samples(self, n: int, timeout: float = 30.0) -> None:
        start = self.count()
        wait_until(
            lambda: self.count() >= start + n or self.error,
            timeout=timeout,
            what=f"{n} more statements from the writer",
        )
        if self.error:
            raise AssertionError(f"the writer failed: {self.error!r}") from self.error

    def max_latency(self, start: float, end: float) -> float:
        """Longest statement that was running at some point in [start, end]."""
        with self._lock:
            window = [
                s.seconds
                for s in self.samples
                if s.started <= end and s.started + s.seconds >= start
            ]
        if not window:
            raise AssertionError("the writer ran no statement in the window")
        return max(window)

    def statements_in(self, start: float, end: float) -> int:
        with self._lock:
            return sum(1 for s in self.samples if start <= s.started <= end)


# --- a long transaction --------------------------------------------------------------


class Blocker:
    """A session idle in an open transaction: ``Blocker(dsn, "SELECT 1 FROM t LIMIT 1")``
    holds ACCESS SHARE on ``t`` (and a snapshot with ``isolation="repeatable read"``)
    until ``release()``, or until ``hold_for`` seconds after ``start()``."""

    def __init__(
        self,
        dsn: str,
        statement: str,
        *,
        isolation: str = "read committed",
        application_name: str = "scenario-blocker",
    ) -> None:
        self.dsn = dsn
        self.statement = statement
        self.isolation = isolation
        self.application_name = application_name
        self.conn: psycopg.Connection[Any] | None = None
        self.pid: int | None = None
        self.started_at: float | None = None
        self.released_at: float | None = None
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    def start(self, hold_for: float | None = None) -> Blocker:
        conn = psycopg.connect(self.dsn, autocommit=True, application_name=self.application_name)
        self.conn = conn
        self.pid = conn.info.backend_pid
        conn.execute(f"BEGIN ISOLATION LEVEL {self.isolation.upper()}")
        conn.execute(self.statement)
        self.started_at = time.monotonic()
        if hold_for is not None:
            self._timer = threading.Timer(hold_for, self.release)
            self._timer.daemon = True
            self._timer.start()
        return self

    def release(self) -> None:
        with self._lock:
            if self.conn is None:
                return
            conn, self.conn = self.conn, None
            try:
                conn.execute("ROLLBACK")
            finally:
                conn.close()
                self.released_at = time.monotonic()

    def wait_until_older_than(self, seconds: float, timeout: float = 10) -> None:
        """Wait until the blocker's transaction is more than ``seconds`` old (a long
        transaction to the lock guard, not one about to end by itself)."""
        wait_until(
            lambda: (
                query_value(
                    self.dsn,
                    "SELECT extract(epoch FROM now() - xact_start) FROM pg_stat_activity"
                    " WHERE pid = %s",
                    (self.pid,),
                )
                or 0
            )
            > seconds,
            timeout=timeout,
            what=f"the blocker's transaction to be older than {seconds}s",
        )

    @property
    def held_for(self) -> float:
        assert self.started_at is not None and self.released_at is not None
        return self.released_at - self.started_at

    def __enter__(self) -> Blocker:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.release()


# --- a migration in another process --------------------------------------------------


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "onlineschema", *args]


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines of stderr (other lines are skipped)."""
        out = []
        for line in self.stderr.splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def event_names(self) -> list[str]:
        return [str(e.get("event")) for e in self.events()]


@dataclass
class MigrationProcess:
    """A migration run in a subprocess; stdout and stderr go to temporary files."""

    argv: list[str]
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    _files: list[Any] = field(default_factory=list)
    killed: bool = False
    #: how it ended, once kill_when saw it end
    finished: Finished | None = None

    #: every process started, so that a fixture can kill what a failed test left running
    started: ClassVar[list[MigrationProcess]] = []

    def start(self) -> MigrationProcess:
        MigrationProcess.started.append(self)
        out = tempfile.TemporaryFile()
        err = tempfile.TemporaryFile()
        self._files = [out, err]
        env = dict(os.environ)
        env.update(self.env or {})
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=ROOT, env=env
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        assert self.proc is not None
        return self.proc.poll() is None

    def output(self) -> tuple[str, str]:
        texts = []
        for f in self._files:
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
        return texts[0], texts[1]

    def kill_when(
        self,
        condition: Callable[[], Any],
        *,
        timeout: float,
        what: str,
        interval: float = 0.01,
        signum: int = signal.SIGKILL,
    ) -> Any:
        """Poll ``condition``; as soon as it holds, send the process ``signum`` (SIGKILL;
        SIGINT is Ctrl-C), wait for it to end and return the condition's value. Fails if
        the process ends first, or on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                os.kill(self.pid, signum)
                self.killed = True
                self.finished = self.wait(timeout=30)
                return value
            if not self.running():
                rc = self.wait(timeout=5)
                raise AssertionError(
                    f"the migration process ended (exit {rc.returncode}) before {what}\n"
                    f"stdout:\n{rc.stdout}\nstderr:\n{rc.stderr[-4000:]}"
                )
            if time.monotonic() > deadline:
                self.terminate()
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(interval)

    def wait(self, timeout: float) -> Finished:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.terminate()
            out, err = self.output()
            raise AssertionError(
                f"the migration process did not end within {timeout}s\nstderr:\n{err[-4000:]}"
            ) from None
        out, err = self.output()
        self.close()
        return Finished(rc, out, err)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.close()

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    @classmethod
    def kill_leftovers(cls) -> None:
        """SIGKILL the processes still running (a test failed before waiting for them)."""
        while cls.started:
            cls.started.pop().terminate()


def executor_backends(dsn: str) -> list[int]:
    """Pids of the sessions of executors (any process, helper connections included) in
    the database of ``dsn``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND (application_name = %s OR starts_with(application_name, %s))"
            " AND pid <> pg_backend_pid()",
            (EXECUTOR_APP, EXECUTOR_APP + "-"),
        ).fetchall()
    return [r[0] for r in rows]


def wait_backends_gone(dsn: str, pids: Sequence[int], timeout: float = 60.0) -> None:
    """Wait until the server has ended the sessions ``pids`` (a killed client's backend
    lives on until it next talks to the client, e.g. after its current statement)."""
    if not pids:
        return

    def gone() -> bool:
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (list(pids),)
            ).fetchone()
        return row is not None and row[0] == 0

    wait_until(gone, timeout=timeout, what=f"the killed migration's sessions {list(pids)} to end")


def backfill_progress(dsn: str, migration: str) -> int | None:
    """Rows the migration's backfill has committed, None before it started: the sum of
    its chunks' ``rows_done`` in ``onlineschema.chunks``, which each batch advances in
    its own transaction (``onlineschema.backfills`` holds a summary written now and
    then, for ``status``)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('onlineschema.chunks') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return None
        row = conn.execute(
            "SELECT sum(rows_done), count(*) FROM onlineschema.chunks WHERE migration = %s",
            (migration,),
        ).fetchone()
    return int(row[0]) if row and row[1] else None


def migration_state(dsn: str, migration: str) -> str | None:
    return query_value(  # type: ignore[no-any-return]
        dsn, "SELECT state FROM onlineschema.migrations WHERE name = %s", (migration,)
    )


def invalid_index(dsn: str, index: str) -> bool:
    """Does index ``index`` exist with ``pg_index.indisvalid = false``?"""
    return bool(
        query_value(
            dsn,
            "SELECT NOT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname = %s",
            (index,),
        )
    )


# --- who blocks whom: sampled from the server --------------------------------------------

_BLOCKERS_SQL = """
SELECT b.pid, b.application_name,
       EXISTS (SELECT FROM pg_locks w WHERE w.pid = b.pid AND NOT w.granted) AS waiting
FROM unnest(pg_blocking_pids(%(victim)s)) AS p(pid)
JOIN pg_stat_activity b ON b.pid = p.pid
"""

#: the longest current wait for a lock of an executor session (any process), and of the
#: victim, seconds
_WAITS_SQL = """
SELECT coalesce(max(extract(epoch FROM clock_timestamp() - l.waitstart)), 0)::float8
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE NOT l.granted AND a.datname = current_database()
  AND (a.application_name = %(app)s OR starts_with(a.application_name, %(app)s || '-'))
UNION ALL
SELECT coalesce(max(extract(epoch FROM clock_timestamp() - l.waitstart)), 0)::float8
FROM pg_locks l WHERE NOT l.granted AND l.pid = %(victim)s
"""


@dataclass
class BlockSample:
    at: float  # time.monotonic() when sampled
    #: (pid, application_name, itself waiting for a lock) of each session blocking the victim
    blockers: list[tuple[int, str, bool]]
    #: how long an executor session has been waiting for a lock at this moment (0: none)
    executor_wait: float
    #: how long the victim has been waiting for a lock at this moment (0: not waiting)
    victim_wait: float

    def executor_blocks(self, *, waiting: bool | None = None) -> bool:
        """Is an executor session (application_name onlineschema...) among the blockers
        (with ``waiting``: one that itself waits for a lock / holds it)?"""
        return any(
            app == EXECUTOR_APP or app.startswith(EXECUTOR_APP + "-")
            for _, app, w in self.blockers
            if waiting is None or w == waiting
        )


class BlockSampler(threading.Thread):
    """Every ``interval`` seconds, asks the server which sessions block ``victim_pid``
    (``pg_blocking_pids``: holders of a conflicting lock, and sessions queued ahead of it
    for one) and how long an executor session, and the victim, have been waiting for a
    lock (``pg_locks.waitstart``). Server-side facts, not client latencies: they hold on a
    loaded machine. ``with BlockSampler(dsn, pid) as s: ...`` then ``s.samples``."""

    def __init__(self, dsn: str, victim_pid: int, *, interval: float = 0.02) -> None:
        super().__init__(name="block-sampler", daemon=True)
        self.dsn = dsn
        self.victim_pid = victim_pid
        self.interval = interval
        self.samples: list[BlockSample] = []
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        try:
            with psycopg.connect(
                self.dsn, autocommit=True, application_name="scenario-sampler"
            ) as conn:
                while not self._halt.is_set():
                    now = time.monotonic()
                    rows = conn.execute(_BLOCKERS_SQL, {"victim": self.victim_pid}).fetchall()
                    waits = conn.execute(
                        _WAITS_SQL, {"app": EXECUTOR_APP, "victim": self.victim_pid}
                    ).fetchall()
                    sample = BlockSample(
                        now,
                        [(r[0], r[1] or "", r[2]) for r in rows],
                        float(waits[0][0]),
                        float(waits[1][0]),
                    )
                    with self._lock:
                        self.samples.append(sample)
                    self._halt.wait(self.interval)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def between(self, start: float, end: float) -> list[BlockSample]:
        with self._lock:
            return [s for s in self.samples if start <= s.at <= end]

    def stop(self) -> None:
        self._halt.set()
        self.join(30)
        if self.is_alive():
            raise AssertionError("the block sampler did not stop")
        if self.error is not None:
            raise AssertionError(f"the block sampler failed: {self.error!r}") from self.error

    def __enter__(self) -> BlockSampler:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
