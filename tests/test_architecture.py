"""The layering that docs/architecture.md states, checked on the source: no import points up, and
no two modules import each other (imports under TYPE_CHECKING aside)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "autotrain"

# Lowest first; a module may import its own layer and the ones below it. The root package
# (`autotrain`) exports the SDK lazily, so it imports nothing when loaded: it is a base module.
LAYERS: dict[str, int] = {
    "": 0, "errors": 0, "settings": 0, "workspace": 0, "profile": 0, "spec": 0, "logs": 0,
    "formatting": 0, "tiny_trainer": 0,
    "trainers": 1,
    "datasets": 2,
    "jobs": 3,
    "fleet": 4,
    "worker": 5,
    "pipeline": 6, "monitor": 6, "control": 6, "records": 6, "status": 6, "hosts": 6,
    "cli": 7, "dashboard": 7,
}  # fmt: skip


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The autotrain modules `name` imports at run time (anywhere but under TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name in modules)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([child.module] if child.module else []))
                for alias in child.names:
                    if f"{base}.{alias.name}" in modules:
                        found.add(f"{base}.{alias.name}")
                    elif base in modules:
                        found.add(base)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else ""
    if key not in LAYERS:
        pytest.fail(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")
    return LAYERS[key]


def test_no_import_points_up():
    upward = [
        f"{module} (layer {_layer(module)}) imports {target} (layer {_layer(target)})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    graph = _graph()
    circles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def strongly_connected(node: str) -> None:  # Tarjan
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                strongly_connected(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in graph:
        if node not in index:
            strongly_connected(node)
    assert not circles, circles


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The two checks above can fail: a planted circle and an upward import are found."""
    package = tmp_path / "autotrain"
    (package / "jobs").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "jobs" / "__init__.py").write_text("")
    (package / "errors.py").write_text("from autotrain.jobs import a\n")
    (package / "jobs" / "a.py").write_text("from autotrain.jobs import b\n")
    (package / "jobs" / "b.py").write_text("import autotrain.jobs.a\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    with pytest.raises(AssertionError, match="errors"):
        test_no_import_points_up()
    with pytest.raises(AssertionError, match=r"autotrain\.jobs\.a"):
        test_no_import_circles()
