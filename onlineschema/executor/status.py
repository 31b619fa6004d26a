"""The status view: migrations with their steps and backfill progress, as plain data
(what ``onlineschema status`` shows and ``--format json`` prints)."""

from __future__ import annotations

from typing import Any

from ..plan import Plan
from ..state import StateStore

__all__ = ["status_view"]


def status_view(store: StateStore, name: str | None = None) -> list[dict[str, Any]]:
    """Migrations with their steps and backfill progress, as plain data."""
    rows = [store.require(name)] if name else store.all()
    out = []
    for row in rows:
        plan = Plan.from_dict(row["plan"])
        states = store.steps(row["name"])
        fills = {b["step_id"]: b for b in store.backfills(row["name"])}
        steps = []
        for s in plan.steps:
            st = states.get(s.id, {})
            entry: dict[str, Any] = {
                "id": s.id,
                "phase": s.phase,
                "description": s.description,
                "state": st.get("state"),
                "attempts": st.get("attempts"),
                "last_error": st.get("last_error"),
            }
            b = fills.get(s.id)
            if b:
                # rate and ETA as the running backfill measured them (wall time, so
                # throttled time counts); ETA only while the step is unfinished
                rate = b["rows_per_second"]
                eta = b["eta_seconds"] if st.get("state") != "done" else 0.0
                entry["backfill"] = {
                    "rows_done": b["rows_done"],
                    "rows_total": b["rows_total"],
                    "progress": b["progress"],
                    "rows_per_second": round(rate, 1) if rate else None,
                    "eta_seconds": round(eta, 1) if eta is not None else None,
                    "batches": b["batches"],
                    "batch_size": b["batch_size"],
                    "busy_seconds": round(b["busy_seconds"] or 0.0, 3),
                    "throttled_seconds": round(b["throttled_seconds"] or 0.0, 3),
                    "throttle_reason": b["throttle_reason"],
                    "workers": b["workers"],
                    "chunks": b["chunks"],
                }
            steps.append(entry)
        out.append(
            {
                "name": row["name"],
                "state": row["state"],
                "plan_hash": row["plan_hash"],
                "created_at": row["created_at"].isoformat(),
                "updated_at": row["updated_at"].isoformat(),
                "last_error": row["last_error"],
                "steps": steps,
            }
        )
    return out
