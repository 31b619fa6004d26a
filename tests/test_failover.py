"""Failover: the primary is lost mid-backfill and its standby (``pg_basebackup -R``,
streaming) is promoted; the migration's state travelled with the data, so ``resume``
against the new primary completes it exactly once. Batches the old primary committed
but had not sent yet are done again on the new one, because their cursors did not
travel either.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import psycopg
import pytest
from scenario_tools import backfill_progress, wait_until

from onlineschema import Executor
from onlineschema.backfill import BackfillSettings
from onlineschema.changes import AddIndex, Backfill
from onlineschema.embedded.server import LocalServer, start_standby
from onlineschema.errors import ConnectionLost
from onlineschema.executor import Result, Settings

pytestmark = pytest.mark.version_independent

ROWS = 4000


@pytest.fixture
def pair(pg_version: int) -> Iterator[tuple[LocalServer, LocalServer]]:
    with LocalServer(pg_version) as primary:
        with psycopg.connect(primary.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0)")
            conn.execute("INSERT INTO t (id) SELECT g FROM generate_series(1, %s) g", (ROWS,))
            conn.execute(
                "CREATE FUNCTION bump(int) RETURNS int LANGUAGE sql VOLATILE AS"
                " $$ SELECT pg_sleep(0.0005); SELECT $1 + 1 $$"
            )
        standby = start_standby(primary)
        try:
            yield primary, standby
        finally:
            standby.stop()


def test_resume_on_the_promoted_standby_completes_once(
    pair: tuple[LocalServer, LocalServer],
) -> None:
    primary, standby = pair
    changes = [Backfill("t", {"n": "bump(n)"}), AddIndex("t", ("n",), name="t_n_idx")]
    settings = Settings(
        reconnect_budget=2.0,
        backfill=BackfillSettings(batch_initial=100, batch_max=200, replica_dsn=None),
    )
    outcome: list[Result | BaseException] = []

    def run() -> None:
        try:
            with Executor(primary.dsn(), settings) as ex:
                outcome.append(ex.apply(changes, "bump"))
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    # the backfill is under way on the primary and has reached the standby
    wait_until(
        lambda: (backfill_progress(standby.dsn(), "bump") or 0) > 0,
        timeout=60,
        what="backfill progress replicated to the standby",
    )
    primary.run_as_server_user(["pg_ctl", "-D", str(primary.datadir), "-m", "immediate", "stop"])
    with psycopg.connect(standby.dsn(), autocommit=True) as conn:
        conn.execute("SELECT pg_promote(true, 60)")
    worker.join(60)
    assert not worker.is_alive()
    [lost] = outcome
    # the old primary never comes back within the budget: exit 3, resumable
    assert isinstance(lost, ConnectionLost), lost
    with psycopg.connect(standby.dsn(), autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM t WHERE n = 1").fetchone()
        assert before is not None and 0 < before[0] < ROWS, "promoted mid-backfill"
    with Executor(standby.dsn(), settings) as ex:
        result = ex.resume("bump")
    assert result.state == "completed"
    with psycopg.connect(standby.dsn(), autocommit=True) as conn:
        counts = dict(conn.execute("SELECT n, count(*) FROM t GROUP BY n").fetchall())
        valid = conn.execute(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " WHERE c.relname = 't_n_idx'"
        ).fetchone()
    assert counts == {1: ROWS}, counts
    assert valid == (True,)
