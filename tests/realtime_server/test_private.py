"""Private channels over real sockets: a join with ``config.private: true``
needs an access token signed with the server's JWT secret and a role it
allows; a refresh is checked at once, an expiry when it comes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates

from broadcaster.realtime_server import LocalRealtimeServer, mint_token
from tests._wait import until
from tests.realtime_server._clients import TOPIC, Connect, FakeClock, broadcast_payload, clients

SECRET = "local-jwt-secret-0123456789-0123456789"


def token(role: str = "authenticated", *, exp_in: float = 3600, secret: str = SECRET) -> str:
    return mint_token(secret, {"role": role, "exp": int(time.time() + exp_in), "sub": "u1"})


SERVICE_KEY = token("service_role")


@pytest.fixture
async def server() -> AsyncIterator[LocalRealtimeServer]:
    async with LocalRealtimeServer(key=SERVICE_KEY, jwt_secret=SECRET) as srv:
        yield srv


@pytest.fixture
async def make(server: LocalRealtimeServer) -> AsyncIterator[Connect]:
    async with clients(server) as factory:

        async def keyed(vsn: str = "1.0.0", apikey: str = SERVICE_KEY) -> Any:
            return await factory(vsn=vsn, apikey=apikey)

        yield keyed


def refused(reason: str) -> dict[str, Any]:
    return {"status": "error", "response": {"reason": reason}}


async def test_a_private_join_needs_a_valid_token_with_an_allowed_role(
    make: Connect, server: LocalRealtimeServer
) -> None:
    client = await make(vsn="2.0.0")
    await client.joined(private=True, access_token=token())
    # Without a token of its own, the connection's apikey (a service key) is it.
    await client.joined("realtime:events:system", private=True)
    cases = [
        (
            token("anon"),
            "Unauthorized: You do not have permissions to read from this Channel topic: "
            "events:debug",
        ),
        (token(exp_in=-30), "InvalidJWTToken: Token has expired 30 seconds ago"),
        (
            token(secret="not-the-servers-secret-0123456789"),
            "JwtSignatureError: Failed to validate JWT signature",
        ),
        ("not-a-jwt", "MalformedJWT: The token provided is not a valid JWT"),
    ]
    for bad, reason in cases:
        assert await client.join(
            "realtime:events:debug", private=True, access_token=bad
        ) == refused(reason)
    assert server.stats.unauthorized == len(cases)
    # A public channel takes no token at all.
    await client.joined("realtime:events:debug", access_token="not-a-jwt")


async def test_without_a_jwt_secret_private_channels_are_refused() -> None:
    async with LocalRealtimeServer() as srv, clients(srv) as make:
        assert not srv.checks_tokens
        client = await make()
        assert await client.join(private=True, access_token=token()) == refused(
            "Unauthorized: this server has no JWT secret to verify access tokens with"
        )
        await client.joined()


async def test_a_refreshed_token_is_checked_at_once(make: Connect) -> None:
    reader, sender = await make(), await make()
    current = token()
    await reader.joined(private=True, access_token=current, ack=False)
    await sender.joined(private=True, ack=True)
    # The same token again, or a new-style API key: nothing to check.
    for ignored in (current, "sb_publishable_abc"):
        await reader.push(TOPIC, "access_token", {"access_token": ignored})
    await sender.push(TOPIC, "broadcast", broadcast_payload(1))
    await sender.recv()
    assert (await reader.recv())["payload"] == broadcast_payload(1)  # still joined
    await reader.push(TOPIC, "access_token", {"access_token": token("anon")})
    system, close = await reader.recv(), await reader.recv()
    assert system == {
        "topic": TOPIC,
        "event": "system",
        "payload": {
            "extension": "system",
            "status": "error",
            "message": "You do not have permissions to read from this Channel topic: "
            "events:critical",
            "channel": "events:critical",
        },
        "ref": None,
    }
    assert close["event"] == "phx_close" and close["ref"] == reader.join_refs[TOPIC]
    await sender.push(TOPIC, "broadcast", broadcast_payload(2))
    await sender.recv()
    await reader.expect_silence()


async def test_a_token_that_expires_shuts_its_channel() -> None:
    # The server's clock is the test's (a loaded machine must not let the
    # token expire before the join): valid at the join, expired just after.
    clock = FakeClock()
    exp = int(clock.now) + 1
    async with (
        LocalRealtimeServer(key=SERVICE_KEY, jwt_secret=SECRET, clock=clock) as server,
        clients(server) as make,
    ):
        clock.now = exp - 0.5
        client = await make(vsn="2.0.0", apikey=SERVICE_KEY)
        await client.joined(
            private=True, access_token=mint_token(SECRET, {"role": "authenticated", "exp": exp})
        )
        clock.now = exp + 0.5
        system = await client.recv(wait_s=10)
        assert system["event"] == "system" and system["join_ref"] == client.join_refs[TOPIC]
        assert system["payload"]["message"] == "Token has expired 0 seconds ago"
        assert (await client.recv())["event"] == "phx_close"
        assert server.subscribers(TOPIC) == 0 and server.stats.unauthorized == 1


async def test_a_token_checked_before_its_expiry_is_checked_again() -> None:
    # The server's clock is the test's: the check falls due (in real time)
    # while the token is still valid, and the channel stays; once the clock
    # passes the expiry, the next check shuts it.
    clock = FakeClock()
    exp = int(clock.now) + 1
    async with (
        LocalRealtimeServer(key=SERVICE_KEY, jwt_secret=SECRET, clock=clock) as srv,
        clients(srv) as make,
    ):
        clock.now = exp - 0.05  # checks fall due every 50 ms
        client = await make(apikey=SERVICE_KEY)
        await client.joined(
            private=True, access_token=mint_token(SECRET, {"role": "authenticated", "exp": exp})
        )
        await client.expect_silence(seconds=0.3)
        clock.now = exp + 2.5
        system = await client.recv()
        assert system["payload"]["message"] == "Token has expired 2 seconds ago"


async def test_a_refresh_before_expiry_keeps_the_channel(make: Connect) -> None:
    reader, sender = await make(), await make()
    exp = int(time.time() + 1)
    expiring = mint_token(SECRET, {"role": "authenticated", "exp": exp})
    await reader.joined(private=True, access_token=expiring, ack=False)
    await sender.joined(ack=True)
    await reader.push(TOPIC, "access_token", {"access_token": token(exp_in=3600)})
    await until(lambda: time.time() > exp + 0.05)  # past the first token's expiry
    await sender.push(TOPIC, "broadcast", broadcast_payload(1))
    await sender.recv()
    # Frames keep their order: a shutdown at the expiry would come first.
    assert (await reader.recv())["event"] == "broadcast"


async def test_the_official_client_joins_a_private_channel_with_its_key(
    server: LocalRealtimeServer,
) -> None:
    states: dict[str, list[RealtimeSubscribeStates]] = {}
    for name, auth in (("service key", None), ("anon token", token("anon"))):
        client = AsyncRealtimeClient(server.realtime_url, SERVICE_KEY, auto_reconnect=False)
        if auth is not None:
            await client.set_auth(auth)
        await client.connect()
        try:
            seen: list[RealtimeSubscribeStates] = []
            states[name] = seen
            channel = client.channel("events:critical", {"config": {"private": True}})
            await channel.subscribe(lambda state, _err, seen=seen: seen.append(state))
            await until(lambda seen=seen: bool(seen))
        finally:
            await client.close()
    assert states == {
        "service key": [RealtimeSubscribeStates.SUBSCRIBED],
        "anon token": [RealtimeSubscribeStates.CHANNEL_ERROR],
    }
