"""Chunks of a backfill's key range and how workers claim them.

A backfill's range (keys or heap blocks that existed at start) is cut into chunks, one row
each in ``onlineschema.chunks``; a chunk row holds its bounds, its cursor and its counters.
A worker claims a chunk in a short transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` picks
one candidate row at a time (so two claimers never look at the same row), and a
*session-level* advisory lock keyed by the chunk makes the claim last as long as the
worker's connection, not a transaction:

* the claim holds no transaction open, so it takes no transaction id and does not hold
  back vacuum (a row lock held for the life of a chunk would), and the worker's batch
  transactions can update the chunk row (its cursor) freely;
* a worker that dies loses its connection, the server ends the session, rolls back the
  batch in flight and drops the advisory lock: the chunk is claimable again at once, its
  cursor exactly where the last committed batch left it;
* every batch locks its chunk row first and reads the cursor from it, so even a claim
  that went wrong could not make two batches start from the same cursor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from ..connection import WORKER_APPLICATION_NAME as WORKER_APPLICATION_NAME
from ..errors import Refused
from ..pooler import is_pooled
from ..sql import batches
from ..sql.batches import Spec
from ..state import BackfillStore, StateStore


@dataclass
class Chunk:
    """One piece of a backfill: for ``range`` keys ``lo..hi`` inclusive with ``cursor`` the
    next key; for ``keyset`` keys after ``lo`` (None: from the start) up to ``hi``
    inclusive, ``cursor`` the last key done; for ``ctid`` blocks ``lo..hi-1``, ``cursor``
    the next block."""

    chunk: int
    lo: Any
    hi: Any
    cursor: Any
    est_rows: float
    done: bool = False
    rows_done: int = 0
    scanned: float = 0.0
    batches: int = 0
    busy_seconds: float = 0.0

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Chunk:
        return cls(
            chunk=r["chunk"],
            lo=r["lo"],
            hi=r["hi"],
            cursor=r["cursor"],
            est_rows=float(r["est_rows"] or 0.0),
            done=bool(r["done"]),
            rows_done=int(r.get("rows_done") or 0),
            scanned=float(r.get("scanned") or 0.0),
            batches=int(r.get("batches") or 0),
            busy_seconds=float(r.get("busy_seconds") or 0.0),
        )

    def fraction(self, strategy: str) -> float:
        """How much of the chunk is done, 0..1."""
        if self.done:
            return 1.0
        if strategy == "range":
            span = self.hi - self.lo + 1
            return min(max((self.cursor - self.lo) / span, 0.0), 1.0) if span > 0 else 1.0
        if strategy == "ctid":
            span = self.hi - self.lo
            return min(max((self.cursor - self.lo) / span, 0.0), 1.0) if span > 0 else 1.0
        return min(self.scanned / self.est_rows, 0.99) if self.est_rows > 0 else 0.0


# --- splitting -------------------------------------------------------------------------


def split_range(lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    """``lo..hi`` (inclusive) in ``n`` contiguous inclusive pieces of near-equal width."""
    span = hi - lo + 1
    n = max(1, min(n, span))
    out: list[tuple[int, int]] = []
    start = lo
    for i in range(n):
        end = lo + (span * (i + 1)) // n - 1
        out.append((start, end))
        start = end + 1
    return out


def split_blocks(blocks: int, n: int) -> list[tuple[int, int]]:
    """Blocks ``0..blocks-1`` in ``n`` half-open ranges ``[lo, hi)``."""
    if blocks <= 0:
        return []
    return [(a, b + 1) for a, b in split_range(0, blocks - 1, n)]


def split_keys(sample: Sequence[list[str]], end: list[str], n: int) -> list[tuple[Any, Any]]:
    """Keyset chunks ``(lo exclusive or None, hi inclusive)`` from a sorted sample of keys."""
    bounds: list[list[str]] = []
    if n > 1 and sample:
        for i in range(1, n):
            b = list(sample[min(len(sample) - 1, math.floor(i * len(sample) / n))])
            if b != end and (not bounds or b != bounds[-1]):
                bounds.append(b)
    out: list[tuple[Any, Any]] = []
    lo: Any = None
    for b in [*bounds, end]:
        out.append((lo, b))
        lo = b
    return out


# --- connections -----------------------------------------------------------------------


def clone_connection(
    conn: psycopg.Connection[Any], application_name: str = WORKER_APPLICATION_NAME
) -> psycopg.Connection[Any]:
    """A new autocommit connection to the same database as ``conn``, as the same role."""
    params: dict[str, Any] = conninfo_to_dict(conn.info.dsn)
    if conn.info.password:
        params["password"] = conn.info.password
    params["application_name"] = application_name
    try:
        return psycopg.connect(
            make_conninfo("", **params),
            autocommit=True,
            connect_timeout=10,
            prepare_threshold=None,  # a transaction pooler may be in between
        )
    except psycopg.OperationalError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise Refused(
            f"could not open another connection for a backfill worker: {first}",
            "give a DSN (not an open connection) when using workers, or use workers=1",
        ) from None


# --- claims ----------------------------------------------------------------------------


#: through a transaction pooler, how long a chunk's claim keeps other workers off it
POOLED_CLAIM_TTL = 10.0


class Claims:
    """Claims chunks of one backfill for one worker connection. Each claim's transaction
    starts with ``timeouts`` (``onlineschema.session.claim_settings``)."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        store: StateStore,
        migration: str,
        step_id: str,
        *,
        timeouts: sql.Composed,
    ) -> None:
        self.conn = conn
        self.timeouts = timeouts
        self.records = BackfillStore.of(store, migration, step_id)
        self.migration = migration
        self.step_id = step_id
        #: hashed by the server into the advisory lock's first key
        self.lock_text = f"onlineschema-chunk:{store.schema}:{migration}:{step_id}"
        #: chunks this session holds (advisory locks are re-entrant within a session)
        self.held: set[int] = set()
        #: through a transaction pooler a session advisory lock would stay with a pooled
        #: server connection: a claim is then the chunk row's claim time instead
        self.pooled = is_pooled(conn)

    def claim(self) -> Chunk | None:
        """The next chunk nobody else holds (now held by this session), or None."""
        if self.pooled:
            return self._claim_row()
        after = -1
        with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(self.timeouts)
            while True:
                row = self.records.next_unclaimed(cur, after, sorted(self.held))
                if row is None:
                    return None
                after = row["chunk"]
                cur.execute(
                    "SELECT pg_try_advisory_lock(hashtext(%s), %s) AS ok",
                    (self.lock_text, row["chunk"]),
                )
                got = cur.fetchone()
                if got and got["ok"]:
                    self.records.mark_claimed(cur, row["chunk"])
                    self.held.add(row["chunk"])
                    return Chunk.from_row(row)

    def _claim_row(self) -> Chunk | None:
        """Through a pooler: the next chunk not done whose claim is free (released, or
        older than POOLED_CLAIM_TTL: its worker died or is slow, and working it twice at
        once is safe, since every batch locks the chunk's row and reads its cursor)."""
        t = self.records.t("chunks")
        with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(self.timeouts)
            cur.execute(
                sql.SQL(
                    "SELECT chunk, lo, hi, cursor, est_rows, done, rows_done, scanned"
                    " FROM {} WHERE migration = %s AND step_id = %s AND NOT done"
                    " AND NOT (chunk = ANY(%s)) AND (claimed_at IS NULL"
                    " OR claimed_at < now() - make_interval(secs => %s))"
                    " ORDER BY chunk LIMIT 1 FOR UPDATE SKIP LOCKED"
                ).format(t),
                (self.migration, self.step_id, sorted(self.held), POOLED_CLAIM_TTL),
            )
            row = cur.fetchone()
            if row is None:
                return None
            self.records.mark_claimed(cur, row["chunk"])
        self.held.add(row["chunk"])
        return Chunk.from_row(row)

    def release(self, chunk: int) -> None:
        self.held.discard(chunk)
        if self.conn.closed or self.conn.broken:
            return
        if self.pooled:
            with self.conn.cursor() as cur:
                cur.execute(
                    sql.SQL(
                        "UPDATE {} SET claimed_at = NULL WHERE migration = %s AND step_id = %s"
                        " AND chunk = %s"
                    ).format(self.records.t("chunks")),
                    (self.migration, self.step_id, chunk),
                )
            return
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(hashtext(%s), %s)", (self.lock_text, chunk))

    def remaining(self) -> int:
        """Chunks not done yet (claimed by someone or not)."""
        return self.records.remaining(self.conn)


def load_chunks(conn: psycopg.Connection[Any], records: BackfillStore) -> list[Chunk]:
    """Every chunk of the backfill, as last committed."""
    return [Chunk.from_row(r) for r in records.chunks(conn)]


# --- cutting the work ------------------------------------------------------------------


def _estimate_rows(cur: psycopg.Cursor[Any], spec: Spec) -> tuple[int, int]:
    """(estimated rows, current blocks) of the table, without reading all of it."""
    cur.execute(
        "SELECT c.reltuples::float8, c.relpages::bigint,"
        " (pg_relation_size(c.oid) / current_setting('block_size')::int)::bigint"
        " FROM pg_class c WHERE c.oid = %s::regclass",
        (spec.regclass,),
    )
    row = cur.fetchone()
    assert row is not None
    reltuples, relpages, blocks = float(row[0]), int(row[1]), int(row[2])
    if blocks == 0:
        return 0, 0
    if reltuples >= 0 and relpages > 0:
        return int(reltuples / relpages * blocks), blocks
    # never analyzed: count a sample of about 100 blocks
    pct = min(100.0, 100.0 * 100 / blocks)
    cur.execute(batches.sample_count(spec, pct))
    crow = cur.fetchone()
    return int((crow[0] if crow else 0) * 100.0 / pct), blocks


def cut(
    cur: psycopg.Cursor[Any], spec: Spec, n: int
) -> tuple[Any, int, list[tuple[Any, Any, float]]]:
    """Freeze the work and cut it in about ``n`` chunks: (the end of the work, the
    estimated rows, the chunks as ``(lo, hi, estimated rows)``). ``end`` is the largest
    key (``range``, ``keyset``) or the table's block count (``ctid``) now; rows written
    later get their value from the column default or the plan's trigger."""
    s = spec
    pieces: list[tuple[Any, Any, float]] = []  # (lo, hi, est_rows)
    estimate, blocks = _estimate_rows(cur, s)
    end: Any = None
    if s.strategy == "range":
        cur.execute(batches.key_bounds(s))
        lo, hi = cur.fetchone() or (None, None)
        if lo is not None and hi is not None:
            end = hi
            span = hi - lo + 1
            for a, b in split_range(lo, hi, n):
                pieces.append((a, b, estimate * (b - a + 1) / span))
    elif s.strategy == "keyset":
        cur.execute(batches.last_key(s))
        last = cur.fetchone()
        if last is not None:
            end = list(last)
            pct = min(100.0, 100.0 * 200 / max(blocks, 1))
            cur.execute(batches.key_sample(s, pct))
            sample = [list(r) for r in cur.fetchall()]
            keyed = split_keys(sample, end, n)
            for a, b in keyed:
                pieces.append((a, b, estimate / len(keyed)))
    else:  # ctid: the blocks that exist now
        end = blocks
        for a, b in split_blocks(blocks, n):
            pieces.append((a, b, estimate * (b - a) / blocks))
    return end, estimate, pieces


def density(strategy: str, chunks: Sequence[Chunk]) -> float:
    """Rows per key (``range``) or per block (``ctid``), from the chunks' estimates."""
    if not chunks:
        return 1.0
    rows = sum(c.est_rows for c in chunks)
    if strategy == "range":
        span = sum(c.hi - c.lo + 1 for c in chunks)
        return min(max(rows / span, 1e-12), 1.0) if span > 0 and rows > 0 else 1.0
    if strategy == "ctid":
        blocks = sum(c.hi - c.lo for c in chunks)
        return max(rows / blocks, 1.0) if blocks > 0 and rows > 0 else 50.0
    return 1.0


def fraction_done(strategy: str, chunks: Sequence[Chunk]) -> float:
    """How much of the whole backfill is done, 0..1, weighing chunks by their rows."""
    if not chunks:
        return 1.0
    total = sum(max(c.est_rows, 1e-9) for c in chunks)
    return sum(max(c.est_rows, 1e-9) * c.fraction(strategy) for c in chunks) / total
