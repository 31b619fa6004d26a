"""Scripts of several change kinds through the lifecycle, on a real server: abort after
every step puts the tables back. Each kind's own lifecycle is in tests/recipes/; the
harness is tests/harness.py."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from harness import (
    SIZE,
    SMALL_BATCHES,
    Conn,
    no_leftovers,
    run_until_paused,
    vacuumed_snapshots,
)
from helpers import (
    column_default,
    column_must_exist,
    constraint_must_exist,
    count,
    index_must_exist,
    make_orders,
)

from onlineschema import (
    AddUnique,
    Change,
    Executor,
)


@pytest.fixture
def orders(conn: Conn) -> Conn:
    make_orders(conn)
    return conn


EXAMPLE_SCRIPT = """
ALTER TABLE orders ADD COLUMN status text;
UPDATE orders SET status = CASE WHEN amount > 100 THEN 'big' ELSE 'small' END;
ALTER TABLE orders ALTER COLUMN status SET NOT NULL, ALTER COLUMN status SET DEFAULT 'small';
CREATE INDEX ON orders(status);
ALTER TABLE orders ADD FOREIGN KEY (user_id) REFERENCES users(id);
"""


def _abort_after_each_step(
    dsn: str, conn: Conn, changes: Sequence[Change], tables: Sequence[str]
) -> None:
    """Stop after step 1, abort, compare; stop after step 2, abort, compare; ... up to
    the last step: wherever a migration stops, abort puts the tables back."""
    before = vacuumed_snapshots(conn, tables)
    with Executor(dsn) as ex:
        ids = [s.id for s in ex.plan(changes).steps]
    for k, sid in enumerate(ids):
        name = f"stop_{k}"
        run_until_paused(
            dsn, changes, name, lambda step, sid=sid: step.id == sid, settings=SMALL_BATCHES
        )
        with Executor(dsn) as ex:
            assert ex.abort(name).state == "aborted", sid
        no_leftovers(conn, tables)
        assert vacuumed_snapshots(conn, tables) == before, f"abort after {sid} left changes"
    with Executor(dsn, SMALL_BATCHES) as ex:
        assert ex.apply(changes, "all").state == "completed"


def test_abort_after_each_step_of_the_example_script(dsn: str, orders: Conn) -> None:
    from onlineschema.sqlinput import parse_sql

    changes = parse_sql(EXAMPLE_SCRIPT)
    _abort_after_each_step(dsn, orders, changes, ("orders", "users"))
    column_must_exist(orders, "orders", "status", type="text", nullable=False)
    assert column_default(orders, "orders", "status") == "'small'::text"
    assert count(orders, f"SELECT count(*) FROM orders WHERE status IS DISTINCT FROM {SIZE}") == 0  # noqa: S608 (test constants)
    index_must_exist(orders, "orders_status_idx", valid=True)
    constraint_must_exist(orders, "orders", "orders_user_id_fkey", validated=True, type="f")


def test_abort_after_each_step_of_a_primary_key_on_a_nullable_column(dsn: str, conn: Conn) -> None:
    conn.execute("CREATE TABLE events (code text, payload text)")
    conn.execute("INSERT INTO events SELECT 'e' || g, 'p' FROM generate_series(1, 500) g")
    _abort_after_each_step(
        dsn, conn, [AddUnique("events", ("code",), primary_key=True)], ("events",)
    )
    constraint_must_exist(conn, "events", "events_pkey", validated=True, type="p")
