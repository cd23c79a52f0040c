"""The embedded event store: one SQLite file in WAL mode (``sqlite:///./broadcaster.db``).

Why it is built as it is: a ``publish()`` returns once its append committed,
so the commit the producer waits for is kept as small as it can be — the
event rows alone, written on the event loop's thread when that needs no
lock and no fsync — and everything else (outbox rows, acknowledgements,
checkpoints, receipts) is paid for in transactions the producer does not
wait for. What it guarantees an operator (durability, a file deleted under
it, health) is in ``docs/deploying.md``.

The rooms, in the order an event meets them:

* :mod:`.store` — :class:`SQLiteStore`, the façade: picks each call's
  transaction and thread;
* :mod:`._engine` — the worker thread, the loop's connection, transactions
  and their errors; :mod:`._checkpoints` keeps the WAL short,
  :mod:`._files` notices the file deleted or replaced under the store,
  :mod:`._watch` hears other processes' appends;
* :mod:`._writes` — appends and marks; :mod:`._outbox` — the high-water
  mark, the counters and the outbox tail they share;
* :mod:`._reads` — what lanes, subscribers and people read;
* :mod:`._receipts` and :mod:`._reconcile` — what consumers report and what
  the reconciler reads; :mod:`._retention` — pruning and watermarks;
* :mod:`._tables` — the store methods of runtime configuration, audit,
  rollouts, instances and leases, their bodies in :mod:`._rollouts` and
  :mod:`._instances`;
* :mod:`.schema` — the tables and their migrations.
"""

from __future__ import annotations

from ._checkpoints import WAL_FRAMES_MAX
from ._engine import LOOP_WRITE_MAX, SYNCHRONOUS_MODES
from ._retention import PRUNE_CHUNK
from ._watch import WATCH_INTERVAL_S
from .schema import MIGRATIONS, SCHEMA_VERSION, migrate
from .store import FILE_CHECK_S, MARK_LINGER_MS, SQLiteStore

__all__ = [
    "FILE_CHECK_S",
    "LOOP_WRITE_MAX",
    "MARK_LINGER_MS",
    "MIGRATIONS",
    "PRUNE_CHUNK",
    "SCHEMA_VERSION",
    "SYNCHRONOUS_MODES",
    "SQLiteStore",
    "WAL_FRAMES_MAX",
    "WATCH_INTERVAL_S",
    "migrate",
]
