"""Settings (SPEC 4): defaults, environment and .env, validation errors that
name the variable and the value, and the derived views."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broadcaster.events import Category
from broadcaster.exceptions import ConfigError
from broadcaster.routing import CategoryRoute
from broadcaster.settings import (
    CategorySettings,
    Settings,
    StoreURL,
    default_instance_id,
    load_settings,
    parse_store_url,
)

# -- SPEC 4's tables, spelled out ---------------------------------------------

SPEC_FLAT_DEFAULTS: dict[str, Any] = {
    "DUAL_WRITE_ENABLED": True,
    "DUAL_WRITE_PRIMARY_ADAPTER": "websocket",
    "DUAL_WRITE_GLOBAL_OVERRIDE": None,
    "BREAKER_RECOVERY_TIME_S": 30,
    "BREAKER_HALF_OPEN_REQUESTS": 5,
    "BREAKER_LATENCY_MULTIPLIER": 2.0,
    "RECONCILE_WINDOW_S": 5,
    "RECONCILE_BUFFER_S": 30,
    "RECONCILE_MAX_DELAY_S": 300,
    "RECONCILE_PROBE": True,
    # Computed at load; this process is the one loading.
    "INSTANCE_ID": default_instance_id(),
    "WEBSOCKET_HOST": "127.0.0.1",
    "WEBSOCKET_PORT": 8765,
    "SUPABASE_URL": None,
    "SUPABASE_KEY": None,
    "REALTIME_CHANNEL_PREFIX": "events",
    "REALTIME_BATCH_MS": 5,
    "REALTIME_BATCH_MAX": 100,
    "REALTIME_BATCH_BYTES": 200_000,
    "REALTIME_MAX_MESSAGES_PER_S": 0,
    "REALTIME_PLAN": None,
    "REALTIME_SUBSCRIBERS": 1,
    "REALTIME_PRIVATE_CHANNELS": False,
    "STORE_URL": "sqlite:///./broadcaster.db",
    "ADMIN_HOST": "127.0.0.1",
    "ADMIN_PORT": 8080,
    "BROADCASTER_ADMIN_TOKEN": None,
    "BROADCASTER_TOKENS": None,
    "ADMIN_MAX_BODY_BYTES": 8 * 1024 * 1024,
    "ADMIN_TLS_CERT": None,
    "ADMIN_TLS_KEY": None,
    "WEBSOCKET_TLS_CERT": None,
    "WEBSOCKET_TLS_KEY": None,
    "WEBSOCKET_REQUIRE_TOKEN": False,
    "EVENT_SIGNING_KEY": None,
    "EVENT_SIGNING_KEY_ID": "default",
    "EVENT_MAX_BYTES": 262_144,
    "LOG_FORMAT": "console",
    "LOG_LEVEL": "INFO",
}

SPEC_CATEGORY_DEFAULTS = {
    "CRITICAL": (True, 100, ("websocket", "realtime"), "sha256"),
    "PERFORMANCE": (True, 50, ("websocket",), "crc32"),
    "USER_ACTIVITY": (False, 0, ("realtime",), "sha256"),
    "SYSTEM": (True, 100, ("websocket", "realtime"), "crc32"),
    "DEBUG": (False, 0, (), "crc32"),
}

SPEC_ADAPTER_DEFAULTS = {"websocket": (0.05, 200), "realtime": (0.05, 150)}


def _secret(value: Any) -> Any:
    return None if value is None else value.get_secret_value()


SECRETS = ("SUPABASE_KEY", "BROADCASTER_ADMIN_TOKEN", "BROADCASTER_TOKENS", "EVENT_SIGNING_KEY")

#: A file that exists, for the TLS variables (the settings check only that).
A_FILE = str(Path(__file__).resolve())
#: TLS variables come in pairs: setting one alone is an error.
COMPANIONS = {
    "ADMIN_TLS_CERT": "ADMIN_TLS_KEY",
    "ADMIN_TLS_KEY": "ADMIN_TLS_CERT",
    "WEBSOCKET_TLS_CERT": "WEBSOCKET_TLS_KEY",
    "WEBSOCKET_TLS_KEY": "WEBSOCKET_TLS_CERT",
}
TOKENS_JSON = '{"ci": {"token": "ci-token-0123456789", "scope": "read"}}'


def flat(settings: Settings, variable: str) -> Any:
    value = getattr(settings, variable.lower())
    return _secret(value) if variable in SECRETS else value


def category(settings: Settings, name: str) -> tuple[Any, ...]:
    cs = settings.categories[Category(name)]
    return (cs.enabled, cs.percentage, cs.adapters, cs.checksum)


# (variable, raw text, how to read it, expected value) -- each differs from the default.
VARIABLES: list[tuple[str, str, Callable[[Settings], Any], Any]] = [
    *(
        (name, raw, lambda s, n=name: flat(s, n), expected)
        for name, raw, expected in [
            ("DUAL_WRITE_ENABLED", "false", False),
            ("DUAL_WRITE_PRIMARY_ADAPTER", "realtime", "realtime"),
            ("DUAL_WRITE_GLOBAL_OVERRIDE", "realtime", "realtime"),
            ("BREAKER_RECOVERY_TIME_S", "12.5", 12.5),
            ("BREAKER_HALF_OPEN_REQUESTS", "3", 3),
            ("BREAKER_LATENCY_MULTIPLIER", "3.5", 3.5),
            ("RECONCILE_WINDOW_S", "2", 2.0),
            ("RECONCILE_BUFFER_S", "10", 10.0),
            ("RECONCILE_MAX_DELAY_S", "600", 600.0),
            ("RECONCILE_PROBE", "false", False),
            ("INSTANCE_ID", "eu-west-1a:serve-2", "eu-west-1a:serve-2"),
            ("WEBSOCKET_HOST", "0.0.0.0", "0.0.0.0"),
            ("WEBSOCKET_PORT", "9000", 9000),
            ("SUPABASE_URL", "https://abc.supabase.co", "https://abc.supabase.co"),
            ("SUPABASE_KEY", "service-key", "service-key"),
            ("REALTIME_CHANNEL_PREFIX", "stream", "stream"),
            ("REALTIME_BATCH_MS", "7", 7.0),
            ("REALTIME_BATCH_MAX", "50", 50),
            ("REALTIME_BATCH_BYTES", "100000", 100_000),
            ("REALTIME_MAX_MESSAGES_PER_S", "10", 10.0),
            ("REALTIME_PLAN", "pro", "pro"),
            ("REALTIME_SUBSCRIBERS", "3", 3),
            ("REALTIME_PRIVATE_CHANNELS", "true", True),
            ("STORE_URL", "postgresql://u@h/db", "postgresql://u@h/db"),
            ("ADMIN_HOST", "0.0.0.0", "0.0.0.0"),
            ("ADMIN_PORT", "9090", 9090),
            # Taken whole: '=' and ',' are part of the token (SPEC 13).
            (
                "BROADCASTER_ADMIN_TOKEN",
                "V7oS/Oh28Z9l7Q/XLWBDhA==,x=y",
                "V7oS/Oh28Z9l7Q/XLWBDhA==,x=y",
            ),
            ("BROADCASTER_TOKENS", TOKENS_JSON, TOKENS_JSON),
            ("ADMIN_MAX_BODY_BYTES", "65536", 65536),
            ("ADMIN_TLS_CERT", A_FILE, Path(A_FILE)),
            ("ADMIN_TLS_KEY", A_FILE, Path(A_FILE)),
            ("WEBSOCKET_TLS_CERT", A_FILE, Path(A_FILE)),
            ("WEBSOCKET_TLS_KEY", A_FILE, Path(A_FILE)),
            ("WEBSOCKET_REQUIRE_TOKEN", "true", True),
            ("EVENT_SIGNING_KEY", "signing-key", "signing-key"),
            ("EVENT_SIGNING_KEY_ID", "k2", "k2"),
            ("EVENT_MAX_BYTES", "1024", 1024),
            ("LOG_FORMAT", "json", "json"),
            ("LOG_LEVEL", "DEBUG", "DEBUG"),
        ]
    ),
    *(
        (f"DUAL_WRITE_{cat}_{field}", raw, lambda s, c=cat, i=index: category(s, c)[i], expected)
        for cat in SPEC_CATEGORY_DEFAULTS
        for field, index, raw, expected in [
            ("ENABLED", 0, "false" if SPEC_CATEGORY_DEFAULTS[cat][0] else "true", None),
            ("PERCENTAGE", 1, "17", 17),
            # "websocket" alone differs from every category's default list
            ("ADAPTERS", 2, "websocket", ("websocket",))
            if cat != "PERFORMANCE"
            else ("ADAPTERS", 2, "realtime", ("realtime",)),
            ("CHECKSUM", 3, "crc32c", "crc32c"),
        ]
    ),
    *(
        (
            f"ADAPTER_{name.upper()}_{field}",
            raw,
            lambda s, n=name, f=field: getattr(s.adapters[n], f.lower()),
            expected,
        )
        for name in SPEC_ADAPTER_DEFAULTS
        for field, raw, expected in [
            ("ERROR_THRESHOLD", "0.25", 0.25),
            ("LATENCY_THRESHOLD_MS", "333", 333.0),
        ]
    ),
]
# Fill in the flipped booleans of DUAL_WRITE_<CAT>_ENABLED.
VARIABLES = [
    (name, raw, read, (raw == "true") if expected is None else expected)
    for name, raw, read, expected in VARIABLES
]
_IDS = [v[0] for v in VARIABLES]


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    return path


# -- defaults -----------------------------------------------------------------------


def test_spec_tables_cover_every_variable() -> None:
    families = {
        f"DUAL_WRITE_{c}_{f}"
        for c in SPEC_CATEGORY_DEFAULTS
        for f in ("ENABLED", "PERCENTAGE", "ADAPTERS", "CHECKSUM")
    }
    families |= {
        f"ADAPTER_{a.upper()}_{f}"
        for a in SPEC_ADAPTER_DEFAULTS
        for f in ("ERROR_THRESHOLD", "LATENCY_THRESHOLD_MS")
    }
    assert set(_IDS) == set(SPEC_FLAT_DEFAULTS) | families


@pytest.mark.parametrize("env_file", [None, ".env"])
def test_defaults_equal_spec(env_file: str | None) -> None:
    settings = load_settings(env_file)
    for variable, expected in SPEC_FLAT_DEFAULTS.items():
        assert flat(settings, variable) == expected, variable
    assert {c.value: category(settings, c.value) for c in Category} == SPEC_CATEGORY_DEFAULTS
    assert {
        name: (a.error_threshold, a.latency_threshold_ms) for name, a in settings.adapters.items()
    } == SPEC_ADAPTER_DEFAULTS


# -- sources: environment, .env, precedence ---------------------------------------------


@pytest.mark.parametrize(("variable", "raw", "read", "expected"), VARIABLES, ids=_IDS)
def test_variable_from_environment(
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    raw: str,
    read: Callable[[Settings], Any],
    expected: Any,
) -> None:
    before = read(load_settings(None))
    assert before != expected  # the test value must differ from the default
    monkeypatch.setenv(variable, raw)
    if variable in COMPANIONS:
        monkeypatch.setenv(COMPANIONS[variable], A_FILE)
    assert read(load_settings(None)) == expected


@pytest.mark.parametrize(("variable", "raw", "read", "expected"), VARIABLES, ids=_IDS)
def test_variable_from_dotenv(
    tmp_path: Path, variable: str, raw: str, read: Callable[[Settings], Any], expected: Any
) -> None:
    values = {variable: raw}
    if variable in COMPANIONS:
        values[COMPANIONS[variable]] = A_FILE
    write_env(tmp_path / ".env", values)
    assert read(load_settings()) == expected  # ./.env is the default file
    other = write_env(tmp_path / "elsewhere.env", values)
    assert read(load_settings(other)) == expected
    assert read(load_settings(None)) != expected  # env_file=None reads no file


@pytest.mark.parametrize(
    ("variable", "file_value", "env_value", "read", "from_file", "from_env"),
    [
        ("WEBSOCKET_PORT", "9001", "9002", lambda s: s.websocket_port, 9001, 9002),
        ("DUAL_WRITE_ENABLED", "true", "false", lambda s: s.dual_write_enabled, True, False),
        ("LOG_FORMAT", "json", "console", lambda s: s.log_format, "json", "console"),
        (
            "DUAL_WRITE_CRITICAL_PERCENTAGE",
            "11",
            "22",
            lambda s: s.categories["CRITICAL"].percentage,
            11,
            22,
        ),
        (
            "ADAPTER_REALTIME_ERROR_THRESHOLD",
            "0.3",
            "0.4",
            lambda s: s.adapters["realtime"].error_threshold,
            0.3,
            0.4,
        ),
    ],
)
def test_environment_wins_over_dotenv(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    variable: str,
    file_value: str,
    env_value: str,
    read: Callable[[Settings], Any],
    from_file: Any,
    from_env: Any,
) -> None:
    write_env(tmp_path / ".env", {variable: file_value})
    assert read(load_settings()) == from_file
    monkeypatch.setenv(variable, env_value)
    assert read(load_settings()) == from_env


def test_dotenv_and_environment_combine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_env(tmp_path / ".env", {"DUAL_WRITE_DEBUG_PERCENTAGE": "40", "ADMIN_PORT": "9999"})
    monkeypatch.setenv("DUAL_WRITE_DEBUG_ENABLED", "true")
    settings = load_settings()
    assert category(settings, "DEBUG")[:2] == (True, 40)
    assert settings.admin_port == 9999


def test_dotenv_line_without_value_is_ignored(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DUAL_WRITE_CRITICAL_PERCENTAGE\nADMIN_PORT=9\n")
    settings = load_settings()
    assert settings.categories[Category.CRITICAL].percentage == 100
    assert settings.admin_port == 9


def test_variable_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("dual_write_performance_percentage", "7")
    monkeypatch.setenv("Websocket_Port", "1234")
    settings = load_settings(None)
    assert settings.categories[Category.PERFORMANCE].percentage == 7
    assert settings.websocket_port == 1234


def test_keyword_overrides_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBSOCKET_PORT", "9000")
    assert load_settings(None, websocket_port=9100).websocket_port == 9100


# -- value forms ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("websocket,realtime", ("websocket", "realtime")),
        (" WebSocket , REALTIME ", ("websocket", "realtime")),
        ("Realtime", ("realtime",)),
        ("realtime,,websocket,", ("realtime", "websocket")),
        ("websocket, websocket", ("websocket",)),
        ("", ()),
        (" ", ()),
    ],
)
def test_adapter_lists(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: tuple[str, ...]
) -> None:
    monkeypatch.setenv("DUAL_WRITE_SYSTEM_ADAPTERS", raw)
    assert load_settings(None).categories[Category.SYSTEM].adapters == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("null", None),
        ("NULL", None),
        ("", None),
        ("  ", None),
        ("none", None),
        ("all", "all"),
        ("ALL", "all"),
        (" All ", "all"),
        ("websocket", "websocket"),
        ("REALTIME", "realtime"),
    ],
)
def test_override_values(monkeypatch: pytest.MonkeyPatch, raw: str, expected: str | None) -> None:
    monkeypatch.setenv("DUAL_WRITE_GLOBAL_OVERRIDE", raw)
    assert load_settings(None).dual_write_global_override == expected


def test_override_unset_and_explicit_none() -> None:
    assert load_settings(None).dual_write_global_override is None
    assert load_settings(None, dual_write_global_override=None).dual_write_global_override is None


@pytest.mark.parametrize(
    ("variable", "raw", "read", "expected"),
    [
        ("DUAL_WRITE_ENABLED", "0", lambda s: s.dual_write_enabled, False),
        ("DUAL_WRITE_ENABLED", "off", lambda s: s.dual_write_enabled, False),
        ("DUAL_WRITE_ENABLED", "TRUE", lambda s: s.dual_write_enabled, True),
        (
            "DUAL_WRITE_PRIMARY_ADAPTER",
            " REALTIME ",
            lambda s: s.dual_write_primary_adapter,
            "realtime",
        ),
        (
            "DUAL_WRITE_CRITICAL_CHECKSUM",
            " CRC32 ",
            lambda s: s.categories["CRITICAL"].checksum,
            "crc32",
        ),
        ("LOG_FORMAT", "JSON", lambda s: s.log_format, "json"),
        ("LOG_LEVEL", "warning", lambda s: s.log_level, "WARNING"),
        ("SUPABASE_URL", "   ", lambda s: s.supabase_url, None),
        ("REALTIME_PLAN", " Team ", lambda s: s.realtime_plan, "team"),
        ("REALTIME_PLAN", "", lambda s: s.realtime_plan, None),
        ("REALTIME_PLAN", "none", lambda s: s.realtime_plan, None),
        ("DUAL_WRITE_CRITICAL_PERCENTAGE", "0", lambda s: s.categories["CRITICAL"].percentage, 0),
        (
            "ADAPTER_WEBSOCKET_ERROR_THRESHOLD",
            "1",
            lambda s: s.adapters["websocket"].error_threshold,
            1.0,
        ),
        (
            "ADAPTER_WEBSOCKET_ERROR_THRESHOLD",
            "0",
            lambda s: s.adapters["websocket"].error_threshold,
            0.0,
        ),
    ],
)
def test_value_forms(
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    raw: str,
    read: Callable[[Settings], Any],
    expected: Any,
) -> None:
    monkeypatch.setenv(variable, raw)
    assert read(load_settings(None)) == expected


# -- invalid configuration ------------------------------------------------------------

INVALID = [
    ("DUAL_WRITE_CRITICAL_PERCENTAGE", "150"),
    ("DUAL_WRITE_CRITICAL_PERCENTAGE", "-1"),
    ("DUAL_WRITE_CRITICAL_PERCENTAGE", "abc"),
    ("DUAL_WRITE_PERFORMANCE_PERCENTAGE", "50.5"),
    ("DUAL_WRITE_DEBUG_PERCENTAGE", "101"),
    ("DUAL_WRITE_SYSTEM_ADAPTERS", "websocket,kafka"),
    ("DUAL_WRITE_USER_ACTIVITY_ADAPTERS", "all"),
    ("DUAL_WRITE_CRITICAL_ENABLED", "maybe"),
    ("DUAL_WRITE_SYSTEM_CHECKSUM", "md5"),
    ("DUAL_WRITE_GLOBAL_OVERRIDE", "kafka"),
    ("DUAL_WRITE_GLOBAL_OVERRIDE", "everything"),
    ("ADAPTER_WEBSOCKET_ERROR_THRESHOLD", "1.5"),
    ("ADAPTER_REALTIME_ERROR_THRESHOLD", "-0.1"),
    ("ADAPTER_REALTIME_ERROR_THRESHOLD", "lots"),
    ("ADAPTER_WEBSOCKET_LATENCY_THRESHOLD_MS", "0"),
    ("WEBSOCKET_PORT", "70000"),
    ("WEBSOCKET_PORT", "-1"),
    ("WEBSOCKET_PORT", "http"),
    ("ADMIN_PORT", "65536"),
    ("DUAL_WRITE_ENABLED", "maybe"),
    ("LOG_FORMAT", "xml"),
    ("LOG_LEVEL", "loud"),
    ("DUAL_WRITE_PRIMARY_ADAPTER", "kafka"),
    ("DUAL_WRITE_PRIMARY_ADAPTER", "all"),
    ("BREAKER_RECOVERY_TIME_S", "0"),
    ("BREAKER_HALF_OPEN_REQUESTS", "0"),
    ("BREAKER_LATENCY_MULTIPLIER", "0.5"),
    ("RECONCILE_WINDOW_S", "0"),
    ("RECONCILE_MAX_DELAY_S", "1"),
    ("REALTIME_BATCH_MAX", "0"),
    ("REALTIME_BATCH_BYTES", "10"),
    ("REALTIME_PLAN", "enterprise"),
    ("REALTIME_SUBSCRIBERS", "-1"),
    ("REALTIME_PRIVATE_CHANNELS", "sometimes"),
    ("EVENT_MAX_BYTES", "0"),
    ("SUPABASE_URL", "not-a-url"),
    ("SUPABASE_URL", "ftp://example.com"),
    ("SUPABASE_URL", "https://"),
    ("STORE_URL", "mysql://db/events"),
    ("STORE_URL", "broadcaster.db"),
    ("STORE_URL", "sqlite:///"),
    ("STORE_URL", "sqlite://host/x.db"),
    ("STORE_URL", "sqlite:///x.db?cache=shared"),
    ("STORE_URL", "sqlite:///x.db?synchronous=sometimes"),
    ("STORE_URL", "sqlite:///x.db?wal_frames_max=0"),
    ("STORE_URL", "sqlite:///x.db?busy_timeout_ms=soon"),
    ("RECONCILE_PROBE", "sometimes"),
    ("INSTANCE_ID", "n" * 129),
    ("INSTANCE_ID", "tab\there"),
]


@pytest.mark.parametrize("source", ["env", "dotenv"])
@pytest.mark.parametrize(("variable", "raw"), INVALID, ids=[f"{v}={r}" for v, r in INVALID])
def test_invalid_value_raises_config_error_naming_variable_and_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str, variable: str, raw: str
) -> None:
    if source == "env":
        monkeypatch.setenv(variable, raw)
    else:
        write_env(tmp_path / ".env", {variable: raw})
    with pytest.raises(ConfigError) as info:
        load_settings()
    error = info.value
    assert error.variable == variable
    assert str(error).startswith(f"{variable}=")
    assert raw.strip().casefold() in str(error).casefold()
    assert str(raw).casefold() in str(error.value).casefold() or float(raw) == error.value
    assert "\n" not in str(error)  # one line


def test_config_error_is_first_invalid_only_after_env_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write_env(tmp_path / ".env", {"WEBSOCKET_PORT": "bad"})
    monkeypatch.setenv("WEBSOCKET_PORT", "8000")
    assert load_settings().websocket_port == 8000


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"dual_write_primary_adapter": 5}, "DUAL_WRITE_PRIMARY_ADAPTER"),
        ({"dual_write_global_override": 5}, "DUAL_WRITE_GLOBAL_OVERRIDE"),
        ({"log_format": 5}, "LOG_FORMAT"),
        ({"log_level": 5}, "LOG_LEVEL"),
        ({"categories": {"CRITICAL": "x"}}, "CATEGORIES"),
        ({"categories": {"CRITICAL": {"bogus": 1}}}, "DUAL_WRITE_CRITICAL_BOGUS"),
        (
            {"adapters": {"websocket": {"error_threshold": {"a": 1}}}},
            "ADAPTER_WEBSOCKET_ERROR_THRESHOLD",
        ),
    ],
)
def test_invalid_keyword_overrides(overrides: dict[str, Any], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, **overrides)
    assert info.value.variable == variable


def test_a_whole_mapping_as_value_is_not_dumped_into_the_message() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, adapters={"websocket": {"error_threshold": {"secret": "x"}}})
    assert info.value.value == "?"
    assert "secret" not in str(info.value)


def test_instance_id_defaults_to_host_and_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import platform

    expected = f"{platform.node()}:{os.getpid()}"
    assert default_instance_id() == expected
    assert load_settings(None).instance_id == expected
    # Blank, as .env.example leaves it: the computed default, not an error.
    monkeypatch.setenv("INSTANCE_ID", "  ")
    assert load_settings(None).instance_id == expected
    monkeypatch.setenv("INSTANCE_ID", "i" * 128)
    assert load_settings(None).instance_id == "i" * 128


def test_max_delay_equal_to_window_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECONCILE_WINDOW_S", "10")
    monkeypatch.setenv("RECONCILE_MAX_DELAY_S", "10")
    assert load_settings(None).reconcile_max_delay_s == 10


# -- CategorySettings (also validates admin changes) ------------------------------------


def test_category_settings_validation() -> None:
    cs = CategorySettings(
        enabled=True, percentage=5, adapters="Realtime, websocket", checksum="crc32"
    )
    assert cs.adapters == ("realtime", "websocket")
    assert cs.route() == CategoryRoute(True, 5, ("realtime", "websocket"))
    for bad in (
        {"percentage": 101},
        {"adapters": ("kafka",)},
        {"checksum": "md5"},
        {"surprise": 1},
    ):
        values: dict[str, Any] = {
            "enabled": True,
            "percentage": 5,
            "adapters": (),
            "checksum": "crc32",
        } | bad
        with pytest.raises(ValueError):
            CategorySettings(**values)


@pytest.mark.parametrize(
    "values",
    [
        {"enabled": False, "percentage": 100, "adapters": ("realtime",)},
        {"enabled": True, "percentage": 99, "adapters": ("realtime",)},
        {"enabled": True, "percentage": 100, "adapters": ()},
    ],
)
def test_a_cutover_takes_the_whole_category(values: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="cutover needs the category enabled, at percentage 100"):
        CategorySettings(**values, checksum="crc32", cutover=True)
    assert CategorySettings(**values, checksum="crc32").cutover is False
    whole = CategorySettings(
        enabled=True, percentage=100, adapters="realtime", checksum="crc32", cutover=True
    )
    assert whole.route() == CategoryRoute(True, 100, ("realtime",), cutover=True)


# -- derived views ---------------------------------------------------------------------


def test_effective_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_KEY", "super-secret-key")
    monkeypatch.setenv("SUPABASE_JWT_SECRET", "the-jwt-secret")
    monkeypatch.setenv("BROADCASTER_ADMIN_TOKEN", "admin-token-123456789")
    monkeypatch.setenv("BROADCASTER_TOKENS", TOKENS_JSON)
    monkeypatch.setenv("EVENT_SIGNING_KEY", "the-signing-key")
    monkeypatch.setenv("STORE_URL", "postgresql://app:pg-pass-word@db.internal:5432/events")
    effective = load_settings(None).effective()
    text = json.dumps(effective)
    for secret in (
        "super-secret-key",
        "the-jwt-secret",
        "admin-token-123",
        "ci-token-0123",
        "the-signing-key",
    ):
        assert secret not in text
    assert "pg-pass-word" not in text
    assert effective["store_url"] == "postgresql://app:********@db.internal:5432/events"
    assert effective["supabase_key"] == "********"
    assert effective["supabase_jwt_secret"] == "********"
    assert effective["broadcaster_admin_token"] == "********"
    assert effective["broadcaster_tokens"] == "********"
    assert effective["event_signing_key"] == "********"
    assert effective["websocket_port"] == 8765
    assert effective["categories"]["CRITICAL"]["percentage"] == 100


def test_effective_without_secrets_is_plain_data() -> None:
    effective = load_settings(None).effective()
    assert effective["supabase_key"] is None
    assert effective["broadcaster_admin_token"] is None
    assert json.loads(json.dumps(effective)) == effective
    assert effective["categories"]["DEBUG"] == {
        "enabled": False,
        "percentage": 0,
        "adapters": [],
        "checksum": "crc32",
        "cutover": False,
    }


def test_routing_table_reflects_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUAL_WRITE_PRIMARY_ADAPTER", "realtime")
    monkeypatch.setenv("DUAL_WRITE_PERFORMANCE_PERCENTAGE", "100")
    monkeypatch.setenv("DUAL_WRITE_PERFORMANCE_ADAPTERS", "websocket")
    monkeypatch.setenv("DUAL_WRITE_CRITICAL_ENABLED", "false")
    table = load_settings(None).routing_table()
    assert table.enabled is True
    assert table.primary == "realtime"
    assert table.override is None
    assert table.categories[Category.PERFORMANCE] == CategoryRoute(True, 100, ("websocket",))
    assert table.route(Category.PERFORMANCE, "k") == ("realtime", "websocket")
    assert table.route(Category.CRITICAL, "k") == ("realtime",)
    assert table.route(Category.SYSTEM, "k") == ("realtime", "websocket")


def test_routing_table_default_routes() -> None:
    table = load_settings(None).routing_table()
    assert {c: table.categories[c] for c in Category} == {
        Category(name): CategoryRoute(enabled, pct, adapters)
        for name, (enabled, pct, adapters, _) in SPEC_CATEGORY_DEFAULTS.items()
    }
    assert table.route(Category.CRITICAL, "k") == ("websocket", "realtime")
    assert table.route(Category.USER_ACTIVITY, "k") == ("websocket",)
    assert table.route(Category.DEBUG, "k") == ("websocket",)


@pytest.mark.parametrize(
    ("variable", "value"), [("DUAL_WRITE_ENABLED", "false"), ("DUAL_WRITE_GLOBAL_OVERRIDE", "all")]
)
def test_routing_table_switches(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    table = load_settings(None).routing_table()
    expected = ("websocket",) if value == "false" else ("websocket", "realtime")
    assert table.route(Category.DEBUG, "k") == expected


def test_checksum_algorithms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUAL_WRITE_DEBUG_CHECKSUM", "crc32c")
    algorithms = load_settings(None).checksum_algorithms()
    assert algorithms == {
        Category.CRITICAL: "sha256",
        Category.PERFORMANCE: "crc32",
        Category.USER_ACTIVITY: "sha256",
        Category.SYSTEM: "crc32",
        Category.DEBUG: "crc32c",
    }


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (None, None),
        ("https://abc.supabase.co", "https://abc.supabase.co/realtime/v1"),
        ("https://abc.supabase.co/", "https://abc.supabase.co/realtime/v1"),
        ("http://127.0.0.1:4000", "http://127.0.0.1:4000/realtime/v1"),
        ("", None),
    ],
)
def test_realtime_url(
    monkeypatch: pytest.MonkeyPatch, url: str | None, expected: str | None
) -> None:
    if url is not None:
        monkeypatch.setenv("SUPABASE_URL", url)
    assert load_settings(None).realtime_url() == expected


def test_realtime_limits_combine_the_plan_with_explicit_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REALTIME_PLAN", "free")
    limits = load_settings(None).realtime_limits()
    # One subscriber per channel by default: each push costs two messages.
    assert (limits.max_messages_per_s, limits.batch_max, limits.batch_bytes) == (44, 1000, 200_000)
    monkeypatch.setenv("REALTIME_SUBSCRIBERS", "2")
    assert load_settings(None).realtime_limits().max_messages_per_s == 29
    # Explicit settings: a batch size wins; a quota only where it is stricter.
    monkeypatch.setenv("REALTIME_BATCH_MAX", "100")
    monkeypatch.setenv("REALTIME_MAX_MESSAGES_PER_S", "500")
    monkeypatch.setenv("REALTIME_BATCH_BYTES", "900000")
    limits = load_settings(None).realtime_limits()
    assert (limits.max_messages_per_s, limits.batch_max) == (29, 100)
    assert limits.max_event_bytes is not None and limits.batch_bytes == limits.max_event_bytes
    monkeypatch.delenv("REALTIME_PLAN")
    limits = load_settings(None).realtime_limits()
    assert (limits.max_messages_per_s, limits.batch_max, limits.batch_bytes) == (500, 100, 900_000)
    assert limits.max_event_bytes is None


def test_settings_are_frozen() -> None:
    settings = load_settings(None)
    with pytest.raises(ValueError):
        settings.websocket_port = 1  # type: ignore[misc]


def test_field_default_factories_agree_with_the_spec() -> None:
    # The family source always supplies categories/adapters, so the fields'
    # own default factories only serve model_construct (and the JSON schema);
    # they must not drift from SPEC 4.
    constructed = Settings.model_construct()
    assert {c.value: category(constructed, c.value) for c in Category} == SPEC_CATEGORY_DEFAULTS
    assert {
        name: (a.error_threshold, a.latency_threshold_ms)
        for name, a in constructed.adapters.items()
    } == SPEC_ADAPTER_DEFAULTS


def test_reconcile_interval_and_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(env_file=None)
    assert (settings.reconcile_interval_s, settings.retention_s) == (30.0, 86_400.0)
    monkeypatch.setenv("RECONCILE_INTERVAL_S", "0")
    monkeypatch.setenv("RETENTION_S", "3600")
    settings = load_settings(env_file=None)
    assert (settings.reconcile_interval_s, settings.retention_s) == (0.0, 3600.0)
    monkeypatch.setenv("RETENTION_S", "-1")
    with pytest.raises(ConfigError) as info:
        load_settings(env_file=None)
    assert info.value.variable == "RETENTION_S" and "-1" in str(info.value)


def test_parse_store_url() -> None:
    assert parse_store_url("memory://") == StoreURL("memory", "memory://")
    assert parse_store_url("postgres://u@h/db").kind == "postgresql"
    assert parse_store_url("POSTGRESQL://u@h/db").kind == "postgresql"
    default = parse_store_url("sqlite:///./broadcaster.db")
    assert default == StoreURL("sqlite", "sqlite:///./broadcaster.db", "./broadcaster.db")
    assert default.synchronous == "NORMAL" and default.wal_frames_max is None
    full = parse_store_url(
        "sqlite:////var/lib/b.db?synchronous=full&busy_timeout_ms=0&wal_frames_max=64"
    )
    assert (full.path, full.synchronous, full.busy_timeout_ms, full.wal_frames_max) == (
        "/var/lib/b.db",
        "FULL",
        0,
        64,
    )
    # A repeated option: the last one counts, as for parse_qs everywhere.
    assert parse_store_url("sqlite:///x.db?synchronous=full&synchronous=off").synchronous == "OFF"
    for bad, says in [
        ("", "expected memory://"),
        ("sqlite:///x.db?busy_timeout_ms=-1", "busy_timeout_ms='-1'"),
        ("sqlite:///x.db?wal_frames_max=lots", "wal_frames_max='lots'"),
        ("sqlite:///x.db?a=1&b=2", "unknown option(s) a, b"),
        ("sqlite:///x.db?synchronous=", "synchronous=''"),
    ]:
        with pytest.raises(ConfigError, match="unsupported STORE_URL") as info:
            parse_store_url(bad)
        assert says in str(info.value), (bad, str(info.value))
        assert (info.value.variable, info.value.value) == ("STORE_URL", bad)


def test_bad_store_url_fails_when_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    # Before the store is built: `config check` and every command exit 2 on it.
    monkeypatch.setenv("STORE_URL", "mysql://db/events")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert info.value.variable == "STORE_URL"
    assert "expected memory://, sqlite:///path or postgresql://" in str(info.value)
    with pytest.raises(ConfigError, match="STORE_URL"):
        load_settings(None, store_url="sqlite:///")


def test_supabase_url_is_an_http_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_URL", "  https://abc.supabase.co/  ")
    settings = load_settings(None)
    assert settings.supabase_url == "https://abc.supabase.co/"
    assert settings.realtime_url() == "https://abc.supabase.co/realtime/v1"
    monkeypatch.setenv("SUPABASE_URL", "http://127.0.0.1:54321")
    assert load_settings(None).supabase_url == "http://127.0.0.1:54321"
    monkeypatch.setenv("SUPABASE_URL", "wss://abc.supabase.co")
    with pytest.raises(ConfigError, match="expected an http"):
        load_settings(None)


@pytest.mark.parametrize("kind", ["ADMIN", "WEBSOCKET"])
def test_tls_files_must_exist_and_come_in_pairs(
    kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(f"{kind}_TLS_CERT", str(tmp_path / "missing.pem"))
    monkeypatch.setenv(f"{kind}_TLS_KEY", A_FILE)
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert info.value.variable == f"{kind}_TLS_CERT" and "no such file" in str(info.value)
    monkeypatch.setenv(f"{kind}_TLS_CERT", A_FILE)
    monkeypatch.delenv(f"{kind}_TLS_KEY")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert str(info.value) == f"{kind}_TLS_KEY=(unset): required with {kind}_TLS_CERT"
    monkeypatch.delenv(f"{kind}_TLS_CERT")
    monkeypatch.setenv(f"{kind}_TLS_KEY", A_FILE)
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert str(info.value) == f"{kind}_TLS_CERT=(unset): required with {kind}_TLS_KEY"


def test_unknown_variables_are_the_product_looking_names_that_are_no_setting() -> None:
    from broadcaster.settings import known_variables, unknown_variables

    known = known_variables()
    assert {
        "STORE_URL",
        "DUAL_WRITE_CRITICAL_PERCENTAGE",
        "ADAPTER_REALTIME_ERROR_THRESHOLD",
    } <= known
    assert unknown_variables(
        ["store_url", "PATH", "DUAL_WRITE_CRITCAL_PERCENTAGE", "SUPABASE_SOMETHING", "PATH"]
    ) == [
        ("DUAL_WRITE_CRITCAL_PERCENTAGE", "DUAL_WRITE_CRITICAL_PERCENTAGE"),
        ("SUPABASE_SOMETHING", None),
    ]
