"""Plan a golden case against its captured catalog and compare with the checked-in
outcome: the plan (``Plan.to_dict()``) and its probes, or the refusal text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from onlineschema.catalog import Catalog
from onlineschema.errors import PreflightError, Refused
from onlineschema.integrations.alembic import assumed_catalog
from onlineschema.planner import build_plan, catalog_request

from .cases import BY_ID, OFFLINE

HERE = Path(__file__).parent


def captured(case_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((HERE / "catalogs" / f"{case_id}.json").read_text())
    return data


def outcome(case_id: str) -> dict[str, Any]:
    """What the planner makes of the case today, as JSON-ready data."""
    case, _ = BY_ID[case_id]
    catalog = Catalog.from_dict(captured(case_id)["catalog"])
    try:
        result = build_plan(catalog, case.changes)
    except PreflightError as exc:
        return {"refused": str(exc).splitlines()}
    return {
        "plan": json.loads(result.plan.to_json()),
        "probes": [[p.sql, p.problem, p.fix] for p in result.probes],
    }


def check(case_id: str, config: pytest.Config) -> None:
    """Compare with ``plans/<case_id>.json`` (rewritten under ``--update-golden``)."""
    case, _ = BY_ID[case_id]
    # the planner still asks for the catalog the snapshot was read with
    assert json.loads(json.dumps(catalog_request(case.changes))) == captured(case_id)["request"]
    got = json.dumps(outcome(case_id), indent=1, sort_keys=True) + "\n"
    path = HERE / "plans" / f"{case_id}.json"
    if config.getoption("--update-golden"):
        path.write_text(got)
        return
    assert path.exists(), f"no golden file {path.name}: run pytest with --update-golden"
    assert got == path.read_text(), f"plan of {case_id} changed (see {path})"


def offline_outcome(name: str, major: int) -> dict[str, Any]:
    """The assumed schema and the offline plan of an ``OFFLINE`` case."""
    changes = OFFLINE[name]
    try:
        catalog, assumptions = assumed_catalog(changes, major * 10000)
    except Refused as exc:
        return {"refused": str(exc).splitlines()}
    out: dict[str, Any] = {"assumptions": assumptions, "catalog": catalog.to_dict()}
    try:
        out["plan"] = json.loads(build_plan(catalog, changes).plan.to_json())
    except PreflightError as exc:
        out["plan_refused"] = str(exc).splitlines()
    return out


def check_offline(name: str, major: int, config: pytest.Config) -> None:
    got = json.dumps(offline_outcome(name, major), indent=1, sort_keys=True) + "\n"
    path = HERE / "plans" / f"{name}.pg{major}.json"
    if config.getoption("--update-golden"):
        path.write_text(got)
        return
    assert path.exists(), f"no golden file {path.name}: run pytest with --update-golden"
    assert got == path.read_text(), f"offline plan of {name} changed (see {path})"
