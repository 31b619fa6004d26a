"""Partitioned tables (declarative partitioning, any depth): the step sequences that
PostgreSQL allows on them without a build or a scan under a blocking lock.

* An index: ``CREATE INDEX ... ON ONLY`` each partitioned table of the tree (catalog
  only, invalid until complete), ``CREATE INDEX CONCURRENTLY`` on each leaf partition
  (each its own resumable step: the executor's index build state machine repairs an
  invalid one), then ``ALTER INDEX ... ATTACH PARTITION`` bottom-up; the parent index
  becomes valid when its last partition's index is attached.
* A UNIQUE / PRIMARY KEY constraint: the same leaf builds, each leaf's index made its
  constraint ``USING INDEX``, then the constraint added on the parent: PostgreSQL finds
  the matching constraint on every partition and attaches it instead of building.
* A foreign key before PostgreSQL 18 (no ``NOT VALID`` on a partitioned table): added
  ``NOT VALID`` and validated on each leaf, then added on the parent, which attaches the
  validated leaf constraints without a scan.
* A backfill: one batched step per leaf partition (each its own progress and resume
  point in ``status``).

Where PostgreSQL would build or scan if the partitions changed after planning (a
partition attached meanwhile has no matching index or constraint), the parent-level
step first checks the partitions are those the plan was made for and fails, saying
so, otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..plan import Action
from ..sql import checks, ddl
from .model import VIndex
from .naming import auto_name, helper_name
from .partition_tree import Node, partitions_unchanged, tree
from .steps import RANK_INDEX

if TYPE_CHECKING:
    from collections.abc import Sequence

    from .context import PlanContext
    from .model import VTable


def unique_keys_ok(
    ctx: PlanContext, t: VTable, columns: Sequence[str], what: str, fix_kind: str
) -> bool:
    """A unique index or constraint on a partitioned table must contain the partition
    key of every partitioned table of the tree (PostgreSQL checks only within a
    partition); refuse before any DDL otherwise."""
    nodes = tree(ctx, t)
    if nodes is None:
        return False
    for node in nodes:
        info = node.table.info
        if info is None or not node.partitioned:
            continue
        key = info.partition_key
        if any(k is None for k in key):
            ctx.refuse(
                f"{what} on {t.qual}: {node.table.qual} is partitioned by an expression,"
                " and a unique index can only include plain partition key columns",
                f"make it a non-unique index, or enforce uniqueness per partition ({fix_kind}"
                " on each partition)",
            )
            return False
        missing = [k for k in key if k is not None and k not in columns]
        if missing:
            level = "" if node.table is t else f" (partition {node.table.qual} is partitioned by"
            level += "" if node.table is t else f" {', '.join(k for k in key if k)})"
            ctx.refuse(
                f"{what} on {t.qual} ({', '.join(columns)}) does not include the partition key"
                f" column(s) {', '.join(missing)}{level}: PostgreSQL can enforce uniqueness"
                " on a partitioned table only when the partition key is part of it",
                f"add {', '.join(missing)} to the columns, or use {fix_kind} on each partition"
                " instead",
            )
            return False
    return True


def free_name(ctx: PlanContext, schema: str, base: str) -> str:
    """``base``, or ``base1``, ``base2``... (as PostgreSQL names partition indexes): a
    relation name not used in ``schema``, reserved for the plan."""
    name, n = base, 0
    while (schema, name) in ctx.relations:
        n += 1
        name = helper_name(base, str(n)) if len(base) >= 60 else f"{base}{n}"
    ctx.relations.add((schema, name))
    return name


@dataclass
class IndexTree:
    """The names a partitioned index plan chose: (schema, table) -> index name."""

    names: dict[tuple[str, str], str]
    leaves: list[VTable]


def index_tree(
    ctx: PlanContext,
    t: VTable,
    name: str,
    what: str,
    *,
    columns: Sequence[str] = (),
    elements: Sequence[str] = (),
    unique: bool = False,
    using: str = "btree",
    include: Sequence[str] = (),
    where: str | None = None,
    leaves_only: bool = False,
    suffix: str | None = None,
) -> IndexTree | None:
    """The index ``name`` on partitioned ``t``: ``ON ONLY`` each partitioned table, a
    concurrent build on each leaf, the attaches bottom-up (``leaves_only``: the leaf
    builds alone, for a constraint added on the parent). Returns the names."""
    nodes = tree(ctx, t)
    if nodes is None:
        return None
    suffix = suffix or ("key" if unique else "idx")
    names: dict[tuple[str, str], str] = {}
    for node in nodes:
        v = node.table
        key = (v.schema, v.name)
        names[key] = (
            name
            if node.parent is None
            else free_name(
                ctx,
                v.schema,
                auto_name(
                    v.name,
                    [] if suffix == "pkey" else [*columns, *(["expr"] if elements else [])],
                    suffix,
                ),
            )
        )
    leaf_nodes = [n for n in nodes if not n.partitioned]
    total = len(leaf_nodes)
    root_key = (t.schema, t.name)
    root_name = names[root_key]
    for node in nodes:
        v = node.table
        if not node.partitioned or leaves_only:
            continue
        idx = names[(v.schema, v.name)]
        level = "" if node.parent is None else f" (sub-partitioned level of {t.qual})"
        ctx.brief(
            f"create_index_on_only.{v.schema}.{idx}",
            "validate",
            "create_index_on_only",
            f"create {what} {idx} ON ONLY partitioned {v.qual}{level}: catalog only, invalid"
            " until every partition's index is attached",
            [
                ddl.create_index(
                    v.schema,
                    v.name,
                    idx,
                    columns=columns,
                    elements=elements,
                    unique=unique,
                    using=using,
                    include=include,
                    where=where,
                    concurrently=False,
                    only=True,
                )
            ],
            [v.qual],
            lock="ShareLock",
            partitions=False,  # ON ONLY: the partitions are not locked
            post=checks.q_index_exists(v.schema, idx),
            undo=[Action(ddl.drop_index(v.schema, idx, concurrently=False))],
            rank=RANK_INDEX,
        )
        v.indexes[idx] = _vindex(unique, columns, elements)
    for i, node in enumerate(leaf_nodes, 1):
        v = node.table
        idx = names[(v.schema, v.name)]
        ctx.index_step(
            v,
            idx,
            f"partition {i}/{total} of {t.qual}: build {what} {idx} on {v.qual} concurrently"
            " (reads and writes go on)",
            columns=columns,
            elements=elements,
            unique=unique,
            using=using,
            include=include,
            where=where,
        )
    if not leaves_only:
        # bottom-up: a sub-partitioned level's index is attached once it is complete
        ordered = sorted((n for n in nodes if n.parent is not None), key=lambda n: -n.depth)
        for i, node in enumerate(ordered):
            # the first attach checks no planned partition was detached meanwhile (one
            # attached since got its index from PostgreSQL when it was attached)
            check = partitions_unchanged(ctx, t, allow_new=True) if i == 0 else None
            attach_step(ctx, node, names, root_key, root_name, what, check)
    return IndexTree(names, [n.table for n in leaf_nodes])


def _vindex(unique: bool, columns: Sequence[str], elements: Sequence[str]) -> VIndex:
    return VIndex(unique, tuple(columns) if not elements else (*columns, None))


def attach_step(
    ctx: PlanContext,
    node: Node,
    names: dict[tuple[str, str], str],
    root: tuple[str, str],
    root_index: str,
    what: str,
    check: str | None = None,
) -> None:
    assert node.parent is not None
    v, p = node.table, node.parent.table
    idx, pidx = names[(v.schema, v.name)], names[(p.schema, p.name)]
    ctx.brief(
        f"attach_index.{v.schema}.{idx}",
        "validate",
        "attach_index",
        f"attach {idx} (of partition {v.qual}) to {what} {pidx} of {p.qual}: catalog only,"
        " brief lock on that index"
        + ("; first checks no partition was detached since the plan" if check else ""),
        [*([check] if check else []), ddl.attach_index(p.schema, pidx, v.schema, idx)],
        [v.qual],
        post=checks.q_index_attached(v.schema, idx, p.schema, pidx),
        # an attached index cannot be detached or dropped alone: abort drops the whole
        # partitioned index (brief lock on every partition), the builds' undo then
        # finds nothing left of theirs
        undo=[Action(ddl.drop_index(root[0], root_index, concurrently=False))],
        rank=RANK_INDEX,
    )
