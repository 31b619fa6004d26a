"""One executor per migration through a transaction pooler: a lease row.

A session advisory lock means nothing behind a transaction pooler (each transaction may
run on another server connection, and the lock would stay with a pooled server
connection). There the executor holds ``{schema}.leases`` row of the migration instead:
taken in one statement when it is free, expired or already ours, renewed by a heartbeat
thread (on a connection of its own) every third of its time to live, given up at the end.
A process that dies stops renewing it; after ``ttl`` seconds another may take it.

Direct connections keep the advisory lock (it ends with the session that holds it);
each kind also checks the other, so a direct and a pooled ``apply`` of one migration
still mean exactly one runs.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from typing import Any

import psycopg
import structlog
from psycopg import sql

from .reconnect import connect

__all__ = ["Lease"]

log = structlog.stdlib.get_logger("onlineschema.lease")


def new_owner() -> str:
    """host:pid:random, the name a lease's holder is recorded under."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """The lease of migration ``name`` in state ``schema``, for this process."""

    def __init__(
        self, schema: str, name: str, *, ttl: float, conninfo: str, owner: str | None = None
    ) -> None:
        self.schema = schema
        self.name = name
        self.ttl = ttl
        self.conninfo = conninfo
        #: who holds it: one executor (the same after it reconnected)
        self.owner = owner or new_owner()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def table(self) -> sql.Composable:
        return sql.Identifier(self.schema, "leases")

    def take(self, conn: psycopg.Connection[Any]) -> bool:
        """Take the lease if it is free, expired or ours (one statement)."""
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "INSERT INTO {t} AS l (migration, owner, expires_at)"
                    " VALUES (%(m)s, %(o)s, now() + make_interval(secs => %(ttl)s))"
                    " ON CONFLICT (migration) DO UPDATE SET owner = excluded.owner,"
                    " expires_at = excluded.expires_at, taken_at = now(), renewed_at = now()"
                    " WHERE l.owner = excluded.owner OR l.expires_at < now()"
                    " RETURNING owner"
                ).format(t=self.table),
                {"m": self.name, "o": self.owner, "ttl": self.ttl},
            )
            return cur.fetchone() is not None

    def holder(self, conn: psycopg.Connection[Any]) -> tuple[str, float] | None:
        """(owner, seconds until it expires) of an unexpired lease held by someone."""
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT owner, extract(epoch FROM expires_at - now())::float8 FROM {t}"
                    " WHERE migration = %s AND expires_at >= now()"
                ).format(t=self.table),
                (self.name,),
            )
            row = cur.fetchone()
        return None if row is None else (str(row[0]), float(row[1]))

    def start(self) -> None:
        """Renew the lease every ttl/3 s from a thread with a connection of its own."""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"onlineschema-lease-{self.name}", daemon=True
        )
        self._thread.start()

    def _beat(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        try:
            while not self._stop.wait(self.ttl / 3):
                try:
                    if conn is None or conn.closed or conn.broken:
                        conn = connect(self.conninfo)
                    with conn.cursor() as cur:
                        cur.execute(
                            sql.SQL(
                                "UPDATE {t} SET expires_at = now() + make_interval(secs => %s),"
                                " renewed_at = now() WHERE migration = %s AND owner = %s"
                            ).format(t=self.table),
                            (self.ttl, self.name, self.owner),
                        )
                        if cur.rowcount == 0:
                            log.error("lease_lost", migration=self.name, owner=self.owner)
                            self.lost.set()
                            return
                except psycopg.Error as exc:  # the executor reconnects on its own
                    log.warning("lease_renewal_failed", migration=self.name, error=str(exc))
        finally:
            if conn is not None:
                conn.close()

    def give_up(self, conn: psycopg.Connection[Any]) -> None:
        """Stop renewing and delete the lease (if the connection still works)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        if conn.closed or conn.broken:
            return
        try:
            with conn.cursor() as cur:
                cur.execute(
                    sql.SQL("DELETE FROM {t} WHERE migration = %s AND owner = %s").format(
                        t=self.table
                    ),
                    (self.name, self.owner),
                )
        except psycopg.Error as exc:
            log.warning("lease_release_failed", migration=self.name, error=str(exc))
