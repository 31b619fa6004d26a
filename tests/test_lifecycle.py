"""Every change kind through the pgroll-style lifecycle, on a real server.

For each change: apply the expand phase -> check the catalog (and what "old code" that
does not know the change sees) -> ``abort`` -> check the table is exactly as before ->
applying the aborted name again is refused -> apply again under a new name, stop after
the expand phase again -> ``resume`` to the end -> check the final catalog and data.

How a migration is stopped after its expand phase: the test passes the executor an
observer whose ``step_finished`` hook, right after the step that ends the window (by
default the last step of the ``expand`` phase), calls ``Executor.pause(name)`` through a
*second* executor, i.e. writes the pause flag into ``onlineschema.control`` from another
connection, exactly what an operator's ``onlineschema pause`` does. The running executor
reads the flag before its next step (and after its last one) and stops with ``Paused``,
leaving the migration ``paused``: resumable and abortable. For a plan of a single step
(an index, a default, a backfill...) the pause arrives while that step runs, and the
executor stops right after it instead of recording the migration as completed. A
backfill reads the flag between batches, which is how ``mid_backfill=True`` stops one
half-way. Nothing is mocked and nothing sleeps: the stop point is deterministic.

Drops (index, constraint) run in the contract phase and cannot be undone: for them the
test checks that abort is refused with the way forward. ``VALIDATE`` cannot be undone
either: abort keeps the constraint validated, and that is the only difference.

"Exactly as before" is ``catalog_snapshot`` (pg_class, pg_attribute, pg_attrdef, pg_index,
pg_constraint and pg_trigger rows of the table and its indexes) taken after ``VACUUM``
both times, with ``ignore_dropped_columns``: an aborted ``ADD COLUMN`` leaves an
invisible ``attisdropped`` placeholder that only a table rewrite removes (and relnatts
counts it); everything else must be identical, down to ``relfilenode`` (no rewrite).

PostgreSQL 18 makes NOT NULL with ``ADD CONSTRAINT ... NOT NULL ... NOT VALID`` +
``VALIDATE``; 15 and 16 with a helper ``CHECK (col IS NOT NULL) NOT VALID``, ``VALIDATE``,
``SET NOT NULL`` (no scan) and a dropped helper. Tests whose checks differ carry the
``pg`` marker.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from helpers import (
    catalog_snapshot,
    column_default,
    column_must_exist,
    column_must_not_exist,
    constraint_must_exist,
    constraint_must_not_exist,
    constraint_names,
    count,
    index_must_exist,
    index_must_not_exist,
    invalid_indexes,
    make_orders,
    migration_state,
    must_insert,
    must_not_insert,
    relfilenode,
    trigger_names,
)
from psycopg import errors as pgerr
from structlog.testing import capture_logs

from onlineschema import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddIndex,
    AddUnique,
    Backfill,
    BackfillSettings,
    Change,
    DropConstraint,
    DropDefault,
    DropIndex,
    DropNotNull,
    Executor,
    Paused,
    PreflightError,
    Refused,
    SetDefault,
    SetNotNull,
    Settings,
    Step,
    StepFailed,
    ValidateConstraint,
)

Conn = psycopg.Connection[Any]
Check = Callable[[Conn], object]  # the result is ignored; checks assert

#: small batches read the pause flag before every batch: a backfill can be stopped midway
SMALL_BATCHES = Settings(
    backfill=BackfillSettings(
        batch_initial=100, batch_min=10, batch_max=100, duty_cycle=1.0, control_interval=0.0
    )
)


# --- driving a migration -------------------------------------------------------------------


@dataclass
class PauseAt:
    """Observer that pauses migration ``name`` from another connection right after the
    step ``stop(step)`` picks finishes, or after the first backfill batch."""

    dsn: str
    name: str
    stop: Callable[[Step], bool] | None = None
    mid_backfill: bool = False
    finished: list[str] = field(default_factory=list)
    requested: bool = False

    def _pause(self) -> None:
        if not self.requested:
            self.requested = True
            with Executor(self.dsn) as operator:
                operator.pause(self.name)

    def step_started(self, step: Step, index: int, total: int) -> None:
        pass

    def step_finished(self, step: Step, index: int, total: int, skipped: bool) -> None:
        self.finished.append(step.id)
        if self.stop is not None and self.stop(step):
            self._pause()

    def backfill_progress(self, step_id: str, rows_done: int, *rest: Any) -> None:
        if self.mid_backfill:
            self._pause()


def end_of_expand(changes: Sequence[Change], dsn: str) -> Callable[[Step], bool]:
    """The last step of the expand phase, or the first step when there is none."""
    with Executor(dsn) as ex:
        steps = ex.plan(changes).steps
    expand = [s.id for s in steps if s.phase == "expand"]
    last = expand[-1] if expand else steps[0].id
    return lambda step: step.id == last


def after_action(*actions: str) -> Callable[[Step], bool]:
    return lambda step: step.action in actions


def run_until_paused(
    dsn: str,
    changes: Sequence[Change],
    name: str,
    stop: Callable[[Step], bool] | None = None,
    *,
    mid_backfill: bool = False,
    settings: Settings | None = None,
) -> PauseAt:
    """Apply ``changes`` as ``name`` and stop where ``stop`` says (default: end of the
    expand phase); the migration must be left ``paused``."""
    if stop is None and not mid_backfill:
        stop = end_of_expand(changes, dsn)
    observer = PauseAt(dsn, name, stop, mid_backfill)
    with Executor(dsn, settings, observer=observer) as ex, pytest.raises(Paused):
        ex.apply(changes, name)
    assert observer.requested, "the stop point was never reached"
    with Executor(dsn) as ex:
        status = ex.status(name)[0]
    assert status["state"] == "paused", status
    return observer


def vacuumed_snapshots(
    conn: Conn, tables: Sequence[str], *, mask_oids: bool = False
) -> dict[str, str]:
    for t in tables:
        conn.execute(f'VACUUM "{t}"')
    snaps = {t: catalog_snapshot(conn, t, ignore_dropped_columns=True) for t in tables}
    if mask_oids:  # a constraint taken off and put back is a new row with a new oid
        snaps = {t: re.sub(r'"oid": "\d+"', '"oid": "*"', s) for t, s in snaps.items()}
    return snaps


def no_leftovers(conn: Conn, tables: Sequence[str]) -> None:
    """No helper trigger, function, constraint or invalid index of onlineschema remains."""
    for t in tables:
        assert not [n for n in trigger_names(conn, t) if n.startswith("onlineschema")]
        assert not [n for n in constraint_names(conn, t) if n.startswith("onlineschema")]
        assert invalid_indexes(conn, t) == []
    fns = conn.execute("SELECT proname FROM pg_proc WHERE proname LIKE 'onlineschema%'").fetchall()
    assert fns == []


def lifecycle(
    dsn: str,
    conn: Conn,
    changes: Sequence[Change],
    *,
    tables: Sequence[str] = ("orders",),
    stop: Callable[[Step], bool] | None = None,
    mid_backfill: bool = False,
    settings: Settings | None = None,
    after_expand: Check,
    during_window: Check | None = None,
    after_abort: Check | None = None,
    after_finish: Check,
    mask_oids: bool = False,
) -> None:
    """expand -> check -> abort -> same as before -> same name refused -> expand under a
    new name -> check -> resume -> final check."""
    before = vacuumed_snapshots(conn, tables, mask_oids=mask_oids)

    run_until_paused(dsn, changes, "first", stop, mid_backfill=mid_backfill, settings=settings)
    after_expand(conn)
    if during_window:
        during_window(conn)

    with Executor(dsn) as ex:
        result = ex.abort("first")
    assert result.state == "aborted"
    assert migration_state(conn, "first") == "aborted"
    if after_abort:
        after_abort(conn)
    no_leftovers(conn, tables)
    assert vacuumed_snapshots(conn, tables, mask_oids=mask_oids) == before

    with Executor(dsn) as ex, pytest.raises(Refused) as refused:
        ex.apply(changes, "first")
    assert "'first' was aborted" in str(refused.value)
    assert "new --name" in str(refused.value)

    run_until_paused(dsn, changes, "second", stop, mid_backfill=mid_backfill, settings=settings)
    after_expand(conn)
    if during_window:
        during_window(conn)
    with Executor(dsn, settings) as ex:
        assert ex.resume("second").state == "completed"
    assert migration_state(conn, "second") == "completed"
    no_leftovers(conn, tables)
    after_finish(conn)


@pytest.fixture
def orders(conn: Conn) -> Conn:
    make_orders(conn)
    return conn


# --- AddColumn ---------------------------------------------------------------------------


def test_add_column_nullable(dsn: str, orders: Conn) -> None:
    def added(conn: Conn) -> None:
        column_must_exist(conn, "orders", "status", type="text", nullable=True)
        assert count(conn, "SELECT count(*) FROM orders WHERE status IS NULL") == 2000
        must_insert(conn, "INSERT INTO orders (user_id, amount) VALUES (1, 1)")

    lifecycle(
        dsn,
        orders,
        [AddColumn("orders", "status", "text")],
        after_expand=added,
        after_abort=lambda c: column_must_not_exist(c, "orders", "status"),
        after_finish=added,
    )


def test_add_column_constant_default_not_null_is_one_brief_step_without_rewrite(
    dsn: str, orders: Conn
) -> None:
    changes = [AddColumn("orders", "status", "text", nullable=False, default="'new'")]
    with Executor(dsn) as ex:
        plan = ex.plan(changes)
    assert [(s.action, s.scans, s.rewrites) for s in plan.steps] == [("add_column", False, False)]
    node = relfilenode(orders, "orders")

    def added(conn: Conn) -> None:
        column_must_exist(conn, "orders", "status", type="text", nullable=False)
        assert column_default(conn, "orders", "status") == "'new'::text"
        assert relfilenode(conn, "orders") == node, "the table was rewritten"
        # the fast default: stored once in pg_attribute, not written into every row
        assert conn.execute(
            "SELECT atthasmissing FROM pg_attribute"
            " WHERE attrelid = 'orders'::regclass AND attname = 'status'"
        ).fetchone() == (True,)
        assert count(conn, "SELECT count(*) FROM orders WHERE status = 'new'") == 2000
        must_not_insert(
            conn,
            "INSERT INTO orders (user_id, status) VALUES (1, NULL)",
            (),
            pgerr.NotNullViolation,
        )

    lifecycle(dsn, orders, changes, after_expand=added, after_finish=added)


def test_add_column_volatile_default_clock_timestamp(dsn: str, orders: Conn) -> None:
    changes = [
        AddColumn("orders", "seen_at", "timestamptz", nullable=False, default="clock_timestamp()")
    ]
    node = relfilenode(orders, "orders")

    def expanded(conn: Conn) -> None:
        # nullable for now: existing rows are filled in batches, not by a rewrite
        column_must_exist(conn, "orders", "seen_at", type="timestamp with time zone", nullable=True)
        assert column_default(conn, "orders", "seen_at") == "clock_timestamp()"
        assert count(conn, "SELECT count(*) FROM orders WHERE seen_at IS NULL") >= 2000
        assert relfilenode(conn, "orders") == node
        new = conn.execute("INSERT INTO orders (user_id) VALUES (1) RETURNING seen_at").fetchone()
        assert new is not None and new[0] is not None

    def finished(conn: Conn) -> None:
        column_must_exist(conn, "orders", "seen_at", nullable=False)
        assert count(conn, "SELECT count(*) FROM orders WHERE seen_at IS NULL") == 0
        # filled in batches of at most 100 rows, each its own transaction: the 2000 rows
        # that existed carry at least 20 different xmins (one UPDATE would leave one)
        assert count(conn, "SELECT count(DISTINCT xmin::text) FROM orders WHERE id <= 2000") >= 20
        assert relfilenode(conn, "orders") == node

    lifecycle(
        dsn, orders, changes, settings=SMALL_BATCHES, after_expand=expanded, after_finish=finished
    )


def test_add_column_volatile_default_gen_random_uuid(dsn: str, orders: Conn) -> None:
    changes = [AddColumn("orders", "token", "uuid", default="gen_random_uuid()")]

    def expanded(conn: Conn) -> None:
        column_must_exist(conn, "orders", "token", type="uuid", nullable=True)
        assert count(conn, "SELECT count(*) FROM orders WHERE token IS NULL") == 2000

    def finished(conn: Conn) -> None:
        column_must_exist(conn, "orders", "token", type="uuid", nullable=True)
        assert count(conn, "SELECT count(*) FROM orders WHERE token IS NULL") == 0
        assert count(conn, "SELECT count(DISTINCT token) FROM orders") == count(
            conn, "SELECT count(*) FROM orders"
        )

    lifecycle(dsn, orders, changes, after_expand=expanded, after_finish=finished)


SIZE = "CASE WHEN amount > 100 THEN 'big' ELSE 'small' END"


def _fill_trigger_lifecycle(dsn: str, conn: Conn, final_not_null: Check) -> None:
    """AddColumn NOT NULL with a backfill expression: nullable add + fill trigger, batched
    backfill, NOT NULL; rows written by old code during the window get the value."""
    changes = [AddColumn("orders", "size", "text", nullable=False, backfill=SIZE)]
    old_rows: list[int] = []

    def expanded(conn: Conn) -> None:
        column_must_exist(conn, "orders", "size", type="text", nullable=True)
        assert trigger_names(conn, "orders") == ["onlineschema_fill_size"]
        assert count(conn, "SELECT count(*) FROM orders WHERE size IS NULL") >= 2000

    def old_code(conn: Conn) -> None:
        # code that does not know the column: inserts and updates without it
        for amount in (500, 5):
            row = conn.execute(
                "INSERT INTO orders (user_id, amount) VALUES (1, %s) RETURNING id, size",
                (amount,),
            ).fetchone()
            assert row is not None
            assert row[1] == ("big" if amount > 100 else "small")
            old_rows.append(row[0])
        row = conn.execute("UPDATE orders SET amount = 250 WHERE id = 1 RETURNING size").fetchone()
        assert row == ("big",)

    def aborted(conn: Conn) -> None:
        column_must_not_exist(conn, "orders", "size")
        assert trigger_names(conn, "orders") == []

    def finished(conn: Conn) -> None:
        column_must_exist(conn, "orders", "size", type="text", nullable=False)
        assert count(conn, f"SELECT count(*) FROM orders WHERE size IS DISTINCT FROM {SIZE}") == 0  # noqa: S608 (test constants)
        assert count(conn, "SELECT count(*) FROM orders WHERE id = ANY(%s)", (old_rows,)) == 4
        assert trigger_names(conn, "orders") == []
        must_not_insert(
            conn, "INSERT INTO orders (user_id, size) VALUES (1, NULL)", (), pgerr.NotNullViolation
        )
        final_not_null(conn)

    lifecycle(
        dsn,
        conn,
        changes,
        settings=SMALL_BATCHES,
        after_expand=expanded,
        during_window=old_code,
        after_abort=aborted,
        after_finish=finished,
    )


@pytest.mark.pg(">=18")
def test_add_column_backfill_not_null_pg18(dsn: str, orders: Conn) -> None:
    def not_null(conn: Conn) -> None:
        constraint_must_exist(conn, "orders", "orders_size_not_null", validated=True, type="n")

    _fill_trigger_lifecycle(dsn, orders, not_null)


@pytest.mark.pg("<18")
def test_add_column_backfill_not_null_pg15_16(dsn: str, orders: Conn) -> None:
    def not_null(conn: Conn) -> None:
        constraint_must_not_exist(conn, "orders", "onlineschema_nn_orders_size")
        assert not [n for n in constraint_names(conn, "orders") if "size" in n]

    _fill_trigger_lifecycle(dsn, orders, not_null)


# --- NOT NULL and defaults ---------------------------------------------------------------


@pytest.mark.pg(">=18")
def test_set_not_null_pg18_not_valid_then_validate(dsn: str, orders: Conn) -> None:
    def expanded(conn: Conn) -> None:
        constraint_must_exist(conn, "orders", "orders_amount_not_null", validated=False, type="n")
        must_not_insert(
            conn,
            "INSERT INTO orders (user_id, amount) VALUES (1, NULL)",
            (),
            pgerr.NotNullViolation,
        )

    def finished(conn: Conn) -> None:
        column_must_exist(conn, "orders", "amount", nullable=False)
        constraint_must_exist(conn, "orders", "orders_amount_not_null", validated=True, type="n")

    lifecycle(
        dsn,
        orders,
        [SetNotNull("orders", "amount")],
        stop=after_action("add_not_null_not_valid"),
        after_expand=expanded,
        after_abort=lambda c: column_must_exist(c, "orders", "amount", nullable=True),
        after_finish=finished,
    )


@pytest.mark.pg("<18")
def test_set_not_null_pg15_16_check_then_set_not_null(dsn: str, orders: Conn) -> None:
    helper = "onlineschema_nn_orders_amount"

    def expanded(conn: Conn) -> None:
        constraint_must_exist(
            conn, "orders", helper, validated=False, type="c", definition_contains=["IS NOT NULL"]
        )
        column_must_exist(conn, "orders", "amount", nullable=True)
        must_not_insert(
            conn, "INSERT INTO orders (user_id, amount) VALUES (1, NULL)", (), pgerr.CheckViolation
        )

    def finished(conn: Conn) -> None:
        column_must_exist(conn, "orders", "amount", nullable=False)
        constraint_must_not_exist(conn, "orders", helper)

    with Executor(dsn) as ex:
        actions = [s.action for s in ex.plan([SetNotNull("orders", "amount")]).steps]
    assert actions == [
        "add_check_not_valid",
        "validate_constraint",
        "set_not_null",
        "drop_helper_check",
    ]
    lifecycle(
        dsn,
        orders,
        [SetNotNull("orders", "amount")],
        stop=after_action("add_check_not_valid"),
        after_expand=expanded,
        after_finish=finished,
    )


@pytest.mark.pg(">=18")
def test_set_not_null_pg18_over_a_not_valid_not_null_validates_it(dsn: str, orders: Conn) -> None:
    """On 18 ``attnotnull`` is already true under ``NOT NULL ... NOT VALID``; SET NOT NULL
    still means "every row is checked", which a VALIDATE (SHARE UPDATE EXCLUSIVE) gives."""
    orders.execute("ALTER TABLE orders ADD CONSTRAINT orders_amount_nn NOT NULL amount NOT VALID")
    with Executor(dsn) as ex:
        (step,) = ex.plan([SetNotNull("orders", "amount")]).steps
        assert (step.action, step.lock) == ("validate_constraint", "ShareUpdateExclusiveLock")
        assert ex.apply([SetNotNull("orders", "amount")], "nn").state == "completed"
    constraint_must_exist(orders, "orders", "orders_amount_nn", validated=True, type="n")


def test_set_not_null_on_a_column_with_nulls_fails_at_validate_and_aborts_clean(
    dsn: str, orders: Conn
) -> None:
    before = vacuumed_snapshots(orders, ["orders"])
    with Executor(dsn) as ex, pytest.raises(StepFailed) as failed:
        ex.apply([SetNotNull("orders", "note")], "nn")
    assert "fix:" in str(failed.value) and "resume" in str(failed.value)
    assert migration_state(orders, "nn") == "failed"
    with Executor(dsn) as ex:
        steps = [(st["id"].split(".")[0], st["state"]) for st in ex.status("nn")[0]["steps"]]
    # the validate step failed; what came before it is done, nothing after it ran
    failed_at = [i for i, (_, state) in enumerate(steps) if state == "failed"]
    assert len(failed_at) == 1 and steps[failed_at[0]][0] == "validate", steps
    assert all(state == "done" for _, state in steps[: failed_at[0]]), steps
    assert all(state != "done" for _, state in steps[failed_at[0] + 1 :]), steps
    with Executor(dsn) as ex:
        assert ex.abort("nn").state == "aborted"
    assert vacuumed_snapshots(orders, ["orders"]) == before


def contract_lifecycle(
    dsn: str, conn: Conn, changes: Sequence[Change], *, before_contract: Check, after: Check
) -> None:
    """A contract-only change: apply stops before it (awaiting_contract) -> abort leaves
    the table as it was -> apply under a new name -> contract -> final check; abort after
    the contract is refused."""
    before = vacuumed_snapshots(conn, ["orders"])
    with Executor(dsn) as ex:
        assert ex.apply(changes, "first").state == "awaiting_contract"
    assert migration_state(conn, "first") == "awaiting_contract"
    before_contract(conn)
    with Executor(dsn) as ex:
        assert ex.abort("first").state == "aborted"
    assert vacuumed_snapshots(conn, ["orders"]) == before
    with Executor(dsn) as ex:
        assert ex.apply(changes, "second").state == "awaiting_contract"
        assert ex.contract("second").state == "completed"
    assert migration_state(conn, "second") == "completed"
    after(conn)
    with Executor(dsn) as ex, pytest.raises(Refused) as refused:
        ex.abort("second")
    assert "already completed" in str(refused.value)


def test_drop_not_null_is_contract_only(dsn: str, orders: Conn) -> None:
    with Executor(dsn) as ex:
        (step,) = ex.plan([DropNotNull("orders", "n")]).steps
    assert (step.phase, step.breaking) == ("contract", True)

    def dropped(conn: Conn) -> None:
        column_must_exist(conn, "orders", "n", nullable=True)
        must_insert(conn, "INSERT INTO orders (user_id, n) VALUES (1, NULL)")

    contract_lifecycle(
        dsn,
        orders,
        [DropNotNull("orders", "n")],
        before_contract=lambda c: column_must_exist(c, "orders", "n", nullable=False),
        after=dropped,
    )


def test_abort_after_drop_not_null_puts_it_back(dsn: str, orders: Conn) -> None:
    """Paused after the DROP NOT NULL ran (the contract phase): abort restores it through
    a validated constraint, with no scan under ACCESS EXCLUSIVE."""
    before = vacuumed_snapshots(orders, ["orders"], mask_oids=True)
    changes = [DropNotNull("orders", "n"), AddIndex("orders", columns=("amount",))]
    with Executor(dsn) as ex:
        assert ex.apply(changes, "nn").state == "awaiting_contract"
    run_until_paused_in_contract(dsn, "nn", lambda step: step.action == "drop_not_null")
    column_must_exist(orders, "orders", "n", nullable=True)
    with Executor(dsn) as ex:
        assert ex.abort("nn").state == "aborted"
    column_must_exist(orders, "orders", "n", nullable=False)
    # PostgreSQL 18 keeps NOT NULL as a constraint row: put back, it has a new oid
    assert vacuumed_snapshots(orders, ["orders"], mask_oids=True) == before


def run_until_paused_in_contract(dsn: str, name: str, stop: Callable[[Step], bool]) -> None:
    observer = PauseAt(dsn, name, stop, False)
    with Executor(dsn, observer=observer) as ex, pytest.raises(Paused):
        ex.contract(name)
    assert observer.requested


def _default_is(conn: Conn, column: str, default: str | None) -> None:
    assert column_default(conn, "orders", column) == default


def test_set_default(dsn: str, orders: Conn) -> None:
    existing = orders.execute("SELECT md5(string_agg(amount::text, ',' ORDER BY id)) FROM orders")
    checksum = existing.fetchone()

    def with_default(conn: Conn) -> None:
        assert column_default(conn, "orders", "amount") == "42"
        row = conn.execute("INSERT INTO orders (user_id) VALUES (1) RETURNING amount").fetchone()
        assert row == (42,)
        # existing rows are not touched
        assert (
            conn.execute(
                "SELECT md5(string_agg(amount::text, ',' ORDER BY id)) FROM orders WHERE id <= 2000"
            ).fetchone()
            == checksum
        )

    def no_default(conn: Conn) -> None:
        assert column_default(conn, "orders", "amount") is None
        row = conn.execute("INSERT INTO orders (user_id) VALUES (1) RETURNING amount").fetchone()
        assert row == (None,)

    lifecycle(
        dsn,
        orders,
        [SetDefault("orders", "amount", "42")],
        after_expand=with_default,
        after_abort=no_default,
        after_finish=with_default,
    )


def test_drop_default(dsn: str, orders: Conn) -> None:
    def without_default(conn: Conn) -> None:
        assert column_default(conn, "orders", "n") is None
        must_not_insert(conn, "INSERT INTO orders (user_id) VALUES (1)", (), pgerr.NotNullViolation)

    lifecycle(
        dsn,
        orders,
        [DropDefault("orders", "n")],
        after_expand=without_default,
        after_abort=lambda c: _default_is(c, "n", "0"),
        after_finish=without_default,
    )
    assert column_default(orders, "orders", "n") is None


# --- indexes -----------------------------------------------------------------------------


INDEX_CASES = {
    "unique": (
        AddIndex("orders", columns=("note",), unique=True),
        "orders_note_key",
        {"unique": True, "definition_contains": ["UNIQUE", "(note)"]},
    ),
    "expression": (
        AddIndex("orders", expressions=("lower(note)",), name="orders_lower_note_idx"),
        "orders_lower_note_idx",
        {"definition_contains": ["lower(note)"]},
    ),
    "partial": (
        AddIndex("orders", columns=("user_id",), where="note IS NULL"),
        "orders_user_id_idx",
        {"definition_contains": ["WHERE (note IS NULL)"]},
    ),
    "hash": (
        AddIndex("orders", columns=("note",), using="hash", name="orders_note_hash"),
        "orders_note_hash",
        {"method": "hash"},
    ),
    "gin": (
        AddIndex(
            "orders",
            expressions=("to_tsvector('simple', coalesce(note, ''))",),
            using="gin",
            name="orders_note_fts",
        ),
        "orders_note_fts",
        {"method": "gin", "definition_contains": ["to_tsvector"]},
    ),
    "include": (
        AddIndex("orders", columns=("user_id",), include=("amount",), name="orders_user_cover"),
        "orders_user_cover",
        {"definition_contains": ["INCLUDE (amount)"]},
    ),
}


@pytest.mark.parametrize("kind", sorted(INDEX_CASES))
def test_add_index(dsn: str, orders: Conn, kind: str) -> None:
    change, name, expect = INDEX_CASES[kind]

    def built(conn: Conn) -> None:
        index_must_exist(conn, name, valid=True, **expect)  # type: ignore[arg-type]

    lifecycle(
        dsn,
        orders,
        [change],
        after_expand=built,
        after_abort=lambda c: index_must_not_exist(c, name),
        after_finish=built,
    )
    if kind == "unique":
        must_not_insert(
            orders,
            "INSERT INTO orders (user_id, note) VALUES (1, 'note 1')",
            (),
            pgerr.UniqueViolation,
        )


def _drop_lifecycle(dsn: str, conn: Conn, change: Change, gone: Check) -> None:
    """A drop runs in the contract phase and cannot be undone: abort after it is refused
    with the way forward (resume), which finishes the migration."""
    run_until_paused(dsn, [change], "drop", lambda step: step.phase == "contract")
    gone(conn)
    with Executor(dsn) as ex, pytest.raises(Refused) as refused:
        ex.abort("drop")
    assert "cannot be undone" in str(refused.value)
    assert "resume drop" in str(refused.value)
    assert migration_state(conn, "drop") == "paused"
    with Executor(dsn) as ex:
        assert ex.resume("drop").state == "completed"
    gone(conn)


def test_drop_index(dsn: str, orders: Conn) -> None:
    orders.execute("CREATE INDEX orders_amount_idx ON orders (amount)")
    with Executor(dsn) as ex:
        (step,) = ex.plan([DropIndex("orders_amount_idx")]).steps
    assert (step.phase, step.transactional, step.lock) == (
        "contract",
        False,
        "ShareUpdateExclusiveLock",
    )
    assert "CONCURRENTLY" in step.statements[0]
    _drop_lifecycle(
        dsn,
        orders,
        DropIndex("orders_amount_idx"),
        lambda c: index_must_not_exist(c, "orders_amount_idx"),
    )


def test_drop_constraint_is_contract_only(dsn: str, orders: Conn) -> None:
    orders.execute("ALTER TABLE orders ADD CONSTRAINT orders_amount_small CHECK (amount < 1000)")
    with Executor(dsn) as ex:
        (step,) = ex.plan([DropConstraint("orders", "orders_amount_small")]).steps
    assert (step.phase, step.breaking) == ("contract", True)
    assert "(check)" in step.description

    def gone(conn: Conn) -> None:
        constraint_must_not_exist(conn, "orders", "orders_amount_small")
        must_insert(conn, "INSERT INTO orders (user_id, amount) VALUES (1, 5000)")

    contract_lifecycle(
        dsn,
        orders,
        [DropConstraint("orders", "orders_amount_small")],
        before_contract=lambda c: constraint_must_exist(c, "orders", "orders_amount_small"),
        after=gone,
    )


def test_drop_primary_key_says_what_goes_with_it(dsn: str, orders: Conn) -> None:
    with Executor(dsn) as ex:
        plan = ex.plan([DropConstraint("orders", "orders_pkey")])
    (step,) = plan.steps
    assert "its index orders_pkey is dropped with it" in step.description
    assert "without a primary key" in step.description


# --- constraints -------------------------------------------------------------------------


def test_add_foreign_key_on_delete_cascade(dsn: str, orders: Conn) -> None:
    change = AddForeignKey("orders", ("user_id",), "users", on_delete="cascade")

    def not_valid(conn: Conn) -> None:
        constraint_must_exist(
            conn,
            "orders",
            "orders_user_id_fkey",
            validated=False,
            type="f",
            definition_contains=["REFERENCES users(id)", "ON DELETE CASCADE"],
        )
        must_not_insert(
            conn, "INSERT INTO orders (user_id) VALUES (999)", (), pgerr.ForeignKeyViolation
        )

    def validated(conn: Conn) -> None:
        constraint_must_exist(conn, "orders", "orders_user_id_fkey", validated=True, type="f")

    lifecycle(
        dsn,
        orders,
        [change],
        tables=("orders", "users"),
        stop=after_action("add_foreign_key_not_valid"),
        after_expand=not_valid,
        after_abort=lambda c: constraint_must_not_exist(c, "orders", "orders_user_id_fkey"),
        after_finish=validated,
    )
    assert count(orders, "SELECT count(*) FROM orders WHERE user_id = 7") == 20
    orders.execute("DELETE FROM users WHERE id = 7")
    assert count(orders, "SELECT count(*) FROM orders WHERE user_id = 7") == 0


def test_add_check(dsn: str, orders: Conn) -> None:
    change = AddCheck("orders", "amount >= 0", name="orders_amount_nonneg")

    def not_valid(conn: Conn) -> None:
        constraint_must_exist(conn, "orders", "orders_amount_nonneg", validated=False, type="c")
        must_not_insert(
            conn, "INSERT INTO orders (user_id, amount) VALUES (1, -1)", (), pgerr.CheckViolation
        )

    lifecycle(
        dsn,
        orders,
        [change],
        stop=after_action("add_check_not_valid"),
        after_expand=not_valid,
        after_finish=lambda c: constraint_must_exist(
            c, "orders", "orders_amount_nonneg", validated=True, type="c"
        ),
    )


def test_add_unique_from_a_concurrent_index(dsn: str, orders: Conn) -> None:
    def index_only(conn: Conn) -> None:
        index_must_exist(conn, "users_name_key", valid=True, unique=True)
        constraint_must_not_exist(conn, "users", "users_name_key")

    def constraint(conn: Conn) -> None:
        constraint_must_exist(conn, "users", "users_name_key", validated=True, type="u")
        index_must_exist(conn, "users_name_key", valid=True, unique=True)
        must_not_insert(
            conn, "INSERT INTO users (name) VALUES ('user 1')", (), pgerr.UniqueViolation
        )

    lifecycle(
        dsn,
        orders,
        [AddUnique("users", ("name",))],
        tables=("users",),
        stop=after_action("create_index"),
        after_expand=index_only,
        after_abort=lambda c: index_must_not_exist(c, "users_name_key"),
        after_finish=constraint,
    )


def _primary_key_lifecycle(dsn: str, conn: Conn, not_valid: Check, final: Check) -> None:
    """AddUnique(primary_key=True) on a table without one, over a nullable column: a
    concurrent unique index, NOT NULL the online way, then the index becomes the key.
    Stopped after the NOT VALID step, so abort must drop both the index and the check."""
    conn.execute("CREATE TABLE events (code text, payload text)")
    conn.execute("INSERT INTO events SELECT 'e' || g, 'p' FROM generate_series(1, 1500) g")

    def expanded(conn: Conn) -> None:
        index_must_exist(conn, "events_pkey", valid=True, unique=True)
        constraint_must_not_exist(conn, "events", "events_pkey")
        not_valid(conn)
        must_not_insert(conn, "INSERT INTO events (code) VALUES (NULL)")

    def finished(conn: Conn) -> None:
        constraint_must_exist(conn, "events", "events_pkey", validated=True, type="p")
        column_must_exist(conn, "events", "code", nullable=False)
        index_must_exist(conn, "events_pkey", valid=True, unique=True)
        must_not_insert(conn, "INSERT INTO events (code) VALUES ('e1')", (), pgerr.UniqueViolation)
        final(conn)

    lifecycle(
        dsn,
        conn,
        [AddUnique("events", ("code",), primary_key=True)],
        tables=("events",),
        stop=after_action("add_not_null_not_valid", "add_check_not_valid"),
        after_expand=expanded,
        after_abort=lambda c: index_must_not_exist(c, "events_pkey"),
        after_finish=finished,
    )


@pytest.mark.pg(">=18")
def test_add_primary_key_on_nullable_column_pg18(dsn: str, conn: Conn) -> None:
    _primary_key_lifecycle(
        dsn,
        conn,
        lambda c: constraint_must_exist(c, "events", "events_code_not_null", validated=False),
        lambda c: constraint_must_exist(c, "events", "events_code_not_null", validated=True),
    )


@pytest.mark.pg("<18")
def test_add_primary_key_on_nullable_column_pg15_16(dsn: str, conn: Conn) -> None:
    helper = "onlineschema_nn_events_code"
    _primary_key_lifecycle(
        dsn,
        conn,
        lambda c: constraint_must_exist(c, "events", helper, validated=False, type="c"),
        lambda c: constraint_must_not_exist(c, "events", helper),
    )


def test_validate_constraint(dsn: str, orders: Conn) -> None:
    """VALIDATE cannot be undone (PostgreSQL has no way back to NOT VALID): abort leaves
    the constraint validated, and that flag is the only difference in the catalog."""
    orders.execute(
        "ALTER TABLE orders ADD CONSTRAINT orders_amount_small CHECK (amount < 1000) NOT VALID"
    )
    before = vacuumed_snapshots(orders, ["orders"])["orders"]
    change = ValidateConstraint("orders", "orders_amount_small")
    run_until_paused(dsn, [change], "first", lambda step: True)
    constraint_must_exist(orders, "orders", "orders_amount_small", validated=True)
    with Executor(dsn) as ex:
        assert ex.abort("first").state == "aborted"
    after = vacuumed_snapshots(orders, ["orders"])["orders"]
    assert after != before
    assert after.replace('"convalidated": true', '"convalidated": false') == before.replace(
        '"convalidated": true', '"convalidated": false'
    )
    with Executor(dsn) as ex, pytest.raises(PreflightError) as refused:
        ex.apply([change], "second")
    assert "already valid" in str(refused.value)


def test_validate_constraint_runs_under_share_update_exclusive(dsn: str, orders: Conn) -> None:
    orders.execute(
        "ALTER TABLE orders ADD CONSTRAINT orders_amount_small CHECK (amount < 1000) NOT VALID"
    )
    with Executor(dsn) as ex:
        (step,) = ex.plan([ValidateConstraint("orders", "orders_amount_small")]).steps
        assert (step.lock, step.scans) == ("ShareUpdateExclusiveLock", True)
        assert ex.apply([ValidateConstraint("orders", "orders_amount_small")]).state == "completed"
    constraint_must_exist(orders, "orders", "orders_amount_small", validated=True, type="c")


# --- backfills ---------------------------------------------------------------------------


def test_backfill_with_where(dsn: str, orders: Conn) -> None:
    """Stopped half-way; abort keeps the rows already written (a warning says so) and
    leaves the catalog as it was; a new migration fills the rest."""
    change = Backfill("orders", {"note": "'none'"}, where="note IS NULL")
    others = orders.execute("SELECT md5(string_agg(note, ',' ORDER BY id)) FROM orders").fetchone()

    def half_way(conn: Conn) -> None:
        done = count(conn, "SELECT count(*) FROM orders WHERE note = 'none'")
        assert 0 < done < 200

    def finished(conn: Conn) -> None:
        assert count(conn, "SELECT count(*) FROM orders WHERE note IS NULL") == 0
        assert count(conn, "SELECT count(*) FROM orders WHERE note = 'none'") == 200
        assert (
            conn.execute(
                "SELECT md5(string_agg(note, ',' ORDER BY id)) FROM orders WHERE note <> 'none'"
            ).fetchone()
            == others
        )

    with capture_logs() as logs:
        lifecycle(
            dsn,
            orders,
            [change],
            mid_backfill=True,
            settings=SMALL_BATCHES,
            after_expand=half_way,
            after_finish=finished,
        )
    assert any(e["event"] == "abort_keeps_backfilled_rows" for e in logs)


def _keyset_table(conn: Conn) -> None:
    conn.execute("CREATE TABLE codes (code text PRIMARY KEY, n int NOT NULL, label text)")
    conn.execute("INSERT INTO codes SELECT 'c' || g, g, NULL FROM generate_series(1, 1500) g")


def _composite_table(conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE lines (order_id int, line int, qty int, label text,"
        " PRIMARY KEY (order_id, line))"
    )
    conn.execute("INSERT INTO lines SELECT g / 10, g % 10, g, NULL FROM generate_series(1, 1500) g")


KEYSET = {
    "text_key": ("codes", _keyset_table, "code", "n - substr(code, 2)::int"),
    "composite_key": (
        "lines",
        _composite_table,
        "order_id::text || '.' || line",
        "qty - (order_id * 10 + line)",
    ),
}


@pytest.mark.parametrize("case", sorted(KEYSET))
def test_keyset_backfill_lifecycle(dsn: str, conn: Conn, case: str) -> None:
    table, setup, label, _ = KEYSET[case]
    setup(conn)
    change = Backfill(table, {"label": label})
    with Executor(dsn) as ex:
        (step,) = ex.plan([change]).steps
    assert step.details["strategy"] == "keyset"

    def half_way(conn: Conn) -> None:
        done = count(conn, f"SELECT count(*) FROM {table} WHERE label IS NOT NULL")  # noqa: S608 (test constants)
        assert 0 < done < 1500

    def finished(conn: Conn) -> None:
        assert (
            count(conn, f"SELECT count(*) FROM {table} WHERE label IS DISTINCT FROM {label}") == 0  # noqa: S608 (test constants)
        )

    lifecycle(
        dsn,
        conn,
        [change],
        tables=(table,),
        mid_backfill=True,
        settings=SMALL_BATCHES,
        after_expand=half_way,
        after_finish=finished,
    )


@pytest.mark.parametrize("case", sorted(KEYSET))
def test_keyset_backfill_paused_and_resumed_touches_each_row_once(
    dsn: str, conn: Conn, case: str
) -> None:
    """A non-idempotent ``x = x + 1`` over a text key and a composite key: after a pause
    half-way and a resume, every row was incremented exactly once."""
    table, setup, _, drift = KEYSET[case]
    setup(conn)
    column = "n" if table == "codes" else "qty"
    change = Backfill(table, {column: f"{column} + 1"})
    run_until_paused(dsn, [change], "inc", mid_backfill=True, settings=SMALL_BATCHES)
    assert 0 < count(conn, f"SELECT count(*) FROM {table} WHERE {drift} = 1") < 1500  # noqa: S608 (test constants)
    with Executor(dsn, SMALL_BATCHES) as ex:
        assert ex.resume("inc").state == "completed"
    assert conn.execute(f"SELECT {drift} AS d, count(*) FROM {table} GROUP BY 1").fetchall() == [  # noqa: S608 (test constants)
        (1, 1500)
    ]


def test_table_without_primary_key_add_column_uses_ctid_batches(dsn: str, conn: Conn) -> None:
    conn.execute("CREATE TABLE logs (msg text, level int)")
    conn.execute("INSERT INTO logs SELECT 'm' || g, g % 5 FROM generate_series(1, 1500) g")
    fill = "'level ' || level"
    change = AddColumn("logs", "severity", "text", nullable=False, backfill=fill)
    with Executor(dsn) as ex:
        plan = ex.plan([change])
    (backfill,) = plan.phase("backfill")
    assert backfill.details["strategy"] == "ctid"

    def expanded(conn: Conn) -> None:
        column_must_exist(conn, "logs", "severity", nullable=True)
        row = conn.execute(
            "INSERT INTO logs (msg, level) VALUES ('old code', 3) RETURNING severity"
        ).fetchone()
        assert row == ("level 3",)

    def finished(conn: Conn) -> None:
        column_must_exist(conn, "logs", "severity", nullable=False)
        assert count(conn, f"SELECT count(*) FROM logs WHERE severity IS DISTINCT FROM {fill}") == 0  # noqa: S608 (test constants)
        assert count(conn, "SELECT count(*) FROM logs") == 1502

    lifecycle(
        dsn,
        conn,
        [change],
        tables=("logs",),
        settings=SMALL_BATCHES,
        after_expand=expanded,
        after_abort=lambda c: column_must_not_exist(c, "logs", "severity"),
        after_finish=finished,
    )


def test_table_without_primary_key_refuses_a_user_backfill(dsn: str, conn: Conn) -> None:
    conn.execute("CREATE TABLE logs (msg text, level int)")
    conn.execute("INSERT INTO logs SELECT 'm' || g, g % 5 FROM generate_series(1, 100) g")
    before = catalog_snapshot(conn, "logs")
    with Executor(dsn) as ex, pytest.raises(PreflightError) as refused:
        ex.apply([Backfill("logs", {"level": "level + 1"})], "bump")
    text = str(refused.value)
    assert "no primary key" in text and "fix:" in text and "AddUnique" in text
    assert catalog_snapshot(conn, "logs") == before
    assert migration_state(conn, "bump") is None
    assert count(conn, "SELECT sum(level) FROM logs") == sum(g % 5 for g in range(1, 101))


# --- abort at every step -------------------------------------------------------------------

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


class _MoveRowsOnce:
    """After the first backfill batch, updates rows that the ctid pass has not reached
    yet, from another connection, as the application would: their new versions land in
    blocks the pass has already done or past its frozen end."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.moved = 0

    def step_started(self, step: Step, index: int, total: int) -> None:
        pass

    def step_finished(self, step: Step, index: int, total: int, skipped: bool) -> None:
        pass

    def backfill_progress(self, step_id: str, rows_done: int, *rest: Any) -> None:
        if self.moved:
            return
        with psycopg.connect(self.dsn, autocommit=True) as app:
            cur = app.execute(
                "UPDATE logs SET level = level + 10 WHERE token IS NULL AND ctid >= '(4,0)'::tid"
            )
            self.moved = cur.rowcount


def test_table_without_primary_key_volatile_default_reaches_rows_updated_meanwhile(
    dsn: str, conn: Conn
) -> None:
    """Existing rows of a new column with a volatile default all get a value, also those
    the application updates while the ctid backfill runs.

    The ctid strategy relies on ``token IS NULL`` and a frozen last block: a row updated by
    the application moves to a block the pass has already done (or past its end), still
    NULL. The plan's fill trigger on tables without a key fills such a row when it is
    updated; without it the row would stay NULL for good, silently."""
    conn.execute("CREATE TABLE logs (msg text, level int)")
    conn.execute("INSERT INTO logs SELECT 'm' || g, g % 5 FROM generate_series(1, 1500) g")
    change = AddColumn("logs", "token", "uuid", default="gen_random_uuid()")
    mover = _MoveRowsOnce(dsn)
    with Executor(dsn, SMALL_BATCHES, observer=mover) as ex:
        plan = ex.plan([change])
        assert plan.phase("backfill")[0].details["strategy"] == "ctid"
        assert ex.apply([change], "token").state == "completed"
    assert mover.moved > 0
    assert count(conn, "SELECT count(*) FROM logs WHERE token IS NULL") == 0
