"""The layering that docs/architecture.md states, checked on the source: no import points up, and
no two modules import each other (imports under TYPE_CHECKING aside). And the house rules a
reader relies on: modules and functions small enough to read, Lua only in jobs/scripts.py,
Redis key names only in jobs/keys.py."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from autotrain.jobs.keys import PREFIX

PACKAGE = Path(__file__).resolve().parent.parent / "autotrain"
TESTS = Path(__file__).resolve().parent
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80  # from `def` to the last line of the body, decorators aside
LUA_MODULE = "jobs/scripts.py"  # the one home of Redis' Lua (`redis.call`)
KEYS_MODULE = "jobs/keys.py"  # the one home of Redis key names
_REDIS_CALL = re.compile(r"\bredis\.p?call\b")
# a key: the prefix and a name; the prefix and a space start a notification's title
_KEY_NAME = re.compile(re.escape(PREFIX) + r"\S")

# Lowest first; a module may import its own layer and the ones below it. The root package
# (`autotrain`) exports the SDK lazily, so it imports nothing when loaded: it is a base module.
LAYERS: dict[str, int] = {
    "": 0, "errors": 0, "settings": 0, "workspace": 0, "profile": 0, "spec": 0, "logs": 0,
    "formatting": 0, "tiny_trainer": 0,
    "trainers": 1, "storage": 1,
    "datasets": 2,
    "jobs": 3,
    "fleet": 4,
    "worker": 5,
    "pipeline": 6, "monitor": 6, "control": 6, "records": 6, "status": 6, "hosts": 6,
    "transfer": 6,
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


# --- house rules ---------------------------------------------------------------------------


def _python_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def _where(path: Path, line: int | None = None) -> str:
    """`autotrain/jobs/job.py:12`: a path from the repository root, as editors and CI print it."""
    shown = path.relative_to(PACKAGE.parent).as_posix()
    return f"{shown}:{line}" if line else shown


def _too_long(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    found = []
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        found.append(f"{_where(path)}: module of {lines} lines (at most {MAX_MODULE_LINES})")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{_where(path, node.lineno)}: {node.name}() is {length} lines "
                             f"(at most {MAX_FUNCTION_LINES})")  # fmt: skip
    return found


def _key_literals(path: Path) -> list[str]:
    """String literals that spell a Redis key (an f-string's text parts count too)."""
    found = {
        (node.lineno, node.value)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and _KEY_NAME.match(node.value)
    }
    return [f"{_where(path, line)}: {value!r}" for line, value in sorted(found)]


def test_no_module_over_400_lines_and_no_function_over_80():
    offenders = [entry for path in _python_files(PACKAGE) for entry in _too_long(path)]
    assert not offenders, "\n".join(offenders)


def test_lua_lives_only_in_the_scripts_module():
    offenders = [
        f"{_where(path, number)}: {line.strip()}"
        for path in _python_files(PACKAGE)
        if path != PACKAGE / LUA_MODULE
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _REDIS_CALL.search(line)
    ]
    assert not offenders, "\n".join(offenders)


def test_no_redis_key_is_spelled_outside_the_keys_module():
    offenders = [
        entry
        for root in (PACKAGE, TESTS)
        for path in _python_files(root)
        if path != PACKAGE / KEYS_MODULE
        for entry in _key_literals(path)
    ]
    assert not offenders, "\n".join(offenders)


def test_the_house_rules_name_each_offender_by_file_and_line(tmp_path, monkeypatch):
    """The three checks above can fail, and say where: planted offenders are each found."""
    package, tests = tmp_path / "autotrain", tmp_path / "tests"
    (package / "jobs").mkdir(parents=True)
    tests.mkdir()
    body = "".join(f"    x = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (package / "jobs" / "long.py").write_text("def long_one():\n" + body)
    (package / "jobs" / "big.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (package / "jobs" / "lua.py").write_text(
        '"""Lua."""\nSCRIPT = "return redis.call(\'GET\', KEYS[1])"\n'
    )
    (package / "jobs" / "scripts.py").write_text("SCRIPT = \"return redis.call('GET', KEYS[1])\"\n")
    (package / "jobs" / "keys.py").write_text('JOBS = "autotrain:jobs"\n')
    (tests / "test_x.py").write_text('name = "x"\nKEY = f"autotrain:worker:{name}"\n')
    (package / "notify.py").write_text('TITLE = "autotrain: done"\n')
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    monkeypatch.setattr(sys.modules[__name__], "TESTS", tests)
    with pytest.raises(AssertionError) as sizes:
        test_no_module_over_400_lines_and_no_function_over_80()
    assert "autotrain/jobs/long.py:1: long_one() is 81 lines" in str(sizes.value)
    assert "autotrain/jobs/big.py: module of 401 lines" in str(sizes.value)
    with pytest.raises(AssertionError) as lua:
        test_lua_lives_only_in_the_scripts_module()
    assert "autotrain/jobs/lua.py:2:" in str(lua.value) and "scripts.py" not in str(lua.value)
    with pytest.raises(AssertionError) as named:
        test_no_redis_key_is_spelled_outside_the_keys_module()
    assert str(named.value).splitlines()[0] == "tests/test_x.py:2: 'autotrain:worker:'"
    assert "keys.py" not in str(named.value) and "notify.py" not in str(named.value)


def test_the_top_level_stays_small():
    """At most 20 modules directly in autotrain/: the rest lives in the package of its domain."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 20, top
