"""Breaking changes through expand/contract (issue 5), against a real server.

Each change kind runs apply -> checks -> abort -> checks -> apply -> contract -> checks.
While the expand window is open, an "old application" writes the old column and a
"new application" writes the new one (each on its own connection, inserting, updating
and deleting its own rows, and updating rows that existed before, which the backfill
copies at the same time: ``slow_backfill`` stretches the backfill so that the two race
on the same rows); every write must show in both columns, none lost.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import pytest
from helpers import (
    catalog_snapshot,
    column_must_exist,
    column_must_not_exist,
    constraint_must_exist,
    constraint_must_not_exist,
    count,
    index_must_exist,
    index_must_not_exist,
    invalid_indexes,
    migration_state,
    relfilenode,
    trigger_names,
)
from psycopg import errors as pgerr
from psycopg import sql

from onlineschema import (
    AddIndex,
    AlterColumnType,
    BackfillSettings,
    Change,
    DropColumn,
    DropTable,
    Executor,
    PreflightError,
    Refused,
    RenameColumn,
    Result,
    RetryPolicy,
    Settings,
)
from onlineschema.plan import Plan
from onlineschema.sqlinput import parse_sql

Conn = psycopg.Connection[Any]

#: small batches, so that the writers run during the backfill; quick lock retries
SETTINGS = Settings(
    lock_timeout=0.5,
    retry=RetryPolicy(max_attempts=200, max_wait=60, backoff_initial=0.01, backoff_max=0.2),
    backfill=BackfillSettings(batch_initial=100, batch_max=100, duty_cycle=1.0, sleep=0.005),
)


def run(dsn: str, changes: Sequence[Change], name: str) -> Result:
    with Executor(dsn, SETTINGS) as ex:
        return ex.apply(changes, name)


def contract(dsn: str, name: str) -> Result:
    with Executor(dsn, SETTINGS) as ex:
        return ex.contract(name)


def abort(dsn: str, name: str) -> Result:
    with Executor(dsn, SETTINGS) as ex:
        return ex.abort(name)


def plan(dsn: str, changes: Sequence[Change]) -> Plan:
    with Executor(dsn, SETTINGS) as ex:
        return ex.plan(changes)


def refusal(dsn: str, changes: Sequence[Change]) -> str:
    with pytest.raises(Refused) as info:
        plan(dsn, changes)
    return str(info.value)


def leftovers(conn: Conn) -> list[str]:
    """Anything the migrations named ``onlineschema*`` left in the user's schema."""
    rows = conn.execute(
        "SELECT 'column ' || attrelid::regclass || '.' || attname FROM pg_attribute"
        " WHERE attname LIKE '%%onlineschema%%' AND NOT attisdropped AND attnum > 0"
        "  AND (SELECT relkind FROM pg_class WHERE oid = attrelid) = 'r'"
        " UNION ALL SELECT 'relation ' || relname FROM pg_class"
        "  WHERE relname LIKE '%%onlineschema%%' AND relnamespace = 'public'::regnamespace"
        " UNION ALL SELECT 'function ' || proname FROM pg_proc WHERE proname LIKE '%%onlineschema%%'"
        " UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgname LIKE '%%onlineschema%%'"
        " UNION ALL SELECT 'constraint ' || conname FROM pg_constraint"
        "  WHERE conname LIKE '%%onlineschema%%'"
    ).fetchall()
    return sorted(r[0] for r in rows)


def snapshot(conn: Conn, table: str) -> str:
    """The table's catalog rows, oids left out: on PostgreSQL 18 a NOT NULL taken off and
    put back is a new pg_constraint row, the same constraint under a new oid."""
    conn.execute(sql.SQL("VACUUM {}").format(sql.Identifier(table)))
    return re.sub(
        r'"oid": "\d+"', '"oid": ?', catalog_snapshot(conn, table, ignore_dropped_columns=True)
    )


# --- the two application versions ------------------------------------------------------


class App(threading.Thread):
    """One application version: inserts rows writing ``column``, then updates and deletes
    its own rows, each statement in its own transaction. ``rows`` holds the last value
    it wrote to each row it still has. A column that does not exist yet (the new code,
    before the expand phase added it) is waited for; any other error stops the thread
    and fails the test."""

    def __init__(
        self,
        dsn: str,
        table: str,
        column: str,
        value: Callable[[random.Random, int], Any],
        *,
        extra: dict[str, Any] | None = None,
        seed: int = 1,
        old_ids: Sequence[int] = (),
    ) -> None:
        super().__init__(daemon=True, name=f"app-{column}")
        self.dsn, self.table, self.column, self.value = dsn, table, column, value
        self.extra = extra or {}
        self.rng = random.Random(seed)
        self.rows: dict[int, Any] = {}
        #: rows that existed before (the backfill copies them too): half of the updates
        #: go to one of these; ``old_rows`` holds the last value written to each
        self.old_ids = list(old_ids)
        self.old_rows: dict[int, Any] = {}
        self.old_writes = 0
        self.deleted: set[int] = set()
        self.writes = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None) as conn:
                self._loop(conn)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def _loop(self, conn: Conn) -> None:
        t, col = sql.Identifier(self.table), sql.Identifier(self.column)
        cols = sql.SQL(", ").join([col, *(sql.Identifier(k) for k in self.extra)])
        marks = sql.SQL(", ").join([sql.Placeholder()] * (1 + len(self.extra)))
        insert = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id::bigint").format(
            t, cols, marks
        )
        update = sql.SQL("UPDATE {} SET {} = %s WHERE id = %s").format(t, col)
        delete = sql.SQL("DELETE FROM {} WHERE id = %s").format(t)
        n = 0
        while not self._halt.is_set():
            n += 1
            live = list(self.rows)
            roll = self.rng.random()
            try:
                if roll < 0.4 or len(live) < 5:
                    v = self.value(self.rng, n)
                    row = conn.execute(insert, [v, *self.extra.values()]).fetchone()
                    assert row is not None
                    self.rows[int(row[0])] = v
                elif roll < 0.65 and self.old_ids:
                    rid, v = self.rng.choice(self.old_ids), self.value(self.rng, n)
                    conn.execute(update, [v, rid])
                    self.old_rows[rid] = v
                    self.old_writes += 1
                elif roll < 0.9:
                    rid, v = self.rng.choice(live), self.value(self.rng, n)
                    conn.execute(update, [v, rid])
                    self.rows[rid] = v
                else:
                    rid = self.rng.choice(live)
                    conn.execute(delete, [rid])
                    del self.rows[rid]
                    self.deleted.add(rid)
                self.writes += 1
            except pgerr.UndefinedColumn:
                if self.writes:
                    raise  # the column went away while we wrote it
                time.sleep(0.005)
            time.sleep(0.002)

    def stop(self) -> None:
        self._halt.set()
        self.join(60)
        assert not self.is_alive(), f"{self.name} is stuck"
        if self.error is not None:
            raise AssertionError(f"{self.name} failed: {self.error!r}") from self.error
        assert self.writes > 0, f"{self.name} wrote nothing"


def check_apps(
    conn: Conn,
    table: str,
    apps: Sequence[App],
    columns: Sequence[str],
    same: Callable[[Any, Any], bool],
) -> None:
    """Every row an app still has, and every row that existed before that it updated,
    shows its last write in every one of ``columns`` (``same(read, written)``); every row
    it deleted is gone."""
    for app in apps:
        for rid, written in {**app.old_rows, **app.rows}.items():
            row = conn.execute(
                sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
                    sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(table)
                ),
                [rid],
                prepare=False,  # the column's type changes between calls
            ).fetchone()
            assert row is not None, f"row {rid} written by {app.name} is lost"
            for col, read in zip(columns, row, strict=True):
                assert same(read, written), (
                    f"row {rid}: {app.name} wrote {written!r}, {col} holds {read!r}"
                )
        if app.deleted:
            left = count(
                conn,
                sql.SQL("SELECT count(*) FROM {} WHERE id = ANY(%s)")
                .format(sql.Identifier(table))
                .as_string(None),
                [list(app.deleted)],
            )
            assert left == 0, f"{left} rows deleted by {app.name} are back"


class Apps:
    """Start both application versions; stop them and check them on leaving."""

    def __init__(self, *apps: App) -> None:
        self.apps = apps

    def __enter__(self) -> Apps:
        for app in self.apps:
            app.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for app in self.apps:
            app.stop()

    def wait_for_writes(self, n: int = 20, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        for app in self.apps:
            start = app.writes
            while app.writes < start + n:
                assert app.error is None, f"{app.name} failed: {app.error!r}"
                assert time.monotonic() < deadline, f"{app.name} does not write"
                time.sleep(0.01)


def run_with_apps(dsn: str, changes: Sequence[Change], name: str, *apps: App) -> Result:
    """Apply with the apps writing during the whole expand window, and a while after.
    Apps with ``old_ids`` must have updated such rows many times while the migration ran
    (with ``slow_backfill``, mostly while its backfill did)."""
    with Apps(*apps) as running:
        before = {app: app.old_writes for app in apps}
        result = run(dsn, changes, name)
        for app in apps:
            during = app.old_writes - before[app]
            assert during >= 20 or not app.old_ids, (
                f"{app.name} updated rows that existed before only {during} times during the run"
            )
        running.wait_for_writes()
    return result


#: makes each UPDATE statement of onlineschema's sessions (the backfill's batches) wait
#: 20 ms after its snapshot is taken and before it locks its rows, and 20 ms after it has
#: updated them, before its commit: the applications' writes to the same rows land in
#: both windows (the batch must not overwrite them with a stale copy, nor lose them)
SLOW_BACKFILL = """
CREATE FUNCTION slow_backfill() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF starts_with(current_setting('application_name'), 'onlineschema') THEN
        PERFORM pg_sleep(0.02);
    END IF;
    RETURN NULL;
END $$;
"""


def slow_backfill(conn: Conn, table: str) -> None:
    if conn.execute("SELECT to_regproc('slow_backfill')").fetchone() == (None,):
        conn.execute(SLOW_BACKFILL)
    for when in ("BEFORE", "AFTER"):
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER {} {} UPDATE ON {} FOR EACH STATEMENT"
                " EXECUTE FUNCTION slow_backfill()"
            ).format(
                sql.Identifier(f"slow_backfill_{when.lower()}"),
                sql.SQL(when),
                sql.Identifier(table),
            )
        )


# ================================================================ type change in place


def test_binary_coercible_type_changes_keep_the_files(dsn: str, conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE t (id int PRIMARY KEY, a varchar(10), b varchar(10), c numeric(10,2),"
        " d numeric(8,3), e text, f cidr);"
        "CREATE INDEX t_a_idx ON t (a); CREATE INDEX t_c_idx ON t (c); CREATE INDEX t_e_idx ON t (e);"
        "INSERT INTO t SELECT g, 'a' || g, 'b', g, g, 'e' || g, '10.0.0.0/8'"
        " FROM generate_series(1, 500) g"
    )
    files = {rel: relfilenode(conn, rel) for rel in ("t", "t_a_idx", "t_c_idx", "t_e_idx")}
    changes = [
        AlterColumnType("t", "a", "varchar(20)"),
        AlterColumnType("t", "b", "text"),
        AlterColumnType("t", "c", "numeric(12,2)"),
        AlterColumnType("t", "d", "numeric"),
        AlterColumnType("t", "e", "varchar"),
        AlterColumnType("t", "f", "inet"),
    ]
    shown = plan(dsn, changes)
    assert [s.action for s in shown.steps] == ["alter_column_type"] * 6
    assert not any(s.rewrites or s.scans or s.breaking for s in shown.steps)
    assert "no rewrite" in shown.render_text()

    result = run(dsn, changes, "widen")
    assert result.state == "completed"  # nothing to contract
    assert {rel: relfilenode(conn, rel) for rel in files} == files
    column_must_exist(conn, "t", "a", type="character varying(20)")
    column_must_exist(conn, "t", "b", type="text")
    column_must_exist(conn, "t", "c", type="numeric(12,2)")
    column_must_exist(conn, "t", "d", type="numeric")
    column_must_exist(conn, "t", "e", type="character varying")
    column_must_exist(conn, "t", "f", type="inet")
    assert count(conn, "SELECT count(*) FROM t WHERE a = 'a' || id AND c = id") == 500


def test_in_place_change_that_would_scan_is_copied_instead(dsn: str, conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE t (id int PRIMARY KEY, a varchar(10) CONSTRAINT a_short CHECK (length(a) < 9),"
        " f cidr); CREATE INDEX t_f_idx ON t (f)"
    )
    for change, why in [
        (AlterColumnType("t", "a", "varchar(20)"), "a_short would be verified again"),
        (AlterColumnType("t", "f", "inet"), "t_f_idx would be rebuilt"),
    ]:
        shown = plan(dsn, [change])
        text = shown.render_text()
        assert why in text and "column copy" in text
        assert "swap_columns" in [s.action for s in shown.steps]


def test_timestamp_to_timestamptz_depends_on_the_time_zone(
    dsn: str, conn: Conn, admin_dsn: str
) -> None:
    conn.execute(
        "CREATE TABLE t (id int PRIMARY KEY, at timestamp);"
        "INSERT INTO t VALUES (1, '2024-01-01 12:00')"
    )
    change = [AlterColumnType("t", "at", "timestamptz")]
    dbname = conn.info.dbname
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET timezone = 'Europe/Paris'").format(
                sql.Identifier(dbname)
            )
        )
    paris = plan(dsn, change)
    assert "swap_columns" in [s.action for s in paris.steps]
    assert "AT TIME ZONE 'Europe/Paris'" in paris.render_text()
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} SET timezone = 'UTC'").format(sql.Identifier(dbname))
        )
    before = relfilenode(conn, "t")
    assert run(dsn, change, "tz").state == "completed"
    assert relfilenode(conn, "t") == before
    with psycopg.connect(dsn, autocommit=True) as utc:
        row = utc.execute("SELECT at::text FROM t").fetchone()
    assert row == ("2024-01-01 12:00:00+00",)


# ==================================================================== type change copy


def make_items(conn: Conn, rows: int = 2000) -> None:
    conn.execute(
        "CREATE TABLE items ("
        " id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
        " qty int NOT NULL DEFAULT 0 CONSTRAINT qty_nonneg CHECK (qty >= 0),"
        " note text, CONSTRAINT items_note_qty_key UNIQUE (note, qty));"
        "CREATE INDEX items_qty_idx ON items (qty) WHERE qty > 10;"
    )
    conn.execute(
        "INSERT INTO items (qty, note) SELECT g %% 1000, 'n' || g FROM generate_series(1, %s) g",
        [rows],
    )


def qty_apps(dsn: str, new_column: str) -> tuple[App, App]:
    """The old app updates odd ids of the 2000 first rows, the new one even ids."""
    return (
        App(
            dsn,
            "items",
            "qty",
            lambda r, n: r.randrange(0, 1_000_000),
            seed=1,
            old_ids=range(1, 2001, 2),
        ),
        App(
            dsn,
            "items",
            new_column,
            lambda r, n: r.randrange(0, 1_000_000),
            seed=2,
            old_ids=range(2, 2001, 2),
        ),
    )


def test_type_change_expand_abort_contract(dsn: str, conn: Conn) -> None:
    make_items(conn)
    slow_backfill(conn, "items")
    original = snapshot(conn, "items")
    change = [AlterColumnType("items", "qty", "bigint")]
    shadow = "qty_onlineschema_new"

    shown = plan(dsn, change)
    phases = {s.phase for s in shown.steps}
    assert phases == {"expand", "backfill", "validate", "contract"}
    assert shown.has_contract
    assert not any(s.blocks_application and s.scans for s in shown.steps)
    text = shown.render_text()
    assert f"add column {shadow} bigint" in text
    assert "items_note_qty_key" in text and "items_qty_idx" in text and "qty_nonneg" in text

    # --- apply: expand, backfill, validate; stops before the contract
    old, new = qty_apps(dsn, shadow)
    result = run_with_apps(dsn, change, "qty_bigint", old, new)
    assert result.state == "awaiting_contract"
    assert migration_state(conn, "qty_bigint") == "awaiting_contract"
    column_must_exist(conn, "items", "qty", type="integer", nullable=False)
    column_must_exist(conn, "items", shadow, type="bigint", nullable=False)
    index_must_exist(conn, "items_qty_idx_onlineschema_new", definition_contains=[shadow])
    index_must_exist(conn, "items_note_qty_key_onlineschema_new", unique=True)
    constraint_must_exist(conn, "items", "qty_nonneg_onlineschema_new", validated=True)
    assert invalid_indexes(conn, "items") == []
    assert trigger_names(conn, "items") == [
        "slow_backfill_after",
        "slow_backfill_before",
        "zz_onlineschema_sync_qty",
    ]
    assert (
        count(conn, "SELECT count(*) FROM items WHERE qty_onlineschema_new IS DISTINCT FROM qty")
        == 0
    )
    check_apps(conn, "items", [old, new], ["qty", shadow], lambda a, b: a == b)

    # a write through the new column that the old one cannot hold is refused
    with pytest.raises(pgerr.NumericValueOutOfRange):
        conn.execute("UPDATE items SET qty_onlineschema_new = 3000000000 WHERE id = 1")

    # --- abort: everything the expand created goes, the column and its data stay
    assert abort(dsn, "qty_bigint").state == "aborted"
    assert snapshot(conn, "items") == original
    assert leftovers(conn) == []
    check_apps(conn, "items", [old, new], ["qty"], lambda a, b: a == b)

    # --- apply again under a new name, then contract
    touched = set(old.old_rows) | set(new.old_rows)
    old, new = qty_apps(dsn, shadow)
    assert run_with_apps(dsn, change, "qty_bigint_2", old, new).state == "awaiting_contract"
    result = contract(dsn, "qty_bigint_2")
    assert result.state == "completed"
    column_must_exist(conn, "items", "qty", type="bigint", nullable=False, default="0")
    column_must_not_exist(conn, "items", shadow)
    index_must_exist(conn, "items_qty_idx", definition_contains=["(qty)", "WHERE (qty > 10)"])
    constraint_must_exist(
        conn, "items", "items_note_qty_key", type="u", definition_contains=["(note, qty)"]
    )
    constraint_must_exist(
        conn, "items", "qty_nonneg", validated=True, definition_contains=["qty >= 0"]
    )
    assert leftovers(conn) == []
    assert trigger_names(conn, "items") == ["slow_backfill_after", "slow_backfill_before"]
    check_apps(conn, "items", [old], ["qty"], lambda a, b: a == b)
    check_apps(conn, "items", [new], ["qty"], lambda a, b: a == b)
    # the first 2000 rows that no app updated are as the backfill left them
    touched |= set(old.old_rows) | set(new.old_rows)
    assert len(touched) > 100
    assert count(
        conn,
        "SELECT count(*) FROM items WHERE id <= 2000 AND NOT (id = ANY(%s))"
        " AND qty = (substr(note, 2)::int %% 1000)",
        [sorted(touched)],
    ) == 2000 - len(touched)
    # the new type holds what the old could not; the default and the check still apply
    conn.execute("INSERT INTO items (note) VALUES ('after')")
    conn.execute("INSERT INTO items (qty, note) VALUES (3000000000, 'big')")
    with pytest.raises(pgerr.CheckViolation):
        conn.execute("INSERT INTO items (qty) VALUES (-1)")
    with pytest.raises(pgerr.UniqueViolation):
        conn.execute("INSERT INTO items (qty, note) VALUES (3000000000, 'big')")


def test_type_change_with_using_and_reverse(dsn: str, conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE prices (id int PRIMARY KEY, price numeric(10,2) NOT NULL);"
        "INSERT INTO prices SELECT g, g * 1.25 FROM generate_series(1, 300) g"
    )
    cents = AlterColumnType("prices", "price", "bigint", using="round(price * 100)")
    assert run(dsn, [cents], "cents").state == "awaiting_contract"
    assert (
        count(
            conn, "SELECT count(*) FROM prices WHERE price_onlineschema_new <> round(price * 100)"
        )
        == 0
    )
    conn.execute("UPDATE prices SET price = 9.99 WHERE id = 1")  # old code
    assert count(conn, "SELECT price_onlineschema_new FROM prices WHERE id = 1") == 999
    # no reverse_using: a write of the new column alone cannot reach the old one
    with pytest.raises(pgerr.ObjectNotInPrerequisiteState):
        conn.execute("UPDATE prices SET price_onlineschema_new = 5 WHERE id = 2")
    abort(dsn, "cents")
    assert leftovers(conn) == []

    both = AlterColumnType(
        "prices", "price", "bigint", using="round(price * 100)", reverse_using="price / 100.0"
    )
    assert run(dsn, [both], "cents_2").state == "awaiting_contract"
    conn.execute("UPDATE prices SET price_onlineschema_new = 1234 WHERE id = 2")  # new code
    assert conn.execute("SELECT price::text FROM prices WHERE id = 2").fetchone() == ("12.34",)
    conn.execute("INSERT INTO prices (id, price_onlineschema_new) VALUES (1000, 50)")
    assert conn.execute("SELECT price::text FROM prices WHERE id = 1000").fetchone() == ("0.50",)
    assert contract(dsn, "cents_2").state == "completed"
    column_must_exist(conn, "prices", "price", type="bigint", nullable=False)
    assert conn.execute(
        "SELECT price FROM prices WHERE id IN (1, 2, 3) ORDER BY id"
    ).fetchall() == [
        (999,),
        (1234,),
        (375,),
    ]


def test_identity_column_to_bigint(dsn: str, conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE events (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind text);"
        "INSERT INTO events (kind) SELECT 'k' || g FROM generate_series(1, 500) g"
    )
    app = App(dsn, "events", "kind", lambda r, n: f"app{n}", seed=3)
    change = [AlterColumnType("events", "id", "bigint")]
    assert run_with_apps(dsn, change, "events_id", app).state == "awaiting_contract"
    assert (
        count(conn, "SELECT count(*) FROM events WHERE id_onlineschema_new IS DISTINCT FROM id")
        == 0
    )
    with Apps(app2 := App(dsn, "events", "kind", lambda r, n: f"late{n}", seed=4)) as running:
        assert contract(dsn, "events_id").state == "completed"
        running.wait_for_writes()
    column_must_exist(conn, "events", "id", type="bigint", nullable=False)
    assert conn.execute(
        "SELECT attidentity::text FROM pg_attribute WHERE attrelid = 'events'::regclass"
        " AND attname = 'id'"
    ).fetchone() == ("a",)
    seq = conn.execute("SELECT pg_get_serial_sequence('events', 'id')").fetchone()
    assert seq == ("public.events_id_seq",)
    assert conn.execute(
        "SELECT format_type(seqtypid, NULL) FROM pg_sequence"
        " WHERE seqrelid = 'events_id_seq'::regclass"
    ).fetchone() == ("bigint",)
    top = count(conn, "SELECT max(id) FROM events")
    new_id = count(conn, "INSERT INTO events (kind) VALUES ('next') RETURNING id")
    assert new_id > top
    with pytest.raises(pgerr.GeneratedAlways):
        conn.execute("INSERT INTO events (id, kind) VALUES (1, 'x')")
    check_apps(conn, "events", [app, app2], ["kind"], lambda a, b: a == b)
    assert leftovers(conn) == []


# ============================================================ primary key int -> bigint


class Accounts(threading.Thread):
    """The application during the whole migration: opens accounts, records payments
    against them, changes and removes payments, and changes payments that existed before
    (ids 1-2000, which the backfill copies too). Uses only the columns' own names."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True, name="accounts-app")
        self.dsn = dsn
        self.accounts: list[int] = []
        self.payments: dict[int, tuple[int, int]] = {}  # id -> (account, amount)
        self.old_payments: dict[int, tuple[int, int]] = {}  # of ids 1-2000
        self.removed: set[int] = set()
        self.writes = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        rng = random.Random(7)
        try:
            with psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None) as conn:
                self.accounts = [r[0] for r in conn.execute("SELECT id FROM accounts").fetchall()]
                while not self._halt.is_set():
                    roll = rng.random()
                    if roll < 0.25:
                        row = conn.execute(
                            "INSERT INTO accounts (name) VALUES ('new') RETURNING id"
                        ).fetchone()
                        assert row is not None
                        self.accounts.append(row[0])
                    elif roll < 0.7 or len(self.payments) < 5:
                        acc, amount = rng.choice(self.accounts), rng.randrange(1, 10_000)
                        row = conn.execute(
                            "INSERT INTO payments (account_id, amount) VALUES (%s, %s) RETURNING id",
                            [acc, amount],
                        ).fetchone()
                        assert row is not None
                        self.payments[row[0]] = (acc, amount)
                    elif roll < 0.8:
                        pid = rng.randrange(1, 2001)
                        acc, amount = rng.choice(self.accounts), rng.randrange(1, 10_000)
                        conn.execute(
                            "UPDATE payments SET account_id = %s, amount = %s WHERE id = %s",
                            [acc, amount, pid],
                        )
                        self.old_payments[pid] = (acc, amount)
                    elif roll < 0.9:
                        pid = rng.choice(list(self.payments))
                        acc, amount = rng.choice(self.accounts), rng.randrange(1, 10_000)
                        conn.execute(
                            "UPDATE payments SET account_id = %s, amount = %s WHERE id = %s",
                            [acc, amount, pid],
                        )
                        self.payments[pid] = (acc, amount)
                    else:
                        pid = rng.choice(list(self.payments))
                        conn.execute("DELETE FROM payments WHERE id = %s", [pid])
                        del self.payments[pid]
                        self.removed.add(pid)
                    self.writes += 1
                    time.sleep(0.002)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._halt.set()
        self.join(60)
        assert not self.is_alive()
        if self.error is not None:
            raise AssertionError(f"the application failed: {self.error!r}") from self.error


def test_referenced_primary_key_int_to_bigint(dsn: str, conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE accounts (id serial PRIMARY KEY, name text);"
        "CREATE TABLE payments (id serial PRIMARY KEY,"
        " account_id int NOT NULL REFERENCES accounts (id), amount int);"
        "CREATE INDEX payments_account_idx ON payments (account_id);"
        "INSERT INTO accounts (name) SELECT 'a' || g FROM generate_series(1, 1000) g;"
        "INSERT INTO payments (account_id, amount) SELECT 1 + g % 1000, g FROM generate_series(1, 2000) g"
    )
    slow_backfill(conn, "accounts")
    slow_backfill(conn, "payments")
    change = [AlterColumnType("accounts", "id", "bigint")]
    shown = plan(dsn, change)
    assert any("payments.account_id references public.accounts.id" in n for n in shown.notes), (
        shown.notes
    )
    swap = shown.step("swap_columns.public.accounts+public.payments")
    assert set(swap.tables) == {"public.accounts", "public.payments"}
    # asking for the referencing column too is the same plan
    both = [*change, AlterColumnType("payments", "account_id", "bigint")]
    assert [s.id for s in plan(dsn, both).steps] == [s.id for s in shown.steps]

    app = Accounts(dsn)
    app.start()
    try:
        assert run(dsn, change, "accounts_bigint").state == "awaiting_contract"
        before = app.writes
        deadline = time.monotonic() + 30
        while app.writes < before + 30:
            assert app.error is None and time.monotonic() < deadline
            time.sleep(0.01)
        assert contract(dsn, "accounts_bigint").state == "completed"
        before = app.writes
        while app.writes < before + 30:
            assert app.error is None and time.monotonic() < deadline + 30
            time.sleep(0.01)
    finally:
        app.stop()

    column_must_exist(conn, "accounts", "id", type="bigint", nullable=False)
    column_must_exist(conn, "payments", "account_id", type="bigint", nullable=False)
    constraint_must_exist(conn, "accounts", "accounts_pkey", type="p")
    constraint_must_exist(
        conn,
        "payments",
        "payments_account_id_fkey",
        validated=True,
        type="f",
        definition_contains=["REFERENCES accounts(id)"],
    )
    index_must_exist(conn, "payments_account_idx", definition_contains=["(account_id)"])
    assert conn.execute(
        "SELECT format_type(seqtypid, NULL) FROM pg_sequence"
        " WHERE seqrelid = 'accounts_id_seq'::regclass"
    ).fetchone() == ("bigint",)
    assert conn.execute("SELECT pg_get_serial_sequence('accounts', 'id')").fetchone() == (
        "public.accounts_id_seq",
    )
    assert leftovers(conn) == []
    # no lost rows: every account and payment the application made is there, as written
    assert count(conn, "SELECT count(*) FROM accounts") == len(app.accounts)
    stored = dict(
        (r[0], (r[1], r[2]))
        for r in conn.execute("SELECT id, account_id, amount FROM payments").fetchall()
    )
    for pid, expected in {**app.old_payments, **app.payments}.items():
        assert stored.get(pid) == expected, f"payment {pid}"
    assert len(app.old_payments) > 20, "few payments that existed before were changed"
    assert not set(stored) & app.removed
    assert count(conn, "SELECT count(*) FROM payments") == 2000 + len(app.payments)
    # both ends hold values past the int range now
    conn.execute("INSERT INTO accounts (id, name) VALUES (3000000000, 'big')")
    conn.execute("INSERT INTO payments (account_id, amount) VALUES (3000000000, 1)")
    with pytest.raises(pgerr.ForeignKeyViolation):
        conn.execute("INSERT INTO payments (account_id, amount) VALUES (3000000001, 1)")


# ======================================================================== rename column


def make_people(conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE people (id serial PRIMARY KEY,"
        " email varchar(100) NOT NULL CONSTRAINT people_email_key UNIQUE, age int);"
        "CREATE INDEX people_lower_email_idx ON people (lower(email));"
        "CREATE TABLE logins (id serial PRIMARY KEY,"
        " email varchar(100) REFERENCES people (email) ON UPDATE CASCADE);"
        "INSERT INTO people (email, age) SELECT 'p' || g || '@x', g FROM generate_series(1, 1000) g;"
        "INSERT INTO logins (email) SELECT 'p' || g || '@x' FROM generate_series(1, 200) g"
    )


def email_apps(dsn: str, round: int) -> tuple[App, App]:
    def mail(tag: str) -> Callable[[random.Random, int], str]:
        return lambda r, n: f"{tag}{round}.{n}.{r.randrange(10**9)}@x"

    # rows that existed before: odd ids for the old code, even ids for the new (ids
    # 1-200 are referenced by logins, ON UPDATE CASCADE)
    return (
        App(dsn, "people", "email", mail("old"), seed=5, old_ids=range(1, 1001, 2)),
        App(dsn, "people", "email_address", mail("new"), seed=6, old_ids=range(2, 1001, 2)),
    )


def test_rename_expand_abort_contract(dsn: str, conn: Conn) -> None:
    make_people(conn)
    slow_backfill(conn, "people")
    original = snapshot(conn, "people")
    change = [RenameColumn("people", "email", "email_address")]
    text = plan(dsn, change).render_text()
    assert "email (old code) and email_address (new code) are both readable and writable" in text

    old, new = email_apps(dsn, 1)
    assert run_with_apps(dsn, change, "rename_email", old, new).state == "awaiting_contract"
    column_must_exist(conn, "people", "email", type="character varying(100)", nullable=False)
    column_must_exist(
        conn, "people", "email_address", type="character varying(100)", nullable=False
    )
    constraint_must_exist(
        conn,
        "logins",
        "logins_email_fkey_onlineschema_new",
        validated=True,
        definition_contains=["REFERENCES people(email_address) ON UPDATE CASCADE"],
    )
    assert (
        count(conn, "SELECT count(*) FROM people WHERE email IS DISTINCT FROM email_address") == 0
    )
    check_apps(conn, "people", [old, new], ["email", "email_address"], lambda a, b: a == b)
    # both names work for reads and writes, from either version of the code
    conn.execute("UPDATE people SET email = 'changed@x' WHERE id = 1")
    old.old_rows[1] = "changed@x"  # row 1's last write, for the check after the abort
    assert conn.execute("SELECT email_address FROM people WHERE id = 1").fetchone() == (
        "changed@x",
    )
    assert conn.execute("SELECT email FROM logins WHERE id = 1").fetchone() == ("changed@x",)

    assert abort(dsn, "rename_email").state == "aborted"
    assert snapshot(conn, "people") == original
    assert leftovers(conn) == []
    assert constraint_must_exist(conn, "logins", "logins_email_fkey", validated=True)
    column_must_not_exist(conn, "people", "email_address")
    check_apps(conn, "people", [old, new], ["email"], lambda a, b: a == b)

    old, new = email_apps(dsn, 2)
    assert run_with_apps(dsn, change, "rename_email_2", old, new).state == "awaiting_contract"
    assert contract(dsn, "rename_email_2").state == "completed"
    column_must_not_exist(conn, "people", "email")
    column_must_exist(
        conn, "people", "email_address", type="character varying(100)", nullable=False
    )
    constraint_must_exist(
        conn, "people", "people_email_key", type="u", definition_contains=["(email_address)"]
    )
    constraint_must_exist(
        conn,
        "logins",
        "logins_email_fkey",
        validated=True,
        definition_contains=["REFERENCES people(email_address)"],
    )
    index_must_exist(conn, "people_lower_email_idx", definition_contains=["lower((email_address)"])
    assert leftovers(conn) == []
    check_apps(conn, "people", [old, new], ["email_address"], lambda a, b: a == b)
    assert (
        count(
            conn, "SELECT count(*) FROM logins JOIN people ON people.email_address = logins.email"
        )
        == 200
    )


def test_instant_rename_is_marked_breaking(dsn: str, conn: Conn) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY, a int); CREATE INDEX t_a_idx ON t (a)")
    change = [RenameColumn("t", "a", "b", instant=True)]
    shown = plan(dsn, change)
    (step,) = shown.steps
    assert step.breaking and step.phase == "expand"
    assert "breaks running code" in shown.render_text()
    assert any("instant rename" in n for n in shown.notes)
    before = relfilenode(conn, "t")
    assert run(dsn, change, "instant").state == "completed"
    column_must_exist(conn, "t", "b", type="integer")
    column_must_not_exist(conn, "t", "a")
    index_must_exist(conn, "t_a_idx", definition_contains=["(b)"])
    assert relfilenode(conn, "t") == before


# ============================================================================ drops


def make_orders(conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE codes (code int PRIMARY KEY);"
        "INSERT INTO codes SELECT generate_series(1, 600);"
        "CREATE TABLE orders (id int PRIMARY KEY,"
        " legacy int NOT NULL REFERENCES codes (code) CONSTRAINT legacy_pos CHECK (legacy > 0),"
        " note text, CONSTRAINT orders_legacy_key UNIQUE (legacy));"
        "CREATE INDEX orders_note_idx ON orders (note) WHERE legacy > 0;"
        "CREATE INDEX orders_plain_idx ON orders (note);"
        "CREATE TABLE refs (id int PRIMARY KEY, legacy int REFERENCES orders (legacy));"
        "INSERT INTO orders SELECT g, g, 'n' || g FROM generate_series(1, 500) g;"
        "INSERT INTO refs SELECT g, g FROM generate_series(1, 100) g"
    )


def test_drop_column_expand_abort_contract(dsn: str, conn: Conn) -> None:
    make_orders(conn)
    original = snapshot(conn, "orders")
    change = [DropColumn("orders", "legacy")]
    shown = plan(dsn, change)
    (note,) = [n for n in shown.notes if "orders.legacy is dropped" in n]
    for dependent in (
        "foreign key public.orders.orders_legacy_fkey",
        "foreign key public.refs.refs_legacy_fkey",
        "constraint orders_legacy_key",
        "index orders_note_idx",
        "check legacy_pos",
    ):
        assert dependent in note
    assert "orders_plain_idx" not in note
    contract_steps = [s for s in shown.steps if s.phase == "contract"]
    assert all(s.breaking for s in contract_steps)
    assert [s.action for s in contract_steps][-1] == "drop_column"
    (idx_drop,) = [s for s in contract_steps if s.action == "drop_index"]
    assert "CONCURRENTLY" in idx_drop.statements[0]

    assert run(dsn, change, "drop_legacy").state == "awaiting_contract"
    # new code that no longer writes the column can insert; the column is still there
    column_must_exist(conn, "orders", "legacy", nullable=True)
    conn.execute("INSERT INTO orders (id, note) VALUES (1000, 'new code')")
    conn.execute("DELETE FROM orders WHERE id = 1000")
    constraint_must_exist(conn, "refs", "refs_legacy_fkey")

    assert abort(dsn, "drop_legacy").state == "aborted"
    assert snapshot(conn, "orders") == original
    assert leftovers(conn) == []

    assert run(dsn, change, "drop_legacy_2").state == "awaiting_contract"
    assert contract(dsn, "drop_legacy_2").state == "completed"
    column_must_not_exist(conn, "orders", "legacy")
    for name in ("orders_legacy_fkey", "orders_legacy_key", "legacy_pos"):
        constraint_must_not_exist(conn, "orders", name)
    constraint_must_not_exist(conn, "refs", "refs_legacy_fkey")
    index_must_not_exist(conn, "orders_note_idx")
    index_must_exist(conn, "orders_plain_idx")
    assert count(conn, "SELECT count(*) FROM orders") == 500
    assert count(conn, "SELECT count(*) FROM refs") == 100
    assert count(conn, "SELECT count(*) FROM codes") == 600


def test_drop_table_expand_abort_contract(dsn: str, conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE parent (id int PRIMARY KEY);"
        "CREATE TABLE dropme (id int PRIMARY KEY, parent_id int REFERENCES parent, x int);"
        "CREATE INDEX dropme_x_idx ON dropme (x);"
        "CREATE TABLE child (id int PRIMARY KEY, dropme_id int REFERENCES dropme);"
        "INSERT INTO parent SELECT generate_series(1, 10);"
        "INSERT INTO dropme SELECT g, 1 + g % 10, g FROM generate_series(1, 100) g;"
        "INSERT INTO child SELECT g, g FROM generate_series(1, 50) g"
    )
    change = [DropTable("dropme")]
    shown = plan(dsn, change)
    (note,) = [n for n in shown.notes if "dropme is dropped" in n]
    assert "foreign key public.child.child_dropme_id_fkey" in note
    assert "foreign key public.dropme.dropme_parent_id_fkey" in note
    assert "index dropme_x_idx" in note
    assert shown.steps[-1].action == "drop_table" and shown.steps[-1].breaking

    assert run(dsn, change, "drop_t").state == "awaiting_contract"
    assert count(conn, "SELECT count(*) FROM dropme") == 100
    assert abort(dsn, "drop_t").state == "aborted"
    constraint_must_exist(conn, "child", "child_dropme_id_fkey")

    assert run(dsn, change, "drop_t2").state == "awaiting_contract"
    assert contract(dsn, "drop_t2").state == "completed"
    assert conn.execute("SELECT to_regclass('dropme')").fetchone() == (None,)
    constraint_must_not_exist(conn, "child", "child_dropme_id_fkey")
    assert count(conn, "SELECT count(*) FROM child") == 50
    assert count(conn, "SELECT count(*) FROM parent") == 10


# ====================================================================== refusals, input


def test_what_depends_on_the_column_is_refused_by_name(dsn: str, conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE t (id int PRIMARY KEY, a int, b int, c int);"
        "CREATE VIEW t_view AS SELECT id, a FROM t;"
        "CREATE MATERIALIZED VIEW t_mv AS SELECT sum(c) AS total FROM t;"
        "CREATE TABLE p (id int PRIMARY KEY, a int) PARTITION BY RANGE (id)"
    )
    # a plain view is recreated by a type change or rename (tests/test_views.py), not
    # a materialized view; no view survives the drop of a column it selects
    for change in (AlterColumnType("t", "c", "bigint"), RenameColumn("t", "c", "c2")):
        assert "materialized view t_mv" in refusal(dsn, [change])
    for change in (DropColumn("t", "a"), DropTable("t")):
        assert "view(s) public.t_view" in refusal(dsn, [change])
    assert "partitioned" in refusal(dsn, [AlterColumnType("p", "a", "bigint")])
    assert "primary key" in refusal(dsn, [DropColumn("t", "id")])
    # what the copy cannot carry over is refused, before and after (an index of plain
    # columns on it is built on the new column instead: tests/test_histories.py)
    later = refusal(
        dsn, [AlterColumnType("t", "b", "bigint"), AddIndex("t", expressions=("(b * 2)",))]
    )
    assert "contract" in later
    earlier = refusal(dsn, [AddIndex("t", ("b",)), AlterColumnType("t", "b", "bigint")])
    assert "earlier in this migration" in earlier
    assert "reverse_using" in refusal(
        dsn, [AlterColumnType("t", "b", "bigint", using="b * 2", reverse_using="b / 2 + a")]
    )
    assert "does not exist" in refusal(dsn, [AlterColumnType("t", "b", "no_such_type")])
    with pytest.raises(PreflightError):
        plan(dsn, [AlterColumnType("t", "b", "bigint", using="nope * 2")])


def test_sql_input_maps_to_breaking_changes(dsn: str, conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE t (id int PRIMARY KEY, a int, b varchar(5), c text NOT NULL, d int);"
        "CREATE TABLE gone (id int)"
    )
    changes = parse_sql(
        "ALTER TABLE t ALTER COLUMN a TYPE bigint USING a::bigint;"
        "ALTER TABLE t ALTER COLUMN b TYPE varchar(50);"
        "ALTER TABLE t RENAME COLUMN c TO c2;"
        "ALTER TABLE t DROP COLUMN d;"
        "DROP TABLE gone;"
    )
    assert [type(c) for c in changes] == [
        AlterColumnType,
        AlterColumnType,
        RenameColumn,
        DropColumn,
        DropTable,
    ]
    # one at a time: each is planned the way its kind is
    actions = [{s.action for s in plan(dsn, [c]).steps} for c in changes]
    assert "swap_columns" in actions[0]
    assert actions[1] == {"alter_column_type"}
    assert "swap_columns" in actions[2]
    assert actions[3] == {"drop_column"}
    assert actions[4] == {"drop_table"}


def test_several_columns_share_one_swap(dsn: str, conn: Conn) -> None:
    conn.execute(
        "CREATE TABLE nodes (id serial PRIMARY KEY, parent_id int REFERENCES nodes (id),"
        " a int NOT NULL, b smallint, label text);"
        "CREATE INDEX nodes_a_b_idx ON nodes (a, b);"
        "INSERT INTO nodes (parent_id, a, b, label)"
        " SELECT nullif(g - 1, 0), g, g % 100, 'l' || g FROM generate_series(1, 500) g"
    )
    changes = parse_sql(
        "ALTER TABLE nodes ALTER COLUMN id TYPE bigint, ALTER COLUMN a TYPE bigint,"
        " ALTER COLUMN b TYPE int; ALTER TABLE nodes RENAME COLUMN label TO name"
    )
    shown = plan(dsn, changes)
    actions = [s.action for s in shown.steps]
    assert actions.count("swap_columns") == 1
    assert any("nodes.parent_id references public.nodes.id" in n for n in shown.notes)
    assert [s.id for s in shown.steps if s.action == "create_index"] == [
        "create_index.public.nodes_a_b_idx_onlineschema_new",
        "create_index.public.nodes_pkey_onlineschema_new",
    ]
    assert run(dsn, changes, "nodes").state == "awaiting_contract"
    conn.execute("INSERT INTO nodes (parent_id, a, label) VALUES (500, 501, 'l501')")
    conn.execute("INSERT INTO nodes (parent_id, a, name) VALUES (501, 502, 'l502')")
    assert contract(dsn, "nodes").state == "completed"
    for col, type_ in [
        ("id", "bigint"),
        ("parent_id", "bigint"),
        ("a", "bigint"),
        ("b", "integer"),
        ("name", "text"),
    ]:
        column_must_exist(conn, "nodes", col, type=type_)
    column_must_not_exist(conn, "nodes", "label")
    index_must_exist(conn, "nodes_a_b_idx", definition_contains=["(a, b)"])
    constraint_must_exist(
        conn, "nodes", "nodes_parent_id_fkey", validated=True,
        definition_contains=["(parent_id) REFERENCES nodes(id)"],
    )  # fmt: skip
    assert count(conn, "SELECT count(*) FROM nodes WHERE parent_id = id - 1") == 501
    assert count(conn, "SELECT count(*) FROM nodes WHERE name = 'l' || id AND a = id") == 502
    assert leftovers(conn) == []
