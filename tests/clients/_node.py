"""Node for the tests of clients/js: where it is, and the consumer's packages."""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["CLIENTS_JS", "REPO", "node", "node_modules"]

REPO = Path(__file__).resolve().parents[2]
CLIENTS_JS = REPO / "clients" / "js"


def node() -> str:
    """The ``node`` executable; fails the test (not skips it) without one."""
    found = shutil.which("node")
    assert found is not None, "node is not installed: scripts/check installs it (Node 20 or later)"
    return found


def node_modules() -> Path:
    """clients/js/node_modules, installed from its lock file; fails the test
    with the command to run when it is missing."""
    installed = CLIENTS_JS / "node_modules" / "@supabase" / "realtime-js"
    assert installed.is_dir(), (
        "clients/js has no node_modules: run `npm ci` there (scripts/check does)"
    )
    return CLIENTS_JS / "node_modules"
