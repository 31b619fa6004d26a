"""Whether the server has WAL segments ready for what the backfill will write.

A server writes WAL into 16 MB segment files. At each checkpoint it keeps the old ones
for reuse (renamed, up to ``min_wal_size`` or what its recent checkpoints needed, capped
by ``max_wal_size``) and removes the rest. A backfill writes far more WAL than the
server's usual traffic: a new version of every row, the full-page image of every page it
first touches after a checkpoint, the index entries. Once it has used the segments kept
for reuse, the server creates a new file for every 16 MB, inside the WAL write that
needs it, and every commit waits meanwhile: 100-200 ms when the file is zero-filled
(``wal_init_zero``, the default), 50-60 ms without, on the benchmark's disk
(``benchmarks/README.md``, lock impact). That lasts until a checkpoint keeps enough
segments again. The backfill cannot make segments; it says so before its first batch,
with what to do, when it can read the WAL directory (superuser or ``pg_monitor``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

#: WAL a backfill writes per byte of its table and indexes (new row versions, full-page
#: images, index entries): 3.0 measured (tests/test_wal_supply.py's table, a checkpoint
#: just before, PostgreSQL 15 and 18); an estimate, not a bound
WAL_PER_BYTE = 3.0

MB = 2**20


@dataclass(frozen=True)
class WalSupply:
    """What the server has ready against what the backfill will write (bytes)."""

    ready: int  #: WAL segments ahead of the one being written, kept for reuse
    needed: int  #: the backfill's WAL, estimated from the table's and indexes' size
    min_wal_size: int
    max_wal_size: int
    segment: int
    init_zero: bool

    @property
    def before_checkpoint(self) -> int:
        """What the backfill writes before the server's next checkpoint at the latest
        (by ``max_wal_size``), which from then on keeps what the backfill's pace needs."""
        return min(self.needed, self.max_wal_size)

    @property
    def short(self) -> bool:
        """More WAL to write before the next checkpoint than segments ready for it."""
        return self.before_checkpoint > self.ready + self.segment

    def advice(self) -> str:
        created = "zero-filled and synced" if self.init_zero else "created and synced"
        want = self.before_checkpoint
        return (
            f"the backfill will write about {self.needed // MB} MB of WAL and the server"
            f" has {self.ready // MB} MB of WAL segments ready for reuse: past them each"
            f" new {self.segment // MB} MB segment is {created} while every commit waits,"
            " until a checkpoint keeps segments again. Raise min_wal_size (now"
            f" {self.min_wal_size // MB} MB) to {want // MB} MB or more (ALTER SYSTEM SET"
            f" min_wal_size = '{want // MB}MB'; SELECT pg_reload_conf()) and let a"
            " checkpoint pass before the migration: checkpoints then keep the segments"
            " they retire for reuse (as many as the server wrote since the one before)"
        )


def read_supply(
    conn: psycopg.Connection[Any], table_oid: int, fraction_left: float
) -> WalSupply | None:
    """None when this role may not list the WAL directory, or on a standby."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT has_function_privilege('pg_ls_waldir()', 'EXECUTE') AND NOT pg_is_in_recovery()"
        )
        row = cur.fetchone()
        if not (row and row[0]):
            return None
        cur.execute(
            "SELECT (SELECT count(*) FROM pg_ls_waldir()"
            "        WHERE name ~ '^[0-9A-F]{24}$'"
            "        AND name > pg_walfile_name(pg_current_wal_insert_lsn())),"
            " pg_table_size(%s) + pg_indexes_size(%s),"
            " pg_size_bytes(current_setting('min_wal_size')),"
            " pg_size_bytes(current_setting('max_wal_size')),"
            " pg_size_bytes(current_setting('wal_segment_size')),"
            " current_setting('wal_init_zero')::bool",
            (table_oid, table_oid),
        )
        row = cur.fetchone()
    assert row is not None
    segments, size, min_wal, max_wal, segment, init_zero = row
    return WalSupply(
        ready=int(segments) * int(segment),
        needed=int(WAL_PER_BYTE * int(size) * max(min(fraction_left, 1.0), 0.0)),
        min_wal_size=int(min_wal),
        max_wal_size=int(max_wal),
        segment=int(segment),
        init_zero=bool(init_zero),
    )
