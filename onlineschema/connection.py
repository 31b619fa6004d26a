"""One autocommit psycopg connection from whatever the caller has: a DSN, a psycopg
connection, or a SQLAlchemy Engine/Connection (Alembic runs on the latter)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import pq

from .errors import ConnectionFailed, Refused

ConnectLike = Any  # str | psycopg.Connection | sqlalchemy Engine | sqlalchemy Connection

APPLICATION_NAME = "onlineschema"
#: the backfill's other sessions: its workers, its signal readings, its VACUUM
WORKER_APPLICATION_NAME = "onlineschema-backfill"
#: the sessions of any onlineschema process, which are never the application's
OUR_APPLICATION_NAMES = (APPLICATION_NAME, WORKER_APPLICATION_NAME)


def open_dsn(dsn: str, *, application_name: str = APPLICATION_NAME) -> psycopg.Connection[Any]:
    try:
        # no server-side prepared statements: through a transaction pooler each
        # statement may run on another server connection (onlineschema.pooler)
        return psycopg.connect(
            dsn,
            autocommit=True,
            application_name=application_name,
            connect_timeout=10,
            prepare_threshold=None,
        )
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConnectionFailed(
            f"could not connect to the database: {first}\n"
            "  fix: check --dsn (or ONLINESCHEMA_DSN / DATABASE_URL), that the server is"
            " running and that the role may log in"
        ) from None
    except psycopg.ProgrammingError as exc:
        raise ConnectionFailed(
            f"invalid connection string: {str(exc).strip()}\n"
            "  fix: give a URL (postgresql://user@host:5432/dbname) or key=value pairs"
            " (host=... dbname=...) in --dsn, ONLINESCHEMA_DSN or DATABASE_URL"
        ) from None


@contextlib.contextmanager
def connection(target: ConnectLike) -> Iterator[psycopg.Connection[Any]]:
    """Yield an autocommit psycopg connection for ``target``; restore what we changed."""
    if isinstance(target, str):
        conn = open_dsn(target)
        try:
            yield conn
        finally:
            conn.close()
        return
    if isinstance(target, psycopg.Connection):
        with _borrowed(target) as conn:
            yield conn
        return
    try:
        from sqlalchemy.engine import Connection as SAConnection
        from sqlalchemy.engine import Engine
    except ImportError:  # pragma: no cover - sqlalchemy is a dependency
        Engine = SAConnection = None  # type: ignore[assignment,misc]
    if Engine is not None and isinstance(target, Engine):
        if target.dialect.driver == "psycopg":
            raw = target.raw_connection()
            try:
                driver = raw.driver_connection
                assert isinstance(driver, psycopg.Connection)
                with _borrowed(driver) as conn:
                    yield conn
            finally:
                raw.close()
        else:
            url = target.url.set(drivername="postgresql")
            conn = open_dsn(url.render_as_string(hide_password=False))
            try:
                yield conn
            finally:
                conn.close()
        return
    if SAConnection is not None and isinstance(target, SAConnection):
        driver = target.connection.driver_connection
        if not isinstance(driver, psycopg.Connection):
            raise Refused(
                f"the SQLAlchemy connection uses the {target.dialect.driver} driver",
                "use the psycopg (3) driver: postgresql+psycopg://...",
            )
        with _borrowed(driver) as conn:
            yield conn
        return
    raise TypeError(
        f"expected a DSN, a psycopg Connection or a SQLAlchemy Engine/Connection, got {type(target)!r}"
    )


@contextlib.contextmanager
def _borrowed(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise Refused(
            "the connection is inside a transaction; onlineschema must commit each step on"
            " its own and run CREATE INDEX CONCURRENTLY outside any transaction",
            "commit first, or in Alembic run inside op.get_context().autocommit_block()",
        )
    was, prepare = conn.autocommit, conn.prepare_threshold
    conn.autocommit = True
    conn.prepare_threshold = None  # see open_dsn
    try:
        yield conn
    finally:
        conn.prepare_threshold = prepare
        if conn.info.transaction_status == pq.TransactionStatus.IDLE and not conn.closed:
            conn.autocommit = was
