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

import importlib
import pkgutil

from .base import CatalogNeeds, Recipe, find, lookup, recipe_for, registered

# every module of this package is a recipe module: importing it registers its recipes
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["CatalogNeeds", "Recipe", "find", "lookup", "recipe_for", "registered"]
