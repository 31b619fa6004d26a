#!/usr/bin/env python
"""Backfill benchmark: onlineschema's batched backfill against one plain ``UPDATE``.

For each table size (``--rows``, comma-separated; default 1,000,000), on a fresh copy of
the same table each time (``bench``: ``id bigint`` primary key, an ``int``, a 32-character
``text``, and the ``bigint`` column ``v`` to fill with ``n * 2``):

* ``update``: one ``UPDATE bench SET v = n * 2`` (rows/s);
* ``backfill_1``, ``backfill_2``: ``onlineschema.backfill(...)`` with the throttle off
  (``duty_cycle=1``, every signal off; batch sizing and the periodic VACUUM as by
  default) with 1 and 2 workers, in a process of its own, whose peak RSS
  (``ru_maxrss``) is reported; rows/s and the ratio to ``update``;
* table size (heap + TOAST, and with indexes) before and after each run.

Then, unless ``--no-pgbench``: a saturating ``pgbench`` read/write workload (the built-in
TPC-B-like script, ``--clients`` clients on 2 threads, on its own database initialized
with ``-s --scale``) runs alone for half of ``--baseline`` seconds, then while a backfill
with the *default* settings (throttle on) fills the largest table, then alone again: the
workload's throughput during the backfill as a ratio of its throughput alone, and the
backfill's rows/s.

Results go to ``--out`` (JSON) and, between markers, to the "Backfill" section of
``--readme``.

    python benchmarks/backfill.py                           # 1M rows (a quiet machine)
    python benchmarks/backfill.py --rows 1000000,10000000   # both sizes: RSS flat?
    python benchmarks/backfill.py --rows 100000 --baseline 10   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
TABLE = "bench"
FILL = {"v": "n * 2"}
THROTTLE_OFF = {
    "duty_cycle": 1.0,
    "sleep": 0.0,
    "max_replica_lag": 0.0,
    "max_replica_lag_bytes": 0,
    "max_blocked_wait": 0.0,
    "max_transaction_age": 0.0,
    "pause_on_vacuum": False,
}
SERVER_SETTINGS = {
    "shared_buffers": "1GB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
}
BEGIN, END = "<!-- backfill-benchmark:begin -->", "<!-- backfill-benchmark:end -->"


# --- the table --------------------------------------------------------------------------------


def build_table(dsn: str, rows: int) -> dict[str, int]:
    """A fresh ``bench`` table of ``rows`` rows, vacuumed and analyzed; its sizes."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        conn.execute(
            f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY, n int NOT NULL,"
            " payload text NOT NULL, v bigint)"
        )
        conn.execute(
            f"INSERT INTO {TABLE} (id, n, payload)"  # noqa: S608 (constant table name)
            " SELECT g, g %% 1000, md5(g::text) FROM generate_series(1, %s) g",
            (rows,),
        )
        conn.execute(f"VACUUM (ANALYZE) {TABLE}")
        conn.execute("CHECKPOINT")
        return table_size(conn)


def table_size(conn: psycopg.Connection[Any]) -> dict[str, int]:
    row = conn.execute(
        "SELECT pg_table_size(%s::regclass), pg_total_relation_size(%s::regclass)",
        (TABLE, TABLE),
    ).fetchone()
    assert row is not None
    return {"table_bytes": int(row[0]), "total_bytes": int(row[1])}


def check_filled(conn: psycopg.Connection[Any], rows: int) -> None:
    row = conn.execute(
        f"SELECT count(*), count(*) FILTER (WHERE v = n * 2) FROM {TABLE}"  # noqa: S608
    ).fetchone()
    assert row == (rows, rows), f"table not filled as expected: {row}"


# --- server CPU ------------------------------------------------------------------------------


class ServerCPU:
    """CPU seconds used by the server: every process of the postmaster, the exited ones
    included (the postmaster reaps them, so their time is in its ``cutime``/``cstime``).
    Wall times on a shared machine are noisy; CPU time says what the work cost."""

    def __init__(self, datadir: Path) -> None:
        self.postmaster = int((datadir / "postmaster.pid").read_text().split()[0])
        self.tick = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _stat(pid: int | str) -> list[str] | None:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        return text[text.rindex(")") + 2 :].split()

    def seconds(self) -> float:
        total = 0
        own = self._stat(self.postmaster)
        assert own is not None, "the postmaster is gone"
        total += sum(int(x) for x in own[11:15])  # utime stime cutime cstime
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            st = self._stat(entry.name)
            if st is not None and int(st[1]) == self.postmaster:
                total += int(st[11]) + int(st[12])
        return total / self.tick


CPU: ServerCPU | None = None


def cpu_now() -> float:
    return CPU.seconds() if CPU is not None else 0.0


# --- contestants ------------------------------------------------------------------------------


def run_update(dsn: str, rows: int) -> dict[str, Any]:
    before = build_table(dsn, rows)
    with psycopg.connect(dsn, autocommit=True) as conn:
        cpu0 = cpu_now()
        t0 = time.perf_counter()
        conn.execute(f"UPDATE {TABLE} SET v = n * 2")  # noqa: S608
        seconds = time.perf_counter() - t0
        cpu = cpu_now() - cpu0
        check_filled(conn, rows)
        after = table_size(conn)
    return {
        "seconds": seconds,
        "rows_per_second": rows / seconds,
        "server_cpu_seconds": cpu,
        "before": before,
        "after": after,
    }


def child_command(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]


def run_child(spec: dict[str, Any]) -> int:
    """In the child process: run the backfill, print seconds and peak RSS as JSON."""
    import onlineschema
    from onlineschema import BackfillSettings, Settings

    settings = Settings(backfill=BackfillSettings(**spec.get("backfill", {})))
    t0 = time.perf_counter()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    result = onlineschema.backfill(
        spec["dsn"], TABLE, FILL, name=spec["name"], workers=spec["workers"], settings=settings
    )
    seconds = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    with psycopg.connect(spec["dsn"]) as conn:
        b = conn.execute(
            "SELECT rows_done, throttled_seconds, batches, batch_size, busy_seconds"
            " FROM onlineschema.backfills WHERE migration = %s",
            (spec["name"],),
        ).fetchone()
    assert b is not None
    print(
        json.dumps(
            {
                "state": result.state,
                "seconds": seconds,
                "rows_done": b[0],
                "throttled_seconds": b[1],
                "batches": b[2],
                "last_batch_size": b[3],
                "busy_seconds": b[4],
                "client_cpu_seconds": ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime,
                "maxrss_kb": ru.ru_maxrss,
            }
        )
    )
    return 0


def run_backfill(
    dsn: str, rows: int, workers: int, backfill: dict[str, Any], name: str, *, build: bool = True
) -> dict[str, Any]:
    before = build_table(dsn, rows) if build else {}
    spec = {"dsn": dsn, "name": name, "workers": workers, "backfill": backfill}
    cpu0 = cpu_now()
    proc = subprocess.run(child_command(spec), capture_output=True, text=True, check=False)
    cpu = cpu_now() - cpu0
    if proc.returncode != 0:
        raise SystemExit(f"backfill child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    with psycopg.connect(dsn, autocommit=True) as conn:
        check_filled(conn, rows)
        after = table_size(conn)
        conn.execute("DROP SCHEMA onlineschema CASCADE")
    return {
        **out,
        "rows_per_second": rows / out["seconds"],
        "server_cpu_seconds": cpu,
        "before": before,
        "after": after,
    }


# --- pgbench ----------------------------------------------------------------------------------

_PROGRESS = re.compile(r"progress: ([\d.]+) s, ([\d.]+) tps")


class Pgbench:
    """pgbench in the background; each ``-P 1`` progress line kept with its arrival time."""

    def __init__(self, argv: list[str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.samples: list[tuple[float, float]] = []  # (arrival, tps over the last second)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())
            m = _PROGRESS.search(line)
            if m:
                self.samples.append((time.monotonic() - self.t0, float(m.group(2))))

    def wait(self) -> None:
        self.proc.wait()
        self._reader.join(10)

    def stop(self) -> None:
        self.proc.terminate()
        self.wait()

    def tps_between(self, start: float, end: float) -> float | None:
        """Mean tps of the one-second progress intervals inside [start, end]."""
        inside = [tps for at, tps in self.samples if at - 1.0 >= start and at <= end]
        return statistics.fmean(inside) if inside else None


def pgbench_argv(
    bindir: Path, dsn_params: dict[str, str], args: argparse.Namespace, seconds: float
) -> list[str]:
    return [
        str(bindir / "pgbench"),
        "-h", dsn_params["host"], "-p", dsn_params["port"], "-U", dsn_params["user"],
        "-n", "-M", "prepared", "-c", str(args.clients), "-j", "2",
        "-T", str(int(seconds)), "-P", "1", "pgb",
    ]  # fmt: skip


def run_workload(server: Any, dsn: str, rows: int, args: argparse.Namespace) -> dict[str, Any]:
    from onlineschema.embedded.server import find_bindir

    bindir = find_bindir(args.pg)
    params = {"host": "127.0.0.1", "port": str(server.port), "user": "postgres"}
    server.create_database("pgb")
    init = subprocess.run(
        [str(bindir / "pgbench"), "-h", params["host"], "-p", params["port"], "-U", "postgres",
         "-i", "-q", "-s", str(args.scale), "pgb"],
        capture_output=True, text=True, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
    )  # fmt: skip
    if init.returncode != 0:
        raise SystemExit(f"pgbench -i failed:\n{init.stderr[-2000:]}")
    with psycopg.connect(server.dsn("pgb"), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
    before = build_table(dsn, rows)
    # one pgbench run throughout: warm-up, a baseline window, the backfill, a second
    # baseline window; the baseline is the mean of both windows, so that a drift of the
    # machine's speed during the run does not pass for the backfill's effect
    load = Pgbench(pgbench_argv(bindir, params, args, 24 * 3600))
    half = args.baseline / 2
    time.sleep(3.0 + half)
    start = time.monotonic() - load.t0
    bf = run_backfill(dsn, rows, 1, {}, "bench_default", build=False)
    end = time.monotonic() - load.t0
    time.sleep(1.0 + half)
    load.stop()
    # the backfill's own measure excludes the child's start-up: align its start
    first = load.tps_between(3.0, start)
    second = load.tps_between(end + 1.0, float("inf"))
    start = max(start, end - bf["seconds"])
    during = load.tps_between(start, end)
    if first is None or second is None:
        raise SystemExit("pgbench printed no progress:\n" + "\n".join(load.lines[-20:]))
    baseline = (first + second) / 2
    return {
        "scale": args.scale,
        "clients": args.clients,
        "threads": 2,
        "baseline_seconds": args.baseline,
        "baseline_tps": baseline,
        "baseline_tps_before_after": [first, second],
        "tps_during_backfill": during,
        "tps_ratio": (during / baseline) if during is not None else None,
        "backfill": {**bf, "before": before},
        "backfill_settings": "defaults (throttle on)",
    }


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


# --- report -----------------------------------------------------------------------------------


def mb(n: int) -> str:
    return f"{n / 1024 / 1024:,.0f} MB"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Results (`benchmarks/results/backfill.json`, {result['when']}, command"
        f" `{result['command']}`): PostgreSQL {result['server_version']}, {result['cpus']} CPUs,"
        f" load average at start {result['load_average']}; backfills:"
        f" {result.get('backfill_runs', 'throttle off')}; server: {result['server_settings']}.",
        "",
        "| rows | run | seconds | rows/s | ratio to UPDATE | server CPU s | client CPU s | peak RSS | table before | table after | with indexes after |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in result["sizes"]:
        rows = size["rows"]
        for key, label in (
            ("update", "single UPDATE"),
            ("backfill_1", "backfill, 1 worker"),
            ("backfill_2", "backfill, 2 workers"),
        ):
            r = size[key]
            ratio = r["ratio_to_update"]
            rss = f"{r['maxrss_kb'] / 1024:,.0f} MB" if "maxrss_kb" in r else ""
            client = f"{r['client_cpu_seconds']:.2f}" if "client_cpu_seconds" in r else ""
            lines.append(
                f"| {rows:,} | {label} | {r['seconds']:.2f} | {r['rows_per_second']:,.0f} |"
                f" {ratio:.2f} | {r['server_cpu_seconds']:.2f} | {client} | {rss} |"
                f" {mb(r['before']['table_bytes'])} |"
                f" {mb(r['after']['table_bytes'])} | {mb(r['after']['total_bytes'])} |"
            )
    w = result.get("workload")
    if w:
        bf = w["backfill"]
        ratio = f"{w['tps_ratio']:.2f}" if w["tps_ratio"] is not None else "n/a"
        during = (
            f"{w['tps_during_backfill']:,.0f}" if w["tps_during_backfill"] is not None else "n/a"
        )
        lines += [
            "",
            f"Under a saturating pgbench read/write workload (TPC-B-like, scale {w['scale']},"
            f" {w['clients']} clients / {w['threads']} threads), backfill with the default"
            " settings (throttle on, 1 worker):",
            "",
            "| workload tps alone | tps during the backfill | ratio | backfill rows/s | backfill seconds | throttled seconds |",
            "|---:|---:|---:|---:|---:|---:|",
            f"| {w['baseline_tps']:,.0f} | {during} | {ratio} | {bf['rows_per_second']:,.0f} |"
            f" {bf['seconds']:.2f} | {bf['throttled_seconds']:.2f} |",
        ]
    lines += ["", "| target | met | value |", "|---|---|---|"]
    for t in result["targets"]:
        lines.append(f"| {t['target']} | {'yes' if t['met'] else '**no**'} | {t['value']} |")
    return "\n".join(lines)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for size in result["sizes"]:
        r1 = size["backfill_1"]["ratio_to_update"]
        r2 = size["backfill_2"]["ratio_to_update"]
        out.append(
            {
                "target": f"{size['rows']:,} rows: 1 worker >= 0.9x single UPDATE",
                "met": r1 >= 0.9,
                "value": f"{r1:.2f}x",
            }
        )
        out.append(
            {
                "target": f"{size['rows']:,} rows: 2 workers >= 1.5x single UPDATE",
                "met": r2 >= 1.5,
                "value": f"{r2:.2f}x",
            }
        )
    if len(result["sizes"]) > 1:
        rss = [s["backfill_1"]["maxrss_kb"] for s in result["sizes"]]
        flat = max(rss) <= min(rss) * 1.2
        out.append(
            {
                "target": "peak RSS flat across sizes (within 20%)",
                "met": flat,
                "value": " / ".join(f"{r / 1024:.0f} MB" for r in rss),
            }
        )
    w = result.get("workload")
    if w and w["tps_ratio"] is not None:
        out.append(
            {
                "target": "workload tps during the backfill >= 0.7x baseline",
                "met": w["tps_ratio"] >= 0.7,
                "value": f"{w['tps_ratio']:.2f}",
            }
        )
    return out


def write_readme(path: Path, table: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Backfill\n\n" + block + "\n"
    path.write_text(text)


# --- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--rows", default="1000000", help="table sizes, comma-separated (default 1000000)"
    )
    ap.add_argument("--pg", type=int, default=18, help="PostgreSQL major version (default 18)")
    ap.add_argument(
        "--basedir", type=Path, help="server base directory (default: new one in /dev/shm)"
    )
    ap.add_argument("--no-pgbench", action="store_true", help="skip the workload run")
    ap.add_argument(
        "--defaults",
        action="store_true",
        help="run the backfills at the default settings (throttle on: the idle-speed rule)"
        " instead of with the throttle off",
    )
    ap.add_argument(
        "--durable",
        action="store_true",
        help="server on disk (/var/tmp) with fsync, synchronous_commit, full_page_writes on",
    )
    ap.add_argument("--clients", type=int, default=8, help="pgbench clients (default 8)")
    ap.add_argument("--scale", type=int, default=10, help="pgbench scale (default 10)")
    ap.add_argument(
        "--baseline",
        type=float,
        default=20.0,
        help="seconds of workload alone, half before and half after the backfill (20)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="rounds per size; the median is kept (1)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/backfill.json")
    ap.add_argument("--readme", type=Path, default=ROOT / "benchmarks/README.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return run_child(json.loads(args.child))

    from onlineschema.embedded.server import LocalServer

    sizes = [int(x) for x in args.rows.split(",") if x.strip()]
    command = "python benchmarks/backfill.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    result: dict[str, Any] = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command.strip(),
        "cpus": os.cpu_count(),
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "server_settings": SERVER_SETTINGS,
        "backfill_runs": "default settings" if args.defaults else "throttle off",
        "sizes": [],
    }
    server_settings = dict(SERVER_SETTINGS)
    basedir = args.basedir
    if args.durable:
        server_settings |= {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
        result["server_settings"] = server_settings
        if basedir is None:
            import tempfile

            parent = Path(tempfile.mkdtemp(prefix="backfill-bench-", dir="/var/tmp"))
            parent.chmod(0o755)  # the server's OS user (when we are root) must enter it
            basedir = parent / "pg"  # a given basedir is kept by the server: removed at exit
            import atexit
            import shutil

            atexit.register(shutil.rmtree, parent, True)
    global CPU
    with LocalServer(args.pg, basedir=basedir, settings=server_settings) as server:
        CPU = ServerCPU(server.datadir)
        dsn = server.create_database("bench")
        with psycopg.connect(dsn) as conn:
            result["server_version"] = conn.info.parameter_status("server_version")
        for rows in sizes:
            runs: dict[str, list[dict[str, Any]]] = {
                "update": [],
                "backfill_1": [],
                "backfill_2": [],
            }
            for i in range(args.repeat):  # interleaved, so that noise hits all alike
                print(f"{rows:,} rows, round {i + 1}: single UPDATE ...", file=sys.stderr)
                runs["update"].append(run_update(dsn, rows))
                for workers in (1, 2):
                    print(
                        f"{rows:,} rows, round {i + 1}: backfill, {workers} worker(s) ...",
                        file=sys.stderr,
                    )
                    runs[f"backfill_{workers}"].append(
                        run_backfill(
                            dsn,
                            rows,
                            workers,
                            {} if args.defaults else THROTTLE_OFF,
                            f"bench_{workers}_{i}",
                        )
                    )
            entry: dict[str, Any] = {"rows": rows, "repeat": args.repeat}
            for key, rs in runs.items():
                entry[key] = median_run(rs)
                entry[f"{key}_all_seconds"] = [round(r["seconds"], 3) for r in rs]
                # each round's backfill against that round's UPDATE, then the median:
                # a slow patch of the machine hits both sides of a pair
                entry[key]["ratio_to_update"] = statistics.median(
                    u["seconds"] / r["seconds"] for u, r in zip(runs["update"], rs, strict=True)
                )
            result["sizes"].append(entry)
        if not args.no_pgbench:
            print(f"pgbench workload, backfill of {max(sizes):,} rows ...", file=sys.stderr)
            result["workload"] = run_workload(server, dsn, max(sizes), args)
    result["targets"] = targets(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    write_readme(args.readme, table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
