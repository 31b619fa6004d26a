"""Recipes: *how* each change kind is planned (Alembic's ``implementation_for``).

A change class (``changes.py``) says what is wanted; its recipe turns it into steps
against the plan context, says which part of the catalog it needs read, and what it
assumes of the schema when there is no database (``alembic upgrade --sql``). One module
per kind; a new kind is a ``@register_change`` class, a ``@recipe_for`` class and a test
file, nothing else is edited::

    @recipe_for(AddExclusionConstraint)
    class AddExclusionConstraintRecipe(Recipe[AddExclusionConstraint]):
        def plan(self, ctx: PlanContext, change: AddExclusionConstraint) -> None: ...

Lookup walks the change class's MRO, so a subclass of a change uses its base's recipe
unless it registers its own. Registering a second recipe for a kind is an error unless
``replace=True``.
"""

from __future__ import annotations

# the built-in recipes register themselves on import
from . import (
    add_check,
    add_column,
    add_foreign_key,
    add_index,
    add_unique,
    alter_column_type,
    backfill,
    drop_column,
    drop_constraint,
    drop_default,
    drop_index,
    drop_not_null,
    drop_table,
    rename_column,
    run_sql,
    set_default,
    set_not_null,
    validate_constraint,
)
from .base import CatalogNeeds, Recipe, find, lookup, recipe_for, registered

__all__ = [
    "CatalogNeeds",
    "Recipe",
    "add_check",
    "add_column",
    "add_foreign_key",
    "add_index",
    "add_unique",
    "alter_column_type",
    "backfill",
    "drop_column",
    "drop_constraint",
    "drop_default",
    "drop_index",
    "drop_not_null",
    "drop_table",
    "find",
    "lookup",
    "recipe_for",
    "registered",
    "rename_column",
    "run_sql",
    "set_default",
    "set_not_null",
    "validate_constraint",
]
