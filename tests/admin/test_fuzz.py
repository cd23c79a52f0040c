"""Fuzzing the admin API over real HTTP against a running service.

Schema-driven (schemathesis): every operation of the served OpenAPI document,
with generated valid and invalid requests, with a token of every scope. And
schema-free (hypothesis): any JSON body, header and path parameter. No request
may produce a 5xx, and nothing may log a traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis.generation import GenerationMode

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.admin import AdminServer, create_app
from broadcaster.core import Broadcaster
from broadcaster.settings import load_settings
from broadcaster.store.memory import MemoryStore

pytestmark = pytest.mark.slow

TOKEN = "fuzz-token-0123456789"
SCOPED = {
    scope: f"{scope}-fuzz-token-0123456789" for scope in ("operator", "read", "ingest", "consumer")
}
TOKENS_JSON = json.dumps({f"{s}-bot": {"token": t, "scope": s} for s, t in SCOPED.items()})


class Tracebacks(logging.Handler):
    """Every log record that carries an exception, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)


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
            settings = load_settings(
                env_file=None,
                reconcile_interval_s=0,
                broadcaster_admin_token=TOKEN,
                broadcaster_tokens=TOKENS_JSON,
            )
            b = Broadcaster(
                settings,
                adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
                store=MemoryStore(),
            )
            app = create_app(b, settings.api_tokens(), max_body_bytes=256 * 1024)
            async with b, AdminServer(app, port=0) as server:
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


@pytest.fixture
def tracebacks() -> Iterator[Tracebacks]:
    handler = Tracebacks()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def fuzz(
    operation: Any,
    url: str,
    seen: dict[str, set[int]],
    mode: GenerationMode,
    token: str = TOKEN,
    examples: int = 15,
) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        response = case.call(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        seen.setdefault(label, set()).add(response.status_code)
        assert response.status_code < 500, (label, response.status_code, response.text)

    try:
        check()
    except hypothesis.errors.Unsatisfiable:
        # Negative mode has nothing to break in an operation without
        # parameters or body (GET /health): there is no invalid request.
        assert mode is GenerationMode.NEGATIVE, label


def test_no_operation_answers_with_a_server_error(
    service: ServiceThread, tracebacks: Tracebacks
) -> None:
    schema = schemathesis.openapi.from_url(
        f"{service.url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    seen: dict[str, set[int]] = {}

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, service.url, seen, mode)

    # The fuzzing reached the handlers, not only the validators.
    assert any(200 <= code < 300 for codes in seen.values() for code in codes)
    assert any(code == 422 for codes in seen.values() for code in codes)
    assert tracebacks.records == []


def test_no_scope_meets_a_server_error(service: ServiceThread, tracebacks: Tracebacks) -> None:
    schema = schemathesis.openapi.from_url(
        f"{service.url}/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    seen: dict[str, set[int]] = {}
    for operation in (result.ok() for result in schema.get_all_operations()):
        for token in SCOPED.values():
            fuzz(operation, service.url, seen, GenerationMode.POSITIVE, token, examples=5)
    assert any(403 in codes for codes in seen.values()), seen
    assert tracebacks.records == []


#: Any JSON value, nested a few levels, with any text (lone surrogates included).
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
ROUTES = [
    ("GET", "/config"),
    ("PATCH", "/config/categories/{}"),
    ("PUT", "/config/override"),
    ("GET", "/audit?after={}&limit={}"),
    ("GET", "/stats"),
    ("POST", "/events"),
    ("GET", "/events/{}"),
    ("GET", "/reconciliation"),
    ("POST", "/reconciliation/run?repair={}"),
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/dashboard"),
    ("GET", "/openapi.json"),
]
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    str.strip
)


def test_no_json_header_or_path_parameter_meets_a_server_error(
    service: ServiceThread, tracebacks: Tracebacks
) -> None:
    with httpx.Client(base_url=service.url, timeout=10) as client:

        @given(
            route=st.sampled_from(ROUTES),
            params=st.lists(st.text(max_size=30) | st.integers().map(str), min_size=3, max_size=3),
            body=JSON,
            raw=st.binary(max_size=64),
            use_raw=st.booleans(),
            token=st.sampled_from([TOKEN, *SCOPED.values(), "", "=", "x" * 40]),
            extra=st.dictionaries(
                HEADER_TEXT.filter(lambda k: k.isalnum()), HEADER_TEXT, max_size=3
            ),
        )
        @hypothesis.settings(
            max_examples=300,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(
            route: tuple[str, str],
            params: list[str],
            body: Any,
            raw: bytes,
            use_raw: bool,
            token: str,
            extra: dict[str, str],
        ) -> None:
            method, template = route
            path = template.format(*(quote(p, safe="") for p in params))
            content = raw if use_raw else json.dumps(body).encode("utf-8", "surrogatepass")
            headers = {**extra, "Authorization": f"Bearer {token}".strip()}
            headers["Content-Type"] = "application/json"
            response = client.request(method, path, content=content, headers=headers)
            assert response.status_code < 500, (method, path, response.text)

        check()
    assert tracebacks.records == []
