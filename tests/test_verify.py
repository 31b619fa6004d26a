"""Verify before contract: a column copy (type change, rename) is checked row by row before
the contract phase drops the old column; a mismatch refuses the contract (exit 2, nothing
dropped) with sample keys and the command that re-copies them.

Real PostgreSQL, the real CLI in subprocesses; the mismatch is made the way it happens
for real: a session with ``session_replication_role = replica`` (triggers off) writes
the old column behind the sync trigger's back.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from typing import Any

import psycopg
import pytest
from helpers import column_must_exist, column_must_not_exist, make_orders, trigger_names

from onlineschema import Executor
from onlineschema.errors import Refused
from onlineschema.executor import Settings
from onlineschema.verify import copies_of, verify

ROWS = 3000


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ONLINESCHEMA_DSN", "DATABASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "onlineschema", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def expect(proc: subprocess.CompletedProcess[str], code: int) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == code, (
        f"exit {proc.returncode}, wanted {code}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def behind_the_triggers_back(dsn: str, statement: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SET session_replication_role = replica")
        c.execute(statement)


@pytest.fixture
def orders(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    make_orders(conn, ROWS)
    return conn


def state(conn: psycopg.Connection[Any], name: str) -> str:
    row = conn.execute(
        "SELECT state FROM onlineschema.migrations WHERE name = %s", (name,)
    ).fetchone()
    assert row is not None
    return str(row[0])


def test_type_change_mismatch_refuses_contract_and_the_given_fix_repairs_it(
    dsn: str, orders: psycopg.Connection[Any]
) -> None:
    sql = "ALTER TABLE orders ALTER COLUMN amount TYPE bigint"
    out = expect(cli("apply", "--dsn", dsn, "--sql", sql, "--name", "big", "--yes"), 0)
    assert "onlineschema contract big" in out.stdout
    assert state(orders, "big") == "awaiting_contract"
    [shadow] = [
        c
        for c in (r[0] for r in orders.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = 'orders'::regclass"
            " AND attnum > 0 AND NOT attisdropped"
        ).fetchall())
        if c.startswith("amount") and c != "amount"
    ]  # fmt: skip

    # a clean copy passes
    ok = expect(cli("verify", "--dsn", dsn, "big"), 0)
    assert f"{ROWS:,} row(s) match" in ok.stdout and "verified" in ok.stdout

    # two rows change behind the sync trigger's back
    behind_the_triggers_back(dsn, "UPDATE orders SET amount = amount + 1000 WHERE id IN (7, 2500)")
    bad = expect(cli("verify", "--dsn", dsn, "big"), 2)
    assert "2 of 3000 row(s) of public.orders" in bad.stderr, bad.stderr
    assert "id = 7, 2500" in bad.stderr

    refused = expect(cli("contract", "--dsn", dsn, "big"), 2)
    assert "id = 7, 2500" in refused.stderr
    assert "nothing was dropped" in refused.stderr
    # nothing dropped or swapped: both columns and the sync trigger are still there
    column_must_exist(orders, "orders", "amount", type="integer")
    column_must_exist(orders, "orders", shadow, type="bigint")
    assert any("onlineschema_sync" in t for t in trigger_names(orders, "orders"))
    assert state(orders, "big") == "awaiting_contract"

    # the fix the message gives, as given
    [command] = re.findall(r"`(onlineschema backfill [^`]+)`", refused.stderr)
    argv = shlex.split(command)[1:]
    expect(cli(*argv[:1], "--dsn", dsn, *argv[1:]), 0)
    expect(cli("verify", "--dsn", dsn, "big"), 0)
    expect(cli("contract", "--dsn", dsn, "big"), 0)
    column_must_exist(orders, "orders", "amount", type="bigint")
    column_must_not_exist(orders, "orders", shadow)
    rows = orders.execute("SELECT id, amount FROM orders WHERE id IN (6, 7, 2500) ORDER BY id")
    assert rows.fetchall() == [(6, 6), (7, 1007), (2500, 2500 % 300 + 1000)]


def test_rename_is_verified_and_the_setting_turns_the_check_off(
    dsn: str, orders: psycopg.Connection[Any]
) -> None:
    sql = "ALTER TABLE orders RENAME COLUMN note TO memo"
    expect(cli("apply", "--dsn", dsn, "--sql", sql, "--name", "ren", "--yes"), 0)
    with Executor(dsn) as ex:
        [copy] = _copies(ex, "ren")
        assert (copy.new, copy.forward) == ("memo", '"note"')
        report = verify(ex, "ren")
        assert report.ok and report.results[0].rows == ROWS
    # NULLs count: a note set to NULL behind the trigger's back is a mismatch
    behind_the_triggers_back(dsn, "UPDATE orders SET note = NULL WHERE id = 11")
    with Executor(dsn) as ex, pytest.raises(Refused) as err:
        ex.contract("ren")
    assert "id = 11" in str(err.value)
    column_must_exist(orders, "orders", "note")
    # verify_before_contract=False: the contract runs without the check
    with Executor(dsn, Settings(verify_before_contract=False)) as ex:
        assert ex.contract("ren").state == "completed"
    column_must_not_exist(orders, "orders", "note")
    column_must_exist(orders, "orders", "memo")


def _copies(ex: Executor, name: str) -> list[Any]:
    from onlineschema.plan import Plan

    return copies_of(Plan.from_dict(ex.store.require(name)["plan"]))


def test_verify_refuses_an_unfinished_backfill_and_ignores_plain_backfills(
    dsn: str, orders: psycopg.Connection[Any]
) -> None:
    # a plain backfill is no copy: nothing to verify
    expect(
        cli("backfill", "--dsn", dsn, "--table", "orders", "--set", "n = n + 1", "--name", "b"), 0
    )
    out = expect(cli("verify", "--dsn", dsn, "b"), 0)
    assert "no column copy to verify" in out.stdout
    with Executor(dsn) as ex:
        from onlineschema.changes import AlterColumnType

        ex.apply([AlterColumnType("orders", "amount", "bigint")], "half")
        # make it look as if the backfill had not finished
        ex.conn.execute(
            "UPDATE onlineschema.steps SET state = 'running'"
            " WHERE migration = 'half' AND step_id LIKE 'backfill.%'"
        )
        with pytest.raises(Refused) as err:
            verify(ex, "half")
    assert "has not finished" in str(err.value) and "onlineschema resume half" in str(err.value)


def test_a_table_without_key_is_verified_by_block_ranges(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("CREATE TABLE logs (msg text, code int)")
    conn.execute("INSERT INTO logs SELECT 'm' || g, g FROM generate_series(1, 5000) g")
    conn.execute("ANALYZE logs")
    with Executor(dsn) as ex:
        from onlineschema.changes import AlterColumnType

        assert ex.apply([AlterColumnType("logs", "code", "bigint")], "nokey").state == (
            "awaiting_contract"
        )
        [copy] = _copies(ex, "nokey")
        assert copy.key == () and copy.spec().strategy == "ctid"
        report = verify(ex, "nokey")
        assert report.ok and report.results[0].rows == 5000
    behind_the_triggers_back(dsn, "UPDATE logs SET code = -1 WHERE code = 4321")
    with Executor(dsn) as ex:
        report = verify(ex, "nokey")
        [res] = report.results
        assert (res.rows, res.mismatches, len(res.samples)) == (5000, 1, 1)
        assert res.samples[0].startswith("(")  # a ctid
        with pytest.raises(Refused, match="ctid = "):
            ex.contract("nokey")
