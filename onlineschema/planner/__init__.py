"""The planner: a pure function of (catalog snapshot, server version, changes) -> Plan.

Each change is checked against an in-memory model of the schema (the catalog as read,
updated by the changes before it, as Django's ``state_forwards`` does), so conflicting
or impossible requests are refused before anything runs, and each change is turned
into steps following ``shared/reference/postgres-locks.md``:

* brief ``ACCESS EXCLUSIVE`` steps never scan: scans run under ``SHARE UPDATE EXCLUSIVE``
  (``VALIDATE``, ``CREATE INDEX CONCURRENTLY``) or in batches (backfill);
* NOT NULL goes through a validated constraint (``CHECK`` on 15/16, ``NOT NULL ...
  NOT VALID`` on 18) so ``SET NOT NULL`` never scans under its lock;
* indexes on columns being filled are built after the backfill, so its updates stay HOT.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from ..breaking import alter_column_type, drop_column, drop_table, rename_column
from ..catalog import Catalog
from ..changes import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddIndex,
    AddUnique,
    AlterColumnType,
    Backfill,
    Change,
    DropColumn,
    DropConstraint,
    DropDefault,
    DropIndex,
    DropNotNull,
    DropTable,
    RenameColumn,
    RunSQL,
    SetDefault,
    SetNotNull,
    ValidateConstraint,
)
from ..errors import PreflightError, Refused
from ..expressions import (
    check_index_element,
    check_type,
    column_refs,
    function_names,
    index_element_expression,
)
from ..plan import Action, Plan, Step
from ..sql import ddl
from .context import PlanContext, PlanResult, Probe
from .model import VColumn, VConstraint
from .naming import MAX_IDENTIFIER_BYTES, auto_name, fill_trigger_names, helper_name
from .normalize import normalize
from .steps import RANK_DEFAULT, RANK_FK

SERIAL_TYPES = frozenset({"serial", "bigserial", "smallserial", "serial4", "serial8", "serial2"})

__all__ = [
    "PlanContext",
    "PlanResult",
    "Probe",
    "build_plan",
    "catalog_request",
    "helper_name",
    "normalize",
]


class _Planner(PlanContext):
    """The planner's own change handlers (moving to recipes)."""

    def add_column(self, c: AddColumn) -> None:
        t = self.table(c.schema, c.table)
        if t is None or not self.name_ok(c.column, "column"):
            return
        if c.column in t.columns:
            self.refuse(
                f"column {c.column!r} already exists in table {t.qual}",
                "remove this change, or use another column name",
            )
            return
        try:
            type_ = check_type(c.type)
        except Refused as exc:
            self.problems.append(exc)
            return
        if type_.lower() in SERIAL_TYPES:
            self.refuse(
                f"adding a {type_} column to {t.qual} rewrites the whole table under ACCESS EXCLUSIVE",
                "add a bigint column, create a sequence, SetDefault nextval(...) and Backfill it",
            )
            return
        resolved = self.catalog.types.get(c.type, ("", "b", False))
        # a type made earlier in this migration does not exist yet for the probes
        probe_type = None if resolved is None else type_
        if resolved is None and not t.new and not self.new_type(type_):
            self.refuse(
                f"type {c.type!r} does not exist",
                "check the type name, or create the type earlier in the migration",
            )
            return
        if resolved and resolved[2] and not t.new:
            self.refuse(
                f"adding a column of the constrained domain {c.type!r} to {t.qual} rewrites the table",
                "add the column with the domain's base type and an AddCheck for the constraint",
            )
            return
        default = self.expr(c.default, "default") if c.default is not None else None
        fill = self.expr(c.backfill, "backfill expression") if c.backfill is not None else None
        if (c.default is not None and default is None) or (c.backfill is not None and fill is None):
            return
        if default is not None and not self.default_ok(t, c.column, default):
            return
        s, n = t.schema, t.name
        if default is not None or fill is not None:
            self.filled.add((s, n, c.column))
        if default is not None:
            self.probe_expr(t, default, probe_type, "default")
        if fill is not None:
            self.probe_expr(t, fill, probe_type, "backfill expression")
        volatile = default is not None and self.volatile(default)
        t.columns[c.column] = VColumn(type_, not c.nullable, default, new=True)
        undo = [Action(ddl.drop_column(s, n, c.column))]
        post = ddl.q_column_exists(s, n, c.column)
        sid = f"add_column.{t.qual}.{c.column}"
        if t.new or (fill is None and not volatile):
            if not c.nullable and default is None and not t.new:
                t.columns.pop(c.column)
                self.refuse(
                    f"column {t.qual}.{c.column} is NOT NULL with no default and no backfill:"
                    " existing rows would have no value",
                    "give a default (AddColumn(default=...)), a backfill expression"
                    " (AddColumn(backfill=...)), or make it nullable",
                )
                return
            desc = f"add column {c.column} {type_}"
            if default is not None:
                desc += f" DEFAULT {default} (stored once, no rewrite)"
            if not c.nullable:
                desc += " NOT NULL"
            self.brief(
                sid,
                "expand",
                "add_column",
                desc + f" to {t.qual}",
                [ddl.add_column(s, n, c.column, type_, default=default, not_null=not c.nullable)],
                [t.qual],
                post=post,
                undo=undo,
            )
            return
        # volatile default or explicit backfill: nullable add, default for new rows,
        # batched fill of the existing rows, then NOT NULL through a validated constraint
        desc = f"add column {c.column} {type_} to {t.qual} as nullable"
        if default is not None:
            desc += f", DEFAULT {default} for new rows only"
        self.brief(
            sid,
            "expand",
            "add_column",
            desc,
            [ddl.add_column(s, n, c.column, type_, default_for_new_rows=default)],
            [t.qual],
            post=post,
            undo=undo,
        )
        value = fill if fill is not None else default
        assert value is not None
        # Rows written by code that does not know the column yet get the value from a
        # trigger when nothing else gives them one (NOT NULL, no default); on a table
        # without a key it also catches rows the application updates during the fill:
        # such a row moves behind the ctid cursor and would otherwise stay NULL.
        if (not c.nullable and default is None) or not t.primary_key:
            fn, trg = fill_trigger_names(n, c.column)
            drop = [Action(ddl.drop_trigger(s, n, trg)), Action(ddl.drop_function(s, fn))]
            self.brief(
                f"fill_trigger.{t.qual}.{c.column}",
                "expand",
                "create_trigger",
                f"add a trigger that fills {c.column} for rows written during the migration",
                [
                    ddl.fill_trigger_function(s, fn, n, c.column, value),
                    ddl.create_trigger(s, n, trg, fn),
                ],
                [t.qual],
                lock="ShareRowExclusiveLock",
                post=ddl.q_trigger_exists(s, n, trg),
                undo=drop,
            )
            dropper = self.brief(
                f"drop_fill_trigger.{t.qual}.{c.column}",
                "contract",
                "drop_trigger",
                f"drop the fill trigger on {t.qual}",
                [a.sql for a in drop],
                [t.qual],
                post=ddl.q_trigger_exists(s, n, trg, exists=False),
            )
            dropper.details["squawk_ignore"] = [
                {
                    "rule": "ban-drop-function",
                    "why": "the fill function was created by this plan; only its trigger used it",
                }
            ]
        self.backfill_step(t, ((c.column, value),), None, only_null=c.column)
        if not c.nullable:
            self.not_null_steps(t, c.column)

    def set_not_null(self, c: SetNotNull) -> None:
        t = self.table(c.schema, c.table)
        col = self.column(t, c.column) if t else None
        if t is None or col is None:
            return
        if not self.not_null_once(t, c.column, "SET NOT NULL"):
            return
        # PostgreSQL 18: attnotnull is already true under a NOT VALID NOT NULL constraint;
        # SET NOT NULL then means "validate it", which VALIDATE does without AE
        pending = [
            name
            for name, con in t.constraints.items()
            if con.type == "n" and not con.validated and con.columns == (c.column,)
        ]
        if col.notnull and pending:
            t.constraints[pending[0]].validated = True
            self.validate_step(
                t,
                pending[0],
                f"validate NOT NULL {pending[0]} on {t.qual}.{c.column} (scans, reads and"
                " writes go on)",
                rank=RANK_DEFAULT,
            )
            return
        if col.notnull:
            self.refuse(f"column {t.qual}.{c.column} is already NOT NULL", "remove this change")
            return
        if col.new and not t.new and (t.schema, t.name, c.column) not in self.filled:
            self.refuse(
                f"column {t.qual}.{c.column} is added by this migration without a value for"
                " the existing rows, so it cannot be made NOT NULL",
                "give the new column a default or a backfill expression (or an UPDATE before"
                " SET NOT NULL), or leave it nullable",
            )
            return
        col.notnull = True
        if t.new:
            self.brief(
                f"set_not_null.{t.qual}.{c.column}",
                "expand",
                "set_not_null",
                f"set NOT NULL on {t.qual}.{c.column} (new table)",
                [ddl.set_not_null(t.schema, t.name, c.column)],
                [t.qual],
            )
            return
        self.not_null_steps(t, c.column)

    def drop_not_null(self, c: DropNotNull) -> None:
        t = self.table(c.schema, c.table)
        col = self.column(t, c.column) if t else None
        if t is None or col is None:
            return
        if not self.not_null_once(t, c.column, "DROP NOT NULL"):
            return
        if not col.notnull and not t.new:
            self.refuse(f"column {t.qual}.{c.column} is already nullable", "remove this change")
            return
        if c.column in t.primary_key:
            self.refuse(
                f"column {t.qual}.{c.column} is part of the primary key and cannot be nullable",
                "drop the primary key first",
            )
            return
        col.notnull = False
        # A drop is contract-only: `apply` stops before it (awaiting_contract) and
        # `onlineschema contract` runs it once the application is ready for NULLs.
        self.brief(
            f"drop_not_null.{t.qual}.{c.column}",
            "contract",
            "drop_not_null",
            f"drop NOT NULL on {t.qual}.{c.column} (new rows may then leave it NULL)",
            [ddl.drop_not_null(t.schema, t.name, c.column)],
            [t.qual],
            post=ddl.q_column_notnull(t.schema, t.name, c.column, False),
            undo=[] if t.new else self.restore_not_null(t, c.column),
            breaking=not t.new,
        )

    def set_default(self, c: SetDefault) -> None:
        t = self.table(c.schema, c.table)
        col = self.column(t, c.column) if t else None
        default = self.expr(c.default, "default")
        if t is None or col is None or default is None:
            return
        if not self.default_ok(t, c.column, default):
            return
        if not col.new:
            self.probe_expr(t, default, col.type, "default")
        before = col.default
        col.default = default
        self.brief(
            f"set_default.{t.qual}.{c.column}",
            "expand",
            "set_default",
            f"set default of {t.qual}.{c.column} to {default} (new rows only, no rewrite)",
            [ddl.set_default(t.schema, t.name, c.column, default)],
            [t.qual],
            post=ddl.q_column_has_default(t.schema, t.name, c.column),
            undo=[Action(ddl.set_default(t.schema, t.name, c.column, before))],
        )

    def drop_default(self, c: DropDefault) -> None:
        t = self.table(c.schema, c.table)
        col = self.column(t, c.column) if t else None
        if t is None or col is None:
            return
        if col.default is None and not t.new:
            self.refuse(f"column {t.qual}.{c.column} has no default", "remove this change")
            return
        before = col.default
        col.default = None
        self.brief(
            f"drop_default.{t.qual}.{c.column}",
            "expand",
            "drop_default",
            f"drop default of {t.qual}.{c.column}",
            [ddl.drop_default(t.schema, t.name, c.column)],
            [t.qual],
            post=ddl.q_column_has_default(t.schema, t.name, c.column, False),
            undo=[Action(ddl.set_default(t.schema, t.name, c.column, before))] if before else [],
        )

    def add_index(self, c: AddIndex) -> None:
        t = self.table(c.schema, c.table)
        if t is None:
            return
        if not c.columns and not c.expressions:
            self.refuse(f"index on {t.qual} has no columns or expressions", "name at least one")
            return
        for col in (*c.columns, *c.include):
            self.column(t, col)
        elements: list[str] = []
        for e in c.expressions:
            try:
                elements.append(check_index_element(e))
            except Refused as exc:
                self.problems.append(exc)
                continue
            expr = index_element_expression(elements[-1])
            if expr is not None and self.no_subquery(expr, "index expression"):
                self.probe_expr(t, expr, None, "index expression")
        where = self.expr(c.where, "index predicate") if c.where else None
        if where and self.no_subquery(where, "index predicate"):
            self.probe_cond(t, where, "index predicate")
        if not self.name_ok(c.using, "index method"):
            return
        if self.catalog.index_methods and c.using not in self.catalog.index_methods:
            self.refuse(
                f"index method {c.using!r} does not exist on this server",
                "use one of "
                + ", ".join(sorted(self.catalog.index_methods))
                + " (or create the extension that provides it first)",
            )
            return
        name = c.name or auto_name(
            t.name, [*c.columns, *(["expr"] if elements else [])], "key" if c.unique else "idx"
        )
        if not self.new_name(t.schema, name, "index"):
            return
        what = "unique index" if c.unique else "index"
        self.index_step(
            t,
            name,
            f"build {what} {name} on {t.qual} concurrently (reads and writes go on)",
            columns=c.columns,
            elements=elements,
            unique=c.unique,
            using=c.using,
            include=c.include,
            where=where,
        )

    def drop_index(self, c: DropIndex) -> None:
        if not self.name_ok(c.name, "index"):
            return
        schema = c.schema
        if schema is None:
            for s in self.catalog.search_path:
                if (s, c.name) in self.catalog.index_owner:
                    schema = s
                    break
        owner = self.catalog.index_owner.get((schema or "", c.name))
        if owner is None:
            if c.if_exists:
                self.notes.append(f"index {c.name} does not exist; DROP INDEX IF EXISTS skipped")
                return
            self.refuse(f"index {c.name!r} does not exist", "check the index name and schema")
            return
        assert schema is not None
        t = self.tables[owner]
        info = t.indexes.get(c.name)
        backing = info.constraint if info is not None else None
        if backing:
            self.refuse(
                f"index {c.name!r} backs constraint {backing!r} on {t.qual}",
                f"drop the constraint instead (DropConstraint({t.name!r}, {backing!r}))",
            )
            return
        self.drop_index_step(t, c.name, f"drop index {schema}.{c.name} concurrently")

    def add_foreign_key(self, c: AddForeignKey) -> None:
        t = self.table(c.schema, c.table)
        ref = self.table(c.ref_schema, c.ref_table, what="referenced table")
        if t is None or ref is None:
            return
        ok = all(self.column(t, col) is not None for col in c.columns)
        ref_cols = tuple(c.ref_columns) or ref.primary_key
        if not ref_cols and not ref.new:
            self.refuse(
                f"referenced table {ref.qual} has no primary key and no columns were named",
                "name the referenced columns (ref_columns=...)",
            )
            return
        ok = (
            all(self.column(ref, col, what="referenced column") is not None for col in ref_cols)
            and ok
        )
        if not ok:
            return
        if len(ref_cols) != len(c.columns):
            self.refuse(
                f"foreign key on {t.qual} has {len(c.columns)} columns but references"
                f" {len(ref_cols)}",
                "list as many referenced columns as referencing ones",
            )
            return
        if not ref.new and not self.has_unique(ref, ref_cols):
            self.refuse(
                f"no unique constraint or primary key on {ref.qual} ({', '.join(ref_cols)})",
                "add one first (AddUnique, in this migration or an earlier one)",
            )
            return
        new_cols = any(t.columns.get(col, VColumn("", False, None)).new for col in c.columns)
        if not (t.new or ref.new or new_cols):
            self.probes.append(
                Probe(
                    ddl.q_compile_fk_join(
                        t.schema, t.name, c.columns, ref.schema, ref.name, ref_cols
                    ),
                    f"foreign key columns {t.qual} ({', '.join(c.columns)}) cannot be compared"
                    f" with {ref.qual} ({', '.join(ref_cols)})",
                    "give the referencing columns the referenced columns' types",
                )
            )
        for action in (c.on_delete, c.on_update):
            if action is not None and action.upper() not in ddl.FK_ACTIONS:
                self.refuse(
                    f"foreign key action {action!r} is not one of {', '.join(sorted(ddl.FK_ACTIONS))}",
                    "use one of those",
                )
                return
        name = c.name or auto_name(t.name, c.columns, "fkey")
        if not self.constraint_name_free(t, name):
            return
        t.constraints[name] = VConstraint("f", c.validate, tuple(c.columns), (ref.schema, ref.name))
        statement = ddl.add_foreign_key(
            t.schema,
            t.name,
            name,
            c.columns,
            ref.schema,
            ref.name,
            ref_cols,
            on_delete=c.on_delete.upper() if c.on_delete else None,
            on_update=c.on_update.upper() if c.on_update else None,
            deferrable=c.deferrable,
            initially_deferred=c.initially_deferred,
            not_valid=True,
        )
        tables = [t.qual] if ref.qual == t.qual else [t.qual, ref.qual]
        self.brief(
            f"add_foreign_key.{t.qual}.{name}",
            "validate",
            "add_foreign_key_not_valid",
            f"add foreign key {name} on {t.qual} NOT VALID (new rows checked at once)",
            [statement],
            tables,
            lock="ShareRowExclusiveLock",
            post=ddl.q_constraint(t.schema, t.name, name),
            undo=[Action(ddl.drop_constraint(t.schema, t.name, name))],
            rank=RANK_FK,
        )
        if c.validate:
            self.validate_step(
                t,
                name,
                f"validate foreign key {name} (scans {t.qual}, reads and writes go on)",
                ref=ref,
                rank=RANK_FK,
            )
        if not t.new:
            # checked once every change is seen: the index may come later in the script
            self.finalizers.append(lambda p: p.note_missing_fk_index(t, ref, tuple(c.columns)))

    def add_check(self, c: AddCheck) -> None:
        t = self.table(c.schema, c.table)
        expr = self.expr(c.expression, "check expression")
        if t is None or expr is None:
            return
        if not self.no_subquery(expr, "check expression"):
            return
        cols = sorted(column_refs(expr))
        for col in cols:
            self.column(t, col)
        self.probe_cond(t, expr, "check expression")
        name = c.name or auto_name(t.name, cols[:1], "check")
        if not self.constraint_name_free(t, name):
            return
        t.constraints[name] = VConstraint("c", c.validate, tuple(cols))
        self.brief(
            f"add_check.{t.qual}.{name}",
            "validate",
            "add_check_not_valid",
            f"add check {name} on {t.qual} NOT VALID (new rows checked at once)",
            [ddl.add_check(t.schema, t.name, name, expr, not_valid=True)],
            [t.qual],
            post=ddl.q_constraint(t.schema, t.name, name),
            undo=[Action(ddl.drop_constraint(t.schema, t.name, name))],
        )
        if c.validate:
            self.validate_step(
                t,
                name,
                f"validate check {name} (scans {t.qual}, reads and writes go on)",
                rank=RANK_DEFAULT,
            )

    def add_unique(self, c: AddUnique) -> None:
        t = self.table(c.schema, c.table)
        if t is None:
            return
        if not c.columns:
            self.refuse(f"unique constraint on {t.qual} has no columns", "name at least one")
            return
        cols = [self.column(t, col) for col in c.columns]
        if any(col is None for col in cols):
            return
        if c.primary_key and (t.primary_key or any(k.type == "p" for k in t.constraints.values())):
            self.refuse(
                f"table {t.qual} already has a primary key",
                "drop it first, or use a unique constraint",
            )
            return
        name = c.name or (
            f"{t.name}_pkey" if c.primary_key else auto_name(t.name, c.columns, "key")
        )
        name = name[:MAX_IDENTIFIER_BYTES] if not c.name else name
        if not self.constraint_name_free(t, name) or not self.new_name(t.schema, name, "index"):
            return
        what = "primary key" if c.primary_key else "unique constraint"
        self.index_step(
            t,
            name,
            f"build unique index {name} on {t.qual} concurrently for the {what}",
            columns=c.columns,
            unique=True,
        )
        if c.primary_key:
            for colname, col in zip(c.columns, cols, strict=True):
                assert col is not None
                if not col.notnull and not t.new:
                    col.notnull = True
                    self.not_null_steps(t, colname)
        t.constraints[name] = VConstraint(
            "p" if c.primary_key else "u", True, tuple(c.columns), index=name
        )
        if c.primary_key:
            t.primary_key = tuple(c.columns)
        self.brief(
            f"add_constraint_using_index.{t.qual}.{name}",
            "validate",
            "add_constraint_using_index",
            f"attach {name} as the {what} of {t.qual} (catalog only)",
            [
                ddl.add_constraint_using_index(
                    t.schema, t.name, name, name, primary_key=c.primary_key
                )
            ],
            [t.qual],
            post=ddl.q_constraint(t.schema, t.name, name),
            undo=[Action(ddl.drop_constraint(t.schema, t.name, name))],
        )

    def validate_constraint(self, c: ValidateConstraint) -> None:
        t = self.table(c.schema, c.table)
        if t is None:
            return
        con = t.constraints.get(c.name)
        if con is None:
            self.refuse(
                f"constraint {c.name!r} does not exist on {t.qual}",
                "check the name (constraints: " + ", ".join(sorted(t.constraints)) + ")",
            )
            return
        if con.validated:
            self.refuse(f"constraint {c.name!r} on {t.qual} is already valid", "remove this change")
            return
        con.validated = True
        ref = self.tables.get(con.ref) if con.ref else None
        self.validate_step(
            t,
            c.name,
            f"validate constraint {c.name} (scans {t.qual}, reads and writes go on)",
            ref=ref,
            rank=RANK_FK,
        )

    def drop_constraint(self, c: DropConstraint) -> None:
        t = self.table(c.schema, c.table)
        if t is None:
            return
        con = t.constraints.get(c.name)
        if con is None:
            if c.if_exists:
                self.notes.append(f"constraint {c.name} does not exist on {t.qual}; skipped")
                return
            self.refuse(
                f"constraint {c.name!r} does not exist on {t.qual}",
                "check the name (constraints: " + ", ".join(sorted(t.constraints)) + ")",
            )
            return
        if con.type in ("p", "u") and any(
            ref_con for s, tn, ref_con in t.referenced_by if (s, tn) != (t.schema, t.name)
        ):
            self.refuse(
                f"constraint {c.name!r} on {t.qual} may be needed by foreign keys that reference"
                f" it ({', '.join(f'{s}.{tn}.{k}' for s, tn, k in t.referenced_by)})",
                "drop those foreign keys first",
            )
            return
        del t.constraints[c.name]
        if con.type == "p":
            t.primary_key = ()
        tables = [t.qual]
        if con.ref and con.ref != (t.schema, t.name):
            tables.append(f"{con.ref[0]}.{con.ref[1]}")
        # what goes with it, said in the plan before it runs
        kind = {
            "c": "check",
            "f": "foreign key",
            "u": "unique constraint",
            "p": "primary key",
            "n": "NOT NULL constraint",
            "x": "exclusion constraint",
        }
        what = kind.get(con.type, "constraint")
        if con.type == "f" and con.ref:
            what += f" to {con.ref[0]}.{con.ref[1]}"
        if con.index:
            what += f"; its index {con.index} is dropped with it"
        if con.type == "p":
            what += "; the table is left without a primary key (batched backfills need one)"
        # contract-only: `apply` stops before it, `onlineschema contract` runs it
        self.brief(
            f"drop_constraint.{t.qual}.{c.name}",
            "contract",
            "drop_constraint",
            f"drop constraint {c.name} on {t.qual} ({what})",
            [ddl.drop_constraint(t.schema, t.name, c.name)],
            tables,
            post=ddl.q_constraint_absent(t.schema, t.name, c.name),
            breaking=not t.new,
        )

    def backfill(self, c: Backfill) -> None:
        t = self.table(c.schema, c.table)
        if t is None:
            return
        if not c.set:
            self.refuse(
                f"backfill of {t.qual} sets no column", "give at least one column = expression"
            )
            return
        sets: list[tuple[str, str]] = []
        for colname, e in c.set:
            col = self.column(t, colname)
            expr = self.expr(e, "backfill expression")
            if col is None or expr is None:
                return
            if col.identity == "a" or col.generated:
                self.refuse(
                    f"column {t.qual}.{colname} is generated or GENERATED ALWAYS AS IDENTITY and"
                    " cannot be updated",
                    "remove it from the backfill",
                )
                return
            if colname in t.primary_key:
                self.refuse(
                    f"backfill updates {t.qual}.{colname}, part of the key it batches over",
                    "batch over another key, or update the key column in a separate migration",
                )
                return
            self.probe_expr(t, expr, col.type if not col.new else None, "backfill expression")
            sets.append((colname, expr))
            self.filled.add((t.schema, t.name, colname))
        where = self.expr(c.where, "backfill condition") if c.where else None
        if c.where and where is None:
            return
        if where:
            self.probe_cond(t, where, "backfill condition")
        self.backfill_step(t, sets, where)

    def run_sql(self, c: RunSQL) -> None:
        for created in c.creates:
            schema, _, name = created.rpartition(".")
            key = (schema or self.catalog.resolve_schema(None, name), name)
            if key in self.relations:
                self.refuse(
                    f"{created!r} already exists", "remove the CREATE statement or rename it"
                )
                return
            self.new_tables.add(key)
            self.relations.add(key)
        touched = []
        for name in c.touches:
            schema, _, rel = name.rpartition(".")
            touched.append(f"{schema or self.catalog.resolve_schema(None, rel)}.{rel}")
        digest = hashlib.sha256(c.sql.encode()).hexdigest()[:10]
        lock = "AccessExclusiveLock" if c.raw else ("ShareRowExclusiveLock" if touched else "")
        step = self.add(
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
            self.notes.append(
                f"step {step.id} runs raw SQL as written (only the lock guard applies)"
            )


HANDLERS: dict[type[Change], Any] = {
    AddColumn: _Planner.add_column,
    SetNotNull: _Planner.set_not_null,
    DropNotNull: _Planner.drop_not_null,
    SetDefault: _Planner.set_default,
    DropDefault: _Planner.drop_default,
    AddIndex: _Planner.add_index,
    DropIndex: _Planner.drop_index,
    AddForeignKey: _Planner.add_foreign_key,
    AddCheck: _Planner.add_check,
    AddUnique: _Planner.add_unique,
    ValidateConstraint: _Planner.validate_constraint,
    DropConstraint: _Planner.drop_constraint,
    Backfill: _Planner.backfill,
    RunSQL: _Planner.run_sql,
    AlterColumnType: alter_column_type,
    RenameColumn: rename_column,
    DropColumn: drop_column,
    DropTable: drop_table,
}


def catalog_request(changes: Iterable[Change]) -> dict[str, Any]:
    """What ``read_catalog`` must read for these changes."""
    tables: set[tuple[str | None, str]] = set()
    indexes: set[tuple[str | None, str]] = set()
    functions: set[str] = set()
    types: set[str] = set()
    for ch in changes:
        schema = getattr(ch, "schema", None)
        if getattr(ch, "table", None):
            tables.add((schema, ch.table))  # type: ignore[attr-defined]
        if isinstance(ch, AddForeignKey):
            tables.add((ch.ref_schema, ch.ref_table))
        if isinstance(ch, RunSQL):
            for name in (*ch.touches, *ch.creates):
                s, _, n = name.rpartition(".")
                tables.add((s or None, n))
                indexes.add((s or None, n))
        if isinstance(ch, DropIndex):
            indexes.add((schema, ch.name))
        if isinstance(ch, (AddIndex, AddUnique)) and ch.name:
            indexes.add((schema, ch.name))
        if isinstance(ch, (AddColumn, AlterColumnType)):
            try:
                check_type(ch.type)  # to_regtype() raises on a malformed name
                types.add(ch.type)
            except Refused:
                pass  # reported by the planner
        for text in _expressions(ch):
            try:
                functions |= function_names(text)
            except Refused:
                pass  # reported by the planner
    return {
        "tables": sorted(tables, key=str),
        "index_names": sorted(indexes, key=str),
        "functions": sorted(functions),
        "types": sorted(types),
    }


def _expressions(ch: Change) -> list[str]:
    out: list[str] = []
    for attr in ("default", "backfill", "where", "expression", "using"):
        v = getattr(ch, attr, None)
        if isinstance(v, str):
            out.append(v)
    if isinstance(ch, Backfill):
        out += [e for _, e in ch.set]
    return out


def _touched(p: PlanContext, c: Change) -> list[tuple[str, str]]:
    keys = []
    cat = p.catalog
    for attr, sattr in (("table", "schema"), ("ref_table", "ref_schema")):
        name = getattr(c, attr, None)
        if isinstance(name, str):
            keys.append((cat.resolve_schema(getattr(c, sattr, None), name), name))
    if isinstance(c, DropIndex):
        for s in [c.schema] if c.schema else list(cat.search_path):
            owner = cat.index_owner.get((s, c.name))
            if owner:
                keys.append(owner)
                break
    if isinstance(c, RunSQL):
        for name in c.touches:
            s, _, rel = name.rpartition(".")
            keys.append((s or cat.resolve_schema(None, rel), rel))
    return keys


def _allows_copy(c: Change) -> bool:
    if isinstance(c, AlterColumnType):
        return True
    if isinstance(c, RenameColumn):
        return not c.instant
    return False


def build_plan(catalog: Catalog, changes: Sequence[Change]) -> PlanResult:
    """Plan ``changes`` against ``catalog``. Raises ``PreflightError`` listing every
    problem found; nothing here touches the database."""
    if not changes:
        raise PreflightError([Refused("no changes were requested", "give at least one change")])
    p = _Planner(catalog)
    normalized = normalize(changes)
    for ch in normalized:
        handler = HANDLERS.get(type(ch))
        if handler is None:
            p.refuse(
                f"unsupported change {type(ch).__name__}",
                "use one of " + ", ".join(sorted(h.__name__ for h in HANDLERS)),
            )
            continue
        # a change on a table that an earlier change froze is refused before its handler
        if p.frozen_by(ch, _touched(p, ch), allow_copy=_allows_copy(ch)):
            continue
        handler(p, ch)
    for finalize in p.finalizers:
        finalize(p)
    if p.problems:
        raise PreflightError(p.problems)
    ordered = [s for *_, s in sorted(p.steps, key=lambda x: x[:3])]
    plan = Plan(
        steps=tuple(ordered),
        server_version=catalog.server_version,
        changes=tuple(c.to_dict() for c in changes),
        notes=tuple(p.notes),
    )
    return PlanResult(plan, tuple(p.probes))
