"""A small live application for ``onlineschema demo``: reads and writes on a table while a
migration runs, with every request's start time and latency recorded.

Each client is a thread with its own autocommit psycopg connection. It sends point reads,
updates and inserts at a steady pace (``rate`` requests per second per client), so a
stall shows up as requests that take long and as a gap in completions, not as a change in
how hard the clients push. The workload ends by itself after ``max_duration`` seconds at
the latest (or earlier with :meth:`Workload.stop`); a request still stuck in a lock wait
then is cancelled. It only talks to a server on this machine (loopback or a unix socket):
it is a demonstration load, not a load generator to point at a real database.

>>> with Workload(dsn, OrdersTable(max_id=20_000, users=1_000)) as wl:   # doctest: +SKIP
...     time.sleep(5)
>>> summarize(wl.samples, 1.0, 4.0).p99                                 # doctest: +SKIP
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

__all__ = [
    "OrdersTable",
    "Sample",
    "Summary",
    "Workload",
    "check_loopback",
    "summarize",
]

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def check_loopback(dsn: str) -> None:
    """Refuse a DSN that points anywhere but this machine (ValueError)."""
    params = conninfo_to_dict(dsn)
    hosts = [h for h in str(params.get("host") or "").split(",") if h]
    hostaddrs = [h for h in str(params.get("hostaddr") or "").split(",") if h]
    for host in hosts + hostaddrs:
        if host.startswith("/") or host.startswith("@") or host in _LOOPBACK:
            continue
        if host.startswith("127."):
            continue
        raise ValueError(
            f"the demo workload only runs against a server on this machine, not {host!r}"
        )


@dataclass(frozen=True)
class OrdersTable:
    """What the workload needs to know about the demo's ``orders`` table."""

    max_id: int  # ids 1..max_id exist when the workload starts
    users: int  # users 1..users exist (orders.user_id references them)
    table: str = "orders"


@dataclass(frozen=True)
class Sample:
    """One request: when it started (seconds on the workload's clock), how long it took,
    what it was, and the SQLSTATE if it failed."""

    start: float
    latency: float
    op: str
    error: str | None = None

    @property
    def end(self) -> float:
        return self.start + self.latency


@dataclass
class _Client:
    index: int
    samples: list[Sample] = field(default_factory=list)
    conn: psycopg.Connection[Any] | None = None
    thread: threading.Thread | None = None
    failure: BaseException | None = None
    busy_since: float | None = None  # start of the request in flight, if any


class Workload:
    """``clients`` threads doing point reads (60 %), updates (30 %) and inserts (10 %)
    on ``table`` at ``rate`` requests per second each, until :meth:`stop` or
    ``max_duration``. ``samples`` holds every request once the workload has stopped."""

    MIX: Sequence[tuple[str, float]] = (("read", 0.6), ("update", 0.3), ("insert", 0.1))

    def __init__(
        self,
        dsn: str,
        table: OrdersTable,
        *,
        clients: int = 4,
        rate: float = 100.0,
        max_duration: float = 120.0,
        statement_timeout: float = 120.0,
        application_name: str = "demo-app",
        seed: int = 1,
    ) -> None:
        check_loopback(dsn)
        if clients < 1 or rate <= 0 or max_duration <= 0:
            raise ValueError("clients, rate and max_duration must be positive")
        self.dsn = dsn
        self.table = table
        self.clients = clients
        self.rate = rate
        self.max_duration = max_duration
        self.statement_timeout = statement_timeout
        self.application_name = application_name
        self.seed = seed
        self._stop = threading.Event()
        self._clients: list[_Client] = []
        self._t0 = 0.0
        self._started = False
        self._stopped = False

    # --- clock ------------------------------------------------------------------

    @property
    def t0(self) -> float:
        """``time.monotonic()`` at the start; sample times are seconds since then."""
        return self._t0

    def now(self) -> float:
        """Seconds since the workload started, on the samples' clock."""
        return time.monotonic() - self._t0

    # --- lifecycle --------------------------------------------------------------

    def start(self) -> Workload:
        if self._started:
            return self
        self._started = True
        self._clients = [_Client(i) for i in range(self.clients)]
        for client in self._clients:  # connect first, so that the clock starts warm
            client.conn = psycopg.connect(
                self.dsn,
                autocommit=True,
                application_name=self.application_name,
                connect_timeout=10,
                options=f"-c statement_timeout={int(self.statement_timeout * 1000)}",
            )
        self._t0 = time.monotonic()
        for client in self._clients:
            client.thread = threading.Thread(
                target=self._run_client, args=(client,), name=f"workload-{client.index}",
                daemon=True,
            )  # fmt: skip
            client.thread.start()
        return self

    def stop(self) -> list[Sample]:
        """Stop the clients (cancelling a request that is still waiting) and return all
        samples, ordered by start time."""
        if not self._started or self._stopped:
            return self.samples
        self._stop.set()
        deadline = time.monotonic() + 2.0
        for client in self._clients:
            assert client.thread is not None
            client.thread.join(max(deadline - time.monotonic(), 0.0))
        for client in self._clients:
            assert client.thread is not None and client.conn is not None
            if client.thread.is_alive():
                client.conn.cancel_safe(timeout=5.0)
                client.thread.join(10.0)
            client.conn.close()
        self._stopped = True
        failures = [c.failure for c in self._clients if c.failure is not None]
        if failures:
            raise RuntimeError(f"a workload client failed: {failures[0]!r}") from failures[0]
        return self.samples

    def __enter__(self) -> Workload:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def samples(self) -> list[Sample]:
        out = [s for c in self._clients for s in c.samples]
        out.sort(key=lambda s: s.start)
        return out

    def recent(self, seconds: float) -> list[Sample]:
        """Samples that ended in the last ``seconds`` (cheap enough for a live display;
        the lists are only appended to, so reading them from another thread is safe)."""
        since = self.now() - seconds
        out: list[Sample] = []
        for client in self._clients:
            samples = client.samples
            for i in range(len(samples) - 1, -1, -1):  # each client's samples end in order
                if samples[i].end < since:
                    break
                out.append(samples[i])
        return out

    def in_flight(self) -> float:
        """The age of the oldest request still waiting for an answer (0 if none)."""
        now = self.now()
        oldest = 0.0
        for client in self._clients:
            started = client.busy_since
            if started is not None:
                oldest = max(oldest, now - started)
        return oldest

    # --- one client -------------------------------------------------------------

    def _run_client(self, client: _Client) -> None:
        rng = random.Random(self.seed * 1000 + client.index)
        interval = 1.0 / self.rate
        next_at = self.now() + rng.random() * interval  # spread the clients out
        ops = [op for op, _ in self.MIX]
        weights = [w for _, w in self.MIX]
        assert client.conn is not None
        cur = client.conn.cursor()
        try:
            while not self._stop.is_set() and next_at < self.max_duration:
                pause = next_at - self.now()
                if pause > 0 and self._stop.wait(pause):
                    break
                op = rng.choices(ops, weights)[0]
                start = self.now()
                client.busy_since = start
                error: str | None = None
                try:
                    self._request(cur, op, rng)
                except psycopg.Error as exc:
                    if client.conn.closed or client.conn.broken:
                        raise
                    error = exc.sqlstate or type(exc).__name__
                end = self.now()
                client.busy_since = None
                client.samples.append(Sample(start, end - start, op, error))
                # a steady pace; after a stall, carry on from now (no burst to catch up)
                next_at = max(next_at + interval, end)
        except BaseException as exc:  # reported by stop()
            if not self._stop.is_set():
                client.failure = exc
        finally:
            client.busy_since = None
            cur.close()

    def _request(self, cur: psycopg.Cursor[Any], op: str, rng: random.Random) -> None:
        t = self.table
        order_id = rng.randint(1, t.max_id)
        if op == "read":
            cur.execute(
                "SELECT id, user_id, amount, currency, created_at FROM orders WHERE id = %s",
                (order_id,),
            )
            cur.fetchall()
        elif op == "update":
            cur.execute(
                "UPDATE orders SET amount = %s, updated_at = now() WHERE id = %s",
                (round(rng.uniform(1, 500), 2), order_id),
            )
        else:
            cur.execute(
                "INSERT INTO orders (user_id, amount, currency) VALUES (%s, %s, %s)",
                (rng.randint(1, t.users), round(rng.uniform(1, 500), 2), "EUR"),
            )


# --- statistics -----------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """What the application saw during a window of time."""

    requests: int  # requests that ran (at least partly) inside the window
    completed: int  # requests that finished inside the window
    errors: int
    seconds: float
    throughput: float  # requests finished per second inside the window
    p50: float
    p99: float
    max_wait: float  # the longest request, or the longest still running at the window's end
    longest_gap: float  # longest time inside the window with no request finishing


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(math.ceil(q / 100 * len(ordered)) - 1, 0)
    return ordered[rank]


def summarize(samples: Sequence[Sample], start: float, end: float) -> Summary:
    """Statistics of the requests overlapping ``[start, end]`` (workload clock)."""
    seconds = max(end - start, 1e-9)
    overlapping = [s for s in samples if s.end >= start and s.start <= end]
    finished = sorted(s.end for s in samples if start <= s.end <= end)
    latencies = [s.latency for s in overlapping]
    gaps = [b - a for a, b in zip([start, *finished], [*finished, end], strict=True)]
    return Summary(
        requests=len(overlapping),
        completed=len(finished),
        errors=sum(1 for s in overlapping if s.error),
        seconds=seconds,
        throughput=len(finished) / seconds,
        p50=_percentile(latencies, 50),
        p99=_percentile(latencies, 99),
        max_wait=max(latencies, default=0.0),
        longest_gap=max(gaps, default=seconds),
    )
