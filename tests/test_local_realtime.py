"""The local Realtime stand-in: started only where no Supabase project is
configured, reachable with exactly the key it hands out, gone after its block."""

from __future__ import annotations

import pytest
from pydantic import SecretStr
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from broadcaster.local_realtime import realtime_settings, start_local_realtime
from broadcaster.settings import load_settings


def _socket(url: str, key: str) -> str:
    return url.replace("http", "ws", 1) + f"/realtime/v1/websocket?apikey={key}&vsn=1.0.0"


async def test_a_configured_project_is_used_as_it_is() -> None:
    settings = load_settings(env_file=None, supabase_url="https://project.supabase.co")
    async with realtime_settings(settings) as pushing:
        assert pushing is settings


async def test_without_a_project_a_stand_in_runs_for_the_block_with_its_own_key() -> None:
    settings = load_settings(env_file=None)
    async with realtime_settings(settings) as pushing:
        url, key = pushing.supabase_url, pushing.supabase_key
        assert settings.supabase_url is None and url is not None and key is not None
        async with connect(_socket(url, key.get_secret_value())):
            pass
        with pytest.raises(InvalidStatus) as refused:
            async with connect(_socket(url, "somebody-elses-key")):
                pass
        assert refused.value.response.status_code == 401
    with pytest.raises(OSError):
        async with connect(_socket(url, key.get_secret_value()), open_timeout=2):
            pass


async def test_a_configured_key_is_the_one_the_stand_in_accepts() -> None:
    local = await start_local_realtime(SecretStr("configured-key-0123456789"))
    try:
        assert local.key == "configured-key-0123456789"
        async with connect(_socket(local.url, local.key)):
            pass
    finally:
        await local.close()
