"""The Alembic integration, through a real Alembic project driven by the `alembic` command.

``tests/alembic_project`` (alembic.ini, env.py, versions/) is copied to a temporary
directory, pointed at the test database, and run with ``python -m alembic`` in a
subprocess:

* ``0001`` plain Alembic tables; ``0002`` ``run()`` (change objects) and ``op.invoke()``
  (a SQL snippet); ``0003`` a non-idempotent backfill ``n = n + 1``; ``0004`` ``expand()``
  with ``abort()`` as its downgrade; ``0005`` ``contract()``.

Checked: the schema and data after ``upgrade head``; a long transaction on the table
(the upgrade waits and retries, a writer is never blocked past its own short
``statement_timeout``); the lock budget spent (exit non-zero, ``alembic_version``
unchanged, ``upgrade`` again resumes); SIGKILL in the middle of the backfill (``upgrade``
again finishes, every row updated exactly once, ``alembic_version`` right); expand and
contract across revisions and ``downgrade`` aborting an expand; ``--sql`` scripts (shape,
squawk, and run for real statement by statement); misconfigured ``env.py`` files refused
before any DDL.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pglast
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
    must_not_insert,
    state_rows,
    trigger_names,
)
from psycopg.conninfo import conninfo_to_dict
from scenario_tools import Blocker, Writer, wait_backends_gone, wait_until
from sqlalchemy.engine import URL

from onlineschema import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddIndex,
    AddUnique,
    AlterColumnType,
    Backfill,
    DropConstraint,
    DropDefault,
    DropIndex,
    DropNotNull,
    Executor,
    Refused,
    SetDefault,
    SetNotNull,
    ValidateConstraint,
)
from onlineschema.alembic import (
    OnlineMigrateOp,
    assumed_catalog,
    hold_contract,
    render_offline,
)
from onlineschema.planner import build_plan

PROJECT = Path(__file__).resolve().parent / "alembic_project"
APP_NAME = "alembic-under-test"
ORDERS = 2000


def _url(dsn: str) -> str:
    info = conninfo_to_dict(dsn)
    host = str(info.get("host") or "localhost")
    query = {"application_name": APP_NAME}
    if host.startswith("/"):
        query["host"] = host
        host = ""
    url = URL.create(
        "postgresql+psycopg",
        username=str(info["user"]) if info.get("user") else None,
        password=str(info["password"]) if info.get("password") else None,
        host=host or None,
        port=int(info["port"]) if info.get("port") else None,
        database=str(info["dbname"]),
        query=query,
    )
    return url.render_as_string(hide_password=False)


@dataclass
class Project:
    """A copy of tests/alembic_project pointed at one database."""

    path: Path
    dsn: str
    env: dict[str, str] = field(default_factory=dict)

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "alembic", *args]

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.env)
        env.update(extra or {})
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def run(
        self, *args: str, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.command(*args),
            cwd=self.path,
            env=self.environ(env),
            capture_output=True,
            text=True,
            timeout=180,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"alembic {' '.join(args)} exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
            )
        return proc

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(*args),
            cwd=self.path,
            env=self.environ(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def use_env(self, variant: str) -> None:
        shutil.copy(self.path / "env_variants" / f"{variant}.py", self.path / "env.py")

    def version(self) -> str | None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            exists = conn.execute("SELECT to_regclass('alembic_version')").fetchone()
            if not exists or exists[0] is None:
                return None
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return row[0] if row else None


def _copy_project(tmp_path: Path, url: str, source: Path = PROJECT, name: str = "project") -> Path:
    """A copy of an Alembic project folder pointed at ``url``. Every project gets the
    shared ``knobs.py`` (settings from the environment) of tests/alembic_project."""
    dest = tmp_path / name
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("__pycache__"))
    if source != PROJECT:
        shutil.copy(PROJECT / "knobs.py", dest / "knobs.py")
    ini = dest / "alembic.ini"
    text = ini.read_text()
    line = next(x for x in text.splitlines() if x.startswith("sqlalchemy.url"))
    ini.write_text(text.replace(line, "sqlalchemy.url = " + url.replace("%", "%%")))
    return dest


@pytest.fixture
def project(tmp_path: Path, dsn: str) -> Project:
    return Project(_copy_project(tmp_path, _url(dsn)), dsn)


@pytest.fixture
def offline_project(tmp_path: Path) -> Project:
    """No database at all: --sql never connects."""
    return Project(_copy_project(tmp_path, "postgresql+psycopg://nobody@offline.invalid/none"), "")


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


def seed(conn: psycopg.Connection[Any], orders: int = ORDERS) -> None:
    """Rows for revision 0001's tables: 100 users, ``orders`` orders with n = id % 7."""
    conn.execute(
        "INSERT INTO users SELECT g, 'user' || g || '@example.com' FROM generate_series(1, 100) g"
    )
    conn.execute(
        "INSERT INTO orders (id, user_id, amount, n)"
        " SELECT g, 1 + g %% 100, g %% 500, g %% 7 FROM generate_series(1, %s) g",
        (orders,),
    )
    conn.execute("ANALYZE users, orders")


def alembic_sessions_gone(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        pids = [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = %s",
                (APP_NAME,),
            ).fetchall()
        ]
    wait_backends_gone(dsn, pids)


# --- online -----------------------------------------------------------------------------


def test_upgrade_head_runs_every_revision_online(
    project: Project, db: psycopg.Connection[Any]
) -> None:
    project.run("upgrade", "0001")
    seed(db)
    out = project.run("upgrade", "head")

    assert project.version() == "0005"
    # 0002: a constant default (one brief step), an index, a validated foreign key
    column_must_exist(db, "orders", "status", "text", nullable=False, default="'new'::text")
    index_must_exist(db, "orders_status_idx", valid=True)
    index_must_exist(db, "orders_user_id_idx", valid=True)
    constraint_must_exist(db, "orders", "orders_user_id_fkey", validated=True, type="f")
    # 0003: every row exactly once
    assert count(db, "SELECT count(*) FROM orders WHERE n <> id %% 7 + 1") == 0
    # 0004 + 0005: filled, NOT NULL, check validated, fill trigger gone after the contract
    column_must_exist(db, "orders", "note", "text", nullable=False)
    assert count(db, "SELECT count(*) FROM orders WHERE note IS DISTINCT FROM 'order ' || id") == 0
    constraint_must_exist(db, "orders", "orders_amount_nonnegative", validated=True, type="c")
    assert trigger_names(db, "orders") == []
    assert not [
        c
        for c in db.execute("SELECT conname FROM pg_constraint").fetchall()
        if c[0].startswith("onlineschema_")
    ]
    # each finished migration's record went away with its revision's alembic_version row
    assert state_rows(db) == []
    for name in ("orders_status", "orders_user_fk", "orders_n_plus_one", "orders_note"):
        assert f"migration={name}" in out.stdout
    assert "migration_awaiting_contract" in out.stdout  # 0004 stopped before the contract
    # online, not only the end state: the index was built concurrently and the foreign key
    # and check were added NOT VALID and validated apart (a naive run logs none of these)
    for action in ("create_index", "add_foreign_key_not_valid", "validate_constraint"):
        assert f"action={action}" in out.stdout, f"no {action} step in the log"


def test_long_transaction_upgrade_waits_and_writer_is_not_blocked(
    project: Project, db: psycopg.Connection[Any], dsn: str
) -> None:
    project.run("upgrade", "0001")
    seed(db)
    # the application: if the migration queued for its ACCESS EXCLUSIVE lock behind the
    # long transaction, these statements would wait for the whole transaction and hit
    # their own statement_timeout (well above the migration's 200ms lock_timeout)
    writer = Writer(
        dsn,
        "INSERT INTO orders (id, user_id, amount) VALUES (100000 + %(i)s, 1, 1)",
        "UPDATE orders SET amount = amount + 1 WHERE id = 1 + %(i)s %% 100",
        statement_timeout="1500ms",
    )
    proc = None
    with Blocker(dsn, "SELECT 1 FROM orders LIMIT 1") as blocker:
        blocker.start()
        writer.start_writing()
        try:
            proc = project.start("upgrade", "0002")
            wait_until(
                lambda: (
                    db.execute("SELECT to_regclass('onlineschema.steps') IS NOT NULL").fetchone()[0]  # type: ignore[index]
                    and db.execute(
                        "SELECT count(*) FROM onlineschema.steps WHERE state = 'running'"
                    ).fetchone()[0]
                ),  # type: ignore[index]
                timeout=60,
                what="the migration to start its first step",
            )
            before = writer.count()
            writer.wait_for_samples(50)
            assert proc.poll() is None, "the upgrade should still be waiting for the lock"
            assert project.version() == "0001"
            blocker.release()
            out, _ = proc.communicate(timeout=120)
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
            writer.stop()  # raises if any statement failed (e.g. its statement_timeout)
    assert proc.returncode == 0, out
    assert writer.count() > before
    assert "waiting_for_blockers" in out or "lock_retry" in out
    assert project.version() == "0002"
    column_must_exist(db, "orders", "status", "text", nullable=False)
    assert count(db, "SELECT count(*) FROM orders WHERE status IS DISTINCT FROM 'new'") == 0
    assert state_rows(db) == []


def test_lock_budget_spent_then_upgrade_again_resumes(
    project: Project, db: psycopg.Connection[Any], dsn: str
) -> None:
    """Revision 0002 runs two migrations; the second one's foreign key cannot get its
    lock on users (a long transaction writes to it). The first migration's work is
    committed, yet neither is recorded as done with the revision: upgrade again finds the
    first finished and resumes the second."""
    project.run("upgrade", "0001")
    seed(db, 200)
    with Blocker(dsn, "UPDATE users SET email = email WHERE id = 1") as blocker:
        blocker.start()
        failed = project.run(
            "upgrade", "0002", env={"OSC_MAX_ATTEMPTS": "3", "OSC_MAX_WAIT": "3s"}, check=False
        )
        assert failed.returncode != 0
        assert "LockBudgetExhausted" in failed.stderr
        assert "run the same `alembic upgrade` again to resume migration 'orders_user_fk'" in (
            " ".join(failed.stderr.split())
        )
        assert project.version() == "0001"
        assert dict(state_rows(db)) == {"orders_status": "completed", "orders_user_fk": "paused"}
        column_must_exist(db, "orders", "status", "text", nullable=False)
        constraint_must_not_exist(db, "orders", "orders_user_id_fkey")
        blocker.release()
    alembic_sessions_gone(dsn)
    out = project.run("upgrade", "0002")
    assert "migration_already_applied" in out.stdout  # orders_status, not run again
    assert project.version() == "0002"
    index_must_exist(db, "orders_status_idx", valid=True)
    index_must_exist(db, "orders_user_id_idx", valid=True)
    constraint_must_exist(db, "orders", "orders_user_id_fkey", validated=True)
    assert state_rows(db) == []


#: the alembic process's session inside a backfill batch of orders: in its UPDATE, with
#: RowExclusiveLock on orders and a transaction id (rows written, not committed); with
#: the rows the backfill's chunks say are committed (same snapshot)
ALEMBIC_IN_BATCH = """
SELECT a.pid, a.backend_xid::text, left(a.query, 80),
       (SELECT sum(rows_done)::int FROM onlineschema.chunks
        WHERE migration = 'orders_n_plus_one') AS committed
FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.application_name = %s AND a.state = 'active'
  AND starts_with(a.query, 'UPDATE "public"."orders"') AND a.backend_xid IS NOT NULL
  AND EXISTS (SELECT FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'relation'
              AND l.granted AND l.relation = 'orders'::regclass
              AND l.mode = 'RowExclusiveLock')
"""


def test_sigkill_mid_backfill_then_upgrade_again_finishes_exactly_once(
    project: Project, db: psycopg.Connection[Any], dsn: str
) -> None:
    """SIGKILL of ``alembic upgrade`` while a backfill batch is open (its UPDATE of
    orders running, slowed down by a trigger, after some batches committed): the batch
    rolls back, the state's count matches the rows changed, and ``upgrade`` again
    finishes with every row updated exactly once."""
    project.run("upgrade", "0002")
    seed(db)
    db.execute(
        "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS"
        " 'BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END';"
        "CREATE TRIGGER slow_row BEFORE UPDATE ON orders FOR EACH ROW"
        " EXECUTE FUNCTION slow_row()"
    )
    slow = {"OSC_BATCH": "40", "OSC_BATCH_SLEEP": "20ms"}
    proc = project.start("upgrade", "0003", env=slow)
    try:

        def in_batch() -> tuple[Any, ...] | None:
            if db.execute("SELECT to_regclass('onlineschema.chunks')").fetchone() == (None,):
                return None
            row = db.execute(ALEMBIC_IN_BATCH, (APP_NAME,)).fetchone()
            return row if row is not None and (row[3] or 0) >= 200 else None

        seen = wait_until(in_batch, timeout=60, what="a backfill batch open, 200 rows done")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    print(f"killed inside a batch: {seen}")
    assert proc.returncode == -signal.SIGKILL
    alembic_sessions_gone(dsn)
    done = count(db, "SELECT count(*) FROM orders WHERE n = id %% 7 + 1")
    assert 0 < done < ORDERS, f"the kill should land mid-backfill ({done} of {ORDERS} rows done)"
    assert count(db, "SELECT count(*) FROM orders WHERE n NOT IN (id %% 7, id %% 7 + 1)") == 0
    chunks = count(
        db,
        "SELECT sum(rows_done)::int FROM onlineschema.chunks WHERE migration = 'orders_n_plus_one'",
    )
    assert done == chunks, f"{done} rows changed, the chunks say {chunks} (killed at {seen})"
    assert done == seen[3], f"the open batch was not rolled back: {done} rows, killed at {seen}"
    assert project.version() == "0002", "alembic_version must not claim the unfinished revision"
    assert dict(state_rows(db)) == {"orders_n_plus_one": "running"}
    db.execute("DROP TRIGGER slow_row ON orders")  # the rest may go fast

    out = project.run("upgrade", "head")
    ours = [x for x in out.stdout.splitlines() if "migration=orders_n_plus_one" in x]
    assert not [x for x in ours if "migration_started" in x], "resumed, not started again"
    assert [x for x in ours if "backfill_resumed" in x]
    assert count(db, "SELECT count(*) FROM orders WHERE n <> id %% 7 + 1") == 0
    assert project.version() == "0005"
    assert state_rows(db) == []


def test_expand_contract_across_revisions_and_downgrade_aborts(
    project: Project, db: psycopg.Connection[Any], pg_version: int
) -> None:
    project.run("upgrade", "0001")
    seed(db, 300)
    project.run("upgrade", "0004")
    assert project.version() == "0004"
    assert dict(state_rows(db)) == {"orders_note": "awaiting_contract"}
    column_must_exist(db, "orders", "note", "text", nullable=False)
    assert trigger_names(db, "orders") == ["onlineschema_fill_note"]
    # the old application, which does not know orders.note, can still insert
    db.execute("INSERT INTO orders (id, user_id, amount) VALUES (90001, 1, 5)")
    assert db.execute("SELECT note FROM orders WHERE id = 90001").fetchone() == ("order 90001",)

    # downgrade 0004 aborts the expanded migration: everything it created is gone
    project.run("downgrade", "0003")
    assert project.version() == "0003"
    column_must_not_exist(db, "orders", "note")
    constraint_must_not_exist(db, "orders", "orders_amount_nonnegative")
    assert trigger_names(db, "orders") == []
    assert db.execute("SELECT to_regproc('onlineschema_fill_orders_note')").fetchone() == (None,)
    assert state_rows(db) == []

    # upgraded again, the revision starts the migration afresh; 0005 contracts it
    project.run("upgrade", "0004")
    assert dict(state_rows(db)) == {"orders_note": "awaiting_contract"}
    project.run("upgrade", "0005")
    assert project.version() == "0005"
    assert trigger_names(db, "orders") == []
    assert state_rows(db) == []
    column_must_exist(db, "orders", "note", "text", nullable=False)
    if pg_version >= 18:
        constraint_must_exist(db, "orders", "orders_note_not_null", validated=True, type="n")
    must_not_insert(
        db,
        "INSERT INTO orders (id, user_id, amount) VALUES (90002, 1, 5)",
        error=psycopg.errors.NotNullViolation,
    )

    # the contract cannot be undone: downgrading past 0004 is refused, nothing changes
    project.run("downgrade", "0004")
    refused = project.run("downgrade", "0003", check=False)
    assert refused.returncode != 0
    assert "abort undoes only a migration that has not finished" in refused.stderr
    assert project.version() == "0004"
    column_must_exist(db, "orders", "note", "text", nullable=False)


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        (
            "no_transaction_per_migration",
            "add transaction_per_migration=True to context.configure(connection=connection, ...)",
        ),
        (
            "connection_in_transaction",
            "open the connection with `with connectable.connect() as connection:`"
            " (not engine.begin())",
        ),
    ],
)
def test_misconfigured_env_is_refused_before_any_ddl(
    project: Project, db: psycopg.Connection[Any], variant: str, expected: str
) -> None:
    project.run("upgrade", "0001")
    seed(db, 50)
    before = catalog_snapshot(db, "orders")
    project.use_env(variant)
    refused = project.run("upgrade", "0002", check=False)
    assert refused.returncode != 0
    assert "Refused" in refused.stderr
    assert expected in " ".join(refused.stderr.split()), refused.stderr
    assert catalog_snapshot(db, "orders") == before
    assert db.execute("SELECT to_regnamespace('onlineschema')").fetchone() == (None,)
    assert project.version() == "0001"


# --- offline (--sql) -------------------------------------------------------------------


#: squawk rules about idempotency and type choices, which the scripts may draw (they are
#: not lock, rewrite or timeout rules); anything else fails the test
NOT_LOCK_RULES = {"prefer-robust-stmts", "prefer-text-field", "prefer-bigint-over-int"}


def squawk(script: str, tmp_path: Path, name: str) -> list[dict[str, Any]]:
    path = tmp_path / name
    path.write_text(script)
    exe = shutil.which("squawk") or str(Path(sys.executable).with_name("squawk"))
    proc = subprocess.run(
        [exe, "--reporter", "json", str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode in (0, 1), proc.stderr
    return list(json.loads(proc.stdout or "[]"))


def onlineschema_lines(script: str) -> set[int]:
    """1-based numbers of the lines that onlineschema rendered (between the COMMIT that
    autocommit_block() emits before them and the BEGIN it emits after)."""
    lines = script.splitlines()
    ours: set[int] = set()
    inside = False
    for i, line in enumerate(lines, start=1):
        if line.startswith("-- onlineschema migration "):
            inside = True
        elif inside and line == "BEGIN;" and lines[i - 2] == "" and lines[i - 3] == "":
            inside = False  # alembic's BEGIN after two blank lines
        if inside:
            ours.add(i)
    return ours


def test_offline_script_shape_and_squawk(offline_project: Project, tmp_path: Path) -> None:
    out = offline_project.run("upgrade", "head", "--sql")
    script = out.stdout
    assert script.count("-- onlineschema migration ") == 5
    assert script.count("PREFLIGHT CHECKS WERE NOT RUN") == 5
    assert "assumes PostgreSQL 18" in script
    assert "ACTION REQUIRED" in script
    assert "--   onlineschema backfill --table public.orders --set 'n = n + 1'" in script
    assert "--where 'note IS NULL'" in script

    # transaction boundaries: CONCURRENTLY never inside BEGIN/COMMIT; onlineschema's DDL
    # always inside its own with SET LOCAL timeouts (or after session SETs if outside)
    in_tx = False
    local_timeouts: set[str] = set()
    session_timeouts: set[str] = set()
    lines = script.splitlines()
    ours = onlineschema_lines(script)
    for i, line in enumerate(lines, start=1):
        if line == "BEGIN;":
            in_tx, local_timeouts = True, set()
        elif line == "COMMIT;":
            in_tx = False
        elif line.startswith("SET LOCAL "):
            local_timeouts.add(line.split()[2])
        elif line.startswith("SET ") and not in_tx:
            session_timeouts.add(line.split()[1])
        elif line.startswith("RESET "):
            session_timeouts.discard(line.split()[1].rstrip(";"))
        if "CONCURRENTLY" in line and not line.startswith("--"):
            assert not in_tx, f"line {i}: {line}"
            assert session_timeouts == {"lock_timeout", "statement_timeout"}, f"line {i}"
        if i in ours and line.startswith(("ALTER TABLE", "CREATE TRIGGER", "DROP TRIGGER")):
            assert in_tx and local_timeouts == {"lock_timeout", "statement_timeout"}, (
                f"line {i} should be in its own transaction with timeouts: {line}"
            )
    # every onlineschema step says which lock it takes
    steps = [x for x in lines if x.startswith("-- step ")]
    locks = [x for x in lines if x.startswith("-- lock: ")]
    assert steps and len(steps) == len(locks)
    # the version row of 0002 is written after 0002's steps
    assert script.index('VALIDATE CONSTRAINT "orders_user_id_fkey"') < script.index(
        "SET version_num='0002'"
    )

    warnings = squawk(script, tmp_path, "upgrade.sql")
    bad = [w for w in warnings if w["rule_name"] not in NOT_LOCK_RULES]
    assert bad == [], bad
    ours_warned = [
        w for w in warnings if w["line"] + 1 in ours and w["rule_name"] != "prefer-robust-stmts"
    ]
    assert ours_warned == [], ours_warned

    # downgrades: 0004's abort and 0003's reverse backfill are onlineschema's; 0002's
    # downgrade drops indexes with plain Alembic operations (not concurrently), which
    # shows that the same squawk run does catch naive DDL
    down = offline_project.run("downgrade", "0004:0001", "--sql").stdout
    assert "phase abort" in down
    assert 'DROP COLUMN IF EXISTS "note"' in down
    assert "--   onlineschema backfill --table public.orders --set 'n = n - 1'" in down
    ours = onlineschema_lines(down)
    warnings = squawk(down, tmp_path, "down.sql")
    assert [w for w in warnings if w["line"] + 1 in ours] == []
    naive = {w["rule_name"] for w in warnings if w["line"] + 1 not in ours}
    assert "require-concurrent-index-deletion" in naive


def run_script(dsn: str, script: str, env: dict[str, str]) -> list[str]:
    """Run an offline script as a DBA would with psql: statement by statement on one
    autocommit session, stopping at each ACTION REQUIRED command to run it. Returns the
    commands run."""
    commands: list[str] = []
    chunk: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:

        def flush() -> None:
            text = "\n".join(chunk)
            chunk.clear()
            if text.strip():
                for stmt in pglast.split(text):
                    conn.execute(stmt.encode())

        for line in script.splitlines():
            if line.startswith("--   onlineschema "):
                flush()
                argv = shlex.split(line.removeprefix("--   "))
                subprocess.run(
                    [sys.executable, "-m", "onlineschema", *argv[1:]],
                    env={**os.environ, **env, "ONLINESCHEMA_DSN": dsn},
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
                commands.append(line)
            else:
                chunk.append(line)
        flush()
    return commands


def test_offline_script_runs_for_real(
    project: Project, db: psycopg.Connection[Any], dsn: str, pg_version: int
) -> None:
    project.run("upgrade", "0001")
    seed(db, 500)
    # what env.py passes to context.configure() reaches the script: settings, version
    project.env.update(OSC_SERVER_VERSION=str(pg_version), OSC_LOCK_TIMEOUT="750ms")
    script = project.run("upgrade", "0001:0004", "--sql").stdout
    assert f"assumes PostgreSQL {pg_version} " in script
    assert "SET LOCAL lock_timeout = '750ms';" in script
    assert "lock_timeout = '200ms'" not in script
    commands = run_script(dsn, script, {})
    assert len(commands) == 2  # the n + 1 backfill and the note backfill
    assert project.version() == "0004"
    column_must_exist(db, "orders", "status", "text", nullable=False)
    index_must_exist(db, "orders_status_idx", valid=True)
    index_must_exist(db, "orders_user_id_idx", valid=True)
    constraint_must_exist(db, "orders", "orders_user_id_fkey", validated=True)
    assert count(db, "SELECT count(*) FROM orders WHERE n <> id %% 7 + 1") == 0
    column_must_exist(db, "orders", "note", "text", nullable=False)
    assert count(db, "SELECT count(*) FROM orders WHERE note IS DISTINCT FROM 'order ' || id") == 0
    constraint_must_exist(db, "orders", "orders_amount_nonnegative", validated=True)
    assert trigger_names(db, "orders") == ["onlineschema_fill_note"]

    run_script(dsn, project.run("upgrade", "0004:0005", "--sql").stdout, {})
    assert project.version() == "0005"
    assert trigger_names(db, "orders") == []


# --- the operation and the offline planner, without alembic ----------------------------

ALL_KINDS = [
    AddColumn("orders", "status", "text", nullable=False, backfill="'x' || id"),
    AddColumn("orders", "flag", "boolean", nullable=False, default="false"),
    AddColumn("orders", "created", "timestamptz", nullable=False, default="now()"),
    AddColumn("orders", "token", "uuid", default="gen_random_uuid()"),
    SetNotNull("orders", "amount"),
    DropNotNull("orders", "user_id"),
    SetDefault("orders", "amount", "0"),
    DropDefault("orders", "n"),
    AddIndex("orders", columns=("amount",), name="orders_amount_idx"),
    DropIndex("orders_old_idx"),
    AddUnique("users", ("email",), name="users_email_key"),
    AddForeignKey("orders", ("user_id",), "users", ("id",), name="orders_user_fk"),
    AddCheck("orders", "amount >= 0", name="orders_amount_check"),
    ValidateConstraint("orders", "orders_n_check"),
    DropConstraint("orders", "orders_old_check"),
    Backfill("orders", {"n": "n + 1"}),
]


def _steps(plan: Any) -> list[tuple[str, str, tuple[str, ...], bool, str]]:
    return [(s.id, s.phase, s.statements, s.transactional, s.lock) for s in plan.steps]


def test_offline_plan_is_the_online_plan(db: psycopg.Connection[Any]) -> None:
    """Against a database that really is as the offline planner assumes, the online plan
    has the same steps, statements, transactions and locks (on the server's version)."""
    db.execute("CREATE TABLE users (id bigint PRIMARY KEY, email text)")
    db.execute(
        "CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint NOT NULL, amount int,"
        " n int DEFAULT 0, old int)"
    )
    db.execute("CREATE INDEX orders_old_idx ON orders (old)")
    db.execute("ALTER TABLE orders ADD CONSTRAINT orders_n_check CHECK (n >= 0) NOT VALID")
    db.execute("ALTER TABLE orders ADD CONSTRAINT orders_old_check CHECK (old > 0)")
    server = int(db.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
    with Executor(db) as ex:
        online = ex.plan(ALL_KINDS)
    catalog, assumptions = assumed_catalog(ALL_KINDS, server)
    offline = build_plan(catalog, ALL_KINDS).plan
    assert _steps(offline) == _steps(online)
    assert "table public.orders has a primary key" in assumptions
    assert "constraint orders_n_check exists on public.orders and is NOT VALID" in assumptions


def test_render_offline_every_kind_and_versions() -> None:
    pg15 = render_offline("all", ALL_KINDS, server_version=150000)
    pg18 = render_offline("all", ALL_KINDS, server_version=180000)
    assert "assumes PostgreSQL 15" in pg15 and "assumes PostgreSQL 18" in pg18
    # NOT NULL: a CHECK helper on 15, NOT NULL NOT VALID on 18
    assert 'CHECK ("status" IS NOT NULL) NOT VALID' in pg15
    assert 'NOT NULL "status" NOT VALID' in pg18
    for text in (pg15, pg18):
        assert 'CREATE INDEX CONCURRENTLY "orders_amount_idx"' in text
        assert 'DROP INDEX CONCURRENTLY IF EXISTS "public"."orders_old_idx"' in text
        assert 'UNIQUE USING INDEX "users_email_key"' in text
        # status (backfill), token (volatile default), n + 1
        assert text.count("ACTION REQUIRED: run the command") == 3
    expand = render_offline("all", ALL_KINDS, phase="expand", server_version=180000)
    assert "DROP INDEX CONCURRENTLY" not in expand
    assert "contract step(s) run in the revision that calls contract(op, 'all', ...)" in expand
    contract = render_offline("all", ALL_KINDS, phase="contract", server_version=180000)
    assert "DROP INDEX CONCURRENTLY" in contract and "ADD COLUMN" not in contract
    undo = render_offline("all", ALL_KINDS, phase="abort", server_version=180000)
    assert 'DROP COLUMN IF EXISTS "status"' in undo
    # the undo of an index build under index_lock_timeout, as the online abort runs it
    lines = undo.splitlines()
    drop = lines.index('DROP INDEX CONCURRENTLY IF EXISTS "public"."orders_amount_idx";')
    assert lines[drop - 2 : drop] == [
        "SET lock_timeout = '60000ms';",
        "SET statement_timeout = '0';",
    ]
    assert "the previous default is not known without the database" in undo
    no_changes = render_offline("all", [], phase="contract")
    assert "onlineschema contract all" in no_changes and "ACTION REQUIRED" in no_changes


def test_offline_refusals() -> None:
    with pytest.raises(Refused, match="name the referenced columns"):
        render_offline("fk", [AddForeignKey("orders", ("user_id",), "users")])
    with pytest.raises(Refused, match="depends on the live table"):
        render_offline("ty", [AlterColumnType("orders", "id", "bigint")])


def test_operation_object() -> None:
    op = OnlineMigrateOp(
        "m", "ALTER TABLE orders ADD COLUMN note text; CREATE INDEX ON orders (note);"
    )
    assert [c.kind for c in op.changes] == ["add_column", "add_index"]
    assert op.reverse().phase == "abort"
    assert "onlineschema run m" in op.describe()
    with pytest.raises(ValueError, match="needs the changes"):
        OnlineMigrateOp("m", [])
    with pytest.raises(ValueError, match="phase must be one of"):
        OnlineMigrateOp("m", [AddColumn("t", "c", "text")], phase="later")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Change objects"):
        OnlineMigrateOp("m", ["ALTER TABLE t ADD COLUMN c text"])  # type: ignore[list-item]
    with pytest.raises(NotImplementedError):
        OnlineMigrateOp("m", phase="contract").reverse()


def test_hold_contract_ends_with_marker() -> None:
    catalog, _ = assumed_catalog([DropIndex("old_idx")], 180000)
    plan = hold_contract(build_plan(catalog, [DropIndex("old_idx")]).plan)
    assert [(s.id, s.phase, s.breaking) for s in plan.steps] == [
        ("drop_index.public.old_idx", "contract", True),
        ("finish", "contract", True),
    ]
