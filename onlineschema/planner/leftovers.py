"""What an earlier failed run left behind: an INVALID index (a concurrent build that
failed) or a NOT VALID constraint (a validation that failed) under the name a migration
asks for.

The same definition: the leftover is what this migration would create, so it is
repaired (the index dropped concurrently and built again by the executor's index build;
the constraint validated, not added again). Another definition: refused before any DDL,
with the statement that removes it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from ..catalog import ConstraintInfo, IndexInfo
from ..sql import ddl

if TYPE_CHECKING:
    from .context import PlanContext
    from .model import VTable

Verdict = Literal["free", "repair", "refused"]


def _norm(text: str) -> str:
    """A definition with what PostgreSQL's deparser adds or drops removed: quotes,
    parentheses, casts to text, whitespace, ``CONCURRENTLY`` and ``ONLY``."""
    text = re.sub(r"\bCONCURRENTLY\b|\bONLY\b|\bNOT VALID\b", " ", text)
    text = re.sub(r"::(text|character varying|regconfig)\b", "", text)
    return re.sub(r'[\s"()]', "", text)


def index_leftover(ctx: PlanContext, schema: str, name: str, expected: str) -> Verdict:
    """Is ``schema.name`` free for the index ``expected`` (its CREATE INDEX statement), an
    invalid leftover of it (``repair``), or in the way (refused here)?"""
    owner = ctx.catalog.index_owner.get((schema, name))
    if owner is None:
        return "free"
    table = ctx.catalog.tables.get(owner)
    info: IndexInfo | None = table.indexes.get(name) if table else None
    if info is None or info.valid:
        return "free"  # a valid index of that name: the ordinary "already exists"
    q = f"{schema}.{name}"
    if table is not None and table.relkind == "p":
        ctx.refuse(
            f"index {q} is an invalid partitioned index left by an earlier run; its"
            " partitions' indexes may be attached to it already",
            f"drop it (`DROP INDEX {ddl.ident(schema)}.{ddl.ident(name)}`: brief lock, it"
            " takes its partitions' indexes with it), then apply again",
        )
        return "refused"
    if _norm(info.definition) == _norm(expected):
        return "repair"
    ctx.refuse(
        f"index {q} exists but is INVALID (left by an earlier failed build) and is defined"
        f" differently: {info.definition}; this migration asks for: {expected}",
        f"drop the leftover (`DROP INDEX CONCURRENTLY {ddl.ident(schema)}.{ddl.ident(name)}`)"
        " or give the new index another name",
    )
    return "refused"


def constraint_leftover(
    ctx: PlanContext,
    t: VTable,
    name: str,
    kind: str,
    *,
    expression: str | None = None,
    columns: Sequence[str] = (),
    ref: tuple[str, str] | None = None,
    ref_columns: Sequence[str] = (),
    actions: Sequence[str] = (),
) -> Verdict:
    """Is constraint ``name`` of ``t`` free, a NOT VALID leftover of the one asked for
    (``repair``: validate it instead of adding it), or in the way (refused here)? A
    valid constraint of the name is left to ``constraint_name_free``."""
    info: ConstraintInfo | None = t.info.constraints.get(name) if t.info else None
    vc = t.constraints.get(name)
    if info is None or vc is None or info.validated or vc.validated:
        return "free"
    same = info.type == kind
    if same and kind == "c":
        body = re.sub(r"^CHECK\s*", "", info.definition)
        same = expression is not None and _norm(body) == _norm(expression)
    elif same and kind == "f":
        same = (
            tuple(info.columns) == tuple(columns)
            and info.ref_table == ref
            and tuple(info.ref_columns) == tuple(ref_columns)
            and all(a in info.definition for a in actions)
            and sum(w in info.definition for w in ("ON DELETE", "ON UPDATE"))
            == len([a for a in actions if a.startswith("ON ")])
            and ("DEFERRABLE" in info.definition) == any("DEFER" in a for a in actions)
        )
    if same:
        return "repair"
    ctx.refuse(
        f"constraint {name!r} already exists on {t.qual}, NOT VALID (as an earlier failed run"
        f" leaves it) and defined differently: {info.definition}",
        f"drop it (`ALTER TABLE {ddl.ident(t.schema)}.{ddl.ident(t.name)} DROP CONSTRAINT"
        f" {ddl.ident(name)}`) or give the new constraint another name",
    )
    return "refused"
