"""Schema-driven fuzzing of the admin API (schemathesis): every operation of
the served OpenAPI document, with generated valid and invalid requests, over
real HTTP against a running service. No request may produce a 5xx."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from schemathesis.generation import GenerationMode

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.admin import AdminServer, create_app
from broadcaster.core import Broadcaster
from broadcaster.settings import load_settings
from broadcaster.store.memory import MemoryStore

pytestmark = pytest.mark.slow

TOKEN = "fuzz-token"


class ServiceThread:
    """The service on its own event loop in a thread: schemathesis calls it
    synchronously, as any outside client would."""

    def __init__(self) -> None:
        self.url = ""
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            b = Broadcaster(
                load_settings(env_file=None, reconcile_interval_s=0),
                adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
                store=MemoryStore(),
            )
            async with b, AdminServer(create_app(b, {"fuzz": TOKEN}), port=0) as server:
                await b.publish("CRITICAL", "seed", {"n": 1})
                self.url = server.url
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self.error = exc
            self._ready.set()
            raise

    def __enter__(self) -> ServiceThread:
        self._thread.start()
        assert self._ready.wait(30), "service did not start"
        assert self.error is None, self.error
        return self

    def __exit__(self, *exc: object) -> None:
        stop = self._stop
        assert stop is not None
        self._loop.call_soon_threadsafe(stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def service() -> Iterator[ServiceThread]:
    with ServiceThread() as svc:
        yield svc


def fuzz(operation: Any, url: str, seen: dict[str, set[int]], mode: GenerationMode) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=30,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        response = case.call(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        seen.setdefault(label, set()).add(response.status_code)
        assert response.status_code < 500, (label, response.status_code, response.text)

    try:
        check()
    except hypothesis.errors.Unsatisfiable:
        # Negative mode has nothing to break in an operation without
        # parameters or body (GET /health): there is no invalid request.
        assert mode is GenerationMode.NEGATIVE, label


def test_no_operation_answers_with_a_server_error(service: ServiceThread) -> None:
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    seen: dict[str, set[int]] = {}

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, service.url, seen, mode)

    # The fuzzing reached the handlers, not only the validators.
    assert any(200 <= code < 300 for codes in seen.values() for code in codes)
    assert any(code == 422 for codes in seen.values() for code in codes)
