"""What every ``broadcaster`` subcommand shares: exit codes, loading the
settings, and where the service's admin API is.

Exit codes: 0 success, 1 the command ran and found a problem, 2 bad
configuration or arguments (one line on stderr naming the variable and value).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..exceptions import ConfigError
from ..settings import Settings, load_settings, unknown_variables

__all__ = ["EXIT_CONFIG", "EXIT_OK", "EXIT_PROBLEM", "admin_url", "load"]

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_CONFIG = 2


def load(args: argparse.Namespace) -> Settings:
    """The settings, from ``--env-file`` (default ``.env``) and the environment;
    a warning on stderr for each variable that looks like a setting and is
    none. Raises :class:`~broadcaster.exceptions.ConfigError`."""
    env_file = ".env" if args.env_file is None else args.env_file
    # A file named on the command line must exist: a typo would otherwise
    # run on defaults without a word (--env-file /dev/null: no file at all).
    if args.env_file is not None and not Path(env_file).exists():
        raise ConfigError("--env-file", env_file, "no such file")
    settings = load_settings(env_file)
    _warn_unknown(env_file)
    return settings


def _warn_unknown(env_file: str) -> None:
    """One line on stderr per variable that looks like a setting and is none
    (a misspelling is otherwise ignored without a word)."""
    from dotenv import dotenv_values

    names = list(os.environ)
    if Path(env_file).is_file():
        names += list(dotenv_values(env_file))
    for name, close in unknown_variables(names):
        hint = f" (did you mean {close}?)" if close is not None else ""
        print(f"warning: {name} is not a setting{hint}; it is ignored", file=sys.stderr)


def admin_url(settings: Settings) -> str:
    """The admin API of the service these settings describe, as a client
    reaches it: a wildcard listen address means this host."""
    scheme = "https" if settings.admin_tls_cert is not None else "http"
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(
        settings.admin_host, settings.admin_host
    )
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{settings.admin_port}"
