"""What an earlier failed run left behind, under the name a migration asks for: an
INVALID index with the same definition is repaired (dropped concurrently, built again),
one with another definition is refused before any DDL with the statement that removes
it; a NOT VALID constraint with the same definition is validated, not added again, one
with another definition is refused the same way."""

from __future__ import annotations

import pytest
from harness import Conn, vacuumed_snapshots
from helpers import constraint_must_exist, constraint_names, index_must_exist, must_not_insert
from psycopg import errors as pgerr

from onlineschema import AddCheck, AddForeignKey, AddIndex, Executor, PreflightError, SetNotNull
from onlineschema.sqlinput import parse_sql


def failed_unique_build(conn: Conn, sql: str) -> None:
    """``sql`` (a CREATE UNIQUE INDEX CONCURRENTLY) fails on a duplicate, leaving an
    invalid index; the duplicate is then removed."""
    conn.execute("UPDATE orders SET note = 'dup', amount = 0 WHERE id IN (1, 2)")
    with pytest.raises(pgerr.UniqueViolation):
        conn.execute(sql)
    conn.execute("UPDATE orders SET note = 'not a dup' WHERE id = 2")


@pytest.mark.parametrize("how", ["sql", "change"])
def test_invalid_index_with_the_same_definition_is_repaired(
    dsn: str, orders: Conn, how: str
) -> None:
    failed_unique_build(orders, "CREATE UNIQUE INDEX CONCURRENTLY orders_note_key ON orders (note)")
    index_must_exist(orders, "orders_note_key", valid=False)
    changes = (
        parse_sql("CREATE UNIQUE INDEX orders_note_key ON orders (note);")
        if how == "sql"
        else [AddIndex("orders", columns=("note",), unique=True, name="orders_note_key")]
    )
    with Executor(dsn) as ex:
        plan = ex.plan(changes)
        assert [s.action for s in plan.steps] == ["create_index"]
        assert "repairs the invalid index" in plan.steps[0].description
        assert ex.apply(changes, "repair").state == "completed"
    index_must_exist(orders, "orders_note_key", valid=True, unique=True)
    must_not_insert(orders, "INSERT INTO orders (note) VALUES ('dup')", (), pgerr.UniqueViolation)


def test_invalid_index_with_another_definition_is_refused_before_ddl(
    dsn: str, orders: Conn
) -> None:
    failed_unique_build(
        orders, "CREATE UNIQUE INDEX CONCURRENTLY orders_note_key ON orders (note, amount)"
    )
    before = vacuumed_snapshots(orders, ["orders"])
    with Executor(dsn) as ex, pytest.raises(PreflightError) as err:
        ex.apply(
            [AddIndex("orders", columns=("note",), unique=True, name="orders_note_key")], "other"
        )
    text = str(err.value)
    assert "is INVALID" in text and "defined differently" in text, text
    assert "(note, amount)" in text
    assert 'DROP INDEX CONCURRENTLY "public"."orders_note_key"' in text
    assert vacuumed_snapshots(orders, ["orders"]) == before
    # a valid index of the name is still "already exists"
    orders.execute("DROP INDEX orders_note_key; CREATE INDEX orders_note_key ON orders (note)")
    with Executor(dsn) as ex, pytest.raises(PreflightError) as err:
        ex.apply(
            [AddIndex("orders", columns=("note",), unique=True, name="orders_note_key")],
            "valid_one",
        )
    assert "already exists" in str(err.value)


def test_not_valid_check_with_the_same_definition_is_validated_not_added(
    dsn: str, orders: Conn
) -> None:
    orders.execute("ALTER TABLE orders ADD CONSTRAINT amount_nonneg CHECK (amount >= 0) NOT VALID")
    change = AddCheck("orders", "amount >= 0", name="amount_nonneg")
    with Executor(dsn) as ex:
        plan = ex.plan([change])
        assert [s.action for s in plan.steps] == ["validate_constraint"]
        assert "left NOT VALID by an earlier run" in plan.steps[0].description
        assert ex.apply([change], "check").state == "completed"
    constraint_must_exist(orders, "orders", "amount_nonneg", validated=True)
    # another definition under that name: refused with the fix
    orders.execute("ALTER TABLE orders ADD CONSTRAINT amount_small CHECK (amount < 1000) NOT VALID")
    with Executor(dsn) as ex, pytest.raises(PreflightError) as err:
        ex.apply([AddCheck("orders", "amount < 500", name="amount_small")], "other")
    assert "already exists on public.orders, NOT VALID" in str(
        err.value
    ) and 'DROP CONSTRAINT "amount_small"' in str(err.value)
    constraint_must_exist(orders, "orders", "amount_small", validated=False)


def test_not_valid_foreign_key_left_behind_is_validated(dsn: str, orders: Conn) -> None:
    orders.execute(
        "ALTER TABLE orders ADD CONSTRAINT orders_user_id_fkey FOREIGN KEY (user_id)"
        " REFERENCES users (id) NOT VALID"
    )
    change = AddForeignKey("orders", ("user_id",), "users", name="orders_user_id_fkey")
    with Executor(dsn) as ex:
        assert [s.action for s in ex.plan([change]).steps] == ["validate_constraint"]
        assert ex.apply([change], "fk").state == "completed"
    constraint_must_exist(orders, "orders", "orders_user_id_fkey", validated=True)
    # the same name with another action is not the same constraint
    orders.execute(
        "ALTER TABLE orders DROP CONSTRAINT orders_user_id_fkey;"
        "ALTER TABLE orders ADD CONSTRAINT orders_user_id_fkey FOREIGN KEY (user_id)"
        " REFERENCES users (id) ON DELETE CASCADE NOT VALID"
    )
    with Executor(dsn) as ex, pytest.raises(PreflightError) as err:
        ex.apply([change], "fk_other")
    assert "defined differently" in str(err.value)


@pytest.mark.pg("<18")
def test_not_null_helper_check_left_not_valid_is_validated_not_added(
    dsn: str, orders: Conn
) -> None:
    orders.execute(
        "ALTER TABLE orders ADD CONSTRAINT onlineschema_nn_orders_amount"
        " CHECK (amount IS NOT NULL) NOT VALID"
    )
    change = SetNotNull("orders", "amount")
    with Executor(dsn) as ex:
        plan = ex.plan([change])
        assert [s.action for s in plan.steps] == [
            "validate_constraint",
            "set_not_null",
            "drop_helper_check",
        ]
        assert "left NOT VALID by an earlier run" in plan.steps[0].description
        assert ex.apply([change], "nn").state == "completed"
    row = orders.execute(
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'orders'::regclass"
        " AND attname = 'amount'"
    ).fetchone()
    assert row == (True,)
    assert "onlineschema_nn_orders_amount" not in constraint_names(orders, "orders")


@pytest.mark.pg(">=18")
def test_not_null_constraint_left_not_valid_is_validated_not_added(dsn: str, orders: Conn) -> None:
    orders.execute(
        "ALTER TABLE orders ADD CONSTRAINT orders_amount_not_null NOT NULL amount NOT VALID"
    )
    change = SetNotNull("orders", "amount")
    with Executor(dsn) as ex:
        assert [s.action for s in ex.plan([change]).steps] == ["validate_constraint"]
        assert ex.apply([change], "nn").state == "completed"
    constraint_must_exist(orders, "orders", "orders_amount_not_null", validated=True)
