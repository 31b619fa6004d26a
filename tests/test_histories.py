"""Real migration histories go through (issue 10).

Each test runs the same SQL twice, on two fresh databases with the same starting schema
and rows: once plain (as the framework itself would, one statement after the other) and
once through onlineschema (``parse_sql`` + ``apply``, and ``contract`` when the plan
waits for it). Both databases must then have the same schema (tables, columns, indexes,
constraints, sequences, views, triggers, compared by name) and the same rows. What is
still refused is refused before any DDL, with the hazard named.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import onlineschema
from onlineschema import Executor, PreflightError, Result, UnsupportedStatement
from onlineschema.sqlinput import parse_sql

Conn = psycopg.Connection[Any]

SYSTEM_SCHEMAS = ["pg_catalog", "information_schema", "onlineschema", "pg_toast"]

_SCHEMA_QUERIES = {
    "tables": """
        SELECT n.nspname, c.relname, c.relkind::text
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname <> ALL(%(system)s) AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
        ORDER BY 1, 2""",
    "columns": """
        SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity::text,
               a.attgenerated::text, a.attcollation::regcollation::text
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname <> ALL(%(system)s) AND c.relkind IN ('r', 'p') AND a.attnum > 0
          AND NOT a.attisdropped
        ORDER BY 1, 2, 3""",
    "indexes": """
        SELECT n.nspname, ic.relname, pg_get_indexdef(i.indexrelid), i.indisvalid,
               i.indisunique, i.indisprimary, i.indimmediate
        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = ic.relnamespace
        WHERE n.nspname <> ALL(%(system)s)
        ORDER BY 1, 2""",
    "constraints": """
        SELECT n.nspname, c.relname, k.conname, k.contype::text,
               pg_get_constraintdef(k.oid), k.convalidated, k.condeferrable, k.condeferred
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname <> ALL(%(system)s)
        ORDER BY 1, 2, 3""",
    "sequences": """
        SELECT n.nspname, s.relname, format_type(q.seqtypid, NULL), q.seqstart,
               q.seqincrement, q.seqmax,
               (SELECT d.refobjid::regclass::text || '.' || a.attname FROM pg_depend d
                JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                WHERE d.objid = s.oid AND d.classid = 'pg_class'::regclass
                  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))
        FROM pg_sequence q JOIN pg_class s ON s.oid = q.seqrelid
        JOIN pg_namespace n ON n.oid = s.relnamespace
        WHERE n.nspname <> ALL(%(system)s)
        ORDER BY 1, 2""",
    "views": """
        SELECT schemaname, viewname, definition FROM pg_views
        WHERE schemaname <> ALL(%(system)s) ORDER BY 1, 2""",
    "triggers": """
        SELECT n.nspname, c.relname, t.tgname
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname <> ALL(%(system)s) AND NOT t.tgisinternal
        ORDER BY 1, 2, 3""",
    "functions": """
        SELECT n.nspname, p.proname FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname <> ALL(%(system)s) ORDER BY 1, 2""",
}


def schema_of(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """The schema by name (no oids, no column positions) and each table's rows."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for what, query in _SCHEMA_QUERIES.items():
            out[what] = conn.execute(query, {"system": SYSTEM_SCHEMAS}).fetchall()
        rows = []
        for schema, name, kind in out["tables"]:
            if kind not in ("r", "p"):
                continue
            table = sql.Identifier(schema, name)
            data = conn.execute(
                sql.SQL(
                    "SELECT coalesce(string_agg(to_jsonb(t)::text, E'\\n' ORDER BY"
                    " to_jsonb(t)::text), '') FROM {} t"
                ).format(table)
            ).fetchone()
            assert data is not None
            rows.append((schema, name, data[0]))
        out["rows"] = rows
    return out


def assert_same_schema(plain_dsn: str, ours_dsn: str, *, skip_rows: tuple[str, ...] = ()) -> None:
    theirs, mine = schema_of(plain_dsn), schema_of(ours_dsn)
    for schema in (theirs, mine):  # e.g. the times at which a framework recorded a run
        schema["rows"] = [r for r in schema["rows"] if r[1] not in skip_rows]
    for what in theirs:
        assert mine[what] == theirs[what], (
            f"{what} differ\n--- plain run\n"
            + "\n".join(map(str, theirs[what]))
            + "\n--- onlineschema\n"
            + "\n".join(map(str, mine[what]))
        )


def run_plain(dsn: str, script: str) -> None:
    """The script as the framework (or psql) runs it: as written, in one session."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(script.encode())


def run_ours(dsn: str, script: str, name: str, *, allow_raw: bool = False) -> Result:
    """parse_sql + apply, then the contract phase when the plan waits for it."""
    changes = parse_sql(script, allow_raw=allow_raw)
    result = onlineschema.apply(dsn, changes, name)
    if result.state == "awaiting_contract":
        with Executor(dsn) as ex:
            result = ex.contract(name)
    assert result.state == "completed", result
    return result


def _new_database(admin_dsn: str) -> str:
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    return name


@pytest.fixture
def plain_dsn(admin_dsn: str) -> Iterator[str]:
    """A second fresh database, for the plain run."""
    name = _new_database(admin_dsn)
    try:
        yield make_conninfo(admin_dsn, dbname=name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def both(plain_dsn: str, dsn: str, setup: str | tuple[str, ...]) -> None:
    for target in (plain_dsn, dsn):
        for script in (setup,) if isinstance(setup, str) else setup:
            run_plain(target, script)


def same_result(
    plain_dsn: str,
    dsn: str,
    setup: str | tuple[str, ...],
    script: str,
    name: str,
    *,
    allow_raw: bool = False,
) -> Result:
    """``setup`` in both databases, ``script`` plain in one and through onlineschema in
    the other; both end the same."""
    both(plain_dsn, dsn, setup)
    run_plain(plain_dsn, script)
    result = run_ours(dsn, script, name, allow_raw=allow_raw)
    assert_same_schema(plain_dsn, dsn)
    return result


def refused_before_ddl(dsn: str, script: str, *fragments: str, allow_raw: bool = False) -> str:
    """``script`` is refused (PreflightError or UnsupportedStatement), nothing changed."""
    before = schema_of(dsn)
    with pytest.raises((PreflightError, UnsupportedStatement)) as caught:
        onlineschema.apply(dsn, parse_sql(script, allow_raw=allow_raw), "refused")
    text = str(caught.value)
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in {text!r}"
    assert "fix" in text
    assert schema_of(dsn) == before
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT to_regclass('onlineschema.migrations')").fetchone()
        if row is not None and row[0] is not None:
            assert conn.execute("SELECT count(*) FROM onlineschema.migrations").fetchone() == (0,)
    return text


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ONLINESCHEMA_DSN", "DATABASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "onlineschema", *args],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


SHOP = """
CREATE TABLE users (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name text);
INSERT INTO users (name) SELECT 'user ' || g FROM generate_series(1, 50) g;
CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint REFERENCES users,
                     amount int NOT NULL DEFAULT 0 CONSTRAINT orders_amount_check CHECK (amount >= 0),
                     note text, code varchar(20));
INSERT INTO orders (user_id, amount, note, code)
SELECT 1 + g % 50, g % 300, 'note ' || g, 'c' || g FROM generate_series(1, 500) g;
CREATE INDEX orders_user_id_idx ON orders (user_id);
CREATE TABLE empty_things (id bigint PRIMARY KEY, label text);
"""


# --- 3. nothing to do ------------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        "",
        "-- only a comment\n/* and another */\n",
        "BEGIN;\nSET statement_timeout = 0;\nSET lock_timeout = '1s';\nCOMMIT;\n",
    ],
)
def test_nothing_to_do_is_applied_as_an_empty_plan(dsn: str, tmp_path: Any, script: str) -> None:
    run_plain(dsn, SHOP)
    before = schema_of(dsn)
    path = tmp_path / "migration.sql"
    path.write_text(script)
    proc = cli("apply", "--dsn", dsn, "--file", str(path), "--name", "nothing", "--yes")
    assert proc.returncode == 0, proc.stderr
    status = cli("status", "--dsn", dsn, "nothing", "--format", "json")
    assert status.returncode == 0, status.stderr
    [migration] = json.loads(status.stdout)
    assert (migration["state"], migration["steps"]) == ("completed", [])
    assert schema_of(dsn) == before


def test_only_no_ops_are_applied_as_an_empty_plan(plain_dsn: str, dsn: str) -> None:
    script = """
    ALTER TABLE orders ALTER COLUMN note TYPE text;
    ALTER TABLE orders ALTER COLUMN amount SET NOT NULL;
    ALTER TABLE orders ALTER COLUMN note DROP NOT NULL;
    ALTER TABLE orders ALTER COLUMN note DROP DEFAULT;
    ALTER TABLE orders VALIDATE CONSTRAINT orders_amount_check;
    """
    result = same_result(plain_dsn, dsn, SHOP, script, "no_ops")
    assert result.plan.steps == ()
    notes = " ".join(result.plan.notes)
    for said in (
        "already of type text",
        "already NOT NULL",
        "already nullable",
        "no default",
        "already valid",
    ):
        assert said in notes


# --- 1. DROP COLUMN ... CASCADE ----------------------------------------------------------


def test_drop_column_cascade_takes_only_the_columns_own_indexes_and_constraints(
    plain_dsn: str, dsn: str
) -> None:
    """Django's RemoveField: ``DROP COLUMN ... CASCADE`` of a column with an index, a
    unique constraint, a check and a foreign key of its own."""
    setup = (
        SHOP,
        """
    ALTER TABLE orders ADD COLUMN legacy_code text CONSTRAINT orders_legacy_code_key UNIQUE
        CONSTRAINT orders_legacy_check CHECK (legacy_code <> ''),
        ADD COLUMN legacy_user bigint REFERENCES users;
    CREATE INDEX orders_legacy_lower ON orders (lower(legacy_code));
    """,
    )
    script = """BEGIN;
    ALTER TABLE "orders" DROP COLUMN "legacy_code" CASCADE;
    ALTER TABLE "orders" DROP COLUMN "legacy_user" CASCADE;
    COMMIT;"""
    same_result(plain_dsn, dsn, setup, script, "remove_field")


def test_drop_column_cascade_that_would_drop_more_is_refused_naming_it(dsn: str) -> None:
    run_plain(dsn, SHOP)
    run_plain(
        dsn,
        "ALTER TABLE orders ADD CONSTRAINT orders_code_key UNIQUE (code);"
        " CREATE TABLE refunds (id int PRIMARY KEY,"
        " order_code varchar(20) CONSTRAINT refunds_code_fkey REFERENCES orders (code));"
        " CREATE VIEW order_notes AS SELECT id, note FROM orders;",
    )
    refused_before_ddl(
        dsn,
        "ALTER TABLE orders DROP COLUMN code CASCADE",
        "CASCADE would also drop foreign key public.refunds.refunds_code_fkey",
    )
    refused_before_ddl(
        dsn,
        "ALTER TABLE orders DROP COLUMN note CASCADE",
        "view(s) public.order_notes",
    )


def test_drop_table_cascade_takes_only_the_tables_own_objects(plain_dsn: str, dsn: str) -> None:
    """Django's DeleteModel: ``DROP TABLE ... CASCADE`` of a table with a foreign key of
    its own, indexes, a check and a serial sequence."""
    same_result(plain_dsn, dsn, SHOP, 'DROP TABLE "orders" CASCADE;', "delete_model")


def test_drop_table_cascade_that_would_drop_more_is_refused_naming_it(dsn: str) -> None:
    run_plain(dsn, SHOP)
    refused_before_ddl(
        dsn,
        "DROP TABLE users CASCADE",
        "DROP TABLE public.users CASCADE would also drop foreign key"
        " public.orders.orders_user_id_fkey",
    )
    run_plain(dsn, "CREATE VIEW big_orders AS SELECT id FROM orders WHERE amount > 100;")
    refused_before_ddl(dsn, "DROP TABLE orders CASCADE", "view(s) public.big_orders")


# --- 5. a raw UPDATE fills a new column --------------------------------------------------


def test_raw_update_counts_as_the_backfill_of_a_new_column(plain_dsn: str, dsn: str) -> None:
    script = """
    ALTER TABLE orders ADD COLUMN user_name text;
    UPDATE orders o SET user_name = u.name FROM users u WHERE u.id = o.user_id;
    ALTER TABLE orders ALTER COLUMN user_name SET NOT NULL;
    """
    result = same_result(plain_dsn, dsn, SHOP, script, "raw_fill", allow_raw=True)
    assert [s.action for s in result.plan.steps if s.raw] == ["raw_sql"]


def test_set_not_null_after_a_raw_update_of_another_column_is_still_refused(dsn: str) -> None:
    run_plain(dsn, SHOP)
    refused_before_ddl(
        dsn,
        "ALTER TABLE orders ADD COLUMN user_name text;"
        " UPDATE orders o SET note = u.name FROM users u WHERE u.id = o.user_id;"
        " ALTER TABLE orders ALTER COLUMN user_name SET NOT NULL;",
        "without a value for the existing rows",
        allow_raw=True,
    )


# --- 4. refused though safe or doable online ----------------------------------------------


def test_not_null_column_without_default_on_an_empty_table(plain_dsn: str, dsn: str) -> None:
    script = """
    ALTER TABLE empty_things ADD COLUMN kind text NOT NULL;
    ALTER TABLE "empty_things" ADD COLUMN "position" SERIAL NOT NULL;
    CREATE TABLE tags (id bigint PRIMARY KEY);
    ALTER TABLE tags ADD COLUMN label text NOT NULL;
    ALTER TABLE tags ADD COLUMN seq bigserial;
    """
    result = same_result(plain_dsn, dsn, SHOP, script, "not_null_empty")
    assert any("empty when planned" in note for note in result.plan.notes)


def test_not_null_column_without_default_on_a_table_with_rows_is_still_refused(
    dsn: str,
) -> None:
    run_plain(dsn, SHOP)
    refused_before_ddl(
        dsn,
        "ALTER TABLE orders ADD COLUMN kind text NOT NULL",
        "NOT NULL with no default and no backfill",
    )
    refused_before_ddl(
        dsn,
        "ALTER TABLE orders ADD COLUMN position serial",
        "rewrites the whole table under ACCESS EXCLUSIVE",
    )


def test_a_row_that_appears_after_planning_fails_the_step_safely(dsn: str) -> None:
    """The emptiness is read at plan time; the ALTER itself is the guard at run time."""
    run_plain(dsn, SHOP)

    class RowArrives:
        def step_started(self, step: Any, index: int, total: int) -> None:
            run_plain(dsn, "INSERT INTO empty_things VALUES (1, 'x')")

        def step_finished(self, step: Any, index: int, total: int, skipped: bool) -> None:
            pass

    changes = parse_sql("ALTER TABLE empty_things ADD COLUMN kind text NOT NULL")
    with Executor(dsn) as ex:
        ex.observer = RowArrives()  # type: ignore[assignment]
        with pytest.raises(onlineschema.StepFailed) as failed:
            ex.apply(changes, "too_late")
    assert "contains null values" in str(failed.value)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'empty_things'::regclass"
            " AND attname = 'kind'"
        ).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM empty_things").fetchone() == (1,)


def test_seed_data_for_a_new_table(plain_dsn: str, dsn: str) -> None:
    script = """
    CREATE TABLE order_kinds (id int PRIMARY KEY, label text NOT NULL);
    INSERT INTO order_kinds VALUES (1, 'retail'), (2, 'wholesale');
    INSERT INTO order_kinds SELECT 100 + id, name FROM users WHERE id <= 5;
    UPDATE order_kinds SET label = upper(label) WHERE id > 100;
    DELETE FROM order_kinds WHERE id = 105;
    ALTER TABLE orders ADD COLUMN kind_id int REFERENCES order_kinds;
    """
    same_result(plain_dsn, dsn, SHOP, script, "seed")


def test_deferrable_unique_constraints_via_a_concurrent_index(plain_dsn: str, dsn: str) -> None:
    script = """
    ALTER TABLE orders ADD CONSTRAINT orders_code_key UNIQUE (code) DEFERRABLE INITIALLY DEFERRED;
    ALTER TABLE users ADD CONSTRAINT users_name_key UNIQUE (name) DEFERRABLE;
    ALTER TABLE orders ADD COLUMN ref text CONSTRAINT orders_ref_key UNIQUE DEFERRABLE;
    """
    result = same_result(plain_dsn, dsn, SHOP, script, "deferrable")
    assert [s.action for s in result.plan.steps].count("create_index") == 3
    with psycopg.connect(dsn) as conn:  # deferred: checked at commit, not per statement
        conn.execute("UPDATE orders SET code = 'c1' WHERE id = 2")
        conn.execute("UPDATE orders SET code = 'c2' WHERE id = 1")
        conn.commit()


def test_identity_on_a_not_null_column_and_a_new_identity_column_on_an_empty_table(
    plain_dsn: str, dsn: str
) -> None:
    setup = SHOP, "CREATE TABLE legacy (id int NOT NULL, name text);"
    script = """
    ALTER TABLE legacy ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY (START WITH 100);
    ALTER TABLE empty_things ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;
    ALTER TABLE orders ALTER COLUMN amount DROP DEFAULT;
    ALTER TABLE orders ALTER COLUMN amount ADD GENERATED BY DEFAULT AS IDENTITY;
    """
    result = same_result(plain_dsn, dsn, setup, script, "identity")
    assert [s.action for s in result.plan.steps].count("add_identity") == 3


def test_identity_on_a_column_made_not_null_in_the_same_migration(plain_dsn: str, dsn: str) -> None:
    setup = "CREATE TABLE legacy (id int, name text); INSERT INTO legacy VALUES (1, 'a');"
    script = """
    ALTER TABLE legacy ALTER COLUMN id SET NOT NULL;
    ALTER TABLE legacy ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY;
    """
    result = same_result(plain_dsn, dsn, setup, script, "identity_after_not_null")
    actions = [s.action for s in result.plan.steps]
    assert actions.index("add_identity") > actions.index("validate_constraint")


def test_identity_refusals_name_the_hazard(dsn: str) -> None:
    run_plain(dsn, SHOP)
    refused_before_ddl(
        dsn,
        "ALTER TABLE orders ALTER COLUMN note ADD GENERATED ALWAYS AS IDENTITY",
        "is nullable",
    )
    refused_before_ddl(
        dsn,
        "ALTER TABLE orders ALTER COLUMN amount ADD GENERATED ALWAYS AS IDENTITY",
        "has a default",
    )
    text = refused_before_ddl(
        dsn,
        "ALTER TABLE orders ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY",
        "existing rows would have no value",
    )
    assert "1 problem" not in text and "does not exist" not in text


# --- 7. framework bookkeeping runs last ----------------------------------------------------


def test_alembic_bookkeeping_runs_as_the_last_step(plain_dsn: str, dsn: str) -> None:
    """``alembic upgrade --sql`` from base: CREATE TABLE alembic_version, the DDL, INSERT,
    then the next revision's DDL and UPDATE; the plan runs the bookkeeping last."""
    script = """BEGIN;
    CREATE TABLE alembic_version (
        version_num VARCHAR(32) NOT NULL,
        CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
    );
    ALTER TABLE orders ADD COLUMN status text DEFAULT 'new' NOT NULL;
    INSERT INTO alembic_version (version_num) VALUES ('0001') RETURNING alembic_version.version_num;
    CREATE INDEX ix_orders_status ON orders (status);
    ALTER TABLE orders ALTER COLUMN code TYPE varchar(40);
    UPDATE alembic_version SET version_num='0002' WHERE alembic_version.version_num = '0001';
    COMMIT;"""
    result = same_result(plain_dsn, dsn, SHOP, script, "alembic")
    actions = [s.action for s in result.plan.steps]
    assert actions[-3:] == ["bookkeeping"] * 3
    assert "bookkeeping" not in actions[:-3]
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0002",)]


def test_bookkeeping_waits_for_the_contract_phase(dsn: str) -> None:
    run_plain(dsn, SHOP)
    run_plain(dsn, "CREATE TABLE django_migrations (id serial, app text, name text)")
    script = """
    ALTER TABLE orders RENAME COLUMN note TO remark;
    INSERT INTO django_migrations (app, name) VALUES ('shop', '0002_rename');
    """
    result = onlineschema.apply(dsn, parse_sql(script), "rename")
    assert result.state == "awaiting_contract"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM django_migrations").fetchone() == (0,)
    with Executor(dsn) as ex:
        assert ex.contract("rename").state == "completed"
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT name FROM django_migrations").fetchall() == [("0002_rename",)]


# --- 6. names: as PostgreSQL gives them ---------------------------------------------------

LONG_TABLE = "customer_subscription_billing_period_adjustments_history_items"  # 62 bytes
LONG_SETUP = """
CREATE TABLE long_table (
    id bigint NOT NULL,
    adjustment_reason_description_text_for_the_billing_department text,
    secondary_reference_code_supplied_by_the_upstream_partner_api text,
    "größe_der_anpassung_in_der_währung_des_kunden_für_die_abrechnung" int,
    user_id bigint
);
INSERT INTO long_table SELECT g, 'r' || g, 's' || g, g, 1 + g % 50
FROM generate_series(1, 200) g;
CREATE TABLE plain_t (a text, b text, c int);
INSERT INTO plain_t VALUES ('x', 'y', 1);
ALTER TABLE plain_t ADD CONSTRAINT plain_t_c_check CHECK (c > 0);
CREATE INDEX plain_t_a_b_idx ON plain_t (a, b);
""".replace("long_table", LONG_TABLE)


def test_auto_and_long_names_are_the_ones_postgresql_gives(plain_dsn: str, dsn: str) -> None:
    t = LONG_TABLE
    script = f"""
    CREATE INDEX ON {t} (adjustment_reason_description_text_for_the_billing_department,
                         secondary_reference_code_supplied_by_the_upstream_partner_api);
    CREATE INDEX ON {t} (adjustment_reason_description_text_for_the_billing_department,
                         secondary_reference_code_supplied_by_the_upstream_partner_api);
    CREATE UNIQUE INDEX ON {t} (lower(adjustment_reason_description_text_for_the_billing_department));
    CREATE INDEX ON {t} ("größe_der_anpassung_in_der_währung_des_kunden_für_die_abrechnung")
        INCLUDE (user_id);
    ALTER TABLE {t} ADD UNIQUE (secondary_reference_code_supplied_by_the_upstream_partner_api);
    ALTER TABLE {t} ADD PRIMARY KEY (id);
    ALTER TABLE {t} ADD FOREIGN KEY (user_id) REFERENCES users;
    ALTER TABLE {t} ADD CHECK ("größe_der_anpassung_in_der_währung_des_kunden_für_die_abrechnung" > 0);
    ALTER TABLE {t} ADD CHECK (user_id < id + 100);
    ALTER TABLE {t} ADD CONSTRAINT
        this_check_constraint_has_a_name_much_longer_than_sixty_three_bytes_in_all
        CHECK (id > 0);
    CREATE INDEX "ééééééééééééééééééééééééééééééééééééééééé" ON {t} (user_id);
    ALTER TABLE {t} ALTER COLUMN adjustment_reason_description_text_for_the_billing_department
        SET NOT NULL;
    CREATE INDEX ON plain_t (a, b);
    CREATE INDEX ON plain_t (a, (a::text), (a || b), upper(b), (c::text), (b COLLATE "C"));
    ALTER TABLE plain_t ADD CHECK (c >= 1);
    ALTER TABLE plain_t ADD CHECK (c < 100);
    ALTER TABLE plain_t ADD UNIQUE (a, b);
    """
    same_result(plain_dsn, dsn, (SHOP, LONG_SETUP), script, "names")
    with psycopg.connect(dsn) as conn:  # the clashes got numbers, as PostgreSQL numbers them
        names = {r[0] for r in conn.execute("SELECT relname FROM pg_class").fetchall()}
        assert {"plain_t_a_b_idx1", "plain_t_a_b_key"} <= names
        cons = {r[0] for r in conn.execute("SELECT conname FROM pg_constraint").fetchall()}
        assert {"plain_t_c_check1", "plain_t_c_check2"} <= cons


# --- 2. a rename or type change beside other changes to the table --------------------------


def test_rename_beside_other_changes_to_the_table(plain_dsn: str, dsn: str) -> None:
    """Prisma writes a rename with the rest of the model's changes in one migration."""
    script = """
    -- AlterTable
    ALTER TABLE "orders" ADD COLUMN "channel" TEXT;
    ALTER TABLE "orders" RENAME COLUMN "note" TO "remark";
    ALTER TABLE "orders" ADD COLUMN "priority" INTEGER NOT NULL DEFAULT 0;
    -- CreateIndex
    CREATE INDEX "orders_remark_idx" ON "orders"("remark");
    CREATE UNIQUE INDEX "orders_remark_code_key" ON "orders"("remark", "code");
    ALTER TABLE "orders" ADD CONSTRAINT "orders_remark_check" CHECK (remark <> '');
    ALTER TABLE "orders" ALTER COLUMN "remark" SET NOT NULL;
    CREATE INDEX ON "orders" ("amount", "channel");
    """
    result = same_result(plain_dsn, dsn, SHOP, script, "prisma_rename")
    assert "swap_columns" in [s.action for s in result.plan.steps]


def test_type_change_beside_an_index_on_it_and_other_changes(plain_dsn: str, dsn: str) -> None:
    script = """
    -- AlterTable
    ALTER TABLE "orders" ALTER COLUMN "amount" SET DATA TYPE BIGINT;
    ALTER TABLE "orders" ADD COLUMN "currency" TEXT NOT NULL DEFAULT 'EUR';
    -- CreateIndex
    CREATE INDEX "orders_amount_idx" ON "orders"("amount");
    CREATE INDEX ON "orders" ("amount", "user_id");
    ALTER TABLE "orders" ADD CONSTRAINT "orders_amount_code_key" UNIQUE ("amount", "code");
    CREATE INDEX "orders_currency_idx" ON "orders"("currency");
    """
    result = same_result(plain_dsn, dsn, SHOP, script, "prisma_type")
    assert "swap_columns" in [s.action for s in result.plan.steps]


@pytest.mark.parametrize(
    ("script", "fragment"),
    [
        (
            "ALTER TABLE orders RENAME COLUMN note TO remark; CREATE INDEX ON orders (note)",
            "public.orders.note is renamed to remark by 'rename column orders.note to remark'",
        ),
        (
            "ALTER TABLE orders ALTER COLUMN amount TYPE bigint;"
            " ALTER TABLE orders ALTER COLUMN amount SET DEFAULT 5",
            "public.orders.amount is replaced by a copy of type bigint",
        ),
        (
            "ALTER TABLE orders ALTER COLUMN amount TYPE bigint;"
            " CREATE INDEX ON orders ((amount * 2))",
            "public.orders.amount is replaced by a copy of type bigint",
        ),
        (
            "ALTER TABLE orders ALTER COLUMN note SET DEFAULT 'x';"
            " ALTER TABLE orders RENAME COLUMN note TO remark",
            "changes earlier in this migration touch public.orders.note (its default)",
        ),
        (
            "ALTER TABLE orders RENAME COLUMN user_id TO customer_id;"
            " DROP INDEX orders_user_id_idx",
            "orders_user_id_idx uses a column that this migration copies",
        ),
        (
            "ALTER TABLE orders RENAME COLUMN note TO remark;"
            " ALTER TABLE orders ALTER COLUMN remark DROP NOT NULL",
            "public.orders.remark is the new name of note",
        ),
        (
            "ALTER TABLE orders ALTER COLUMN amount TYPE bigint USING amount + length(note);"
            " ALTER TABLE orders DROP COLUMN note",
            "computes the new column from public.orders.note",
        ),
    ],
)
def test_real_conflicts_beside_a_column_copy_are_refused(
    dsn: str, script: str, fragment: str
) -> None:
    run_plain(dsn, SHOP)
    refused_before_ddl(dsn, script, fragment)


# --- a real project's whole history ---------------------------------------------------------

DJANGO_SETTINGS = """\
import os
from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ["HISTORY_DSN"])
SECRET_KEY = "test"
INSTALLED_APPS = ["shop"]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": _db["dbname"], "USER": _db.get("user", ""), "PASSWORD": _db.get("password", ""),
    "HOST": _db.get("host", ""), "PORT": str(_db.get("port", "")),
}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
"""

DJANGO_MODELS = [
    """
class Customer(models.Model):
    name = models.CharField(max_length=100)


class Order(models.Model):
    amount = models.IntegerField()
""",
    """
class Customer(models.Model):
    name = models.CharField(max_length=100)


class Order(models.Model):
    amount = models.IntegerField()
    status = models.CharField(max_length=20, default="new")
    customer = models.ForeignKey(Customer, null=True, on_delete=models.PROTECT)

    class Meta:
        indexes = [models.Index(fields=["amount"], name="shop_order_amount_idx")]
""",
    """
class Customer(models.Model):
    full_name = models.CharField(max_length=100)


class Order(models.Model):
    amount = models.BigIntegerField()
    status = models.CharField(max_length=20, default="new")
    customer = models.ForeignKey(Customer, null=True, on_delete=models.PROTECT)
    note = models.TextField(null=True)

    class Meta:
        indexes = [models.Index(fields=["amount"], name="shop_order_amount_idx")]
""",
    """
class Customer(models.Model):
    full_name = models.CharField(max_length=100)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["full_name"], name="customer_full_name_uniq")
        ]


class Order(models.Model):
    amount = models.BigIntegerField()
    customer = models.ForeignKey(Customer, null=True, on_delete=models.PROTECT)
    note = models.TextField(null=True)
    reference = models.CharField(max_length=30, unique=True, null=True)

    class Meta:
        indexes = [models.Index(fields=["amount"], name="shop_order_amount_idx")]
""",
]


@pytest.mark.slow
def test_a_django_projects_whole_history(tmp_path: Any, plain_dsn: str, dsn: str) -> None:
    """Four migrations (create, add fields and an FK, a rename and a type change beside
    a new column, a RemoveField's DROP COLUMN CASCADE and unique constraints), from an
    empty database: ``migrate`` in one, ``sqlmigrate`` through onlineschema then
    ``migrate --fake`` in the other. Same schema, same rows at the end."""
    import django  # noqa: F401  (in the test extra; a missing one fails here, never skips)

    project = tmp_path / "djangoproject"
    (project / "shop" / "migrations").mkdir(parents=True)
    (project / "shop" / "__init__.py").write_text("")
    (project / "shop" / "migrations" / "__init__.py").write_text("")
    (project / "settings.py").write_text(DJANGO_SETTINGS)
    (project / "manage.py").write_text(
        "import sys\nfrom django.core.management import execute_from_command_line\n"
        "execute_from_command_line(sys.argv)\n"
    )

    def manage(target: str, *args: str, answer: str = "") -> str:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "settings", "HISTORY_DSN": target}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(project), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        proc = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=project,
            input=answer,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
        assert proc.returncode == 0, f"manage.py {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    for i, models in enumerate(DJANGO_MODELS, start=1):
        (project / "shop" / "models.py").write_text("from django.db import models\n" + models)
        manage(plain_dsn, "makemigrations", "shop", answer="y\n")  # yes, a rename
        migration = f"{i:04d}"
        manage(plain_dsn, "migrate", "shop", migration)
        script = manage(dsn, "sqlmigrate", "shop", migration)
        run_ours(dsn, script, f"shop_{migration}")
        manage(dsn, "migrate", "shop", migration, "--fake")
        if i == 1:
            for target in (plain_dsn, dsn):
                run_plain(
                    target,
                    "INSERT INTO shop_customer (name) SELECT 'c' || g"
                    " FROM generate_series(1, 20) g;"
                    " INSERT INTO shop_order (amount) SELECT g FROM generate_series(1, 300) g;",
                )
    assert_same_schema(plain_dsn, dsn, skip_rows=("django_migrations",))


def test_index_and_constraints_dropped_and_created_again_under_the_same_name(
    plain_dsn: str, dsn: str
) -> None:
    """Prisma changes an index or a foreign key's actions by dropping and re-adding it."""
    setup = (
        SHOP,
        "CREATE UNIQUE INDEX orders_code_key ON orders (code);"
        " ALTER TABLE users ADD CONSTRAINT users_name_key UNIQUE (name);",
    )
    script = """
    -- DropForeignKey
    ALTER TABLE "orders" DROP CONSTRAINT "orders_user_id_fkey";
    -- DropIndex
    DROP INDEX "orders_user_id_idx";
    DROP INDEX "orders_code_key";
    ALTER TABLE "orders" DROP CONSTRAINT "orders_amount_check";
    ALTER TABLE "users" DROP CONSTRAINT "users_name_key";
    -- CreateIndex
    CREATE INDEX "orders_user_id_idx" ON "orders"("user_id", "amount");
    CREATE UNIQUE INDEX "orders_code_key" ON "orders"("code", "user_id");
    ALTER TABLE "users" ADD CONSTRAINT "users_name_key" UNIQUE ("name", "id");
    -- AddForeignKey
    ALTER TABLE "orders" ADD CONSTRAINT "orders_user_id_fkey" FOREIGN KEY ("user_id")
        REFERENCES "users"("id") ON DELETE CASCADE ON UPDATE CASCADE;
    ALTER TABLE "orders" ADD CONSTRAINT "orders_amount_check" CHECK (amount >= -1);
    """
    result = same_result(plain_dsn, dsn, setup, script, "recreate")
    renames = [s.action for s in result.plan.steps if s.action.startswith("rename_")]
    assert sorted(renames) == ["rename_constraint"] * 3 + ["rename_index"] * 2


def test_dropping_a_key_a_foreign_key_relies_on_is_refused_naming_it(dsn: str) -> None:
    run_plain(dsn, SHOP)
    refused_before_ddl(
        dsn,
        "ALTER TABLE users DROP CONSTRAINT users_pkey",
        "may be needed by foreign keys that reference it (public.orders.orders_user_id_fkey)",
    )


def test_index_and_constraint_renames(plain_dsn: str, dsn: str) -> None:
    """Prisma's ``-- RenameIndex`` and ``-- RenameForeignKey``: catalog-only renames."""
    setup = SHOP, "ALTER TABLE users ADD CONSTRAINT users_name_key UNIQUE (name);"
    script = """
    -- RenameIndex
    ALTER INDEX "orders_user_id_idx" RENAME TO "orders_userId_idx";
    -- RenameForeignKey
    ALTER TABLE "orders" RENAME CONSTRAINT "orders_user_id_fkey" TO "orders_userId_fkey";
    ALTER TABLE "users" RENAME CONSTRAINT "users_name_key" TO "users_name_unique";
    ALTER TABLE "orders" RENAME CONSTRAINT "orders_amount_check" TO "orders_amount_positive";
    """
    result = same_result(plain_dsn, dsn, setup, script, "renames")
    assert not any(s.breaking for s in result.plan.steps)


def test_index_and_constraint_rename_refusals(dsn: str) -> None:
    run_plain(dsn, SHOP)
    refused_before_ddl(
        dsn,
        "ALTER INDEX orders_pkey RENAME TO orders_key",
        "backs constraint 'orders_pkey'",
    )
    refused_before_ddl(
        dsn,
        "ALTER TABLE orders RENAME CONSTRAINT orders_user_id_fkey TO orders_amount_check",
        "constraint 'orders_amount_check' already exists",
    )


def test_bookkeeping_for_a_missing_framework_table_is_refused_before_any_ddl(dsn: str) -> None:
    run_plain(dsn, SHOP)
    refused_before_ddl(
        dsn,
        "ALTER TABLE orders ADD COLUMN x text;"
        " UPDATE alembic_version SET version_num='0002' WHERE version_num = '0001';",
        "the framework's table alembic_version does not exist",
    )


def test_type_change_and_not_null_on_the_same_column(plain_dsn: str, dsn: str) -> None:
    """Prisma: ``ALTER COLUMN "x" SET DATA TYPE ..., ALTER COLUMN "x" SET NOT NULL``."""
    script = """
    ALTER TABLE "orders" ALTER COLUMN "code" SET NOT NULL,
    ALTER COLUMN "code" SET DATA TYPE VARCHAR(10);
    ALTER TABLE "orders" ALTER COLUMN "note" SET DATA TYPE VARCHAR(30),
    ALTER COLUMN "note" SET NOT NULL;
    """
    same_result(plain_dsn, dsn, SHOP, script, "type_and_not_null")


def test_not_null_before_a_rename_of_the_same_column_is_refused(dsn: str) -> None:
    run_plain(dsn, SHOP)
    refused_before_ddl(
        dsn,
        "ALTER TABLE orders ALTER COLUMN note SET NOT NULL;"
        " ALTER TABLE orders RENAME COLUMN note TO remark;",
        "changes earlier in this migration touch public.orders.note (its NOT NULL)",
    )
