"""Fixtures giving every test a real PostgreSQL database.

The server comes from ``server_from_env()``: ``ONLINESCHEMA_TEST_DSN`` (an existing server,
superuser DSN) or else a throwaway server of major version ``ONLINESCHEMA_TEST_PG``
(default 18) started once per session.  Each test that asks for ``dsn`` gets a database
of its own, so tests can run in parallel.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from pg_server import server_from_env, version_matches
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from onlineschema.embedded.server import LocalServer

# A suite started in the background of a non-interactive shell (`bash .ci/run &`)
# inherits SIGINT ignored, and so would every CLI it starts, so the tests that stop one
# with Ctrl-C (SIGINT) would see it carry on. Python installs its Ctrl-C handler only
# where SIGINT is not ignored: give the children the default back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The CLI sizes tables it prints to a pipe by COLUMNS (200 when unset); the runner's own
# terminal (pytest-xdist workers get COLUMNS=80) must not wrap what tests read.
for _var in ("COLUMNS", "LINES"):
    os.environ.pop(_var, None)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden/plans/ from today's planner instead of comparing",
    )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[tuple[str, LocalServer | None]]:
    """``(superuser dsn, LocalServer or None when ONLINESCHEMA_TEST_DSN is used)``."""
    admin, server = server_from_env()
    try:
        yield admin, server
    finally:
        if server is not None:
            server.stop()


@pytest.fixture(scope="session")
def admin_dsn(pg_server: tuple[str, LocalServer | None]) -> str:
    """Superuser DSN to the server's ``postgres`` database."""
    return pg_server[0]


@pytest.fixture(scope="session")
def pg_version(admin_dsn: str) -> int:
    """Major version of the server under test, e.g. 18."""
    with psycopg.connect(admin_dsn) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return int(row[0]) // 10000


def _drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def dsn(admin_dsn: str) -> Iterator[str]:
    """Superuser DSN to a new, empty database (from template0), dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield make_conninfo(admin_dsn, dbname=name)
    finally:
        _drop_database(admin_dsn, name)


@pytest.fixture
def owner_dsn(admin_dsn: str, dsn: str) -> Iterator[str]:
    """DSN, in the same database as ``dsn``, of a new ordinary role (LOGIN, not superuser,
    no CREATEDB/CREATEROLE) that owns the ``public`` schema and has CREATE on the
    database: what an application's migration user typically is."""
    dbname = conninfo_to_dict(dsn)["dbname"]
    assert isinstance(dbname, str) and dbname.startswith("test_")
    role = f"app_owner_{dbname.removeprefix('test_')}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(
                sql.Identifier(role)
            )
        )
        conn.execute(
            sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(dbname), sql.Identifier(role)
            )
        )
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(role)))
        yield make_conninfo(dsn, user=role)
    finally:
        # The role owns objects in the test database: drop that database first (``dsn``'s
        # own teardown then finds nothing to drop), after which the role drops cleanly.
        _drop_database(admin_dsn, dbname)
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """Autocommit superuser connection to the test's database."""
    connection = psycopg.connect(dsn, autocommit=True)
    try:
        yield connection
    finally:
        connection.close()


# --- @pytest.mark.pg(">=16"): version-specific tests ------------------------------------


@pytest.fixture(autouse=True)
def _pg_version_marker(request: pytest.FixtureRequest) -> None:
    """Skip tests marked ``@pytest.mark.pg(spec)`` when the server version doesn't match:
    the only skip the suite allows.  Tests without the marker don't start a server."""
    markers = list(request.node.iter_markers("pg"))
    if not markers:
        return
    version: int = request.getfixturevalue("pg_version")
    for marker in markers:
        if len(marker.args) != 1 or not isinstance(marker.args[0], str) or marker.kwargs:
            raise pytest.UsageError(f"use @pytest.mark.pg('>=16'), not {marker!r}")
        try:
            matches = version_matches(marker.args[0], version)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        if not matches:
            pytest.skip(f"needs PostgreSQL {marker.args[0]}, server is {version}")
