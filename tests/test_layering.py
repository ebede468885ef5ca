"""The package's import graph has no cycle: the memory model sits above the models it measures, history geometry
below both the sampler and the memory model, and no import hides inside a function to dodge a cycle."""

import ast
import os
from typing import Dict, Set

import pyramid_flow

PACKAGE_DIR = os.path.dirname(pyramid_flow.__file__)


def module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[: -len(".py")].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def modules() -> Dict[str, str]:
    """Module name -> file path for every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found[module_name(path)] = path
    return found


def imports_of(name: str, path: str, known: Set[str]) -> Set[str]:
    """The package modules ``name`` imports, at any depth of its code (deferred imports count)."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {module for module in found if module in known and module != name}


def find_cycle(graph: Dict[str, Set[str]]):
    """One import cycle as a list of modules, or None."""
    state: Dict[str, int] = {}
    stack = []

    def visit(node: str):
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def package_graph() -> Dict[str, Set[str]]:
    found = modules()
    graph = {name: imports_of(name, path, set(found)) for name, path in found.items()}
    # A package's __init__ re-exports its submodules: a submodule importing a sibling is not a cycle through it.
    return {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}


def test_the_package_has_no_import_cycle():
    assert find_cycle(package_graph()) is None


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_models_do_not_import_the_layers_above_them():
    """The DiT, the VAE and the text encoders know nothing of the memory model, the sampler or the orchestration;
    the steps of a run know nothing of the front doors."""
    front = {"pyramid_flow.pipeline", "pyramid_flow.cli"}
    steps = {"pyramid_flow.orchestration", "pyramid_flow.placement"} | front
    above = {"pyramid_flow.memory", "pyramid_flow.sampler"} | steps
    graph = package_graph()
    for name, targets in graph.items():
        if name.startswith(("pyramid_flow.dit", "pyramid_flow.vae", "pyramid_flow.text", "pyramid_flow.history",
                            "pyramid_flow.loading")):
            assert not targets & above, (name, targets & above)
        if name in ("pyramid_flow.orchestration", "pyramid_flow.sampler", "pyramid_flow.memory"):
            assert not targets & front, (name, targets & front)
