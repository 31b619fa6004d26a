"""The backfill engine (issue 3): strategies and their query plans, batch sizing, splits on
statement timeouts, exactly-once updates, bounded work, progress in the state table, the
periodic VACUUM, the standalone ``onlineschema.backfill`` and live control (pause, set,
resume) of a backfill running in another process.

Tables are small (a few thousand rows); slowness, where a test needs it, comes from a
function that sleeps per row, never from big tables.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from scenario_tools import wait_until
from structlog.testing import capture_logs

import onlineschema
from onlineschema import (
    AddColumn,
    Backfill,
    BackfillSettings,
    Executor,
    LockBudgetExhausted,
    Paused,
    RetryPolicy,
    Settings,
    StepFailed,
)
from onlineschema.backfill import BackfillRunner
from onlineschema.backfill.engine import CLAIM_LOCK_TIMEOUT, backfill_timeouts
from onlineschema.plan import Step
from onlineschema.state import StateStore

Conn = psycopg.Connection[Any]

ROWS = 3000
#: quiet defaults for tests: no rest between batches, signals that need a standby off
QUIET = dict(duty_cycle=1.0, max_replica_lag=0.0, control_interval=0.0, signal_interval=0.1)


def settings(**backfill: Any) -> Settings:
    return Settings(
        retry=RetryPolicy(max_attempts=5, backoff_initial=0.01, backoff_max=0.05),
        backfill=BackfillSettings(**{**QUIET, **backfill}),
    )


def one(conn: Conn, query: str, params: Any = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def make_range(conn: Conn, rows: int = ROWS, gap: int = 1) -> None:
    """``r(id bigint PK, n int)``; ``gap`` spreads the ids out (sparse keys)."""
    conn.execute("CREATE TABLE r (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0, note text)")
    conn.execute(
        "INSERT INTO r (id) SELECT g::bigint * %s FROM generate_series(1, %s) g", (gap, rows)
    )


def make_keyset(conn: Conn, rows: int = ROWS) -> None:
    """``k(a text, b int, n int)`` with a composite, partly text key."""
    conn.execute(
        "CREATE TABLE k (a text, b int, n int NOT NULL DEFAULT 0, note text, PRIMARY KEY (a, b))"
    )
    conn.execute(
        "INSERT INTO k (a, b) SELECT 'g' || (g %% 7), g FROM generate_series(1, %s) g", (rows,)
    )


def make_keyless(conn: Conn, rows: int = ROWS) -> None:
    """``c(x int, n int)``: no key at all (the ctid strategy)."""
    conn.execute("CREATE TABLE c (x int, n int NOT NULL DEFAULT 0)")
    conn.execute("INSERT INTO c (x) SELECT g FROM generate_series(1, %s) g", (rows,))


def make_slow_inc(conn: Conn, ms: float = 2.0) -> None:
    """``slow_inc(n)``: ``n + 1`` after sleeping ``ms`` milliseconds (per row)."""
    conn.execute(
        sql.SQL(
            "CREATE FUNCTION slow_inc(int) RETURNS int LANGUAGE sql VOLATILE"
            " AS $$ SELECT pg_sleep({}); SELECT $1 + 1 $$"
        ).format(sql.Literal(ms / 1000))
    )


def backfill_row(conn: Conn, name: str) -> dict[str, Any]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM onlineschema.backfills WHERE migration = %s", (name,))
        row = cur.fetchone()
    assert row is not None
    return row


def chunk_rows(conn: Conn, name: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT chunk, done, rows_done, claimed_by FROM onlineschema.chunks"
        " WHERE migration = %s ORDER BY chunk",
        (name,),
    ).fetchall()


class Observer:
    """An executor observer that only cares about backfill progress."""

    def step_started(self, *args: Any) -> None:
        pass

    def step_finished(self, *args: Any) -> None:
        pass

    def backfill_progress(self, *args: Any) -> None:
        pass


def batch_sizes(logs: list[dict[str, Any]]) -> list[int]:
    return [e["next_batch_size"] for e in logs if e["event"] == "backfill_batch"]


# --- strategies and their query plans ------------------------------------------------------


@contextlib.contextmanager
def prepared_runner(dsn: str, step: Step, name: str, **backfill: Any) -> Iterator[BackfillRunner]:
    """A runner for ``step`` with its state created (chunks cut) but no batch run."""
    with Executor(dsn) as ex:
        ex.store.ensure()
        ex.store.create(
            name,
            changes=[],
            changes_hash="-",
            plan={},
            plan_hash="-",
            server_version=0,
            step_ids=[(step.id, step.phase)],
        )
        runner = BackfillRunner.for_step(
            ex.conn,
            ex.store,
            name,
            step,
            Settings(lock_timeout=0.5, backfill=BackfillSettings(**backfill)),
        )
        runner.prepare()
        yield runner


@pytest.mark.server_independent
def test_backfill_timeouts_render_what_each_transaction_starts_with() -> None:
    """The one function behind the backfill's timeouts renders, byte for byte, what a
    batch, a chunk claim and the cut at start have always sent."""
    assert backfill_timeouts(
        lock_timeout="500ms", statement_timeout="10000ms", seqscan=False
    ).as_string(None) == (
        "SELECT set_config('lock_timeout', '500ms', true),"
        " set_config('statement_timeout', '10000ms', true),"
        " set_config('enable_seqscan', 'off', true)"
    )
    assert backfill_timeouts(lock_timeout=CLAIM_LOCK_TIMEOUT).as_string(None) == (
        "SELECT set_config('lock_timeout', '2s', true)"
    )
    assert backfill_timeouts(statement_timeout="0").as_string(None) == (
        "SELECT set_config('statement_timeout', '0', true)"
    )


def test_runner_for_a_step_takes_the_executors_settings(dsn: str, conn: Conn) -> None:
    """``BackfillRunner.for_step`` (what the executor calls for a backfill step and to
    join one) runs the step's backfill under the executor's lock_timeout, retry policy
    and backfill settings, with the workers and join mode asked for."""
    make_range(conn, 10)
    step = backfill_step(dsn, Backfill("r", {"n": "n + 1"}))
    policy = RetryPolicy(max_attempts=7)
    s = Settings(
        lock_timeout=1.25, retry=policy, backfill=BackfillSettings(batch_statement_timeout=3.5)
    )
    with Executor(dsn) as ex:
        runner = BackfillRunner.for_step(ex.conn, ex.store, "m", step, s, workers=3, join=True)
        assert (runner.step_id, runner.spec.table, runner.spec.strategy) == (step.id, "r", "range")
        assert runner.settings is s.backfill and runner.batcher.retry is policy
        assert (runner.workers, runner.join) == (3, True)
        assert runner.batch_locals().as_string(ex.conn) == (
            "SELECT set_config('lock_timeout', '1250ms', true),"
            " set_config('statement_timeout', '3500ms', true),"
            " set_config('enable_seqscan', 'off', true),"
            " set_config('synchronous_commit', 'off', true)"
        )


def plan_nodes(plan: dict[str, Any]) -> list[str]:
    out = [plan["Node Type"]]
    for child in plan.get("Plans", []):
        out += plan_nodes(child)
    return out


INDEXED = {"Index Scan", "Index Only Scan", "Bitmap Index Scan", "Tid Range Scan"}


def backfill_step(dsn: str, change: Any) -> Step:
    with Executor(dsn) as ex:
        (step,) = [s for s in ex.plan([change]).steps if s.action == "backfill"]
    return step


@pytest.mark.parametrize("strategy", ["range", "keyset", "ctid"])
def test_batch_query_reads_through_the_index_at_every_size(
    dsn: str, conn: Conn, strategy: str
) -> None:
    """The UPDATE each strategy builds uses the key's index or a TID range scan, never a
    sequential scan, for batches from tiny to larger than the table, in the first chunk
    and in a middle one (keyset: with a lower bound), with fresh statistics."""
    if strategy == "range":
        make_range(conn, 5000)
        step = backfill_step(dsn, Backfill("r", {"n": "n + 1"}, where="note IS NULL"))
    elif strategy == "keyset":
        make_keyset(conn, 5000)
        step = backfill_step(dsn, Backfill("k", {"n": "n + 1"}))
    else:
        make_keyless(conn, 5000)
        step = backfill_step(dsn, AddColumn("c", "filled", "text", backfill="x::text"))
        conn.execute("ALTER TABLE c ADD COLUMN filled text")  # what the expand step does
    assert step.details["strategy"] == strategy
    conn.execute("ANALYZE")
    with prepared_runner(dsn, step, f"explain_{strategy}") as runner:
        chunks = runner.chunks()
        assert len(chunks) >= 8
        for chunk in (chunks[0], chunks[len(chunks) // 2]):
            for size in (10, 500, 5_000, 200_000):
                plan = runner.explain_batch(size, chunk)
                nodes = plan_nodes(plan)
                assert "Seq Scan" not in nodes, (strategy, size, nodes)
                assert INDEXED & set(nodes), (strategy, size, nodes)
        # nothing was written by explaining
        assert one(conn, "SELECT sum(rows_done) FROM onlineschema.chunks") == 0


@pytest.mark.parametrize("strategy", ["range", "sparse_range", "keyset", "ctid"])
def test_every_row_updated_exactly_once(dsn: str, conn: Conn, strategy: str) -> None:
    """A non-idempotent SET (n = n + 1) touches each row once, whatever the strategy; the
    chunks are all done and their counts add up."""
    if strategy in ("range", "sparse_range"):
        # sparse: ids a million apart, so key ranges must be sized by key density
        make_range(conn, gap=1 if strategy == "range" else 1_000_000)
        change: Any = Backfill("r", {"n": "n + 1"})
        table = "r"
    elif strategy == "keyset":
        make_keyset(conn)
        change, table = Backfill("k", {"n": "n + 1"}), "k"
    else:
        make_keyless(conn)
        change, table = AddColumn("c", "filled", "int", backfill="n + x"), "c"
    name = f"once_{strategy}"
    with Executor(dsn, settings(batch_initial=50, batch_max=400)) as ex:
        assert ex.apply([change], name).state == "completed"
    if strategy == "ctid":
        assert one(conn, "SELECT count(*) FROM c WHERE filled IS DISTINCT FROM x") == 0
    else:
        got = conn.execute(f"SELECT n, count(*) FROM {table} GROUP BY n").fetchall()  # noqa: S608
        assert got == [(1, ROWS)]
    chunks = chunk_rows(conn, name)
    assert chunks and all(done for _, done, _, _ in chunks)
    assert sum(r for _, _, r, _ in chunks) == ROWS
    b = backfill_row(conn, name)
    assert b["rows_done"] == ROWS and b["progress"] == 1.0


@pytest.mark.parametrize("table", ["r", "k"])
def test_empty_table_and_nothing_to_do(dsn: str, conn: Conn, table: str) -> None:
    """An empty table (no chunks at all) and a WHERE that matches nothing both finish
    at once, with their progress complete."""
    make_range(conn, 0)
    make_keyset(conn, 0)
    with Executor(dsn, settings()) as ex:
        assert ex.apply([Backfill(table, {"n": "n + 1"})], "empty").state == "completed"
    b = backfill_row(conn, "empty")
    assert (b["rows_done"], b["chunks"], b["progress"], b["eta_seconds"]) == (0, 0, 1.0, 0.0)
    conn.execute("INSERT INTO r (id) SELECT generate_series(1, 100)")
    with Executor(dsn, settings()) as ex:
        change = Backfill("r", {"n": "n + 1"}, where="id < 0")
        assert ex.apply([change], "no_match").state == "completed"
    assert backfill_row(conn, "no_match")["rows_done"] == 0
    assert one(conn, "SELECT max(n) FROM r") == 0


def test_rows_added_after_the_start_are_left_to_the_default(dsn: str, conn: Conn) -> None:
    """The work is bounded to the rows that existed at start: rows inserted while the
    backfill runs (beyond the frozen end) are not touched."""
    make_range(conn)

    class InsertDuring(Observer):
        done = False

        def backfill_progress(self, *args: Any) -> None:
            if not self.done:
                self.done = True
                with psycopg.connect(dsn, autocommit=True) as other:
                    other.execute(
                        "INSERT INTO r (id, n) SELECT g, 100 FROM generate_series(%s::int, %s::int) g",
                        (ROWS + 1, ROWS + 500),
                    )

    observer = InsertDuring()
    with Executor(dsn, settings(batch_initial=50, batch_max=50), observer=observer) as ex:
        ex.apply([Backfill("r", {"n": "n + 1"})], "bounded")
    assert observer.done
    assert conn.execute("SELECT n, count(*) FROM r GROUP BY n ORDER BY n").fetchall() == [
        (1, ROWS),
        (100, 500),
    ]


# --- batch sizing ---------------------------------------------------------------------------


def test_batch_size_follows_the_target_time(dsn: str, conn: Conn) -> None:
    """Each row takes at least 1 ms, so a batch of more than 25 rows takes longer than a
    25 ms target: starting from 400, the batch must shrink to at most 50 rows (it may
    only grow after a batch under the target, i.e. of fewer than 25 rows)."""
    make_range(conn, 1200)
    make_slow_inc(conn, 1.0)
    with (
        capture_logs() as logs,
        Executor(dsn, settings(batch_target=0.025, batch_initial=400, batch_min=5, chunks=1)) as ex,
    ):
        ex.apply([Backfill("r", {"n": "slow_inc(n)"})], "target")
    sizes = batch_sizes(logs)
    assert sizes[0] == 200  # 400 rows took >= 0.4 s: halved (the most it shrinks at once)
    assert len(sizes) > 8 and all(s <= 50 for s in sizes[5:]), sizes
    assert one(conn, "SELECT count(*) FROM r WHERE n <> 1") == 0


def test_batch_size_stays_within_bounds(dsn: str, conn: Conn) -> None:
    """Fast batches grow the size, but never past batch_max."""
    make_range(conn)
    with (
        capture_logs() as logs,
        Executor(dsn, settings(batch_initial=20, batch_max=300, chunks=2)) as ex,
    ):
        ex.apply([Backfill("r", {"n": "n + 1"})], "bounds")
    sizes = batch_sizes(logs)
    assert max(sizes) == 300 and min(sizes) >= 10, sizes


def test_statement_timeout_splits_the_batch(dsn: str, conn: Conn) -> None:
    """A batch that hits batch_statement_timeout is rolled back and split in four, not
    retried as is; the rows still end up updated exactly once."""
    make_range(conn, 400)
    make_slow_inc(conn, 2.0)
    with (
        capture_logs() as logs,
        Executor(
            dsn,
            settings(
                batch_initial=400,
                batch_min=5,
                batch_target=0.05,
                batch_statement_timeout=0.15,
                chunks=1,
            ),
        ) as ex,
    ):
        ex.apply([Backfill("r", {"n": "slow_inc(n)"})], "split")
    splits = [e["new_batch_size"] for e in logs if e["event"] == "backfill_batch_split"]
    assert splits and splits[0] == 100, splits  # 400 rows take >= 0.8 s > 0.15 s
    assert conn.execute("SELECT n, count(*) FROM r GROUP BY n").fetchall() == [(1, 400)]


def test_batch_still_too_slow_at_the_minimum_fails_cleanly(dsn: str, conn: Conn) -> None:
    make_range(conn, 200)
    make_slow_inc(conn, 5.0)
    with Executor(
        dsn,
        settings(batch_initial=40, batch_min=20, batch_statement_timeout=0.02, chunks=1),
    ) as ex:
        with pytest.raises(StepFailed, match="still ran past its statement timeout"):
            ex.apply([Backfill("r", {"n": "slow_inc(n)"})], "too_slow")
        assert ex.status("too_slow")[0]["state"] == "failed"
    assert one(conn, "SELECT count(*) FROM r WHERE n <> 0") == 0  # nothing half-done


# --- locks ------------------------------------------------------------------------------------


def test_lock_timeouts_are_retried(dsn: str, conn: Conn) -> None:
    """A batch that meets a row locked by another transaction waits lock_timeout, rolls
    back and is retried with backoff until the lock is gone."""
    make_range(conn)
    holder = psycopg.connect(dsn)
    holder.execute("SELECT * FROM r WHERE id = 10 FOR UPDATE")
    timer = threading.Timer(1.0, holder.rollback)
    timer.start()
    s = replace(
        settings(),
        lock_timeout=0.1,
        retry=RetryPolicy(max_attempts=100, backoff_initial=0.05, backoff_max=0.1),
    )
    try:
        with capture_logs() as logs, Executor(dsn, s) as ex:
            assert ex.apply([Backfill("r", {"n": "n + 1"})], "retried").state == "completed"
    finally:
        timer.join()
        holder.close()
    retries = [e for e in logs if e["event"] == "backfill_batch_retry"]
    assert retries and retries[0]["error"] == "LockNotAvailable"
    assert conn.execute("SELECT n, count(*) FROM r GROUP BY n").fetchall() == [(1, ROWS)]


def test_lock_budget_spent_leaves_it_paused_and_resumable(dsn: str, conn: Conn) -> None:
    make_range(conn)
    s = replace(
        settings(),
        lock_timeout=0.05,
        retry=RetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.02),
    )
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT * FROM r WHERE id = 2000 FOR UPDATE")
        with Executor(dsn, s) as ex:
            with pytest.raises(LockBudgetExhausted) as caught:
                ex.apply([Backfill("r", {"n": "n + 1"})], "budget")
            assert caught.value.exit_code == 3
            assert ex.status("budget")[0]["state"] == "paused"
        holder.rollback()
    assert 0 < one(conn, "SELECT count(*) FROM r WHERE n = 1") < ROWS
    with Executor(dsn, settings()) as ex:
        assert ex.resume("budget").state == "completed"
    assert conn.execute("SELECT n, count(*) FROM r GROUP BY n").fetchall() == [(1, ROWS)]


# --- progress -------------------------------------------------------------------------------


def test_progress_in_the_state_table(dsn: str, conn: Conn) -> None:
    """rows done, estimated total, rows/s and ETA measured on wall time (throttled and
    resting time included), throttle reason; status() shows them."""
    make_range(conn)
    conn.execute("ANALYZE r")
    seen: list[tuple[Any, ...]] = []

    class Watch(Observer):
        def backfill_progress(self, *args: Any) -> None:
            seen.append(args)

    with Executor(
        dsn,
        settings(batch_initial=100, batch_max=100, duty_cycle=0.5),
        observer=Watch(),
    ) as ex:
        ex.apply([Backfill("r", {"n": "n + 1"})], "progress")
        status = ex.status("progress")[0]
    b = backfill_row(conn, "progress")
    assert b["rows_done"] == ROWS
    assert b["rows_total"] == ROWS  # from reltuples
    assert b["progress"] == 1.0 and b["eta_seconds"] == 0.0
    assert b["workers"] == 1 and b["chunks"] == 16
    assert b["active_seconds"] > b["busy_seconds"] > 0  # duty cycle 0.5: half resting
    # the rate is per second of wall time: rows / active seconds of this run
    assert b["rows_per_second"] == pytest.approx(ROWS / b["active_seconds"], rel=0.05)
    assert b["throttle_reason"] is None
    step = status["steps"][0]["backfill"]
    assert step["rows_done"] == ROWS and step["progress"] == 1.0
    assert step["eta_seconds"] == 0.0 and step["rows_per_second"] > 0
    # the observer saw rows going up, with the estimated total
    assert [a[1] for a in seen] == sorted(a[1] for a in seen)
    assert seen[-1][1] == ROWS and seen[-1][2] == ROWS


# --- table health ---------------------------------------------------------------------------


def test_plain_vacuum_every_n_rows(dsn: str, conn: Conn) -> None:
    """The table is vacuumed (plain VACUUM, outside any transaction, on a connection of its
    own) every vacuum_every rows, so the space of updated rows is reused."""
    make_range(conn)
    with (
        capture_logs() as logs,
        Executor(
            dsn, settings(vacuum_every=500, batch_initial=100, batch_max=100, sleep=0.02)
        ) as ex,
    ):
        ex.apply([Backfill("r", {"n": "n + 1"})], "vacuumed")
    vacuums = [e for e in logs if e["event"] == "backfill_vacuum"]
    assert vacuums, [e["event"] for e in logs]
    assert one(conn, "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'r'") >= 1
    assert conn.execute("SELECT n, count(*) FROM r GROUP BY n").fetchall() == [(1, ROWS)]


def test_the_vacuum_never_truncates_the_table(dsn: str, conn: Conn) -> None:
    """Cutting empty pages off a table's end takes an ACCESS EXCLUSIVE lock (reads wait
    too), taken without lock_timeout and held while the truncation's WAL is flushed: the
    backfill's VACUUM leaves them to autovacuum. Here the table has no index (the ctid
    strategy, where a VACUUM empties pages entirely), its second half is deleted, and the
    batches update in place (fillfactor 50), so a truncating VACUUM would shrink it."""
    conn.execute("CREATE TABLE h (i int) WITH (fillfactor = 50, autovacuum_enabled = false)")
    conn.execute("INSERT INTO h (i) SELECT g FROM generate_series(1, 6000) g")
    conn.execute("DELETE FROM h WHERE i > 3000")
    pages = one(conn, "SELECT pg_relation_size('h') / 8192")
    s = settings(vacuum_every=500, batch_initial=100, batch_max=100, sleep=0.02)
    with capture_logs() as logs, Executor(dsn, s) as ex:
        ex.apply([AddColumn("h", "filled", "int", backfill="i")], "vacuumed")
    assert [e for e in logs if e["event"] == "backfill_vacuum"], [e["event"] for e in logs]
    assert one(conn, "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'h'") >= 1
    assert one(conn, "SELECT pg_relation_size('h') / 8192") == pages
    assert one(conn, "SELECT count(*) FROM h WHERE filled IS DISTINCT FROM i") == 0


def test_no_vacuum_starts_for_the_last_stretch(dsn: str, conn: Conn) -> None:
    """A VACUUM frees space for the batches after it: none starts when vacuum_every rows
    or fewer are left (here 500 of 3000; the coordinator looks every 0.2 s and the last
    500 rows take about half a second)."""
    make_range(conn)
    s = settings(vacuum_every=500, batch_initial=100, batch_max=100, sleep=0.1)
    with capture_logs() as logs, Executor(dsn, s) as ex:
        ex.apply([Backfill("r", {"n": "n + 1"})], "vacuumed")
    started = [e["rows_done"] for e in logs if e["event"] == "backfill_vacuum"]
    assert len(started) >= 2, started
    assert max(started) < ROWS - 500, started
    assert conn.execute("SELECT n, count(*) FROM r GROUP BY n").fetchall() == [(1, ROWS)]


def test_a_vacuum_still_running_at_the_end_is_cancelled(dsn: str, conn: Conn) -> None:
    """The backfill does not wait for its VACUUM at the end (no batch is left to reuse
    what it frees): here every VACUUM crawls (the database's vacuum_cost_delay, which the
    VACUUM's new connection takes), and the one the backfill started is cancelled when
    the last batch is done, and said so."""
    make_range(conn)
    dbname = conninfo_to_dict(dsn)["dbname"]
    assert isinstance(dbname, str)
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET vacuum_cost_delay = '100ms'").format(sql.Identifier(dbname))
    )
    conn.execute(
        sql.SQL("ALTER DATABASE {} SET vacuum_cost_limit = 1").format(sql.Identifier(dbname))
    )
    s = settings(vacuum_every=100, batch_initial=100, batch_max=100, sleep=0.02)
    with capture_logs() as logs, Executor(dsn, s) as ex:
        ex.apply([Backfill("r", {"n": "n + 1"})], "crawl")
    ended = [e for e in logs if e["event"].startswith("backfill_vacuum")]
    assert [e["event"] for e in ended] == ["backfill_vacuum_cancelled"], ended
    assert ended[0]["why"] == "the backfill ended"
    assert (
        one(conn, "SELECT count(*) FROM pg_stat_progress_vacuum WHERE relid = 'r'::regclass") == 0
    )
    assert conn.execute("SELECT n, count(*) FROM r GROUP BY n").fetchall() == [(1, ROWS)]


def test_vacuum_off(dsn: str, conn: Conn) -> None:
    make_range(conn)
    with capture_logs() as logs, Executor(dsn, settings(vacuum=False, vacuum_every=100)) as ex:
        ex.apply([Backfill("r", {"n": "n + 1"})], "no_vacuum")
    assert not [e for e in logs if e["event"].startswith("backfill_vacuum")]


# --- standalone use --------------------------------------------------------------------------


def test_standalone_backfill(dsn: str, conn: Conn) -> None:
    """onlineschema.backfill(conn, table, set=..., where=..., name=...) is a migration of
    its own: state, status, and running it again does nothing more."""
    make_range(conn)
    result = onlineschema.backfill(
        conn, "r", {"n": "n + 1", "note": "'even'"}, where="id % 2 = 0", name="evens",
        settings=settings(),
    )  # fmt: skip
    assert result.state == "completed"
    rows = conn.execute("SELECT id % 2, n, note, count(*) FROM r GROUP BY 1, 2, 3").fetchall()
    assert sorted(rows) == [(0, 1, "even", ROWS // 2), (1, 0, None, ROWS // 2)]
    with Executor(dsn) as ex:
        status = ex.status("evens")[0]
        assert status["state"] == "completed"
        assert status["steps"][0]["backfill"]["rows_done"] == ROWS // 2
        again = ex.backfill("r", {"n": "n + 1", "note": "'even'"}, where="id % 2 = 0", name="evens")
    assert again.state == "completed"
    assert one(conn, "SELECT max(n) FROM r") == 1


def test_standalone_backfill_refuses_bad_input(dsn: str, conn: Conn) -> None:
    make_range(conn)
    with pytest.raises(onlineschema.Refused, match="nope"):
        onlineschema.backfill(dsn, "r", {"nope": "1"})
    with pytest.raises(onlineschema.Refused):
        onlineschema.backfill(dsn, "r", {"n": "n +"})
    assert one(conn, "SELECT max(n) FROM r") == 0


# --- live control from another process --------------------------------------------------------

RUNNER = """
import json, sys
import structlog
from onlineschema import BackfillSettings, Executor, OnlineSchemaError, RetryPolicy, Settings
spec = json.loads(sys.argv[1])
structlog.configure(
    processors=[structlog.processors.JSONRenderer(default=str)],
    logger_factory=structlog.PrintLoggerFactory(sys.stderr),
)
settings = Settings(backfill=BackfillSettings(**spec["backfill"]))
try:
    with Executor(spec["dsn"], settings) as ex:
        r = ex.backfill(spec["table"], spec["set"], name=spec["name"], workers=spec.get("workers"))
except OnlineSchemaError as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    sys.exit(exc.exit_code)
print(json.dumps({"state": r.state}))
"""


def spawn_backfill(
    dsn: str, name: str, workers: int | None = None, **backfill: Any
) -> subprocess.Popen[str]:
    spec = {
        "dsn": dsn,
        "table": "r",
        "set": {"n": "n + 1"},
        "name": name,
        "workers": workers,
        "backfill": {**QUIET, **backfill},
    }
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def rows_done(conn: Conn, name: str) -> int:
    """Rows the backfill ``name`` has committed (0 before it started)."""
    if one(conn, "SELECT to_regclass('onlineschema.chunks')") is None:
        return 0
    query = "SELECT coalesce(sum(rows_done), 0) FROM onlineschema.chunks WHERE migration = %s"
    return int(one(conn, query, (name,)))


def test_pause_set_and_resume_from_another_process(dsn: str, conn: Conn) -> None:
    """A backfill running in another process picks up `set` (batch_max) and `pause`
    within a few seconds of them being written to the state table; it exits 3, paused,
    and `resume` finishes it, every row updated once."""
    make_range(conn)
    proc = spawn_backfill(
        dsn, "remote", batch_initial=20, batch_max=20, sleep=0.02, control_interval=0.2
    )
    try:
        wait_until(lambda: rows_done(conn, "remote") > 0, timeout=30, what="the backfill to start")
        with Executor(dsn) as ex:
            ex.set("remote", {"batch_max": 12})
            wait_until(
                lambda: backfill_row(conn, "remote")["batch_size"] == 12,
                timeout=10,
                what="the running backfill to use batch_max=12",
            )
            before = rows_done(conn, "remote")
            ex.pause("remote")
            out, err = proc.communicate(timeout=15)
            assert proc.returncode == 3, (out, err)
            assert "Paused" in out
            status = ex.status("remote")[0]
            assert status["state"] == "paused"
            stopped_at = rows_done(conn, "remote")
            assert before < stopped_at < ROWS
            # what the table says agrees with the state: each row done once, no more
            assert one(conn, "SELECT count(*) FROM r WHERE n = 1") == stopped_at
            assert one(conn, "SELECT max(n) FROM r") == 1
            ex.set("remote", {"batch_max": 1000, "sleep": 0})
            assert ex.resume("remote").state == "completed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert conn.execute("SELECT n, count(*) FROM r GROUP BY n").fetchall() == [(1, ROWS)]


def test_pause_between_batches_in_process(dsn: str, conn: Conn) -> None:
    """Executor.pause from another connection stops an in-process backfill at the next
    batch (Paused, exit code 3), resumable."""
    make_range(conn)

    class PauseAfterFirst(Observer):
        def backfill_progress(self, *args: Any) -> None:
            with Executor(dsn) as other:
                other.pause("paused_here")

    with Executor(dsn, settings(batch_initial=50, batch_max=50), observer=PauseAfterFirst()) as ex:
        with pytest.raises(Paused) as caught:
            ex.apply([Backfill("r", {"n": "n + 1"})], "paused_here")
        assert caught.value.exit_code == 3
    assert one(conn, "SELECT count(*) FROM r WHERE n = 1") == 50
    with Executor(dsn, settings()) as ex:
        assert ex.resume("paused_here").state == "completed"
    assert conn.execute("SELECT n, count(*) FROM r GROUP BY n").fetchall() == [(1, ROWS)]


def test_settings_validation(dsn: str, conn: Conn) -> None:
    make_range(conn, 10)
    with Executor(dsn, settings()) as ex:
        ex.apply([Backfill("r", {"n": "n + 1"})], "validated")
        with pytest.raises(onlineschema.Refused, match="unknown setting"):
            ex.set("validated", {"batch_maxx": 5})
        with pytest.raises(onlineschema.Refused, match="on_unreadable_signal"):
            ex.set("validated", {"on_unreadable_signal": "maybe"})
        ex.set("validated", {"max_replica_lag_bytes": "64MB", "duty_cycle": "0.3"})
        ctl = StateStore(ex.conn).control("validated")
    assert BackfillSettings().with_overrides(ctl["settings"]).max_replica_lag_bytes == 64 << 20
