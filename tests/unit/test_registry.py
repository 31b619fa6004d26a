"""The change and recipe registries: complete, strict, and what JSON round trips use."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from golden.cases import CASES, OFFLINE

from onlineschema import AddIndex, Backfill, change_from_dict
from onlineschema.changes import CHANGE_TYPES, Change, register_change
from onlineschema.recipes import Recipe, find, recipe_for, registered
from onlineschema.recipes.base import _RECIPES

pytestmark = pytest.mark.server_independent

RECIPE_TESTS = Path(__file__).parents[1] / "recipes"


@pytest.mark.parametrize("kind", sorted(CHANGE_TYPES))
def test_every_change_kind_has_a_recipe_a_golden_case_and_a_test_file(kind: str) -> None:
    cls = CHANGE_TYPES[kind]
    assert cls in registered(), f"{cls.__name__} has no @recipe_for recipe of its own"
    assert any(kind in case.kinds for case in CASES), f"no golden case plans a {kind}"
    path = RECIPE_TESTS / f"test_{kind}.py"
    assert path.exists(), f"no {path.relative_to(RECIPE_TESTS.parent)}"
    text = path.read_text()
    assert "golden_ids(" in text and "check(" in text, f"{path.name} does not check golden plans"
    assert re.search(r"def test_\w+\(\s*dsn: str", text), f"{path.name} has no real-server test"


def test_every_recipe_is_for_a_registered_change() -> None:
    assert {c.kind for c in registered()} <= set(CHANGE_TYPES)


def test_every_change_round_trips_through_json() -> None:
    changes = [c for case in CASES for c in case.changes]
    changes += [c for cs in OFFLINE.values() for c in cs]
    assert {c.kind for c in changes} == set(CHANGE_TYPES)
    for change in changes:
        again = change_from_dict(change.to_dict())
        assert again == change and type(again) is type(change)
    nested = change_from_dict({"kind": "backfill", "table": "t", "set": [["a", "1"]]})
    assert isinstance(nested, Backfill) and nested.set == (("a", "1"),)


def test_unknown_kind_says_which_are_known() -> None:
    with pytest.raises(ValueError, match="unknown change kind 'nope'; known: add_check"):
        change_from_dict({"kind": "nope"})


def test_a_second_recipe_is_refused_unless_replacing() -> None:
    original = _RECIPES[AddIndex]
    with pytest.raises(ValueError, match="AddIndex already has a recipe"):

        @recipe_for(AddIndex)
        class Again(Recipe[AddIndex]):
            pass

    try:

        @recipe_for(AddIndex, replace=True)
        class Replaced(Recipe[AddIndex]):
            pass

        assert isinstance(find(AddIndex), Replaced)
    finally:
        _RECIPES[AddIndex] = original
    assert find(AddIndex) is original


def test_lookup_walks_the_mro_and_a_kind_is_registered_once() -> None:
    @dataclass(frozen=True)
    class UniqueIndex(AddIndex):
        pass

    assert find(UniqueIndex) is find(AddIndex)

    @dataclass(frozen=True)
    class Odd(Change):
        kind: ClassVar[str] = "add_index"

    with pytest.raises(ValueError, match="change kind 'add_index' is already AddIndex"):
        register_change(Odd)
    assert find(Odd) is None
