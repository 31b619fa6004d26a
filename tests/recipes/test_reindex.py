"""The reindex recipe: REINDEX INDEX CONCURRENTLY of an existing index, resumable, its
refusals before any DDL, its SQL input and its golden plans."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from golden.cases import golden_ids
from golden.compare import check
from harness import Conn
from helpers import index_must_exist, invalid_indexes, migration_state
from scenario_tools import Blocker
from structlog.testing import capture_logs

from onlineschema import (
    Executor,
    LockBudgetExhausted,
    PreflightError,
    Reindex,
    RetryPolicy,
    Settings,
    StepFailed,
    UnsupportedStatement,
)
from onlineschema.executor.script import render_script
from onlineschema.sqlinput import parse_sql

#: a short lock budget, so that a blocked rebuild gives up quickly (the rebuild's own
#: waits run under index_lock_timeout)
SHORT = Settings(
    lock_timeout=0.2,
    index_lock_timeout=0.2,
    retry=RetryPolicy(max_attempts=2, max_wait=2, backoff_initial=0.01, backoff_max=0.05),
)


def oid(conn: Conn, index: str) -> Any:
    row = conn.execute("SELECT to_regclass(%s)::oid", [index]).fetchone()
    assert row is not None
    return row[0]


def writer_in_a_transaction(dsn: str) -> psycopg.Connection[Any]:
    """An open transaction that has written to orders: a concurrent rebuild waits for it
    after creating ``<index>_ccnew``, until its lock timeout. Returns it (still open)."""
    blocker = psycopg.connect(dsn)
    blocker.execute("UPDATE orders SET n = n WHERE id = 1")
    return blocker


def test_reindex_rebuilds_the_index_concurrently(dsn: str, orders: Conn) -> None:
    orders.execute("CREATE INDEX orders_note_idx ON orders (note)")
    before = oid(orders, "orders_note_idx")
    change = [Reindex("orders_note_idx")]
    with Executor(dsn) as ex:
        (step,) = ex.plan(change).steps
        assert (step.phase, step.transactional, step.lock, step.scans) == (
            "validate",
            False,
            "ShareUpdateExclusiveLock",
            True,
        )
        assert ex.apply(change, "reindex").state == "completed"
    assert oid(orders, "orders_note_idx") != before  # a new index took its place
    index_must_exist(orders, "orders_note_idx", valid=True)
    assert invalid_indexes(orders, "orders") == []
    assert oid(orders, "orders_note_idx_ccnew") is None


def test_an_interrupted_rebuild_is_finished_by_resume(dsn: str, orders: Conn) -> None:
    orders.execute("CREATE INDEX orders_note_idx ON orders (note)")
    before = oid(orders, "orders_note_idx")
    blocker = writer_in_a_transaction(dsn)
    try:
        with Executor(dsn, SHORT) as ex, pytest.raises((LockBudgetExhausted, StepFailed)):
            ex.apply([Reindex("orders_note_idx")], "reindex")
        # PostgreSQL left the half-built copy behind, invalid
        assert invalid_indexes(orders, "orders") == ["orders_note_idx_ccnew"]
    finally:
        blocker.rollback()
        blocker.close()
    assert migration_state(orders, "reindex") != "completed"
    with Executor(dsn, SHORT) as ex:
        assert ex.resume("reindex").state == "completed"
    assert invalid_indexes(orders, "orders") == []
    assert oid(orders, "orders_note_idx_ccnew") is None
    assert oid(orders, "orders_note_idx") != before
    index_must_exist(orders, "orders_note_idx", valid=True)


def test_the_leftover_of_a_manual_rebuild_is_dropped_first(dsn: str, orders: Conn) -> None:
    orders.execute("CREATE INDEX orders_note_idx ON orders (note)")
    blocker = writer_in_a_transaction(dsn)
    try:
        with psycopg.connect(dsn, autocommit=True) as manual, pytest.raises(psycopg.Error):
            manual.execute("SET lock_timeout = '200ms'")
            manual.execute("REINDEX INDEX CONCURRENTLY orders_note_idx")
    finally:
        blocker.rollback()
        blocker.close()
    assert invalid_indexes(orders, "orders") == ["orders_note_idx_ccnew"]
    with Executor(dsn) as ex:
        assert ex.apply([Reindex("orders_note_idx")], "reindex").state == "completed"
    assert invalid_indexes(orders, "orders") == []
    index_must_exist(orders, "orders_note_idx", valid=True)


def test_a_rebuild_waits_out_an_old_snapshot_outside_the_lock_queue(
    dsn: str, orders: Conn
) -> None:
    """REINDEX CONCURRENTLY waits, as CREATE INDEX CONCURRENTLY does, for every
    transaction of the database that holds an old snapshot (here on another table). The
    lock guard waits that session out before the rebuild starts (no attempt times out,
    nothing is left half built), and the rebuild runs under index_lock_timeout, not the
    application's short lock_timeout; the SQL script says the same."""
    orders.execute("CREATE INDEX orders_note_idx ON orders (note); CREATE TABLE audit (x int)")
    before = oid(orders, "orders_note_idx")
    change = [Reindex("orders_note_idx")]
    # one attempt: a rebuild that started behind the snapshot under a 200ms lock timeout
    # would fail it
    settings = Settings(
        lock_timeout=0.2,
        index_lock_timeout=7.0,
        retry=RetryPolicy(max_attempts=1, max_wait=30, backoff_initial=0.01, backoff_max=0.05),
    )
    with Executor(dsn, settings) as ex:
        script = render_script(ex.plan(change).steps, ex.policy)
    lines = script.splitlines()
    rebuild = next(i for i, line in enumerate(lines) if line.startswith("REINDEX"))
    assert "SET lock_timeout = '7000ms';" in lines[:rebuild], script
    with Blocker(dsn, "SELECT count(*) FROM audit", isolation="repeatable read") as blocker:
        blocker.start(hold_for=2.5)
        blocker.wait_until_older_than(0.5)  # older than the lock timeout: a long one
        with capture_logs() as logs, Executor(dsn, settings) as ex:
            assert ex.apply(change, "reindex").state == "completed"
        assert blocker.released_at is not None  # it finished after the snapshot went
    waits = [e for e in logs if e["event"] == "waiting_for_blockers"]
    assert waits and any(b.get("pid") == blocker.pid for b in waits[0]["blockers"]), logs
    assert [e for e in logs if e["event"] == "lock_retry"] == []
    assert oid(orders, "orders_note_idx") != before
    index_must_exist(orders, "orders_note_idx", valid=True)
    assert invalid_indexes(orders, "orders") == []


def test_refused_before_any_ddl(dsn: str, orders: Conn) -> None:
    orders.execute(
        "CREATE TABLE slots (r int4range, EXCLUDE USING gist (r WITH &&));"
        "CREATE INDEX orders_note_idx ON orders (note);"
        "CREATE INDEX orders_note_idx_ccold ON orders (note);"
    )
    before = {i: oid(orders, i) for i in ("slots_r_excl", "orders_note_idx", "orders_pkey")}
    cases = {
        "slots_r_excl": "backs exclusion constraint 'slots_r_excl'",
        "pg_class_oid_index": "system catalog index",
        "nope": "index 'nope' does not exist",
        "orders_note_idx": "orders_note_idx_ccold exists and is not the leftover",
    }
    for name, problem in cases.items():
        with Executor(dsn) as ex, pytest.raises(PreflightError) as err:
            ex.apply([Reindex(name)], f"r_{name}")
        assert problem in str(err.value) and "fix:" in str(err.value)
    assert {i: oid(orders, i) for i in before} == before
    assert migration_state(orders, "r_nope") is None


@pytest.mark.server_independent
def test_sql_input() -> None:
    assert parse_sql("REINDEX INDEX CONCURRENTLY app.orders_note_idx; REINDEX INDEX i") == [
        Reindex("orders_note_idx", schema="app"),
        Reindex("i"),
    ]
    for what in ("TABLE orders", "SCHEMA app", "DATABASE db", "SYSTEM db"):
        with pytest.raises(UnsupportedStatement) as err:
            parse_sql(f"REINDEX {what}")
        assert f"REINDEX {what.split()[0]} rebuilds many indexes" in str(err.value)
        assert "REINDEX INDEX CONCURRENTLY name" in str(err.value)


@pytest.mark.server_independent
@pytest.mark.parametrize("case_id", golden_ids("reindex"))
def test_golden_plans(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)
