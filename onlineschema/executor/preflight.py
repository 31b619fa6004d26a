"""What the executor checks before it writes anything: the plan (the server's version,
the planner's refusals, its preflight probes) and backfill settings given to ``set``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from ..backfill import BackfillSettings
from ..catalog import read_catalog
from ..changes import Change
from ..errors import Refused
from ..planner import PlanResult, build_plan, catalog_request
from .session import Policy, run_probes

__all__ = ["check_backfill_settings", "plan_checked"]


def plan_checked(
    conn: psycopg.Connection[Any], policy: Policy, changes: Sequence[Change]
) -> PlanResult:
    """Read the catalog, plan, and check every expression compiles. Runs no DDL."""
    catalog = read_catalog(conn, **catalog_request(changes))
    if catalog.major < 15:
        raise Refused(
            f"PostgreSQL {catalog.major} is not supported",
            "onlineschema supports PostgreSQL 15 and newer",
        )
    result = build_plan(catalog, changes)
    run_probes(conn, policy, result.probes)
    return result


def check_backfill_settings(settings: dict[str, Any]) -> None:
    """Refuse unknown backfill settings and bad values (what ``set`` stores)."""
    bad = sorted(set(settings) - set(BackfillSettings.__dataclass_fields__))
    if bad:
        raise Refused(
            f"unknown setting(s): {', '.join(bad)}",
            "known: " + ", ".join(sorted(BackfillSettings.__dataclass_fields__)),
        )
    try:
        BackfillSettings().with_overrides(settings)
    except ValueError as exc:
        raise Refused(f"bad setting value: {exc}") from None
