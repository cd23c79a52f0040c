"""The link's connections come from the project's ``supabase`` client:
private channels are joined with ``config.private`` and the access token, a
token refresh (``realtime.set_auth``, which supabase's auth calls on every
auth event) reaches every joined channel, and a reconnect rejoins with the
refreshed token."""

from __future__ import annotations

import time
from typing import Any

from broadcaster.events import Category
from broadcaster.realtime_server import mint_token
from tests._wait import until
from tests.adapters.realtime._support import KEY, RecordingServer, Records

SECRET = "link-tests-jwt-secret-0123456789abcdef"
#: The adapter's channels: one per category, and its canary (private too).
TOPICS = {f"realtime:events:{c.value.lower()}" for c in Category} | {"realtime:events:canary"}


async def test_private_channels_join_with_the_access_token_and_follow_its_refresh(
    records: Records, make_adapter: Any
) -> None:
    # Private channels need a token the server can verify: a service key
    # signed with the project's JWT secret, as Supabase's keys are.
    srv = RecordingServer(jwt_secret=SECRET)
    await srv.start()
    service_key = mint_token(SECRET, {"role": "service_role", "exp": time.time() + 3600})
    refreshed = mint_token(SECRET, {"role": "authenticated", "exp": time.time() + 3600})
    try:
        adapter = await make_adapter(srv.realtime_url, private=True, key=service_key)
        assert adapter.health().extra["private_channels"] is True
        joins = dict(srv.join_payloads)
        assert set(joins) == TOPICS
        for payload in joins.values():
            assert payload["config"]["private"] is True
            assert payload["access_token"] == service_key  # no session: the key itself
        await adapter.send(records.make(2))

        # What supabase's auth does with a refreshed session: the live
        # connection is the project's realtime, and every channel hears it.
        project = adapter.project
        assert project is not None and adapter.link is not None
        await project.realtime.set_auth(refreshed)
        await until(lambda: len(srv.access_tokens) == len(TOPICS))
        assert set(srv.access_tokens) == {(t, refreshed) for t in TOPICS}

        # A reconnect joins again with the refreshed token, not the key.
        srv.join_payloads.clear()
        await srv.close()
        await until(lambda: not adapter.health().connected)
        await srv.start()
        await until(lambda: adapter.health().connected)
        rejoined = dict(srv.join_payloads)
        assert set(rejoined) == TOPICS
        assert {p["access_token"] for p in rejoined.values()} == {refreshed}
        assert {p["config"]["private"] for p in rejoined.values()} == {True}
        await adapter.send(records.make(1))
    finally:
        await srv.close()


async def test_supabase_auth_events_reach_the_live_connection(
    server: RecordingServer, make_adapter: Any
) -> None:
    adapter = await make_adapter(server.realtime_url)
    assert {p["config"]["private"] for _, p in server.join_payloads} == {False}
    project = adapter.project
    assert project is not None
    # A sign-out without a session makes no request; supabase's own listener
    # hands the key back to its realtime: our connection.
    await project.auth.sign_out()
    await until(lambda: len(server.access_tokens) == len(TOPICS))
    assert {token for _, token in server.access_tokens} == {KEY}
