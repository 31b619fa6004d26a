"""The partition tree of a partitioned table as the planner sees it (the catalog read
its partitions down to the leaves), and the run-time check that it is still the tree
the plan was made for. Step sequences on partitioned tables: ``planner.partitions``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..sql import ddl
from .model import VTable


class Tables(Protocol):
    """What the tree needs of the planner: its model of the tables, and refusals."""

    tables: dict[tuple[str, str], VTable]

    def refuse(self, problem: str, fix: str | None = None) -> None: ...


def is_partitioned(t: VTable) -> bool:
    return t.info is not None and t.info.relkind == "p"


@dataclass
class Node:
    table: VTable
    parent: Node | None
    depth: int

    @property
    def partitioned(self) -> bool:
        return is_partitioned(self.table)


def tree(ctx: Tables, t: VTable, *, quiet: bool = False) -> list[Node] | None:
    """``t`` and its partitions, parents before their partitions (None, refused, if a
    partition was not read)."""
    out: list[Node] = []

    def walk(v: VTable, parent: Node | None, depth: int) -> bool:
        node = Node(v, parent, depth)
        out.append(node)
        if v.info is None:
            return True
        for key in v.info.partitions:
            child = ctx.tables.get(key)
            if child is None:
                if quiet:
                    return False
                ctx.refuse(
                    f"partition {key[0]}.{key[1]} of {v.qual} is not a table onlineschema can"
                    " change online (a foreign table), or could not be read",
                    "change that partition yourself, or detach it for the migration; check"
                    " that the role can read every partition",
                )
                return False
            if not walk(child, node, depth + 1):
                return False
        return True

    return out if walk(t, None, 0) else None


def leaves(ctx: Tables, t: VTable, *, quiet: bool = False) -> list[VTable] | None:
    nodes = tree(ctx, t, quiet=quiet)
    return None if nodes is None else [n.table for n in nodes if not n.partitioned]


def partitions_unchanged(ctx: Tables, t: VTable, *, allow_new: bool = False) -> str:
    """The statement that fails unless the leaf partitions of ``t`` are those planned."""
    ls = leaves(ctx, t) or []
    return ddl.assert_partitions(
        t.schema, t.name, [(v.schema, v.name) for v in ls], allow_new=allow_new
    )


def scope(ctx: Tables, t: VTable, *, scans: bool = False) -> str:
    """What a statement on partitioned ``t`` also does (empty for other tables): for the
    plan text, which says the path each step takes."""
    if not is_partitioned(t):
        return ""
    n = len(leaves(ctx, t, quiet=True) or [])
    if scans:
        return f"; partitioned: each of its {n} partitions is scanned in turn"
    return f"; partitioned: the same brief lock on its {n} partitions too, no scan"
