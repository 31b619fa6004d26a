"""``onlineschema status NAME --watch``: a live view of a migration, read from the database.

Everything shown comes from the state schema and the server's views, so it works from
any machine that can reach the database while another process runs the migration: the
steps and their states, the backfill's progress bar with rows, rate, ETA and throttle
reason, and the sessions in the migration's way (holding a lock its running step needs,
or blocking its session). It redraws every ``interval`` seconds and returns when the
migration has ended (no process holds it and its state is not ``running``), or on Ctrl-C.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..locks import find_blockers

if TYPE_CHECKING:
    from ..executor import Executor

ACTIVE = ("running", "aborting")

_BLOCKING_SQL = """
SELECT a.pid, a.application_name, a.state, a.wait_event_type,
       extract(epoch FROM now() - a.xact_start)::float8 AS xact_age_s, 'blocks it' AS mode,
       NULL::text AS relation, left(a.query, 120) AS query
FROM pg_stat_activity a
WHERE a.pid = ANY(pg_blocking_pids(%s))
"""


def snapshot(ex: Executor, name: str) -> dict[str, Any]:
    """What the view shows, read now: the status data, the running process, blockers."""
    data = ex.status(name)[0]
    holder = ex.lock_holder(name)
    data["holder"] = holder
    blockers: list[dict[str, Any]] = []
    running = next((s for s in data["steps"] if s["state"] == "running"), None)
    if holder is not None:
        try:
            with ex.conn.cursor(row_factory=dict_row) as cur:
                cur.execute(_BLOCKING_SQL, (holder["pid"],))
                blockers = cur.fetchall()
            if running is not None:
                plan = ex.stored_plan(name)
                step = next((s for s in plan.steps if s.id == running["id"]), None)
                if step is not None and step.tables and step.lock:
                    seen = {b["pid"] for b in blockers}
                    for b in find_blockers(ex.conn, step.tables, step.lock):
                        if b["pid"] not in seen and b["pid"] != holder["pid"]:
                            blockers.append(b)
        except psycopg.Error:
            blockers = []
    data["blockers"] = blockers
    return data


def ended(data: dict[str, Any]) -> bool:
    return data.get("holder") is None and data["state"] not in ACTIVE


def render(data: dict[str, Any], now: float | None = None) -> RenderableType:
    from ..cli.progress import format_seconds

    parts: list[RenderableType] = []
    who = data.get("holder")
    runner = (
        f"run by session {who['pid']} ({who.get('application_name') or '?'})"
        if who
        else "no process is running it"
    )
    done = sum(1 for s in data["steps"] if s["state"] == "done")
    head = Text.assemble(
        ("migration ", ""),
        (data["name"], "bold"),
        (": ", ""),
        (data["state"], "bold green" if data["state"] in ("completed",) else "bold"),
        (f"  {done}/{len(data['steps'])} steps done; {runner}", ""),
    )
    parts.append(head)
    table = Table(expand=False)
    for col in ("#", "step", "phase", "state"):
        table.add_column(col)
    for i, s in enumerate(data["steps"], 1):
        style = "bold yellow" if s["state"] == "running" else None
        table.add_row(str(i), s["id"], s["phase"], s["state"] or "", style=style)
    parts.append(table)
    for s in data["steps"]:
        b = s.get("backfill")
        if not b:
            continue
        total = b["rows_total"]
        total = max(total, b["rows_done"]) if total is not None else None
        bar = ProgressBar(
            total=float(total or max(b["rows_done"], 1)),
            completed=float(b["rows_done"]),
            width=40,
        )
        line = Table.grid(padding=(0, 1))
        line.add_row(
            Text(f"backfill {s['id']}"),
            bar,
            Text(
                f"{b['rows_done']:,}/{total:,} rows"
                if total is not None
                else f"{b['rows_done']:,} rows"
            ),
        )
        parts.append(line)
        info = []
        if b["rows_per_second"]:
            info.append(f"{b['rows_per_second']:,.0f} rows/s")
        if b["eta_seconds"] is not None and s["state"] != "done":
            info.append(f"ETA {format_seconds(b['eta_seconds'])}")
        info.append(f"batch {b['batch_size']:,} rows" if b["batch_size"] else "")
        info.append(
            f"throttled: {b['throttle_reason']}" if b["throttle_reason"] else "not throttled"
        )
        if b["throttled_seconds"]:
            info.append(f"throttled {format_seconds(b['throttled_seconds'])} in all")
        parts.append(Text("  " + "  ".join(i for i in info if i)))
    blockers = data.get("blockers") or []
    if blockers:
        bt = Table(title="in the way", title_justify="left")
        for col in ("pid", "application", "state", "xact age", "lock", "query"):
            bt.add_column(col)
        for b in blockers:
            age = b.get("xact_age_s")
            bt.add_row(
                str(b.get("pid")),
                str(b.get("application_name") or ""),
                str(b.get("state") or ""),
                format_seconds(float(age)) if age is not None else "",
                str(b.get("mode") or ""),
                str(b.get("query") or b.get("query_hidden") or ""),
            )
        parts.append(bt)
    else:
        parts.append(Text("no session in its way"))
    if data.get("last_error"):
        parts.append(Text(f"last error: {data['last_error']}", style="red"))
    return Group(*parts)


def watch(
    ex: Executor,
    name: str,
    *,
    interval: float = 1.0,
    console: Console | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any] | None:
    """Redraw ``name``'s view until the migration ends or Ctrl-C; returns the last data
    read (None if Ctrl-C came before the first read).

    Ctrl-C ends the view wherever it lands, drawing the first screen included: watching
    changes nothing, so stopping it is never an error."""
    console = console or Console()
    data: dict[str, Any] | None = None
    try:
        data = snapshot(ex, name)
        with Live(render(data), console=console, auto_refresh=False, transient=False) as live:
            while not ended(data):
                sleep(interval)
                data = snapshot(ex, name)
                live.update(render(data), refresh=True)
    except KeyboardInterrupt:
        pass
    return data
