"""Shared fixtures. Every test starts from a clean environment: no broadcaster
variables inherited from the shell, no .env from the working directory, and
structlog as it comes (a test that configured logging — the CLI does, at
WARNING — must not filter out the info lines a later test captures)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tests._env import SETTING_PREFIXES


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith(SETTING_PREFIXES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield
    structlog.reset_defaults()
