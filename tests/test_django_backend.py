"""The Django backend (``ENGINE: onlineschema.django``): real Django, real PostgreSQL.

A throwaway copy of tests/django_project gets its models written stage by stage,
``manage.py makemigrations`` writes the migrations (data migrations are written by
hand, as users write them), and ``manage.py migrate`` runs in a subprocess:

* online, while a writer keeps writing and a long reader sits on the table: the
  writer never waits a second, schema, data and ``django_migrations`` end right;
* killed with SIGKILL mid-backfill, then ``migrate`` again: every row updated once;
* stopped with Ctrl-C mid-backfill: recorded as paused, then ``migrate`` finishes it;
* stopped (lock budget spent) with exit 3, unrecorded, then resumed by ``migrate``;
* an operation onlineschema refuses: refused before any DDL, naming the migration;
* ``sqlmigrate`` prints the online plan and runs nothing; ``--plan`` and
  ``showmigrations`` as usual;
* unapplied and applied again: each direction runs afresh.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import (
    catalog_snapshot,
    column_must_exist,
    constraint_must_exist,
    constraint_names,
    count,
    index_must_exist,
    index_must_not_exist,
    must_not_insert,
    state_rows,
)
from scenario_tools import (
    ROOT,
    Blocker,
    MigrationProcess,
    Writer,
    backfill_progress,
    executor_backends,
    wait_backends_gone,
)

TEMPLATE = Path(__file__).resolve().parent / "django_project"

MODELS_V1 = """\
from django.db import models


class Customer(models.Model):
    name = models.CharField(max_length=100)


class Order(models.Model):
    amount = models.IntegerField()
    n = models.IntegerField(default=0)
"""

# a field with a default, a unique field, a foreign key, an index, a unique constraint
MODELS_V2 = """\
from django.db import models


class Customer(models.Model):
    name = models.CharField(max_length=100)
    email = models.CharField(max_length=100, null=True, unique=True)


class Order(models.Model):
    amount = models.IntegerField()
    n = models.IntegerField(default=0)
    status = models.CharField(max_length=20, default="new")
    customer = models.ForeignKey(Customer, null=True, on_delete=models.PROTECT)

    class Meta:
        indexes = [models.Index(fields=["amount"], name="shop_order_amount_idx")]
        constraints = [
            models.UniqueConstraint(fields=["customer", "amount"], name="shop_order_customer_amount_uniq")
        ]
"""

#: a data migration as users write it: a non-idempotent UPDATE, so "exactly once" shows
BUMP = """\
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "{after}")]
    operations = [
        migrations.RunSQL("UPDATE shop_order SET n = n + 1", migrations.RunSQL.noop),
    ]
"""

ORDERS = 4000


class Project:
    """A copy of tests/django_project whose manage.py runs against ``dsn``."""

    def __init__(self, path: Path, dsn: str) -> None:
        self.path = path
        self.dsn = dsn

    def env(self, settings: dict[str, Any] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("ONLINESCHEMA_DSN",)}
        env.update(
            DJANGO_TEST_DSN=self.dsn,
            DJANGO_SETTINGS_MODULE="settings",
            PYTHONPATH=os.pathsep.join([str(self.path), str(ROOT)]),
            ONLINESCHEMA_DJANGO=json.dumps(settings or {}),
            PYTHONUNBUFFERED="1",
        )
        return env

    def models(self, text: str) -> None:
        (self.path / "shop" / "models.py").write_text(text)

    def migration(self, name: str, text: str) -> None:
        (self.path / "shop" / "migrations" / f"{name}.py").write_text(text)

    def migrations(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "shop" / "migrations").glob("0*.py"))

    def run(
        self,
        *args: str,
        settings: dict[str, Any] | None = None,
        check: bool = True,
        apps: str = "",
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=self.path,
            capture_output=True,
            text=True,
            timeout=120,
            env={**self.env(settings), "DJANGO_EXTRA_APPS": apps},
            stdin=subprocess.DEVNULL,
        )
        if check:
            assert proc.returncode == 0, (
                f"manage.py {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def start(self, *args: str, settings: dict[str, Any] | None = None) -> MigrationProcess:
        argv = [sys.executable, str(self.path / "manage.py"), *args]
        return MigrationProcess(argv, env=self.env(settings)).start()


@pytest.fixture(autouse=True)
def _no_leftover_processes() -> Iterator[None]:
    yield
    MigrationProcess.kill_leftovers()


@pytest.fixture
def project(tmp_path: Path, dsn: str) -> Project:
    path = tmp_path / "project"
    shutil.copytree(TEMPLATE, path, ignore=shutil.ignore_patterns("__pycache__"))
    return Project(path, dsn)


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


def applied(db: psycopg.Connection[Any]) -> list[tuple[str, int]]:
    """The shop migrations in django_migrations, with how many rows each has."""
    return db.execute(
        "SELECT name, count(*)::int FROM django_migrations WHERE app = 'shop'"
        " GROUP BY name ORDER BY name"
    ).fetchall()


def start_shop(project: Project, db: psycopg.Connection[Any]) -> str:
    """0001 (two new tables) migrated online, with customers and ORDERS orders."""
    project.models(MODELS_V1)
    project.run("makemigrations", "shop")
    # on a database where nothing was applied yet migrate would run plain DDL: plan it
    project.run("migrate", settings={"plain_fresh_database": False})
    db.execute("INSERT INTO shop_customer (name) SELECT 'c' || g FROM generate_series(1, 20) g")
    db.execute(
        "INSERT INTO shop_order (amount, n) SELECT g, 0 FROM generate_series(1, %s) g", (ORDERS,)
    )
    db.execute("ANALYZE shop_customer, shop_order")
    (first,) = project.migrations()
    return first


@pytest.mark.slow
def test_migrate_runs_ordinary_migrations_online_while_the_application_works(
    project: Project, db: psycopg.Connection[Any], dsn: str
) -> None:
    first = start_shop(project, db)
    # CreateModel went through the planner too, as the onlineschema migration of 0001
    assert dict(state_rows(db)) == {f"django:shop.{first}": "completed"}
    project.models(MODELS_V2)
    project.run("makemigrations", "shop")
    second = project.migrations()[1]
    project.migration("0003_bump", BUMP.format(after=second))

    writer = Writer(
        dsn,
        "INSERT INTO shop_customer (name) VALUES ('w' || %(i)s)",
        "UPDATE shop_order SET amount = amount WHERE id = 1 + %(i)s %% 4000",
    ).start_writing()
    try:
        writer.wait_for_samples(20)
        # a long reader: an open transaction that has read the table
        with Blocker(dsn, "SELECT count(*) FROM shop_order").start(hold_for=2.5) as reader:
            t0 = time.monotonic()
            out = project.run("migrate", settings={"lock_timeout": "300ms"})
            t1 = time.monotonic()
            assert reader.released_at is not None and reader.released_at < t1
        writer.wait_for_samples(20)
    finally:
        writer.stop()
    worst = writer.max_latency(t0, t1)
    assert worst < 1.0, f"the writer waited {worst:.2f}s during migrate"
    assert writer.statements_in(t0, t1) > 50, "the writer should have kept writing"
    # the reader was there when migrate started, and migrate waited it out
    assert reader.started_at is not None and reader.started_at < t0 < reader.released_at

    # the schema Django's models expect
    column_must_exist(db, "shop_order", "status", "character varying(20)", nullable=False)
    column_must_exist(db, "shop_order", "customer_id", "bigint", nullable=True)
    column_must_exist(db, "shop_customer", "email", "character varying(100)", nullable=True)
    index_must_exist(db, "shop_order_amount_idx", valid=True)
    constraint_must_exist(db, "shop_order", "shop_order_customer_amount_uniq", type="u")
    constraint_must_exist(db, "shop_customer", "shop_customer_email_key", type="u")
    fk = [c for c in constraint_names(db, "shop_order") if c.endswith("_fk_shop_customer_id")]
    assert len(fk) == 1, constraint_names(db, "shop_order")
    constraint_must_exist(
        db,
        "shop_order",
        fk[0],
        validated=True,
        type="f",
        definition_contains=["REFERENCES shop_customer(id)", "DEFERRABLE INITIALLY DEFERRED"],
    )
    must_not_insert(
        # no customer has that id (the writer adds customers for as long as migrate runs)
        db, "INSERT INTO shop_order (amount, n, status, customer_id) VALUES (1, 0, 'x', -1)"
    )
    # the data: every existing row got the default and exactly one increment
    assert count(db, "SELECT count(*) FROM shop_order WHERE status <> 'new'") == 0
    assert count(db, "SELECT count(*) FROM shop_order WHERE n <> 1") == 0
    assert count(db, "SELECT count(*) FROM shop_order") == ORDERS
    # Django's bookkeeping: each migration recorded once, each planned online once
    assert applied(db) == [(first, 1), (second, 1), ("0003_bump", 1)]
    assert dict(state_rows(db)) == {
        f"django:shop.{first}": "completed",
        f"django:shop.{second}": "completed",
        "django:shop.0003_bump": "completed",
    }
    # an UPDATE of a RunSQL became a batched backfill, and indexes were built concurrently
    assert "backfill_done" in out.stdout
    # migrate again: nothing to do, nothing run again
    again = project.run("migrate")
    assert "No migrations to apply" in again.stdout
    assert count(db, "SELECT count(*) FROM shop_order WHERE n <> 1") == 0


@pytest.mark.slow
def test_sigkill_mid_backfill_then_migrate_again_updates_every_row_once(
    project: Project, db: psycopg.Connection[Any], dsn: str
) -> None:
    first = start_shop(project, db)
    project.migration("0002_bump", BUMP.format(after=first))
    name = "django:shop.0002_bump"
    slow = {"backfill": {"batch_initial": 50, "batch_max": 50, "sleep": 0.02, "duty_cycle": 1.0}}
    proc = project.start("migrate", settings=slow)
    done_at_kill = proc.kill_when(
        lambda: (p := backfill_progress(dsn, name) or 0) >= 200 and p,
        timeout=60,
        what="the backfill of 0002_bump to update some rows",
    )
    wait_backends_gone(dsn, executor_backends(dsn))
    done = count(db, "SELECT count(*) FROM shop_order WHERE n = 1")
    assert done_at_kill <= done < ORDERS, f"the kill should land mid-backfill ({done} done)"
    assert count(db, "SELECT count(*) FROM shop_order WHERE n NOT IN (0, 1)") == 0
    assert applied(db) == [(first, 1)], "django_migrations must not record 0002 yet"
    assert dict(state_rows(db))[name] == "running"

    out = project.run("migrate")
    ours = [line for line in out.stdout.splitlines() if f"migration={name}" in line]
    assert not [x for x in ours if "migration_started" in x], "resumed, not started again"
    assert [x for x in ours if "backfill_resumed" in x], out.stdout[-3000:]
    assert count(db, "SELECT count(*) FROM shop_order WHERE n <> 1") == 0
    assert applied(db) == [(first, 1), ("0002_bump", 1)]
    assert dict(state_rows(db))[name] == "completed"


def test_ctrl_c_mid_backfill_leaves_it_paused_and_migrate_again_finishes(
    project: Project, db: psycopg.Connection[Any], dsn: str
) -> None:
    """Ctrl-C in ``manage.py migrate`` mid-backfill: the migration is recorded as paused,
    "interrupted (Ctrl-C)", with no session left holding it (``status`` says what
    happened, not "running" with nobody running it); ``migrate`` again finishes it."""
    first = start_shop(project, db)
    project.migration("0002_bump", BUMP.format(after=first))
    name = "django:shop.0002_bump"
    slow = {"backfill": {"batch_initial": 50, "batch_max": 50, "sleep": 0.02, "duty_cycle": 1.0}}
    proc = project.start("migrate", settings=slow)
    proc.kill_when(
        lambda: (backfill_progress(dsn, name) or 0) >= 200,
        timeout=60,
        what="the backfill of 0002_bump to update some rows",
        signum=signal.SIGINT,
    )
    stopped = proc.finished
    assert stopped is not None and stopped.returncode != 0, stopped
    assert "KeyboardInterrupt" in stopped.stderr, stopped.stderr[-3000:]
    wait_backends_gone(dsn, executor_backends(dsn))
    assert count(db, "SELECT count(*) FROM shop_order WHERE n = 0") > 0, "stopped mid-backfill"
    assert applied(db) == [(first, 1)], "django_migrations must not record 0002 yet"
    row = db.execute(
        "SELECT state, last_error FROM onlineschema.migrations WHERE name = %s", (name,)
    ).fetchone()
    assert row == ("paused", "interrupted (Ctrl-C)"), row

    project.run("migrate")
    assert count(db, "SELECT count(*) FROM shop_order WHERE n <> 1") == 0
    assert applied(db) == [(first, 1), ("0002_bump", 1)]
    assert dict(state_rows(db))[name] == "completed"


@pytest.mark.slow
def test_lock_budget_spent_exits_3_unrecorded_and_migrate_resumes(
    project: Project, db: psycopg.Connection[Any]
) -> None:
    first = start_shop(project, db)
    project.models(MODELS_V2)
    project.run("makemigrations", "shop")
    second = project.migrations()[1]
    tight = {"lock_timeout": "100ms", "retry": {"max_attempts": 2, "max_wait": "1s"}}
    with Blocker(project.dsn, "SELECT count(*) FROM shop_order").start():
        stopped = project.run("migrate", settings=tight, check=False)
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    assert f"Django migration shop.{second}" in stopped.stderr
    assert "migrate` again" in stopped.stderr
    assert applied(db) == [(first, 1)]
    assert dict(state_rows(db))[f"django:shop.{second}"] == "paused"

    project.run("migrate")
    assert applied(db) == [(first, 1), (second, 1)]
    column_must_exist(db, "shop_order", "status", "character varying(20)", nullable=False)
    index_must_exist(db, "shop_order_amount_idx", valid=True)
    assert dict(state_rows(db))[f"django:shop.{second}"] == "completed"


def onlineschema_cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "onlineschema", *args, "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_an_aborted_migration_is_not_run_again_until_its_record_is_deleted(
    project: Project, db: psycopg.Connection[Any], dsn: str
) -> None:
    first = start_shop(project, db)
    project.models(MODELS_V2)
    project.run("makemigrations", "shop")
    second = project.migrations()[1]
    name = f"django:shop.{second}"
    tight = {"lock_timeout": "100ms", "retry": {"max_attempts": 2, "max_wait": "1s"}}
    with Blocker(project.dsn, "SELECT count(*) FROM shop_order").start():
        assert project.run("migrate", settings=tight, check=False).returncode == 3
    onlineschema_cli(dsn, "abort", name, "--yes")
    assert dict(state_rows(db))[name] == "aborted"

    refused = project.run("migrate", check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "was aborted" in refused.stderr
    found = re.search(r"\((DELETE FROM \S+ WHERE name = '[^']*')\)", refused.stderr)
    assert found, refused.stderr
    delete = found.group(1)
    assert delete.endswith(f"'{name}'") and '"onlineschema"."migrations"' in delete
    assert applied(db) == [(first, 1)]

    db.execute(delete)
    project.run("migrate")
    assert applied(db) == [(first, 1), (second, 1)]
    index_must_exist(db, "shop_order_amount_idx", valid=True)
    assert dict(state_rows(db))[name] == "completed"


REFUSED_MODELS = MODELS_V1.replace(
    "    n = models.IntegerField(default=0)\n",
    "    n = models.IntegerField(default=0)\n    note = models.TextField(null=True)\n\n"
    "    class Meta:\n        db_table = 'shop_orders'\n",
)


def test_an_operation_onlineschema_refuses_is_refused_before_any_ddl(
    project: Project, db: psycopg.Connection[Any]
) -> None:
    first = start_shop(project, db)
    # makemigrations writes AddField (fine) and AlterModelTable (a table rename: refused)
    project.models(REFUSED_MODELS)
    project.run("makemigrations", "shop")
    second = project.migrations()[1]
    before = catalog_snapshot(db, "shop_order")
    states_before = state_rows(db)

    refused = project.run("migrate", check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = refused.stderr
    assert f"Django migration shop.{second}" in message
    assert "Rename table for order to shop_orders" in message
    assert "refused before it changed anything" in message
    assert "renaming a table" in message and "fix:" in message
    assert "Traceback" not in message
    # nothing ran: not the AddField before it either, and nothing recorded anywhere
    assert catalog_snapshot(db, "shop_order") == before
    assert count(db, "SELECT count(*) FROM pg_class WHERE relname = 'shop_orders'") == 0
    assert state_rows(db) == states_before
    assert applied(db) == [(first, 1)]


IN_TRANSACTION = """\
from django.core.management import call_command
from django.db import transaction

with transaction.atomic():
    call_command("migrate", verbosity=0)
"""


def test_migrate_inside_a_transaction_is_refused_before_any_ddl(
    project: Project, db: psycopg.Connection[Any]
) -> None:
    first = start_shop(project, db)
    project.models(MODELS_V2)
    project.run("makemigrations", "shop")
    before = catalog_snapshot(db, "shop_order")
    refused = project.run("shell", "-c", IN_TRANSACTION, check=False)
    assert refused.returncode != 0
    assert "inside an open transaction" in refused.stderr, refused.stderr[-2000:]
    assert "outside transaction.atomic()" in refused.stderr
    assert catalog_snapshot(db, "shop_order") == before
    assert applied(db) == [(first, 1)]


def test_sqlmigrate_prints_the_online_plan_and_runs_nothing(
    project: Project, db: psycopg.Connection[Any]
) -> None:
    first = start_shop(project, db)
    project.models(MODELS_V2)
    project.run("makemigrations", "shop")
    second = project.migrations()[1]
    project.migration("0003_bump", BUMP.format(after=second))
    before = catalog_snapshot(db, "shop_order")

    script = project.run("sqlmigrate", "shop", second).stdout
    # the online plan, not Django's SQL
    assert f"-- part 1: onlineschema migration 'django:shop.{second}'" in script
    assert 'CREATE INDEX CONCURRENTLY "shop_order_amount_idx"' in script
    assert "NOT VALID;" in script and "VALIDATE CONSTRAINT" in script
    assert "SET LOCAL lock_timeout = '500ms';" in script
    assert 'UNIQUE USING INDEX "shop_order_customer_amount_uniq"' in script
    # sqlmigrate wraps an atomic migration in BEGIN/COMMIT: the script closes and reopens it
    lines = [line for line in script.splitlines() if line.strip()]
    assert lines[0] == "BEGIN;" and lines[-1] == "COMMIT;"
    assert lines[4].startswith("COMMIT;") and lines[-2].startswith("BEGIN;")
    assert not [
        line for line in lines if line.startswith("CREATE INDEX ") and "CONCURRENTLY" not in line
    ]

    bump = project.run("sqlmigrate", "shop", "0003_bump").stdout
    assert "onlineschema backfill --table public.shop_order --set 'n = n + 1'" in bump

    # nothing ran, nothing recorded
    assert catalog_snapshot(db, "shop_order") == before
    assert dict(state_rows(db)) == {f"django:shop.{first}": "completed"}
    assert applied(db) == [(first, 1)]
    # Django's other commands behave as usual
    plan = project.run("migrate", "--plan").stdout
    assert f"shop.{second}" in plan and "shop.0003_bump" in plan
    shown = project.run("showmigrations", "shop").stdout
    assert f"[X] {first}" in shown and f"[ ] {second}" in shown


@pytest.mark.slow
def test_unapply_then_apply_again_runs_each_direction_afresh(
    project: Project, db: psycopg.Connection[Any]
) -> None:
    first = start_shop(project, db)
    project.models(
        MODELS_V1.replace(
            "    n = models.IntegerField(default=0)\n",
            "    n = models.IntegerField(default=0)\n\n    class Meta:\n"
            "        indexes = [models.Index(fields=['amount'], name='shop_order_amount_idx')]\n",
        )
    )
    project.run("makemigrations", "shop")
    second = project.migrations()[1]
    project.run("migrate")
    index_must_exist(db, "shop_order_amount_idx", valid=True)
    # sqlmigrate of an applied migration: said so, with Django's SQL, exit 0
    shown = project.run("sqlmigrate", "shop", second).stdout
    assert "CANNOT BE PLANNED against the database as it is now" in shown
    assert "shop_order_amount_idx" in shown

    back = project.run("migrate", "shop", first)
    assert "DROP INDEX CONCURRENTLY" in back.stdout or "drop_index" in back.stdout
    index_must_not_exist(db, "shop_order_amount_idx")
    assert applied(db) == [(first, 1)]
    assert dict(state_rows(db)) == {
        f"django:shop.{first}": "completed",
        f"django:shop.{second}:unapply": "completed",
    }

    project.run("migrate")
    index_must_exist(db, "shop_order_amount_idx", valid=True)
    assert applied(db) == [(first, 1), (second, 1)]
    assert dict(state_rows(db)) == {
        f"django:shop.{first}": "completed",
        f"django:shop.{second}": "completed",
    }


DATA_MIGRATION = """\
from django.db import migrations, models
from django.db.models import F


def fill(apps, schema_editor):
    Order = apps.get_model("shop", "Order")
    # reads the column the AddField above adds: it must exist by now
    Order.objects.filter(status="new").update(n=F("n") + 10)


class Migration(migrations.Migration):
    dependencies = [("shop", "{after}")]
    operations = [
        migrations.AddField("order", "status", models.CharField(max_length=20, default="new")),
        migrations.RunPython(fill, migrations.RunPython.noop),
        migrations.RunSQL(
            "INSERT INTO shop_customer (name) SELECT 'tens ' || count(*) FROM shop_order"
            " WHERE n = 10",
            migrations.RunSQL.noop,
        ),
        migrations.RunSQL("UPDATE shop_order SET n = n * 2", migrations.RunSQL.noop),
    ]
"""


def test_runpython_and_raw_runsql_run_in_order_between_online_parts(
    project: Project, db: psycopg.Connection[Any]
) -> None:
    first = start_shop(project, db)
    project.migration("0002_data", DATA_MIGRATION.format(after=first))
    out = project.run("migrate")
    # the AddField ran online before the RunPython read its column, the INSERT (run as
    # written) saw what the RunPython did, and the UPDATE after it ran as a second part
    assert count(db, "SELECT count(*) FROM shop_order WHERE n <> 20") == 0
    assert count(db, "SELECT count(*) FROM shop_customer WHERE name = %s", (f"tens {ORDERS}",)) == 1
    assert dict(state_rows(db)) == {
        f"django:shop.{first}": "completed",
        "django:shop.0002_data": "completed",
        "django:shop.0002_data#2": "completed",
    }
    assert "django_runsql_as_written" in out.stdout
    assert applied(db) == [(first, 1), ("0002_data", 1)]


REFUSED_LATER = DATA_MIGRATION.replace(
    """        migrations.RunSQL("UPDATE shop_order SET n = n * 2", migrations.RunSQL.noop),""",
    """        migrations.AlterModelTable("order", "shop_orders"),""",
)


def test_a_refusal_after_a_runpython_still_comes_before_any_ddl(
    project: Project, db: psycopg.Connection[Any]
) -> None:
    first = start_shop(project, db)
    project.migration("0002_data", REFUSED_LATER.format(after=first))
    assert "AlterModelTable" in REFUSED_LATER and "RunPython(fill" in REFUSED_LATER
    before = catalog_snapshot(db, "shop_order")
    refused = project.run("migrate", check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "Django migration shop.0002_data" in refused.stderr
    assert "Rename table for order to shop_orders" in refused.stderr
    # the AddField before the RunPython did not run, nor the RunPython, nor the INSERT
    assert catalog_snapshot(db, "shop_order") == before
    assert count(db, "SELECT count(*) FROM shop_order WHERE n <> 0") == 0
    assert count(db, "SELECT count(*) FROM shop_customer WHERE name LIKE 'tens %%'") == 0
    assert dict(state_rows(db)) == {f"django:shop.{first}": "completed"}
    assert applied(db) == [(first, 1)]


RENAME = """\
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("shop", "{after}")]
    operations = [migrations.RenameField("order", "amount", "total")]
"""


@pytest.mark.slow
def test_rename_field_expands_is_recorded_and_waits_for_contract(
    project: Project, db: psycopg.Connection[Any], dsn: str
) -> None:
    first = start_shop(project, db)
    project.migration("0002_rename", RENAME.format(after=first))
    project.models(MODELS_V1.replace("amount =", "total ="))
    out = project.run("migrate")
    name = "django:shop.0002_rename"
    assert "django_migration_awaiting_contract" in out.stdout
    assert applied(db) == [(first, 1), ("0002_rename", 1)]
    assert dict(state_rows(db))[name] == "awaiting_contract"
    # old code (amount) and new code (total) both work while the deploy rolls out
    db.execute("INSERT INTO shop_order (amount, n) VALUES (-1, 0)")
    db.execute("INSERT INTO shop_order (total, n) VALUES (-2, 0)")
    assert count(db, "SELECT count(*) FROM shop_order WHERE total IS DISTINCT FROM amount") == 0
    # then the contract, from the CLI, by the name migrate gave it
    onlineschema_cli(dsn, "contract", name)
    column_must_exist(db, "shop_order", "total", "integer", nullable=False)
    assert (
        count(
            db,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'shop_order'::regclass"
            " AND attname = 'amount' AND NOT attisdropped",
        )
        == 0
    )
    assert dict(state_rows(db))[name] == "completed"
    assert project.run("migrate").stdout.count("No migrations to apply") == 1


CONTRIB = "django.contrib.contenttypes,django.contrib.auth"


def test_a_fresh_database_is_migrated_with_plain_ddl_then_later_migrations_online(
    project: Project, db: psycopg.Connection[Any]
) -> None:
    # Django's own apps write SQL the front end does not take (contenttypes 0002 drops a
    # column with CASCADE): on a database where nothing was applied, nothing is at risk
    project.models(MODELS_V1)
    project.run("makemigrations", "shop", apps=CONTRIB)
    out = project.run("migrate", apps=CONTRIB)
    assert "django_fresh_database_plain_ddl" in out.stdout
    assert count(db, "SELECT count(*) FROM django_migrations WHERE app = 'contenttypes'") == 2
    assert count(db, "SELECT count(*) FROM django_migrations WHERE app = 'auth'") >= 12
    assert state_rows(db) == [], "nothing was planned online"
    # the next migrate finds applied migrations: online again
    project.models(MODELS_V2)
    project.run("makemigrations", "shop", apps=CONTRIB)
    second = project.migrations()[1]
    project.run("migrate", apps=CONTRIB)
    assert dict(state_rows(db)) == {f"django:shop.{second}": "completed"}
    index_must_exist(db, "shop_order_amount_idx", valid=True)


DJANGO_TESTS = """\
from django.db import connection
from django.test import TestCase

from shop.models import Order


class TestDatabase(TestCase):
    def test_created_with_plain_ddl(self):
        Order.objects.create(amount=1)
        with connection.cursor() as cur:
            cur.execute("SELECT to_regnamespace('onlineschema') IS NOT NULL")
            online = cur.fetchone()[0]
        self.assertEqual(online, {online})
"""


@pytest.mark.parametrize("online", [False, True])
def test_manage_py_test_creates_the_test_database_plainly_unless_asked(
    project: Project, online: bool
) -> None:
    project.models(MODELS_V1)
    project.run("makemigrations", "shop")
    (project.path / "shop" / "tests.py").write_text(DJANGO_TESTS.format(online=online))
    # (a test database is also a fresh one: plain_fresh_database would make it plain too)
    settings = {"online_test_databases": online, "plain_fresh_database": not online}
    out = project.run("test", "shop", settings=settings)
    assert "OK" in out.stderr, out.stderr


# --- RemoveField and DeleteModel: Django writes `DROP COLUMN ... CASCADE` and `DROP TABLE
# ... CASCADE`, accepted when CASCADE takes only the column's or table's own objects ----


def test_pending_remove_field_runs_online(project: Project, db: psycopg.Connection[Any]) -> None:
    first = start_shop(project, db)
    project.models(MODELS_V1.replace("    n = models.IntegerField(default=0)\n", ""))
    project.run("makemigrations", "shop")
    second = project.migrations()[1]
    project.run("migrate", settings={"contract": "immediately"})
    assert (
        count(
            db,
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'shop_order'::regclass"
            " AND attname = 'n' AND NOT attisdropped",
        )
        == 0
    )
    assert applied(db) == [(first, 1), (second, 1)]
    assert dict(state_rows(db))[f"django:shop.{second}"] == "completed"


def test_pending_delete_model_runs_online(project: Project, db: psycopg.Connection[Any]) -> None:
    first = start_shop(project, db)
    project.models(MODELS_V1.split("\n\nclass Order")[0] + "\n")
    project.run("makemigrations", "shop")
    second = project.migrations()[1]
    project.run("migrate", settings={"contract": "immediately"})
    assert count(db, "SELECT count(*) FROM pg_class WHERE relname = 'shop_order'") == 0
    assert applied(db) == [(first, 1), (second, 1)]
