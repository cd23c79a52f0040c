"""Small rooms: every module of the package and of the load-test harness
fits in a reader's head. One past the limit is split by role (a package of
one-role modules behind the same import path), not trimmed of its comments."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Lines a module may hold, comments and docstrings included.
LIMIT = 500

MODULES = sorted(
    path
    for folder in ("broadcaster", "loadtests")
    for path in (ROOT / folder).rglob("*.py")
    if ".peer" not in path.parts
)


def test_the_package_and_the_harness_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in MODULES}
    assert {"broadcaster/__init__.py", "loadtests/__main__.py"} <= names


def test_every_module_fits_in_a_readers_head() -> None:
    sizes = {
        p.relative_to(ROOT).as_posix(): len(p.read_text("utf-8").splitlines()) for p in MODULES
    }
    too_big = {name: n for name, n in sizes.items() if n > LIMIT}
    assert not too_big, f"split by role (lines past {LIMIT}): {too_big}"
