"""A real PostgreSQL for tests (fixtures registered in ``tests/conftest.py``).

* ``pg_server`` — one real PostgreSQL for the session, started from the
  ``pgserver`` wheel (its bundled binaries; as root, pgserver creates a
  ``pgserver`` system user and runs the server as that user, since PostgreSQL
  refuses to run as root). Listens on a Unix socket in its data directory.
* ``pg_url`` — a fresh schema on that server for one test, dropped after.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

__all__ = ["PgServer", "pg_server", "pg_url"]


@dataclass
class PgServer:
    """A running test PostgreSQL: ``url(db)`` builds connection URLs; ``crash()``
    stops it the way a crash would (immediate shutdown, WAL replay on start);
    ``start()`` brings it back."""

    server: Any  # pgserver.PostgresServer (untyped third-party object)

    def url(self, dbname: str = "postgres") -> str:
        uri: str = self.server.get_uri(dbname)
        return uri

    def crash(self) -> None:
        from pgserver import _commands  # noqa: PLC0415 - optional test dependency

        _commands.pg_ctl(  # type: ignore[attr-defined]
            ["-w", "-m", "immediate", "stop"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
        )

    def start(self) -> None:
        self.server.ensure_postgres_running()

    def admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url(), autocommit=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    # Not under pytest's basetemp: pytest resets pytest-of-<user> to mode 0700,
    # which locks out the unprivileged user the server runs as under root. A
    # short path also keeps the Unix socket (in the data directory) < 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="bc-pg-"))
    base.chmod(0o755)
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (CI, root).
        warnings.simplefilter("ignore")
        import pgserver  # noqa: PLC0415

        server = pgserver.get_server(  # type: ignore[attr-defined]
            base / "data", cleanup_mode="delete"
        )
    pg = PgServer(server)
    with pg.admin() as conn:
        # A throwaway test server: durability across OS crashes is not under test,
        # so no fsync. Server crashes are (immediate shutdown + WAL replay), so
        # synchronous_commit stays on: a commit must reach the WAL before it returns.
        conn.execute("ALTER SYSTEM SET fsync = off")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield pg
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


_schema_numbers = itertools.count(1)
_TEST_DB = "store_tests"


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """A URL whose tables land in a fresh, empty schema of their own (via
    ``search_path``): as isolated as a new database, 500x cheaper to create."""
    pg_server.start()  # a previous test may have crashed it
    schema = f"test_{next(_schema_numbers)}"
    with pg_server.admin() as conn:
        if (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (_TEST_DB,)).fetchone()
            is None
        ):
            conn.execute(f"CREATE DATABASE {_TEST_DB}")
    with psycopg.connect(pg_server.url(_TEST_DB), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{pg_server.url(_TEST_DB)}&options=-csearch_path%3D{schema}"
    pg_server.start()
    with psycopg.connect(pg_server.url(_TEST_DB), autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
