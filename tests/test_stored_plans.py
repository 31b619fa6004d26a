"""Migrations started by an earlier release go on with this one.

``tests/fixtures/stored_plans`` holds what a release stored (captured by its
``make_stored_plans.py``): the plan of each change kind as ``onlineschema.migrations.plan``
keeps it, the statements that made the state schema, and the state rows of migrations
left in flight. Nothing here is produced by the code under test: a change of the stored
format that breaks reading old plans, or resuming/aborting/contracting an old migration,
fails these tests.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import psycopg
import pytest
from helpers import column_must_exist, index_must_exist, make_orders, migration_state
from psycopg import sql

from onlineschema import Executor
from onlineschema.changes import change_from_dict, changes_to_json
from onlineschema.errors import Refused
from onlineschema.executor import changes_hash
from onlineschema.executor.steps import STEP_HANDLERS
from onlineschema.plan import Plan, Step, StepKind
from onlineschema.state import SCHEMA_VERSION

Conn = psycopg.Connection[tuple[Any, ...]]

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "stored_plans"
PLAN_FILES = sorted(FIXTURES.glob("plan_*.json"))
STATE_TABLES = ("migrations", "steps", "control", "backfills", "chunks")
#: change kinds added after 0.1.0, whose plans no earlier release can have stored
KINDS_SINCE_0_1 = {"reindex", "add_identity", "rename_index", "rename_constraint"}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


@pytest.mark.server_independent
def test_there_is_a_stored_plan_of_every_change_kind() -> None:
    from onlineschema.changes import CHANGE_TYPES

    kinds = {c["kind"] for f in PLAN_FILES for c in load(f.name)["changes"]}
    assert kinds == set(CHANGE_TYPES) - KINDS_SINCE_0_1


@pytest.mark.server_independent
@pytest.mark.parametrize("path", PLAN_FILES, ids=lambda p: p.stem)
def test_stored_plan_reads_back_unchanged(path: pathlib.Path) -> None:
    """Plan.from_dict takes the stored plan; writing it out again gives the same JSON, so
    nothing the old release stored is dropped or reinterpreted, and its hash is the same."""
    data = load(path.name)
    stored = data["plan"]
    plan = Plan.from_dict(stored)
    assert [s.id for s in plan.steps] == [s["id"] for s in stored["steps"]]
    assert json.loads(json.dumps(plan.to_dict())) == stored
    assert json.loads(plan.to_json()) == stored
    assert Plan.from_dict(json.loads(plan.to_json())) == plan
    changes = [change_from_dict(c) for c in data["changes"]]
    assert json.loads(changes_to_json(changes)) == sorted_keys(data["changes"])


def sorted_keys(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(sorted(c.items())) for c in changes]


@pytest.mark.server_independent
@pytest.mark.parametrize("name", ["paused_after_first_step", "awaiting_contract"])
def test_stored_row_hashes_match(name: str) -> None:
    """The plan hash and changes hash of an in-flight row are what this release computes
    from the stored plan and changes (apply() with the same changes finds the migration)."""
    row = load(f"inflight_{name}.json")["rows"]["migrations"][0]
    assert Plan.from_dict(row["plan"]).hash == row["plan_hash"]
    changes = [change_from_dict(c) for c in row["changes"]]
    assert changes_hash(changes) == row["changes_hash"]


# --- migrations in flight, written as the earlier release left them ----------------------


def setup_schema(conn: Conn) -> None:
    """make_stored_plans.setup_schema: the schema the fixtures were captured on."""
    make_orders(conn, rows=200)
    conn.execute("CREATE INDEX orders_amount_idx ON orders (amount)")
    conn.execute("ALTER TABLE orders ADD CONSTRAINT n_nonneg CHECK (n >= 0) NOT VALID")


def replay_done_steps(conn: Conn, plan: dict[str, Any], rows: dict[str, Any]) -> None:
    """Bring the database to where the earlier release left it: the work of each step
    its rows record as done (a backfill as the one UPDATE it batches)."""
    done = {r["step_id"] for r in rows["steps"] if r["state"] == "done"}
    for step in plan["steps"]:
        if step["id"] not in done:
            continue
        d = step["details"]
        if step["action"] == "backfill":
            sets = sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(c), sql.SQL(e)) for c, e in d["set"]
            )
            conds: list[sql.Composable] = []
            if d["only_null"]:
                conds.append(sql.SQL("{} IS NULL").format(sql.Identifier(d["only_null"])))
            if d["where"]:
                conds.append(sql.SQL(d["where"]))
            where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds) if conds else sql.SQL("")
            conn.execute(
                sql.SQL("UPDATE {} SET {}{}").format(
                    sql.Identifier(d["schema"], d["table"]), sets, where
                )
            )
            continue
        for stmt in step["statements"]:
            conn.execute(stmt.encode())


def write_state(conn: Conn, name: str) -> dict[str, Any]:
    """Create the state schema with the earlier release's statements and insert the rows
    of migration ``name`` as it stored them; returns the stored plan."""
    schema = load("state_schema.json")
    for stmt in schema["ddl"]:
        conn.execute(stmt.encode())
    fixture = load(f"inflight_{name}.json")
    rows = fixture["rows"]
    plan = rows["migrations"][0]["plan"]
    replay_done_steps(conn, plan, rows)
    for table in STATE_TABLES:
        for row in rows[table]:
            conn.execute(
                sql.SQL("INSERT INTO {t} SELECT * FROM jsonb_populate_record(NULL::{t}, %s)").format(
                    t=sql.Identifier("onlineschema", table)
                ),
                (json.dumps(row),),
            )
    return dict(plan)


def step_states(conn: Conn, name: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT step_id, state FROM onlineschema.steps WHERE migration = %s", (name,)
    ).fetchall()
    return {r[0]: r[1] for r in rows}


def test_resume_migration_paused_by_earlier_release(dsn: str, conn: Conn) -> None:
    setup_schema(conn)
    plan = write_state(conn, "paused_after_first_step")
    assert Step.from_dict(plan["steps"][0]).id == "add_column.public.orders.big"
    assert migration_state(conn, "paused_after_first_step") == "paused"
    with Executor(dsn) as ex:
        assert ex.store.schema_version() == 1  # 0.1.0's schema: no version table
        result = ex.resume("paused_after_first_step")
        assert ex.store.schema_version() == SCHEMA_VERSION  # upgraded in place
    assert result.state == "completed"
    assert (result.steps_run, result.steps_skipped) == (2, 0)
    assert set(step_states(conn, "paused_after_first_step").values()) == {"done"}
    column_must_exist(conn, "orders", "big", type="boolean", nullable=True)
    wrong = conn.execute(
        "SELECT count(*) FROM orders WHERE big IS DISTINCT FROM (amount > 100)"
    ).fetchone()
    assert wrong == (0,)
    index_must_exist(conn, "orders_user_idx", valid=True)


def test_abort_migration_paused_by_earlier_release(dsn: str, conn: Conn) -> None:
    setup_schema(conn)
    write_state(conn, "paused_after_first_step")
    column_must_exist(conn, "orders", "big", type="boolean", nullable=True)
    with Executor(dsn) as ex:
        result = ex.abort("paused_after_first_step")
    assert result.state == "aborted"
    assert result.steps_run == 1
    assert migration_state(conn, "paused_after_first_step") == "aborted"
    cols = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum"
    ).fetchall()
    assert [c[0] for c in cols] == ["id", "user_id", "amount", "n", "note"]


def test_contract_migration_expanded_by_earlier_release(dsn: str, conn: Conn) -> None:
    setup_schema(conn)
    write_state(conn, "awaiting_contract")
    notes = conn.execute("SELECT id, note FROM orders ORDER BY id").fetchall()
    with Executor(dsn) as ex:
        with pytest.raises(Refused, match="waiting for its contract phase"):
            ex.resume("awaiting_contract")
        result = ex.contract("awaiting_contract")
    assert result.state == "completed"
    assert result.steps_run == 2
    assert migration_state(conn, "awaiting_contract") == "completed"
    assert conn.execute("SELECT id, comment FROM orders ORDER BY id").fetchall() == notes
    gone = conn.execute(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = 'orders'::regclass"
        " AND attname = 'note' AND NOT attisdropped"
    ).fetchone()
    assert gone == (0,)
    triggers = conn.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND NOT tgisinternal"
    ).fetchone()
    assert triggers == (0,)


def test_abort_migration_expanded_by_earlier_release(dsn: str, conn: Conn) -> None:
    setup_schema(conn)
    write_state(conn, "awaiting_contract")
    column_must_exist(conn, "orders", "comment", type="text", nullable=True)
    with Executor(dsn) as ex:
        result = ex.abort("awaiting_contract")
    assert result.state == "aborted"
    cols = conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'orders'::regclass AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum"
    ).fetchall()
    assert [c[0] for c in cols] == ["id", "user_id", "amount", "n", "note"]
    fns = conn.execute("SELECT count(*) FROM pg_proc WHERE proname LIKE 'onlineschema%'").fetchone()
    assert fns == (0,)


EXPECTED_KINDS = {
    "create_index": StepKind.INDEX_BUILD,
    "backfill": StepKind.BACKFILL,
    "drop_index": StepKind.AUTOCOMMIT,
}


@pytest.mark.server_independent
def test_stored_steps_get_their_kind_and_payload() -> None:
    """Stored plans carry no kind: it comes from the payload and the transaction flag,
    and every kind has a handler that runs and renders it."""
    seen: set[StepKind] = set()
    for path in PLAN_FILES:
        for raw in load(path.name)["plan"]["steps"]:
            step = Step.from_dict(raw)
            assert step.kind is EXPECTED_KINDS.get(raw["action"], StepKind.TRANSACTION), raw["id"]
            assert "kind" not in step.to_dict()
            seen.add(step.kind)
            if step.kind is StepKind.INDEX_BUILD:
                assert step.index_build is not None
                assert step.index_build.name == raw["details"]["index"]["name"]
            if step.kind is StepKind.BACKFILL:
                spec = step.backfill_spec
                assert spec is not None and spec.table == "orders"
                assert [list(p) for p in spec.set] == raw["details"]["set"]
            assert [w.rule for w in step.lint] == [
                w["rule"] for w in raw["details"].get("squawk_ignore", ())
            ]
    assert seen == {
        StepKind.TRANSACTION,
        StepKind.AUTOCOMMIT,
        StepKind.INDEX_BUILD,
        StepKind.BACKFILL,
    }
    assert set(STEP_HANDLERS) == set(StepKind)
