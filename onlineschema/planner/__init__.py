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

import dataclasses
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..catalog import INTEGER_TYPES, Catalog, TableInfo
from ..changes import (
    AddCheck,
    AddColumn,
    AddForeignKey,
    AddIndex,
    AddUnique,
    AlterColumnType,
    Backfill,
    Change,
    DropConstraint,
    DropDefault,
    DropIndex,
    DropNotNull,
    RunSQL,
    SetDefault,
    SetNotNull,
    ValidateConstraint,
)
from ..errors import PreflightError, Refused
from ..expressions import (
    check_expression,
    check_index_element,
    check_type,
    column_refs,
    function_names,
    has_subquery,
    index_element_expression,
)
from ..plan import Action, Plan, Step
from ..sql import ddl

MAX_IDENTIFIER_BYTES = 63
SERIAL_TYPES = frozenset({"serial", "bigserial", "smallserial", "serial4", "serial8", "serial2"})
PHASE_RANK = {"expand": 0, "backfill": 1, "validate": 2, "contract": 3}
# inside the validate phase: index builds first, then constraints, foreign keys last
# (a foreign key may need a unique constraint built by the same migration)
RANK_INDEX, RANK_DEFAULT, RANK_FK = 0, 1, 2


@dataclass(frozen=True)
class Probe:
    """A query that must succeed before any DDL runs (an expression compiles)."""

    sql: str
    problem: str
    fix: str


@dataclass(frozen=True)
class PlanResult:
    plan: Plan
    probes: tuple[Probe, ...]


@dataclass
class _Col:
    type: str
    notnull: bool
    default: str | None
    identity: str = ""
    generated: str = ""
    new: bool = False


@dataclass
class _Con:
    type: str
    validated: bool
    columns: tuple[str, ...] = ()
    ref: tuple[str, str] | None = None
    index: str | None = None


@dataclass
class _Idx:
    unique: bool
    columns: tuple[str | None, ...]
    valid: bool = True
    partial: bool = False
    constraint: str | None = None


@dataclass
class _Table:
    schema: str
    name: str
    columns: dict[str, _Col]
    indexes: dict[str, _Idx]
    constraints: dict[str, _Con]
    primary_key: tuple[str, ...]
    referenced_by: tuple[tuple[str, str, str], ...]
    new: bool = False  # created by this migration: empty, nothing uses it yet
    info: TableInfo | None = None

    @property
    def qual(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class _Planner:
    catalog: Catalog
    problems: list[Refused] = field(default_factory=list)
    steps: list[tuple[int, int, int, Step]] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: dict[tuple[str, str], _Table] = field(default_factory=dict)
    relations: set[tuple[str, str]] = field(default_factory=set)
    new_tables: set[tuple[str, str]] = field(default_factory=set)
    seq: int = 0
    ids: set[str] = field(default_factory=set)
    #: run after every change has been seen (changes planned together, e.g. the
    #: expand/contract copies of onlineschema.breaking)
    finalizers: list[Callable[[_Planner], None]] = field(default_factory=list)
    #: (schema, table, column) -> the NOT NULL change already planned for it
    nullness: dict[tuple[str, str, str], str] = field(default_factory=dict)
    #: (schema, table, column) of new columns whose existing rows get a value
    filled: set[tuple[str, str, str]] = field(default_factory=set)

    # --- model -------------------------------------------------------------------

    def __post_init__(self) -> None:
        for key, t in self.catalog.tables.items():
            self.tables[key] = _Table(
                schema=t.schema,
                name=t.name,
                columns={
                    c.name: _Col(c.type, c.notnull, c.default, c.identity, c.generated)
                    for c in t.columns.values()
                },
                indexes={
                    i.name: _Idx(i.unique, i.columns, i.valid, i.partial, i.constraint)
                    for i in t.indexes.values()
                },
                constraints={
                    c.name: _Con(c.type, c.validated, c.columns, c.ref_table, c.index)
                    for c in t.constraints.values()
                },
                primary_key=t.primary_key,
                referenced_by=t.referenced_by,
                info=t,
            )
            self.relations.add(key)
            for idx in t.indexes:
                self.relations.add((t.schema, idx))
        self.relations |= self.catalog.other_relations

    @property
    def major(self) -> int:
        return self.catalog.major

    def refuse(self, problem: str, fix: str | None = None) -> None:
        self.problems.append(Refused(problem, fix))

    def table(self, schema: str | None, name: str, *, what: str = "table") -> _Table | None:
        if not self._name_ok(name, what):
            return None
        key = (self.catalog.resolve_schema(schema, name), name)
        if key in self.new_tables:
            t = self.tables.get(key)
            if t is None:
                t = _Table(key[0], name, {}, {}, {}, (), (), new=True)
                self.tables[key] = t
            return t
        t = self.tables.get(key)
        if t is None:
            where = (
                f"schema {schema}"
                if schema
                else "search path " + ", ".join(self.catalog.search_path)
            )
            self.refuse(
                f"{what} {name!r} does not exist (looked in {where})",
                "check the table name and schema, or create the table first in the same migration",
            )
        return t

    def column(self, t: _Table, name: str, *, what: str = "column") -> _Col | None:
        if t.new and name not in t.columns:
            return _Col("unknown", False, None, new=True)  # created by this migration
        col = t.columns.get(name)
        if col is None:
            known = ", ".join(sorted(t.columns)) or "none"
            self.refuse(
                f"{what} {name!r} does not exist in table {t.qual} (columns: {known})",
                "check the column name; names are case-sensitive when quoted",
            )
        return col

    def _name_ok(self, name: str, what: str) -> bool:
        if not name:
            self.refuse(f"{what} name is empty", "give a name")
            return False
        if "\x00" in name:
            self.refuse(f"{what} name {name!r} contains a NUL byte", "use a valid identifier")
            return False
        if len(name.encode()) > MAX_IDENTIFIER_BYTES:
            self.refuse(
                f"{what} name {name!r} is {len(name.encode())} bytes long; PostgreSQL keeps only"
                f" {MAX_IDENTIFIER_BYTES} and would silently truncate it",
                f"use a name of at most {MAX_IDENTIFIER_BYTES} bytes",
            )
            return False
        return True

    def new_name(self, schema: str, name: str, what: str) -> bool:
        """A name for a new relation (index) that must not exist yet."""
        if not self._name_ok(name, what):
            return False
        if (schema, name) in self.relations:
            self.refuse(
                f"{what} {name!r} already exists in schema {schema}",
                "choose another name, or drop the existing one first",
            )
            return False
        self.relations.add((schema, name))
        return True

    def new_type(self, type_: str) -> bool:
        """Is ``type_`` (as ``check_type`` returns it) created earlier in this migration
        (``CREATE TYPE`` / ``CREATE DOMAIN`` through ``RunSQL.creates``)?"""
        base = type_.removesuffix("[]").removesuffix("[]")
        for schema, name in self.new_tables:
            try:
                forms = {
                    check_type(ddl.ident(name)),
                    check_type(f"{ddl.ident(schema)}.{ddl.ident(name)}"),
                }
            except Refused:
                continue
            if base in forms:
                return True
        return False

    def expr(self, text: str, what: str) -> str | None:
        try:
            return check_expression(text, what)
        except Refused as exc:
            self.problems.append(exc)
            return None

    def volatile(self, expr: str) -> bool:
        for fn in function_names(expr):
            if self.catalog.volatility.get(fn, "v") == "v":
                return True
        return False

    def probe_expr(self, t: _Table, expr: str, type_: str | None, what: str) -> None:
        """Compile ``expr`` against the live table before any DDL (skipped when it uses
        columns this migration creates: those do not exist yet)."""
        if t.new or any(t.columns.get(c, _Col("", False, None)).new for c in column_refs(expr)):
            return
        self.probes.append(
            Probe(
                ddl.q_compile_expression(t.schema, t.name, expr, type_),
                f"{what} {expr!r} does not compile against table {t.qual}",
                "fix the expression; it must be valid in UPDATE ... SET col = <expression>",
            )
        )

    def no_subquery(self, expr: str, what: str) -> bool:
        """PostgreSQL refuses sub-queries in defaults, CHECK constraints and indexes."""
        if has_subquery(expr):
            self.refuse(
                f"{what} {expr!r} contains a subquery, which PostgreSQL does not allow there",
                "use an expression over the row's own columns (or a function)",
            )
            return False
        return True

    def default_ok(self, t: _Table, column: str, default: str) -> bool:
        """PostgreSQL refuses column references in a DEFAULT; the compile probe (an
        UPDATE ... SET expression) would accept them, so check here."""
        if not self.no_subquery(default, f"default of {t.qual}.{column}"):
            return False
        refs = sorted(column_refs(default))
        if refs:
            self.refuse(
                f"default {default!r} of {t.qual}.{column} references column(s)"
                f" {', '.join(refs)}; a DEFAULT cannot refer to other columns",
                "use a constant or a function call as the default; to fill existing rows"
                " from other columns use a backfill expression",
            )
            return False
        return True

    def not_null_once(self, t: _Table, column: str, change: str) -> bool:
        """Refuse setting and dropping NOT NULL on one column in one migration: the
        phases would run them out of the order they were asked in."""
        key = (t.schema, t.name, column)
        other = self.nullness.get(key)
        if other is not None:
            self.refuse(
                f"conflicting changes: {other} and {change} on {t.qual}.{column} in one migration",
                "keep only the one you want, or put them in two migrations",
            )
            return False
        self.nullness[key] = change
        return True

    def probe_cond(self, t: _Table, cond: str, what: str) -> None:
        if t.new or any(t.columns.get(c, _Col("", False, None)).new for c in column_refs(cond)):
            return
        self.probes.append(
            Probe(
                ddl.q_compile_condition(t.schema, t.name, cond),
                f"{what} {cond!r} does not compile against table {t.qual}",
                "fix the condition; it must be valid in a WHERE clause on that table",
            )
        )

    # --- steps -------------------------------------------------------------------

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
        phase: str,
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
    ) -> Step:
        return self.add(
            Step(
                id=sid,
                phase=phase,  # type: ignore[arg-type]
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

    def validate_step(
        self, t: _Table, name: str, description: str, *, ref: _Table | None = None, rank: int
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
                postcondition=ddl.q_constraint(t.schema, t.name, name, validated=True),
            ),
            rank,
        )

    def not_null_steps(self, t: _Table, column: str) -> None:
        """NOT NULL without a scan under ACCESS EXCLUSIVE (reference: SET NOT NULL)."""
        s, n = t.schema, t.name
        if self.major >= 18:
            con = helper_name(n, column, "not_null")
            self.brief(
                f"add_not_null.{t.qual}.{column}",
                "validate",
                "add_not_null_not_valid",
                f"add NOT NULL {con} on {t.qual}.{column} NOT VALID (new rows checked at once)",
                [ddl.add_not_null_constraint(s, n, con, column)],
                [t.qual],
                post=ddl.q_constraint(s, n, con),
                undo=[Action(ddl.drop_constraint(s, n, con))],
            )
            self.validate_step(
                t,
                con,
                f"validate NOT NULL on {t.qual}.{column} (scans, reads and writes go on)",
                rank=RANK_DEFAULT,
            )
        else:
            con = helper_name("onlineschema_nn", n, column)
            self.brief(
                f"add_not_null_check.{t.qual}.{column}",
                "validate",
                "add_check_not_valid",
                f"add CHECK ({column} IS NOT NULL) NOT VALID on {t.qual}",
                [ddl.add_check(s, n, con, ddl.check_not_null_expr(column), not_valid=True)],
                [t.qual],
                post=ddl.q_constraint(s, n, con),
                undo=[Action(ddl.drop_constraint(s, n, con))],
            )
            self.validate_step(
                t,
                con,
                f"validate CHECK ({column} IS NOT NULL) on {t.qual} (scans, reads and writes go on)",
                rank=RANK_DEFAULT,
            )
            self.brief(
                f"set_not_null.{t.qual}.{column}",
                "validate",
                "set_not_null",
                f"set NOT NULL on {t.qual}.{column} (no scan: the validated check proves it)",
                [ddl.set_not_null(s, n, column)],
                [t.qual],
                post=ddl.q_column_notnull(s, n, column),
                undo=[Action(ddl.drop_not_null(s, n, column))],
            )
            step = self.brief(
                f"drop_not_null_check.{t.qual}.{column}",
                "contract",
                "drop_helper_check",
                f"drop the helper check {con} (NOT NULL now holds it)",
                [ddl.drop_constraint(s, n, con)],
                [t.qual],
                post=ddl.q_constraint_absent(s, n, con),
            )
            step.details["squawk_ignore"] = [
                {
                    "rule": "ban-drop-constraint",
                    "why": "the helper check was created by this plan; nothing depends on it",
                }
            ]

    # --- changes -----------------------------------------------------------------

    def add_column(self, c: AddColumn) -> None:
        t = self.table(c.schema, c.table)
        if t is None or not self._name_ok(c.column, "column"):
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
        t.columns[c.column] = _Col(type_, not c.nullable, default, new=True)
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
            fn = helper_name("onlineschema_fill", n, c.column)
            trg = helper_name("onlineschema_fill", c.column)
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

    def backfill_step(
        self,
        t: _Table,
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

    def restore_not_null(self, t: _Table, column: str) -> list[Action]:
        """Abort of a DROP NOT NULL: put it back without scanning under ACCESS EXCLUSIVE
        (fails, leaving the migration abortable again, if NULLs were written meanwhile)."""
        s, n = t.schema, t.name
        if self.major >= 18:
            con = next(
                (k for k, v in t.constraints.items() if v.type == "n" and v.columns == (column,)),
                helper_name(n, column, "not_null"),
            )
            return [
                Action(ddl.add_not_null_constraint(s, n, con, column)),
                Action(ddl.validate_constraint(s, n, con), scans=True),
            ]
        chk = helper_name("onlineschema_nn", n, column)
        return [
            Action(ddl.add_check(s, n, chk, ddl.check_not_null_expr(column), not_valid=True)),
            Action(ddl.validate_constraint(s, n, chk), scans=True),
            Action(ddl.set_not_null(s, n, column)),
            Action(ddl.drop_constraint(s, n, chk)),
        ]

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

    def index_step(
        self,
        t: _Table,
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
                postcondition=ddl.q_index_valid(s, name),
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
        t.indexes[name] = _Idx(unique, tuple(columns) if not elements else (*columns, None))

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
        if not self._name_ok(c.using, "index method"):
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
        if not self._name_ok(c.name, "index"):
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

    def drop_index_step(
        self, t: _Table, index: str, description: str, *, breaking: bool = False
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
                postcondition=ddl.q_relation_absent(t.schema, index),
                breaking=breaking,
            )
        )

    def _constraint_name_free(self, t: _Table, name: str) -> bool:
        if not self._name_ok(name, "constraint"):
            return False
        if name in t.constraints:
            self.refuse(
                f"constraint {name!r} already exists on {t.qual}",
                "choose another name, or drop the existing constraint first",
            )
            return False
        return True

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
        if not ref.new and not self._has_unique(ref, ref_cols):
            self.refuse(
                f"no unique constraint or primary key on {ref.qual} ({', '.join(ref_cols)})",
                "add one first (AddUnique, in this migration or an earlier one)",
            )
            return
        new_cols = any(t.columns.get(col, _Col("", False, None)).new for col in c.columns)
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
        if not self._constraint_name_free(t, name):
            return
        t.constraints[name] = _Con("f", c.validate, tuple(c.columns), (ref.schema, ref.name))
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

    def note_missing_fk_index(self, t: _Table, ref: _Table, columns: tuple[str, ...]) -> None:
        if not any(i.columns[: len(columns)] == columns for i in t.indexes.values()):
            self.notes.append(
                f"no index on {t.qual} ({', '.join(columns)}): deletes and updates on"
                f" {ref.qual} will scan {t.qual}; consider AddIndex({t.name!r}, columns={columns!r})"
            )

    def _has_unique(self, t: _Table, cols: Sequence[str]) -> bool:
        for con in t.constraints.values():
            if con.type in ("u", "p") and set(con.columns) == set(cols):
                return True
        for info in t.indexes.values():
            if info.unique and info.valid and not info.partial and set(info.columns) == set(cols):
                return True
        return False

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
        if not self._constraint_name_free(t, name):
            return
        t.constraints[name] = _Con("c", c.validate, tuple(cols))
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
        if not self._constraint_name_free(t, name) or not self.new_name(t.schema, name, "index"):
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
        t.constraints[name] = _Con(
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


def helper_name(*parts: str) -> str:
    """A deterministic name for an object the plan creates, at most 63 bytes."""
    name = "_".join(parts)
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    head = name.encode()[: MAX_IDENTIFIER_BYTES - 9].decode(errors="ignore")
    return f"{head}_{digest}"


def auto_name(table: str, columns: Sequence[str], suffix: str) -> str:
    """PostgreSQL's own naming (``orders_status_idx``), shortened with a hash if long."""
    return helper_name(table, *columns, suffix)


HANDLERS = {
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
}


def normalize(changes: Sequence[Change]) -> list[Change]:
    """Fold follow-up changes on a column added in the same migration into its AddColumn.

    ``ADD COLUMN c; UPDATE t SET c = e; ALTER c SET NOT NULL; ALTER c SET DEFAULT d`` means
    the same as ``AddColumn(c, backfill=e, nullable=False, default=d)``, which the planner
    can run online. A follow-up is folded only where the meaning stays the same.
    """
    out: list[Change] = []
    added: dict[tuple[str | None, str, str], int] = {}
    for ch in changes:
        if isinstance(ch, AddColumn):
            added[(ch.schema, ch.table, ch.column)] = len(out)
            out.append(ch)
            continue
        key = None
        if isinstance(ch, (SetNotNull, SetDefault)):
            key = (ch.schema, ch.table, ch.column)
        elif isinstance(ch, Backfill) and len(ch.set) == 1 and ch.where is None:
            key = (ch.schema, ch.table, ch.set[0][0])
        pos = added.get(key) if key else None
        if pos is not None:
            base = out[pos]
            assert isinstance(base, AddColumn)
            if isinstance(ch, Backfill) and base.backfill is None:
                out[pos] = dataclasses.replace(base, backfill=ch.set[0][1])
                continue
            if (
                isinstance(ch, SetNotNull)
                and base.nullable
                and (base.default is not None or base.backfill is not None)
            ):
                out[pos] = dataclasses.replace(base, nullable=False)
                continue
            if isinstance(ch, SetDefault) and base.default is None and base.backfill is not None:
                out[pos] = dataclasses.replace(base, default=ch.default)
                continue
        out.append(ch)
    return out


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
        handler(p, ch)  # type: ignore[operator]
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


# Breaking changes (type changes, renames, drops) live in their own module, which uses
# the planner's model: imported last to avoid an import cycle.
from ..breaking import install_handlers  # noqa: E402

install_handlers(HANDLERS)
