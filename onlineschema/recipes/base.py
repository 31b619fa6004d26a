"""The recipe registry: ``Recipe`` base class, ``@recipe_for``, MRO lookup."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from ..changes import AddColumn, Change
from ..errors import Refused
from ..expressions import check_type, function_names
from ..planner.assumed import AssumedSchema
from ..planner.context import PlanContext

C = TypeVar("C", bound=Change)


@dataclass
class CatalogNeeds:
    """What ``read_catalog`` must read for a change: ``(schema or None, name)`` pairs of
    tables and of index names, function names (for their volatility), type names;
    tables to look into for a row (``probe_rows``: a change possible only while the table
    is empty) and the prefixes of names PostgreSQL's own naming must avoid."""

    tables: set[tuple[str | None, str]] = field(default_factory=set)
    index_names: set[tuple[str | None, str]] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    types: set[str] = field(default_factory=set)
    probe_rows: set[tuple[str | None, str]] = field(default_factory=set)
    name_prefixes: set[tuple[str | None, str]] = field(default_factory=set)

    def expressions(self, texts: Iterable[str | None]) -> None:
        """The functions these expressions call (a bad expression is the planner's to
        report)."""
        for text in texts:
            if text is None:
                continue
            try:
                self.functions |= function_names(text)
            except Refused:
                pass

    def type(self, text: str) -> None:
        try:
            check_type(text)  # to_regtype() raises on a malformed name
        except Refused:
            return  # reported by the planner
        self.types.add(text)

    def update(self, other: CatalogNeeds) -> None:
        self.tables |= other.tables
        self.index_names |= other.index_names
        self.functions |= other.functions
        self.types |= other.types
        self.probe_rows |= other.probe_rows
        self.name_prefixes |= other.name_prefixes


class Recipe(Generic[C]):
    """Base of every recipe. Capability flags are class attributes (Django style)."""

    #: can ``alembic upgrade --sql`` render it without a database? (a breaking change's
    #: plan depends on the live table)
    offline_ok: ClassVar[bool] = True
    #: can an offline abort script undo its steps? (a default's previous value is not
    #: known without the database)
    undo_offline_ok: ClassVar[bool] = True

    def plan(self, ctx: PlanContext, change: C) -> None:
        """Check ``change`` against ``ctx.tables``, update them, emit its steps (every
        phase: expand, backfill, validate, contract; undo actions for abort)."""
        raise NotImplementedError

    def expressions(self, change: C) -> Iterable[str | None]:
        """The user expressions the change carries (their functions are read)."""
        return ()

    def catalog_needs(self, change: C) -> CatalogNeeds:
        """Default: the change's table and its expressions' functions."""
        needs = CatalogNeeds()
        table = getattr(change, "table", None)
        if table:
            needs.tables.add((getattr(change, "schema", None), table))
        needs.expressions(self.expressions(change))
        return needs

    def touched(self, ctx: PlanContext, change: C) -> list[tuple[str, str]]:
        """The existing tables the change uses (for the frozen-table guard)."""
        keys = []
        for attr, sattr in (("table", "schema"), ("ref_table", "ref_schema")):
            name = getattr(change, attr, None)
            if isinstance(name, str):
                keys.append((ctx.catalog.resolve_schema(getattr(change, sattr, None), name), name))
        return keys

    def joins_column_copy(self, change: C) -> bool:
        """May it run on a table whose columns are being copied (it is one more copy)?"""
        return False

    def adds_column(self, change: C) -> tuple[str | None, str, str] | None:
        """(schema, table, column) of the column the change adds, which later changes
        of the migration may be folded into (``planner.normalize``)."""
        return None

    def follows_up(self, change: C) -> tuple[str | None, str, str] | None:
        """(schema, table, column) of the column whose ``AddColumn`` this change may be
        folded into, when that column is added by the same migration."""
        return None

    def copies_column(self, change: C) -> tuple[str | None, str, str] | None:
        """(schema, table, column) of the column the change replaces by a copy of
        another type (``planner.normalize`` moves a SET NOT NULL of it after)."""
        return None

    def after_copy(self, change: C) -> tuple[str | None, str, str] | None:
        """(schema, table, column) of the column whose later type change (a column
        copy) this change is moved right after, when there is one."""
        return None

    def fold(self, change: C, added: AddColumn) -> AddColumn | None:
        """``added`` with this change folded in, or None where the meaning would change."""
        return None

    def announce(self, change: C, schema: AssumedSchema) -> None:
        """Offline, before any ``assume``: what the change creates for the others."""

    def assume(self, change: C, schema: AssumedSchema) -> None:
        """Offline: make the schema one in which ``change`` is valid. Default: its table
        exists."""
        table = getattr(change, "table", None)
        if table:
            schema.table(getattr(change, "schema", None), table)


_RECIPES: dict[type[Change], Recipe[Any]] = {}


def recipe_for(
    change_type: type[C], *, replace: bool = False
) -> Callable[[type[Recipe[C]]], type[Recipe[C]]]:
    """Class decorator: the recipe of ``change_type``."""

    def register(cls: type[Recipe[C]]) -> type[Recipe[C]]:
        old = _RECIPES.get(change_type)
        if old is not None and not replace:
            raise ValueError(
                f"{change_type.__name__} already has a recipe ({type(old).__name__});"
                " pass replace=True to replace it"
            )
        _RECIPES[change_type] = cls()
        return cls

    return register


def find(change_type: type[Change]) -> Recipe[Any] | None:
    """The recipe of ``change_type`` or of its nearest base class, if any."""
    for cls in change_type.__mro__:
        recipe = _RECIPES.get(cls)
        if recipe is not None:
            return recipe
    return None


def lookup(change: Change) -> Recipe[Any]:
    recipe = find(type(change))
    if recipe is None:
        raise LookupError(f"no recipe for {type(change).__name__}")
    return recipe


def registered() -> Mapping[type[Change], Recipe[Any]]:
    """Every change type with a recipe of its own."""
    return dict(_RECIPES)
