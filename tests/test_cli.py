"""The ``broadcaster`` command: exit codes and output (SPEC 9)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broadcaster.cli import main


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items()} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "broadcaster", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


def test_config_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check"]) == 0
    assert "configuration OK" in capsys.readouterr().out


def test_a_misspelled_variable_is_named_with_the_closest_setting(tmp_path: Path) -> None:
    env = tmp_path / "misspelled.env"
    env.write_text("DUAL_WRITE_CRITCAL_PERCENTAGE=150\n", encoding="utf-8")
    result = run("--env-file", str(env), "config", "check", env={"REALTIME_BATCH_MSS": "5"})
    assert result.returncode == 0 and result.stdout == "configuration OK\n"
    assert result.stderr.splitlines() == [
        "warning: REALTIME_BATCH_MSS is not a setting (did you mean REALTIME_BATCH_MS?);"
        " it is ignored",
        "warning: DUAL_WRITE_CRITCAL_PERCENTAGE is not a setting"
        " (did you mean DUAL_WRITE_CRITICAL_PERCENTAGE?); it is ignored",
    ]


def test_config_example_prints_the_env_file_the_package_ships_even_with_a_bad_config(
    tmp_path: Path,
) -> None:
    """A first .env comes from the installed package, whatever the environment."""
    result = run("config", "example", env={"STORE_URL": "ftp://nowhere"})
    assert result.returncode == 0, result.stderr
    repo = Path(__file__).resolve().parent.parent
    assert result.stdout == (repo / ".env.example").read_text(encoding="utf-8")
    (tmp_path / ".env").write_text(result.stdout, encoding="utf-8")
    checked = run("--env-file", str(tmp_path / ".env"), "config", "check")
    assert checked.returncode == 0 and checked.stdout == "configuration OK\n", checked.stderr


def test_config_files_names_the_shipped_alert_rules_and_dashboard() -> None:
    result = run("config", "files")
    assert result.returncode == 0, result.stderr
    shipped = Path(result.stdout.strip())
    repo = Path(__file__).resolve().parent.parent
    for name in ("prometheus/alerts.yml", "grafana/broadcaster-dashboard.json"):
        assert (shipped / name).read_bytes() == (repo / "config" / name).read_bytes()


def test_config_show_prints_effective_configuration_with_secrets_masked(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPABASE_KEY", "very-secret")
    monkeypatch.setenv("DUAL_WRITE_PERFORMANCE_PERCENTAGE", "75")
    assert main(["config", "show"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["categories"]["PERFORMANCE"]["percentage"] == 75
    assert data["supabase_key"] == "********"


def test_bad_configuration_exits_2_with_one_line_naming_variable_and_value() -> None:
    result = run("config", "check", env={"DUAL_WRITE_CRITICAL_PERCENTAGE": "150"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "DUAL_WRITE_CRITICAL_PERCENTAGE=150" in lines[0]


def test_config_show_masks_tokens_signing_key_and_store_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROADCASTER_ADMIN_TOKEN", "V7oS/Oh28Z9l7Q/XLWBDhA==")
    monkeypatch.setenv(
        "BROADCASTER_TOKENS", '{"ci": {"token": "ci-token-0123456789", "scope": "read"}}'
    )
    monkeypatch.setenv("EVENT_SIGNING_KEY", "signing-key-0123456789")
    monkeypatch.setenv("STORE_URL", "postgresql://app:db-password-42@db:5432/events")
    assert main(["config", "show"]) == 0
    out = capsys.readouterr().out
    for secret in ("V7oS/Oh28Z9l7Q", "ci-token-0123", "signing-key-0123", "db-password-42"):
        assert secret not in out
    assert json.loads(out)["store_url"] == "postgresql://app:********@db:5432/events"


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("BROADCASTER_TOKENS", '{"ci": {"token": "ci-token-0123456789", "scope": "root"}}', "root"),
        ("BROADCASTER_TOKENS", '{"ci": "secret-secret-secret"', "not valid JSON"),
        ("BROADCASTER_TOKENS", '{"ci": {"token": "short", "scope": "read"}}', "at least 16"),
        ("BROADCASTER_ADMIN_TOKEN", "short-token", "at least 16"),
    ],
)
def test_bad_tokens_exit_2_with_one_line_and_no_secret(
    variable: str, value: str, says: str
) -> None:
    result = run("config", "check", env={variable: value})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert variable in line and says in line
    assert "secret-secret" not in line and "short-token" not in line and "0123456789" not in line


def test_event_loop_is_shown_and_an_unknown_one_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["config", "show"]) == 0
    assert json.loads(capsys.readouterr().out)["event_loop"] == "auto"
    monkeypatch.setenv("EVENT_LOOP", "trio")
    assert main(["config", "check"]) == 2
    assert "EVENT_LOOP=trio" in capsys.readouterr().err


def test_event_loop_uvloop_without_uvloop_exits_2_before_anything_starts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` fails
    monkeypatch.setenv("EVENT_LOOP", "uvloop")
    assert main(["reconcile"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "EVENT_LOOP=uvloop: uvloop cannot be imported" in err[0]
    monkeypatch.setenv("EVENT_LOOP", "auto")  # falls back to asyncio's loop
    assert main(["config", "check"]) == 0


def test_bad_configuration_from_env_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env_file = tmp_path / "custom.env"
    env_file.write_text("DUAL_WRITE_GLOBAL_OVERRIDE=kafka\n")
    assert main(["--env-file", str(env_file), "config", "check"]) == 2
    err = capsys.readouterr().err
    assert "DUAL_WRITE_GLOBAL_OVERRIDE=kafka" in err


@pytest.mark.parametrize("command", [["config", "check"], ["serve"], ["reconcile"]])
def test_unsupported_store_url_exits_2_before_anything_starts(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # It passed `config check` and crashed `serve` with a traceback once.
    monkeypatch.setenv("STORE_URL", "mysql://db/events")
    assert main(command) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("configuration error: STORE_URL=mysql://db/events")


@pytest.mark.parametrize("taken", ["ADMIN_PORT", "WEBSOCKET_PORT"])
def test_serve_on_a_taken_port_exits_1_with_one_line_naming_it(
    taken: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Both listeners fail alike (the admin API's exited 2 with "[Errno 98]").
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("STORE_URL", "memory://")
        for variable in ("ADMIN_PORT", "WEBSOCKET_PORT"):
            monkeypatch.setenv(variable, str(port) if variable == taken else "0")
        assert main(["serve"]) == 1
    # Found before anything starts: the error is the only line.
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("serve: "), err
    assert f"cannot listen on 127.0.0.1:{port}" in err[0] and "Errno" not in err[0]


def test_a_named_env_file_must_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # It ran on defaults without a word when the name had a typo.
    missing = tmp_path / "prod.env"
    assert main(["--env-file", str(missing), "config", "check"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"configuration error: --env-file={missing}: no such file"
    )
    # Without --env-file, a missing ./.env is fine: it is optional.
    monkeypatch.chdir(tmp_path)
    assert main(["config", "check"]) == 0
    (tmp_path / ".env").write_text("WEBSOCKET_PORT=9999\n")
    assert main(["config", "show"]) == 0
    assert '"websocket_port": 9999' in capsys.readouterr().out


def test_subscribe_to_a_non_websocket_url_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["subscribe", "--url", "http://127.0.0.1:1/events"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "subscribe: --url: not a WebSocket URL: 'http://127.0.0.1:1/events'"
        " (scheme isn't ws or wss)"
    ]


@pytest.mark.parametrize(
    ("env", "verdict", "code"),
    [
        ({"EVENT_SIGNING_KEY": "the-signing-key", "EVENT_SIGNING_KEY_ID": "k1"}, "OK", 0),
        ({"EVENT_SIGNING_KEY": "another-key", "EVENT_SIGNING_KEY_ID": "k1"}, "BAD_SIGNATURE", 1),
        ({"EVENT_SIGNING_KEY": "the-signing-key"}, "BAD_SIGNATURE", 1),  # key id "default"
        ({}, "OK", 0),  # no key: signatures are not checked
    ],
)
def test_subscribe_verifies_signatures_with_the_settings_key(
    env: dict[str, str],
    verdict: str,
    code: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import asyncio
    import threading

    from broadcaster.adapters.websocket import WebSocketAdapter
    from broadcaster.events import EventFactory, SigningKey, seal

    factory = EventFactory(signing_key=SigningKey("k1", "the-signing-key"))
    records = [seal(factory.draft("CRITICAL", "order.created", {"i": i}), i + 1) for i in range(3)]
    # The server runs on a loop of its own thread: the command runs its own.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()
    server = WebSocketAdapter(port=0)

    async def send_once_subscribed() -> None:
        async with asyncio.timeout(30):
            await server.wait_for_subscribers(1)
        await server.send(records)

    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(30)
        sent = asyncio.run_coroutine_threadsafe(send_once_subscribed(), loop)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert main(["subscribe", "--url", server.url, "--limit", "3"]) == code
        sent.result(30)
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
    # The server's start-up line is logged to stdout before the command's own output.
    lines = [line for line in capsys.readouterr().out.splitlines() if "[info" not in line]
    assert lines == [f"{n} CRITICAL order.created {verdict}" for n in (1, 2, 3)]


def test_bad_arguments_exit_2() -> None:
    assert run("no-such-command").returncode == 2
    result = run("subscribe", "--categories", "CRITICAL,BOGUS")
    assert result.returncode == 2
    assert "BOGUS" in result.stderr


async def _seed_store(url: str, *, receipts: bool, watched: bool = True) -> None:
    from broadcaster.events import EventFactory
    from broadcaster.store import ConsumerReceipt, store_from_url

    async with store_from_url(url) as store:
        if watched:  # a consumer watches the path before the events are stored
            await store.register_consumer("probe:test", "websocket", int(time.time() * 1000))
        factory = EventFactory(clock=lambda: 1_000_000.0)  # long ago: past max delay
        # Stamped before the append, so however slow the machine, the receipt is
        # never more than the 1 ms window after the store's created_at.
        received_ms = int(time.time() * 1000)
        records = await store.append(
            [
                (factory.draft("CRITICAL", "order.created", {"i": i}), ("websocket",))
                for i in range(3)
            ]
        )
        if receipts:
            await store.record_receipts(
                [
                    ConsumerReceipt(
                        r.sequence_id, "websocket", r.event_type, received_ms, r.checksum, True
                    )
                    for r in records
                ]
            )


def test_reconcile_exits_1_while_loss_remains_and_0_when_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    lossy = f"sqlite:///{tmp_path / 'lossy.db'}"
    clean = f"sqlite:///{tmp_path / 'clean.db'}"
    asyncio.run(_seed_store(lossy, receipts=False))
    asyncio.run(_seed_store(clean, receipts=True))
    # The store stamps created_at with the real clock: judge as if 10 minutes later.
    monkeypatch.setenv("RECONCILE_MAX_DELAY_S", "0.001")
    monkeypatch.setenv("RECONCILE_BUFFER_S", "0")
    monkeypatch.setenv("RECONCILE_WINDOW_S", "0.001")

    monkeypatch.setenv("STORE_URL", lossy)
    assert main(["reconcile"]) == 1
    out = capsys.readouterr().out
    assert "unrepaired loss: 3" in out and "missing on websocket: [1, 2, 3]" in out

    monkeypatch.setenv("STORE_URL", clean)
    assert main(["reconcile", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["totals"]["missing"] == 0
    assert data["categories"]["CRITICAL"]["websocket"]["matched"] == 3


def test_reconcile_says_which_consumers_reported_and_what_nobody_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    url = f"sqlite:///{tmp_path / 'unwatched.db'}"
    asyncio.run(_seed_store(url, receipts=False, watched=False))
    monkeypatch.setenv("STORE_URL", url)
    monkeypatch.setenv("RECONCILE_MAX_DELAY_S", "0.001")
    monkeypatch.setenv("RECONCILE_BUFFER_S", "0")
    monkeypatch.setenv("RECONCILE_WINDOW_S", "0.001")
    assert main(["reconcile"]) == 0  # nobody could have seen them: not loss
    out = capsys.readouterr().out
    assert "unrepaired loss: 0" in out
    assert "websocket  none: its events are 'unobserved'" in out
    clean = f"sqlite:///{tmp_path / 'clean.db'}"
    asyncio.run(_seed_store(clean, receipts=True))
    monkeypatch.setenv("STORE_URL", clean)
    assert main(["reconcile"]) == 0
    out = capsys.readouterr().out
    assert "websocket  default: events 1 through 3 (3 receipts)" in out
    assert "websocket  probe:test: events 1 through 0 (0 receipts)" in out


def test_reconcile_on_no_store_exits_2_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "broadcaster.db"
    result = run("reconcile", env={"STORE_URL": f"sqlite:///{missing}"})
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert str(missing) in line and "no store" in line
    assert not missing.exists() and not missing.parent.exists()
    plain = subprocess.run(
        [sys.executable, "-m", "broadcaster", "--env-file", "/dev/null", "reconcile"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert plain.returncode == 2 and list(tmp_path.iterdir()) == []  # no ./broadcaster.db


def test_reconcile_json_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    import asyncio
    import os

    from broadcaster.store import store_from_url

    url = f"sqlite:///{tmp_path / 'piped.db'}"

    async def seed() -> None:
        async with store_from_url(url) as store:  # a report far larger than a pipe holds
            for i in range(600):  # each row ~200 bytes of JSON
                name = f"browser-{i:05d}-{'x' * 120}"
                await store.register_consumer(name, "websocket", 1)

    asyncio.run(_seed_store(url, receipts=True))
    asyncio.run(seed())
    command = f"{sys.executable} -m broadcaster --env-file /dev/null reconcile --json"
    result = subprocess.run(
        ["bash", "-c", f"{command} | head -c 100 >/dev/null; echo ${{PIPESTATUS[0]}}"],
        capture_output=True,
        text=True,
        env={**os.environ, "STORE_URL": url},
        timeout=60,
    )
    assert result.stderr == ""
    assert result.stdout.strip() in ("0", "1")
