"""Chunks of a backfill and their claims now live in ``onlineschema.backfill.chunks``;
this module keeps the old import path working (a plain re-export, no warning)."""

from .backfill.chunks import (
    WORKER_APPLICATION_NAME,
    Chunk,
    Claims,
    clone_connection,
    load_chunks,
    split_blocks,
    split_keys,
    split_range,
)

__all__ = [
    "WORKER_APPLICATION_NAME",
    "Chunk",
    "Claims",
    "clone_connection",
    "load_chunks",
    "split_blocks",
    "split_keys",
    "split_range",
]
