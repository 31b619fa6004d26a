"""How ``onlineschema status`` shows migrations on a terminal (rich tables)."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from typing import Any

__all__ = ["list_table", "migration_view", "stdout_console"]


def stdout_console(console_cls: Any) -> Any:
    terminal = sys.stdout.isatty()
    width = None if terminal else int(os.environ.get("COLUMNS") or 200)
    return console_cls(file=sys.stdout, width=width, highlight=False, soft_wrap=False)


def _when(text: str | None) -> str:
    if not text:
        return ""
    try:
        return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return text


def _first_line(text: str | None, limit: int = 80) -> str:
    if not text:
        return ""
    line = text.strip().splitlines()[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def list_table(data: list[dict[str, Any]], schema: str) -> Any:
    from rich.table import Table

    if not data:
        return f"no migrations recorded in schema {schema}"
    table = Table(title="migrations", title_justify="left")
    for col in ("name", "state", "steps done", "updated", "last error"):
        table.add_column(col)
    for m in data:
        done = sum(1 for s in m["steps"] if s["state"] == "done")
        table.add_row(
            m["name"],
            m["state"],
            f"{done}/{len(m['steps'])}",
            _when(m["updated_at"]),
            _first_line(m["last_error"]),
        )
    return table


def migration_view(m: dict[str, Any]) -> list[Any]:
    from rich.table import Table

    from .progress import format_seconds

    head = (
        f"migration {m['name']}: {m['state']}  (created {_when(m['created_at'])},"
        f" updated {_when(m['updated_at'])}, plan {m['plan_hash']})"
    )
    out: list[Any] = [head]
    if m["last_error"]:
        out.append(f"last error: {m['last_error']}")
    table = Table()
    for col, justify in (
        ("#", "right"),
        ("step", "left"),
        ("phase", "left"),
        ("state", "left"),
        ("attempts", "right"),
        ("rows done / total", "right"),
        ("rows/s", "right"),
        ("ETA", "right"),
        ("throttle", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for i, s in enumerate(m["steps"], 1):
        b = s.get("backfill")
        rows = rate = eta = throttle = ""
        if b:
            total = f"{b['rows_total']:,}" if b["rows_total"] is not None else "?"
            rows = f"{b['rows_done']:,} / {total}"
            rate = f"{b['rows_per_second']:,.0f}" if b["rows_per_second"] else ""
            eta = format_seconds(b["eta_seconds"]) if b["eta_seconds"] is not None else ""
            throttle = b["throttle_reason"] or ""
        table.add_row(
            str(i),
            s["id"],
            s["phase"],
            s["state"] or "",
            str(s["attempts"] or 0),
            rows,
            rate,
            eta,
            throttle,
        )
    out.append(table)
    for s in m["steps"]:
        if s["last_error"]:
            out.append(f"step {s['id']}: {s['last_error']}")
    return out
