"""Test knobs for the example project: onlineschema Settings read from environment
variables, so each test can make lock timeouts, retries and backfills short or slow, and
the server version that ``--sql`` plans for.

A real project passes its own ``Settings(...)`` (or nothing, for the defaults) to
``context.configure(onlineschema_settings=...)`` in env.py.
"""

from __future__ import annotations

import os

from onlineschema import BackfillSettings, RetryPolicy, Settings
from onlineschema.executor import parse_duration


def settings_from_env() -> Settings:
    env = os.environ.get
    return Settings(
        lock_timeout=parse_duration(env("OSC_LOCK_TIMEOUT", "200ms")),
        retry=RetryPolicy(
            max_attempts=int(env("OSC_MAX_ATTEMPTS", "40")),
            max_wait=parse_duration(env("OSC_MAX_WAIT", "60s")),
            backoff_initial=0.05,
            backoff_max=parse_duration(env("OSC_BACKOFF_MAX", "300ms")),
        ),
        backfill=BackfillSettings(
            batch_initial=int(env("OSC_BATCH", "1000")),
            batch_min=1,
            batch_max=int(env("OSC_BATCH", "1000")),
            sleep=parse_duration(env("OSC_BATCH_SLEEP", "0s")),
            duty_cycle=1.0,
            max_replica_lag=0.0,
            control_interval=0.2,
        ),
    )


def server_version_from_env() -> int | None:
    """The PostgreSQL version ``alembic upgrade --sql`` plans for (default: 18)."""
    value = os.environ.get("OSC_SERVER_VERSION")
    return int(value) if value else None
