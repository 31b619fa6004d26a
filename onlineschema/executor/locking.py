"""One executor per migration: the session advisory lock on a direct connection, a lease
row through a transaction pooler (onlineschema.lease); each checks the other."""

from __future__ import annotations

from typing import Any

import psycopg

from ..errors import AlreadyRunning
from ..lease import Lease, new_owner
from ..pooler import is_pooled
from ..state import StateStore
from .lifecycle import lock_migration
from .settings import Settings

__all__ = ["MigrationLock"]


def _leased(name: str, held: tuple[str, float], ttl: float) -> AlreadyRunning:
    owner, left = held
    return AlreadyRunning(
        f"migration {name!r} is being run by another process (it holds the migration's"
        f" lease: {owner}, renewed every {ttl / 3:g}s, {max(left, 0):.0f}s left)",
        "wait for it to finish, or `onlineschema pause` it; see `onlineschema status`."
        f" If that process died, its lease expires by itself within {ttl:g}s",
    )


class MigrationLock:
    """What an executor holds while it runs a migration (one executor per migration)."""

    def __init__(self, settings: Settings, conninfo: str) -> None:
        self.settings = settings
        self.conninfo = conninfo
        #: through a transaction pooler: the lease this executor holds, and its name
        self.lease: Lease | None = None
        self.owner = new_owner()

    def take(self, conn: psycopg.Connection[Any], store: StateStore, name: str) -> None:
        """Hold migration ``name`` (one executor per migration): the session advisory
        lock on a direct connection, a lease row through a transaction pooler; each
        checks the other."""
        lease = Lease(
            self.settings.state_schema,
            name,
            ttl=self.settings.lease_ttl,
            conninfo=self.conninfo,
            owner=self.owner,
        )
        if not is_pooled(conn):
            lock_migration(store, name)
            held = lease.holder(conn)
            if held is not None and held[0] != self.owner:
                store.unlock(name)
                raise _leased(name, held, lease.ttl)
            return
        store.ensure()
        if not lease.take(conn):
            held = lease.holder(conn)
            raise _leased(name, held or ("?", lease.ttl), lease.ttl)
        holder = store.lock_holder(name)
        if holder is not None:
            lease.give_up(conn)
            raise AlreadyRunning(
                f"migration {name!r} is being run by another process (database session pid"
                f" {holder['pid']}, application {holder.get('application_name') or '?'})",
                "wait for it to finish, or `onlineschema pause` it; see `onlineschema status`",
            )
        lease.start()
        self.lease = lease

    def give_up(self, conn: psycopg.Connection[Any], store: StateStore, name: str) -> None:
        """Let go of migration ``name``: its lease, or else its advisory lock."""
        if self.lease is not None and self.lease.name == name:
            self.lease.give_up(conn)
            self.lease = None
            return
        store.unlock(name)
