"""The README's Python examples run as written: each ```python block, saved
as a script and run by a fresh interpreter, as a newcomer would. The stores
are real: a SQLite file, and PostgreSQL for the block that writes in the
caller's transaction."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from broadcaster.spawn import free_port
from tests.test_service import REPO

pytestmark = pytest.mark.slow

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
BLOCKS = _BLOCK.findall((REPO / "README.md").read_text(encoding="utf-8"))


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_a_readme_python_block_runs_as_a_script(
    index: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    code = BLOCKS[index]
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    store_url = (
        request.getfixturevalue("pg_url")
        if "psycopg" in code
        else f"sqlite:///{tmp_path / 'broadcaster.db'}"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "STORE_URL": store_url,
        "WEBSOCKET_PORT": str(free_port()),
    }
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    assert "Traceback" not in result.stderr


_LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_readme_links_only_inside_the_repository() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    links = _LINK.findall(text)
    assert links
    for link in links:
        target = link.split("#", 1)[0]
        assert not re.match(r"[a-z]+:", target), f"{link}: leaves the repository"
        if target:
            path = (REPO / target).resolve()
            assert path.is_relative_to(REPO), f"{link}: leaves the repository"
            assert path.exists(), f"{link}: no such file"
    assert not re.search(r"\b(SPEC|issue) \d", text)
