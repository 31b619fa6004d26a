"""Operating long runs: Prometheus metrics scraped over HTTP (and the textfile) during a
real backfill, hooks that succeed, fail and hang, and ``status --watch`` in a
pseudo-terminal while another process runs the migration.

Real PostgreSQL, the real CLI in subprocesses; a backfill is made slow with a SQL
function that sleeps ~1 ms per row, so there is something to watch.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from scenario_tools import Blocker, wait_until
from structlog.testing import capture_logs

from onlineschema import Executor
from onlineschema.changes import AddColumn
from onlineschema.executor import Settings
from onlineschema.observe.hooks import HookRunner
from onlineschema.observe.watch import watch

pytestmark = pytest.mark.version_independent

ROWS = 3000
NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABELS = {"migration", "step", "reason", "state", "signal", "le"}


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("ONLINESCHEMA_DSN", "DATABASE_URL")}


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "onlineschema", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> tuple[str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()  # reaps it and closes its pipes
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    assert "Traceback" not in err, err
    return out, err


def drain(fd: int, timeout: float = 2.0) -> bytes:
    """What a pty still holds once its writer has exited."""
    out = b""
    while select.select([fd], [], [], timeout)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the writer's side is closed
            break
        if not chunk:
            break
        out += chunk
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def slow(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    """``slow(id, n)`` with ROWS rows; ``slow_inc(id, n)`` sleeps ~1 ms a row past id 500."""
    conn.execute("CREATE TABLE slow (id bigserial PRIMARY KEY, n int NOT NULL DEFAULT 0)")
    conn.execute("INSERT INTO slow (n) SELECT 0 FROM generate_series(1, %s)", (ROWS,))
    conn.execute("ANALYZE slow")
    conn.execute(
        "CREATE FUNCTION slow_inc(bigint, int) RETURNS int LANGUAGE sql VOLATILE AS"
        " $$ SELECT pg_sleep(CASE WHEN $1 > 500 THEN 0.001 ELSE 0 END); SELECT $2 + 1 $$"
    )
    yield conn


def backfill_args(dsn: str, name: str = "slow") -> list[str]:
    return ["backfill", "--dsn", dsn, "--table", "slow", "--set", "n = slow_inc(id, n)",
            "--name", name]  # fmt: skip


def rows_done(conn: psycopg.Connection[Any], name: str) -> int:
    if not conn.execute("SELECT to_regclass('onlineschema.backfills') IS NOT NULL").fetchone()[0]:  # type: ignore[index]
        return 0
    row = conn.execute(
        "SELECT rows_done FROM onlineschema.backfills WHERE migration = %s", (name,)
    ).fetchone()
    return int(row[0]) if row else 0


# --- metrics --------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return parse(r.read().decode())


def parse(text: str) -> dict[str, Any]:
    """family name -> family, checked as Prometheus' own parser and conventions want."""
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    for name, fam in fams.items():
        if not name.startswith("onlineschema_"):
            continue
        assert NAME_RE.match(name), name
        for s in fam.samples:
            assert set(s.labels) <= LABELS, (name, s.labels)  # low cardinality: no pid, no SQL
            if fam.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
    return fams


def maybe(
    fams: dict[str, Any], family: str, sample: str | None = None, **labels: str
) -> float | None:
    fam = fams.get(family)
    found = [
        s.value
        for s in (fam.samples if fam else [])
        if (sample is None or s.name == sample)
        and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return float(found[0]) if found else None


def value(fams: dict[str, Any], family: str, sample: str | None = None, **labels: str) -> float:
    found = maybe(fams, family, sample, **labels)
    assert found is not None, (family, sample, labels, fams.get(family))
    return found


def test_metrics_scraped_during_a_real_backfill(
    dsn: str, slow: psycopg.Connection[Any], tmp_path: Path
) -> None:
    port = free_port()
    textfile = tmp_path / "onlineschema.prom"
    proc = start(
        *backfill_args(dsn), "--metrics-port", str(port), "--metrics-textfile", str(textfile)
    )
    step = "backfill.public.slow.n"
    try:
        wait_until(lambda: rows_done(slow, "slow") > 0, timeout=30, what="the backfill to start")
        first = scrape(port)
        assert value(first, "onlineschema_migration_state", migration="slow", state="running") == 1
        assert (
            value(first, "onlineschema_step_state", migration="slow", step=step, state="running")
            == 1
        )
        rows1 = value(first, "onlineschema_backfill_rows_done", migration="slow", step=step)
        updated1 = value(first, "onlineschema_backfill_rows_updated", "onlineschema_backfill_rows_updated_total", migration="slow", step=step)  # fmt: skip
        # a long transaction on the table throttles the backfill for a while
        slow.execute("SELECT 1")
        expect_set = subprocess.run(
            [sys.executable, "-m", "onlineschema", "set", "--dsn", dsn, "slow",
             "max_transaction_age=0.5", "resume_transaction_age=0.5"],
            capture_output=True, text=True, env=env(), timeout=30, check=False,
        )  # fmt: skip
        assert expect_set.returncode == 0, expect_set.stderr
        with Blocker(dsn, "SELECT 1 FROM slow LIMIT 1", isolation="repeatable read").start(
            hold_for=3.0
        ):
            wait_until(
                lambda: (
                    maybe(
                        scrape(port),
                        "onlineschema_backfill_throttled",
                        migration="slow",
                        step=step,
                        reason="long_transaction",
                    )
                    == 1
                ),
                timeout=20,
                what="the throttled gauge",
            )
            # the signal's reading is exported while it is read, throttled or not
            age = maybe(scrape(port), "onlineschema_throttle_signal_seconds", migration="slow", signal="long_transaction")  # fmt: skip
            assert age is not None and age > 0.5
        second = scrape(port)
        rows2 = value(second, "onlineschema_backfill_rows_done", migration="slow", step=step)
        updated2 = value(second, "onlineschema_backfill_rows_updated", "onlineschema_backfill_rows_updated_total", migration="slow", step=step)  # fmt: skip
        assert rows2 > rows1 and updated2 > updated1  # gauges move, counters grow
        assert (
            value(second, "onlineschema_backfill_batch_size_rows", migration="slow", step=step)
            >= 10
        )
        batches = value(second, "onlineschema_backfill_batch_duration_seconds", "onlineschema_backfill_batch_duration_seconds_count", migration="slow", step=step)  # fmt: skip
        assert batches >= 2
        assert (
            value(second, "onlineschema_backfill_rows_per_second", migration="slow", step=step) > 0
        )
        assert value(second, "onlineschema_backfill_throttle_events", "onlineschema_backfill_throttle_events_total", migration="slow", step=step, reason="long_transaction") >= 1  # fmt: skip
        assert textfile.exists()  # written while it runs, too
    finally:
        out, _err = finish(proc)
    assert "migration slow completed" in out
    # the textfile holds the end state; the HTTP server went with the process
    final = parse(textfile.read_text())
    assert value(final, "onlineschema_migration_state", migration="slow", state="completed") == 1
    assert value(final, "onlineschema_migration_state", migration="slow", state="running") == 0
    assert value(final, "onlineschema_backfill_rows_done", migration="slow", step=step) == ROWS
    assert value(final, "onlineschema_backfill_eta_seconds", migration="slow", step=step) == 0
    throttled = value(final, "onlineschema_backfill_throttled_seconds", "onlineschema_backfill_throttled_seconds_total", migration="slow", step=step, reason="long_transaction")  # fmt: skip
    assert 1.0 <= throttled <= 10.0
    assert value(final, "onlineschema_backfill_throttled", migration="slow", step=step, reason="long_transaction") == 0  # fmt: skip
    assert value(final, "onlineschema_step_state", migration="slow", step=step, state="done") == 1
    assert not list(tmp_path.glob("*.tmp*"))  # the atomic rewrite leaves no temporary file
    with pytest.raises(OSError):
        scrape(port)


# --- hooks ----------------------------------------------------------------------------------


def read_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        k, _, v = line.partition("=")
        out[k] = v
    return out


def test_hooks_succeed_fail_and_hang_without_stopping_the_migration(
    dsn: str, slow: psycopg.Connection[Any], tmp_path: Path
) -> None:
    dump = "env | grep ^ONLINESCHEMA_ > {}"
    hang_pid = tmp_path / "hang.pid"
    t0 = time.monotonic()
    proc = start(
        "--log-format", "json",
        *backfill_args(dsn),
        "--hook", f"started={dump.format(tmp_path / 'started.env')}",
        "--hook", "started=echo broken >&2; exit 7",
        "--hook", f"step_started=echo $$ > {hang_pid}; exec sleep 60",
        "--hook", f"progress={dump.format(tmp_path / 'progress.env')}",
        "--hook", f"step_finished={dump.format(tmp_path / 'step_finished.env')}",
        "--hook", f"completed={dump.format(tmp_path / 'completed.env')}",
        "--hook-timeout", "1s",
    )  # fmt: skip
    out, err = finish(proc)
    elapsed = time.monotonic() - t0
    assert "migration slow completed" in out
    assert elapsed < 45  # the hanging hook (60 s) neither stopped nor held the run

    started = read_env(tmp_path / "started.env")
    assert started["ONLINESCHEMA_EVENT"] == "started"
    assert started["ONLINESCHEMA_MIGRATION"] == "slow"
    progress = read_env(tmp_path / "progress.env")
    assert progress["ONLINESCHEMA_STEP"] == "backfill.public.slow.n"
    assert int(progress["ONLINESCHEMA_ROWS_DONE"]) >= 0
    assert int(progress["ONLINESCHEMA_ROWS_TOTAL"]) == ROWS
    assert "ONLINESCHEMA_ROWS_PER_SECOND" in progress
    finished = read_env(tmp_path / "step_finished.env")
    assert finished["ONLINESCHEMA_STATE"] == "done" and finished["ONLINESCHEMA_STEPS_TOTAL"] == "1"
    completed = read_env(tmp_path / "completed.env")
    assert completed["ONLINESCHEMA_STATE"] == "completed"

    # the failing and the hanging hook were logged, and the hanging one was killed
    assert '"hook_failed"' in err and '"exit_code": 7' in err and "broken" in err
    assert '"hook_timed_out"' in err
    pid = int(hang_pid.read_text())
    wait_until(lambda: not _alive(pid), timeout=10, what="the hanging hook to be killed")
    assert slow.execute("SELECT count(*) FROM slow WHERE n = 1").fetchone() == (ROWS,)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead too
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_hook_callables_in_settings(dsn: str, conn: psycopg.Connection[Any]) -> None:
    conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY)")
    seen: list[Mapping[str, str]] = []

    def boom(facts: Mapping[str, str]) -> None:
        raise RuntimeError("hook bug")

    def hang(facts: Mapping[str, str]) -> None:
        time.sleep(30)

    # two that hang use up twice the timeout: the hooks behind them still run, each in time
    hooks = {
        "started": [boom, hang, hang],
        "step_started": [seen.append],
        "completed": [seen.append],
    }
    t0 = time.monotonic()
    with Executor(dsn, Settings(hooks=hooks, hook_timeout=0.5)) as ex:
        result = ex.apply([AddColumn("t", "note", "text")], "note")
    assert result.state == "completed"
    assert time.monotonic() - t0 < 10
    assert [f["ONLINESCHEMA_EVENT"] for f in seen] == ["step_started", "completed"]
    assert seen[0]["ONLINESCHEMA_STEP"] == "add_column.public.t.note"
    assert seen[1]["ONLINESCHEMA_MIGRATION"] == "note"


def test_the_completed_hook_runs_after_a_long_quiet_run() -> None:
    # the worker last took a hook long ago (a backfill with no progress hooks): the end
    # still waits for the hooks queued at the end, and for the worker to stop
    seen: list[str] = []
    runner = HookRunner(
        {"started": [lambda f: None], "completed": [lambda f: seen.append("completed")]},
        timeout=0.1,
    )
    runner.fire("started")
    time.sleep(1.5)  # longer than a hook's time (its timeout and a second) ago
    runner.fire("completed")
    with capture_logs() as logs:
        runner.close()
    assert seen == ["completed"]
    assert not [e for e in logs if e["event"] == "hooks_left_running"]


class CtrlCOnFirstWrite(io.StringIO):
    """A terminal on which Ctrl-C lands while the first screen is being drawn."""

    def write(self, text: str) -> int:
        raise KeyboardInterrupt


def test_ctrl_c_while_the_watch_draws_its_first_screen_ends_it_quietly(
    dsn: str, conn: psycopg.Connection[Any]
) -> None:
    # CI once caught SIGINT inside rich's Live() set-up, before the loop's handler: exit 1
    conn.execute("CREATE TABLE t (id bigserial PRIMARY KEY)")
    with Executor(dsn) as ex:
        ex.apply([AddColumn("t", "note", "text")], "note")
        console = Console(file=CtrlCOnFirstWrite(), force_terminal=True)
        data = watch(ex, "note", console=console)
    assert data is not None and data["state"] == "completed"


def test_bad_hook_is_refused_before_anything_runs(dsn: str, slow: psycopg.Connection[Any]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "onlineschema", *backfill_args(dsn), "--hook", "finished=true"],
        capture_output=True, text=True, env=env(), timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "unknown hook event 'finished'" in proc.stderr and "completed" in proc.stderr
    assert slow.execute("SELECT to_regclass('onlineschema.migrations')").fetchone() == (None,)


# --- status --watch -------------------------------------------------------------------------


def test_status_watch_in_a_terminal_while_another_process_runs_it(
    dsn: str, slow: psycopg.Connection[Any]
) -> None:
    runner = start(*backfill_args(dsn))
    primary, secondary = pty.openpty()
    watcher = None
    screen = b""
    try:
        wait_until(lambda: rows_done(slow, "slow") > 0, timeout=30, what="the backfill to start")
        wenv = env()
        wenv.update(TERM="xterm", COLUMNS="160", LINES="50")
        watcher = subprocess.Popen(
            [sys.executable, "-m", "onlineschema", "status", "--dsn", dsn, "slow",
             "--watch", "--interval", "0.3"],
            stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary, env=wenv,
        )  # fmt: skip
        os.close(secondary)
        secondary = -1
        blocker = None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if blocker is None and b"rows/s" in screen:
                # a session in the migration's way: the view names it
                blocker = Blocker(dsn, "LOCK TABLE slow IN SHARE MODE").start(hold_for=2.0)
            if not select.select([primary], [], [], 0.5)[0]:
                if watcher.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        if blocker is not None:
            blocker.release()
        assert watcher.wait(timeout=30) == 0, screen.decode(errors="replace")[
            -3000:
        ]  # ended by itself
    finally:
        if secondary >= 0:
            os.close(secondary)
        os.close(primary)
        if watcher is not None and watcher.poll() is None:
            watcher.kill()
            watcher.wait()
        out, _err = finish(runner)
    shown = screen.decode(errors="replace")
    assert "migration slow completed" in out
    assert "backfill.public.slow.n" in shown
    assert "rows/s" in shown and "ETA" in shown
    assert f"{ROWS:,}/{ROWS:,} rows" in shown
    assert "in the way" in shown and "scenario-blocker" in shown
    assert "run by session" in shown
    assert "migration slow: completed" in shown


def test_status_watch_stops_on_ctrl_c(dsn: str, slow: psycopg.Connection[Any]) -> None:
    # ~5 ms a row: the backfill outlasts the view by far
    slow.execute(
        "CREATE OR REPLACE FUNCTION slow_inc(bigint, int) RETURNS int LANGUAGE sql VOLATILE AS"
        " $$ SELECT pg_sleep(CASE WHEN $1 > 500 THEN 0.005 ELSE 0 END); SELECT $2 + 1 $$"
    )
    runner = start(*backfill_args(dsn))
    try:
        wait_until(lambda: rows_done(slow, "slow") > 0, timeout=30, what="the backfill to start")
        primary, secondary = pty.openpty()
        watcher = subprocess.Popen(
            [sys.executable, "-m", "onlineschema", "status", "--dsn", dsn, "slow", "--watch"],
            stdin=subprocess.DEVNULL, stdout=secondary, stderr=secondary, env=env(),
        )  # fmt: skip
        os.close(secondary)
        screen = b""
        try:
            while b"rows/s" not in screen:
                assert select.select([primary], [], [], 30)[0], f"the view did not draw: {screen!r}"
                screen += os.read(primary, 65536)
            watcher.send_signal(signal.SIGINT)
            code = watcher.wait(timeout=20)
            screen += drain(primary)
            assert code == 0, screen.decode(errors="replace")[-3000:]
            assert runner.poll() is None  # the migration goes on
        finally:
            os.close(primary)
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()
        pause = subprocess.run(
            [sys.executable, "-m", "onlineschema", "pause", "--dsn", dsn, "slow"],
            capture_output=True, text=True, env=env(), timeout=30, check=False,
        )  # fmt: skip
        assert pause.returncode == 0, pause.stderr
        runner.communicate(timeout=60)
        assert runner.returncode == 3  # paused, resumable: the view's Ctrl-C did not stop it
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()  # reaps it and closes its pipes


# --- the dashboard and the docs name only metrics that exist ----------------------------------


@pytest.mark.server_independent
def test_dashboard_and_docs_use_the_exported_metric_names() -> None:
    from onlineschema.observe.metrics import MetricsObserver

    root = Path(__file__).resolve().parent.parent
    metrics = MetricsObserver()
    fams = parse(metrics.exposition())
    families = {n for n in fams if n.startswith("onlineschema_")}
    assert len(families) >= 20
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    exported = {n + s for n in families for s in suffixes[fams[n].type]}
    dashboard = json.loads((root / "docs" / "grafana" / "onlineschema-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"onlineschema_[a-z_]+", e)}
    assert used - exported == set(), "the dashboard queries metrics that do not exist"
    assert {"onlineschema_backfill_rows_done", "onlineschema_lock_retries_total"} <= used
    page = (root / "docs" / "operating.md").read_text()
    documented = set(re.findall(r"`(onlineschema_[a-z_]+)", page))
    assert documented - exported - families == set(), "operating.md names unknown metrics"
    undocumented = {n for n in families if not any(d.startswith(n) for d in documented)}
    assert undocumented == set(), "metrics missing from docs/operating.md"
