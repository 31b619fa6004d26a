"""The planner: a pure function of (catalog snapshot, server version, changes) -> Plan.

Each change is checked against an in-memory model of the schema (the catalog as read,
updated by the changes before it, as Django's ``state_forwards`` does), so conflicting
or impossible requests are refused before anything runs, and each change is turned
into steps following ``shared/reference/postgres-locks.md``:

* brief ``ACCESS EXCLUSIVE`` steps never scan: scans run under ``SHARE UPDATE EXCLUSIVE``
  (``VALIDATE``, ``CREATE INDEX CONCURRENTLY``) or in batches (backfill);
* NOT NULL goes through a validated constraint (``CHECK`` on 15/16, ``NOT NULL ...
  NOT VALID`` on 18) so ``SET NOT NULL`` never scans under its lock;
* indexes on columns being filled are built after the backfill, so its updates stay HOT.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .. import recipes
from ..catalog import Catalog
from ..changes import Change
from ..errors import PreflightError
from ..plan import Plan
from ..recipes import beside_copy
from .context import PlanContext, PlanResult, Probe
from .naming import helper_name, name_prefix
from .normalize import normalize

__all__ = [
    "PlanContext",
    "PlanResult",
    "Probe",
    "build_plan",
    "catalog_request",
    "helper_name",
    "normalize",
]


def catalog_request(changes: Iterable[Change]) -> dict[str, Any]:
    """What ``read_catalog`` must read for these changes (each recipe's
    ``catalog_needs``)."""
    needs = recipes.CatalogNeeds()
    for ch in changes:
        recipe = recipes.find(type(ch)) or recipes.Recipe()
        needs.update(recipe.catalog_needs(ch))
    return {
        "tables": sorted(needs.tables, key=str),
        "index_names": sorted(needs.index_names, key=str),
        "functions": sorted(needs.functions),
        "types": sorted(needs.types),
        "probe_rows": sorted(needs.probe_rows, key=str),
        "name_prefixes": sorted(
            needs.name_prefixes | {(s, name_prefix(n)) for s, n in needs.tables}, key=str
        ),
    }


def build_plan(catalog: Catalog, changes: Sequence[Change]) -> PlanResult:
    """Plan ``changes`` against ``catalog``. Raises ``PreflightError`` listing every
    problem found; nothing here touches the database."""
    ctx = PlanContext(catalog)
    if not changes:
        # a migration with nothing to do on PostgreSQL (only comments, SET, BEGIN/COMMIT):
        # an empty plan, recorded as done like any other
        ctx.notes.append("nothing to do: the migration has no changes")
    for ch in normalize(changes):
        recipe = recipes.find(type(ch))
        if recipe is None:
            ctx.refuse(
                f"unsupported change {type(ch).__name__}",
                "use one of " + ", ".join(sorted(k.__name__ for k in recipes.registered())),
            )
            continue
        # a change on a table that an earlier change froze is refused before its recipe
        touched = recipe.touched(ctx, ch)
        joins = recipe.joins_column_copy(ch)
        copied: set[tuple[str, str]] = set()
        if not joins:
            # beside a column copy of its table: checked against the copies, and
            # possibly moved onto the new columns
            moved = beside_copy.against_copies(ctx, ch, touched)
            if moved is None:
                continue
            ch = moved
            if beside_copy.guarded(ch):
                copied = beside_copy.copied_tables(ctx)
        if ctx.frozen_by(ch, touched, allow_copy=joins, copied=copied):
            continue
        recipe.plan(ctx, ch)
    for finalize in ctx.finalizers:
        finalize(ctx)
    if ctx.problems:
        raise PreflightError(ctx.problems)
    ordered = [s for *_, s in sorted(ctx.steps, key=lambda x: x[:3])]
    plan = Plan(
        steps=tuple(ordered),
        server_version=catalog.server_version,
        changes=tuple(c.to_dict() for c in changes),
        notes=tuple(ctx.notes),
    )
    return PlanResult(plan, tuple(ctx.probes))
