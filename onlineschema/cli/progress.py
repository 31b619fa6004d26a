"""Progress bars for the command line: one for the plan's steps, one per backfill with
rows done, rows per second and the engine's ETA (which counts throttled time).

Shown only when stderr is a terminal; otherwise :func:`progress_observer` yields ``None``
and the executor runs without an observer (the structured logs say the same things).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from ..plan import Step, StepKind


class RichProgress:
    """An :class:`onlineschema.executor.Observer` drawing on a rich console (stderr)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[count]}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            redirect_stdout=False,
            redirect_stderr=True,
        )
        self._plan: TaskID | None = None
        self._fills: dict[str, TaskID] = {}
        self._started = False

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        if not self._started:
            self.progress.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self.progress.stop()
            self._started = False

    def __enter__(self) -> RichProgress:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- Observer --------------------------------------------------------------------

    def step_started(self, step: Step, index: int, total: int) -> None:
        text = f"step {index + 1}/{total}: {_shorten(step.description, 44)}"
        if self._plan is None:
            self._plan = self.progress.add_task(
                text, total=total, completed=index, count=f"{index}/{total} steps", info=""
            )
        else:
            self.progress.update(
                self._plan, description=text, completed=index, count=f"{index}/{total} steps"
            )
        if step.kind is StepKind.BACKFILL and step.id not in self._fills:
            self._fills[step.id] = self.progress.add_task(
                _shorten(f"  backfill {', '.join(step.tables)}", 54),
                total=None,
                count="",
                info="starting",
            )

    def step_finished(self, step: Step, index: int, total: int, skipped: bool) -> None:
        if self._plan is not None:
            self.progress.update(
                self._plan, completed=index + 1, count=f"{index + 1}/{total} steps"
            )
        task = self._fills.get(step.id)
        if task is not None:
            done = int(self.progress.tasks[_position(self.progress, task)].completed)
            self.progress.update(task, total=max(done, 1), completed=max(done, 1), info="done")

    def backfill_progress(
        self,
        step_id: str,
        rows_done: int,
        rows_total: int | None,
        rate: float,
        eta: float | None,
        throttle: str | None,
    ) -> None:
        task = self._fills.get(step_id)
        if task is None:
            task = self._fills[step_id] = self.progress.add_task(
                f"  backfill {step_id}", total=None, count="", info=""
            )
        # rows_total is an estimate (pg_class.reltuples): never let the bar run past it
        total = max(rows_total, rows_done) if rows_total is not None else None
        count = f"{rows_done:,}" + (f"/{total:,} rows" if total is not None else " rows")
        info = f"{rate:,.0f} rows/s"
        if eta is not None:
            info += f"  ETA {format_seconds(eta)}"
        if throttle:
            info += f"  throttled: {throttle}"
        self.progress.update(task, total=total, completed=rows_done, count=count, info=info)


def _position(progress: Progress, task: TaskID) -> int:
    for i, t in enumerate(progress.tasks):
        if t.id == task:
            return i
    raise KeyError(task)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_seconds(seconds: float) -> str:
    """``75.2`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"``."""
    s = max(round(seconds), 0)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def progress_observer(enabled: bool | None = None) -> Iterator[RichProgress | None]:
    """Yield a started :class:`RichProgress` when stderr is a terminal (or ``enabled``),
    else ``None``; the bars are stopped (and left on screen) on exit."""
    if enabled is None:
        enabled = stderr_is_terminal()
    if not enabled:
        yield None
        return
    display = RichProgress()
    with display:
        yield display
