"""Print the package's import graph, folded to top-level areas, and its import cycles.

    python scripts/import_graph.py            # area -> areas it imports, then cycles
    python scripts/import_graph.py --modules  # module by module

The graph is the one tests/unit/test_architecture.py checks (read with ``ast``; imports
under ``if TYPE_CHECKING:`` do not count, they load nothing).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "unit"))

import test_architecture as arch


def area(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def main(argv: list[str]) -> int:
    if "--modules" in argv:
        for name in sorted(arch.GRAPH):
            print(f"{name} -> {', '.join(arch.GRAPH[name]) or '-'}")
    else:
        folded: dict[str, set[str]] = {}
        for name, targets in arch.GRAPH.items():
            folded.setdefault(area(name), set()).update(
                area(t) for t in targets if area(t) != area(name)
            )
        for name in sorted(folded):
            short = sorted(t.removeprefix("onlineschema.") for t in folded[name])
            print(f"{name.removeprefix('onlineschema.'):14} -> {', '.join(short) or '-'}")
    found = arch.cycles(arch.GRAPH)
    print(f"\nimport cycles: {found or 'none'}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
