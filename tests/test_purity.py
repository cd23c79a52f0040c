"""The pure core does no I/O: no event loop, sockets, databases or servers.

Each pure module is parsed with :mod:`ast` (never imported), and so is every
``broadcaster`` module it imports, transitively, so the core cannot reach an
I/O library through a sibling either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "broadcaster"

PURE_MODULES = [
    "events.py",
    "event_shapes.py",
    "event_factory.py",
    "event_seal.py",
    "event_ids.py",
    "event_json.py",
    "event_integrity.py",
    "checksums.py",
    "routing.py",
    "settings/__init__.py",
    "settings/families.py",
    "settings/loading.py",
    "settings/model.py",
    "settings/store_url.py",
    "exceptions.py",
    "reconcile/matching.py",
    "breaker_policy.py",
    "breaker_config.py",
    "breaker_window.py",
    "realtime_plan.py",
    "security.py",
    "realtime_server/protocol.py",
    "realtime_server/quotas.py",
    "realtime_server/tokens.py",
    "rollout/plan.py",
    "rollout/policy.py",
]

FORBIDDEN = frozenset(
    {"asyncio", "websockets", "realtime", "sqlite3", "psycopg", "socket", "uvicorn", "starlette"}
)


def _resolve_relative(module_path: Path, level: int, module: str | None) -> list[Path]:
    """Files a relative ``from ... import`` inside the package can refer to."""
    base = module_path.parent
    for _ in range(level - 1):
        base = base.parent
    target = base.joinpath(*module.split(".")) if module else base
    candidates = [target.with_suffix(".py"), target / "__init__.py"]
    return [c for c in candidates if c.is_file()]


def _imports(path: Path) -> tuple[list[tuple[int, str]], list[Path]]:
    """(absolute imports as (line, dotted name), package files imported relatively)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    absolute: list[tuple[int, str]] = []
    local: list[Path] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            absolute.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                files = _resolve_relative(path, node.level, node.module)
                local.extend(files)
                if not node.module:  # from . import name -> each name may be a module
                    for alias in node.names:
                        local.extend(_resolve_relative(path, node.level, alias.name))
            elif node.module:
                if node.module == "broadcaster" or node.module.startswith("broadcaster."):
                    parts = node.module.split(".")[1:]
                    local.extend(_resolve_relative(PACKAGE / "x.py", 1, ".".join(parts) or None))
                else:
                    absolute.append((node.lineno, node.module))
        elif isinstance(node, ast.Call):
            # importlib.import_module("x") / __import__("x") with a literal name
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    absolute.append((node.lineno, first.value))
    return absolute, local


def forbidden_imports(path: Path) -> list[str]:
    """Every forbidden import reachable from ``path`` through package modules."""
    found: list[str] = []
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        absolute, local = _imports(current)
        for lineno, dotted in absolute:
            if dotted.split(".")[0] in FORBIDDEN:
                found.append(f"{current}:{lineno}: {dotted}")
        todo.extend(local)
    return found


@pytest.mark.parametrize("relative", PURE_MODULES)
def test_pure_module_imports_no_io(relative: str) -> None:
    path = PACKAGE / relative
    assert path.is_file(), relative
    assert forbidden_imports(path) == []


def test_the_pure_core_modules_exist() -> None:
    for relative in PURE_MODULES:
        assert (PACKAGE / relative).is_file(), relative


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import asyncio.subprocess",
        "import os, socket",
        "from websockets.asyncio.server import serve",
        "from realtime import AsyncRealtimeClient",
        "import sqlite3 as db",
        "from psycopg.rows import dict_row",
        "def f():\n    import uvicorn",
        "try:\n    from starlette.requests import Request\nexcept ImportError:\n    pass",
        "import importlib\nimportlib.import_module('socket')",
        "__import__('asyncio')",
    ],
)
def test_checker_catches_forbidden_imports(tmp_path: Path, source: str) -> None:
    module = tmp_path / "bad.py"
    module.write_text(source + "\n", encoding="utf-8")
    assert forbidden_imports(module) != []


def test_checker_follows_relative_imports(tmp_path: Path) -> None:
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "pure.py").write_text("from .helper import thing\nimport json\n")
    (tmp_path / "helper.py").write_text("import asyncio\nthing = 1\n")
    found = forbidden_imports(tmp_path / "pure.py")
    assert len(found) == 1 and found[0].endswith("asyncio")


@pytest.mark.parametrize(
    "source",
    ["import json", "import asyncio_extras", "from sockets import x", "import realtimeish"],
)
def test_checker_allows_other_modules(tmp_path: Path, source: str) -> None:
    module = tmp_path / "ok.py"
    module.write_text(source + "\n", encoding="utf-8")
    assert forbidden_imports(module) == []
