"""Step emitters: the building blocks recipes compose a plan from (a brief lock-guarded
step, ``VALIDATE``, a concurrent index build or drop, a batched backfill, the NOT NULL
sequences). Each follows ``shared/reference/postgres-locks.md``; a recipe says *what*
it needs and these say *how* it runs.

``StepEmitter`` is a mixin of ``PlanContext`` (it uses the context's step list and model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..catalog import INTEGER_TYPES, ConstraintInfo
from ..errors import Refused
from ..plan import Action, Phase, Step, blocks_application
from ..sql import checks, ddl
from .model import VIndex, VTable
from .naming import nn_check_name, not_null_name
from .partition_tree import leaves, partitions_unchanged, scope, tree

PHASE_RANK = {"expand": 0, "backfill": 1, "validate": 2, "contract": 3}
# inside the validate phase: index builds first, then constraints, foreign keys last
# (a foreign key may need a unique constraint built by the same migration)
RANK_INDEX, RANK_DEFAULT, RANK_FK = 0, 1, 2


class StepEmitter:
    """Adds steps to the plan being built (ordered by phase, rank, then emission)."""

    steps: list[tuple[int, int, int, Step]]
    ids: set[str]
    seq: int
    relations: set[tuple[str, str]]
    problems: list[Refused]
    tables: dict[tuple[str, str], VTable]

    if TYPE_CHECKING:

        @property
        def major(self) -> int: ...

        def refuse(self, problem: str, fix: str | None = None) -> None: ...

    def add(self, step: Step, rank: int = RANK_DEFAULT) -> Step:
        sid = step.id
        n = 2
        while sid in self.ids:
            sid = f"{step.id}#{n}"
            n += 1
        self.ids.add(sid)
        if sid != step.id:
            step = dataclasses.replace(step, id=sid)
        self.seq += 1
        self.steps.append(
            (PHASE_RANK[step.phase], rank if step.phase == "validate" else 0, self.seq, step)
        )
        return step

    def brief(
        self,
        sid: str,
        phase: Phase,
        action: str,
        description: str,
        statements: Sequence[str],
        tables: Sequence[str],
        *,
        lock: str = "AccessExclusiveLock",
        post: str | None = None,
        undo: Sequence[Action] = (),
        rank: int = RANK_DEFAULT,
        breaking: bool = False,
        partitions: bool = True,
    ) -> Step:
        """A short transaction under ``lock`` on ``tables``. ALTER TABLE on a partitioned
        table takes its lock on every partition too: with ``partitions`` (the default)
        they are listed, so the executor's guard waits out long transactions on any of
        them outside the lock queue."""
        if partitions and blocks_application(lock):
            tables = self._with_partitions(tables)
        return self.add(
            Step(
                id=sid,
                phase=phase,
                action=action,
                description=description,
                statements=tuple(statements),
                transactional=True,
                lock=lock,
                tables=tuple(tables),
                postcondition=post,
                undo=tuple(undo),
                breaking=breaking,
            ),
            rank,
        )

    def _with_partitions(self, tables: Sequence[str]) -> list[str]:
        out = list(tables)
        by_qual = {v.qual: v for v in self.tables.values()}
        for qual in tables:
            t = by_qual.get(qual)
            if t is None or t.info is None or t.info.relkind != "p":
                continue
            for node in tree(self, t, quiet=True) or []:
                if node.table.qual not in out:
                    out.append(node.table.qual)
        return out

    def validate_step(
        self, t: VTable, name: str, description: str, *, ref: VTable | None = None, rank: int
    ) -> None:
        tables = [t.qual] + ([ref.qual] if ref else [])
        self.add(
            Step(
                id=f"validate.{t.qual}.{name}",
                phase="validate",
                action="validate_constraint",
                description=description,
                statements=(ddl.validate_constraint(t.schema, t.name, name),),
                lock="ShareUpdateExclusiveLock",
                tables=tuple(tables),
                scans=True,
                statement_timeout=0,
                postcondition=checks.q_constraint(t.schema, t.name, name, validated=True),
            ),
            rank,
        )

    def not_null_steps(self, t: VTable, column: str) -> None:
        """NOT NULL without a scan under ACCESS EXCLUSIVE (reference: SET NOT NULL)."""
        s, n = t.schema, t.name
        if self.major >= 18:
            con = not_null_name(n, column)
            self.brief(
                f"add_not_null.{t.qual}.{column}",
                "validate",
                "add_not_null_not_valid",
                f"add NOT NULL {con} on {t.qual}.{column} NOT VALID (new rows checked at once"
                f"{scope(self, t)})",
                [ddl.add_not_null_constraint(s, n, con, column)],
                [t.qual],
                post=checks.q_constraint(s, n, con),
                undo=[Action(ddl.drop_constraint(s, n, con))],
            )
            self.validate_step(
                t,
                con,
                f"validate NOT NULL on {t.qual}.{column} (scans, reads and writes go on"
                f"{scope(self, t, scans=True)})",
                rank=RANK_DEFAULT,
            )
        else:
            con = nn_check_name(n, column)
            # the helper check of an earlier run that failed (not aborted) is reused:
            # validated if it is not yet, never added twice
            left = t.constraints.get(con)
            left = left if left is not None and left.type == "c" else None
            if left is None:
                self.brief(
                    f"add_not_null_check.{t.qual}.{column}",
                    "validate",
                    "add_check_not_valid",
                    f"add CHECK ({column} IS NOT NULL) NOT VALID on {t.qual}"
                    + (f" ({scope(self, t)[2:]})" if scope(self, t) else ""),
                    [ddl.add_check(s, n, con, ddl.check_not_null_expr(column), not_valid=True)],
                    [t.qual],
                    post=checks.q_constraint(s, n, con),
                    undo=[Action(ddl.drop_constraint(s, n, con))],
                )
            if left is None or not left.validated:
                self.validate_step(
                    t,
                    con,
                    f"validate CHECK ({column} IS NOT NULL) on {t.qual} (scans, reads and"
                    f" writes go on{scope(self, t, scans=True)})"
                    + ("; the check was left NOT VALID by an earlier run" if left else ""),
                    rank=RANK_DEFAULT,
                )
            self.brief(
                f"set_not_null.{t.qual}.{column}",
                "validate",
                "set_not_null",
                f"set NOT NULL on {t.qual}.{column} (no scan: the validated check proves it)",
                [ddl.set_not_null(s, n, column)],
                [t.qual],
                post=checks.q_column_notnull(s, n, column),
                undo=[Action(ddl.drop_not_null(s, n, column))],
            )
            step = self.brief(
                f"drop_not_null_check.{t.qual}.{column}",
                "contract",
                "drop_helper_check",
                f"drop the helper check {con} (NOT NULL now holds it)",
                [ddl.drop_constraint(s, n, con)],
                [t.qual],
                post=checks.q_constraint_absent(s, n, con),
            )
            step.details["squawk_ignore"] = [
                {
                    "rule": "ban-drop-constraint",
                    "why": "the helper check was created by this plan; nothing depends on it",
                }
            ]

    def restore_not_null(self, t: VTable, column: str) -> list[Action]:
        """Abort of a DROP NOT NULL: put it back without scanning under ACCESS EXCLUSIVE
        (fails, leaving the migration abortable again, if NULLs were written meanwhile)."""
        s, n = t.schema, t.name
        if self.major >= 18:
            con = next(
                (k for k, v in t.constraints.items() if v.type == "n" and v.columns == (column,)),
                not_null_name(n, column),
            )
            return [
                Action(ddl.add_not_null_constraint(s, n, con, column)),
                Action(ddl.validate_constraint(s, n, con), scans=True),
            ]
        chk = nn_check_name(n, column)
        return [
            Action(ddl.add_check(s, n, chk, ddl.check_not_null_expr(column), not_valid=True)),
            Action(ddl.validate_constraint(s, n, chk), scans=True),
            Action(ddl.set_not_null(s, n, column)),
            Action(ddl.drop_constraint(s, n, chk)),
        ]

    def backfill_step(
        self,
        t: VTable,
        sets: Sequence[tuple[str, str]],
        where: str | None,
        *,
        only_null: str | None = None,
    ) -> None:
        key = tuple(t.primary_key)
        key_types = [t.columns[k].type for k in key if k in t.columns]
        if len(key) == 1 and key_types and key_types[0] in INTEGER_TYPES:
            strategy = "range"
        elif key:
            strategy = "keyset"
        elif only_null is not None:
            strategy = "ctid"  # idempotent (only rows still NULL are touched)
        else:
            self.refuse(
                f"table {t.qual} has no primary key, so a batched UPDATE cannot keep its place"
                " exactly once",
                "add a primary key first (AddUnique(..., primary_key=True)), or run the UPDATE"
                " yourself",
            )
            return
        sets_text = ", ".join(f"{c} = {e}" for c, e in sets)
        desc = f"backfill {t.qual}: set {sets_text}"
        if where:
            desc += f" where {where}"
        if only_null:
            desc += f" (rows where {only_null} is null)"
        desc += f"; {strategy} batches"
        targets: list[tuple[VTable, str]] = [(t, desc)]
        if t.info is not None and t.info.relkind == "p":
            # one backfill per leaf partition: each its own batches, progress in
            # `status` and resume point (the engine batches one table by its key)
            parts = leaves(self, t)
            if parts is None:
                return
            targets = [
                (
                    leaf,
                    f"partition {i}/{len(parts)} of {t.qual}: "
                    + desc.replace(t.qual, leaf.qual, 1),
                )
                for i, leaf in enumerate(parts, 1)
            ]
        for target, text in targets:
            self._backfill_one(target, text, sets, where, only_null, key, key_types, strategy)
        if targets[0][0] is not t:
            self.brief(
                f"check_partitions.{t.qual}.backfill." + ".".join(c for c, _ in sets),
                "backfill",
                "check_partitions",
                f"check the partitions of {t.qual} are the {len(targets)} backfilled (a"
                " partition attached during the backfill would have rows left unfilled)",
                [partitions_unchanged(self, t)],
                [t.qual],
                lock="AccessShareLock",
            )

    def _backfill_one(
        self,
        t: VTable,
        desc: str,
        sets: Sequence[tuple[str, str]],
        where: str | None,
        only_null: str | None,
        key: tuple[str, ...],
        key_types: list[str],
        strategy: str,
    ) -> None:
        self.add(
            Step(
                id=f"backfill.{t.qual}." + ".".join(c for c, _ in sets),
                phase="backfill",
                action="backfill",
                description=desc,
                transactional=True,
                lock="RowExclusiveLock",
                tables=(t.qual,),
                scans=True,
                statement_timeout=0,
                details={
                    "schema": t.schema,
                    "table": t.name,
                    "set": [list(p) for p in sets],
                    "where": where,
                    "only_null": only_null,
                    "key": list(key),
                    "key_types": key_types,
                    "strategy": strategy,
                },
            )
        )

    def index_step(
        self,
        t: VTable,
        name: str,
        description: str,
        *,
        columns: Sequence[str] = (),
        elements: Sequence[str] = (),
        unique: bool = False,
        using: str = "btree",
        include: Sequence[str] = (),
        where: str | None = None,
    ) -> None:
        s = t.schema
        self.add(
            Step(
                id=f"create_index.{s}.{name}",
                phase="validate",
                action="create_index",
                description=description,
                statements=(
                    ddl.create_index(
                        s,
                        t.name,
                        name,
                        columns=columns,
                        elements=elements,
                        unique=unique,
                        using=using,
                        include=include,
                        where=where,
                    ),
                ),
                transactional=False,
                lock="ShareUpdateExclusiveLock",
                tables=(t.qual,),
                scans=True,
                statement_timeout=0,
                postcondition=checks.q_index_valid(s, name),
                undo=(Action(ddl.drop_index(s, name), transactional=False),),
                details={
                    "index": {"schema": s, "name": name, "table": t.name},
                    "squawk_ignore": [
                        {
                            "rule": "prefer-robust-stmts",
                            "why": "no IF NOT EXISTS on purpose: it would silently keep an"
                            " invalid index left by a failed build; onlineschema checks"
                            " pg_index.indisvalid and rebuilds such an index instead",
                        }
                    ],
                },
            ),
            RANK_INDEX,
        )
        t.indexes[name] = VIndex(unique, tuple(columns) if not elements else (*columns, None))

    def drop_index_step(
        self, t: VTable, index: str, description: str, *, breaking: bool = False
    ) -> None:
        """``DROP INDEX CONCURRENTLY`` in the contract phase (indexes live in their
        table's schema)."""
        t.indexes.pop(index, None)
        self.relations.discard((t.schema, index))
        self.add(
            Step(
                id=f"drop_index.{t.schema}.{index}",
                phase="contract",
                action="drop_index",
                description=description,
                statements=(ddl.drop_index(t.schema, index),),
                transactional=False,
                lock="ShareUpdateExclusiveLock",
                tables=(t.qual,),
                statement_timeout=0,
                postcondition=checks.q_relation_absent(t.schema, index),
                breaking=breaking,
            )
        )

    def drop_foreign_key_step(self, u: VTable, con: ConstraintInfo, what: str) -> None:
        """``DROP CONSTRAINT`` of a foreign key at contract (brief lock on both tables)."""
        ref_qual = f"{con.ref_table[0]}.{con.ref_table[1]}" if con.ref_table else u.qual
        step = self.brief(
            f"drop_constraint.{u.qual}.{con.name}",
            "contract",
            "drop_constraint",
            f"drop {what} (brief lock on both tables)",
            [ddl.drop_constraint(u.schema, u.name, con.name)],
            [u.qual] if ref_qual == u.qual else [u.qual, ref_qual],
            post=checks.q_constraint_absent(u.schema, u.name, con.name),
            breaking=True,
        )
        step.details["squawk_ignore"] = [
            {"rule": "ban-drop-constraint", "why": "contract phase: the referenced object goes"}
        ]
        u.constraints.pop(con.name, None)
