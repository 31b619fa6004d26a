"""Partitioned tables (range, list, hash, two levels, default partitions) on a real
server: indexes ON ONLY + per-partition concurrent builds + attach, unique indexes and
primary keys, CHECK / NOT NULL / foreign keys without a blocking scan on 15, 16, 17 and
18, backfills per partition, columns; leftovers of earlier failed runs; the partition set
changing under a running migration; a plan for 100 partitions; SIGKILL during a
partition's index build and during a cross-partition backfill.

The tree (``events``, range by ts; primary key (id, ts, kind))::

    events_2024      range 2024  -> hash (id): events_2024_h0, events_2024_h1
    events_2025      range 2025  -> list (kind): events_2025_a (1, 2), events_2025_other (default)
    events_default   default
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from harness import Conn, lifecycle, run_until_paused, vacuumed_snapshots
from helpers import constraint_must_exist, constraint_must_not_exist
from scenario_tools import (
    EXECUTOR_APP,
    MigrationProcess,
    Writer,
    backfill_progress,
    cli_command,
    executor_backends,
    invalid_index,
    migration_state,
    query_value,
    wait_backends_gone,
)

from onlineschema import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddIndex,
    AddUnique,
    AlterColumnType,
    Backfill,
    BackfillSettings,
    DropColumn,
    DropConstraint,
    DropIndex,
    Executor,
    PreflightError,
    Reindex,
    RenameColumn,
    RunSQL,
    SetNotNull,
    Settings,
)
from onlineschema.catalog import read_catalog
from onlineschema.sqlinput import parse_sql

SMALL = Settings(
    backfill=BackfillSettings(
        batch_initial=50, batch_min=10, batch_max=50, duty_cycle=1.0, control_interval=0.0
    )
)

ROWS = 1200
TREE = (
    "events",
    "events_2024",
    "events_2024_h0",
    "events_2024_h1",
    "events_2025",
    "events_2025_a",
    "events_2025_other",
    "events_default",
)
LEAVES = (
    "events_2024_h0",
    "events_2024_h1",
    "events_2025_a",
    "events_2025_other",
    "events_default",
)

SCHEMA = """
CREATE TABLE users (id bigint PRIMARY KEY);
INSERT INTO users SELECT generate_series(0, 50);
CREATE TABLE events (
    id bigint NOT NULL, ts date NOT NULL, kind int NOT NULL, user_id bigint, payload text,
    PRIMARY KEY (id, ts, kind)
) PARTITION BY RANGE (ts);
CREATE TABLE events_2024 PARTITION OF events
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY HASH (id);
CREATE TABLE events_2024_h0 PARTITION OF events_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE events_2024_h1 PARTITION OF events_2024 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE events_2025 PARTITION OF events
    FOR VALUES FROM ('2025-01-01') TO ('2026-01-01') PARTITION BY LIST (kind);
CREATE TABLE events_2025_a PARTITION OF events_2025 FOR VALUES IN (1, 2);
CREATE TABLE events_2025_other PARTITION OF events_2025 DEFAULT;
CREATE TABLE events_default PARTITION OF events DEFAULT;
INSERT INTO events (id, ts, kind, user_id, payload)
SELECT g, date '2024-06-01' + (g % 700), g % 4, g % 50, 'p' || g
FROM generate_series(1, %(rows)s) g;
"""


@pytest.fixture
def events(conn: Conn) -> Conn:
    conn.execute(SCHEMA.replace("%(rows)s", str(ROWS)))
    return conn


@pytest.fixture
def writer(dsn: str, events: Conn) -> Iterator[Writer]:
    """The application: inserts into every partition and updates rows, all along."""
    yield from writing(
        dsn,
        "INSERT INTO events (id, ts, kind, user_id, payload)"
        " VALUES (100000 + %(i)s, date '2024-06-01' + (%(i)s %% 700), %(i)s %% 4, %(i)s %% 50, 'w')",
        "UPDATE events SET payload = 'u' || %(i)s WHERE id = 1 + %(i)s %% 1000",
    )


def writing(dsn: str, insert: str, update: str) -> Iterator[Writer]:
    w = Writer(dsn, insert, update, statement_timeout="30s").start_writing()
    started = time.monotonic()
    yield w
    w.stop()
    # lock_timeout (0.5 s by default) plus a little: no statement of the application
    # waited for a lock longer than that, the whole way through
    assert w.statements_in(started, time.monotonic()) > 20
    longest = w.max_latency(started, time.monotonic())
    assert longest < Settings().lock_timeout + 1.0, f"a writer statement took {longest:.2f}s"


PARTITIONED = ("events", "events_2024", "events_2025")


def partitioned_snapshots(conn: Conn, tables: Sequence[str] = PARTITIONED) -> dict[str, str]:
    """Snapshots of partitioned tables, ``relhastriggers`` left out: VACUUM never
    processes a partitioned table itself (it has no storage), so nothing clears the flag
    that a dropped foreign key's triggers leave set; the triggers themselves are in the
    snapshot."""
    return {
        t: re.sub(r'"relhastriggers": (true|false)', "", s)
        for t, s in vacuumed_snapshots(conn, tables, mask_oids=True).items()
    }


def plan_of(dsn: str, changes: Sequence[Any]) -> Any:
    with Executor(dsn) as ex:
        return ex.plan(changes)


def actions(plan: Any) -> list[tuple[str, str]]:
    return [(s.action, s.tables[0] if s.tables else "") for s in plan.steps]


def attached_indexes(conn: Conn, parent_index: str) -> list[tuple[str, str, bool]]:
    """(table, index, valid) of every index in the partition tree of ``parent_index``."""
    return [
        (r[0], r[1], r[2])
        for r in conn.execute(
            "SELECT i.indrelid::regclass::text, t.relid::regclass::text, i.indisvalid"
            " FROM pg_partition_tree(%s::regclass) t JOIN pg_index i ON i.indexrelid = t.relid"
            " ORDER BY 1",
            (parent_index,),
        ).fetchall()
    ]


# --- the catalog ------------------------------------------------------------------------


def test_catalog_reads_the_partition_tree(events: Conn) -> None:
    cat = read_catalog(events, [(None, "events")])
    root = cat.tables[("public", "events")]
    assert root.relkind == "p" and root.partition_strategy == "r"
    assert root.partition_key == ("ts",)
    assert root.partitions == (
        ("public", "events_2024"),
        ("public", "events_2025"),
        ("public", "events_default"),
    )
    mid = cat.tables[("public", "events_2024")]
    assert (mid.partition_strategy, mid.partition_key, mid.parent) == (
        "h",
        ("id",),
        ("public", "events"),
    )
    assert "2024-01-01" in mid.partition_bound
    assert cat.tables[("public", "events_2025")].partition_strategy == "l"
    assert cat.tables[("public", "events_default")].partition_bound == "DEFAULT"
    leaf = cat.tables[("public", "events_2025_a")]
    assert leaf.relkind == "r" and leaf.partitions == () and leaf.partition_key == ()
    assert set(TREE) <= {n for _, n in cat.tables}


# --- indexes ----------------------------------------------------------------------------


def index_plan_shape(plan: Any, name: str) -> None:
    acts = [s.action for s in plan.steps]
    # ON ONLY the root and the sub-partitioned levels, a build per leaf, an attach per
    # partition index (leaves, then the two sub-partitioned levels)
    assert acts == ["create_index_on_only"] * 3 + ["create_index"] * 5 + ["attach_index"] * 7
    on_only = [s for s in plan.steps if s.action == "create_index_on_only"]
    assert all(
        "ON ONLY" in s.statements[0] and "CONCURRENTLY" not in s.statements[0] for s in on_only
    )
    assert (
        on_only[0]
        .statements[0]
        .startswith(f'CREATE {"UNIQUE " if "key" in name else ""}INDEX "{name}"')
    )
    builds = [s for s in plan.steps if s.action == "create_index"]
    assert [s.tables[0] for s in builds] == [f"public.{leaf}" for leaf in LEAVES]
    assert all("CONCURRENTLY" in s.statements[0] for s in builds)
    assert all(not s.blocks_application or not s.scans for s in plan.steps)


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (AddIndex("events", columns=("payload",), name="events_payload_idx"), "events_payload_idx"),
        (
            AddIndex(
                "events", columns=("user_id", "id", "ts", "kind"), unique=True, name="events_u_key"
            ),
            "events_u_key",
        ),
    ],
    ids=["plain", "unique"],
)
def test_index_on_partitioned_table_lifecycle(
    dsn: str, events: Conn, writer: Writer, change: AddIndex, name: str
) -> None:
    index_plan_shape(plan_of(dsn, [change]), name)

    def built(conn: Conn) -> None:
        tree = attached_indexes(conn, name)
        assert len(tree) == 8 and all(valid for *_, valid in tree), tree
        assert {t for t, *_ in tree} == set(TREE)

    def gone(conn: Conn) -> None:
        assert conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,)
        names = [
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " JOIN pg_class t ON t.oid = i.indrelid WHERE t.relname LIKE 'events%'"
            ).fetchall()
        ]
        assert not [n for n in names if "payload" in n or "_u_" in n or "user_id" in n], names

    def half_way(conn: Conn) -> None:
        # ON ONLY indexes of the three partitioned tables (invalid), two leaf builds
        rows = conn.execute(
            "SELECT t.relname, i.indisvalid FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid"
            " WHERE t.relname LIKE 'events%%' AND NOT i.indisprimary ORDER BY 1"
        ).fetchall()
        assert rows == [
            ("events", False),
            ("events_2024", False),
            ("events_2024_h0", True),
            ("events_2024_h1", True),
            ("events_2025", False),
        ], rows

    lifecycle(
        dsn,
        events,
        [change],
        tables=TREE,
        # stop half-way: two of the five leaf builds done, nothing attached yet
        stop=lambda step: (
            step.action == "create_index" and step.tables == ("public.events_2024_h1",)
        ),
        after_expand=half_way,
        after_abort=gone,
        after_finish=built,
    )
    writer.wait_for_samples(5)


def test_unique_index_without_the_partition_key_is_refused_before_ddl(
    dsn: str, events: Conn
) -> None:
    before = vacuumed_snapshots(events, TREE)
    for change, missing in (
        (AddIndex("events", columns=("user_id",), unique=True), "ts"),
        # the root's key is there, a sub-partitioned level's (hash on id) is not
        (AddIndex("events", columns=("user_id", "ts", "kind"), unique=True), "id"),
        (AddUnique("events", ("user_id", "ts", "id")), "kind"),
    ):
        with Executor(dsn) as ex, pytest.raises(PreflightError) as err:
            ex.apply([change], f"bad_{missing}")
        text = str(err.value)
        assert "does not include the partition key" in text and missing in text, text
        assert "add " in text
    assert vacuumed_snapshots(events, TREE) == before
    assert events.execute("SELECT to_regclass('onlineschema.migrations')").fetchone() in (
        (None,),
        ("onlineschema.migrations",),
    )


LOGS = """
CREATE TABLE logs (id bigint, kind int NOT NULL, msg text) PARTITION BY LIST (kind);
CREATE TABLE logs_1 PARTITION OF logs FOR VALUES IN (1);
CREATE TABLE logs_2 PARTITION OF logs FOR VALUES IN (2, 3) PARTITION BY RANGE (id);
CREATE TABLE logs_2_low PARTITION OF logs_2 FOR VALUES FROM (MINVALUE) TO (500);
CREATE TABLE logs_2_high PARTITION OF logs_2 FOR VALUES FROM (500) TO (MAXVALUE);
CREATE TABLE logs_d PARTITION OF logs DEFAULT;
INSERT INTO logs SELECT g, g % 5, 'm' FROM generate_series(1, 1000) g;
"""
LOGS_TREE = ("logs", "logs_1", "logs_2", "logs_2_low", "logs_2_high", "logs_d")


@pytest.fixture
def logs(conn: Conn) -> Conn:
    conn.execute(LOGS)
    return conn


@pytest.fixture
def logs_writer(dsn: str, logs: Conn) -> Iterator[Writer]:
    yield from writing(
        dsn,
        "INSERT INTO logs VALUES (100000 + %(i)s, %(i)s %% 5, 'w')",
        "UPDATE logs SET msg = 'u' || %(i)s WHERE id = 1 + %(i)s %% 1000",
    )


@pytest.mark.parametrize("primary_key", [True, False], ids=["primary_key", "unique"])
def test_primary_key_or_unique_constraint_on_partitioned_table_lifecycle(
    dsn: str, logs: Conn, logs_writer: Writer, primary_key: bool
) -> None:
    conn = logs
    change = AddUnique("logs", ("id", "kind"), primary_key=primary_key)
    name = "logs_pkey" if primary_key else "logs_id_kind_key"
    plan = plan_of(dsn, [change])
    acts = [s.action for s in plan.steps]
    assert acts.count("create_index") == 4 and acts.count("add_constraint_using_index") == 4
    assert "add_constraint_using_index" not in [
        s.action for s in plan.steps if s.tables == ("public.logs",)
    ], "USING INDEX is not allowed on a partitioned table"
    last = [s for s in plan.steps if s.action == "add_partitioned_constraint"]
    assert len(last) == 1 and "DO " in last[0].statements[0]
    assert all(not (s.blocks_application and s.scans) for s in plan.steps)

    def finished(c: Conn) -> None:
        constraint_must_exist(c, "logs", name)
        tree = attached_indexes(c, name)
        assert {t for t, *_ in tree} == set(LOGS_TREE) and all(v for *_, v in tree), tree
        with pytest.raises(psycopg.errors.UniqueViolation):
            c.execute("INSERT INTO logs VALUES (7, 2, 'dup')")
        if primary_key:
            row = c.execute(
                "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'logs'::regclass"
                " AND attname = 'id'"
            ).fetchone()
            assert row == (True,)

    lifecycle(
        dsn,
        conn,
        [change],
        tables=LOGS_TREE,
        stop=lambda step: step.action == "add_constraint_using_index",
        after_expand=lambda c: constraint_must_not_exist(c, "logs", name),
        after_abort=lambda c: constraint_must_not_exist(c, "logs", name),
        after_finish=finished,
    )


def fk_steps(plan: Any) -> list[tuple[str, str]]:
    return [(s.action, s.tables[0]) for s in plan.steps]


def test_foreign_key_from_partitioned_table_lifecycle(
    dsn: str, events: Conn, writer: Writer, pg_version: int
) -> None:
    change = AddForeignKey("events", ("user_id",), "users", name="events_user_fk")
    plan = plan_of(dsn, [change])
    steps = fk_steps(plan)
    if pg_version >= 18:
        # NOT VALID on the partitioned parent, one VALIDATE (each partition under SUE)
        assert steps == [
            ("add_foreign_key_not_valid", "public.events"),
            ("validate_constraint", "public.events"),
        ]
    else:
        # 15-17 cannot add it NOT VALID on the parent: per leaf, then the parent attaches
        expected = []
        for leaf in LEAVES:
            expected += [
                ("add_foreign_key_not_valid", f"public.{leaf}"),
                ("validate_constraint", f"public.{leaf}"),
            ]
        assert steps == [*expected, ("add_partitioned_foreign_key", "public.events")]
        assert f"PostgreSQL {pg_version} cannot add it NOT VALID" in plan.steps[0].description
    assert all(not (s.blocks_application and s.scans) for s in plan.steps)

    def valid_everywhere(conn: Conn) -> None:
        rows = conn.execute(
            "SELECT conrelid::regclass::text, convalidated FROM pg_constraint"
            " WHERE contype = 'f' AND conname LIKE 'events_user_fk%' ORDER BY 1"
        ).fetchall()
        assert {r[0] for r in rows} == set(TREE) and all(r[1] for r in rows), rows
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute("INSERT INTO events VALUES (9999999, '2024-07-01', 1, 777, 'x')")

    before = partitioned_snapshots(events)

    def no_fk(conn: Conn) -> None:
        assert conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'events_user_fk%'"
        ).fetchone() == (0,)
        assert partitioned_snapshots(conn) == before

    lifecycle(
        dsn,
        events,
        [change],
        tables=(*LEAVES, "users"),
        stop=lambda step: step.action == "validate_constraint",
        after_expand=lambda c: None,
        after_abort=no_fk,
        after_finish=valid_everywhere,
        mask_oids=True,
    )


def test_foreign_key_to_partitioned_table_lifecycle(dsn: str, events: Conn, writer: Writer) -> None:
    events.execute(
        "CREATE TABLE refs (id bigint PRIMARY KEY, e_id bigint, e_ts date, e_kind int);"
        "INSERT INTO refs SELECT g, g, date '2024-06-01' + (g % 700), g % 4"
        " FROM generate_series(1, 300) g"
    )
    change = AddForeignKey(
        "refs", ("e_id", "e_ts", "e_kind"), "events", ref_columns=("id", "ts", "kind")
    )
    plan = plan_of(dsn, [change])
    assert [s.action for s in plan.steps] == ["add_foreign_key_not_valid", "validate_constraint"]

    def valid(conn: Conn) -> None:
        constraint_must_exist(conn, "refs", "refs_e_id_e_ts_e_kind_fkey", validated=True)

    lifecycle(
        dsn,
        events,
        [change],
        tables=("refs",),
        stop=lambda step: step.action == "add_foreign_key_not_valid",
        after_expand=lambda c: constraint_must_exist(
            c, "refs", "refs_e_id_e_ts_e_kind_fkey", validated=False
        ),
        after_finish=valid,
    )


def test_not_valid_foreign_key_on_partitioned_table_refused_before_17(
    dsn: str, events: Conn, pg_version: int
) -> None:
    change = AddForeignKey("events", ("user_id",), "users", validate=False)
    if pg_version >= 18:
        assert [s.action for s in plan_of(dsn, [change]).steps] == ["add_foreign_key_not_valid"]
        return
    before = vacuumed_snapshots(events, TREE)
    with Executor(dsn) as ex, pytest.raises(PreflightError) as err:
        ex.apply([change], "fk_not_valid")
    assert "cannot keep a NOT VALID foreign key on a partitioned table" in str(err.value)
    assert "validate=True" in str(err.value)
    assert vacuumed_snapshots(events, TREE) == before


def test_check_and_not_null_on_partitioned_table_lifecycle(
    dsn: str, events: Conn, writer: Writer, pg_version: int
) -> None:
    changes = [
        AddCheck("events", "kind >= 0", name="events_kind_check"),
        SetNotNull("events", "payload"),
    ]
    plan = plan_of(dsn, changes)
    assert all(not (s.blocks_application and s.scans) for s in plan.steps)
    assert ("set_not_null" in [s.action for s in plan.steps]) == (pg_version < 18)

    def finished(conn: Conn) -> None:
        rows = conn.execute(
            "SELECT conrelid::regclass::text, convalidated FROM pg_constraint"
            " WHERE conname = 'events_kind_check' ORDER BY 1"
        ).fetchall()
        assert {r[0] for r in rows} == set(TREE) and all(r[1] for r in rows)
        nn = conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attname = 'payload' AND NOT attnotnull"
            " AND attrelid::regclass::text LIKE 'events%'"
        ).fetchone()
        assert nn == (0,)

    lifecycle(
        dsn,
        events,
        changes,
        tables=TREE,
        stop=lambda step: step.action == "validate_constraint",
        after_expand=lambda c: None,
        after_finish=finished,
    )


def test_column_add_default_backfill_and_drop_on_partitioned_table(
    dsn: str, events: Conn, writer: Writer
) -> None:
    change = AddColumn("events", "score", "int", backfill="kind * 10")
    plan = plan_of(dsn, [change])
    fills = [s for s in plan.steps if s.action == "backfill"]
    # one batched backfill per leaf partition, then the check that no partition came or went
    assert [s.details["table"] for s in fills] == list(LEAVES)
    assert all(s.details["key"] == ["id", "ts", "kind"] for s in fills)
    assert [s.action for s in plan.steps if s.phase == "backfill"][-1] == "check_partitions"
    # ALTER TABLE on the parent locks every partition: the step names them all, so the
    # executor waits out a long transaction on any partition outside the lock queue
    add = plan.steps[0]
    assert add.action == "add_column" and set(add.tables) == {f"public.{t}" for t in TREE}

    def filled(conn: Conn) -> None:
        assert conn.execute(
            "SELECT count(*) FROM events WHERE score IS DISTINCT FROM kind * 10"
            " AND id < 100000"  # rows the writer adds after the migration are its own
        ).fetchone() == (0,)

    lifecycle(
        dsn,
        events,
        [change],
        tables=TREE,
        mid_backfill=True,
        settings=SMALL,
        after_expand=lambda c: None,
        after_finish=filled,
    )
    with Executor(dsn) as ex:
        status = ex.status("second")[0]
    per_partition = [s for s in status["steps"] if s.get("backfill")]
    assert len(per_partition) == len(LEAVES)
    for s in per_partition:
        assert s["backfill"]["rows_done"] == s["backfill"]["rows_total"] or s["backfill"][
            "progress"
        ] == pytest.approx(1.0)
    with Executor(dsn) as ex:
        assert ex.apply([DropColumn("events", "score")], "drop").state == "awaiting_contract"
        assert ex.contract("drop").state == "completed"
    assert events.execute(
        "SELECT count(*) FROM pg_attribute WHERE attname = 'score' AND NOT attisdropped"
    ).fetchone() == (0,)


def test_type_change_and_rename_on_partitioned_table_refused_with_the_way(
    dsn: str, events: Conn
) -> None:
    with Executor(dsn) as ex, pytest.raises(PreflightError) as err:
        ex.apply([AlterColumnType("events", "kind", "bigint")], "retype")
    assert "is partitioned" in str(err.value)
    assert "each partition" in str(err.value)


def test_backfill_refuses_and_stops_resumably_when_a_partition_is_attached(
    dsn: str, events: Conn
) -> None:
    change = Backfill("events", (("payload", "'b'"),))
    run_until_paused(dsn, [change], "fill", mid_backfill=True, settings=SMALL)
    # the partition tree changes while the migration runs
    events.execute(
        "CREATE TABLE events_2030 (LIKE events INCLUDING DEFAULTS);"
        "INSERT INTO events_2030 VALUES (5000000, '2030-02-01', 1, 1, 'new');"
        "ALTER TABLE events ATTACH PARTITION events_2030"
        " FOR VALUES FROM ('2030-01-01') TO ('2031-01-01')"
    )
    with Executor(dsn, SMALL) as ex, pytest.raises(Exception) as err:
        ex.resume("fill")
    text = str(err.value)
    assert "partitions of public.events changed since the migration was planned" in text, text
    assert "public.events_2030" in text
    with Executor(dsn) as ex:
        assert ex.status("fill")[0]["state"] == "failed"
        assert ex.abort("fill").state == "aborted"
    # planned again, the new partition is covered
    with Executor(dsn, SMALL) as ex:
        assert ex.apply([change], "fill_again").state == "completed"
    assert events.execute("SELECT count(*) FROM events WHERE payload <> 'b'").fetchone() == (0,)


def test_index_attach_fails_clearly_when_a_partition_was_detached(dsn: str, events: Conn) -> None:
    change = AddIndex("events", columns=("payload",))
    run_until_paused(dsn, [change], "idx", lambda s: s.action == "create_index")
    events.execute("ALTER TABLE events DETACH PARTITION events_default")
    with Executor(dsn) as ex, pytest.raises(Exception) as err:
        ex.resume("idx")
    text = str(err.value)
    assert "partitions of public.events changed since the migration was planned" in text, text
    assert "detached: public.events_default" in text
    with Executor(dsn) as ex:
        assert ex.abort("idx").state == "aborted"
    assert events.execute("SELECT to_regclass('events_payload_idx')").fetchone() == (None,)
    assert events.execute(
        "SELECT count(*) FROM pg_class WHERE relname LIKE '%payload%'"
    ).fetchone() == (0,)


def test_partition_attached_during_an_index_build_gets_its_index_from_postgresql(
    dsn: str, events: Conn
) -> None:
    change = AddIndex("events", columns=("payload",))
    run_until_paused(dsn, [change], "idx", lambda s: s.action == "create_index")
    # ATTACH builds the partition's index itself and attaches it to the ON ONLY index
    events.execute(
        "CREATE TABLE events_2030 (LIKE events INCLUDING DEFAULTS);"
        "ALTER TABLE events ATTACH PARTITION events_2030"
        " FOR VALUES FROM ('2030-01-01') TO ('2031-01-01')"
    )
    with Executor(dsn) as ex:
        assert ex.resume("idx").state == "completed"
    tree = attached_indexes(events, "events_payload_idx")
    assert {t for t, *_ in tree} == {*TREE, "events_2030"} and all(v for *_, v in tree), tree


# --- a plan for 100 partitions ------------------------------------------------------------


def make_many(conn: Conn, n: int) -> None:
    conn.execute(
        "CREATE TABLE metrics (id bigint NOT NULL, day int NOT NULL, v int, PRIMARY KEY (id, day))"
        " PARTITION BY RANGE (day)"
    )
    for i in range(n):
        conn.execute(
            f"CREATE TABLE metrics_p{i:03d} PARTITION OF metrics"
            f" FOR VALUES FROM ({i * 10}) TO ({(i + 1) * 10})"
        )


def test_plan_for_100_partitions_stays_readable_and_grows_linearly(dsn: str, conn: Conn) -> None:
    make_many(conn, 100)
    changes = [
        AddIndex("metrics", columns=("v",), name="metrics_v_idx"),
        AddColumn("metrics", "w", "int", backfill="v"),
    ]
    plan = plan_of(dsn, changes)
    # 1 ON ONLY + 100 builds + 100 attaches; 1 add column + 100 backfills + 1 check
    kinds = [s.action for s in plan.steps]
    assert kinds.count("create_index") == 100 and kinds.count("attach_index") == 100
    assert kinds.count("backfill") == 100 and kinds.count("check_partitions") == 1
    text = plan.render_text()
    lines = text.splitlines()
    # every partition step says which partition of how many it is, in order
    numbered = [
        ln for ln in lines if re.match(r"^\s+\d+\. partition \d+/100 of public\.metrics: ", ln)
    ]
    assert len(numbered) == 200, len(numbered)
    for kind in ("build index", "backfill public.metrics_p"):
        seq = [
            int(m.group(1))
            for ln in numbered
            if kind in ln and (m := re.search(r"partition (\d+)/100", ln))
        ]
        assert seq == list(range(1, 101)), (kind, seq[:5])
    # each step takes a fixed number of lines: the text grows linearly with the partitions
    with Executor(dsn) as ex:
        conn.execute("DROP TABLE metrics")
        make_many(conn, 50)
        half = ex.plan(changes)
    # three steps per partition (build, attach, backfill) plus a fixed few
    assert len(plan.steps) - 3 * 100 == len(half.steps) - 3 * 50 < 10
    assert len(lines) - len(half.render_text().splitlines()) == pytest.approx(
        len(half.render_text().splitlines()), rel=0.1
    )


# --- crashes ---------------------------------------------------------------------------


@pytest.fixture(autouse=False)
def no_leftover_processes() -> Iterator[None]:
    yield
    MigrationProcess.kill_leftovers()


def cli_apply(dsn: str, sql_text: str, name: str) -> MigrationProcess:
    return MigrationProcess(
        cli_command(
            "--log-format",
            "json",
            "apply",
            "--dsn",
            dsn,
            "--sql",
            sql_text,
            "--name",
            name,
            "--yes",
        )
    ).start()


def cli_resume(dsn: str, name: str) -> MigrationProcess:
    return MigrationProcess(
        cli_command("--log-format", "json", "resume", "--dsn", dsn, name)
    ).start()


@pytest.mark.slow
def test_sigkill_during_a_partition_index_build_then_resume_completes(
    dsn: str, events: Conn, no_leftover_processes: None
) -> None:
    events.execute(
        "CREATE FUNCTION slow_id(v int) RETURNS int IMMUTABLE LANGUAGE plpgsql"
        " AS 'BEGIN PERFORM pg_sleep(0.002); RETURN v; END'"
    )
    name = "events_slow"
    proc = cli_apply(dsn, "CREATE INDEX events_slow_idx ON events (slow_id(kind));", name)

    def leaf_build_running() -> str | None:
        # a leaf index in the catalog, not valid, its build running (not the first leaf:
        # earlier partitions are done)
        row = query_value(
            dsn,
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_class t ON t.oid = i.indrelid WHERE NOT i.indisvalid AND t.relkind = 'r'"
            " AND t.relname = 'events_2025_a' AND EXISTS (SELECT 1 FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = %s AND state = 'active'"
            " AND query LIKE 'CREATE INDEX CONCURRENTLY%%')",
            (EXECUTOR_APP,),
        )
        return str(row) if row else None

    leaf_index = proc.kill_when(leaf_build_running, timeout=90, what="a partition's index build")
    orphans = executor_backends(dsn)
    with psycopg.connect(dsn, autocommit=True) as c:
        for pid in orphans:
            c.execute("SELECT pg_terminate_backend(%s)", (pid,))
    wait_backends_gone(dsn, orphans)
    assert invalid_index(dsn, leaf_index)
    done = cli_resume(dsn, name).wait(timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    dropped = [e for e in done.events() if e.get("event") == "index_invalid_dropped"]
    assert [e.get("index") for e in dropped] == [leaf_index], done.event_names()
    tree = attached_indexes(events, "events_slow_idx")
    assert {t for t, *_ in tree} == set(TREE) and all(v for *_, v in tree), tree
    # exactly one index per table: nothing built twice, no leftover
    per_table = events.execute(
        "SELECT t.relname, count(*) FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid"
        " WHERE t.relname LIKE 'events%' AND NOT i.indisprimary GROUP BY 1"
    ).fetchall()
    assert sorted(per_table) == sorted((t, 1) for t in TREE)
    assert migration_state(dsn, name) == "completed"


@pytest.mark.slow
def test_sigkill_during_a_cross_partition_backfill_then_resume_applies_each_row_once(
    dsn: str, events: Conn, no_leftover_processes: None
) -> None:
    events.execute(
        "ALTER TABLE events ADD COLUMN n int NOT NULL DEFAULT 0;"
        "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS"
        " 'BEGIN PERFORM pg_sleep(0.001); RETURN NEW; END';"
        "CREATE TRIGGER slow BEFORE UPDATE ON events FOR EACH ROW EXECUTE FUNCTION slow_row()"
    )
    name = "bump"
    proc = cli_apply(dsn, "UPDATE events SET n = n + 1;", name)
    first_leaf = query_value(dsn, "SELECT count(*) FROM events_2024_h0")

    def mid_tree() -> bool:
        done = backfill_progress(dsn, name)
        if done is None or not first_leaf < done < ROWS:
            return False  # at least one partition finished, not all
        return bool(
            query_value(
                dsn,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND starts_with(application_name, %s) AND state = 'active'"
                ' AND starts_with(query, \'UPDATE "public"."events_\')',
                (EXECUTOR_APP,),
            )
        )

    proc.kill_when(mid_tree, timeout=90, what="a backfill batch in a later partition")
    wait_backends_gone(dsn, executor_backends(dsn))
    committed = backfill_progress(dsn, name)
    assert committed is not None and first_leaf <= committed < ROWS
    assert query_value(dsn, "SELECT count(*) FROM events WHERE n = 1") == committed
    events.execute("DROP TRIGGER slow ON events")
    done = cli_resume(dsn, name).wait(timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    assert events.execute(
        "SELECT count(*) FILTER (WHERE n = 1), count(*) FILTER (WHERE n <> 1) FROM events"
    ).fetchone() == (ROWS, 0)
    with Executor(dsn) as ex:
        status = ex.status(name)[0]
    fills = [s for s in status["steps"] if s.get("backfill")]
    assert [s["id"].split(".")[2] for s in fills] == list(LEAVES)
    per_leaf = {
        r[0]: r[1]
        for r in events.execute(
            "SELECT tableoid::regclass::text, count(*) FROM events GROUP BY 1"
        ).fetchall()
    }
    for s in fills:
        assert s["state"] == "done"
        assert s["backfill"]["rows_done"] == per_leaf[s["id"].split(".")[2]], s


def test_drop_index_of_a_partitioned_table(dsn: str, events: Conn, writer: Writer) -> None:
    events.execute("CREATE INDEX events_payload_idx ON events (payload)")
    leaf_index = events.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = 'events_default'::regclass AND NOT i.indisprimary"
    ).fetchone()
    assert leaf_index is not None
    # a partition's index attached to the parent's cannot be dropped alone
    with Executor(dsn) as ex, pytest.raises(PreflightError) as err:
        ex.apply([DropIndex(leaf_index[0])], "drop_leaf")
    assert "is part of the partitioned index events_payload_idx" in str(err.value)
    assert "DropIndex('events_payload_idx')" in str(err.value)
    # the parent's: no CONCURRENTLY (not allowed on a partitioned index), brief
    plan = plan_of(dsn, [DropIndex("events_payload_idx")])
    assert [s.action for s in plan.steps] == ["drop_partitioned_index"]
    assert "CONCURRENTLY" not in plan.steps[0].statements[0]
    with Executor(dsn) as ex:
        assert ex.apply([DropIndex("events_payload_idx")], "drop").state == "completed"
    assert events.execute(
        "SELECT count(*) FROM pg_class WHERE relname LIKE '%payload%'"
    ).fetchone() == (0,)


def test_rename_on_partitioned_table_refused_with_the_way(dsn: str, events: Conn) -> None:
    with Executor(dsn) as ex, pytest.raises(PreflightError) as err:
        ex.apply([RenameColumn("events", "payload", "body")], "rename")
    assert "is partitioned" in str(err.value) and "each partition" in str(err.value)


def test_reindex_of_a_partitioned_index_rebuilds_each_partition(
    dsn: str, events: Conn, writer: Writer
) -> None:
    events.execute("CREATE INDEX events_payload_idx ON events (payload)")
    before = {
        r[0]: r[1]
        for r in events.execute(
            "SELECT c.relname, c.relfilenode FROM pg_class c WHERE c.relname LIKE '%payload%'"
            " AND c.relkind = 'i'"
        ).fetchall()
    }
    assert len(before) == 5  # the leaves' indexes (partitioned ones have no storage)
    plan = plan_of(dsn, [Reindex("events_payload_idx")])
    assert [s.action for s in plan.steps] == ["reindex"] * 5
    assert sorted(s.tables[0] for s in plan.steps) == sorted(f"public.{leaf}" for leaf in LEAVES)
    with Executor(dsn) as ex:
        assert ex.apply([Reindex("events_payload_idx")], "reindex").state == "completed"
    after = dict(
        events.execute(
            "SELECT c.relname, c.relfilenode FROM pg_class c WHERE c.relname LIKE '%payload%'"
            " AND c.relkind = 'i'"
        ).fetchall()
    )
    assert after.keys() == before.keys()
    assert all(after[k] != before[k] for k in before), (before, after)
    tree = attached_indexes(events, "events_payload_idx")
    assert len(tree) == 8 and all(v for *_, v in tree)


def test_dropping_a_partitions_inherited_constraint_is_refused(dsn: str, events: Conn) -> None:
    events.execute("ALTER TABLE events ADD CONSTRAINT events_kind_check CHECK (kind >= 0)")
    with Executor(dsn) as ex, pytest.raises(PreflightError) as err:
        ex.apply([DropConstraint("events_2025_a", "events_kind_check")], "drop_inherited")
    assert "inherited from its parent table" in str(err.value)
    assert "on the partitioned parent" in str(err.value)
    with Executor(dsn) as ex:
        assert (
            ex.apply([DropConstraint("events", "events_kind_check")], "drop").state
            == "awaiting_contract"
        )
        assert ex.contract("drop").state == "completed"
    assert events.execute(
        "SELECT count(*) FROM pg_constraint WHERE conname = 'events_kind_check'"
    ).fetchone() == (0,)


def test_unique_on_parent_refused_at_run_time_when_a_partition_was_attached(
    dsn: str, logs: Conn
) -> None:
    """Adding the parent's constraint would build the new partition's index under the
    ALTER's lock: the step checks the partitions first and stops, resumably."""
    change = AddUnique("logs", ("id", "kind"))
    run_until_paused(
        dsn, [change], "uniq", lambda s: s.id.startswith("add_constraint_using_index.public.logs_d")
    )
    logs.execute(
        "CREATE TABLE logs_9 (LIKE logs); INSERT INTO logs_9 VALUES (1, 9, 'x');"
        "ALTER TABLE logs ATTACH PARTITION logs_9 FOR VALUES IN (9)"
    )
    with Executor(dsn) as ex, pytest.raises(Exception) as err:
        ex.resume("uniq")
    assert "partitions of public.logs changed since the migration was planned" in str(err.value)
    assert "attached: public.logs_9" in str(err.value)
    # nothing was built on the new partition, and the parent has no constraint
    assert logs.execute(
        "SELECT count(*) FROM pg_index WHERE indrelid = 'logs_9'::regclass"
    ).fetchone() == (0,)
    constraint_must_not_exist(logs, "logs", "logs_id_kind_key")
    with Executor(dsn) as ex:
        assert ex.abort("uniq").state == "aborted"
        assert ex.apply([change], "uniq_again").state == "completed"
    tree = attached_indexes(logs, "logs_id_kind_key")
    assert {t for t, *_ in tree} == {*LOGS_TREE, "logs_9"} and all(v for *_, v in tree)


def test_invalid_partitioned_index_left_by_an_earlier_run_is_refused_with_the_fix(
    dsn: str, events: Conn
) -> None:
    events.execute("CREATE INDEX events_payload_idx ON ONLY events (payload)")
    before = vacuumed_snapshots(events, LEAVES)
    with Executor(dsn) as ex, pytest.raises(PreflightError) as err:
        ex.apply([AddIndex("events", columns=("payload",), name="events_payload_idx")], "again")
    text = str(err.value)
    assert "invalid partitioned index left by an earlier run" in text, text
    assert 'DROP INDEX "public"."events_payload_idx"' in text
    assert vacuumed_snapshots(events, LEAVES) == before


NEW_TREE = (
    "CREATE TABLE readings (id bigint NOT NULL, ts date NOT NULL, v int)"
    " PARTITION BY RANGE (ts);"
    "CREATE TABLE readings_2024 PARTITION OF readings"
    " FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');"
)


def test_index_and_primary_key_on_a_partitioned_table_created_by_the_migration(
    dsn: str, conn: Conn
) -> None:
    changes = [
        RunSQL(NEW_TREE, creates=("readings", "readings_2024")),
        *parse_sql(
            "CREATE INDEX readings_v_idx ON readings (v);"
            "ALTER TABLE readings ADD PRIMARY KEY (id, ts);"
        ),
    ]
    plan = plan_of(dsn, changes)
    # no CONCURRENTLY (PostgreSQL refuses it on a partitioned table), no USING INDEX
    assert not any(
        "CONCURRENTLY" in q or "USING INDEX" in q for s in plan.steps for q in s.statements
    )
    with Executor(dsn) as ex:
        assert ex.apply(changes, "new_tree").state == "completed"
    tree = attached_indexes(conn, "readings_v_idx")
    assert {t for t, *_ in tree} == {"readings", "readings_2024"} and all(v for *_, v in tree)
    constraint_must_exist(conn, "readings", "readings_pkey")
    with Executor(dsn) as ex, pytest.raises(PreflightError) as err:
        ex.plan(
            [
                RunSQL(NEW_TREE.replace("readings", "others"), creates=("others",)),
                AddIndex("others", columns=("id",), unique=True),
            ]
        )
    assert "does not include the partition key column(s) ts" in str(err.value)
