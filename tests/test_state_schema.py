"""The state schema's version: created at the current version, upgraded in place from an
older release's schema, and a newer release's schema refused before anything changes."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import psycopg
import pytest
from helpers import make_orders, migration_state
from scenario_tools import cli_command

from onlineschema import AddColumn, Executor, Refused
from onlineschema.state import SCHEMA_VERSION, StateStore

Conn = psycopg.Connection[tuple[Any, ...]]


def version_row(conn: Conn) -> tuple[Any, ...] | None:
    return conn.execute("SELECT version, release FROM onlineschema.schema_version").fetchone()


def test_new_state_schema_is_the_current_version(dsn: str, conn: Conn) -> None:
    make_orders(conn, rows=20)
    with Executor(dsn) as ex:
        assert ex.store.schema_version() is None
        ex.apply([AddColumn("orders", "status", "text")], "m")
        assert ex.store.schema_version() == SCHEMA_VERSION
    row = version_row(conn)
    assert row is not None and row[0] == SCHEMA_VERSION and row[1].startswith("onlineschema ")
    with Executor(dsn) as ex:  # ensure again: nothing to upgrade, same row
        ex.store.ensure()
    assert version_row(conn) == row


def test_old_schema_is_upgraded_in_place(dsn: str, conn: Conn) -> None:
    """A schema without a version table (release 0.1.0) keeps its rows and gets one."""
    make_orders(conn, rows=20)
    with Executor(dsn) as ex:
        ex.apply([AddColumn("orders", "status", "text")], "old")
    conn.execute("DROP TABLE onlineschema.schema_version")  # as 0.1.0 left it
    with Executor(dsn) as ex:
        assert ex.store.schema_version() == 1
        ex.apply([AddColumn("orders", "note2", "text")], "new")
        assert ex.store.schema_version() == SCHEMA_VERSION
        assert [m["name"] for m in ex.status()] == ["old", "new"]


@pytest.fixture
def newer(dsn: str, conn: Conn) -> str:
    """A database whose state schema a newer release wrote, with a paused migration."""
    make_orders(conn, rows=20)
    with Executor(dsn) as ex:
        ex.apply([AddColumn("orders", "status", "text")], "m")
    conn.execute("UPDATE onlineschema.migrations SET state = 'paused'")
    conn.execute("UPDATE onlineschema.schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    return dsn


def test_newer_schema_is_refused_by_the_library(newer: str, conn: Conn) -> None:
    with pytest.raises(Refused) as refused:
        Executor(newer)
    text = str(refused.value)
    assert f"state schema version {SCHEMA_VERSION + 1}" in text
    assert f"knows versions up to {SCHEMA_VERSION}" in text
    assert "pip install -U onlineschema" in text
    # ensure() (every command that writes) refuses too, and changes nothing
    with psycopg.connect(newer, autocommit=True) as c, pytest.raises(Refused, match="newer"):
        StateStore(c).ensure()
    assert migration_state(conn, "m") == "paused"
    row = version_row(conn)
    assert row is not None and row[0] == SCHEMA_VERSION + 1


@pytest.mark.parametrize("args", [["status"], ["resume", "m"], ["abort", "m", "--yes"]])
def test_newer_schema_is_refused_by_the_cli_with_exit_2(
    newer: str, conn: Conn, args: list[str]
) -> None:
    proc = subprocess.run(
        cli_command(*args),
        env={**os.environ, "ONLINESCHEMA_DSN": newer},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "written by a newer onlineschema" in proc.stderr
    assert "fix:" in proc.stderr
    assert migration_state(conn, "m") == "paused"
