"""Import contracts of the package, read with ``ast`` (nothing is imported).

* The core (changes, catalog, planner, recipes, sql, plan, expressions, errors) never
  imports the executor, the backfill engine, the integrations, the CLI, the embedded
  server or the demo: planning stays pure and usable without them.
* No import cycles between the package's modules (every import counts: module level,
  bottom of the module and inside functions).
* No ``isinstance`` dispatch on change classes outside the recipes (and the SQL front
  end, which builds changes).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import onlineschema
from onlineschema.changes import CHANGE_TYPES

pytestmark = pytest.mark.server_independent

ROOT = Path(onlineschema.__file__).parent
CORE = ("changes", "catalog", "planner", "recipes", "sql", "plan", "expressions", "errors")
#: the one execution policy: used by the executor and the backfill engine alike, so it
#: imports neither (nor anything else outside the core)
NEUTRAL = ("session",)
OUTER = ("executor", "backfill", "integrations", "django", "observe", "verify", "cli", "embedded", "demo")


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ["onlineschema", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[str]:
    """The package's modules that ``name`` imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    # imports under ``if TYPE_CHECKING:`` never run: they name a type, they do not load a
    # module, so they make no import cycle and no layering breach at run time
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If)
        and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in MODULES]
            # ``from pkg import submodule`` imports the submodule (pkg is already loaded)
            targets = subs + ([mod] if len(subs) < len(node.names) else [])
        else:
            continue
        for target in targets:
            if target in MODULES and target != name:
                yield target


GRAPH = {name: sorted(set(_imports(name, path))) for name, path in MODULES.items()}


def _in(module: str, area: str) -> bool:
    full = f"onlineschema.{area}"
    return module == full or module.startswith(full + ".")


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read() -> None:
    # a broken resolver would find no edges and pass every contract
    assert "onlineschema.recipes" in GRAPH["onlineschema.planner"]
    assert "onlineschema.sql.ddl" in GRAPH["onlineschema.recipes.add_column"]
    assert "onlineschema.planner" in GRAPH["onlineschema.executor"]
    assert "onlineschema.changes" in GRAPH["onlineschema.sqlinput"]
    assert "onlineschema.session" in GRAPH["onlineschema.backfill.engine"]


def test_the_core_never_imports_the_outer_layers() -> None:
    wrong = [
        f"{m} imports {t}"
        for m, targets in GRAPH.items()
        if any(_in(m, c) for c in (*CORE, *NEUTRAL))
        for t in targets
        if any(_in(t, o) for o in OUTER)
    ]
    assert wrong == []


def test_cycles_are_found() -> None:
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def _kind_checks(path: Path) -> list[str]:
    """``isinstance(x, <change class>)`` calls in the module, as 'line: class' (type
    narrowing in ``assert`` is not dispatch and is left out)."""
    kinds = {cls.__name__ for cls in CHANGE_TYPES.values()}
    tree = ast.parse(path.read_text())
    asserted = {id(n) for a in ast.walk(tree) if isinstance(a, ast.Assert) for n in ast.walk(a)}
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance"):
            continue
        if len(node.args) != 2 or id(node) in asserted:
            continue
        arg = node.args[1]
        names = arg.elts if isinstance(arg, ast.Tuple) else [arg]
        out += [f"{node.lineno}: {n.id}" for n in names if getattr(n, "id", None) in kinds]
    return out


def test_change_kinds_are_dispatched_by_the_registry_only() -> None:
    """What a kind does lives in its recipe: no module outside the recipes branches on
    several change classes (the SQL front end builds changes, it does not dispatch)."""
    chains = {
        name: hits
        for name, path in MODULES.items()
        if name != "onlineschema.sqlinput" and not _in(name, "recipes")
        for hits in [_kind_checks(path)]
        if len({h.split(": ")[1] for h in hits}) > 1
    }
    assert chains == {}


def test_the_kind_check_finds_a_chain(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text(
        "if isinstance(c, (AddColumn, SetNotNull)) or isinstance(c, int): pass\n"
        "assert isinstance(c, DropIndex)\n"
    )
    assert _kind_checks(sample) == ["1: AddColumn", "1: SetNotNull"]
