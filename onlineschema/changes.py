"""The changes a user can ask for, as small immutable data objects.

A change says *what* should be true of the schema afterwards; the planner decides *how*
to get there without blocking the application. Changes are serialisable (``to_dict`` /
``change_from_dict``) so a migration's request is stored with it and compared on resume.

Expressions (defaults, backfill values, ``WHERE`` and ``CHECK`` conditions, index
elements) are SQL text: they are parsed with PostgreSQL's own parser before use and
must be a single expression, never a statement.

Example::

    >>> from onlineschema import AddColumn, AddIndex
    >>> changes = [
    ...     AddColumn("orders", "status", "text", nullable=False, default="'new'"),
    ...     AddIndex("orders", columns=("status",)),
    ... ]
    >>> changes[0].describe()
    "add column orders.status text NOT NULL DEFAULT 'new'"
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "AddCheck",
    "AddColumn",
    "AddForeignKey",
    "AddIdentity",
    "AddIndex",
    "AddUnique",
    "AlterColumnType",
    "Backfill",
    "Change",
    "DropColumn",
    "DropConstraint",
    "DropDefault",
    "DropIndex",
    "DropNotNull",
    "DropTable",
    "Reindex",
    "RenameColumn",
    "RenameConstraint",
    "RenameIndex",
    "RunSQL",
    "SetDefault",
    "SetNotNull",
    "ValidateConstraint",
    "change_from_dict",
]


@dataclass(frozen=True)
class Change:
    """Base class. ``kind`` is the stable name used in JSON and in step ids."""

    kind: ClassVar[str] = "change"
    #: A change that breaks running code unless deployed in expand/contract order.
    breaking: ClassVar[bool] = False

    def tables(self) -> tuple[str, ...]:
        table = getattr(self, "table", None)
        return (table,) if table else ()

    def describe(self) -> str:
        raise NotImplementedError  # pragma: no cover - every subclass defines it

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("omit_if_default") and value == f.default:
                continue  # a later option: left out so older requests keep their hash
            out[f.name] = _jsonable(value)
        return out


CHANGE_TYPES: dict[str, type[Change]] = {}
C = typing.TypeVar("C", bound="type[Change]")


def register_change(cls: C) -> C:
    """Class decorator: register a change class under its ``kind`` so
    ``change_from_dict`` can rebuild it (its recipe registers with ``recipe_for``)."""
    old = CHANGE_TYPES.get(cls.kind)
    if old is not None and old is not cls:
        raise ValueError(f"change kind {cls.kind!r} is already {old.__name__}")
    CHANGE_TYPES[cls.kind] = cls
    return cls


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


def _q(schema: str | None, name: str) -> str:
    return f"{schema}.{name}" if schema else name


@register_change
@dataclass(frozen=True)
class AddColumn(Change):
    """Add a column. ``default`` applies to new rows and, unless ``backfill`` is given,
    to existing rows too; ``backfill`` is an expression over the row that fills the
    existing rows (``"CASE WHEN amount > 100 THEN 'big' ELSE 'small' END"``)."""

    kind: ClassVar[str] = "add_column"
    table: str
    column: str
    type: str
    nullable: bool = True
    default: str | None = None
    backfill: str | None = None
    schema: str | None = None

    def describe(self) -> str:
        text = f"add column {_q(self.schema, self.table)}.{self.column} {self.type}"
        if not self.nullable:
            text += " NOT NULL"
        if self.default is not None:
            text += f" DEFAULT {self.default}"
        if self.backfill is not None:
            text += f", existing rows set to {self.backfill}"
        return text


@register_change
@dataclass(frozen=True)
class SetNotNull(Change):
    kind: ClassVar[str] = "set_not_null"
    table: str
    column: str
    schema: str | None = None

    def describe(self) -> str:
        return f"set NOT NULL on {_q(self.schema, self.table)}.{self.column}"


@register_change
@dataclass(frozen=True)
class DropNotNull(Change):
    kind: ClassVar[str] = "drop_not_null"
    table: str
    column: str
    schema: str | None = None

    def describe(self) -> str:
        return f"drop NOT NULL on {_q(self.schema, self.table)}.{self.column}"


@register_change
@dataclass(frozen=True)
class SetDefault(Change):
    kind: ClassVar[str] = "set_default"
    table: str
    column: str
    default: str
    schema: str | None = None

    def describe(self) -> str:
        return f"set default of {_q(self.schema, self.table)}.{self.column} to {self.default}"


@register_change
@dataclass(frozen=True)
class DropDefault(Change):
    kind: ClassVar[str] = "drop_default"
    table: str
    column: str
    schema: str | None = None

    def describe(self) -> str:
        return f"drop default of {_q(self.schema, self.table)}.{self.column}"


@register_change
@dataclass(frozen=True)
class AddIndex(Change):
    """An index built ``CONCURRENTLY``. ``columns`` are column names; ``expressions``
    are index elements as SQL (``"lower(email)"``, ``"created_at DESC"``), placed after
    the columns."""

    kind: ClassVar[str] = "add_index"
    table: str
    columns: tuple[str, ...] = ()
    expressions: tuple[str, ...] = ()
    name: str | None = None
    unique: bool = False
    where: str | None = None
    using: str = "btree"
    include: tuple[str, ...] = ()
    schema: str | None = None

    def describe(self) -> str:
        elems = ", ".join((*self.columns, *self.expressions))
        text = f"add {'unique ' if self.unique else ''}index {self.name or '(auto)'}"
        text += f" on {_q(self.schema, self.table)} using {self.using} ({elems})"
        if self.include:
            text += f" include ({', '.join(self.include)})"
        if self.where:
            text += f" where {self.where}"
        return text


@register_change
@dataclass(frozen=True)
class DropIndex(Change):
    kind: ClassVar[str] = "drop_index"
    name: str
    if_exists: bool = False
    schema: str | None = None

    def describe(self) -> str:
        return f"drop index {_q(self.schema, self.name)}"


@register_change
@dataclass(frozen=True)
class Reindex(Change):
    """Rebuild an existing index with ``REINDEX INDEX CONCURRENTLY`` (e.g. after a large
    backfill left it bloated): reads and writes go on."""

    kind: ClassVar[str] = "reindex"
    name: str
    schema: str | None = None

    def describe(self) -> str:
        return f"reindex {_q(self.schema, self.name)} concurrently"


@register_change
@dataclass(frozen=True)
class AddForeignKey(Change):
    kind: ClassVar[str] = "add_foreign_key"
    table: str
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...] = ()
    name: str | None = None
    on_delete: str | None = None
    on_update: str | None = None
    #: False keeps the constraint NOT VALID (checks new rows only).
    validate: bool = True
    deferrable: bool = False
    initially_deferred: bool = False
    schema: str | None = None
    ref_schema: str | None = None

    def tables(self) -> tuple[str, ...]:
        return (self.table, self.ref_table)

    def describe(self) -> str:
        text = (
            f"add foreign key {self.name or '(auto)'} on {_q(self.schema, self.table)}"
            f" ({', '.join(self.columns)}) references {_q(self.ref_schema, self.ref_table)}"
        )
        if self.ref_columns:
            text += f" ({', '.join(self.ref_columns)})"
        if self.on_delete:
            text += f" on delete {self.on_delete}"
        if self.on_update:
            text += f" on update {self.on_update}"
        return text


@register_change
@dataclass(frozen=True)
class AddCheck(Change):
    kind: ClassVar[str] = "add_check"
    table: str
    expression: str
    name: str | None = None
    validate: bool = True
    schema: str | None = None

    def describe(self) -> str:
        return (
            f"add check {self.name or '(auto)'} on {_q(self.schema, self.table)}: {self.expression}"
        )


@register_change
@dataclass(frozen=True)
class AddUnique(Change):
    """A UNIQUE (or PRIMARY KEY) constraint built from a concurrently built unique index,
    ``DEFERRABLE [INITIALLY DEFERRED]`` when asked."""

    kind: ClassVar[str] = "add_unique"
    table: str
    columns: tuple[str, ...]
    name: str | None = None
    primary_key: bool = False
    schema: str | None = None
    deferrable: bool = field(default=False, metadata={"omit_if_default": True})
    initially_deferred: bool = field(default=False, metadata={"omit_if_default": True})

    def describe(self) -> str:
        what = "primary key" if self.primary_key else "unique constraint"
        return (
            f"add {what} {self.name or '(auto)'} on {_q(self.schema, self.table)}"
            f" ({', '.join(self.columns)})"
        )


@register_change
@dataclass(frozen=True)
class ValidateConstraint(Change):
    kind: ClassVar[str] = "validate_constraint"
    table: str
    name: str
    schema: str | None = None

    def describe(self) -> str:
        return f"validate constraint {self.name} on {_q(self.schema, self.table)}"


@register_change
@dataclass(frozen=True)
class DropConstraint(Change):
    kind: ClassVar[str] = "drop_constraint"
    table: str
    name: str
    if_exists: bool = False
    schema: str | None = None

    def describe(self) -> str:
        return f"drop constraint {self.name} on {_q(self.schema, self.table)}"


@register_change
@dataclass(frozen=True)
class Backfill(Change):
    """``UPDATE table SET col = expr, ... [WHERE ...]`` run in batches.

    ``set`` maps column names to expressions; a dict is accepted and kept as pairs.
    """

    kind: ClassVar[str] = "backfill"
    table: str
    set: tuple[tuple[str, str], ...] = field(default=())
    where: str | None = None
    schema: str | None = None

    if typing.TYPE_CHECKING:  # the constructor also takes a mapping

        def __init__(
            self,
            table: str,
            set: Mapping[str, str] | typing.Iterable[tuple[str, str]] = (),
            where: str | None = None,
            schema: str | None = None,
        ) -> None: ...

    def __post_init__(self) -> None:
        raw: Any = self.set
        if isinstance(raw, Mapping):
            object.__setattr__(self, "set", tuple((str(k), str(v)) for k, v in raw.items()))
        else:
            object.__setattr__(self, "set", tuple((str(k), str(v)) for k, v in raw))

    def describe(self) -> str:
        sets = ", ".join(f"{c} = {e}" for c, e in self.set)
        text = f"backfill {_q(self.schema, self.table)}: set {sets}"
        if self.where:
            text += f" where {self.where}"
        return text


@register_change
@dataclass(frozen=True)
class RunSQL(Change):
    """A statement run as written, as one lock-guarded step.

    Used for statements that only create new objects (``CREATE TABLE``, ``CREATE
    FUNCTION``...), which nothing else is using yet, and for ``--allow-raw``.
    ``raw`` marks a statement the planner could not make safe: it is flagged in the plan.
    """

    kind: ClassVar[str] = "run_sql"
    sql: str
    raw: bool = False
    #: Tables the statement touches (for the lock guard), when known.
    touches: tuple[str, ...] = ()
    transactional: bool = True
    #: Relations the statement creates (``schema.name`` or ``name``): later changes in
    #: the same migration may use them, and the planner knows they are new and empty.
    creates: tuple[str, ...] = ()
    #: A framework's record of the migration (``alembic_version``, ``django_migrations``,
    #: ``_prisma_migrations``): run last, once everything else is done.
    bookkeeping: bool = field(default=False, metadata={"omit_if_default": True})

    def tables(self) -> tuple[str, ...]:
        return self.touches

    def describe(self) -> str:
        text = " ".join(self.sql.split())
        if len(text) > 80:
            text = text[:77] + "..."
        what = "raw SQL" if self.raw else "bookkeeping" if self.bookkeeping else "create"
        return f"{what}: {text}"


@register_change
@dataclass(frozen=True)
class AlterColumnType(Change):
    """Change a column's type; ``using`` converts existing values (``USING`` clause).

    When the change needs a copy of the column (expand/contract), writes by code that
    already uses the new column are copied back into the old one with ``reverse_using``,
    an expression over the column's name meaning its new value (default: a cast back to
    the old type, or none when ``using`` is given: such writes are then refused until
    the contract phase).
    """

    kind: ClassVar[str] = "alter_column_type"
    breaking: ClassVar[bool] = True
    table: str
    column: str
    type: str
    using: str | None = None
    schema: str | None = None
    reverse_using: str | None = None

    def describe(self) -> str:
        text = f"change type of {_q(self.schema, self.table)}.{self.column} to {self.type}"
        text += f" using {self.using}" if self.using else ""
        return text + (f" (back: {self.reverse_using})" if self.reverse_using else "")


@register_change
@dataclass(frozen=True)
class RenameColumn(Change):
    """Rename a column. ``instant=True`` renames in place (breaks running code that uses
    the old name); otherwise both names work until the contract phase."""

    kind: ClassVar[str] = "rename_column"
    breaking: ClassVar[bool] = True
    table: str
    column: str
    new_name: str
    instant: bool = False
    schema: str | None = None

    def describe(self) -> str:
        return f"rename column {_q(self.schema, self.table)}.{self.column} to {self.new_name}"


@register_change
@dataclass(frozen=True)
class AddIdentity(Change):
    """Make a NOT NULL column an identity column (``ALTER COLUMN c ADD GENERATED
    {ALWAYS | BY DEFAULT} AS IDENTITY [(options)]``): catalog only, a brief ACCESS
    EXCLUSIVE lock. ``options`` are sequence options as SQL (``"START WITH 100"``)."""

    kind: ClassVar[str] = "add_identity"
    table: str
    column: str
    always: bool = False
    options: str | None = None
    schema: str | None = None

    def describe(self) -> str:
        how = "ALWAYS" if self.always else "BY DEFAULT"
        text = f"make {_q(self.schema, self.table)}.{self.column} GENERATED {how} AS IDENTITY"
        return text + (f" ({self.options})" if self.options else "")


@register_change
@dataclass(frozen=True)
class RenameIndex(Change):
    """``ALTER INDEX name RENAME TO new_name``: catalog only; running queries do not name
    indexes (SHARE UPDATE EXCLUSIVE on the index, PostgreSQL 12+)."""

    kind: ClassVar[str] = "rename_index"
    name: str
    new_name: str
    schema: str | None = None

    def describe(self) -> str:
        return f"rename index {_q(self.schema, self.name)} to {self.new_name}"


@register_change
@dataclass(frozen=True)
class RenameConstraint(Change):
    """``ALTER TABLE t RENAME CONSTRAINT name TO new_name``: catalog only, a brief ACCESS
    EXCLUSIVE lock (the index of a unique or primary key constraint is renamed with it)."""

    kind: ClassVar[str] = "rename_constraint"
    table: str
    name: str
    new_name: str
    schema: str | None = None

    def describe(self) -> str:
        return f"rename constraint {self.name} on {_q(self.schema, self.table)} to {self.new_name}"


@register_change
@dataclass(frozen=True)
class DropColumn(Change):
    """Drop a column. ``cascade`` (SQL ``DROP COLUMN ... CASCADE``, which Django writes on
    every RemoveField) is accepted when it takes nothing beyond the column's own indexes
    and constraints; anything else it would drop (views, other tables' foreign keys) is
    refused, named."""

    kind: ClassVar[str] = "drop_column"
    breaking: ClassVar[bool] = True
    table: str
    column: str
    if_exists: bool = False
    schema: str | None = None
    cascade: bool = field(default=False, metadata={"omit_if_default": True})

    def describe(self) -> str:
        return f"drop column {_q(self.schema, self.table)}.{self.column}"


@register_change
@dataclass(frozen=True)
class DropTable(Change):
    """Drop a table. ``cascade`` (SQL ``DROP TABLE ... CASCADE``, which Django writes on
    every DeleteModel) is accepted when it takes nothing beyond the table's own indexes,
    constraints and sequences; foreign keys of other tables that reference it are
    refused, named (views over it are refused for every drop)."""

    kind: ClassVar[str] = "drop_table"
    breaking: ClassVar[bool] = True
    table: str
    if_exists: bool = False
    schema: str | None = None
    cascade: bool = field(default=False, metadata={"omit_if_default": True})

    def describe(self) -> str:
        return f"drop table {_q(self.schema, self.table)}"


def change_from_dict(data: Mapping[str, Any]) -> Change:
    """Rebuild a change from ``Change.to_dict()`` output."""
    data = dict(data)
    kind = data.pop("kind", None)
    cls = CHANGE_TYPES.get(str(kind))
    if cls is None:
        raise ValueError(f"unknown change kind {kind!r}; known: {', '.join(sorted(CHANGE_TYPES))}")
    hints = typing.get_type_hints(cls)
    kwargs = {
        f.name: _from_json(hints[f.name], data[f.name])
        for f in dataclasses.fields(cls)
        if f.name in data
    }
    return cls(**kwargs)


def _from_json(hint: Any, value: Any) -> Any:
    """A JSON value as the field's type: lists back to (nested) tuples."""
    if not isinstance(value, list):
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        tuples = [a for a in args if typing.get_origin(a) is tuple]
        return _from_json(tuples[0], value) if tuples else value
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json(args[0], v) for v in value)
        return tuple(_from_json(a, v) for a, v in zip(args, value, strict=True))
    return tuple(value)


def changes_to_json(changes: typing.Sequence[Change]) -> str:
    """Canonical JSON of a list of changes (sorted keys): what a migration is keyed on."""
    return json.dumps([c.to_dict() for c in changes], sort_keys=True, separators=(",", ":"))
