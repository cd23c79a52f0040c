"""``broadcaster config show|check|example|files``: the configuration the
rest of the flow runs on, and what the package ships with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources

from ..settings import Settings
from .common import EXIT_OK

__all__ = ["run_config", "shipped"]


def run_config(args: argparse.Namespace, settings: Settings) -> int:
    """``config show`` (the effective settings, secrets masked) or ``config
    check`` (they loaded: they are valid)."""
    if args.action == "show":
        print(json.dumps(settings.effective(), indent=2, sort_keys=True))
    else:
        print("configuration OK")
    return EXIT_OK


def shipped(args: argparse.Namespace) -> int:
    """``config example`` / ``config files``: what the package ships, needing
    no valid settings (a first ``.env`` is made with it)."""
    data = resources.files("broadcaster") / "data"
    if args.action == "example":
        sys.stdout.write((data / "env.example").read_text(encoding="utf-8"))
    else:
        print(data / "config")
    return EXIT_OK
