"""Other frameworks' SQL, unchanged, through ``onlineschema apply --file``.

* Django: a throwaway project (Django from PyPI) whose models gain a field with a
  default, a ForeignKey and an index; ``manage.py sqlmigrate`` prints the SQL, which
  onlineschema applies online; ``migrate --fake`` then records it for Django.
* Prisma: ``migration.sql`` files as Prisma writes them (quoted CamelCase names,
  ``-- CreateIndex`` comments, ``ALTER TABLE "Order" ADD CONSTRAINT ... FOREIGN KEY``, a
  new table with its unique index and foreign key, then a change to a table with rows).
* Alembic: ``alembic upgrade A:B --sql`` of plain Alembic operations; ``alembic stamp``
  then records it.

Each runs against a table with rows, and the resulting schema is checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import (
    column_default,
    column_must_exist,
    constraint_must_exist,
    count,
    index_must_exist,
    must_not_insert,
    state_rows,
)
from psycopg.conninfo import conninfo_to_dict

TESTS = Path(__file__).resolve().parent


def onlineschema_apply(dsn: str, path: Path, name: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ONLINESCHEMA_DSN", "DATABASE_URL")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onlineschema",
            "apply",
            "--dsn",
            dsn,
            "--file",
            str(path),
            "--name",
            name,
            "--yes",
        ],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=180,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


# --- Django ----------------------------------------------------------------------------

DJANGO_SETTINGS = """\
SECRET_KEY = "test"
INSTALLED_APPS = ["shop"]
DATABASES = {{"default": {{
    "ENGINE": "django.db.backends.postgresql",
    "NAME": {dbname!r}, "USER": {user!r}, "PASSWORD": {password!r},
    "HOST": {host!r}, "PORT": {port!r},
}}}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
"""

DJANGO_MODELS_V1 = """\
from django.db import models


class Customer(models.Model):
    name = models.CharField(max_length=100)


class Order(models.Model):
    amount = models.IntegerField()
"""

DJANGO_MODELS_V2 = """\
from django.db import models


class Customer(models.Model):
    name = models.CharField(max_length=100)


class Order(models.Model):
    amount = models.IntegerField()
    status = models.CharField(max_length=20, default="new")
    customer = models.ForeignKey(Customer, null=True, on_delete=models.PROTECT)

    class Meta:
        indexes = [models.Index(fields=["amount"], name="shop_order_amount_idx")]
"""


def _manage(project: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "settings", "PYTHONPATH": str(project)},
    )
    assert proc.returncode == 0, f"manage.py {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_django_sqlmigrate_output(tmp_path: Path, dsn: str, db: psycopg.Connection[Any]) -> None:
    import django  # noqa: F401  (in the test extra; a missing one fails here, never skips)

    info = conninfo_to_dict(dsn)
    project = tmp_path / "djangoproject"
    (project / "shop" / "migrations").mkdir(parents=True)
    (project / "shop" / "__init__.py").write_text("")
    (project / "shop" / "migrations" / "__init__.py").write_text("")
    (project / "settings.py").write_text(
        DJANGO_SETTINGS.format(
            dbname=info["dbname"],
            user=info.get("user", ""),
            password=info.get("password", ""),
            host=info.get("host", ""),
            port=str(info.get("port", "")),
        )
    )
    (project / "manage.py").write_text(
        "import sys\nfrom django.core.management import execute_from_command_line\n"
        "execute_from_command_line(sys.argv)\n"
    )
    models = project / "shop" / "models.py"
    models.write_text(DJANGO_MODELS_V1)
    _manage(project, "makemigrations", "shop")
    _manage(project, "migrate", "shop", "0001")  # Django creates the tables itself
    db.execute("INSERT INTO shop_customer (name) SELECT 'c' || g FROM generate_series(1, 20) g")
    db.execute("INSERT INTO shop_order (amount) SELECT g FROM generate_series(1, 1000) g")

    models.write_text(DJANGO_MODELS_V2)
    _manage(project, "makemigrations", "shop")
    sql_text = _manage(project, "sqlmigrate", "shop", "0002")
    # what makes Django's output Django's (if Django changes it, this test says so)
    assert sql_text.lstrip().startswith("BEGIN;") and sql_text.rstrip().endswith("COMMIT;")
    assert "--\n-- Add field" in sql_text
    assert "DEFERRABLE INITIALLY DEFERRED" in sql_text
    assert "DEFAULT 'new' NOT NULL" in sql_text

    path = tmp_path / "0002.sql"
    path.write_text(sql_text)
    onlineschema_apply(dsn, path, "django_shop_0002")

    column_must_exist(db, "shop_order", "status", "character varying(20)", nullable=False)
    assert count(db, "SELECT count(*) FROM shop_order WHERE status IS DISTINCT FROM 'new'") == 0
    column_must_exist(db, "shop_order", "customer_id", "bigint", nullable=True)
    fk = next(
        r[0]
        for r in db.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = 'shop_order'::regclass"
            " AND contype = 'f'"
        ).fetchall()
    )
    constraint_must_exist(
        db,
        "shop_order",
        fk,
        validated=True,
        type="f",
        definition_contains=["REFERENCES shop_customer(id)", "DEFERRABLE INITIALLY DEFERRED"],
    )
    index_must_exist(db, "shop_order_amount_idx", valid=True)
    fk_index = db.execute(
        "SELECT indexrelid::regclass::text FROM pg_index i JOIN pg_attribute a"
        " ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE i.indrelid = 'shop_order'::regclass AND a.attname = 'customer_id'"
    ).fetchone()
    assert fk_index is not None, "Django's index on the foreign key column should exist"
    index_must_exist(db, fk_index[0], valid=True)
    assert dict(state_rows(db)) == {"django_shop_0002": "completed"}
    ran_online(
        db,
        "django_shop_0002",
        "CREATE INDEX CONCURRENTLY",
        "NOT VALID",
        "VALIDATE CONSTRAINT",
    )

    # Django records the migration without running it, and sees its models in the table
    _manage(project, "migrate", "shop", "0002", "--fake")
    out = _manage(project, "showmigrations", "shop")
    assert "[X] 0002" in out
    # Django keeps the default in Python (its SQL drops the column default again)
    assert column_default(db, "shop_order", "status") is None
    db.execute("INSERT INTO shop_order (amount, status, customer_id) VALUES (5, 'paid', 1)")
    must_not_insert(
        db,
        "INSERT INTO shop_order (amount, status, customer_id) VALUES (5, 'paid', 99999)",
        error=psycopg.errors.ForeignKeyViolation,
    )


def ran_online(db: psycopg.Connection[Any], name: str, *fragments: str) -> None:
    """The migration's stored plan ran each fragment (the final catalog alone is the same
    for a naive run: this shows the online path was taken)."""
    row = db.execute("SELECT plan FROM onlineschema.migrations WHERE name = %s", [name]).fetchone()
    assert row is not None, f"no migration {name!r}"
    statements = "\n".join(s for step in row[0]["steps"] for s in step["statements"])
    for fragment in fragments:
        assert fragment in statements, f"{name} did not run {fragment!r}:\n{statements}"


# --- Prisma ----------------------------------------------------------------------------

# prisma migrate dev output for a schema with User and Order (Prisma 5/6 format)
PRISMA_INIT = """\
-- CreateTable
CREATE TABLE "User" (
    "id" SERIAL NOT NULL,
    "email" TEXT NOT NULL,
    "name" TEXT,

    CONSTRAINT "User_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "Order" (
    "id" SERIAL NOT NULL,
    "userId" INTEGER NOT NULL,
    "total" DECIMAL(65,30) NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "Order_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");

-- AddForeignKey
ALTER TABLE "Order" ADD CONSTRAINT "Order_userId_fkey" FOREIGN KEY ("userId") REFERENCES "User"("id") ON DELETE RESTRICT ON UPDATE CASCADE;
"""

# the schema then gains an enum status with a default, a Coupon model that Order refers
# to, and an index on Order.status
PRISMA_CHANGE = """\
-- CreateEnum
CREATE TYPE "OrderStatus" AS ENUM ('PENDING', 'PAID', 'SHIPPED');

-- AlterTable
ALTER TABLE "Order" ADD COLUMN     "couponId" INTEGER,
ADD COLUMN     "status" "OrderStatus" NOT NULL DEFAULT 'PENDING';

-- AlterTable
ALTER TABLE "User" ALTER COLUMN "name" SET NOT NULL;

-- CreateTable
CREATE TABLE "Coupon" (
    "id" SERIAL NOT NULL,
    "code" TEXT NOT NULL,
    "percent" INTEGER NOT NULL DEFAULT 10,

    CONSTRAINT "Coupon_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "Coupon_code_key" ON "Coupon"("code");

-- CreateIndex
CREATE INDEX "Order_status_idx" ON "Order"("status");

-- AddForeignKey
ALTER TABLE "Order" ADD CONSTRAINT "Order_couponId_fkey" FOREIGN KEY ("couponId") REFERENCES "Coupon"("id") ON DELETE SET NULL ON UPDATE CASCADE;
"""


def test_prisma_migration_sql(tmp_path: Path, dsn: str, db: psycopg.Connection[Any]) -> None:
    migrations = tmp_path / "prisma" / "migrations"
    first = migrations / "20240101000000_init" / "migration.sql"
    second = migrations / "20240201000000_order_status_coupon" / "migration.sql"
    for path, text in ((first, PRISMA_INIT), (second, PRISMA_CHANGE)):
        path.parent.mkdir(parents=True)
        path.write_text(text)

    # new tables, their unique index and the foreign key between them
    onlineschema_apply(dsn, first, "20240101000000_init")
    index_must_exist(db, "User_email_key", valid=True, unique=True)
    constraint_must_exist(db, "Order", "Order_userId_fkey", validated=True, type="f")

    db.execute(
        """INSERT INTO "User" (email, name) SELECT 'u' || g, 'user ' || g FROM generate_series(1, 50) g"""
    )
    db.execute(
        """INSERT INTO "Order" ("userId", total) SELECT 1 + g % 50, g FROM generate_series(1, 1500) g"""
    )

    # a change to tables with rows
    onlineschema_apply(dsn, second, "20240201000000_order_status_coupon")
    column_must_exist(db, "Order", "status", '"OrderStatus"', nullable=False)
    assert count(db, """SELECT count(*) FROM "Order" WHERE status <> 'PENDING'""") == 0
    column_must_exist(db, "Order", "couponId", "integer", nullable=True)
    column_must_exist(db, "User", "name", "text", nullable=False)
    index_must_exist(db, "Order_status_idx", valid=True)
    index_must_exist(db, "Coupon_code_key", valid=True, unique=True)
    constraint_must_exist(
        db,
        "Order",
        "Order_couponId_fkey",
        validated=True,
        type="f",
        definition_contains=["ON DELETE SET NULL", "ON UPDATE CASCADE"],
    )
    db.execute("""INSERT INTO "Coupon" (code) VALUES ('TEN')""")
    db.execute("""UPDATE "Order" SET "couponId" = 1 WHERE id = 1""")
    must_not_insert(
        db,
        """UPDATE "Order" SET "couponId" = 42 WHERE id = 2""",
        error=psycopg.errors.ForeignKeyViolation,
    )
    assert dict(state_rows(db)) == {
        "20240101000000_init": "completed",
        "20240201000000_order_status_coupon": "completed",
    }
    ran_online(
        db,
        "20240201000000_order_status_coupon",
        'CREATE INDEX CONCURRENTLY "Order_status_idx"',
        'CREATE UNIQUE INDEX CONCURRENTLY "Coupon_code_key"',
        "NOT VALID",
        'VALIDATE CONSTRAINT "Order_couponId_fkey"',
    )


# --- Alembic --sql of plain operations -------------------------------------------------

PLAIN_REVISION = '''\
"""plain Alembic operations, as autogenerate writes them

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("status", sa.Text(), server_default="new", nullable=False))
    op.add_column("orders", sa.Column("coupon", sa.Text(), nullable=True))
    op.create_index("ix_orders_user_id", "orders", ["user_id"])
    op.create_index("ix_users_email", "users", ["email"], unique=True)
    op.create_foreign_key("fk_orders_user_id", "orders", "users", ["user_id"], ["id"])
    op.create_check_constraint("ck_orders_amount", "orders", "amount >= 0")
    op.alter_column("orders", "n", server_default=None)


def downgrade() -> None:
    pass
'''


def test_alembic_sql_output_of_plain_operations(
    tmp_path: Path, dsn: str, db: psycopg.Connection[Any]
) -> None:
    from test_alembic import Project, _copy_project, _url, seed

    project = Project(_copy_project(tmp_path, _url(dsn)), dsn)
    for rev in (project.path / "versions").glob("000[2-9]_*.py"):
        rev.unlink()
    (project.path / "versions" / "0002_plain.py").write_text(PLAIN_REVISION)
    project.run("upgrade", "0001")
    seed(db, 1000)

    sql_text = project.run("upgrade", "0001:0002", "--sql").stdout
    assert "UPDATE alembic_version SET version_num='0002'" in sql_text
    assert "CREATE INDEX ix_orders_user_id ON orders (user_id)" in sql_text
    path = tmp_path / "0002.sql"
    path.write_text(sql_text)
    onlineschema_apply(dsn, path, "alembic_0002")

    column_must_exist(db, "orders", "status", "text", nullable=False, default="'new'::text")
    column_must_exist(db, "orders", "coupon", "text", nullable=True)
    index_must_exist(db, "ix_orders_user_id", valid=True)
    index_must_exist(db, "ix_users_email", valid=True, unique=True)
    constraint_must_exist(db, "orders", "fk_orders_user_id", validated=True, type="f")
    constraint_must_exist(db, "orders", "ck_orders_amount", validated=True, type="c")
    assert column_default(db, "orders", "n") is None
    # the script's own UPDATE alembic_version ran, as the migration's last step
    assert project.version() == "0002"
    assert "0002 (head)" in project.run("current").stdout
    ran_online(
        db,
        "alembic_0002",
        'CREATE INDEX CONCURRENTLY "ix_orders_user_id"',
        'CREATE UNIQUE INDEX CONCURRENTLY "ix_users_email"',
        'FOREIGN KEY ("user_id") REFERENCES "public"."users" ("id") NOT VALID',
        'VALIDATE CONSTRAINT "fk_orders_user_id"',
    )
