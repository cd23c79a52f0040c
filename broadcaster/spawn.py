"""Child processes for the demo, the tests and the load tests: a free loopback
port, and the local Realtime server run as a child process.

The server runs in a process of its own so that it can be killed for real
(SIGKILL: no close frames, no goodbye) and restarted on the same port, as a
Supabase project that goes away would be.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .realtime_server.tokens import service_role_key

__all__ = ["PACKAGE_ROOT", "RealtimeServerProcess", "child_env", "free_port"]

#: The directory this package is imported from: a child put on this path
#: imports this very package, wherever it was installed or checked out.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])

#: ``python -m broadcaster.realtime_server``, without the interpreter.
REALTIME_SERVER = ("-m", "broadcaster.realtime_server")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it; another process
    may still take it before it is used)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def child_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of a child Python: ``base`` (default: this process's),
    with :data:`PACKAGE_ROOT` first on ``PYTHONPATH``, and ``extra``."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


class RealtimeServerProcess:
    """The local Realtime server (``python -m broadcaster.realtime_server``) as
    a child process.

    It listens on ``host:port`` (default: a free port), accepting only ``key``
    as the apikey: given as ``SUPABASE_KEY`` in its environment, never on its
    command line, which every local user can read. ``key=None`` makes up a
    random one (see :attr:`key`; a service key signed with ``jwt_secret``
    when one is given); ``key=""`` leaves ``SUPABASE_KEY`` out, so that,
    without ``--key`` in ``command``, it accepts any. ``limits`` names the
    plan whose quotas it enforces; ``jwt_secret`` (``SUPABASE_JWT_SECRET`` in
    its environment) checks private channels' tokens.
    ``stderr`` is a file its log is appended to, or a :mod:`subprocess`
    constant (``DEVNULL``, ``PIPE``). ``command`` replaces the module run
    (e.g. ``("-m", "broadcaster", "realtime-server")``); ``--host`` and
    ``--port`` are appended to it. :meth:`start` may be called again after
    :meth:`kill` or :meth:`stop`: it restarts on the same port.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        key: str | None = None,
        host: str = "127.0.0.1",
        stderr: Path | int = asyncio.subprocess.DEVNULL,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] = REALTIME_SERVER,
        start_timeout_s: float = 30.0,
        limits: str = "none",
        jwt_secret: str | None = None,
    ) -> None:
        self.host = host
        self.port = free_port(host) if port is None else port
        if key is None:
            key = secrets.token_urlsafe(32)
            if jwt_secret:
                key = service_role_key(jwt_secret, time.time())
        self.key = key
        self.stderr = stderr
        self.env = child_env(env)
        if self.key:
            self.env["SUPABASE_KEY"] = self.key
        else:
            self.env.pop("SUPABASE_KEY", None)
        if jwt_secret:
            self.env["SUPABASE_JWT_SECRET"] = jwt_secret
        self.command = [*command, "--host", host, "--port", str(self.port)]
        if limits != "none":
            self.command += ["--limits", limits]
        self.start_timeout_s = start_timeout_s
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """The URL the server prints once it listens (``http://HOST:PORT``)."""
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> str:
        """Start it and wait until it listens; returns :attr:`url`. Raises
        RuntimeError (with the end of its log, where it has one) if it does
        not print its URL within ``start_timeout_s``."""
        if isinstance(self.stderr, Path):
            with self.stderr.open("ab") as log_file:
                self.proc = await self._spawn(log_file.fileno())
        else:
            self.proc = await self._spawn(self.stderr)
        assert self.proc.stdout is not None
        line = ""
        why = f"no URL printed within {self.start_timeout_s:g} s"
        try:
            async with asyncio.timeout(self.start_timeout_s):
                line = (await self.proc.stdout.readline()).decode().strip()
        except TimeoutError:
            pass
        else:
            why = f"it printed {line!r}" if line else "its output ended"
        if line != self.url:
            await self.kill()
            code = self.proc.returncode
            raise RuntimeError(
                f"the local Realtime server did not start on port {self.port}"
                f" ({why}; exit code {code}): {self._log_tail()}"
            )
        return self.url

    async def _spawn(self, stderr: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            *self.command,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=self.env,
        )

    def _log_tail(self) -> str:
        if not isinstance(self.stderr, Path) or not self.stderr.exists():
            return "no output"
        tail = self.stderr.read_text(errors="replace").strip().splitlines()[-5:]
        return " | ".join(tail) or "no output"

    async def kill(self) -> None:
        """SIGKILL: no close frames, no goodbye."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, as a supervisor stops it; returns its exit code (None if it
        was never started)."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(timeout_s):
            return await self.proc.wait()

    async def __aenter__(self) -> RealtimeServerProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.kill()
