"""The backfill engine: an UPDATE over a live table, in short batches, exactly once.

* Strategy per table: a single integer key -> ranges (``id >= a AND id < b``, no sort);
  another key -> keyset batches (``(a, b) > (x, y) AND (a, b) <= (p, q)``); no key ->
  ``ctid`` block ranges (only for fills guarded by ``col IS NULL``, which a row moved by
  its own update cannot match again). Batches run with ``enable_seqscan`` off, so each
  reads its slice through the key's index (or a TID range scan), never the whole table.
* The work is bounded at start: the largest key (or the table's last block) is frozen;
  rows written later get their value from the column default or the plan's trigger.
* The range is cut into chunks (``onlineschema.chunks``); workers claim chunks (see
  ``chunks.py``), each on its own connection. Each batch commits its rows and its chunk's
  cursor in one transaction: a crash loses nothing and repeats nothing, even for a
  non-idempotent ``SET n = n + 1``.
* Batch size follows a lock-hold budget per batch (``batch_target``), lowered while
  sessions wait on the batches' rows (``pace.py``); a batch that hits its statement
  timeout is split, not retried as is. Lock timeouts, deadlocks and serialization
  failures are retried with backoff.
* Between batches a worker rests (``duty_cycle``) only while the application is
  affected, and waits while a throttle signal is engaged (``throttle.py``).
* Pause, live settings, signals, progress and a periodic plain ``VACUUM`` of the table
  (so that later batches reuse the space of the rows earlier ones replaced) are handled by
  one coordinator: between batches when there is one worker, from the main thread while
  worker threads run otherwise.

Modules: ``settings`` (BackfillSettings), ``pace`` (batch sizes and rests), ``chunks`` (cutting the work, claiming chunks),
``engine`` (BackfillRunner: prepare, workers, batches), ``coordinator`` (control, signals,
progress), ``vacuum`` (the backfill's own VACUUM); the SQL on the user's table is composed
in ``onlineschema.sql.batches``, the state rows are written by ``state.BackfillStore``.
"""

from ..sql.batches import Spec
from .coordinator import Observer
from .engine import BackfillRunner, Batch, NotJoinable
from .settings import BackfillSettings

__all__ = [
    "BackfillRunner",
    "BackfillSettings",
    "Batch",
    "NotJoinable",
    "Observer",
    "Spec",
]
