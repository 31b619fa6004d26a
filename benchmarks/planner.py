#!/usr/bin/env python
"""Planner benchmark: plan 200 changes across 20 tables; time per change.

Builds 20 tables (``--tables``) with a few hundred rows each and asks for 10 changes on
each (``--per-table``): column adds of every recipe (constant default, volatile default,
NOT NULL with a backfill), plain, expression and partial indexes, a foreign key, a check,
a unique constraint, a default, and a backfill. Timed separately, best and median of
``--repeat`` rounds:

* ``catalog``: reading the catalog snapshot the planner needs (one round trip per kind);
* ``build_plan``: the planner itself, a pure function of snapshot and changes;
* ``probes``: compiling every expression against the live tables (read-only EXPLAINs);
* ``total``: ``Executor.plan()``, all of the above as a user runs it.

    python benchmarks/planner.py
    python benchmarks/planner.py --report benchmarks/results/planner.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from onlineschema import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddIndex,
    AddUnique,
    Backfill,
    Change,
    Executor,
    SetDefault,
)
from onlineschema.catalog import read_catalog
from onlineschema.embedded.server import LocalServer
from onlineschema.planner import build_plan, catalog_request


def table_changes(t: str) -> list[Change]:
    """Ten changes on table ``t``, one of each common kind."""
    return [
        AddColumn(t, "flag", "boolean", nullable=False, default="false"),
        AddColumn(t, "token", "uuid", default="gen_random_uuid()"),
        AddColumn(t, "label", "text", nullable=False, backfill="upper(name)", default="'unknown'"),
        AddIndex(t, columns=("qty",)),
        AddIndex(t, expressions=("lower(name)",), where="qty > 0", name=f"{t}_lower_name_idx"),
        AddForeignKey(t, ("parent_id",), "parents", ("id",)),
        AddCheck(t, "qty >= 0", name=f"{t}_qty_check"),
        AddUnique(t, ("code",)),
        SetDefault(t, "qty", "1"),
        Backfill(t, set=(("note", "'n/a'"),), where="note IS NULL"),
    ]


def build(dsn: str, tables: int, rows: int) -> list[str]:
    names = [f"items_{i:02d}" for i in range(tables)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE parents (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO parents SELECT generate_series(1, 100)")
        for n in names:
            t = sql.Identifier(n)
            conn.execute(
                sql.SQL(
                    "CREATE TABLE {} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                    " parent_id bigint, name text NOT NULL, code text NOT NULL, qty int,"
                    " note text, created_at timestamptz NOT NULL DEFAULT now())"
                ).format(t)
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (parent_id, name, code, qty)"
                    " SELECT 1 + g % 100, 'item ' || g, 'C' || g, g FROM generate_series(1, {})"
                    " AS g"
                ).format(t, sql.Literal(rows))
            )
        conn.execute("ANALYZE")
    return names


def timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    times: list[float] = []
    result: Any = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Plan 200 changes across 20 tables.")
    ap.add_argument("--tables", type=int, default=20)
    ap.add_argument("--per-table", type=int, default=10, choices=range(1, 11))
    ap.add_argument("--rows", type=int, default=500, help="rows per table")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--pg", type=int, default=18)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "planner.json"))
    ap.add_argument("--report", metavar="JSON", help="only print the Markdown table of a result")
    args = ap.parse_args(argv)
    if args.report:
        print(markdown(json.loads(Path(args.report).read_text())))
        return 0

    with LocalServer(args.pg) as server:
        dsn = server.create_database("planner_bench")
        names = build(dsn, args.tables, args.rows)
        changes = [c for n in names for c in table_changes(n)[: args.per_table]]
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            version = row[0] if row else "?"
            req = catalog_request(changes)

            def read() -> Any:
                return read_catalog(
                    conn,
                    req["tables"],
                    index_names=req["index_names"],
                    functions=req["functions"],
                    types=req["types"],
                )

            t_catalog, catalog = timed(read, args.repeat)
            t_build, planned = timed(lambda: build_plan(catalog, changes), args.repeat)
            scaling = []  # build_plan on the first k tables' changes: is it linear?
            for k in sorted({1, max(args.tables // 4, 1), max(args.tables // 2, 1), args.tables}):
                subset = [c for n in names[:k] for c in table_changes(n)[: args.per_table]]
                t_k, _ = timed(functools.partial(build_plan, catalog, subset), args.repeat)
                scaling.append(
                    {
                        "tables": k,
                        "changes": len(subset),
                        "median_ms": round(statistics.median(t_k) * 1000, 2),
                        "per_change_ms": round(statistics.median(t_k) * 1000 / len(subset), 3),
                    }
                )
        with Executor(dsn) as ex:
            t_total, plan = timed(lambda: ex.plan(changes), args.repeat)
            result = ex._plan(changes)  # the probes the planner asked for
            t_probes, _ = timed(lambda: ex._run_probes(result), args.repeat)

    n = len(changes)

    def stats(times: list[float]) -> dict[str, float]:
        return {
            "best_ms": round(min(times) * 1000, 2),
            "median_ms": round(statistics.median(times) * 1000, 2),
            "per_change_ms": round(statistics.median(times) * 1000 / n, 3),
        }

    out: dict[str, Any] = {
        "benchmark": "planner",
        "command": "python benchmarks/planner.py "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },
        "server": {"version": version},
        "params": {
            "tables": args.tables,
            "changes": n,
            "rows_per_table": args.rows,
            "repeat": args.repeat,
        },
        "plan": {"steps": len(plan.steps), "probes": len(planned.probes)},
        "timings": {
            "catalog": stats(t_catalog),
            "build_plan": stats(t_build),
            "probes": stats(t_probes),
            "total": stats(t_total),
        },
        "build_plan_scaling": scaling,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(markdown(out))
    print(f"\nresults: {path}", file=sys.stderr)
    return 0


def markdown(r: dict[str, Any]) -> str:
    p = r["params"]
    lines = [
        f"{p['changes']} changes across {p['tables']} tables -> {r['plan']['steps']} steps,"
        f" {r['plan']['probes']} expression probes; PostgreSQL {r['server']['version']};"
        f" median of {p['repeat']} rounds; {r['machine']['cpus']} CPUs.",
        "",
        "| phase | median | best | per change |",
        "|---|---:|---:|---:|",
    ]
    for name, label in (
        ("catalog", "read the catalog"),
        ("build_plan", "build_plan (pure)"),
        ("probes", "compile expressions (probes)"),
        ("total", "Executor.plan() in all"),
    ):
        t = r["timings"][name]
        lines.append(
            f"| {label} | {t['median_ms']:.1f} ms | {t['best_ms']:.1f} ms |"
            f" {t['per_change_ms']:.3f} ms |"
        )
    scaling = r.get("build_plan_scaling") or []
    if scaling:
        lines += ["", "| build_plan on | changes | median | per change |", "|---|---:|---:|---:|"]
        for row in scaling:
            lines.append(
                f"| {row['tables']} table(s) | {row['changes']} | {row['median_ms']:.1f} ms |"
                f" {row['per_change_ms']:.3f} ms |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
