"""squawk (the PyPI package ``squawk-cli``) finds nothing to say about our plans.

The issue's example script is planned against a real server, rendered as the SQL script
the executor really runs (its timeouts and transaction boundaries), and linted with
squawk for the server's version. No rule may fire. Rules about locks, rewrites and
timeouts may never be suppressed; a rule that fires on the plan's own helper objects (or
on a deliberate choice) is suppressed in the script, right above the statement, with a
comment saying why.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers import DdlRecorder

from onlineschema import Executor, Settings
from onlineschema.executor.script import render_sql_script
from onlineschema.sqlinput import parse_sql

EXAMPLE = (
    "ALTER TABLE orders ADD COLUMN status text;"
    " UPDATE orders SET status = CASE WHEN amount > 100 THEN 'big' ELSE 'small' END;"
    " ALTER TABLE orders ALTER COLUMN status SET NOT NULL, ALTER COLUMN status SET DEFAULT 'small';"
    " CREATE INDEX ON orders(status);"
    " ALTER TABLE orders ADD FOREIGN KEY (user_id) REFERENCES users(id);"
)

#: squawk's rules about locks, table rewrites, scans under strong locks and timeouts:
#: the plan must satisfy them, never suppress them. (Passed with --include, which also
#: makes squawk reject a misspelt name.)
SAFETY_RULES = (
    "require-lock-timeout",
    "require-statement-timeout",
    "require-concurrent-index-creation",
    "require-concurrent-index-deletion",
    "ban-concurrent-index-creation-in-transaction",
    "adding-field-with-default",
    "adding-not-nullable-field",
    "adding-required-field",
    "adding-foreign-key-constraint",
    "adding-serial-primary-key-field",
    "constraint-missing-not-valid",
    "disallowed-unique-constraint",
    "changing-column-type",
    "ban-alter-domain-with-add-constraint",
    "ban-create-domain-with-constraint",
    "ban-uncommitted-transaction",
    "transaction-nesting",
)

#: rules the rendered script may suppress, each only with a reason next to it
ALLOWED_SUPPRESSIONS = {"ban-drop-constraint", "ban-drop-function", "prefer-robust-stmts"}


def squawk_binary() -> str:
    """The ``squawk`` of this environment (installed with the test extras)."""
    here = Path(sys.executable).parent / "squawk"
    found = str(here) if here.exists() else shutil.which("squawk")
    assert found, "squawk is missing: pip install -e '.[test]' installs squawk-cli"
    return found


def run_squawk(path: Path, pg_version: int) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [
            squawk_binary(),
            "--reporter",
            "json",
            f"--pg-version={pg_version}.0",
            *(f"--include={rule}" for rule in SAFETY_RULES),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # exit 0: nothing found, 1: violations found; anything else is squawk failing
    assert proc.returncode in (0, 1), proc.stderr
    out = proc.stdout.strip()
    violations: list[dict[str, Any]] = json.loads(out) if out else []
    assert (proc.returncode == 1) == bool(violations), (proc.returncode, out, proc.stderr)
    return violations


def describe(violations: list[dict[str, Any]], script: str) -> str:
    lines = script.splitlines()
    return "\n".join(
        f"{v['rule_name']} at line {v['line'] + 1}: {v['message']}\n    {lines[v['line']]}"
        for v in violations
    )


@pytest.fixture
def example_db(owner_dsn: str) -> str:
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE users (id bigint PRIMARY KEY);"
            "CREATE TABLE orders (id bigint PRIMARY KEY, user_id bigint, amount numeric);"
            "INSERT INTO users SELECT generate_series(1, 10);"
            "INSERT INTO orders SELECT g, mod(g, 10) + 1, g FROM generate_series(1, 200) g;"
        )
    return owner_dsn


def rendered_example(dsn: str) -> tuple[str, Settings]:
    settings = Settings()
    with Executor(dsn, settings) as ex:
        plan = ex.plan(parse_sql(EXAMPLE))
    script = render_sql_script(plan.steps, settings)
    return script, settings


def test_squawk_finds_nothing_in_the_rendered_example_plan(
    example_db: str, pg_version: int, tmp_path: Path
) -> None:
    script, settings = rendered_example(example_db)
    path = tmp_path / "plan.sql"
    path.write_text(script, encoding="utf-8")

    violations = run_squawk(path, pg_version)
    assert violations == [], "squawk warns about the plan:\n" + describe(violations, script)

    lines = script.splitlines()
    # every suppression is one of the allowed kinds, sits right above a statement, and
    # has its reason in the comment block of the same step
    suppressed: set[str] = set()
    for i, line in enumerate(lines):
        m = re.match(r"--\s*squawk-ignore\s+(.+)$", line)
        if not m:
            continue
        rules = {r.strip() for r in m.group(1).split(",")}
        suppressed |= rules
        assert rules <= ALLOWED_SUPPRESSIONS, f"line {i + 1} suppresses {rules}"
        assert not rules & set(SAFETY_RULES)
        assert lines[i + 1].strip() and not lines[i + 1].startswith("--"), (
            f"line {i + 1}: squawk only reads an ignore right above the statement"
        )
        step_start = max(j for j in range(i + 1) if lines[j].startswith("-- step "))
        block = "\n".join(lines[step_start:i])
        for rule in rules:
            assert re.search(rf"squawk {re.escape(rule)} ignored: \S+", block), (
                f"no reason given for suppressing {rule} (line {i + 1})"
            )
    # the plan drops its own helper check on 15/16 (18 uses NOT NULL NOT VALID instead)
    if pg_version < 18:
        assert "ban-drop-constraint" in suppressed
        assert "onlineschema_nn_orders_status" in script
    else:
        assert "ban-drop-constraint" not in suppressed
        assert re.search(r"ADD CONSTRAINT .* NOT NULL .* NOT VALID", script)
    # the script carries the executor's real timeouts and transaction boundaries
    lock_ms = f"{round(settings.lock_timeout * 1000)}ms"
    assert f"SET LOCAL lock_timeout = '{lock_ms}';" in script
    assert (
        f"SET LOCAL statement_timeout = '{round(settings.statement_timeout * 1000)}ms';" in script
    )
    index_ms = f"{round(settings.index_lock_timeout * 1000)}ms"
    cic = script.index("CREATE INDEX CONCURRENTLY")
    assert script.rfind("BEGIN;", 0, cic) < script.rfind("COMMIT;", 0, cic), "CIC in a transaction"
    assert script.rfind(f"SET lock_timeout = '{index_ms}';", 0, cic) > script.rfind(
        "COMMIT;", 0, cic
    )
    assert script.count("BEGIN;") == script.count("COMMIT;")
    # nothing that scans runs in the same transaction as an ACCESS EXCLUSIVE statement
    for block in re.findall(r"BEGIN;\n(.*?)COMMIT;", script, flags=re.S):
        if "VALIDATE CONSTRAINT" in block:
            assert "ADD CONSTRAINT" not in block and "SET NOT NULL" not in block, block


def test_squawk_does_flag_the_naive_script(tmp_path: Path, pg_version: int) -> None:
    """The control: squawk, run the same way, objects to the script as written, so a
    clean result above means something."""
    path = tmp_path / "naive.sql"
    path.write_text(EXAMPLE + "\n", encoding="utf-8")
    rules = {v["rule_name"] for v in run_squawk(path, pg_version)}
    assert {
        "require-lock-timeout",
        "require-concurrent-index-creation",
        "adding-foreign-key-constraint",
        "adding-not-nullable-field",
    } <= rules, rules


#: statements the event trigger sees (what ddl_command_start fires for)
DDL_WORDS = {"ALTER", "CREATE", "DROP", "COMMENT", "GRANT", "REVOKE"}


def _one_line(statement: str) -> str:
    return " ".join(statement.replace(";", " ").split())


def test_the_ddl_the_executor_runs_is_the_ddl_of_the_linted_script(
    example_db: str, dsn: str
) -> None:
    """What squawk lints above is rendered from the plan's statements; here the example is
    applied for real (as the owner) while an event trigger records every DDL command any
    session runs: the executor's DDL is exactly the plan's DDL statements, in order, and
    nothing else (the state schema's own tables aside)."""
    with Executor(example_db) as ex:
        plan = ex.plan(parse_sql(EXAMPLE))
    expected = [
        _one_line(stmt)
        for step in plan.steps
        for stmt in step.statements
        if stmt.split(None, 1)[0].upper() in DDL_WORDS
    ]
    with psycopg.connect(dsn, autocommit=True) as admin, DdlRecorder(admin) as ddl:
        with Executor(example_db) as ex:
            assert ex.apply(parse_sql(EXAMPLE), "example").state == "completed"
        seen = ddl.seen()
    ran: list[str] = []
    for _event, _tag, _object, query, app in seen:
        statement = _one_line(query)
        if statement.startswith('CREATE SCHEMA IF NOT EXISTS "onlineschema"') or (
            '"onlineschema".' in statement.split("(")[0]
        ):
            continue  # the state schema's tables (CREATE ... IF NOT EXISTS)
        assert app.startswith("onlineschema"), f"DDL from another session: {query}"
        if not ran or ran[-1] != statement:  # one command may fire several events
            ran.append(statement)
    print(f"{len(ran)} DDL statements ran: {ran}")
    assert len(ran) >= 5
    assert ran == expected, "\n".join(
        ["the executor ran:", *ran, "", "the plan (and the linted script) says:", *expected]
    )
