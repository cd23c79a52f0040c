"""``broadcaster rollout start|status|pause|resume|abort``: the command against a
real admin API over loopback (the command runs on a thread of its own, as it
would in a shell, while the service answers on this loop), with its output
and exit codes: 0 done, 1 refused by the service (409, 404) or unreachable, 2
bad arguments, no token or a token or plan the service refuses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from broadcaster.adapters.memory import MemoryAdapter
from broadcaster.admin import AdminServer, create_app
from broadcaster.cli import main
from broadcaster.core import Broadcaster
from broadcaster.security import TokenSet
from broadcaster.settings import load_settings
from broadcaster.spawn import free_port
from broadcaster.store.memory import MemoryStore

TOKEN = "cli-rollout-token-0123"


@pytest.fixture
async def admin_url(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    for name in ("BROADCASTER_ADMIN_TOKEN", "BROADCASTER_TOKENS", "ADMIN_TLS_CERT"):
        monkeypatch.delenv(name, raising=False)
    b = Broadcaster(
        load_settings(env_file=None, reconcile_interval_s=0),
        adapters=[MemoryAdapter("websocket"), MemoryAdapter("realtime")],
        store=MemoryStore(),
    )
    async with b, AdminServer(create_app(b, TokenSet.of({"ops": TOKEN})), port=0) as server:
        yield server.url


async def rollout(
    capsys: pytest.CaptureFixture[str], *args: str, url: str | None = None, token: bool = True
) -> tuple[int, str, str]:
    argv = ["--env-file", "/dev/null", "rollout", *args]
    if url is not None:
        argv += ["--admin-url", url]
    if token:
        argv += ["--token", TOKEN]
    code = await asyncio.to_thread(main, argv)
    out, err = capsys.readouterr()
    return code, out, err


async def test_start_status_and_the_operator_moves(
    admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await rollout(
        capsys,
        "start",
        "user_activity",
        "--steps",
        "1,25,100",
        "--hold",
        "300",
        "--max-p99-ms",
        "250",
        "--cutover",
        url=admin_url,
    )
    assert code == 0, err
    assert out.splitlines()[0] == (
        "rollout 1  USER_ACTIVITY  running  step 1 of 4, 1 %  hold left 300 s"
    )
    assert "steps   1,25,100 then cutover, hold 300 s" in out
    assert '"max_realtime_p99_ms": 250' in out and "reason  started by ops" in out
    assert "start" in out.splitlines()[-1]

    code, out, err = await rollout(capsys, "start", "USER_ACTIVITY", "--steps", "50", url=admin_url)
    assert code == 1 and out == ""
    assert err.strip() == "rollout start: 409 USER_ACTIVITY has rollout 1 running"

    assert (await rollout(capsys, "pause", "1", url=admin_url))[:2][0] == 0
    code, out, _ = await rollout(capsys, "status", url=admin_url)
    assert (code, out) == (0, "rollout 1  USER_ACTIVITY  paused  step 1 of 4, 1 %\n")
    code, _, err = await rollout(capsys, "pause", "1", url=admin_url)
    assert code == 1 and "409 rollout is paused: only a running one can pause" in err
    assert (await rollout(capsys, "resume", "1", url=admin_url))[0] == 0
    code, out, _ = await rollout(capsys, "abort", "1", "--json", url=admin_url)
    assert code == 0
    body = json.loads(out)
    assert (body["state"], body["percentage"]) == ("aborted", 0)
    assert [m["action"] for m in body["timeline"]] == ["start", "pause", "resume", "abort"]
    code, out, _ = await rollout(capsys, "status", "1", url=admin_url)
    assert code == 0 and "aborted  back to 0 %, as before it" in out.splitlines()[0]
    code, _, err = await rollout(capsys, "status", "9", url=admin_url)
    assert code == 1 and "404 no rollout 9" in err


async def test_refusals_and_their_exit_codes(
    admin_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = await rollout(capsys, "start", "DEBUG", "--steps", "50,25", url=admin_url)
    assert code == 2 and "422 steps:" in err and "each step must be above the one before" in err
    code, _, err = await rollout(capsys, "status", url=admin_url, token=False)
    assert code == 2 and "no token to ask the service with" in err
    code, _, err = await rollout(
        capsys, "status", "--token", "wrong-token-0123456789", url=admin_url, token=False
    )
    assert code == 2 and "401" in err
    code, _, err = await rollout(capsys, "status", url=f"http://127.0.0.1:{free_port()}")
    assert code == 1 and "is not reachable" in err
    code, out, _ = await rollout(capsys, "status", url=admin_url)
    assert (code, out) == (0, "no rollouts\n")


@pytest.mark.parametrize(
    "args",
    [
        ("start", "DEBUG", "--steps", "1,x"),
        ("start", "DEBUG", "--steps", ","),
        ("start", "DEBUG"),
        ("pause", "0"),
        ("abort", "one"),
        ("resume",),
    ],
)
async def test_bad_arguments_exit_2(
    args: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        await rollout(capsys, *args)
    assert info.value.code == 2
