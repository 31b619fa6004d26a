"""The executor's side of the one execution policy (``onlineschema.session``, which the
backfill engine uses too): the policy's names, and the preflight probes it runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from ..errors import PreflightError, Refused
from ..planner import Probe
from ..session import (
    Policy,
    Timeouts,
    TimeoutSettings,
    local_settings,
    ms,
    probe_settings,
    session_settings,
    timeouts_for,
)

__all__ = [
    "Policy",
    "TimeoutSettings",
    "Timeouts",
    "local_settings",
    "ms",
    "probe_settings",
    "run_probes",
    "session_settings",
    "timeouts_for",
]


def run_probes(conn: psycopg.Connection[Any], policy: Policy, probes: Sequence[Probe]) -> None:
    """Run the planner's preflight probes, each in a read-only transaction under the lock
    timeout; refuse (PreflightError) with every probe that failed. A probe that could
    not get its lock in time is skipped: the step itself will find out."""
    problems: list[Refused] = []
    for probe in probes:
        try:
            with conn.transaction(), conn.cursor() as cur:
                probe_settings(cur, policy)
                cur.execute(probe.sql)
        except psycopg.errors.LockNotAvailable:
            continue
        except psycopg.Error as exc:
            detail = (exc.diag.message_primary or str(exc)).strip()
            problems.append(Refused(f"{probe.problem}: {detail}", probe.fix))
    if problems:
        raise PreflightError(problems)
