"""Transaction poolers (PgBouncer in transaction mode, and the like) between us and the
server.

Detected by the one signal every pooler gives away: the backend key it hands a client at
connect time is its own, so the ``pg_backend_pid()`` a statement runs on differs from
the connection's ``backend_pid`` (on a direct connection they are always equal; a port
mapping or a TCP proxy in between changes neither).

Through a transaction pooler every transaction may run on another server connection, so
onlineschema keeps no session state there:

* timeouts are ``SET LOCAL`` (transactional steps, batches, probes); a statement that
  runs outside a transaction (``CREATE INDEX CONCURRENTLY``, ``VACUUM``) runs on its own,
  without a session ``SET`` that would stay behind on a pooled server connection for the
  application to inherit (its lock waits do not block the application, and the lock
  guard waits out the sessions in its way before it starts);
* no server-side prepared statements (``prepare_threshold=None`` on every connection);
* one executor per migration is held by a lease row with a heartbeat and an expiry
  (``onlineschema.lease``), not a session advisory lock;
* backfill chunk claims are rows with a claim time, not session advisory locks.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog

__all__ = ["Pooler", "detect", "is_pooled"]

log = structlog.stdlib.get_logger("onlineschema.pooler")


@dataclass(frozen=True)
class Pooler:
    """What was seen of the pooler."""

    #: the backend pid the pooler handed us at connect time, and the server's
    client_pid: int
    server_pid: int
    #: the port we connected to, and the server's own (None over a unix socket)
    port: int | None
    server_port: int | None

    def describe(self) -> str:
        where = (
            f", server port {self.server_port} behind port {self.port}"
            if self.port and self.server_port and self.port != self.server_port
            else ""
        )
        return (
            "connected through a transaction pooler (the backend key handed out at connect"
            f" time, pid {self.client_pid}, is not the server's, pid {self.server_pid}{where});"
            " no session state is relied on"
        )


_seen: weakref.WeakKeyDictionary[psycopg.Connection[Any], Pooler | None] = (
    weakref.WeakKeyDictionary()
)


def detect(conn: psycopg.Connection[Any]) -> Pooler | None:
    """The pooler between ``conn`` and the server, or None when ``conn`` is direct
    (asked once per connection)."""
    if conn in _seen:
        return _seen[conn]
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid(), inet_server_port()")
        row = cur.fetchone()
    assert row is not None
    server_pid, server_port = int(row[0]), row[1]
    try:
        port: int | None = int(conn.info.port)
    except (TypeError, ValueError):
        port = None
    client_pid = int(conn.info.backend_pid)
    found = (
        Pooler(client_pid, server_pid, port, None if server_port is None else int(server_port))
        if client_pid != server_pid
        else None
    )
    if found is not None:
        log.info("pooler_detected", detail=found.describe())
    _seen[conn] = found
    return found


def is_pooled(conn: psycopg.Connection[Any]) -> bool:
    return detect(conn) is not None
