"""Backfill settings given when a migration starts (issue 13): ``apply``/``resume``
``--set KEY=VALUE``, ``backfill --setting KEY=VALUE``, a TOML settings file
(``--settings-file`` or ``ONLINESCHEMA_SETTINGS_FILE``) and ``ONLINESCHEMA_SET``; later
sources win (file < environment < command line); bad ones are refused before anything
runs. Each test runs ``python -m onlineschema`` against a real PostgreSQL and checks what
the backfill did (its batch count under ``batch_max``), not only what it logged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest

from onlineschema import Backfill, BackfillSettings, Executor, Paused, Refused, Settings
from onlineschema.cli.settings import start_settings

Conn = psycopg.Connection[Any]
ROWS = 2000
UPDATE = "UPDATE r SET n = n + 1"


def run(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("ONLINESCHEMA_DSN", "DATABASE_URL", "ONLINESCHEMA_SET")
        and k != "ONLINESCHEMA_SETTINGS_FILE"
    }
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "onlineschema", "--log-format", "json", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        check=False,
    )


def expect(proc: subprocess.CompletedProcess[str], code: int) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    return proc


def one(conn: Conn, query: str, params: Any = ()) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def table(conn: Conn) -> None:
    conn.execute("CREATE TABLE r (id bigint PRIMARY KEY, n int NOT NULL DEFAULT 0)")
    conn.execute("INSERT INTO r (id) SELECT g FROM generate_series(1, %s) g", (ROWS,))


def batches(conn: Conn, name: str) -> int:
    return int(
        one(conn, "SELECT sum(batches) FROM onlineschema.chunks WHERE migration = %s", (name,))
    )


def running_settings(stderr: str) -> dict[str, Any]:
    """The settings the backfill_running event says the backfill runs with."""
    for line in stderr.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") in ("backfill_running", "backfill_resumed"):
                return dict(event["settings"])
    raise AssertionError(f"no backfill_running event in {stderr}")


def test_apply_set_at_start(dsn: str, conn: Conn, table: None) -> None:
    """``apply --set batch_max=12 --set duty_cycle=80%``: the backfill runs in batches of
    at most 12 rows (160+ batches for 2000 rows; the defaults take one per chunk, 16)."""
    proc = expect(
        run(
            "apply", "--dsn", dsn, "--sql", UPDATE, "--name", "with_set", "--yes",
            "--set", "batch_max=12", "--set", "duty_cycle=80%", "--set", "batch_target=50ms",
        ),
        0,
    )  # fmt: skip
    given = running_settings(proc.stderr)
    assert (given["batch_max"], given["duty_cycle"], given["batch_target"]) == (12, 0.8, 0.05)
    assert batches(conn, "with_set") >= ROWS // 12
    expect(run("apply", "--dsn", dsn, "--sql", UPDATE, "--name", "without", "--yes"), 0)
    assert batches(conn, "without") < ROWS // 12
    assert one(conn, "SELECT min(n) = 2 AND max(n) = 2 FROM r")


def test_max_wal_rate_at_start(dsn: str, conn: Conn, table: None) -> None:
    """``apply --set max_wal_rate=128kB/s`` (a size a second): the backfill runs with the
    cap in bytes and its batches rest for it (the defaults, on this idle database, never
    rest: test_pace.py)."""
    proc = expect(
        run(
            "apply", "--dsn", dsn, "--sql", UPDATE, "--name", "capped", "--yes",
            "--set", "max_wal_rate=128kB/s", "--set", "batch_max=100",
        ),
        0,
    )  # fmt: skip
    assert running_settings(proc.stderr)["max_wal_rate"] == 128 * 1024
    done = next(
        json.loads(line)
        for line in proc.stderr.splitlines()
        if line.startswith("{") and json.loads(line).get("event") == "backfill_done"
    )
    assert done["wal_bytes"] > 50 * ROWS and done["wal_rested_seconds"] > 0
    assert one(conn, "SELECT min(n) = 1 AND max(n) = 1 FROM r")


def test_backfill_setting_at_start(dsn: str, conn: Conn, table: None) -> None:
    """``backfill`` takes the settings as ``--setting`` (its ``--set`` is the UPDATE's)."""
    proc = expect(
        run(
            "backfill", "--dsn", dsn, "--table", "r", "--set", "n = n + 1", "--name", "bf",
            "--setting", "batch_max=12",
        ),
        0,
    )  # fmt: skip
    assert running_settings(proc.stderr)["batch_max"] == 12
    assert batches(conn, "bf") >= ROWS // 12
    assert one(conn, "SELECT min(n) = 1 AND max(n) = 1 FROM r")


def test_settings_file_and_environment(dsn: str, conn: Conn, table: None, tmp_path: Path) -> None:
    """A settings file (here found through ONLINESCHEMA_SETTINGS_FILE) gives batch_max=3
    and duty_cycle=90%; ONLINESCHEMA_SET overrides batch_max with 12 and adds vacuum=off;
    --set adds batch_min. The batches follow batch_max=12."""
    path = tmp_path / "onlineschema.toml"
    path.write_text(
        '[backfill]\nbatch_max = 3\nbatch_min = 1\nduty_cycle = "90%"\nbatch_target = "40ms"\n'
    )
    env = {
        "ONLINESCHEMA_SETTINGS_FILE": str(path),
        "ONLINESCHEMA_SET": "batch_max=12, vacuum=off",
    }
    proc = expect(
        run(
            "apply", "--dsn", dsn, "--sql", UPDATE, "--name", "env", "--yes",
            "--set", "batch_min=2",
            env=env,
        ),
        0,
    )  # fmt: skip
    given = running_settings(proc.stderr)
    assert {k: given[k] for k in ("batch_max", "duty_cycle", "batch_target", "vacuum")} == {
        "batch_max": 12,
        "duty_cycle": 0.9,
        "batch_target": 0.04,
        "vacuum": False,
    }
    assert given["batch_min"] == 2
    n = batches(conn, "env")
    assert ROWS // 12 <= n < ROWS // 3


@pytest.mark.server_independent
def test_pyproject_style_settings_file(tmp_path: Path) -> None:
    """[tool.onlineschema.backfill] in a pyproject.toml, through --settings-file's reader."""
    path = tmp_path / "pyproject.toml"
    path.write_text(
        '[project]\nname = "x"\n\n[tool.onlineschema.backfill]\nbatch_target = "25ms"\n'
        "workers_hint = 1\n"
    )
    with pytest.raises(Refused, match=r"unknown backfill setting.*workers_hint"):
        start_settings(settings_file=path, environ={})
    path.write_text('[tool.onlineschema.backfill]\nbatch_target = "25ms"\nvacuum = false\n')
    given = start_settings(settings_file=path, environ={})
    s = BackfillSettings().with_overrides(given)
    assert (s.batch_target, s.vacuum) == (0.025, False)


def apply_paused_after_first_batch(dsn: str, conn: Conn, name: str, *, batch: int) -> int:
    """``apply`` a backfill of ``r`` in batches of ``batch`` rows (one chunk), paused by
    another session once its first batch is done; returns the batches it ran."""

    class PauseAfterFirst:
        def step_started(self, *args: Any) -> None:
            pass

        def step_finished(self, *args: Any) -> None:
            pass

        def backfill_progress(self, *args: Any) -> None:
            with Executor(dsn) as other:
                other.pause(name)

    s = Settings(
        backfill=BackfillSettings(
            batch_initial=batch, batch_max=batch, chunks=1, control_interval=0.01
        )
    )
    with Executor(dsn, s, observer=PauseAfterFirst()) as ex, pytest.raises(Paused):
        ex.apply([Backfill("r", {"n": "n + 1"})], name)
    # the pause is picked up at the next control read: one batch, or a second already begun
    first = batches(conn, name)
    assert 1 <= first <= 2
    return first


def test_resume_set_wins_over_a_live_setting_stored_before(
    dsn: str, conn: Conn, table: None
) -> None:
    """A migration paused after its first batch, with batch_max=1000 stored by
    `onlineschema set` while it was stopped: `resume --set batch_max=12` runs the rest in
    batches of at most 12 (the start's setting is newer than the stored one)."""

    first = apply_paused_after_first_batch(dsn, conn, "resumed", batch=50)
    expect(run("set", "--dsn", dsn, "resumed", "batch_max=1000"), 0)
    proc = expect(run("resume", "--dsn", dsn, "resumed", "--set", "batch_max=12"), 0)
    assert running_settings(proc.stderr)["batch_max"] == 12
    # (the first batch after the resume still has the 50 rows the last run chose; with
    # batch_max=1000 winning instead, the rest would take a handful of batches)
    assert batches(conn, "resumed") >= first + 1 + (ROWS - 50 * (first + 1)) // 12
    assert one(conn, "SELECT min(n) = 1 AND max(n) = 1 FROM r")


def test_settings_given_at_the_start_stay_with_the_migration(
    dsn: str, conn: Conn, table: None
) -> None:
    """`apply` with batch_max=12, paused after its first batch: a plain `resume` (no
    --set) runs the rest in batches of at most 12 too (the defaults would take a handful
    of batches). (A start's setting wins over a stored one: the test above.)"""

    first = apply_paused_after_first_batch(dsn, conn, "sticky", batch=12)
    stored = one(conn, "SELECT settings FROM onlineschema.control WHERE migration = 'sticky'")
    assert stored["batch_max"] == 12 and "batch_initial" in stored
    with Executor(dsn) as ex:  # the default settings: batch_max 200,000
        ex.resume("sticky")
    # every remaining row in batches of at most 12: the stored setting, not the default
    assert batches(conn, "sticky") >= (ROWS - 12 * first) // 12
    assert one(conn, "SELECT min(n) = 1 AND max(n) = 1 FROM r")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--set", "batch_maxx=5"], {}, "unknown backfill setting(s) in --set: batch_maxx"),
        (["--set", "duty_cycle"], {}, "is not key=value"),
        ([], {"ONLINESCHEMA_SET": "duty_cycle=lots"}, "bad backfill setting in ONLINESCHEMA_SET"),
        (["--settings-file", "/nonexistent/x.toml"], {}, "cannot read the settings file"),
        (["--set", "max_wal_rate=fast"], {}, "not a size: 'fast'"),
        (["--set", "max_wal_rate=-1MB"], {}, "max_wal_rate must be >= 0"),
    ],
)
def test_bad_start_settings_are_refused_before_anything_runs(
    dsn: str, conn: Conn, table: None, args: list[str], env: dict[str, str], message: str
) -> None:
    proc = expect(
        run("apply", "--dsn", dsn, "--sql", UPDATE, "--name", "bad", "--yes", *args, env=env),
        2,
    )
    assert message in proc.stderr
    assert one(conn, "SELECT to_regclass('onlineschema.migrations')") is None
    assert one(conn, "SELECT max(n) FROM r") == 0
