"""The CLI process dies (SIGKILL) in the middle of a migration; ``resume`` finishes it.

* mid-backfill: a non-idempotent ``n = n + 1`` proves that no batch was applied twice
  and none was lost;
* during ``CREATE INDEX CONCURRENTLY``: the invalid index left behind is dropped and built
  again;
* two ``resume``\\s of the same migration at once: one runs, the other exits 2.

Everything runs as the tables' owner, an ordinary role (as on managed PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from scenario_tools import (
    EXECUTOR_APP,
    Blocker,
    Finished,
    MigrationProcess,
    backfill_progress,
    cli_command,
    executor_backends,
    invalid_index,
    migration_state,
    query_value,
    wait_backends_gone,
    wait_until,
)

from onlineschema.state import StateStore

ROWS = 3000

#: Where the kill lands inside a backfill batch's transaction (BEGIN; SELECT the chunk FOR
#: UPDATE; UPDATE t ...; UPDATE the stored cursor; COMMIT): a trigger makes that statement
#: slow, and the kill comes while the executor runs it, with the batch's rows of t
#: uncommitted in that transaction (see ``batch_in_flight``).
#: (table the trigger is on, trigger, seconds per row, statement prefix)
KILL_POINTS = {
    # in the UPDATE of t (1 ms per row): that batch must roll back, and its cursor too
    "update": (
        "t",
        "BEFORE UPDATE ON t FOR EACH ROW",
        "0.001",
        'UPDATE "public"."t"',
    ),
    # in the UPDATE of the chunk's stored cursor, after the batch's UPDATE of t: the
    # batch's rows must roll back with it. The trigger fires only for an UPDATE that
    # sets ``cursor`` (not the chunk claim, which sets claimed_by), and the prefix names
    # the SET too.
    "cursor": (
        "onlineschema.chunks",
        "BEFORE UPDATE OF cursor ON onlineschema.chunks FOR EACH ROW",
        "0.3",
        'UPDATE "onlineschema"."chunks" SET cursor',
    ),
    # in the COMMIT (a deferred trigger, 1 ms per row): the killed client's session
    # finishes the commit, so the batch and its cursor must both be committed
    "commit": (
        "t",
        "AFTER UPDATE ON t DEFERRABLE INITIALLY DEFERRED FOR EACH ROW",
        "0.001",
        "COMMIT",
    ),
}

#: batches of at most this many rows (set live once the migration exists), below the
#: ~188 rows of each of the 16 chunks: a chunk takes several batches, so the kill can
#: land in a chunk that is partly done
BATCH_MAX = 50


def slow_down(dsn: str, where: str) -> None:
    table, when, seconds, _ = KILL_POINTS[where]
    constraint = "CONSTRAINT " if "DEFERRED" in when else ""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if table.startswith("onlineschema."):
            StateStore(conn).ensure()  # the state schema, created now to put a trigger on it
        conn.execute(
            f"""
            CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_sleep({seconds});
                RETURN NEW;
            END $$;
            CREATE {constraint}TRIGGER slow {when} EXECUTE FUNCTION slow_row();
            """
        )


def speed_up(dsn: str, where: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TRIGGER slow ON {KILL_POINTS[where][0]}")


BACKFILL_AND_CHECK = (
    "UPDATE t SET n = n + 1; ALTER TABLE t ADD CONSTRAINT n_positive CHECK (n > 0);"
)


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    yield
    MigrationProcess.kill_leftovers()


@pytest.fixture
def table(owner_dsn: str) -> str:
    """``t(id, n = 0)`` with ROWS rows, owned by the (non-superuser) owner role."""
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT NOT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (True,)
        conn.execute(
            "CREATE TABLE t (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0);"
            "CREATE TABLE side (x int);"
        )
        conn.execute("INSERT INTO t (id) SELECT generate_series(1, %s)", (ROWS,))
    return owner_dsn


def cli(*args: str) -> MigrationProcess:
    return MigrationProcess(cli_command("--log-format", "json", *args)).start()


def apply_cli(dsn: str, sql_text: str, name: str) -> MigrationProcess:
    return cli("apply", "--dsn", dsn, "--sql", sql_text, "--name", name, "--yes")


def resume_cli(dsn: str, name: str) -> MigrationProcess:
    return cli("resume", "--dsn", dsn, name)


def assert_ok(done: Finished) -> None:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-4000:]}"


#: the executor session in the statement a kill point names, in a chunk that is partly
#: done (it takes several batches), and what shows that the batch's rows of t are in
#: flight: RowExclusiveLock on t (taken by the batch's UPDATE of t, held to the end of
#: its transaction) and a transaction id; plus the rows committed (same snapshot)
IN_BATCH_SQL = """
SELECT a.pid, a.backend_xid::text AS xid,
       EXISTS (SELECT FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'relation'
               AND l.granted AND l.relation = 'public.t'::regclass
               AND l.mode = 'RowExclusiveLock') AS holds_t,
       left(a.query, 90) AS query, c.chunk, c.rows_done AS chunk_rows_done,
       (SELECT sum(rows_done)::int FROM onlineschema.chunks WHERE migration = %(migration)s)
       AS committed_rows
FROM pg_stat_activity a
JOIN onlineschema.chunks c ON c.claimed_by = a.pid AND c.migration = %(migration)s
     AND NOT c.done AND c.rows_done > 0
WHERE a.datname = current_database() AND a.application_name = %(app)s
  AND a.state = 'active' AND starts_with(a.query, %(prefix)s)
"""
KEYS = ("pid", "xid", "holds_t", "query", "chunk", "chunk_rows_done", "committed_rows")


def batch_in_flight(dsn: str, migration: str, where: str) -> dict[str, Any] | None:
    """Some batches are committed, not all, and the executor is in the statement
    ``where`` names, in a partly done chunk; returns what it saw then (IN_BATCH_SQL), or
    None. ``rows_in_flight`` checks, after the kill, that the batch's rows were
    uncommitted in that statement's transaction."""
    if backfill_progress(dsn, migration) is None:
        return None
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            IN_BATCH_SQL,
            {"migration": migration, "app": EXECUTOR_APP, "prefix": KILL_POINTS[where][3]},
        ).fetchone()
    if row is None or not 0 < row[-1] < ROWS:
        return None
    return dict(zip(KEYS, row, strict=True))


def rows_in_flight(seen: dict[str, Any]) -> None:
    assert seen["holds_t"] and seen["xid"] is not None, (
        f"the kill did not land inside a batch's transaction with its rows of t: {seen}"
    )


def migration_recorded(dsn: str, migration: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('onlineschema.control')").fetchone() == (None,):
            return False
        row = conn.execute(
            "SELECT count(*) FROM onlineschema.control WHERE migration = %s", (migration,)
        ).fetchone()
    return row == (1,)


def limit_batches(dsn: str, migration: str) -> None:
    """Once the migration exists, lower its batch_max live (picked up within the
    backfill's control_interval), as ``onlineschema set NAME batch_max=50`` does."""
    wait_until(
        lambda: migration_recorded(dsn, migration), timeout=60, what="the migration's record"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        StateStore(conn).update_settings(migration, {"batch_max": BATCH_MAX})


def kill_mid_backfill(dsn: str, name: str, where: str = "update") -> int:
    """Apply BACKFILL_AND_CHECK through the CLI, SIGKILL it inside a backfill batch (in
    the statement ``where`` names, rows in flight), wait for its orphaned session to end;
    returns the committed rows_done."""
    slow_down(dsn, where)
    proc = apply_cli(dsn, BACKFILL_AND_CHECK, name)
    limit_batches(dsn, name)
    seen = proc.kill_when(
        lambda: batch_in_flight(dsn, name, where),
        timeout=90,
        what=f"a backfill batch in flight ({where})",
    )
    print(f"killed at {where}: {seen}")
    # the killed client's session finishes its statement, then finds the client gone and
    # rolls the open batch back
    wait_backends_gone(dsn, executor_backends(dsn))
    rows_done = backfill_progress(dsn, name)
    assert rows_done is not None and 0 < rows_done < ROWS, (rows_done, seen)
    # the state never claims more or less than what is committed
    applied = query_value(dsn, "SELECT count(*) FROM t WHERE n = 1")
    assert applied == rows_done, (
        f"{applied} rows of t are updated, the chunks say {rows_done}; killed at {seen}"
    )
    assert query_value(dsn, "SELECT count(*) FROM t WHERE n NOT IN (0, 1)") == 0
    if where == "commit":  # the orphaned session finished the COMMIT of the batch
        assert rows_done > seen["committed_rows"], (rows_done, seen)
    else:  # the batch in flight was rolled back: nothing beyond what was committed
        assert rows_done == seen["committed_rows"], (rows_done, seen)
    rows_in_flight(seen)
    assert migration_state(dsn, name) == "running"  # the process died: nobody recorded it
    speed_up(dsn, where)  # the rest may go fast
    return rows_done


def assert_filled_once(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        counts = conn.execute(
            "SELECT count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n <> 1) FROM t"
        ).fetchone()
        assert counts == (ROWS, 0), f"(rows with n = 1, other rows) = {counts}"
        check = conn.execute(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'n_positive'"
        ).fetchone()
        assert check == (True,)
        summary = conn.execute(
            "SELECT rows_done FROM onlineschema.backfills WHERE migration = %s", (name,)
        ).fetchone()
        assert summary == (ROWS,)
    assert backfill_progress(dsn, name) == ROWS
    assert migration_state(dsn, name) == "completed"


@pytest.mark.parametrize("where", sorted(KILL_POINTS))
def test_sigkill_mid_backfill_then_resume_applies_each_row_once(table: str, where: str) -> None:
    dsn, name = table, "bump_n"
    kill_mid_backfill(dsn, name, where)
    done = resume_cli(dsn, name).wait(timeout=120)
    assert_ok(done)
    assert "backfill_resumed" in done.event_names()
    assert_filled_once(dsn, name)


def test_sigkill_during_concurrent_index_build_then_resume_rebuilds(table: str) -> None:
    dsn, name = table, "t_n_index"
    # An index whose expression is slow to compute keeps CREATE INDEX CONCURRENTLY in its
    # build scan for seconds, with the index already in the catalog and not valid. (The
    # guard waits out old transactions *before* a build starts, so a blocker cannot be
    # used to catch the build half-way.)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION slow_id(v int) RETURNS int IMMUTABLE LANGUAGE plpgsql"
            " AS 'BEGIN PERFORM pg_sleep(0.002); RETURN v; END'"
        )
    proc = apply_cli(dsn, "CREATE INDEX t_n_idx ON t (slow_id(n));", name)

    def build_running() -> bool:
        return invalid_index(dsn, "t_n_idx") and bool(
            query_value(
                dsn,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = %s AND state = 'active'"
                " AND query LIKE 'CREATE INDEX CONCURRENTLY%%'",
                (EXECUTOR_APP,),
            )
        )

    proc.kill_when(build_running, timeout=90, what="the index build running, index invalid")
    orphans = executor_backends(dsn)
    assert orphans, "the killed CLI's session should still be running the build"
    # While that session lives it holds the migration's advisory lock: a resume now
    # must not run a second build beside it, and says which session is in the way.
    early = resume_cli(dsn, name).wait(timeout=60)
    assert early.returncode == 2, early.stderr[-4000:]
    assert "another process" in early.stderr
    assert "pg_terminate_backend" in early.stderr
    # The operator ends the orphaned session (the client is gone); the index stays
    # invalid.
    with psycopg.connect(dsn, autocommit=True) as conn:
        for pid in orphans:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_backends_gone(dsn, orphans)
    assert invalid_index(dsn, "t_n_idx")
    done = resume_cli(dsn, name).wait(timeout=120)
    assert_ok(done)
    events = done.events()
    dropped = [e for e in events if e.get("event") == "index_invalid_dropped"]
    assert dropped and dropped[0].get("index") == "t_n_idx", done.event_names()
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT c.relname, i.indisvalid, i.indisready FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 't'::regclass"
            " ORDER BY 1"
        ).fetchall()
    assert rows == [("t_n_idx", True, True), ("t_pkey", True, True)]
    assert migration_state(dsn, name) == "completed"


def test_two_resumes_at_once_one_runs_other_exits_2(table: str) -> None:
    dsn, name = table, "bump_n_twice"
    kill_mid_backfill(dsn, name)
    # A long transaction on t keeps whichever resume wins busy at the ACCESS EXCLUSIVE
    # step after the backfill (it waits for the holder), so the two surely overlap.
    with Blocker(dsn, "SELECT 1 FROM t LIMIT 1") as blocker:
        blocker.start()
        procs = [resume_cli(dsn, name), resume_cli(dsn, name)]
        first = wait_until(
            lambda: [p for p in procs if not p.running()],
            timeout=90,
            what="one of the two resumes to exit",
        )
        loser = first[0]
        winner = next(p for p in procs if p is not loser)
        lost = loser.wait(timeout=10)
        assert lost.returncode == 2, lost.stderr[-4000:]
        assert "another process" in lost.stderr
        assert winner.running(), "the other resume should be running (waiting for the holder)"
        wait_until(
            lambda: query_value(
                dsn,
                "SELECT attempts > 0 FROM onlineschema.steps WHERE migration = %s"
                " AND step_id LIKE 'add_check.%%'",
                (name,),
            ),
            timeout=90,
            what="the winner to reach the ACCESS EXCLUSIVE step",
        )
        assert winner.running(), "the holder is still there: the winner must keep waiting"
    won = winner.wait(timeout=120)
    assert_ok(won)
    assert_filled_once(dsn, name)
