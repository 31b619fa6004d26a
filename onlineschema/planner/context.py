"""PlanContext: what a recipe plans with.

It holds the catalog snapshot and the model of the schema as the changes before this
one leave it (``tables``), collects refusals (every problem is reported, nothing runs),
notes for the plan and probes for the executor, and offers the lookups and checks every
recipe shares (a table or column that must exist, a free name, an expression that must
compile). Step emitters come from ``StepEmitter``.

Recipes that plan together across changes (the column copies) keep their state in a
declared extension (``ctx.extension(ColumnCopies)``), not in attributes of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..catalog import Catalog
from ..changes import Change
from ..errors import Refused
from ..expressions import check_expression, check_type, column_refs, function_names, has_subquery
from ..plan import Action, Plan, Step
from ..sql import checks, ddl
from .model import VColumn, VTable
from .naming import MAX_IDENTIFIER_BYTES, shadow_name
from .steps import StepEmitter


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


class Extension(Protocol):
    """Per-plan state of recipes that plan together (created on first use)."""

    @classmethod
    def create(cls, ctx: PlanContext) -> Any: ...


E = TypeVar("E", bound=Extension)


@dataclass
class PlanContext(StepEmitter):
    catalog: Catalog
    problems: list[Refused] = field(default_factory=list)
    steps: list[tuple[int, int, int, Step]] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: dict[tuple[str, str], VTable] = field(default_factory=dict)
    relations: set[tuple[str, str]] = field(default_factory=set)
    new_tables: set[tuple[str, str]] = field(default_factory=set)
    #: new tables (``new_tables``) that are partitioned -> their partition key's columns
    #: (None for an expression): no concurrent index build is possible on them
    new_partitioned: dict[tuple[str, str], tuple[str | None, ...]] = field(default_factory=dict)
    seq: int = 0
    ids: set[str] = field(default_factory=set)
    #: run after every change has been seen (changes planned together, e.g. the
    #: expand/contract column copies)
    finalizers: list[Callable[[PlanContext], None]] = field(default_factory=list)
    #: (schema, table, column) -> the NOT NULL change already planned for it
    nullness: dict[tuple[str, str, str], str] = field(default_factory=dict)
    #: (schema, table, column) of new columns whose existing rows get a value
    filled: set[tuple[str, str, str]] = field(default_factory=set)
    extensions: dict[type[Any], Any] = field(default_factory=dict)
    #: table -> (the change that froze it, "copy" or "drop"): its final shape exists
    #: only after that change's contract phase, so later changes on it are refused
    frozen: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)

    def extension(self, kind: type[E]) -> E:
        """The plan's instance of ``kind`` (``kind.create(ctx)`` on first use)."""
        ext = self.extensions.get(kind)
        if ext is None:
            ext = self.extensions[kind] = kind.create(self)
        assert isinstance(ext, kind)
        return ext

    def frozen_by(
        self,
        change: Change,
        touched: Sequence[tuple[str, str]],
        *,
        allow_copy: bool = False,
        copied: Collection[tuple[str, str]] = (),
    ) -> bool:
        """Refuse ``change`` if a table it touches is frozen by an earlier change (a
        column copy's table passes when ``allow_copy``: more copies join the swap; so do
        the ``copied`` tables, whose column copies the change was checked against)."""
        if not self.frozen:
            return False
        for key in touched:
            hit = self.frozen.get(key)
            if hit is None or (hit[1] == "copy" and (allow_copy or key in copied)):
                continue
            self.refuse(
                f"{change.describe()}: table {key[0]}.{key[1]} is also changed by '{hit[0]}' in"
                " this migration, and its final shape exists only after that change's contract"
                " phase",
                "put this change in a migration of its own (before this one, or after"
                " `onlineschema contract`)",
            )
            return True
        return False

    def __post_init__(self) -> None:
        for key, t in self.catalog.tables.items():
            self.tables[key] = VTable.from_info(t)
            self.relations.add(key)
            for idx in t.indexes:
                self.relations.add((t.schema, idx))
        self.relations |= self.catalog.other_relations

    @property
    def major(self) -> int:
        return self.catalog.major

    def refuse(self, problem: str, fix: str | None = None) -> None:
        self.problems.append(Refused(problem, fix))

    def table(self, schema: str | None, name: str, *, what: str = "table") -> VTable | None:
        if not self.name_ok(name, what):
            return None
        key = (self.catalog.resolve_schema(schema, name), name)
        if key in self.new_tables:
            t = self.tables.get(key)
            if t is None:
                t = VTable(key[0], name, {}, {}, {}, (), (), new=True)
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

    def column(self, t: VTable, name: str, *, what: str = "column") -> VColumn | None:
        if t.new and name not in t.columns:
            return VColumn("unknown", False, None, new=True)  # created by this migration
        col = t.columns.get(name)
        if col is None:
            known = ", ".join(sorted(t.columns)) or "none"
            self.refuse(
                f"{what} {name!r} does not exist in table {t.qual} (columns: {known})",
                "check the column name; names are case-sensitive when quoted",
            )
        return col

    def name_ok(self, name: str, what: str) -> bool:
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

    def recreated(self, t: VTable, name: str, kind: str) -> str:
        """The name to build ``name`` under: a temporary one when this migration drops an
        index (``kind="index"``) or a constraint of ``t`` of that name earlier, else
        ``name``; the rename to ``name`` is planned after that drop (contract).

        Prisma drops and creates an index or foreign key again under the same name
        whenever it changes; the new one is built (concurrently, or ``NOT VALID`` +
        ``VALIDATE``) while the old one still exists, so under a temporary name."""
        dropped = (
            f"drop_index.{t.schema}.{name}"
            if kind == "index"
            else f"drop_constraint.{t.qual}.{name}"
        )
        if dropped not in self.ids:
            return name
        temp = shadow_name(name)
        s, n = t.schema, t.name
        if kind == "index":
            statement = ddl.rename_index(s, temp, name)
            post = checks.q_index_valid(s, name)
            undo = ddl.rename_index(s, name, temp)
        else:
            statement = ddl.rename_constraint(s, n, temp, name)
            post = checks.q_constraint(s, n, name)
            undo = ddl.rename_constraint(s, n, name, temp)
        self.brief(
            f"rename_{kind}.{t.qual}.{temp}",
            "contract",
            f"rename_{kind}",
            f"rename {kind} {temp} to {name}, the name of the one dropped just before"
            " (catalog only)",
            [statement],
            [t.qual],
            post=post,
            undo=[Action(undo)],
        )
        self.notes.append(
            f"{kind} {name} on {t.qual} is dropped and created again: the new one is built as"
            f" {temp} and renamed to {name} once the old one is dropped"
        )
        return temp

    def empty(self, t: VTable) -> bool:
        """Was the table empty when the catalog was read (``read_catalog(probe_rows=)``)?"""
        return t.info is not None and t.info.has_rows is False

    def new_name(self, schema: str, name: str, what: str) -> bool:
        """A name for a new relation (index) that must not exist yet."""
        if not self.name_ok(name, what):
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

    def probe_expr(self, t: VTable, expr: str, type_: str | None, what: str) -> None:
        """Compile ``expr`` against the live table before any DDL (skipped when it uses
        columns this migration creates: those do not exist yet)."""
        if t.new or any(t.columns.get(c, VColumn("", False, None)).new for c in column_refs(expr)):
            return
        self.probes.append(
            Probe(
                checks.q_compile_expression(t.schema, t.name, expr, type_),
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

    def default_ok(self, t: VTable, column: str, default: str) -> bool:
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

    def not_null_once(self, t: VTable, column: str, change: str) -> bool:
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

    def probe_cond(self, t: VTable, cond: str, what: str) -> None:
        if t.new or any(t.columns.get(c, VColumn("", False, None)).new for c in column_refs(cond)):
            return
        self.probes.append(
            Probe(
                checks.q_compile_condition(t.schema, t.name, cond),
                f"{what} {cond!r} does not compile against table {t.qual}",
                "fix the condition; it must be valid in a WHERE clause on that table",
            )
        )

    def constraint_name_free(self, t: VTable, name: str) -> bool:
        if not self.name_ok(name, "constraint"):
            return False
        if name in t.constraints:
            self.refuse(
                f"constraint {name!r} already exists on {t.qual}",
                "choose another name, or drop the existing constraint first",
            )
            return False
        return True

    def has_unique(self, t: VTable, cols: Sequence[str]) -> bool:
        for con in t.constraints.values():
            if con.type in ("u", "p") and set(con.columns) == set(cols):
                return True
        for info in t.indexes.values():
            if info.unique and info.valid and not info.partial and set(info.columns) == set(cols):
                return True
        return False

    def note_missing_fk_index(self, t: VTable, ref: VTable, columns: tuple[str, ...]) -> None:
        if not any(i.columns[: len(columns)] == columns for i in t.indexes.values()):
            self.notes.append(
                f"no index on {t.qual} ({', '.join(columns)}): deletes and updates on"
                f" {ref.qual} will scan {t.qual}; consider AddIndex({t.name!r}, columns={columns!r})"
            )
