"""The test infrastructure itself: throwaway servers, per-test databases and roles."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import psycopg
import pytest
from pg_server import version_matches
from psycopg.conninfo import conninfo_to_dict

from onlineschema.embedded.server import (
    LocalServer,
    ServerUnavailable,
    find_bindir,
    start_standby,
)

_USER_RELATIONS = """
    SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%'
"""


def test_fresh_database_is_empty(dsn: str, admin_dsn: str) -> None:
    dbname = conninfo_to_dict(dsn)["dbname"]
    assert isinstance(dbname, str) and dbname.startswith("test_")
    assert conninfo_to_dict(admin_dsn)["dbname"] != dbname
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT current_database(), current_setting('server_encoding'), rolsuper"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row == (dbname, "UTF8", True)
        assert conn.execute(_USER_RELATIONS).fetchone() == (0,)
        schemas = conn.execute(
            "SELECT array_agg(nspname ORDER BY nspname) FROM pg_namespace"
            " WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'"
        ).fetchone()
        assert schemas == (["public"],)


def test_each_test_gets_its_own_database(
    dsn: str, conn: psycopg.Connection[tuple[object, ...]]
) -> None:
    row = conn.execute("SELECT current_database()").fetchone()
    assert row == (conninfo_to_dict(dsn)["dbname"],)
    assert conn.autocommit


def test_owner_dsn_is_an_ordinary_role_owning_public(dsn: str, owner_dsn: str) -> None:
    assert conninfo_to_dict(owner_dsn)["dbname"] == conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(owner_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_user, rolsuper, rolcreatedb, rolcreaterole,"
            "       pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER'),"
            "       has_database_privilege(current_database(), 'CREATE'),"
            "       (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'public')"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row is not None
        user, superuser, createdb, createrole, read_all_stats, db_create, public_owner = row
        assert user.startswith("app_owner_")
        assert (superuser, createdb, createrole, read_all_stats) == (False, False, False, False)
        assert db_create is True
        assert public_owner == user
        conn.execute("CREATE TABLE public.t (id bigint PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t VALUES (1, 'x')")
        assert conn.execute(
            "SELECT tableowner FROM pg_tables WHERE tablename = 't'"
        ).fetchone() == (user,)
        conn.execute("CREATE SCHEMA app")  # CREATE on the database
    with psycopg.connect(dsn) as conn:  # the superuser sees the same database
        assert conn.execute("SELECT v FROM public.t").fetchone() == ("x",)


def test_server_version_is_the_one_asked_for(
    pg_version: int, pg_server: tuple[str, LocalServer | None]
) -> None:
    asked = os.environ.get("ONLINESCHEMA_TEST_PG")
    server = pg_server[1]
    if server is not None:
        assert pg_version == int(asked or "18") == server.version
    elif asked is not None:  # an external server: ONLINESCHEMA_TEST_PG says what it should be
        assert pg_version == int(asked)
    else:
        assert pg_version >= 15


def test_unknown_version_raises_with_install_hint() -> None:
    with pytest.raises(ServerUnavailable, match=r"PostgreSQL 9 binaries not found.*install"):
        find_bindir(9)
    with pytest.raises(ServerUnavailable):
        LocalServer(9)


def test_version_spec_matching() -> None:
    assert version_matches(">=16", 18)
    assert version_matches("==18", 18)
    assert not version_matches(">=16", 15)
    assert version_matches(">=15,<18", 16)
    assert not version_matches(">=15,<18", 18)
    assert version_matches(" != 16 ", 15)
    with pytest.raises(ValueError, match="bad"):
        version_matches("~=16", 16)


@pytest.mark.pg(">=0")
def test_pg_marker_that_matches_runs(pg_version: int) -> None:
    assert pg_version >= 15


@pytest.mark.slow
def test_standby_streams_from_primary(pg_server: tuple[str, LocalServer | None]) -> None:
    server = pg_server[1]
    version = server.version if server else int(os.environ.get("ONLINESCHEMA_TEST_PG", "18"))
    with LocalServer(version, settings={"max_connections": "150"}) as primary:
        assert primary.bindir == find_bindir(version)
        assert stat.S_IMODE(primary.datadir.stat().st_mode) == 0o700
        if os.geteuid() == 0:  # PostgreSQL refuses root: the data belongs to another user
            assert primary.datadir.stat().st_uid != 0
        # API: databases, and programs run as the server's OS user
        db_dsn = primary.create_database("app db", template="template0")
        with psycopg.connect(db_dsn) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("app db",)
        primary.drop_database("app db")
        out = primary.run_as_server_user(
            ["psql", "-X", "-A", "-t", "-d", primary.dsn(), "-c", "SHOW max_connections"]
        )
        assert out.stdout.strip() == "150"

        standby = start_standby(primary)
        try:
            assert standby.port != primary.port
            assert standby.version == primary.version
            with psycopg.connect(primary.dsn(), autocommit=True) as conn:
                conn.execute("CREATE TABLE streamed (id int)")
                conn.execute("INSERT INTO streamed VALUES (42)")
            with psycopg.connect(standby.dsn(), autocommit=True) as conn:
                assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
                assert conn.execute("SHOW max_connections").fetchone() == ("150",)
                deadline = time.monotonic() + 10
                while True:
                    exists = conn.execute("SELECT to_regclass('streamed') IS NOT NULL").fetchone()
                    if exists == (True,):
                        break
                    assert time.monotonic() < deadline, "the table never reached the standby"
                    time.sleep(0.05)
                while conn.execute("SELECT count(*) FROM streamed").fetchone() != (1,):
                    assert time.monotonic() < deadline, "the row never reached the standby"
                    time.sleep(0.05)
                assert conn.execute("SELECT id FROM streamed").fetchone() == (42,)
            with psycopg.connect(primary.dsn()) as conn:
                row = conn.execute("SELECT state FROM pg_stat_replication").fetchone()
                assert row == ("streaming",)
        finally:
            standby_base = standby.basedir
            standby.stop()
        assert not Path(standby_base).exists()
        primary_base = primary.basedir
    assert not primary_base.exists()
    assert not primary.running
