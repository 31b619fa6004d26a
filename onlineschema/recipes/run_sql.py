"""A statement run as written, as one lock-guarded step; a framework's bookkeeping
(``alembic_version``, ``django_migrations``, ``_prisma_migrations``) as the plan's last
step."""

from __future__ import annotations

import hashlib

import pglast

from ..changes import RunSQL
from ..plan import Step
from ..planner import steps as planner_steps
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext
from ..sqlinput import update_targets
from .base import CatalogNeeds, Recipe, recipe_for


def _partitioned_creates(text: str) -> dict[tuple[str | None, str], tuple[str | None, ...]]:
    """``CREATE TABLE ... PARTITION BY`` statements in ``text``: (schema, name) -> the
    partition key's columns (None for an expression)."""
    try:
        stmts = pglast.parse_sql(text)
    except pglast.parser.ParseError:
        return {}
    out: dict[tuple[str | None, str], tuple[str | None, ...]] = {}
    for raw in stmts:
        st = raw.stmt
        if isinstance(st, pglast.ast.CreateStmt) and st.partspec is not None:
            rel = st.relation
            if rel is None or rel.relname is None:
                continue
            out[(rel.schemaname, rel.relname)] = tuple(
                e.name if e.expr is None else None for e in st.partspec.partParams or ()
            )
    return out


def _bookkeeping_step(ctx: PlanContext, c: RunSQL, digest: str) -> None:
    """A framework's record of the migration, run as written after every other step
    (after ``contract`` when there is a contract phase), so the framework takes the
    revision as done only once it is. Its table must exist (or be created by this
    migration): else it would fail only after everything else ran."""
    for name in c.touches:
        schema, _, rel = name.rpartition(".")
        key = (ctx.catalog.resolve_schema(schema or None, rel), rel)
        if key not in ctx.tables and key not in ctx.new_tables:
            ctx.refuse(
                f"the framework's table {name} does not exist, so its bookkeeping"
                f" statement would fail after every other step: {c.describe()}",
                "let the framework create its table first (alembic stamp, manage.py"
                " migrate --fake, prisma migrate resolve), or remove the statement",
            )
            return
    sid = f"bookkeeping.{digest}"
    n = 2
    while sid in ctx.ids:
        sid = f"bookkeeping.{digest}#{n}"
        n += 1
    ctx.ids.add(sid)
    ctx.seq += 1
    step = Step(
        id=sid,
        phase="contract",
        action="bookkeeping",
        description=f"record the migration for the framework: {c.describe()}",
        statements=(c.sql,),
        transactional=True,
        lock="",
    )
    # after every phase's steps
    ctx.steps.append((len(planner_steps.PHASE_RANK), 0, ctx.seq, step))


@recipe_for(RunSQL)
class RunSqlRecipe(Recipe[RunSQL]):
    def plan(self, ctx: PlanContext, c: RunSQL) -> None:
        partitioned = _partitioned_creates(c.sql)
        for created in c.creates:
            schema, _, name = created.rpartition(".")
            key = (schema or ctx.catalog.resolve_schema(None, name), name)
            if key in ctx.relations:
                ctx.refuse(
                    f"{created!r} already exists", "remove the CREATE statement or rename it"
                )
                return
            ctx.new_tables.add(key)
            ctx.relations.add(key)
            for (s_, n_), partkey in partitioned.items():
                if n_ == name and (s_ is None or s_ == key[0]):
                    ctx.new_partitioned[key] = partkey
        touched = []
        for name in c.touches:
            schema, _, rel = name.rpartition(".")
            touched.append(f"{schema or ctx.catalog.resolve_schema(None, rel)}.{rel}")
        digest = hashlib.sha256(c.sql.encode()).hexdigest()[:10]
        if c.bookkeeping:
            _bookkeeping_step(ctx, c, digest)
            return
        lock = "AccessExclusiveLock" if c.raw else ("ShareRowExclusiveLock" if touched else "")
        step = ctx.add(
            Step(
                id=f"{'raw' if c.raw else 'create'}.{digest}",
                phase="expand",
                action="raw_sql" if c.raw else "create",
                description=c.describe(),
                statements=(c.sql,),
                transactional=c.transactional,
                lock=lock,
                tables=tuple(touched),
                raw=c.raw,
            )
        )
        if c.raw:
            ctx.notes.append(
                f"step {step.id} runs raw SQL as written (only the lock guard applies)"
            )
            # a raw UPDATE that sets a column counts as its backfill (a later SET NOT NULL
            # on a column this migration adds is then allowed)
            for target_schema, target, columns in update_targets(c.sql):
                key = (ctx.catalog.resolve_schema(target_schema, target), target)
                ctx.filled.update((*key, col) for col in columns)

    def catalog_needs(self, change: RunSQL) -> CatalogNeeds:
        needs = super().catalog_needs(change)
        for name in (*change.touches, *change.creates):
            s, _, n = name.rpartition(".")
            needs.tables.add((s or None, n))
            needs.index_names.add((s or None, n))
        return needs

    def touched(self, ctx: PlanContext, change: RunSQL) -> list[tuple[str, str]]:
        keys = []
        for name in change.touches:
            s, _, rel = name.rpartition(".")
            keys.append((s or ctx.catalog.resolve_schema(None, rel), rel))
        return keys

    def announce(self, change: RunSQL, schema: AssumedSchema) -> None:
        for rel in change.creates:
            s, _, name = rel.rpartition(".")
            schema.created_tables.add(schema.key(s or None, name))
