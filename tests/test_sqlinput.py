"""Parsing tests for the SQL front end (``onlineschema.sqlinput``) and the SQL fragment
checks (``onlineschema.expressions``). No database is needed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql

from onlineschema.changes import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddIdentity,
    AddIndex,
    AddUnique,
    AlterColumnType,
    Backfill,
    Change,
    DropColumn,
    DropConstraint,
    DropDefault,
    DropIndex,
    DropNotNull,
    DropTable,
    RenameColumn,
    RenameConstraint,
    RenameIndex,
    RunSQL,
    SetDefault,
    SetNotNull,
    ValidateConstraint,
    change_from_dict,
)
from onlineschema.errors import Refused, UnsupportedStatement
from onlineschema.expressions import (
    check_expression,
    check_index_element,
    check_type,
    column_refs,
    function_names,
    is_constant,
)
from onlineschema.sqlinput import SUPPORTED_TEXT, parse_sql, update_targets

# parses, type-checks or renders text only: run once (PostgreSQL 18), see .ci/run
pytestmark = pytest.mark.server_independent


def one(text: str, **kwargs: bool) -> Change:
    changes = parse_sql(text, **kwargs)
    assert len(changes) == 1, changes
    return changes[0]


def unsupported(text: str, **kwargs: bool) -> UnsupportedStatement:
    with pytest.raises(UnsupportedStatement) as info:
        parse_sql(text, **kwargs)
    return info.value


# =========================================================================== expressions


class TestCheckExpression:
    def test_normalizes(self) -> None:
        assert check_expression("amount>100") == "amount > 100"
        assert check_expression("  now( )  ") == "now()"
        assert check_expression("'new'") == "'new'"

    def test_case_round_trips(self) -> None:
        text = "CASE WHEN amount > 100 THEN 'big' ELSE 'small' END"
        assert check_expression(text) == text
        assert check_expression(check_expression(text)) == text

    def test_subquery_is_an_expression(self) -> None:
        out = check_expression("(select max(id) from users u where u.org = orders.org)")
        assert out == "(SELECT max(id) FROM users AS u WHERE u.org = orders.org)"

    def test_semicolon_inside_a_literal_is_fine(self) -> None:
        assert check_expression("'a;b'") == "'a;b'"

    def test_trailing_comment_cannot_swallow_the_wrapper(self) -> None:
        assert check_expression("a -- note") == "a"

    @pytest.mark.parametrize(
        "attack",
        [
            "1); DROP TABLE users; --",
            "1; DROP TABLE users",
            "1) FROM users WHERE (true",
            "1), (2",
            "1) UNION SELECT (2",
            "1) INTO x FROM (y",
            "1) FOR UPDATE --",
            "(WITH d AS (DELETE FROM users RETURNING 1) SELECT 1)",
            "1 /*",
            "'unterminated",
            "",
            "x.*",
            "a\x00b",
            "1) LIMIT (1",
            "1) ORDER BY (1",
        ],
    )
    def test_injection_refused(self, attack: str) -> None:
        with pytest.raises(Refused) as info:
            check_expression(attack, "default of orders.status")
        message = str(info.value)
        assert "default of orders.status" in message
        assert "not a single SQL expression" in message

    def test_message_quotes_the_text(self) -> None:
        with pytest.raises(Refused, match="DROP TABLE users") as info:
            check_expression("1; DROP TABLE users")
        assert "';'" in info.value.problem
        assert info.value.fix


class TestCheckIndexElement:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("lower(email)", "(lower(email))"),
            ("created_at DESC", "created_at DESC"),
            ('"status" varchar_pattern_ops', "status varchar_pattern_ops"),
            ('"userId" DESC NULLS LAST', '"userId" DESC NULLS LAST'),
            ("(a + b)", "(a + b)"),
            ('a COLLATE "C"', 'a COLLATE "C"'),
        ],
    )
    def test_valid(self, text: str, expected: str) -> None:
        assert check_index_element(text) == expected
        assert check_index_element(expected) == expected

    @pytest.mark.parametrize(
        "attack",
        [
            "a) WHERE (true",
            "a), (b",
            "a) INCLUDE (b",
            "a); DROP TABLE users; --",
            "a; DROP TABLE users",
            "a) WITH (fillfactor = 10",
            "a + b",
            "",
        ],
    )
    def test_refused(self, attack: str) -> None:
        with pytest.raises(Refused, match="index element"):
            check_index_element(attack)


class TestCheckType:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("text", "text"),
            ("varchar(20)", "varchar(20)"),
            ("character varying(20)", "varchar(20)"),
            ("numeric(10,2)", "numeric(10, 2)"),
            ("timestamp with time zone", "timestamp with time zone"),
            ('"MyEnum"', '"MyEnum"'),
            ("int[]", "integer[]"),
            ("INTEGER", "integer"),
            ('public."Odd""Type"', 'public."Odd""Type"'),
        ],
    )
    def test_valid(self, text: str, expected: str) -> None:
        assert check_type(text) == expected
        assert check_type(expected) == expected

    @pytest.mark.parametrize(
        "attack",
        [
            "int FROM users",
            "int, 1",
            "int AS x",
            "int::text",
            "int; DROP TABLE users",
            "int); DROP TABLE users; --",
            'int COLLATE "C"',
            "int + 1",
            "setof int",
            "",
        ],
    )
    def test_refused(self, attack: str) -> None:
        with pytest.raises(Refused, match="type"):
            check_type(attack)


class TestExpressionInspection:
    def test_function_names(self) -> None:
        assert function_names("now()") == {"now"}
        assert function_names("pg_catalog.LOWER(x) || gen_random_uuid()::text") == {
            "lower",
            "gen_random_uuid",
        }
        assert function_names("CURRENT_TIMESTAMP") == set()
        assert function_names("coalesce(a, b)") == set()
        assert function_names("(SELECT max(id) FROM t)") == {"max"}

    def test_column_refs(self) -> None:
        assert column_refs('a + orders.b + lower("C")') == {"a", "b", "C"}
        assert column_refs("1") == set()

    @pytest.mark.parametrize(
        "expr",
        [
            "'new'",
            "0",
            "-1",
            "-(1.5)",
            "NULL",
            "true",
            "'{}'::int[]",
            "interval '1 day'",
            "'x'::text::varchar",
        ],
    )
    def test_constants(self, expr: str) -> None:
        assert is_constant(expr)

    @pytest.mark.parametrize(
        "expr", ["now()", "CURRENT_TIMESTAMP", "a", "1 + 1", "ARRAY[1]", "-a", "nextval('s')"]
    )
    def test_not_constants(self, expr: str) -> None:
        assert not is_constant(expr)

    def test_inspection_refuses_statements(self) -> None:
        with pytest.raises(Refused):
            function_names("1); DROP TABLE users; --")
        with pytest.raises(Refused):
            is_constant("1; DROP TABLE users")


# ============================================================================= sqlinput


EXAMPLE = (
    "ALTER TABLE orders ADD COLUMN status text; "
    "UPDATE orders SET status = CASE WHEN amount > 100 THEN 'big' ELSE 'small' END; "
    "ALTER TABLE orders ALTER COLUMN status SET NOT NULL, "
    "ALTER COLUMN status SET DEFAULT 'small'; "
    "CREATE INDEX ON orders(status); "
    "ALTER TABLE orders ADD FOREIGN KEY (user_id) REFERENCES users(id);"
)


def test_example_script() -> None:
    assert parse_sql(EXAMPLE) == [
        AddColumn("orders", "status", "text"),
        Backfill("orders", (("status", "CASE WHEN amount > 100 THEN 'big' ELSE 'small' END"),)),
        SetNotNull("orders", "status"),
        SetDefault("orders", "status", "'small'"),
        AddIndex("orders", columns=("status",)),
        AddForeignKey("orders", ("user_id",), "users", ("id",)),
    ]


def test_changes_serialise() -> None:
    for change in parse_sql(EXAMPLE):
        assert change_from_dict(change.to_dict()) == change


def test_expressions_in_changes_are_normalized() -> None:
    changes = parse_sql(
        "ALTER TABLE t ADD COLUMN a int DEFAULT 1+2, ADD CHECK (a>0);"
        "UPDATE t SET a = a*2 WHERE a<>0;"
        "ALTER TABLE t ALTER COLUMN a TYPE bigint USING a::bigint;"
        "CREATE INDEX ON t (lower(b)) WHERE a>1;"
    )
    assert changes == [
        AddColumn("t", "a", "integer", default="1 + 2"),
        AddCheck("t", "a > 0"),
        Backfill("t", (("a", "a * 2"),), where="a <> 0"),
        AlterColumnType("t", "a", "bigint", using="CAST(a AS bigint)"),
        AddIndex("t", expressions=("(lower(b))",), where="a > 1"),
    ]
    for text in ["1 + 2", "a > 0", "a * 2", "a <> 0", "CAST(a AS bigint)", "a > 1"]:
        assert check_expression(text) == text
    assert check_type("integer") == "integer"
    assert check_index_element("(lower(b))") == "(lower(b))"


class TestAddColumn:
    def test_plain(self) -> None:
        assert one("ALTER TABLE t ADD COLUMN c int") == AddColumn("t", "c", "integer")

    def test_without_column_keyword_and_options_ignored(self) -> None:
        assert one("ALTER TABLE IF EXISTS ONLY t ADD IF NOT EXISTS c text") == AddColumn(
            "t", "c", "text"
        )

    def test_default_and_not_null(self) -> None:
        assert one("ALTER TABLE t ADD c varchar(20) DEFAULT 'new' NOT NULL") == AddColumn(
            "t", "c", "varchar(20)", nullable=False, default="'new'"
        )

    def test_explicit_null_and_default_null(self) -> None:
        assert one("ALTER TABLE t ADD c int NULL DEFAULT NULL") == AddColumn("t", "c", "integer")

    def test_volatile_default_kept_as_expression(self) -> None:
        assert one("ALTER TABLE t ADD c timestamptz DEFAULT now()") == AddColumn(
            "t", "c", "timestamptz", default="now()"
        )

    def test_schema_qualified(self) -> None:
        assert one('ALTER TABLE "Sales".orders ADD c numeric(10,2)') == AddColumn(
            "orders", "c", "numeric(10, 2)", schema="Sales"
        )

    def test_inline_references(self) -> None:
        assert parse_sql(
            "ALTER TABLE orders ADD COLUMN user_id bigint"
            " REFERENCES app.users(id) ON DELETE SET NULL ON UPDATE CASCADE"
        ) == [
            AddColumn("orders", "user_id", "bigint"),
            AddForeignKey(
                "orders",
                ("user_id",),
                "users",
                ("id",),
                on_delete="SET NULL",
                on_update="CASCADE",
                ref_schema="app",
            ),
        ]

    def test_inline_named_constraints(self) -> None:
        assert parse_sql(
            "ALTER TABLE t ADD COLUMN c int NOT NULL DEFAULT 0"
            " CONSTRAINT c_pos CHECK (c >= 0) CONSTRAINT c_key UNIQUE"
            " CONSTRAINT c_fk REFERENCES u DEFERRABLE"
        ) == [
            AddColumn("t", "c", "integer", nullable=False, default="0"),
            AddCheck("t", "c >= 0", name="c_pos"),
            AddUnique("t", ("c",), name="c_key"),
            AddForeignKey("t", ("c",), "u", name="c_fk", deferrable=True),
        ]

    def test_inline_primary_key_implies_not_null(self) -> None:
        assert parse_sql("ALTER TABLE t ADD COLUMN id bigint PRIMARY KEY") == [
            AddColumn("t", "id", "bigint", nullable=False),
            AddUnique("t", ("id",), primary_key=True),
        ]

    def test_several_subcommands_in_order(self) -> None:
        assert parse_sql(
            "ALTER TABLE t ADD a int, ADD b text DEFAULT 'x', DROP COLUMN c, ALTER d SET NOT NULL"
        ) == [
            AddColumn("t", "a", "integer"),
            AddColumn("t", "b", "text", default="'x'"),
            DropColumn("t", "c"),
            SetNotNull("t", "d"),
        ]

    @pytest.mark.parametrize(
        ("sql_text", "needle"),
        [
            ("ALTER TABLE t ADD c int GENERATED ALWAYS AS (a * 2) STORED", "GENERATED"),
            ('ALTER TABLE t ADD c text COLLATE "C"', "COLLATE"),
            ("ALTER TABLE t ADD c text COMPRESSION lz4", "COMPRESSION"),
            ("ALTER TABLE t ADD c int REFERENCES u MATCH FULL", "MATCH FULL"),
            ("ALTER TABLE t ADD c int REFERENCES u NOT ENFORCED", "NOT ENFORCED"),
            ("ALTER TABLE t ADD c int UNIQUE NULLS NOT DISTINCT", "NULLS NOT DISTINCT"),
            ("ALTER TABLE t ADD c int CHECK (c > 0) NO INHERIT", "NO INHERIT"),
            ("ALTER TABLE t ADD c int NULL NOT NULL", "conflicting"),
        ],
    )
    def test_refused_forms(self, sql_text: str, needle: str) -> None:
        err = unsupported(sql_text)
        assert needle in err.problem


class TestAlterColumn:
    def test_forms(self) -> None:
        assert parse_sql(
            "ALTER TABLE t ALTER COLUMN a SET NOT NULL, ALTER a DROP NOT NULL,"
            " ALTER a SET DEFAULT lower('X'), ALTER COLUMN a DROP DEFAULT,"
            " ALTER a TYPE bigint, ALTER COLUMN a SET DATA TYPE numeric(12,2) USING a::numeric"
        ) == [
            SetNotNull("t", "a"),
            DropNotNull("t", "a"),
            SetDefault("t", "a", "lower('X')"),
            DropDefault("t", "a"),
            AlterColumnType("t", "a", "bigint"),
            AlterColumnType("t", "a", "numeric(12, 2)", using="CAST(a AS numeric)"),
        ]

    def test_type_collate_refused(self) -> None:
        assert "COLLATE" in unsupported('ALTER TABLE t ALTER a TYPE text COLLATE "C"').problem


class TestConstraints:
    def test_foreign_key_full(self) -> None:
        assert one(
            "ALTER TABLE ONLY s.t ADD CONSTRAINT fk FOREIGN KEY (a, b) REFERENCES r.u (x, y)"
            " ON DELETE CASCADE ON UPDATE RESTRICT DEFERRABLE INITIALLY DEFERRED NOT VALID"
        ) == AddForeignKey(
            "t",
            ("a", "b"),
            "u",
            ("x", "y"),
            name="fk",
            on_delete="CASCADE",
            on_update="RESTRICT",
            validate=False,
            deferrable=True,
            initially_deferred=True,
            schema="s",
            ref_schema="r",
        )

    @pytest.mark.parametrize(
        ("action", "expected"),
        [
            ("CASCADE", "CASCADE"),
            ("SET NULL", "SET NULL"),
            ("SET DEFAULT", "SET DEFAULT"),
            ("RESTRICT", "RESTRICT"),
            ("NO ACTION", None),
        ],
    )
    def test_foreign_key_actions(self, action: str, expected: str | None) -> None:
        c = one(f"ALTER TABLE t ADD FOREIGN KEY (a) REFERENCES u ON DELETE {action}")
        assert isinstance(c, AddForeignKey)
        assert c.on_delete == expected
        assert c.on_update is None
        assert c.ref_columns == ()

    def test_foreign_key_refusals(self) -> None:
        assert (
            "MATCH FULL"
            in unsupported("ALTER TABLE t ADD FOREIGN KEY (a) REFERENCES u MATCH FULL").problem
        )
        assert (
            "SET NULL"
            in unsupported(
                "ALTER TABLE t ADD FOREIGN KEY (a, b) REFERENCES u ON DELETE SET NULL (a)"
            ).problem
        )
        assert (
            "NOT ENFORCED"
            in unsupported("ALTER TABLE t ADD FOREIGN KEY (a) REFERENCES u NOT ENFORCED").problem
        )

    def test_check(self) -> None:
        assert parse_sql(
            "ALTER TABLE t ADD CONSTRAINT pos CHECK (amount > 0) NOT VALID,"
            " ADD CHECK (status IN ('a', 'b'))"
        ) == [
            AddCheck("t", "amount > 0", name="pos", validate=False),
            AddCheck("t", "status IN ('a', 'b')"),
        ]

    def test_unique_and_primary_key(self) -> None:
        assert parse_sql(
            'ALTER TABLE t ADD CONSTRAINT t_ab_key UNIQUE (a, "B"), ADD PRIMARY KEY (id)'
        ) == [
            AddUnique("t", ("a", "B"), name="t_ab_key"),
            AddUnique("t", ("id",), primary_key=True),
        ]

    @pytest.mark.parametrize(
        "clause",
        [
            "UNIQUE NULLS NOT DISTINCT (a)",
            "UNIQUE (a) INCLUDE (b)",
            "UNIQUE (a) WITH (fillfactor = 70)",
            "UNIQUE (a) USING INDEX TABLESPACE fast",
            "EXCLUDE USING gist (a WITH =)",
        ],
    )
    def test_unique_options_refused(self, clause: str) -> None:
        unsupported(f"ALTER TABLE t ADD CONSTRAINT c {clause}")

    def test_using_index_refused_with_explanation(self) -> None:
        err = unsupported("ALTER TABLE t ADD CONSTRAINT t_key UNIQUE USING INDEX t_idx")
        assert "USING INDEX t_idx" in err.problem
        assert "UNIQUE (columns)" in err.problem

    def test_using_index_after_create_unique_index_becomes_add_unique(self) -> None:
        assert parse_sql(
            "CREATE UNIQUE INDEX CONCURRENTLY t_a_idx ON t (a, b);"
            "ALTER TABLE t ADD CONSTRAINT t_pkey PRIMARY KEY USING INDEX t_a_idx;"
            "ALTER TABLE u ADD FOREIGN KEY (x, y) REFERENCES t (a, b);"
        ) == [
            AddUnique("t", ("a", "b"), name="t_pkey", primary_key=True),
            AddForeignKey("u", ("x", "y"), "t", ("a", "b")),
        ]
        assert parse_sql(
            "CREATE UNIQUE INDEX k ON t (a); ALTER TABLE t ADD UNIQUE USING INDEX k"
        ) == [AddUnique("t", ("a",), name="k")]

    def test_using_index_of_a_partial_index_refused(self) -> None:
        unsupported(
            "CREATE UNIQUE INDEX k ON t (a) WHERE b; ALTER TABLE t ADD UNIQUE USING INDEX k"
        )

    def test_validate_and_drop(self) -> None:
        assert parse_sql(
            "ALTER TABLE t VALIDATE CONSTRAINT c1, DROP CONSTRAINT c2,"
            " DROP CONSTRAINT IF EXISTS c3, DROP COLUMN IF EXISTS x, DROP y"
        ) == [
            ValidateConstraint("t", "c1"),
            DropConstraint("t", "c2"),
            DropConstraint("t", "c3", if_exists=True),
            DropColumn("t", "x", if_exists=True),
            DropColumn("t", "y"),
        ]

    def test_drop_column_cascade_is_marked_for_the_planner(self) -> None:
        change = one("ALTER TABLE t DROP COLUMN c CASCADE")
        assert change == DropColumn("t", "c", cascade=True)
        assert change.to_dict()["cascade"] is True
        assert "cascade" not in DropColumn("t", "c").to_dict()  # older requests keep their hash
        assert change_from_dict(change.to_dict()) == change

    def test_drop_table_cascade_is_marked_for_the_planner(self) -> None:
        assert parse_sql("DROP TABLE t, s.u CASCADE") == [
            DropTable("t", cascade=True),
            DropTable("u", schema="s", cascade=True),
        ]
        assert "cascade" not in DropTable("t").to_dict()  # older requests keep their hash

    def test_cascade_refused(self) -> None:
        assert "CASCADE" in unsupported("ALTER TABLE t DROP CONSTRAINT c CASCADE").problem
        assert "CASCADE" in unsupported("DROP INDEX i CASCADE").problem

    def test_named_not_null_constraint(self) -> None:
        assert one("ALTER TABLE t ADD CONSTRAINT nn NOT NULL a") == SetNotNull("t", "a")
        unsupported("ALTER TABLE t ADD CONSTRAINT nn NOT NULL a NOT VALID")


class TestRenameAndDrop:
    def test_rename_column(self) -> None:
        assert one('ALTER TABLE s."T" RENAME COLUMN "oldName" TO new_name') == RenameColumn(
            "T", "oldName", "new_name", schema="s"
        )
        assert one("ALTER TABLE t RENAME a TO b") == RenameColumn("t", "a", "b")

    def test_rename_table_refused(self) -> None:
        err = unsupported("ALTER TABLE t RENAME TO u")
        assert "renaming a table" in err.problem

    def test_drop_tables(self) -> None:
        assert parse_sql("DROP TABLE IF EXISTS a, s.b") == [
            DropTable("a", if_exists=True),
            DropTable("b", if_exists=True, schema="s"),
        ]
        assert parse_sql("DROP TABLE old_stuff RESTRICT") == [DropTable("old_stuff")]

    def test_drop_indexes(self) -> None:
        assert parse_sql("DROP INDEX CONCURRENTLY IF EXISTS i1, s.i2; DROP INDEX i3") == [
            DropIndex("i1", if_exists=True),
            DropIndex("i2", if_exists=True, schema="s"),
            DropIndex("i3"),
        ]

    def test_other_drops_refused(self) -> None:
        assert "DROP VIEW" in unsupported("DROP VIEW v").problem


class TestCreateIndex:
    def test_full_form(self) -> None:
        assert one(
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS orders_email_idx"
            " ON ONLY app.orders USING btree (email, tenant_id) INCLUDE (total)"
            " WHERE deleted_at IS NULL"
        ) == AddIndex(
            "orders",
            columns=("email", "tenant_id"),
            name="orders_email_idx",
            unique=True,
            where="deleted_at IS NULL",
            include=("total",),
            schema="app",
        )

    def test_expressions_after_columns(self) -> None:
        assert one("CREATE INDEX i ON t USING gin (a, lower(email), created_at DESC)") == AddIndex(
            "t",
            columns=("a",),
            expressions=("(lower(email))", "created_at DESC"),
            name="i",
            using="gin",
        )

    def test_column_after_expression_keeps_order(self) -> None:
        c = one('CREATE INDEX ON t (lower(email), "Tenant", id)')
        assert c == AddIndex("t", columns=(), expressions=("(lower(email))", '"Tenant"', "id"))
        assert isinstance(c, AddIndex)
        for e in c.expressions:
            assert check_index_element(e) == e

    def test_opclass_and_collation_are_expressions(self) -> None:
        c = one('CREATE INDEX ON t ("status" varchar_pattern_ops, name COLLATE "C")')
        assert c == AddIndex("t", expressions=("status varchar_pattern_ops", 'name COLLATE "C"'))

    @pytest.mark.parametrize(
        ("clause", "needle"),
        [
            ("CREATE UNIQUE INDEX ON t (a) NULLS NOT DISTINCT", "NULLS NOT DISTINCT"),
            ("CREATE INDEX ON t (a) WITH (fillfactor = 70)", "WITH"),
            ("CREATE INDEX ON t (a) TABLESPACE fast", "TABLESPACE"),
        ],
    )
    def test_refused_options(self, clause: str, needle: str) -> None:
        err = unsupported(clause)
        assert needle in err.problem

    def test_refused_concurrent_index_raw_is_not_transactional(self) -> None:
        c = one("CREATE INDEX CONCURRENTLY ON t (a) TABLESPACE fast", allow_raw=True)
        assert c == RunSQL(
            "CREATE INDEX CONCURRENTLY ON t (a) TABLESPACE fast",
            raw=True,
            touches=("t",),
            transactional=False,
        )


class TestUpdate:
    def test_backfill(self) -> None:
        assert one(
            "UPDATE s.orders SET status = 'new', total = amount * 2 WHERE status IS NULL"
        ) == Backfill(
            "orders",
            (("status", "'new'"), ("total", "amount * 2")),
            where="status IS NULL",
            schema="s",
        )

    def test_subquery_allowed(self) -> None:
        c = one(
            "UPDATE orders SET user_name = (SELECT name FROM users WHERE users.id = orders.user_id)"
        )
        assert c == Backfill(
            "orders",
            (("user_name", "(SELECT name FROM users WHERE users.id = orders.user_id)"),),
        )

    @pytest.mark.parametrize(
        ("text", "needle"),
        [
            ("UPDATE t SET a = u.b FROM u WHERE u.id = t.id", "FROM"),
            ("UPDATE t SET a = 1 RETURNING *", "RETURNING"),
            ("WITH x AS (SELECT 1) UPDATE t SET a = 1", "WITH"),
            ("UPDATE t SET (a, b) = (1, 2)", "SET (a, b)"),
            ("UPDATE t AS o SET a = o.b", "alias"),
            ("UPDATE t SET a = DEFAULT", "DEFAULT"),
            ("UPDATE t SET a[1] = 2", "part of column"),
            ("UPDATE t SET a = 1, a = 2", "twice"),
        ],
    )
    def test_refused(self, text: str, needle: str) -> None:
        err = unsupported(text)
        assert needle in err.problem


class TestCreateStatements:
    def test_create_table_with_references(self) -> None:
        text = (
            "CREATE TABLE app.items (\n  id bigint PRIMARY KEY,\n"
            "  order_id bigint REFERENCES orders(id),\n  u int,\n"
            '  FOREIGN KEY (u) REFERENCES public."Users"\n)'
        )
        assert parse_sql(text + ";\n") == [
            RunSQL(text, touches=("orders", "public.Users"), creates=("app.items",))
        ]

    def test_run_as_written(self) -> None:
        script = """
        CREATE EXTENSION IF NOT EXISTS pgcrypto;
        CREATE SCHEMA billing;
        CREATE SEQUENCE billing.invoice_no OWNED BY invoices.no;
        CREATE TYPE mood AS ENUM ('sad', 'ok');
        CREATE TYPE pair AS (a int, b int);
        CREATE DOMAIN posint AS int CHECK (VALUE > 0);
        CREATE OR REPLACE FUNCTION one() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$;
        CREATE VIEW v AS WITH x AS (SELECT 1) SELECT * FROM orders, x;
        COMMENT ON COLUMN orders.status IS 'it''s the status';
        """
        changes = parse_sql(script)
        assert all(isinstance(c, RunSQL) and not c.raw for c in changes)
        assert [c.sql for c in changes if isinstance(c, RunSQL)] == [
            "CREATE EXTENSION IF NOT EXISTS pgcrypto",
            "CREATE SCHEMA billing",
            "CREATE SEQUENCE billing.invoice_no OWNED BY invoices.no",
            "CREATE TYPE mood AS ENUM ('sad', 'ok')",
            "CREATE TYPE pair AS (a int, b int)",
            "CREATE DOMAIN posint AS int CHECK (VALUE > 0)",
            "CREATE OR REPLACE FUNCTION one() RETURNS int LANGUAGE sql AS $$ SELECT 1; $$",
            "CREATE VIEW v AS WITH x AS (SELECT 1) SELECT * FROM orders, x",
            "COMMENT ON COLUMN orders.status IS 'it''s the status'",
        ]
        by_sql = {c.sql.split()[1]: c for c in changes if isinstance(c, RunSQL)}
        assert by_sql["SEQUENCE"].touches == ("invoices",)
        assert by_sql["SEQUENCE"].creates == ("billing.invoice_no",)
        assert by_sql["VIEW"].touches == ("orders",)
        assert by_sql["VIEW"].creates == ("v",)
        assert by_sql["ON"].touches == ("orders",)

    def test_create_schema_with_elements(self) -> None:
        c = one("CREATE SCHEMA s CREATE TABLE a (id int REFERENCES b)")
        assert isinstance(c, RunSQL)
        assert c.creates == ("s.a",)
        assert c.touches == ("b",)

    def test_partition_of_refused(self) -> None:
        err = unsupported("CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1)")
        assert "PARTITION OF" in err.problem

    def test_statement_text_with_unicode_and_comments(self) -> None:
        script = (
            "/* héllo */ COMMENT ON TABLE t IS 'ünïcödé';  -- trailing\n"
            'CREATE TABLE "tëst" (id int) -- no semicolon\n'
        )
        assert parse_sql(script) == [
            RunSQL("COMMENT ON TABLE t IS 'ünïcödé'", touches=("t",)),
            RunSQL('CREATE TABLE "tëst" (id int)', creates=("tëst",)),
        ]


class TestIgnored:
    def test_transaction_and_settings(self) -> None:
        script = """
        BEGIN;
        START TRANSACTION;
        SET statement_timeout = 0;
        SET LOCAL lock_timeout = '5s';
        SET search_path = app, public;
        SET TIME ZONE 'UTC';
        RESET ALL;
        SET CONSTRAINTS ALL IMMEDIATE;
        SELECT pg_catalog.set_config('search_path', '', false);
        ALTER TABLE t ADD COLUMN c int;
        COMMIT;
        END;
        """
        assert parse_sql(script) == [AddColumn("t", "c", "integer")]

    def test_set_config_with_a_computed_value_is_not_silently_dropped(self) -> None:
        unsupported("SELECT set_config('search_path', pg_terminate_backend(42)::text, false)")
        unsupported("SELECT set_config('a', 'b', false), 1")

    def test_only_bookkeeping_gives_no_changes(self) -> None:
        assert parse_sql("BEGIN; COMMIT;") == []

    @pytest.mark.parametrize(
        "text",
        [
            "SET ROLE app_owner",
            "SET SESSION AUTHORIZATION app_owner",
            "SET standard_conforming_strings = off",
        ],
    )
    def test_settings_that_change_meaning_refused_even_raw(self, text: str) -> None:
        err = unsupported(text, allow_raw=True)
        assert "cannot be run even with allow_raw" in err.problem

    def test_standard_conforming_strings_on_is_fine(self) -> None:
        assert parse_sql("SET standard_conforming_strings = on; DROP INDEX i") == [DropIndex("i")]


class TestEmptyAndErrors:
    @pytest.mark.parametrize(
        "text",
        ["", "   \n", "-- just a comment\n", "/* c */", ";;", "BEGIN; SET x.y = 1; COMMIT;"],
    )
    def test_nothing_to_do_is_an_empty_migration(self, text: str) -> None:
        assert parse_sql(text) == []

    def test_parse_error_has_line_and_message(self) -> None:
        with pytest.raises(Refused) as info:
            parse_sql("ALTER TABLE t ADD COLUMN a int;\nALTER TABLE t ADD COLUMN b int DEFALT 3;")
        message = str(info.value)
        assert 'syntax error at or near "DEFALT"' in message
        assert "line 2" in message
        assert "column 32" in message

    def test_parse_error_at_end(self) -> None:
        with pytest.raises(Refused, match="end of input"):
            parse_sql("ALTER TABLE t ADD COLUMN")

    def test_nul_character_refused(self) -> None:
        # pglast reads a C string: without the check, "DROP TABLE x" would vanish silently.
        with pytest.raises(Refused, match="NUL character") as info:
            parse_sql("ALTER TABLE t ADD c int;\n\x00 DROP TABLE x")
        assert "line 2" in str(info.value)

    def test_psql_meta_command_hint(self) -> None:
        with pytest.raises(Refused, match="meta-commands"):
            parse_sql("\\restrict abc\nALTER TABLE t ADD c int;")


class TestUnsupported:
    SCRIPT = """ALTER TABLE orders ADD COLUMN note text;
VACUUM FULL orders;
ALTER TABLE orders SET TABLESPACE fast;
LOCK TABLE orders IN ACCESS EXCLUSIVE MODE;
TRUNCATE orders;
DELETE FROM orders WHERE id < 10;
INSERT INTO orders (id) VALUES (1);
CLUSTER orders USING orders_pkey;
REINDEX TABLE orders;
ALTER TABLE orders RENAME TO purchases;
ALTER TABLE parent ATTACH PARTITION child FOR VALUES IN (1);
"""

    def test_all_reported_in_one_error(self) -> None:
        err = unsupported(self.SCRIPT)
        message = str(err)
        assert "10 statements cannot be run online" in message
        for quoted in [
            "'VACUUM FULL orders'",
            "'ALTER TABLE orders SET TABLESPACE fast'",
            "'LOCK TABLE orders IN ACCESS EXCLUSIVE MODE'",
            "'TRUNCATE orders'",
            "'DELETE FROM orders WHERE id < 10'",
            "'INSERT INTO orders (id) VALUES (1)'",
            "'CLUSTER orders USING orders_pkey'",
            "'REINDEX TABLE orders'",
            "'ALTER TABLE orders RENAME TO purchases'",
            "'ALTER TABLE parent ATTACH PARTITION child FOR VALUES IN (1)'",
        ]:
            assert quoted in message
        assert "line 2: 'VACUUM FULL orders'" in message
        assert "line 11: 'ALTER TABLE parent ATTACH" in message
        assert "ACCESS EXCLUSIVE" in message
        assert SUPPORTED_TEXT in message
        assert "allow_raw" in message
        assert "note" not in message  # the supported statement is not listed

    def test_long_statement_shortened(self) -> None:
        conditions = " OR ".join(f"id = {i}" for i in range(100))
        long_sql = f"DELETE FROM orders WHERE {conditions}"  # noqa: S608 - a test input
        message = str(unsupported(long_sql))
        assert "DELETE FROM orders WHERE id = 0 OR" in message
        assert "..." in message
        assert long_sql not in message

    def test_allow_raw(self) -> None:
        changes = parse_sql(self.SCRIPT, allow_raw=True)
        assert changes[0] == AddColumn("orders", "note", "text")
        raws = changes[1:]
        assert all(isinstance(c, RunSQL) and c.raw for c in raws)
        assert raws[0] == RunSQL(
            "VACUUM FULL orders", raw=True, touches=("orders",), transactional=False
        )
        assert raws[1] == RunSQL(
            "ALTER TABLE orders SET TABLESPACE fast", raw=True, touches=("orders",)
        )
        attach = raws[-1]
        assert isinstance(attach, RunSQL)
        assert attach.touches == ("parent", "child")

    def test_raw_touches_skip_cte_names(self) -> None:
        c = one(
            "WITH old AS (SELECT id FROM orders) DELETE FROM s.archive WHERE id IN (SELECT id FROM old)",
            allow_raw=True,
        )
        assert isinstance(c, RunSQL)
        assert c.touches == ("s.archive", "orders")

    def test_not_raw_able_still_reported(self) -> None:
        err = unsupported("VACUUM orders; ROLLBACK;", allow_raw=True)
        assert "'ROLLBACK'" in err.problem
        assert "VACUUM" not in err.problem

    @pytest.mark.parametrize(
        "text",
        [
            "GRANT SELECT ON orders TO reporting",
            "ALTER TABLE orders OWNER TO app",
            "ALTER TYPE mood ADD VALUE 'happy'",
            "CREATE TRIGGER trg BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()",
            "DO $$ BEGIN PERFORM 1; END $$",
            "ALTER SEQUENCE s RESTART",
            "CREATE MATERIALIZED VIEW mv AS SELECT 1",
            "SELECT 1",
            "ALTER VIEW v ALTER COLUMN a SET DEFAULT 1",
            "ALTER TABLE t ENABLE ROW LEVEL SECURITY",
            "ALTER TABLE t DISABLE TRIGGER ALL",
        ],
    )
    def test_other_statements_unsupported(self, text: str) -> None:
        err = unsupported(text)
        assert repr(text) in err.problem
        assert SUPPORTED_TEXT in str(err)

    def test_alter_table_with_one_bad_subcommand_is_one_statement(self) -> None:
        err = unsupported("ALTER TABLE t ADD a int, SET LOGGED")
        assert "this statement cannot be run online" in err.problem
        assert "SET LOGGED" in err.problem
        assert parse_sql("ALTER TABLE t ADD a int, SET LOGGED", allow_raw=True) == [
            RunSQL("ALTER TABLE t ADD a int, SET LOGGED", raw=True, touches=("t",))
        ]


# ============================================================================ frameworks


DJANGO = """BEGIN;
--
-- Add field status to order
--
ALTER TABLE "shop_order" ADD COLUMN "status" varchar(20) DEFAULT 'new' NOT NULL;
ALTER TABLE "shop_order" ALTER COLUMN "status" DROP DEFAULT;
--
-- Add field customer to order
--
ALTER TABLE "shop_order" ADD COLUMN "customer_id" bigint NULL CONSTRAINT "shop_order_customer_id_8e1f0a29_fk_shop_customer_id" REFERENCES "shop_customer"("id") DEFERRABLE INITIALLY DEFERRED; SET CONSTRAINTS "shop_order_customer_id_8e1f0a29_fk_shop_customer_id" IMMEDIATE;
CREATE INDEX "shop_order_status_2f1c8e3a" ON "shop_order" ("status");
CREATE INDEX "shop_order_status_2f1c8e3a_like" ON "shop_order" ("status" varchar_pattern_ops);
CREATE INDEX "shop_order_customer_id_8e1f0a29" ON "shop_order" ("customer_id");
COMMIT;
"""


def test_django_sqlmigrate() -> None:
    fk = "shop_order_customer_id_8e1f0a29_fk_shop_customer_id"
    assert parse_sql(DJANGO) == [
        AddColumn("shop_order", "status", "varchar(20)", nullable=False, default="'new'"),
        DropDefault("shop_order", "status"),
        AddColumn("shop_order", "customer_id", "bigint"),
        AddForeignKey(
            "shop_order",
            ("customer_id",),
            "shop_customer",
            ("id",),
            name=fk,
            deferrable=True,
            initially_deferred=True,
        ),
        AddIndex("shop_order", columns=("status",), name="shop_order_status_2f1c8e3a"),
        AddIndex(
            "shop_order",
            expressions=("status varchar_pattern_ops",),
            name="shop_order_status_2f1c8e3a_like",
        ),
        AddIndex("shop_order", columns=("customer_id",), name="shop_order_customer_id_8e1f0a29"),
    ]


DJANGO_MORE = """BEGIN;
--
-- Create model Refund
--
CREATE TABLE "shop_refund" ("id" bigint NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, "amount" numeric(10, 2) NOT NULL, "order_id" bigint NOT NULL);
--
-- Remove field legacy_code from order
--
ALTER TABLE "shop_order" DROP COLUMN "legacy_code" CASCADE;
--
-- Add constraint positive_total on model order
--
ALTER TABLE "shop_order" ADD CONSTRAINT "positive_total" CHECK ("total" >= 0);
ALTER TABLE "shop_refund" ADD CONSTRAINT "shop_refund_order_id_5a3e7b1c_fk_shop_order_id" FOREIGN KEY ("order_id") REFERENCES "shop_order" ("id") DEFERRABLE INITIALLY DEFERRED;
CREATE INDEX "shop_refund_order_id_5a3e7b1c" ON "shop_refund" ("order_id");
COMMIT;
"""


def test_django_drop_column_cascade_goes_through_to_the_planner() -> None:
    changes = parse_sql(DJANGO_MORE)
    assert [type(c) for c in changes] == [RunSQL, DropColumn, AddCheck, AddForeignKey, AddIndex]
    assert changes[1] == DropColumn("shop_order", "legacy_code", cascade=True)
    assert changes[2] == AddCheck("shop_order", "total >= 0", name="positive_total")


PRISMA = """-- AlterTable
ALTER TABLE "Order" ADD COLUMN     "status" TEXT NOT NULL DEFAULT 'new';

-- CreateIndex
CREATE INDEX "Order_status_idx" ON "Order"("status");

-- AddForeignKey
ALTER TABLE "Order" ADD CONSTRAINT "Order_userId_fkey" FOREIGN KEY ("userId") REFERENCES "User"("id") ON DELETE RESTRICT ON UPDATE CASCADE;
"""


def test_prisma_migration() -> None:
    assert parse_sql(PRISMA) == [
        AddColumn("Order", "status", "text", nullable=False, default="'new'"),
        AddIndex("Order", columns=("status",), name="Order_status_idx"),
        AddForeignKey(
            "Order",
            ("userId",),
            "User",
            ("id",),
            name="Order_userId_fkey",
            on_delete="RESTRICT",
            on_update="CASCADE",
        ),
    ]


PRISMA_MORE = """-- CreateEnum
CREATE TYPE "Role" AS ENUM ('USER', 'ADMIN');

-- CreateTable
CREATE TABLE "Post" (
    "id" SERIAL NOT NULL,
    "title" TEXT NOT NULL,
    "authorId" INTEGER NOT NULL,

    CONSTRAINT "Post_pkey" PRIMARY KEY ("id")
);

-- AlterTable
ALTER TABLE "User" ADD COLUMN     "role" "Role" NOT NULL DEFAULT 'USER',
ALTER COLUMN "name" SET DATA TYPE VARCHAR(100);

-- CreateIndex
CREATE UNIQUE INDEX "User_email_key" ON "User"("email");

-- AddForeignKey
ALTER TABLE "Post" ADD CONSTRAINT "Post_authorId_fkey" FOREIGN KEY ("authorId") REFERENCES "User"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- DropIndex
DROP INDEX "User_name_idx";
"""


def test_prisma_more() -> None:
    changes = parse_sql(PRISMA_MORE)
    assert changes[0] == RunSQL("CREATE TYPE \"Role\" AS ENUM ('USER', 'ADMIN')", creates=("Role",))
    assert isinstance(changes[1], RunSQL)
    assert changes[1].sql.startswith('CREATE TABLE "Post" (')
    assert changes[1].sql.endswith(")")
    assert changes[1].creates == ("Post",)
    assert changes[2:] == [
        AddColumn("User", "role", '"Role"', nullable=False, default="'USER'"),
        AlterColumnType("User", "name", "varchar(100)"),
        AddIndex("User", columns=("email",), name="User_email_key", unique=True),
        AddForeignKey(
            "Post",
            ("authorId",),
            "User",
            ("id",),
            name="Post_authorId_fkey",
            on_delete="RESTRICT",
            on_update="CASCADE",
        ),
        DropIndex("User_name_idx"),
    ]


ALEMBIC = """BEGIN;

CREATE TABLE alembic_version (
    version_num VARCHAR(32) NOT NULL, 
    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)
);

-- Running upgrade  -> abc123

CREATE TABLE account (
    id SERIAL NOT NULL, 
    name VARCHAR(50) NOT NULL, 
    PRIMARY KEY (id)
);

INSERT INTO alembic_version (version_num) VALUES ('abc123') RETURNING alembic_version.version_num;

-- Running upgrade abc123 -> def456

ALTER TABLE account ADD COLUMN last_login TIMESTAMP WITHOUT TIME ZONE;

CREATE INDEX ix_account_last_login ON account (last_login);

UPDATE alembic_version SET version_num='def456' WHERE alembic_version.version_num = 'abc123';

COMMIT;

"""  # noqa: W291


def test_alembic_offline_sql() -> None:
    changes = parse_sql(ALEMBIC)
    assert changes == [
        RunSQL(
            "CREATE TABLE alembic_version (\n    version_num VARCHAR(32) NOT NULL, \n"
            "    CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num)\n)",
            creates=("alembic_version",),
            bookkeeping=True,
        ),
        RunSQL(
            "CREATE TABLE account (\n    id SERIAL NOT NULL, \n    name VARCHAR(50) NOT NULL, \n"
            "    PRIMARY KEY (id)\n)",
            creates=("account",),
        ),
        RunSQL(
            "INSERT INTO alembic_version (version_num) VALUES ('abc123')"
            " RETURNING alembic_version.version_num",
            touches=("alembic_version",),
            bookkeeping=True,
        ),
        AddColumn("account", "last_login", "timestamp"),
        AddIndex("account", columns=("last_login",), name="ix_account_last_login"),
        RunSQL(
            "UPDATE alembic_version SET version_num='def456'"
            " WHERE alembic_version.version_num = 'abc123'",
            touches=("alembic_version",),
            bookkeeping=True,
        ),
    ]


def test_alembic_downgrade_bookkeeping_kept() -> None:
    script = """BEGIN;
-- Running downgrade abc123 -> base
DROP INDEX ix_account_last_login;
DELETE FROM alembic_version WHERE alembic_version.version_num = 'abc123';
DROP TABLE alembic_version;
COMMIT;
"""
    assert parse_sql(script) == [
        DropIndex("ix_account_last_login"),
        RunSQL(
            "DELETE FROM alembic_version WHERE alembic_version.version_num = 'abc123'",
            touches=("alembic_version",),
            bookkeeping=True,
        ),
        RunSQL("DROP TABLE alembic_version", touches=("alembic_version",), bookkeeping=True),
    ]


@pytest.mark.parametrize(
    ("text", "table"),
    [
        (
            "INSERT INTO django_migrations (app, name, applied) VALUES ('shop', '0002_x', now())",
            "django_migrations",
        ),
        (
            'INSERT INTO "_prisma_migrations" (id, checksum, migration_name)'
            " VALUES ('1', 'c', 'm')",
            "_prisma_migrations",
        ),
        ("UPDATE app.alembic_version SET version_num = 'b'", "app.alembic_version"),
    ],
)
def test_framework_bookkeeping_is_kept_as_written(text: str, table: str) -> None:
    assert parse_sql(text) == [RunSQL(text, touches=(table,), bookkeeping=True)]


PG_DUMP_PREAMBLE = """--
-- PostgreSQL database dump
--

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET transaction_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

ALTER TABLE ONLY public.orders
    ADD CONSTRAINT orders_pkey PRIMARY KEY (id);
"""


def test_pg_dump_preamble() -> None:
    assert parse_sql(PG_DUMP_PREAMBLE) == [
        AddUnique("orders", ("id",), name="orders_pkey", primary_key=True, schema="public")
    ]


# =========================================================================== identifiers


def test_quoted_identifier_with_injection_text_kept_exactly() -> None:
    c = one('ALTER TABLE "orders""; DROP TABLE users; --" ADD COLUMN x int')
    assert c == AddColumn('orders"; DROP TABLE users; --', "x", "integer")


def test_quoted_identifiers_keep_case_and_unquoted_fold() -> None:
    assert one('ALTER TABLE "Order" ADD COLUMN "userId" int') == AddColumn(
        "Order", "userId", "integer"
    )
    assert one("ALTER TABLE Orders ADD COLUMN UserId int") == AddColumn(
        "orders", "userid", "integer"
    )


identifiers = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")),
    min_size=1,
    max_size=63,
).filter(lambda s: len(s.encode()) <= 63)


@settings(max_examples=300, deadline=None)
@given(table=identifiers, column=identifiers)
def test_identifiers_round_trip(table: str, column: str) -> None:
    text = (
        f"ALTER TABLE {sql.Identifier(table).as_string(None)}"
        f" ADD COLUMN {sql.Identifier(column).as_string(None)} int"
    )
    assert parse_sql(text) == [AddColumn(table, column, "integer")]


@settings(max_examples=200, deadline=None)
@given(schema=identifiers, table=identifiers, column=identifiers)
def test_qualified_identifiers_round_trip_in_create_index(
    schema: str, table: str, column: str
) -> None:
    text = (
        f"CREATE INDEX ON {sql.Identifier(schema, table).as_string(None)}"
        f" ({sql.Identifier(column).as_string(None)}); SELECT 1"
    )
    changes = parse_sql(text, allow_raw=True)
    assert changes[0] == AddIndex(table, columns=(column,), schema=schema)
    assert changes[1] == RunSQL("SELECT 1", raw=True)


def test_update_targets_of_a_raw_statement() -> None:
    assert update_targets("UPDATE app.t x SET a = 1, b = y.c FROM y WHERE y.id = x.id") == [
        ("app", "t", ("a", "b"))
    ]
    assert update_targets("DELETE FROM t") == []
    assert update_targets("not sql") == []


def test_seed_data_for_a_table_created_in_the_script_runs_as_written() -> None:
    changes = parse_sql(
        "CREATE TABLE app.kinds (id int PRIMARY KEY, label text);"
        " INSERT INTO app.kinds SELECT id, name FROM app.legacy_kinds;"
        " INSERT INTO app.kinds VALUES (0, 'none') ON CONFLICT DO NOTHING;"
        " UPDATE app.kinds SET label = upper(label);"
        " DELETE FROM app.kinds WHERE id < 0;"
    )
    assert [type(c) for c in changes] == [RunSQL] * 5
    seed = changes[1]
    assert isinstance(seed, RunSQL)
    assert (seed.raw, seed.touches, seed.creates) == (False, ("app.legacy_kinds",), ())
    assert all(isinstance(c, RunSQL) and c.touches == () for c in changes[2:])


def test_seed_statement_that_also_writes_elsewhere_is_refused() -> None:
    assert (
        "INSERT changes data"
        in unsupported(
            "CREATE TABLE kinds (id int);"
            " WITH gone AS (DELETE FROM users RETURNING id) INSERT INTO kinds SELECT id FROM gone"
        ).problem
    )


def test_insert_into_an_existing_table_is_still_refused() -> None:
    assert (
        "INSERT changes data"
        in unsupported("CREATE TABLE kinds (id int); INSERT INTO app.kinds VALUES (1)").problem
    )


@pytest.mark.parametrize(
    ("text", "deferrable", "initially_deferred"),
    [
        ("ALTER TABLE t ADD CONSTRAINT c UNIQUE (a) DEFERRABLE", True, False),
        ("ALTER TABLE t ADD CONSTRAINT c UNIQUE (a) DEFERRABLE INITIALLY DEFERRED", True, True),
        ("ALTER TABLE t ADD CONSTRAINT c UNIQUE (a) INITIALLY DEFERRED", True, True),
        ("ALTER TABLE t ADD CONSTRAINT c UNIQUE (a) NOT DEFERRABLE", False, False),
        ("ALTER TABLE t ADD a int CONSTRAINT c UNIQUE DEFERRABLE INITIALLY DEFERRED", True, True),
        (
            "CREATE UNIQUE INDEX i ON t (a);"
            " ALTER TABLE t ADD CONSTRAINT c UNIQUE USING INDEX i DEFERRABLE",
            True,
            False,
        ),
    ],
)
def test_deferrable_unique(text: str, deferrable: bool, initially_deferred: bool) -> None:
    [unique] = [c for c in parse_sql(text) if isinstance(c, AddUnique)]
    assert (unique.name, unique.columns) == ("c", ("a",))
    assert (unique.deferrable, unique.initially_deferred) == (deferrable, initially_deferred)


def test_identity() -> None:
    assert parse_sql(
        "ALTER TABLE app.t ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY"
        " (START WITH 10 INCREMENT BY 2)"
    ) == [AddIdentity("t", "id", always=True, options="START WITH 10 INCREMENT BY 2", schema="app")]
    assert parse_sql("ALTER TABLE t ADD COLUMN id bigint GENERATED BY DEFAULT AS IDENTITY") == [
        AddColumn("t", "id", "bigint", nullable=False),
        AddIdentity("t", "id"),
    ]


def test_make_object_name_shortens_like_postgresql() -> None:
    from onlineschema.planner.naming import index_column_names, make_object_name, name_addition

    assert make_object_name("t", "a_b", "idx") == "t_a_b_idx"
    long = make_object_name("t" * 40, "c" * 40, "fkey")
    assert (len(long), long) == (63, "t" * 29 + "_" + "c" * 28 + "_fkey")
    assert make_object_name("é" * 40, None, "pkey") == "é" * 29 + "_pkey"  # 58 + 5 bytes
    assert index_column_names(["a"], ["(a::text)", "lower(b)", "(a || b)"], ["a"]) == [
        "a",
        "a1",
        "lower",
        "expr",
        "a2",
    ]
    assert name_addition(["x" * 60, "y" * 10]) == "x" * 60 + "_" + "y" * 10


def test_index_and_constraint_renames() -> None:
    assert parse_sql('ALTER INDEX app."a" RENAME TO "B"') == [RenameIndex("a", "B", schema="app")]
    assert parse_sql("ALTER TABLE t RENAME CONSTRAINT c TO d") == [RenameConstraint("t", "c", "d")]
