"""The peer's own virtual environment: encode/broadcaster and websockets,
built once under ``loadtests/.peer-venv`` (pip, from PyPI) and reused while
its requirements stay the same.

A separate environment because the peer's import name, ``broadcaster``, is
ours: installed beside this package, one would shadow the other.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import websockets

from ._common import progress

__all__ = ["PEER", "REQUIREMENTS", "peer_python"]

#: The peer and the version measured: the latest release on PyPI.
PEER = "broadcaster==0.3.1"
#: The peer's transport: the websockets release this project runs, so that
#: both sides of a comparison write frames with the same library.
REQUIREMENTS = (PEER, f"websockets=={websockets.__version__}")
VENV = Path(__file__).resolve().parent / ".peer-venv"


def peer_python(venv: Path = VENV) -> Path:
    """The peer environment's interpreter, building the environment first if
    it is missing or was built for other requirements."""
    python = venv / "bin" / "python"
    stamp = venv / "requirements.txt"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    progress(f"building the peer's environment in {venv} ({', '.join(REQUIREMENTS)})")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS],
        check=True,
    )
    # Written last: an interrupted build is rebuilt, never half-used.
    stamp.write_text(wanted)
    return python
