"""Where the peer (encode/broadcaster) is importable: its package alone,
installed with pip under ``loadtests/.peer`` (``--target``, no dependencies)
the first time and reused while the pinned release stays the same.

Its import name, ``broadcaster``, is ours. The peer runs under this
interpreter with that directory first on ``PYTHONPATH`` and ``-P`` (no script
directory on ``sys.path``): there ``broadcaster`` is encode's, while its
dependencies (anyio) and the transport (websockets) are this environment's —
the same websockets release on both sides of the comparison.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ._common import progress

__all__ = ["PEER", "peer_env"]

#: The peer and the version measured: the latest release on PyPI.
PEER = "broadcaster==0.3.1"
TARGET = Path(__file__).resolve().parent / ".peer"


def peer_env(target: Path = TARGET) -> dict[str, str]:
    """The environment to run the peer in, installing it first if missing or
    installed for another release."""
    stamp = target / "requirement.txt"
    if not (stamp.exists() and stamp.read_text() == PEER):
        progress(f"installing the peer ({PEER}) in {target}")
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
             "--no-deps", "--target", str(target), PEER],
            check=True,
        )  # fmt: skip
        # Written last: an interrupted install is redone, never half-used.
        stamp.write_text(PEER)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    return env
