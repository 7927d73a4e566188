"""The import graph between nxstore's packages has no circle (issue 13).

`make test` also runs the import-linter layers contract (pyproject.toml), which forbids
every upward import; this test checks the property the contract is for, on grimp's graph
(the one import-linter builds: TYPE_CHECKING and function-local imports included).
"""

from __future__ import annotations

import grimp
import pytest


def package_of(module: str) -> str:
    """nxstore.store.vdisk -> nxstore.store; a top-level module is its own package."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph("nxstore", cache_dir=None)
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        for imported in graph.find_modules_directly_imported_by(module):
            a, b = package_of(module), package_of(imported)
            if a != b:
                edges.setdefault(a, set()).add(b)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A circle of packages (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_circle_between_packages() -> None:
    edges = package_graph()
    assert "nxstore.store" in edges and "nxstore.cluster" in edges  # the graph is real
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges) or [])


def test_the_engine_imports_no_layer_above_it() -> None:
    above = {"nxstore.replication", "nxstore.protection", "nxstore.nearsync",
             "nxstore.cluster", "nxstore.fsck", "nxstore.cli"}
    assert not package_graph()["nxstore.store"] & above


@pytest.mark.parametrize("edges, cycle", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
])
def test_find_cycle_finds_a_planted_circle(edges: dict[str, set[str]],
                                           cycle: list[str] | None) -> None:
    assert find_cycle(edges) == cycle
