"""Golden plans: every change kind (several cases each) and the multi-change scripts of
test_lifecycle / test_breaking, planned against catalog snapshots captured from real
servers (tests/golden/capture.py), compared with checked-in plans and refusal texts.

A refactor of the planner keeps these byte-identical; a deliberate change of a plan is
reviewed as a diff of tests/golden/plans/ (``pytest --update-golden``)."""

from __future__ import annotations

import pytest
from golden.cases import BY_ID, OFFLINE, OFFLINE_MAJORS
from golden.compare import check, check_offline

pytestmark = pytest.mark.server_independent


@pytest.mark.parametrize("case_id", sorted(BY_ID))
def test_golden_plan(case_id: str, request: pytest.FixtureRequest) -> None:
    check(case_id, request.config)


@pytest.mark.parametrize("major", OFFLINE_MAJORS)
@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_golden_offline_plan(name: str, major: int, request: pytest.FixtureRequest) -> None:
    """``alembic upgrade --sql``: the schema each recipe assumes, and the plan on it."""
    check_offline(name, major, request.config)
