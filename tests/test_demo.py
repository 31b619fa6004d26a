"""``onlineschema demo`` and the workload it runs.

The demo test runs the real command (a subprocess, as a user would) on a small table with
a blocker in the way: it must finish, print the comparison, write the plot, and show the
plain-SQL run making the application wait longer than the onlineschema run. That last
check is an ordering of the two runs' own measurements, never a wall-clock limit.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from onlineschema.demo.workload import OrdersTable, Sample, Workload, check_loopback, summarize


@pytest.mark.slow
@pytest.mark.server_independent  # the demo always runs its own embedded PostgreSQL 18
def test_demo_side_by_side_with_a_blocker(tmp_path: Path) -> None:
    plot = tmp_path / "latency.png"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONLINESCHEMA_")}
    proc = subprocess.run(
        [sys.executable, "-m", "onlineschema", "demo", "--rows", "20000",
         "--duration", "4s", "--blocker", "2.5s", "--plot", str(plot)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env, check=False,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"

    assert "What the application saw during the migration (blocker: 2.5 s)" in out
    for row in ("migration time", "longest wait", "p99 latency", "throughput"):
        assert row in out, row
    assert out.count("migration completed in") == 2, out  # both runs finished

    waits = re.search(r"during the migration: plain SQL ([\d.]+) s, onlineschema ([\d.]+) s\.", out)
    assert waits, out
    plain, online = float(waits.group(1)), float(waits.group(2))
    assert plain > 2 * online, (plain, online)

    # the blocker was waited out, not queued behind: the lock guard said so on stderr
    assert "waiting_for_blockers" in proc.stderr
    assert f"Latency plot: {plot}" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot.stat().st_size > 10_000


def test_demo_rejects_bad_options() -> None:
    from onlineschema.demo import run_demo

    assert run_demo(rows=10) == 2
    assert run_demo(rows=20_000, blocker=-1) == 2


def test_workload_runs_and_records_every_request(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE users (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY);"
            "INSERT INTO users SELECT FROM generate_series(1, 10);"
            "CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
            " user_id bigint NOT NULL, amount numeric(10, 2) NOT NULL,"
            " currency char(3) NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),"
            " updated_at timestamptz NOT NULL DEFAULT now());"
            "INSERT INTO orders (user_id, amount, currency)"
            " SELECT 1 + g % 10, g, 'EUR' FROM generate_series(1, 100) g"
        )
    workload = Workload(dsn, OrdersTable(max_id=100, users=10), clients=2, rate=50.0)
    with workload:
        time.sleep(1.0)
    samples = workload.samples
    assert len(samples) >= 20
    assert {s.op for s in samples} >= {"read", "update"}
    assert not [s for s in samples if s.error]
    assert all(s.latency >= 0 for s in samples)
    assert samples == sorted(samples, key=lambda s: s.start)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM orders").fetchone()
    assert row is not None
    assert row[0] == 100 + sum(1 for s in samples if s.op == "insert")


def test_workload_stops_by_itself(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE orders (id int PRIMARY KEY, user_id int, amount numeric,"
            " currency text, created_at timestamptz, updated_at timestamptz)"
        )
    workload = Workload(dsn, OrdersTable(max_id=1, users=1), clients=1, rate=20.0,
                        max_duration=0.5).start()  # fmt: skip
    deadline = time.monotonic() + 30
    while workload.now() < 0.5 or workload.in_flight():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.2)
    count = len(workload.samples)
    time.sleep(0.3)
    assert len(workload.samples) == count  # nothing ran after max_duration
    assert all(s.start <= 0.5 for s in workload.stop())


def test_workload_only_talks_to_this_machine() -> None:
    check_loopback("host=127.0.0.1 port=5432 dbname=x")
    check_loopback("host=/tmp dbname=x")
    check_loopback("postgresql://localhost/x")
    with pytest.raises(ValueError, match="only runs against a server on this machine"):
        check_loopback("host=db.example.com dbname=x")
    with pytest.raises(ValueError, match="only runs against a server on this machine"):
        Workload("postgresql://10.0.0.5/app", OrdersTable(max_id=1, users=1))


def test_summary_of_a_stall() -> None:
    # quick requests a second apart, one that waits 3 s, one that fails
    samples = [Sample(float(i), 0.001, "read") for i in range(10)]
    samples.append(Sample(4.5, 3.0, "update"))
    samples.append(Sample(5.0, 0.5, "insert", error="55P03"))
    s = summarize(samples, 4.0, 7.9)
    assert s.requests == 6  # the quick ones started at 4, 5, 6, 7, the stalled, the failed
    assert s.completed == 6
    assert s.errors == 1
    assert s.max_wait == 3.0
    assert s.p99 == 3.0
    assert s.p50 == 0.001
    assert s.throughput == pytest.approx(6 / 3.9)
    assert s.longest_gap == pytest.approx(1.0)


def test_summary_longest_gap_counts_the_window_edges() -> None:
    samples = [Sample(0.0, 0.01, "read"), Sample(9.0, 0.01, "read")]
    s = summarize(samples, 1.0, 5.0)
    assert s.completed == 0
    assert s.longest_gap == pytest.approx(4.0)
    assert s.throughput == 0.0
