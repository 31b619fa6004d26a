"""Bad input gets a clear error and changes nothing.

Every case checks four things: the exception class, that its message names the problem
and a fix, that the catalog rows of the tables involved are byte-for-byte what they were
(``catalog_snapshot`` of ``orders`` and ``users``: pg_class, pg_attribute, pg_attrdef,
pg_index, pg_constraint, pg_trigger), and that no migration was recorded in the
``onlineschema`` state schema. Injection attempts are either quoted as the odd but real
identifier they are, or refused; ``users`` must survive every one of them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pytest
from helpers import (
    DdlRecorder,
    catalog_snapshot,
    column_must_exist,
    count,
    index_must_exist,
    make_orders,
    migration_state,
    state_rows,
)

import onlineschema
from onlineschema import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddIndex,
    AlreadyRunning,
    Backfill,
    Change,
    ConnectionFailed,
    DropConstraint,
    DropIndex,
    DropNotNull,
    Executor,
    PreflightError,
    Refused,
    RetryPolicy,
    SetDefault,
    SetNotNull,
    Settings,
    UnknownMigration,
    UnsupportedStatement,
    ValidateConstraint,
)
from onlineschema.sqlinput import parse_sql

Conn = psycopg.Connection[Any]

#: the injection attempt of the issue, used as a table, column, index name
EVIL = 'orders"; DROP TABLE users; --'
TABLES = ("orders", "users")


@pytest.fixture
def orders(conn: Conn) -> Conn:
    make_orders(conn)
    conn.execute(
        "ALTER TABLE orders ADD CONSTRAINT orders_amount_small CHECK (amount < 1000) NOT VALID"
    )
    conn.execute("CREATE INDEX orders_amount_idx ON orders (amount)")
    return conn


def snapshots(conn: Conn, tables: Sequence[str] = TABLES) -> dict[str, str]:
    return {t: catalog_snapshot(conn, t) for t in tables}


def users_intact(conn: Conn) -> None:
    assert count(conn, "SELECT count(*) FROM users") == 100


def assert_refused(
    conn: Conn,
    call: Callable[[], object],
    error: type[Exception],
    *fragments: str,
) -> Exception:
    """``call`` raises ``error`` whose message contains ``fragments`` and a fix, and
    neither the catalog nor the state schema changed, and no DDL ran anywhere in the
    database during the call (an event trigger, installed by the test beforehand, records
    any: a state schema created or a helper dropped before the refusal shows there)."""
    before = snapshots(conn)
    states = state_rows(conn)
    schema_before = state_schema(conn)
    with DdlRecorder(conn) as ddl, pytest.raises(error) as caught:
        try:
            call()
        finally:
            ddl_run, ddl_count = ddl.seen(), ddl.count()
    exc = caught.value
    assert ddl_run == [], f"DDL ran during a refused request: {ddl_run}"
    assert ddl_count == 0, f"{ddl_count} DDL commands ran (and were rolled back) during the call"
    assert state_schema(conn) == schema_before
    text = str(exc)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    if isinstance(exc, PreflightError):
        assert all(p.fix for p in exc.problems), text
    elif isinstance(exc, Refused):
        assert exc.fix, text
    assert "fix:" in text or "Supported statements" in text, text
    assert "Traceback" not in text
    assert snapshots(conn) == before
    assert state_rows(conn) == states
    users_intact(conn)
    return exc


def state_schema(conn: Conn) -> tuple[Any, ...] | None:
    """The oid of the onlineschema schema and how many relations it holds (None: absent)."""
    return conn.execute(
        "SELECT n.oid::int, (SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid)"
        " FROM pg_namespace n WHERE n.nspname = 'onlineschema'"
    ).fetchone()


def test_the_ddl_recorder_sees_ddl_committed_or_rolled_back(dsn: str, orders: Conn) -> None:
    """The recorder assert_refused relies on sees the state schema being created by
    another session, a helper dropped, and DDL that was rolled back (counted only)."""
    with DdlRecorder(orders) as ddl:
        with Executor(dsn) as ex:
            ex.store.ensure()
        with psycopg.connect(dsn) as other:  # a transaction, rolled back
            other.execute("ALTER TABLE orders ADD COLUMN gone int")
            other.rollback()
        orders.execute("DROP INDEX orders_amount_idx")
        seen, fired = ddl.seen(), ddl.count()
    tags = [row[1] for row in seen]
    assert "CREATE SCHEMA" in tags and "CREATE TABLE" in tags, seen
    assert ("sql_drop", "DROP INDEX", "index public.orders_amount_idx") in [r[:3] for r in seen]
    assert "ALTER TABLE" not in tags  # rolled back with its transaction ...
    assert fired == len(seen) + 1  # ... but counted
    assert state_schema(orders) is not None


def apply(dsn: str, changes: Sequence[Change], name: str = "bad") -> Callable[[], object]:
    return lambda: onlineschema.apply(dsn, changes, name)


# --- refused by preflight: (changes, fragments of the message) ----------------------------

CASES: dict[str, tuple[list[Change], tuple[str, ...]]] = {
    "unknown table": (
        [AddColumn("nope", "x", "text")],
        ("table 'nope' does not exist",),
    ),
    "unknown schema": (
        [AddColumn("orders", "x", "text", schema="nope")],
        ("'orders' does not exist (looked in schema nope)",),
    ),
    "unknown column": (
        [SetNotNull("orders", "nope")],
        ("column 'nope' does not exist in table public.orders", "columns: amount, id"),
    ),
    "column already exists": (
        [AddColumn("orders", "note", "text")],
        ("column 'note' already exists in table public.orders",),
    ),
    "index already exists": (
        [AddIndex("orders", columns=("note",), name="orders_amount_idx")],
        ("index 'orders_amount_idx' already exists",),
    ),
    "index name taken by a table": (
        [AddIndex("orders", columns=("note",), name="users")],
        ("'users' already exists",),
    ),
    "constraint already exists": (
        [AddCheck("orders", "amount > 0", name="orders_amount_small")],
        ("constraint 'orders_amount_small' already exists on public.orders",),
    ),
    "unknown type": (
        [AddColumn("orders", "x", "nosuchtype")],
        ("type 'nosuchtype' does not exist",),
    ),
    "type that is not a type name": (
        [AddColumn("orders", "x", "text DEFAULT 1")],
        ("not a single SQL type name",),
    ),
    "serial column (rewrites the table)": (
        [AddColumn("orders", "seq", "bigserial")],
        ("rewrites the whole table",),
    ),
    "default that does not compile": (
        [AddColumn("orders", "x", "int", default="nosuchfn()")],
        ("default 'nosuchfn()' does not compile", "function nosuchfn() does not exist"),
    ),
    "default of the wrong type": (
        [AddColumn("orders", "x", "int", default="'abc'")],
        ("does not compile", 'invalid input syntax for type integer: "abc"'),
    ),
    "default that references a column": (
        [SetDefault("orders", "amount", "n + 1")],
        ("a DEFAULT cannot refer to other columns",),
    ),
    "backfill expression with an unknown column": (
        [AddColumn("orders", "x", "int", nullable=False, backfill="nosuchcol * 2")],
        ("backfill expression", "does not compile", 'column "nosuchcol" does not exist'),
    ),
    "backfill of an unknown column": (
        [Backfill("orders", {"nosuch": "1"})],
        ("column 'nosuch' does not exist",),
    ),
    "WHERE that does not compile": (
        [Backfill("orders", {"amount": "1"}, where="nosuch > 1")],
        ("backfill condition 'nosuch > 1' does not compile",),
    ),
    "WHERE that is not a condition": (
        [Backfill("orders", {"amount": "1"}, where="amount")],
        ("argument of WHERE must be type boolean",),
    ),
    "check that does not compile": (
        [AddCheck("orders", "nosuchfn(amount)")],
        ("check expression", "does not compile"),
    ),
    "NOT NULL without default or backfill": (
        [AddColumn("orders", "x", "text", nullable=False)],
        ("NOT NULL with no default and no backfill", "existing rows would have no value"),
    ),
    "NOT NULL on a new column nothing fills": (
        [AddColumn("orders", "x", "text"), SetNotNull("orders", "x")],
        ("cannot be made NOT NULL",),
    ),
    "identifier over 63 bytes": (
        [AddColumn("orders", "c" * 64, "text")],
        ("is 64 bytes long", "at most 63 bytes"),
    ),
    "identifier over 63 bytes in UTF-8": (
        [AddIndex("orders", columns=("note",), name="é" * 32)],
        ("is 64 bytes long",),
    ),
    "injection as table name": (
        [AddColumn(EVIL, "x", "text")],
        (f"table {EVIL!r} does not exist",),
    ),
    "injection as column name": (
        [SetNotNull("orders", EVIL)],
        (f"column {EVIL!r} does not exist",),
    ),
    "injection as index name to drop": (
        [DropIndex(EVIL)],
        (f"index {EVIL!r} does not exist",),
    ),
    "injection as constraint name to validate": (
        [ValidateConstraint("orders", EVIL)],
        (f"constraint {EVIL!r} does not exist",),
    ),
    "injection via default": (
        [AddColumn("orders", "x", "int", default="1; DROP TABLE users")],
        ("not a single SQL expression", "';'"),
    ),
    "injection via default closing the parenthesis": (
        [AddColumn("orders", "x", "int", default="1) ; DROP TABLE users; --")],
        ("not a single SQL expression",),
    ),
    "injection via backfill expression": (
        [Backfill("orders", {"amount": "1); DROP TABLE users; --"})],
        ("not a single SQL expression",),
    ),
    "injection via WHERE": (
        [Backfill("orders", {"amount": "1"}, where="true; DROP TABLE users")],
        ("not a single SQL expression",),
    ),
    "injection via check": (
        [AddCheck("orders", "amount > 0) NOT VALID; DROP TABLE users; --")],
        ("not a single SQL expression",),
    ),
    "injection via type": (
        [AddColumn("orders", "x", "int; DROP TABLE users")],
        ("not a single SQL type name",),
    ),
    "data-changing subquery": (
        [Backfill("orders", {"amount": "(WITH d AS (DELETE FROM users RETURNING 1) SELECT 1)"})],
        ("data-changing statement",),
    ),
    "foreign key to columns without a unique key": (
        [AddForeignKey("orders", ("amount",), "users", ("name",))],
        ("no unique constraint or primary key on public.users (name)", "AddUnique"),
    ),
    "foreign key column count mismatch": (
        [AddForeignKey("orders", ("user_id", "amount"), "users", ("id",))],
        ("has 2 columns but references 1",),
    ),
    "foreign key to an unknown table": (
        [AddForeignKey("orders", ("user_id",), "nope")],
        ("referenced table 'nope' does not exist",),
    ),
    "foreign key action that does not exist": (
        [AddForeignKey("orders", ("user_id",), "users", on_delete="explode")],
        ("foreign key action 'explode' is not one of",),
    ),
    "same column added twice": (
        [AddColumn("orders", "x", "text"), AddColumn("orders", "x", "int")],
        ("column 'x' already exists",),
    ),
    "SET NOT NULL and DROP NOT NULL on one column": (
        [SetNotNull("orders", "amount"), DropNotNull("orders", "amount")],
        ("conflicting changes", "public.orders.amount"),
    ),
    "DROP NOT NULL and SET NOT NULL on one column": (
        [DropNotNull("orders", "n"), SetNotNull("orders", "n")],
        ("conflicting changes", "public.orders.n"),
    ),
    "same index added twice": (
        [
            AddIndex("orders", columns=("note",), name="orders_x_idx"),
            AddIndex("orders", columns=("user_id",), name="orders_x_idx"),
        ],
        ("index 'orders_x_idx' already exists",),
    ),
    "drop an index that backs a constraint": (
        [DropIndex("orders_pkey")],
        ("index 'orders_pkey' backs constraint 'orders_pkey'", "DropConstraint('orders'"),
    ),
    "drop an unknown constraint": (
        [DropConstraint("orders", "nope")],
        ("constraint 'nope' does not exist on public.orders", "orders_amount_small"),
    ),
    "validate a primary key": (
        [ValidateConstraint("orders", "orders_pkey")],
        ("constraint 'orders_pkey' on public.orders is a primary key", "validates only"),
    ),
    "backfill of the key it batches over": (
        [Backfill("orders", {"id": "id + 1"})],
        ("part of the key it batches over",),
    ),
    "several problems at once": (
        [AddColumn("nope", "x", "text"), SetNotNull("orders", "nope")],
        ("2 problems", "table 'nope'", "column 'nope'"),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_before_any_ddl(dsn: str, orders: Conn, case: str) -> None:
    changes, fragments = CASES[case]
    exc = assert_refused(orders, apply(dsn, changes), PreflightError, *fragments)
    assert getattr(exc, "exit_code", None) == 2


def test_plan_refuses_the_same_way_without_writing(dsn: str, orders: Conn) -> None:
    assert_refused(
        orders,
        lambda: onlineschema.plan(dsn, [AddColumn("orders", "note", "text")]),
        PreflightError,
        "already exists",
    )


# --- bad input PostgreSQL itself would reject only when the DDL runs -------------------------
# The preflight must refuse each of these (exit 2) before anything is written, rather than
# record the migration and let the DDL fail with StepFailed (exit 1).

NOT_YET_REFUSED: dict[str, tuple[list[Change], tuple[str, ...]]] = {
    "index expression with an unknown column": (
        [AddIndex("orders", expressions=("lower(nosuchcol)",))],
        ("nosuchcol",),
    ),
    "index method that does not exist": (
        [AddIndex("orders", columns=("amount",), using="nosuchmethod")],
        ("nosuchmethod",),
    ),
    "foreign key between columns of incompatible types": (
        [AddForeignKey("orders", ("note",), "users")],
        ("note",),
    ),
    "check with a subquery": (
        [AddCheck("orders", "amount < (SELECT 5)")],
        ("subquery",),
    ),
}


@pytest.mark.parametrize("case", list(NOT_YET_REFUSED))
def test_refused_before_any_ddl_where_postgres_would_reject_the_ddl(
    dsn: str, orders: Conn, case: str
) -> None:
    changes, fragments = NOT_YET_REFUSED[case]
    assert_refused(orders, apply(dsn, changes), PreflightError, *fragments)


# --- injection through new names: quoted, created as the odd name it is ------------------


def test_injection_as_new_column_name_creates_exactly_that_column(dsn: str, orders: Conn) -> None:
    result = onlineschema.apply(dsn, [AddColumn("orders", EVIL, "text", default="'x'")], "evil")
    assert result.state == "completed"
    column_must_exist(orders, "orders", EVIL, type="text")
    assert (
        count(orders, 'SELECT count(*) FROM orders WHERE "orders""; DROP TABLE users; --" = \'x\'')
        == 2000
    )
    users_intact(orders)


def test_injection_as_new_column_name_from_sql(dsn: str, orders: Conn) -> None:
    changes = parse_sql('ALTER TABLE orders ADD COLUMN "orders""; DROP TABLE users; --" int;')
    assert [(type(c), c.column) for c in changes] == [(AddColumn, EVIL)]  # type: ignore[attr-defined]
    assert onlineschema.apply(dsn, changes, "evil_sql").state == "completed"
    column_must_exist(orders, "orders", EVIL, type="integer")
    users_intact(orders)


def test_injection_as_new_index_name_creates_exactly_that_index(dsn: str, orders: Conn) -> None:
    change = AddIndex("orders", columns=("note",), name=EVIL)
    assert onlineschema.apply(dsn, [change], "evil_index").state == "completed"
    index_must_exist(orders, EVIL, valid=True)
    users_intact(orders)
    # and it can be dropped by that name
    assert onlineschema.apply(dsn, [DropIndex(EVIL)], "evil_drop").state == "completed"
    users_intact(orders)


def test_injection_as_new_constraint_name(dsn: str, orders: Conn) -> None:
    change = AddCheck("orders", "amount >= 0", name=EVIL)
    assert onlineschema.apply(dsn, [change], "evil_check").state == "completed"
    assert count(orders, "SELECT count(*) FROM pg_constraint WHERE conname = %s", (EVIL,)) == 1
    users_intact(orders)


# --- SQL input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "error", "fragments"),
    [
        (
            "ALTER TABLE orders ADD COLUMN",
            Refused,
            ("could not be parsed", "syntax error", "line 1"),
        ),
        (
            "ALTER TABLE orders ADD COLUMN x text;\nALTER TABLE orders ALTER x SET NOTNULL;",
            Refused,
            ("could not be parsed", "line 2"),
        ),
        ("TRUNCATE users", UnsupportedStatement, ("TRUNCATE", "Supported statements")),
        (
            "SELECT 1; DROP TABLE users",
            UnsupportedStatement,
            ("a SELECT is not a schema change", "allow_raw"),
        ),
        (
            "GRANT SELECT ON orders TO public",
            UnsupportedStatement,
            ("line 1", "Supported statements"),
        ),
    ],
)
def test_sql_input_refused(
    orders: Conn, text: str, error: type[Exception], fragments: tuple[str, ...]
) -> None:
    exc = assert_refused(orders, lambda: parse_sql(text), error, *fragments)
    assert getattr(exc, "exit_code", None) == 2


def test_sql_with_only_transaction_control_is_an_empty_migration(dsn: str, orders: Conn) -> None:
    """Nothing to do is not bad input: an empty plan, recorded as done, catalog untouched
    (tests/test_histories.py covers the CLI side)."""
    changes = parse_sql("BEGIN;\nSET lock_timeout = '1s';\nCOMMIT;")
    assert changes == []
    before = snapshots(orders)
    result = onlineschema.apply(dsn, changes, "empty")
    assert (result.state, len(result.plan.steps)) == ("completed", 0)
    assert migration_state(orders, "empty") == "completed"
    assert snapshots(orders) == before


# --- migrations by name ------------------------------------------------------------------


def executor_call(dsn: str, action: str, name: str) -> Callable[[], object]:
    def call() -> object:
        with Executor(dsn) as ex:
            return getattr(ex, action)(name)

    return call


@pytest.mark.parametrize("action", ["resume", "abort", "status", "pause", "contract"])
def test_unknown_migration(dsn: str, orders: Conn, action: str) -> None:
    assert_refused(
        orders,
        executor_call(dsn, action, "nope"),
        UnknownMigration,
        "no migration named 'nope'",
        "status",
    )


def test_unknown_migration_lists_the_known_ones(dsn: str, orders: Conn) -> None:
    onlineschema.apply(dsn, [AddColumn("orders", "x", "text")], "known_one")
    assert_refused(
        orders, executor_call(dsn, "abort", "nope"), UnknownMigration, "known: known_one"
    )


def test_same_name_with_other_changes_is_refused(dsn: str, orders: Conn) -> None:
    onlineschema.apply(dsn, [AddColumn("orders", "x", "text")], "m")
    assert_refused(
        orders,
        apply(dsn, [AddColumn("orders", "y", "text")], "m"),
        Refused,
        "migration 'm' already exists with different changes",
        "another --name",
    )


def test_dsn_that_does_not_connect(orders: Conn) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    bad = f"postgresql://postgres@127.0.0.1:{port}/nope?connect_timeout=3"
    for call in (
        lambda: Executor(bad),
        lambda: onlineschema.apply(bad, [AddColumn("orders", "x", "text")], "m"),
        lambda: onlineschema.plan(bad, [AddColumn("orders", "x", "text")]),
    ):
        exc = assert_refused(orders, call, ConnectionFailed, "could not connect to the database")
        assert exc.exit_code == 2
        # one clean message: no chained psycopg error for a traceback to show
        assert exc.__cause__ is None and exc.__suppress_context__
        assert len(str(exc).splitlines()) <= 3


def test_malformed_dsn(orders: Conn) -> None:
    exc = assert_refused(
        orders, lambda: Executor("host=127.0.0.1 port=notaport x"), ConnectionFailed
    )
    assert "invalid connection string" in str(exc) or "could not connect" in str(exc)


# --- a second apply of the running migration ----------------------------------------------


def test_second_apply_of_a_running_migration_is_refused(dsn: str, orders: Conn) -> None:
    """The first apply is held up by a session in a long transaction on ``orders`` (the
    lock guard waits it out, retrying); meanwhile a second apply, resume or abort of the
    same migration must be refused with AlreadyRunning and change nothing."""
    changes = [AddColumn("orders", "status", "text")]
    release = threading.Event()
    patient = Settings(retry=RetryPolicy(max_attempts=10_000, max_wait=60, backoff_max=0.05))
    outcome: dict[str, Any] = {}

    blocker = psycopg.connect(dsn, autocommit=True)
    blocker.execute("BEGIN")
    blocker.execute("LOCK TABLE orders IN ACCESS SHARE MODE")

    def first() -> None:
        try:
            with Executor(dsn, patient, sleep=lambda s: release.wait(min(s, 0.05))) as ex:
                outcome["result"] = ex.apply(changes, "busy")
        except Exception as exc:  # reported by the assertions below
            outcome["error"] = exc

    thread = threading.Thread(target=first)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while migration_state(orders, "busy") != "running":
            assert time.monotonic() < deadline, "the first apply never started"
            assert thread.is_alive(), outcome
            time.sleep(0.02)
        row = orders.execute(
            "SELECT state, updated_at, plan_hash FROM onlineschema.migrations WHERE name = 'busy'"
        ).fetchone()

        for call in (
            apply(dsn, changes, "busy"),
            executor_call(dsn, "resume", "busy"),
            executor_call(dsn, "abort", "busy"),
        ):
            with pytest.raises(AlreadyRunning) as caught:
                call()
            assert "'busy' is being run by another process" in str(caught.value)
            assert caught.value.fix and "status" in caught.value.fix
            assert caught.value.exit_code == 2
        assert state_rows(orders) == [("busy", "running")]
        assert (
            orders.execute(
                "SELECT state, updated_at, plan_hash FROM onlineschema.migrations"
                " WHERE name = 'busy'"
            ).fetchone()
            == row
        )
    finally:
        blocker.execute("COMMIT")
        blocker.close()
        release.set()
        thread.join(timeout=60)
    assert "error" not in outcome, outcome
    assert outcome["result"].state == "completed"
    column_must_exist(orders, "orders", "status", type="text")
