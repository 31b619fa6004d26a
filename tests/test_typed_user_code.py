"""User code calling the Alembic integration type-checks under ``mypy --strict``.

tests/typed_example.py uses every typed entry point (run, expand, contract, abort,
op.invoke(OnlineMigrateOp(...))) and must pass. A second file uses the dynamic
``op.online_migrate(...)`` attribute, which Alembic's plugin API adds at run time: mypy
must reject it, which shows the check is live and why the typed entry points exist.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

# parses, type-checks or renders text only: run once (PostgreSQL 18), see .ci/run
pytestmark = pytest.mark.server_independent

TESTS = Path(__file__).resolve().parent

DYNAMIC = """\
from alembic import op

from onlineschema import AddColumn
import onlineschema.alembic  # noqa: F401  (registers op.online_migrate)


def upgrade() -> None:
    op.online_migrate("orders_note", [AddColumn("orders", "note", "text")])
"""


def test_typed_entry_points_pass_mypy_strict(tmp_path: Path) -> None:
    dynamic = tmp_path / "dynamic_example.py"
    dynamic.write_text(DYNAMIC)
    example = TESTS / "typed_example.py"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            # only the user code is judged here; the package has its own mypy run
            "--follow-imports=silent",
            "--no-error-summary",
            str(example),
            str(dynamic),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=TESTS.parent,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    in_example = [e for e in errors if "typed_example.py" in e]
    in_dynamic = [e for e in errors if "dynamic_example.py" in e]
    assert in_example == [], proc.stdout + proc.stderr
    assert len(in_dynamic) == 1, proc.stdout + proc.stderr
    assert re.search(r'Module has no attribute "online_migrate"', in_dynamic[0])
