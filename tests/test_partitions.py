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

import time
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
import pytest
from harness import Conn, lifecycle, run_until_paused, vacuumed_snapshots
from helpers import constraint_must_exist, constraint_must_not_exist, index_must_exist
from scenario_tools import Writer

from onlineschema import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddIndex,
    AddUnique,
    AlterColumnType,
    Backfill,
    DropColumn,
    Executor,
    PreflightError,
    Refused,
    SetNotNull,
)
from onlineschema.catalog import read_catalog

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
LEAVES = ("events_2024_h0", "events_2024_h1", "events_2025_a", "events_2025_other", "events_default")

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
    w = Writer(
        dsn,
        "INSERT INTO events (id, ts, kind, user_id, payload)"
        " VALUES (100000 + %(i)s, date '2024-06-01' + (%(i)s %% 700), %(i)s %% 4, %(i)s %% 50, 'w')",
        "UPDATE events SET payload = 'u' || %(i)s WHERE id = 1 + %(i)s %% 1000",
        statement_timeout="30s",
    ).start_writing()
    started = time.monotonic()
    yield w
    w.stop()
    # lock_timeout (2s default) plus a little: no statement of the application waited
    # for a lock longer than that, the whole way through
    assert w.statements_in(started, time.monotonic()) > 0
    assert w.max_latency(started, time.monotonic()) < 4.0


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
    assert all("ON ONLY" in s.statements[0] and "CONCURRENTLY" not in s.statements[0] for s in on_only)
    assert on_only[0].statements[0].startswith(f'CREATE {"UNIQUE " if "key" in name else ""}INDEX "{name}"')
    builds = [s for s in plan.steps if s.action == "create_index"]
    assert [s.tables[0] for s in builds] == [f"public.{leaf}" for leaf in LEAVES]
    assert all("CONCURRENTLY" in s.statements[0] for s in builds)
    assert all(not s.blocks_application or not s.scans for s in plan.steps)


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (AddIndex("events", columns=("payload",), name="events_payload_idx"), "events_payload_idx"),
        (
            AddIndex("events", columns=("user_id", "id", "ts", "kind"), unique=True, name="events_u_key"),
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

    lifecycle(
        dsn,
        events,
        [change],
        tables=TREE,
        # stop half-way: two of the five leaf builds done, nothing attached yet
        stop=lambda step: step.id == f"create_index.public.{'events_2024_h1'}_"
        or step.action == "create_index" and step.tables == ("public.events_2024_h1",),
        after_expand=lambda conn: None,
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
