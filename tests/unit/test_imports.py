"""The package's modules import one way: no cycle, counting imports inside functions, the packages'
lazy attributes (``_LAZY = {"name": ".module"}``) and the backend registry's string loaders
("module:function") as edges too. A cycle is where the data flow
(model -> ONNX -> artifact + manifest -> runners -> comparison/benchmark) folds back on itself."""

from __future__ import annotations

import ast
from pathlib import Path

import resnet_deploy
from resnet_deploy.backends.registry import BACKENDS

PACKAGE = Path(resnet_deploy.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level else []
    return ".".join([*base, *([target] if target else [])])


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in it), ``__init__`` re-exports included."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
                targets = [_resolve(name, is_package, 1, value.value.lstrip(".")) for value in node.value.values]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module) if node.level else node.module or ""
                # "from . import x" imports the submodule x where there is one, else a name of the package
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    registry = "resnet_deploy.backends.registry"
    for backend in BACKENDS.values():  # importlib.import_module(".onnxrt", "resnet_deploy.backends")
        graph[registry].add(_resolve(registry, False, 1, backend.loader.partition(":")[0].lstrip(".")))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its modules in import order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walk_sees_lazy_and_string_imports():
    graph = import_graph()
    assert "resnet_deploy.backends.onnxrt" in graph["resnet_deploy.backends.registry"]  # the string loader
    assert "resnet_deploy.serving.server" in graph["resnet_deploy.cli"]  # imported inside serve_command
    assert "resnet_deploy.export.pipeline" in graph["resnet_deploy.export"]  # a lazy attribute
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


# The package's rooms, in the order data flows through them, and the rooms each may import (DESIGN.md): the
# ground floor imports nothing of the package above it, and nothing imports the CLI.
GROUND = {"errors", "fileio", "environment", "progress", "lazy", "imageprep", "data", "onnxgraph", "render",
          "raycluster"}
ROOMS = {
    "ground": set(),
    "records": {"ground"},  # artifacts.py (the manifest), precisions.py (the precision table)
    "models": {"ground"},
    "backends": {"ground", "records", "models"},
    "parity": {"ground", "records", "models", "backends"},
    "export": {"ground", "records", "models", "backends", "parity"},
    "target": {"ground", "records", "backends", "parity"},
    "serving": {"ground", "records", "backends", "target"},
    "batch": {"ground", "records", "backends", "parity", "target"},  # scale-out: the same runners on more data
    "package": {"ground", "models", "export", "parity", "target", "serving", "batch"},  # __init__'s public names
    "cli": {"ground", "records", "models", "backends", "parity", "export", "target", "serving", "batch"},
}


def room(module: str) -> str:
    """The room of ``resnet_deploy.X[.Y]``."""
    parts = module.split(".")[1:]
    if not parts:
        return "package"
    if parts[0] in GROUND:
        return "ground"
    if parts[0] in ("artifacts", "precisions"):
        return "records"
    return parts[0]


def test_every_module_is_in_a_room():
    assert {room(m) for m in import_graph()} <= set(ROOMS), sorted({room(m) for m in import_graph()} - set(ROOMS))


def test_imports_follow_the_flow():
    climbing = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                      if room(a) != room(b) and room(b) not in ROOMS[room(a)])
    assert not climbing, "imports against the flow:\n" + "\n".join(climbing)
