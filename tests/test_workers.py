"""Parallel backfill workers (issue 3): chunks claimed from the state table, each worker
on its own connection; a dead worker's chunk is claimable again at once with nothing done
twice; a second process joins a running backfill with ``resume(name, workers=N)``; and the
fault test: worker processes killed with SIGKILL at 20 random moments of a non-idempotent
backfill, every row updated exactly once in the end.

Worker processes come from a ``multiprocessing`` "forkserver" (a clean single-threaded
process that forks each worker, so starting one costs milliseconds instead of a Python
start-up) and are killed with SIGKILL. Not plain "fork": threads left by earlier tests
(writers, workloads) may hold a lock at the moment of the fork and hang the child.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import subprocess
import sys
import threading
import time
from typing import Any

import psycopg
import pytest
from scenario_tools import wait_until
from structlog.testing import capture_logs

from onlineschema import (
    AddColumn,
    AddIndex,
    AlreadyRunning,
    Backfill,
    BackfillSettings,
    Executor,
    OnlineSchemaError,
    RetryPolicy,
    Settings,
)
from onlineschema.backfill.engine import CLAIM_LOCK_TIMEOUT, backfill_timeouts
from onlineschema.state import StateStore
from onlineschema.workers import Claims, split_blocks, split_keys, split_range

Conn = psycopg.Connection[Any]
ROWS = 3000
FORK = multiprocessing.get_context("forkserver")


def settings(**backfill: Any) -> Settings:
    base = dict(
        duty_cycle=1.0,
        max_replica_lag=0.0,
        control_interval=0.1,
        signal_interval=0.2,
        vacuum=False,
    )
    return Settings(
        retry=RetryPolicy(max_attempts=10, backoff_initial=0.01, backoff_max=0.1),
        backfill=BackfillSettings(**{**base, **backfill}),
    )


def one(conn: Conn, query: str, params: Any = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def make_range(conn: Conn, rows: int = ROWS) -> None:
    conn.execute("CREATE TABLE r (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0)")
    conn.execute("INSERT INTO r (id) SELECT g FROM generate_series(1, %s) g", (rows,))


def rows_done(conn: Conn, name: str) -> int:
    if one(conn, "SELECT to_regclass('onlineschema.chunks')") is None:
        return 0
    query = "SELECT coalesce(sum(rows_done), 0) FROM onlineschema.chunks WHERE migration = %s"
    return int(one(conn, query, (name,)))


def migration_state(conn: Conn, name: str) -> str | None:
    if one(conn, "SELECT to_regclass('onlineschema.migrations')") is None:
        return None
    row = conn.execute(
        "SELECT state FROM onlineschema.migrations WHERE name = %s", (name,)
    ).fetchone()
    return row[0] if row else None


def claimers(conn: Conn, name: str) -> set[int]:
    rows = conn.execute(
        "SELECT DISTINCT claimed_by FROM onlineschema.chunks WHERE migration = %s"
        " AND claimed_by IS NOT NULL",
        (name,),
    ).fetchall()
    return {r[0] for r in rows}


def exactly_once(conn: Conn, table: str = "r", rows: int = ROWS) -> None:
    got = conn.execute(f"SELECT n, count(*) FROM {table} GROUP BY n").fetchall()  # noqa: S608
    assert got == [(1, rows)], got


# --- splitting --------------------------------------------------------------------------------


def test_split_helpers_cover_the_range_without_overlap() -> None:
    assert split_range(1, 10, 3) == [(1, 3), (4, 6), (7, 10)]
    assert split_range(5, 6, 8) == [(5, 5), (6, 6)]
    pieces = split_range(-7, 1_000_003, 16)
    assert pieces[0][0] == -7 and pieces[-1][1] == 1_000_003
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(pieces))
    assert split_blocks(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert split_blocks(0, 4) == []
    sample = [[str(i)] for i in range(100)]
    keyed = split_keys(sample, ["99"], 4)
    assert keyed[0][0] is None and keyed[-1][1] == ["99"]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(keyed))
    assert split_keys([], ["x"], 4) == [(None, ["x"])]


# --- threads in one process -------------------------------------------------------------------


#: about one row in five costs 1 ms to update, so that a batch of 40 rows lasts ~10 ms
SOME_SLOW_ROWS = """
CREATE FUNCTION some_slow_rows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF random() < 0.2 THEN PERFORM pg_sleep(0.001); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER some_slow_rows BEFORE UPDATE ON r FOR EACH ROW EXECUTE FUNCTION some_slow_rows();
"""


class MostUpdatesAtOnce(threading.Thread):
    """Samples pg_stat_activity every 2 ms: the most batch UPDATEs of r active at once."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True, name="updates-at-once")
        self.dsn = dsn
        self.most = 0
        self.halt = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            while not self.halt.is_set():
                n = one(
                    c,
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                    " AND starts_with(application_name, 'onlineschema')"
                    ' AND starts_with(query, \'UPDATE "public"."r"\')',
                )
                self.most = max(self.most, int(n))
                time.sleep(0.002)


@pytest.mark.parametrize("strategy", ["range", "keyset", "ctid"])
def test_two_workers_each_row_once(dsn: str, conn: Conn, strategy: str) -> None:
    """Two workers fill the table together: both claim chunks, their batches run at the
    same time (two batch UPDATEs seen active at once), and every row is updated once."""
    if strategy == "range":
        make_range(conn)
        change: Any = Backfill("r", {"n": "n + 1"})
    elif strategy == "keyset":
        conn.execute("CREATE TABLE r (a text, b int, n int NOT NULL DEFAULT 0, PRIMARY KEY (a, b))")
        conn.execute(
            "INSERT INTO r (a, b) SELECT 'k' || (g %% 5), g FROM generate_series(1, %s) g",
            (ROWS,),
        )
        change = Backfill("r", {"n": "n + 1"})
    else:
        conn.execute("CREATE TABLE r (x int, n int NOT NULL DEFAULT 0)")
        conn.execute("INSERT INTO r (x) SELECT g FROM generate_series(1, %s) g", (ROWS,))
        change = AddColumn("r", "filled", "int", backfill="n + 1")
    conn.execute(SOME_SLOW_ROWS)
    sampler = MostUpdatesAtOnce(dsn)
    sampler.start()
    try:
        with Executor(dsn, settings(batch_initial=40, batch_max=40, sleep=0.002)) as ex:
            assert ex.apply([change], "two", workers=2).state == "completed"
    finally:
        sampler.halt.set()
        sampler.join(10)
    assert sampler.most == 2, (
        f"the two workers' batches never ran at the same time ({sampler.most})"
    )
    if strategy == "ctid":
        assert one(conn, "SELECT count(*) FROM r WHERE filled = 1") == ROWS
    else:
        exactly_once(conn)
    assert len(claimers(conn, "two")) == 2  # both workers claimed chunks
    b = conn.execute(
        "SELECT rows_done, workers, chunks, progress FROM onlineschema.backfills"
    ).fetchone()
    assert b is not None and (b[0], b[1], b[3]) == (ROWS, 2, 1.0)
    # 16 chunks; the ctid strategy cuts the table's 14 blocks into 14
    assert b[2] == (16 if strategy != "ctid" else 14)
    assert one(conn, "SELECT bool_and(done) FROM onlineschema.chunks") is True


def test_claims_are_exclusive_and_die_with_the_session(dsn: str, conn: Conn) -> None:
    """Two claimers never hold the same chunk; a chunk whose holder's session ends (a
    dead worker) is claimable again at once; a released chunk too."""
    make_range(conn)
    with Executor(dsn, settings(chunks=4)) as ex:
        ex.apply([Backfill("r", {"n": "n + 1"})], "claims")  # leaves 4 done chunks
        conn.execute("UPDATE onlineschema.chunks SET done = false")
        store = StateStore(ex.conn)
        step = one(conn, "SELECT step_id FROM onlineschema.chunks LIMIT 1")
        with (
            psycopg.connect(dsn, autocommit=True) as a,
            psycopg.connect(dsn, autocommit=True) as b,
        ):
            timeouts = backfill_timeouts(lock_timeout=CLAIM_LOCK_TIMEOUT)
            ca = Claims(a, store, "claims", step, timeouts=timeouts)
            cb = Claims(b, store, "claims", step, timeouts=timeouts)
            got_a = [ca.claim(), ca.claim()]
            got_b = [cb.claim(), cb.claim(), cb.claim()]
            assert [c.chunk for c in got_a if c] == [0, 1]
            assert [c.chunk for c in got_b if c] == [2, 3]
            assert got_b[2] is None
            cb.release(3)
            assert (cb.claim() or pytest.fail("released chunk not claimable")).chunk == 3
            conn.execute("SELECT pg_terminate_backend(%s)", (a.info.backend_pid,))
            wait_until(
                lambda: one(
                    conn,
                    "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = %s",
                    (a.info.backend_pid,),
                ),
                timeout=10,
                what="the terminated session to end",
            )
            again = [cb.claim(), cb.claim(), cb.claim()]
            assert sorted(c.chunk for c in again if c) == [0, 1]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_dead_workers_chunk_is_finished_by_another(dsn: str, conn: Conn, workers: int) -> None:
    """A session holding a chunk's claim (as a worker that is stuck, then dies) keeps
    that chunk from the others; the backfill does everything else, waits, and finishes
    the chunk as soon as that session is gone (with one worker, and with two, whose
    threads end while one worker of the process waits)."""
    make_range(conn)
    step_id = "backfill.public.r.n"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with Executor(dsn, settings(batch_initial=50, batch_max=50, chunks=4)) as ex:
                ex.apply([Backfill("r", {"n": "n + 1"})], "dead", workers=workers)
        except BaseException as exc:
            errors.append(exc)

    with psycopg.connect(dsn, autocommit=True) as holder:
        # hold chunk 2's claim before anybody: the advisory lock Claims takes
        holder.execute(
            "SELECT pg_advisory_lock(hashtext(%s), 2)",
            (f"onlineschema-chunk:onlineschema:dead:{step_id}",),
        )
        t = threading.Thread(target=run, daemon=True)
        t.start()
        wait_until(
            lambda: (
                one(
                    conn,
                    "SELECT count(*) FILTER (WHERE done) = 3 FROM onlineschema.chunks"
                    " WHERE migration = 'dead'",
                )
                if migration_state(conn, "dead")
                else False
            ),
            timeout=30,
            what="the other three chunks to be done",
        )
        time.sleep(0.5)
        assert one(conn, "SELECT count(*) FROM r WHERE n = 0") > 0  # chunk 2 waits
        assert migration_state(conn, "dead") == "running"
    # the stuck worker's session ended: its chunk is taken over
    t.join(30)
    assert not t.is_alive() and not errors, errors
    exactly_once(conn)
    assert one(conn, "SELECT step_id FROM onlineschema.chunks LIMIT 1") == step_id


def test_a_worker_killed_inside_a_batch_leaves_its_partly_done_chunk_to_another(
    dsn: str, conn: Conn
) -> None:
    """A real worker process commits some batches of a chunk and is killed with SIGKILL
    inside the next one (its UPDATE running, rows written, not committed): the chunk keeps
    exactly the committed batches; another process takes the chunk over from its cursor
    and every row is updated exactly once."""
    make_range(conn)
    conn.execute(SLOW_ROWS)
    name = "partly"
    report = FORK.Queue()
    child = fork(dsn, name, 1, report, batch_initial=50, batch_max=50, chunks=4)
    try:
        _, backend = report.get(timeout=30)

        def in_batch_of_a_started_chunk() -> tuple[int, int] | None:
            if one(conn, "SELECT to_regclass('onlineschema.chunks')") is None:
                return None
            row = conn.execute(
                "SELECT c.chunk, c.rows_done FROM onlineschema.chunks c"
                " WHERE c.migration = %s AND c.claimed_by = %s AND NOT c.done"
                " AND c.rows_done > 0",
                (name, backend),
            ).fetchone()
            if row is None or not one(conn, IN_BATCH, (backend,)):
                return None
            return int(row[0]), int(row[1])

        chunk, committed = wait_until(
            in_batch_of_a_started_chunk, timeout=30, what="the worker inside a batch of a chunk"
        )
        child.kill()
        child.join(10)
    finally:
        if child.is_alive():
            child.kill()
            child.join(10)
    wait_until(
        lambda: one(conn, "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = %s", (backend,)),
        timeout=30,
        what="the killed worker's session to end",
    )
    lo, hi, rows, done, claims = conn.execute(
        "SELECT lo::bigint, hi::bigint, rows_done, done, claims FROM onlineschema.chunks"
        " WHERE migration = %s AND chunk = %s",
        (name, chunk),
    ).fetchone() or pytest.fail("no chunk")
    updated = one(conn, "SELECT count(*) FROM r WHERE n = 1 AND id BETWEEN %s AND %s", (lo, hi))
    assert (rows, done, claims) == (committed, False, 1), (rows, done, claims, committed)
    assert updated == committed, f"{updated} rows of chunk {chunk} updated, {committed} recorded"
    assert 0 < committed < hi - lo + 1
    conn.execute("DROP TRIGGER slow_row ON r")
    with Executor(dsn, settings()) as ex:
        assert ex.resume(name).state == "completed"
        taker = ex.conn.info.backend_pid
    exactly_once(conn)
    after = conn.execute(
        "SELECT rows_done, done, claims, claimed_by FROM onlineschema.chunks"
        " WHERE migration = %s AND chunk = %s",
        (name, chunk),
    ).fetchone()
    assert after == (hi - lo + 1, True, 2, taker), after


# --- another process joins ----------------------------------------------------------------------


def _child(
    dsn: str,
    name: str,
    workers: int | None,
    backfill: dict[str, Any],
    report: Any = None,
) -> None:
    """Body of a forked worker process: run (or resume, or join) the backfill. With
    ``report`` (a multiprocessing queue), first put (os pid, backend pid) on it: with one
    worker, every batch of this process runs on that session."""
    import structlog

    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    code = 0
    try:
        with Executor(dsn, settings(**backfill)) as ex:
            if report is not None:
                report.put((os.getpid(), ex.conn.info.backend_pid))
            ex.backfill("r", {"n": "n + 1"}, name=name, workers=workers)
    except OnlineSchemaError as exc:
        code = exc.exit_code
    except BaseException:
        code = 1
    os._exit(code)


def fork(dsn: str, name: str, workers: int | None, report: Any = None, **backfill: Any) -> Any:
    p = FORK.Process(target=_child, args=(dsn, name, workers, backfill, report), daemon=True)
    p.start()
    return p


SLOW = dict(batch_initial=20, batch_max=20, sleep=0.02)


def test_second_process_joins_with_workers(dsn: str, conn: Conn) -> None:
    make_range(conn)
    primary = fork(dsn, "joined", 1, **SLOW)
    stop = threading.Event()

    def app() -> None:  # an application at work while the second process joins
        with psycopg.connect(dsn, autocommit=True, application_name="shop") as c:
            while not stop.is_set():
                c.execute("SELECT pg_sleep(0.01)")

    shop = threading.Thread(target=app, daemon=True)
    try:
        wait_until(lambda: rows_done(conn, "joined") > 0, timeout=30, what="the backfill")
        shop.start()
        with Executor(dsn, settings(**SLOW)) as ex:
            with pytest.raises(AlreadyRunning):  # without workers: refused
                ex.resume("joined")
            with capture_logs() as logs:
                result = ex.resume("joined", workers=2)  # returns when nothing is left
            assert result.steps_run == 0
        assert [e for e in logs if e["event"] == "backfill_joined"]
        # a joiner takes no baseline (up to 4 s before its first batch): the application's
        # latency it would measure now includes the backfill's, and the first process's
        # batches are the backfill's, not an application's
        baseline = [e for e in logs if e["event"] == "backfill_app_baseline"]
        assert not baseline, baseline
        primary.join(60)
        assert primary.exitcode == 0
    finally:
        stop.set()
        if shop.is_alive():
            shop.join(10)
        if primary.is_alive():
            primary.kill()
    exactly_once(conn)
    assert migration_state(conn, "joined") == "completed"
    assert len(claimers(conn, "joined")) >= 2


def test_joining_is_refused_outside_a_backfill(dsn: str, conn: Conn) -> None:
    """With workers, joining needs the running step to be a chunked backfill: another
    step (here an index build) is refused as running, exit code 2."""
    make_range(conn)
    changes = [AddIndex("r", ["n"], name="r_n")]
    with Executor(dsn, settings()) as ex:
        ex.store.ensure()
        plan = ex.plan(changes)
        ex.store.create(
            "indexing",
            changes=[c.to_dict() for c in changes],
            changes_hash="-",
            plan=plan.to_dict(),
            plan_hash=plan.hash,
            server_version=plan.server_version,
            step_ids=[(s.id, s.phase) for s in plan.steps],
        )
        ex.store.step_started("indexing", plan.steps[0].id)
        with psycopg.connect(dsn, autocommit=True) as other:
            assert StateStore(other).try_lock("indexing")  # "another process runs it"
            with pytest.raises(AlreadyRunning, match="not in a backfill") as caught:
                ex.resume("indexing", workers=2)
            assert caught.value.exit_code == 2


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onlineschema", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_workers(dsn: str, conn: Conn) -> None:
    """`onlineschema backfill --workers 2` runs two workers; `onlineschema resume NAME
    --workers N` joins a running backfill and exits 0 when no chunk is left; without
    --workers it is refused with exit 2."""
    make_range(conn, 10_000)
    done = cli("backfill", "--dsn", dsn, "--table", "r", "--set", "n = n + 1", "--name",
               "cli2", "--workers", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    exactly_once(conn, rows=10_000)
    assert len(claimers(conn, "cli2")) == 2
    primary = fork(dsn, "clijoin", 1, batch_initial=20, batch_max=20, sleep=0.05)
    try:
        wait_until(lambda: rows_done(conn, "clijoin") > 0, timeout=30, what="the backfill")
        refused = cli("resume", "--dsn", dsn, "clijoin")
        assert refused.returncode == 2, refused.stderr
        assert "another process" in refused.stderr
        joined = cli("resume", "--dsn", dsn, "clijoin", "--workers", "1")
        assert joined.returncode == 0, joined.stderr
        assert "joined its backfill" in joined.stdout
        primary.join(60)
        assert primary.exitcode == 0
    finally:
        if primary.is_alive():
            primary.kill()
    assert conn.execute("SELECT n, count(*) FROM r GROUP BY n").fetchall() == [(2, 10_000)]
    assert len(claimers(conn, "clijoin")) == 2


# --- the fault test ---------------------------------------------------------------------------------

FAULT_ROWS = 30_000

#: the session ``pid`` is inside a batch: it wrote in its open transaction (an xid) and
#: holds RowExclusiveLock on r (the batch's UPDATE, held until its COMMIT)
IN_BATCH = """
SELECT a.backend_xid IS NOT NULL AND EXISTS (
    SELECT FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'relation' AND l.granted
    AND l.relation = 'r'::regclass AND l.mode = 'RowExclusiveLock')
FROM pg_stat_activity a WHERE a.pid = %s
"""

#: 1 ms per row (20 ms per batch of 20 rows) so that batches, not the rests between
#: them, fill most of a worker's time; dropped after the kills
SLOW_ROWS = """
CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END $$;
CREATE TRIGGER slow_row BEFORE UPDATE ON r FOR EACH ROW EXECUTE FUNCTION slow_row();
"""


@pytest.mark.slow
@pytest.mark.version_independent
def test_sigkill_at_twenty_random_moments(dsn: str, conn: Conn) -> None:
    """Two worker processes (each joins whichever is running the migration) on a
    non-idempotent ``SET n = n + 1``; 20 times, one of them, chosen at random among those
    that have claimed a chunk, is killed with SIGKILL and a new one takes its place
    (resuming, or joining). Every other kill waits for the victim to be inside a batch;
    the others come at a random moment. Just before each kill the victim's session is
    sampled: at least 8 kills must have landed inside an open batch (rows written, not
    committed). At the end every row was updated exactly once and the chunks' counters
    agree."""
    make_range(conn, FAULT_ROWS)
    conn.execute(SLOW_ROWS)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    name = "fault"
    backfill = dict(batch_initial=20, batch_max=20, sleep=0.01, chunks=8)
    report = FORK.Queue()
    backends: dict[int, int] = {}  # os pid -> backend pid
    procs: list[Any] = []
    landed: list[bool] = []  # per kill: inside an open batch?
    t0 = time.monotonic()

    def claimed(p: Any) -> bool:
        while not report.empty():
            os_pid, backend = report.get_nowait()
            backends[os_pid] = backend
        backend = backends.get(p.pid)
        return backend is not None and backend in claimers(conn, name)

    def in_batch(p: Any) -> bool:
        return bool(one(conn, IN_BATCH, (backends[p.pid],)))

    try:
        while len(landed) < 20:
            procs = [p for p in procs if p.is_alive()]
            while len(procs) < 2:
                procs.append(fork(dsn, name, 1, report, **backfill))
            kill = len(landed) + 1
            before = rows_done(conn, name)
            wait_until(
                lambda b=before: rows_done(conn, name) > b,  # type: ignore[misc]
                timeout=30,
                what=f"progress before kill {kill} (seed {seed})",
            )
            candidates = wait_until(
                lambda live=procs: [p for p in live if p.is_alive() and claimed(p)],  # type: ignore[misc]
                timeout=30,
                what=f"a worker that has claimed a chunk, before kill {kill} (seed {seed})",
            )
            victim = rng.choice(candidates)
            if kill % 2:  # at a random moment
                time.sleep(rng.uniform(0.0, 0.2))
            else:  # while it is in a batch (or, if it never is within 5 s, anyway)
                deadline = time.monotonic() + 5
                while not in_batch(victim) and time.monotonic() < deadline:
                    time.sleep(0.002)
            landed.append(in_batch(victim))
            victim.kill()
            victim.join(10)
            procs.remove(victim)
            assert migration_state(conn, name) != "completed", (
                f"the backfill finished after {kill} kills: make it longer (seed {seed})"
            )
        conn.execute("DROP TRIGGER slow_row ON r")  # the rest may go fast
        for p in procs:
            p.join(120)
            assert p.exitcode in (0, 2), p.exitcode  # done, or refused while starting
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(10)
    hits = sum(landed)
    print(
        f"20 kills in {time.monotonic() - t0:.1f}s, {hits} inside an open batch"
        f" (random moments: {sum(landed[0::2])}/10) (seed {seed})"
    )
    assert hits >= 8, f"only {hits} of 20 kills landed inside an open batch: {landed}"
    with Executor(dsn, settings()) as ex:
        if migration_state(conn, name) != "completed":
            ex.resume(name)
        assert ex.status(name)[0]["state"] == "completed"
    exactly_once(conn, rows=FAULT_ROWS)
    assert rows_done(conn, name) == FAULT_ROWS
    claims = one(conn, "SELECT sum(claims) FROM onlineschema.chunks WHERE migration = %s", (name,))
    assert claims > 8  # chunks were taken over after their workers died
