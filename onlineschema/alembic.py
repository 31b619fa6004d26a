"""Alembic integration, at the path revision files and ``env.py`` import.

The code lives in :mod:`onlineschema.integrations.alembic`; this module re-exports it so
``import onlineschema.alembic`` (which also registers the ``online_migrate`` operation)
keeps working. ``configure()`` (from :mod:`onlineschema.integrations.alembic.native`)
replaces ``context.configure()`` in env.py so that ordinary revision files run online.
"""

from __future__ import annotations

from .integrations.alembic import (
    DEFAULT_OFFLINE_SERVER_VERSION,
    OnlineMigrateOp,
    Phase,
    abort,
    assumed_catalog,
    check_environment,
    contract,
    expand,
    hold_contract,
    render_offline,
    run,
)
from .integrations.alembic.native import configure, migration_name

__all__ = [
    "DEFAULT_OFFLINE_SERVER_VERSION",
    "OnlineMigrateOp",
    "Phase",
    "abort",
    "assumed_catalog",
    "check_environment",
    "configure",
    "contract",
    "expand",
    "hold_contract",
    "migration_name",
    "render_offline",
    "run",
]
