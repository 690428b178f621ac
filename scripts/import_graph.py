#!/usr/bin/env python3
"""Print md_export's internal import graph and any cycle in it.

Every import counts, including those inside functions and under
``if TYPE_CHECKING``: a cycle hidden in a function body is still a cycle for
a reader. Exit 1 when a cycle exists, so the test suite can run this.

    python scripts/import_graph.py            # packages, their imports, cycles
    python scripts/import_graph.py --modules  # module-level graph instead
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src"
PACKAGE = "md_export"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Internal modules that ``name`` imports, anywhere in its body."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(name, is_package, node)
            # `from pkg import mod` imports pkg.mod when it is a module.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target.startswith(PACKAGE) and target != name:
                found.add(target)
    return found


def graph(level: str) -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        src = collapse(name, level)
        edges.setdefault(src, set())
        for target in imports_of(name, path, known):
            dst = collapse(target, level)
            if dst != src:
                edges[src].add(dst)
    return edges


def collapse(name: str, level: str) -> str:
    """``md_export.verify.check`` -> ``md_export.verify`` at package level."""
    if level == "modules":
        return name
    parts = name.split(".")
    return ".".join(parts[:2])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", action="store_true", help="module-level graph (default: packages)")
    args = parser.parse_args()
    edges = graph("modules" if args.modules else "packages")
    for src in sorted(edges):
        deps = ", ".join(d.removeprefix(PACKAGE + ".") for d in sorted(edges[src])) or "-"
        print(f"{src.removeprefix(PACKAGE + '.') or PACKAGE}: {deps}")
    # The module-level graph is the one the issue counts; report it always.
    found = cycles(graph("modules"))
    if not found:
        print(f"no import cycle among {len(all_modules())} modules (function-local imports counted)")
        return 0
    for component in found:
        print(f"cycle of {len(component)} modules: {', '.join(component)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
