"""Probe consumers of ``broadcaster serve`` (docs/deploying.md).

A probe is a real subscriber of one adapter's path, run by the service
itself: a :class:`~broadcaster.consumer.WebSocketSubscriber` of the
service's own WebSocket server (through the socket, with TLS and a token
when the server asks for them) and a
:class:`~broadcaster.consumer.RealtimeSubscriber` of every category channel
on the Realtime endpoint the service pushes to. Each verifies every checksum
(and signature, given ``EVENT_SIGNING_KEY``) and writes receipts to the store
as consumer ``probe:<INSTANCE_ID>``, so that reconciliation has evidence of
delivery with no other consumer running.

Probes connect in the background: a connection that fails is retried with
capped exponential backoff and logged; publishing never waits for them.
"""

from __future__ import annotations

import asyncio
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypedDict

import structlog

from .adapters.websocket import WebSocketAdapter
from .consumer import (
    ConsumerStats,
    RealtimeSubscriber,
    ReceiptCollector,
    StoreReceiptWriter,
    WebSocketSubscriber,
)
from .events import Category
from .security import Scope
from .settings import Settings
from .store.base import Store

__all__ = [
    "PROBE_CONSUMER_PREFIX",
    "ProbeHealth",
    "ProbeView",
    "Probes",
    "probe_consumer",
    "probe_ssl_context",
]

log = structlog.get_logger("broadcaster.probes")

#: Probes report receipts as consumer ``probe:<INSTANCE_ID>``.
PROBE_CONSUMER_PREFIX: Final = "probe:"

# Addresses a server listens on that a client cannot connect to as such.
_WILDCARDS: Final = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def probe_consumer(instance_id: str) -> str:
    """The consumer name a service instance's probes report as."""
    return f"{PROBE_CONSUMER_PREFIX}{instance_id}"


def probe_ssl_context(cert_file: Path) -> ssl.SSLContext:
    """A client context that trusts exactly the server certificate in
    ``cert_file`` (the first of its chain) and nothing else.

    The probe talks to its own process through the loopback address, which
    the certificate need not name; pinning the one certificate (and its key,
    which only the server holds) proves the peer better than a CA and a name
    would. Raises ``ValueError`` when the file holds no PEM certificate.
    """
    match = _PEM_CERT.search(cert_file.read_bytes())
    if match is None:
        raise ValueError(f"no PEM certificate in {cert_file}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    # A leaf certificate is a trust anchor only with partial chains allowed.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.load_verify_locations(cadata=match.group(0).decode("ascii"))
    return context


class ProbeView(TypedDict):
    """:class:`ProbeHealth` as JSON-able data: one probe in ``/health``."""

    #: Whether its subscription is open now.
    connected: bool
    #: Events it received, and those whose checksum (and signature) verified.
    received: int
    verified: int
    #: Checksum mismatches plus events whose signature did not verify.
    mismatches: int
    #: Frames that were not a valid event.
    malformed: int
    #: Connections it opened, the first included.
    connects: int
    #: Why its last connection attempt failed, or None.
    last_error: str | None


@dataclass(frozen=True)
class ProbeHealth:
    """What ``/health`` shows of one probe."""

    connected: bool
    received: int
    verified: int
    #: Checksum mismatches plus events whose signature did not verify.
    mismatches: int
    malformed: int
    connects: int
    last_error: str | None

    def as_dict(self) -> ProbeView:
        return ProbeView(
            connected=self.connected,
            received=self.received,
            verified=self.verified,
            mismatches=self.mismatches,
            malformed=self.malformed,
            connects=self.connects,
            last_error=self.last_error,
        )


class _Probe:
    """One adapter's probe: a subscriber started with retries, its collector."""

    def __init__(
        self,
        adapter: str,
        subscriber: WebSocketSubscriber | RealtimeSubscriber,
        collector: ReceiptCollector,
        *,
        backoff_initial_s: float,
        backoff_max_s: float,
        on_started: Callable[[str], Awaitable[None]],
    ) -> None:
        self.adapter = adapter
        self._on_started = on_started
        self.subscriber = subscriber
        self.collector = collector
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self.last_error: str | None = None

    @property
    def stats(self) -> ConsumerStats:
        return self.collector.stats

    @property
    def connected(self) -> bool:
        sub = self.subscriber
        return sub.connected if isinstance(sub, WebSocketSubscriber) else sub.ready

    @property
    def connects(self) -> int:
        sub = self.subscriber
        return sub.connections if isinstance(sub, WebSocketSubscriber) else sub.link.connects

    def health(self) -> ProbeHealth:
        stats = self.collector.stats
        error = self.last_error
        if isinstance(self.subscriber, RealtimeSubscriber) and error is None:
            error = self.subscriber.link.last_error
        return ProbeHealth(
            connected=self.connected,
            received=stats.received,
            verified=stats.verified,
            mismatches=stats.mismatches + stats.bad_signatures,
            malformed=stats.malformed,
            connects=self.connects,
            last_error=error,
        )

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._connect(), name=f"probe {self.adapter}"
        )

    async def wait_started(self) -> None:
        await self._started.wait()

    async def _connect(self) -> None:
        # Only the first connection is ours to retry: once started, each
        # subscriber reconnects on its own.
        attempt = 0
        while True:
            try:
                await self.subscriber.start()
            except Exception as exc:  # refused, unreachable, the client's own errors
                self.last_error = str(exc) or repr(exc)
                delay = min(self._backoff_max, self._backoff_initial * 2**attempt)
                attempt += 1
                log.warning(
                    "probe cannot connect; will retry",
                    adapter=self.adapter,
                    attempt=attempt,
                    retry_in_s=round(delay, 3),
                    error=self.last_error,
                )
                # Jitter keeps instances restarted together from retrying in step.
                await asyncio.sleep(delay * random.uniform(0.5, 1.0))
                continue
            self.last_error = None
            log.info("probe subscribed", adapter=self.adapter, attempt=attempt + 1)
            await self._on_started(self.adapter)
            self._started.set()
            return

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self.subscriber.close()


class Probes:
    """The probe consumers of one service instance.

    Build with :meth:`for_service` once the broadcaster has started (it needs
    the bound WebSocket port and the Realtime endpoint); ``start()`` begins
    connecting in the background and returns at once; ``wait_connected()``
    waits for every probe's first connection; ``close()`` stops them and
    writes the receipts still buffered. ``health()`` is what ``/health``
    shows under ``probes``.
    """

    def __init__(
        self,
        store: Store,
        *,
        consumer: str,
        websocket_url: str | None = None,
        websocket_ssl: ssl.SSLContext | None = None,
        websocket_token: str | None = None,
        realtime_url: str | None = None,
        realtime_key: str | None = None,
        realtime_private: bool = False,
        channel_prefix: str = "events",
        signing_keys: Mapping[str, str | bytes] | None = None,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        flush_interval_s: float = 0.2,
    ) -> None:
        self.consumer = consumer
        self._writer = StoreReceiptWriter(store, interval_s=flush_interval_s)
        self._probes: dict[str, _Probe] = {}
        self._store = store
        options: dict[str, Any] = {
            "backoff_initial_s": backoff_initial_s,
            "backoff_max_s": backoff_max_s,
            "on_started": self._register,
        }
        if websocket_url is not None:
            collector = self._collector("websocket", signing_keys)
            subscriber = WebSocketSubscriber(
                websocket_url,
                collector=collector,
                ssl=websocket_ssl,
                token=websocket_token,
                backoff_max=backoff_max_s,
                connect_timeout=connect_timeout_s,
            )
            self._probes["websocket"] = _Probe("websocket", subscriber, collector, **options)
        if realtime_url is not None:
            collector = self._collector("realtime", signing_keys)
            realtime = RealtimeSubscriber(
                realtime_url,
                realtime_key,
                categories=list(Category),
                channel_prefix=channel_prefix,
                private=realtime_private,
                collector=collector,
                connect_timeout_s=connect_timeout_s,
                reconnect_max_s=backoff_max_s,
            )
            self._probes["realtime"] = _Probe("realtime", realtime, collector, **options)
        self._started = False

    async def _register(self, adapter: str) -> None:
        # From now on an event nobody reports on this path is missing, not
        # unobserved: the probe is watching it.
        try:
            await self._store.register_consumer(self.consumer, adapter, int(time.time() * 1000))
        except Exception as exc:  # the store is down: the first receipt registers it too
            log.warning("probe not registered", adapter=adapter, error=str(exc))

    def _collector(
        self, adapter: str, signing_keys: Mapping[str, str | bytes] | None
    ) -> ReceiptCollector:
        # No set of seen ids: a service runs for weeks; duplicates show in
        # reconciliation, which sees every receipt.
        return ReceiptCollector(
            adapter,
            consumer=self.consumer,
            on_receipt=self._writer.add,
            track_seen=False,
            signing_keys=signing_keys,
            keys_when_verified=False,
        )

    @classmethod
    def for_service(
        cls,
        settings: Settings,
        store: Store,
        adapters: Mapping[str, object],
        **options: Any,
    ) -> Probes:
        """The probes of a service built from ``settings``: one per adapter
        in ``adapters`` it knows how to subscribe to; the Realtime probe
        subscribes at ``SUPABASE_URL`` with ``SUPABASE_KEY`` (the stand-in's,
        when the service started one)."""
        ws_url = ws_ssl = ws_token = None
        ws = adapters.get("websocket")
        if isinstance(ws, WebSocketAdapter):
            host = _WILDCARDS.get(ws.host, ws.host)
            host = f"[{host}]" if ":" in host else host
            cert = settings.websocket_tls_cert
            scheme = "wss" if cert is not None else "ws"
            ws_url = f"{scheme}://{host}:{ws.port}/events"
            ws_ssl = probe_ssl_context(cert) if cert is not None else None
            if settings.websocket_require_token:
                tokens = settings.api_tokens()
                found = tokens.first(Scope.CONSUMER) or tokens.first(Scope.ADMIN)
                if found is not None:
                    ws_token = found.secret.decode("utf-8", "surrogateescape")
        rt_url = rt_key = None
        if "realtime" in adapters and settings.supabase_url is not None:
            rt_url = settings.supabase_url
            key = settings.supabase_key
            rt_key = key.get_secret_value() if key is not None else None
        secret = settings.event_signing_key
        keys = (
            None if secret is None else {settings.event_signing_key_id: secret.get_secret_value()}
        )
        return cls(
            store,
            consumer=probe_consumer(settings.instance_id),
            websocket_url=ws_url,
            websocket_ssl=ws_ssl,
            websocket_token=ws_token,
            realtime_url=rt_url,
            realtime_key=rt_key,
            realtime_private=settings.realtime_private_channels,
            channel_prefix=settings.realtime_channel_prefix,
            signing_keys=keys,
            **options,
        )

    def start(self) -> None:
        """Begin connecting every probe in the background. Idempotent."""
        if self._started:
            return
        self._started = True
        self._writer.start()
        for probe in self._probes.values():
            probe.start()

    async def wait_connected(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait up to ``timeout`` seconds for every probe's first connection;
        True if all made it (the rest keep trying)."""
        try:
            async with asyncio.timeout(timeout):
                for probe in self._probes.values():
                    await probe.wait_started()
        except TimeoutError:
            return False
        return True

    async def settle(self, quiet_s: float = 0.1, limit_s: float = 2.0) -> None:
        """Wait until no probe has received anything for ``quiet_s`` (at
        most ``limit_s``): at shutdown, events acknowledged just now are
        still on their way to the probes."""
        deadline = time.monotonic() + limit_s
        last = -1
        while time.monotonic() < deadline:
            now = sum(p.stats.received for p in self._probes.values())
            if now == last:
                return
            last = now
            await asyncio.sleep(quiet_s)

    async def close(self) -> None:
        """Stop every probe and write the receipts still buffered. Idempotent."""
        for probe in self._probes.values():
            await probe.close()
        if self._started:
            self._started = False
            try:
                await self._writer.close()
            except Exception as exc:  # the store is closing or down: say what is lost
                log.error("probe receipts not written at shutdown", error=str(exc))

    def health(self) -> dict[str, ProbeView]:
        """Per probed adapter: connected, received, verified, mismatches,
        malformed, connects and the last connection error."""
        return {name: probe.health().as_dict() for name, probe in self._probes.items()}
