"""Store fixtures: real backends only (``pg_server`` and ``pg_url``, a real
PostgreSQL, come from ``tests/_postgres.py``).

* ``store`` — parametrized over memory, sqlite (a file under ``tmp_path``;
  small writes on the loop thread), sqlite-worker (every write on the worker
  thread) and postgres; opened before the test and closed after.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broadcaster.store import MemoryStore, PostgresStore, SQLiteStore, Store
from tests._postgres import PgServer

__all__ = ["PgServer"]


@pytest.fixture(params=["memory", "sqlite", "sqlite-worker", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend: Store
    if request.param == "memory":
        backend = MemoryStore()
    elif request.param == "sqlite":
        backend = SQLiteStore(tmp_path / "store.db")
    elif request.param == "sqlite-worker":  # every write on the worker thread
        backend = SQLiteStore(tmp_path / "store.db", loop_write_max=0)
    else:
        backend = PostgresStore(request.getfixturevalue("pg_url"))
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()
