"""The command line, driven as a user drives it: ``python -m onlineschema ...`` in a
subprocess against a real PostgreSQL database (the ``dsn`` fixture).

The contract under test: plans and ``--format json`` on stdout, logs and errors on
stderr; exit 0 done, 2 refused before any DDL, 3 stopped and resumable, 1 other.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from onlineschema.cli import normalize_dsn, setting_value

EXAMPLE_SQL = """\
ALTER TABLE orders ADD COLUMN status text;
UPDATE orders SET status = CASE WHEN amount > 100 THEN 'big' ELSE 'small' END;
ALTER TABLE orders ALTER COLUMN status SET NOT NULL, ALTER COLUMN status SET DEFAULT 'small';
CREATE INDEX ON orders(status);
ALTER TABLE orders ADD FOREIGN KEY (user_id) REFERENCES users(id);
"""

EXAMPLE_STEP_IDS = [
    "add_column.public.orders.status",
    "backfill.public.orders.status",
    "create_index.public.orders_status_idx",
]

ROWS = 300


def run(
    *args: str,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``python -m onlineschema ARGS`` with no DSN in the environment unless given."""
    full_env = {
        k: v for k, v in os.environ.items() if k not in ("ONLINESCHEMA_DSN", "DATABASE_URL")
    }
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "onlineschema", *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def run_on_terminal(*args: str, answer: str) -> subprocess.CompletedProcess[str]:
    """Like :func:`run` with stdin on a terminal, typing ``answer`` at the prompt."""
    primary, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("ONLINESCHEMA_DSN", "DATABASE_URL")}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "onlineschema", *args],
            stdin=secondary, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        try:
            os.write(primary, answer.encode() + b"\n")  # held by the terminal until read
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        os.close(secondary)
        os.close(primary)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def expect(proc: subprocess.CompletedProcess[str], code: int) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == code, (
        f"exit {proc.returncode}, wanted {code}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def one(conn: psycopg.Connection[Any], query: str, params: Sequence[Any] = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


@pytest.fixture
def shop(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """``users`` and ``orders`` with a few hundred rows; ``amount = id * 3``."""
    conn.execute("CREATE TABLE users (id bigserial PRIMARY KEY)")
    conn.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint, amount int)")
    conn.execute("INSERT INTO users SELECT FROM generate_series(1, 50)")
    conn.execute(
        "INSERT INTO orders (user_id, amount) SELECT 1 + i %% 50, i * 3"
        " FROM generate_series(1, %s) i",
        (ROWS,),
    )
    conn.execute("ANALYZE users, orders")
    return conn


def columns(conn: psycopg.Connection[Any], table: str) -> list[str]:
    rows = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum",
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def status_json(dsn: str, name: str | None = None) -> list[dict[str, Any]]:
    proc = expect(run("status", "--dsn", dsn, *([name] if name else []), "--format", "json"), 0)
    data = json.loads(proc.stdout)
    assert isinstance(data, list)
    return data


# --- plan -------------------------------------------------------------------------------


def lock_timeout_before(script: str, statement: str) -> str:
    """The lock_timeout a script sets last before the line starting with ``statement``."""
    lines = script.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(statement))
    sets = [line for line in lines[:at] if "lock_timeout = '" in line]
    return sets[-1].split("'")[1]


def test_plan_text_json_and_sql(dsn: str, shop: psycopg.Connection[Any]) -> None:
    text = expect(run("plan", "--dsn", dsn, "--sql", EXAMPLE_SQL), 0).stdout
    assert "EXPAND" in text and "BACKFILL" in text and "VALIDATE" in text
    assert 'CREATE INDEX CONCURRENTLY "orders_status_idx"' in text
    for step_id in EXAMPLE_STEP_IDS:
        assert f"id: {step_id}" in text

    proc = expect(run("plan", "--dsn", dsn, "--sql", EXAMPLE_SQL, "--format", "json"), 0)
    plan = json.loads(proc.stdout)  # stdout is nothing but the plan
    ids = [s["id"] for s in plan["steps"]]
    assert ids[:3] == EXAMPLE_STEP_IDS
    assert all(f"id: {i}" in text for i in ids)
    assert plan["server_version"] == one(shop, "SELECT current_setting('server_version_num')::int")

    script = expect(
        run("plan", "--dsn", dsn, "--sql", EXAMPLE_SQL, "--format", "sql", "--lock-timeout", "2s"),
        0,
    ).stdout
    assert script.startswith("-- Generated by onlineschema")
    assert "SET LOCAL lock_timeout = '2000ms';" in script
    assert "CREATE INDEX CONCURRENTLY" in script and "BEGIN;" in script
    # the index build runs under index_lock_timeout, as the executor runs it (its waits
    # block no one), not under the 2s given for the application's locks
    assert lock_timeout_before(script, "CREATE INDEX CONCURRENTLY") == "60000ms"
    # the batched backfill is rendered as the command that runs it on its own
    assert "--   onlineschema backfill --table public.orders --set 'status = CASE" in script
    assert "--where 'status IS NULL'" in script

    # planning ran no DDL and created no state
    assert columns(shop, "orders") == ["id", "user_id", "amount"]
    assert one(shop, "SELECT count(*) FROM pg_namespace WHERE nspname = 'onlineschema'") == 0


def test_plan_reads_file_and_stdin(dsn: str, shop: psycopg.Connection[Any], tmp_path: Path) -> None:
    path = tmp_path / "migration.sql"
    path.write_text(EXAMPLE_SQL)
    from_file = expect(run("plan", "--dsn", dsn, "--file", str(path), "--format", "json"), 0)
    from_stdin = expect(
        run("plan", "--dsn", dsn, "--file", "-", "--format", "json", input=EXAMPLE_SQL), 0
    )
    assert json.loads(from_file.stdout)["steps"] == json.loads(from_stdin.stdout)["steps"]

    both = expect(run("plan", "--dsn", dsn, "--sql", EXAMPLE_SQL, "--file", str(path)), 2)
    assert "exactly one of --sql" in both.stderr


def test_unsupported_statement_is_refused_with_the_supported_forms(
    dsn: str, shop: psycopg.Connection[Any]
) -> None:
    sql_text = "ALTER TABLE orders ADD COLUMN note text; ALTER TABLE orders RENAME TO purchases;"
    for command in (["plan"], ["apply", "--yes"]):
        proc = expect(run(*command, "--dsn", dsn, "--sql", sql_text), 2)
        assert proc.stderr.startswith("error: ")
        assert "RENAME TO purchases" in proc.stderr
        assert "Supported statements" in proc.stderr
        assert "CREATE [UNIQUE] INDEX" in proc.stderr
        assert "--allow-raw" in proc.stderr
        assert proc.stdout == ""
    assert columns(shop, "orders") == ["id", "user_id", "amount"]
    assert one(shop, "SELECT to_regclass('purchases') IS NULL")

    empty = expect(run("plan", "--dsn", dsn, "--sql", "  -- nothing\n"), 0)
    assert "(0 steps)" in empty.stdout and "nothing to do" in empty.stdout
    garbage = expect(run("plan", "--dsn", dsn, "--sql", "ALTER TABLE orders ADD COLUMN"), 2)
    assert garbage.stderr.startswith("error: ")


# --- apply, status, re-apply --------------------------------------------------------------


def test_apply_status_and_apply_again(
    dsn: str, shop: psycopg.Connection[Any], tmp_path: Path
) -> None:
    path = tmp_path / "m.sql"
    path.write_text(EXAMPLE_SQL)
    proc = expect(run("apply", "--dsn", dsn, "--file", str(path), "--name", "m1", "--yes"), 0)
    assert "migration m1 completed" in proc.stdout
    assert "step_started" in proc.stderr  # logs go to stderr

    assert columns(shop, "orders") == ["id", "user_id", "amount", "status"]
    assert one(shop, "SELECT count(*) FROM orders WHERE status IS NULL") == 0
    assert one(shop, "SELECT count(*) FROM orders WHERE status = 'big'") == ROWS - 33
    assert one(
        shop,
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'orders'::regclass"
        " AND attname = 'status'",
    )
    assert one(
        shop, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_status_idx'::regclass"
    )
    assert one(shop, "SELECT convalidated FROM pg_constraint WHERE conname = 'orders_user_id_fkey'")

    text = expect(run("status", "--dsn", dsn, "m1"), 0).stdout
    assert "migration m1: completed" in text
    for step_id in EXAMPLE_STEP_IDS:
        assert step_id in text
    assert f"{ROWS} / {ROWS}" in text

    [m1] = status_json(dsn, "m1")
    assert m1["name"] == "m1" and m1["state"] == "completed" and m1["last_error"] is None
    steps = len(m1["steps"])  # 7 on PostgreSQL 18, 9 before (NOT NULL through a CHECK)
    listing = expect(run("status", "--dsn", dsn), 0).stdout
    assert "m1" in listing and "completed" in listing and f"{steps}/{steps}" in listing
    assert [s["state"] for s in m1["steps"]] == ["done"] * len(m1["steps"])
    assert {s["attempts"] for s in m1["steps"]} == {1}
    [fill] = [s["backfill"] for s in m1["steps"] if "backfill" in s]
    assert fill["rows_done"] == ROWS

    # the same name and changes again: nothing is re-run
    again = expect(run("apply", "--dsn", dsn, "--file", str(path), "--name", "m1", "--yes"), 0)
    assert "already completed" in again.stdout
    assert one(shop, "SELECT max(attempts) FROM onlineschema.steps") == 1
    updated = one(shop, "SELECT updated_at FROM onlineschema.migrations WHERE name = 'm1'")
    assert updated.isoformat() == m1["updated_at"]

    # other changes under the same name: refused, nothing done
    other = expect(
        run(
            "apply",
            "--dsn",
            dsn,
            "--sql",
            "CREATE INDEX ON orders (amount)",
            "--name",
            "m1",
            "--yes",
        ),
        2,
    )
    assert "already exists with different changes" in other.stderr
    assert one(shop, "SELECT count(*) FROM pg_index WHERE indrelid = 'orders'::regclass") == 2

    # abort undoes only unfinished migrations
    done = expect(run("abort", "--dsn", dsn, "m1", "--yes"), 2)
    assert "already completed" in done.stderr


def test_apply_from_stdin_needs_yes_without_a_terminal(
    dsn: str, shop: psycopg.Connection[Any]
) -> None:
    sql_text = "ALTER TABLE orders ADD COLUMN note text DEFAULT 'n/a';"
    refused = expect(run("apply", "--dsn", dsn, "--file", "-", input=sql_text), 2)
    assert "--yes" in refused.stderr
    assert columns(shop, "orders") == ["id", "user_id", "amount"]

    proc = expect(run("apply", "--dsn", dsn, "--file", "-", "--yes", input=sql_text), 0)
    assert "completed" in proc.stdout
    assert columns(shop, "orders") == ["id", "user_id", "amount", "note"]
    assert one(shop, "SELECT count(*) FROM orders WHERE note = 'n/a'") == ROWS
    # without --name the migration is named after its changes: applying again is a no-op
    [mig] = status_json(dsn)
    assert mig["name"].startswith("migration_") and mig["state"] == "completed"
    again = expect(run("apply", "--dsn", dsn, "--sql", sql_text, "--yes"), 0)
    assert f"migration {mig['name']} is already completed" in again.stdout


def test_contract_phase_waits_for_the_contract_command(
    dsn: str, shop: psycopg.Connection[Any]
) -> None:
    sql_text = "ALTER TABLE orders DROP COLUMN amount;"
    proc = expect(run("apply", "--dsn", dsn, "--sql", sql_text, "--name", "drop", "--yes"), 0)
    assert "Run `onlineschema contract drop`" in proc.stdout
    assert columns(shop, "orders") == ["id", "user_id", "amount"]
    [mig] = status_json(dsn, "drop")
    assert mig["state"] == "awaiting_contract"
    early = expect(run("resume", "--dsn", dsn, "drop"), 2)
    assert "onlineschema contract drop" in early.stderr

    done = expect(run("contract", "--dsn", dsn, "drop"), 0)
    assert "migration drop completed" in done.stdout
    assert columns(shop, "orders") == ["id", "user_id"]
    again = expect(run("contract", "--dsn", dsn, "drop"), 2)
    assert "no contract phase to run" in again.stderr


def test_apply_asks_on_a_terminal(dsn: str, shop: psycopg.Connection[Any]) -> None:
    sql_text = "CREATE INDEX orders_amount_idx ON orders (amount);"
    declined = expect(run_on_terminal("apply", "--dsn", dsn, "--sql", sql_text, answer="n"), 2)
    assert "CREATE INDEX CONCURRENTLY" in declined.stdout  # the plan is shown first
    assert "Apply this plan as migration" in declined.stderr
    assert "not confirmed; nothing was changed" in declined.stderr
    assert one(shop, "SELECT to_regclass('orders_amount_idx') IS NULL")
    assert one(shop, "SELECT to_regclass('onlineschema.migrations') IS NULL")

    accepted = expect(run_on_terminal("apply", "--dsn", dsn, "--sql", sql_text, answer="y"), 0)
    assert "completed" in accepted.stdout
    assert one(
        shop, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_amount_idx'::regclass"
    )


# --- failures -------------------------------------------------------------------------------


def test_failed_step_exits_1_then_abort_restores_the_table(
    dsn: str, shop: psycopg.Connection[Any]
) -> None:
    sql_text = "ALTER TABLE orders ADD CONSTRAINT amount_big CHECK (amount > 600);"
    proc = expect(run("apply", "--dsn", dsn, "--sql", sql_text, "--name", "chk", "--yes"), 1)
    assert proc.stderr.count("error: ") == 1
    assert "amount_big" in proc.stderr and "onlineschema abort chk" in proc.stderr
    assert one(shop, "SELECT convalidated FROM pg_constraint WHERE conname = 'amount_big'") is False

    [mig] = status_json(dsn, "chk")
    assert mig["state"] == "failed" and "amount_big" in mig["last_error"]
    text = expect(run("status", "--dsn", dsn, "chk"), 0).stdout
    assert "migration chk: failed" in text and "last error:" in text

    # on a terminal abort asks first; "no" changes nothing
    declined = expect(run_on_terminal("abort", "--dsn", dsn, "chk", answer="n"), 2)
    assert "Abort migration chk?" in declined.stderr and "not confirmed" in declined.stderr
    assert "amount_big" in declined.stdout  # what it would undo
    assert one(shop, "SELECT count(*) FROM pg_constraint WHERE conname = 'amount_big'") == 1
    # without a terminal abort does not ask (the issue's `onlineschema abort NAME` works in scripts)
    aborted = expect(run("abort", "--dsn", dsn, "chk"), 0)
    assert "migration chk aborted" in aborted.stdout
    assert one(shop, "SELECT count(*) FROM pg_constraint WHERE conname = 'amount_big'") == 0
    [mig] = status_json(dsn, "chk")
    assert mig["state"] == "aborted"
    again = expect(run("abort", "--dsn", dsn, "chk", "--yes"), 2)
    assert "already aborted" in again.stderr
    expect(run("resume", "--dsn", dsn, "chk"), 0)  # nothing to resume: says so, exit 0


def test_lock_budget_spent_exits_3_and_resume_finishes(
    dsn: str, shop: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(dsn) as holder:  # a long transaction holding ACCESS SHARE on orders
        holder.execute("SET application_name = 'long_reader'")
        holder.execute("SELECT count(*) FROM orders").fetchone()
        proc = expect(
            run(
                "apply",
                "--dsn",
                dsn,
                "--sql",
                "ALTER TABLE orders ADD COLUMN note text",
                "--name",
                "note",
                "--yes",
                "--lock-timeout",
                "100ms",
                "--max-lock-wait",
                "1s",
            ),
            3,
        )
        assert "did not get its lock" in proc.stderr
        assert "long_reader" in proc.stderr
        assert "onlineschema resume note" in proc.stderr
        assert columns(shop, "orders") == ["id", "user_id", "amount"]
        [mig] = status_json(dsn, "note")
        assert mig["state"] == "paused"
    done = expect(run("resume", "--dsn", dsn, "note"), 0)
    assert "migration note completed" in done.stdout
    assert columns(shop, "orders") == ["id", "user_id", "amount", "note"]


def test_unknown_migration_is_exit_2(dsn: str) -> None:
    for command in (["resume"], ["abort", "--yes"], ["status"]):
        proc = expect(run(command[0], "--dsn", dsn, "nosuch", *command[1:]), 2)
        assert "no migration named 'nosuch'" in proc.stderr, command
    proc = expect(run("set", "--dsn", dsn, "nosuch", "duty_cycle=0.5"), 2)
    assert "no migration named 'nosuch'" in proc.stderr


# --- connection -------------------------------------------------------------------------------


def _url(dsn: str) -> str:
    p = conninfo_to_dict(dsn)
    return f"postgresql+psycopg://{p['user']}@{p['host']}:{p['port']}/{p['dbname']}"


def test_dsn_from_the_environment(dsn: str) -> None:
    bad = "host=127.0.0.1 port=1 dbname=nope connect_timeout=2"
    expect(run("status", env={"ONLINESCHEMA_DSN": dsn}), 0)
    expect(run("status", env={"DATABASE_URL": _url(dsn)}), 0)
    # ONLINESCHEMA_DSN wins over DATABASE_URL, --dsn over both
    expect(run("status", env={"ONLINESCHEMA_DSN": dsn, "DATABASE_URL": bad}), 0)
    expect(run("status", "--dsn", _url(dsn), env={"ONLINESCHEMA_DSN": bad}), 0)
    proc = expect(run("status"), 2)
    assert "no database to connect to" in proc.stderr and "DATABASE_URL" in proc.stderr


def test_a_dsn_that_does_not_connect_is_exit_2_without_traceback() -> None:
    for command in (
        ["status", "--dsn", "host=127.0.0.1 port=1 dbname=nope connect_timeout=2"],
        ["plan", "--dsn", "not a dsn", "--sql", "CREATE INDEX ON t (a)"],
    ):
        proc = expect(run(*command), 2)
        lines = proc.stderr.strip().splitlines()
        assert lines[0].startswith("error: ") and "connect" in lines[0], proc.stderr
        assert len(lines) <= 2, proc.stderr


# --- logs -------------------------------------------------------------------------------------


def test_logs_on_stderr_only_and_json_logs(dsn: str, shop: psycopg.Connection[Any]) -> None:
    proc = expect(
        run("--log-level", "debug", "plan", "--dsn", dsn, "--sql", EXAMPLE_SQL, "--format", "json"),
        0,
    )
    assert json.loads(proc.stdout)["steps"]

    proc = expect(
        run(
            "--log-format",
            "json",
            "apply",
            "--dsn",
            dsn,
            "--sql",
            EXAMPLE_SQL,
            "--yes",
            "--name",
            "j",
        ),
        0,
    )
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.strip()]
    assert events, "no logs"
    names = [e["event"] for e in events]
    assert "step_started" in names and names[-1] == "migration_completed"
    assert all({"level", "timestamp", "logger"} <= e.keys() for e in events)
    done = events[-1]
    steps = one(shop, "SELECT count(*) FROM onlineschema.steps WHERE migration = 'j'")
    assert done["migration"] == "j" and done["steps_run"] == steps
    assert len(proc.stdout.strip().splitlines()) == 1  # the summary line

    # an error, in JSON logs, is a JSON line too
    err = expect(run("--log-format", "json", "status", "--dsn", dsn, "nosuch"), 2)
    [line] = err.stderr.strip().splitlines()
    event = json.loads(line)
    assert event["event"] == "command_failed" and event["exit_code"] == 2
    assert "no migration named 'nosuch'" in event["error"]

    quiet = expect(
        run("--log-level", "warning", "status", "--dsn", dsn, "j", "--format", "json"), 0
    )
    assert quiet.stderr == ""


# --- backfill, pause, set, resume -------------------------------------------------------------


def test_backfill_command_updates_every_row_exactly_once(
    dsn: str, shop: psycopg.Connection[Any]
) -> None:
    proc = expect(
        run("backfill", "--dsn", dsn, "--table", "orders", "--set", "amount = amount + 1"), 0
    )
    assert "completed" in proc.stdout
    assert "\x1b[" not in proc.stderr  # no progress bar (nor colours) without a terminal
    assert one(shop, "SELECT count(*) FROM orders WHERE amount = id * 3 + 1") == ROWS
    # the same command again is the same migration: it is not run a second time
    again = expect(
        run("backfill", "--dsn", dsn, "--table", "orders", "--set", "amount = amount + 1"), 0
    )
    assert "already completed" in again.stdout
    assert one(shop, "SELECT count(*) FROM orders WHERE amount = id * 3 + 1") == ROWS

    expect(
        run(
            "backfill",
            "--dsn",
            dsn,
            "--table",
            "public.orders",
            "--set",
            "amount = 0",
            "--set",
            "user_id = NULL",
            "--where",
            "id <= 10",
            "--name",
            "first_ten",
        ),
        0,
    )
    assert one(shop, "SELECT count(*) FROM orders WHERE amount = 0 AND user_id IS NULL") == 10
    assert one(shop, "SELECT count(*) FROM orders WHERE amount = id * 3 + 1") == ROWS - 10

    # the parts must make one UPDATE: nothing can be smuggled in
    for table, assignment in (
        ("orders; DROP TABLE users; --", "amount = 1"),
        ("orders", "amount = 1; DROP TABLE users"),
        ("orders", "amount = 1 WHERE false; DROP TABLE users; --"),
    ):
        proc = expect(run("backfill", "--dsn", dsn, "--table", table, "--set", assignment), 2)
        assert proc.stderr.startswith("error: ")
    assert one(shop, "SELECT to_regclass('users') IS NOT NULL")
    expect(run("backfill", "--dsn", dsn, "--table", "nosuch", "--set", "a = 1"), 2)


SLOW_ROWS = 10_000


@pytest.fixture
def slow_table(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """``slow(id, n)``: a backfill with ``slow_inc(id, n)`` takes ~1 ms per row past id
    1000, so its first batch (1000 rows) is quick and the rest lasts ~10 s."""
    conn.execute("CREATE TABLE slow (id bigserial PRIMARY KEY, n int NOT NULL DEFAULT 0)")
    conn.execute("INSERT INTO slow (n) SELECT 0 FROM generate_series(1, %s)", (SLOW_ROWS,))
    conn.execute(
        "CREATE FUNCTION slow_inc(bigint, int) RETURNS int LANGUAGE sql VOLATILE AS"
        " $$ SELECT pg_sleep(CASE WHEN $1 > 1000 THEN 0.001 ELSE 0 END); SELECT $2 + 1 $$"
    )
    yield conn


def _wait_for_rows(conn: psycopg.Connection[Any], name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if one(conn, "SELECT to_regclass('onlineschema.backfills') IS NOT NULL"):
            done = conn.execute(
                "SELECT rows_done FROM onlineschema.backfills WHERE migration = %s", (name,)
            ).fetchone()
            if done and done[0] > 0:
                return
        time.sleep(0.05)
    raise AssertionError("the backfill did not start")


def test_pause_set_and_resume_a_running_backfill(
    dsn: str, slow_table: psycopg.Connection[Any]
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ONLINESCHEMA_DSN", "DATABASE_URL")}
    runner = subprocess.Popen(
        [sys.executable, "-m", "onlineschema", "backfill", "--dsn", dsn,
         "--table", "slow", "--set", "n = slow_inc(id, n)", "--name", "slow"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        _wait_for_rows(slow_table, "slow")
        busy = expect(run("resume", "--dsn", dsn, "slow"), 2)  # it is running elsewhere
        assert "being run by another process" in busy.stderr
        paused = expect(run("pause", "--dsn", dsn, "slow"), 0)
        assert "pause requested" in paused.stdout
        expect(run("set", "--dsn", dsn, "slow", "duty_cycle=1", "batch_target=100ms"), 0)
        _out, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 3, err
    assert "Traceback" not in err
    assert "paused" in err and "onlineschema resume slow" in err
    [mig] = status_json(dsn, "slow")
    assert mig["state"] == "paused"
    [fill] = [s["backfill"] for s in mig["steps"] if "backfill" in s]
    assert 1000 <= fill["rows_done"] < SLOW_ROWS
    assert one(slow_table, "SELECT count(*) FROM slow WHERE n = 1") == fill["rows_done"]
    assert one(
        slow_table, "SELECT settings FROM onlineschema.control WHERE migration = 'slow'"
    ) == {
        "duty_cycle": "1",
        "batch_target": "0.1",
    }
    bad = expect(run("set", "--dsn", dsn, "slow", "bogus=1", "duty_cycle=50%"), 2)
    assert "unknown setting(s): bogus" in bad.stderr and "duty_cycle" in bad.stderr

    # the rest need not be slow: resume finishes, and no row was updated twice or missed
    slow_table.execute(
        "CREATE OR REPLACE FUNCTION slow_inc(bigint, int) RETURNS int LANGUAGE sql VOLATILE"
        " AS $$ SELECT $2 + 1 $$"
    )
    done = expect(run("resume", "--dsn", dsn, "slow"), 0)
    assert "migration slow completed" in done.stdout
    assert one(slow_table, "SELECT count(*) FROM slow WHERE n = 1") == SLOW_ROWS


def test_ctrl_c_stops_resumably(dsn: str, slow_table: psycopg.Connection[Any]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("ONLINESCHEMA_DSN", "DATABASE_URL")}
    runner = subprocess.Popen(
        [sys.executable, "-m", "onlineschema", "backfill", "--dsn", dsn,
         "--table", "slow", "--set", "n = slow_inc(id, n)", "--name", "slow"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        _wait_for_rows(slow_table, "slow")
        runner.send_signal(signal.SIGINT)
        _out, err = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert runner.returncode == 3, err
    assert "Traceback" not in err
    assert "interrupted" in err and "onlineschema resume slow" in err
    [mig] = status_json(dsn, "slow")
    assert mig["state"] == "paused" and mig["last_error"] == "interrupted (Ctrl-C)"
    slow_table.execute(
        "CREATE OR REPLACE FUNCTION slow_inc(bigint, int) RETURNS int LANGUAGE sql VOLATILE"
        " AS $$ SELECT $2 + 1 $$"
    )
    expect(run("resume", "--dsn", dsn, "slow"), 0)
    assert one(slow_table, "SELECT count(*) FROM slow WHERE n = 1") == SLOW_ROWS


def test_progress_bars_on_a_terminal(dsn: str, shop: psycopg.Connection[Any]) -> None:
    """With stderr on a terminal, apply draws the plan and backfill bars there."""
    primary, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("ONLINESCHEMA_DSN", "DATABASE_URL")}
    env.update(TERM="xterm", COLUMNS="140", LINES="40")
    proc = subprocess.Popen(
        [sys.executable, "-m", "onlineschema", "apply", "--dsn", dsn, "--sql", EXAMPLE_SQL, "--yes"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary, env=env,
    )  # fmt: skip
    os.close(secondary)
    screen = b""
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            if not select.select([primary], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(primary)
        if time.monotonic() >= deadline:
            proc.kill()
    assert proc.wait(timeout=60) == 0
    assert proc.stdout is not None and b"completed" in proc.stdout.read()
    proc.stdout.close()
    shown = screen.decode(errors="replace")
    steps = one(shop, "SELECT count(*) FROM onlineschema.steps")
    assert f"{steps}/{steps} steps" in shown
    assert f"{ROWS}/{ROWS} rows" in shown
    assert "backfill public.orders" in shown
    assert "migration_completed" in shown  # logs print above the bars


# --- pure helpers and commands that need no database -------------------------------------------


def test_dsn_and_setting_helpers() -> None:
    assert normalize_dsn("postgresql+psycopg://u@h:5/db") == "postgresql://u@h:5/db"
    assert normalize_dsn("postgres+psycopg2://u@h/db") == "postgres://u@h/db"
    assert normalize_dsn("host=h dbname=d") == "host=h dbname=d"
    assert setting_value("batch_target", "250ms") == "0.25"
    assert setting_value("duty_cycle", "40%") == "0.4"
    assert setting_value("batch_max", "5000") == "5000"
    assert setting_value("sleep", "1min") == "60.0"


def test_help_version_and_demo_command_are_registered() -> None:
    version = expect(run("--version"), 0)
    assert "onlineschema" in version.stdout
    demo = expect(run("demo", "--help"), 0).stdout
    assert "--rows" in demo and "--blocker" in demo and "--keep" in demo
