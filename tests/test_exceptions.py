"""The error tree: one root, the hierarchy drawn in the module docstring is
the real one, and each error carries its data."""

from __future__ import annotations

import re

import pytest

import broadcaster.exceptions as exc_module
from broadcaster.exceptions import (
    AdapterError,
    AdapterRefused,
    AdapterRejected,
    AdapterThrottled,
    AdapterTimeout,
    AdapterUnavailable,
    BreakerOpen,
    BroadcasterClosed,
    BroadcasterError,
    ChecksumMismatch,
    ConfigError,
    EventsRefused,
    FlushTimeout,
    FrameError,
    HistoryPruned,
    InvalidEvent,
    RolloutConflict,
    SignatureMismatch,
    StoreError,
    StoreUnavailable,
)


def _docstring_tree() -> dict[str, str | None]:
    """Parse the ``::`` tree of the module docstring into {class: parent}."""
    doc = exc_module.__doc__
    assert doc is not None
    lines = [line for line in doc.split("::", 1)[1].splitlines() if line.strip()]
    margin = min(len(line) - len(line.lstrip(" ")) for line in lines)
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []  # (depth, name) of the open ancestors
    for raw in lines:
        line = raw[margin:]
        branch = re.match(r"^([ │]*)[├└]── (\w+)", line)
        if branch:
            depth, name = len(branch.group(1)) // 4 + 1, branch.group(2)
        elif re.fullmatch(r"\w+", line.strip()) and not line.startswith(" "):
            depth, name = 0, line.strip()
        else:
            continue  # a wrapped description line
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return parents


def _local_base(cls: type) -> str | None:
    """The one base class from this module (the others are builtins)."""
    local = [b.__name__ for b in cls.__bases__ if b.__module__ == exc_module.__name__]
    assert len(local) <= 1, f"{cls.__name__} has several package bases: {local}"
    return local[0] if local else None


def test_every_exported_class_derives_from_the_root() -> None:
    for name in exc_module.__all__:
        cls = getattr(exc_module, name)
        assert isinstance(cls, type)
        assert issubclass(cls, BroadcasterError), name
        assert issubclass(cls, Exception)


def test_all_lists_every_exception_class_of_the_module() -> None:
    defined = {
        name
        for name, value in vars(exc_module).items()
        if isinstance(value, type) and issubclass(value, BaseException)
        if value.__module__ == exc_module.__name__
    }
    assert defined == set(exc_module.__all__)


def test_docstring_tree_matches_the_class_hierarchy() -> None:
    tree = _docstring_tree()
    assert set(tree) == set(exc_module.__all__)
    assert tree["BroadcasterError"] is None
    for name, parent in tree.items():
        cls = getattr(exc_module, name)
        assert _local_base(cls) == parent, f"{name}: docstring says {parent}"
        if parent is not None:
            assert getattr(exc_module, parent) in cls.__mro__


def test_tree_parser_sees_nesting() -> None:
    # Guard the parser itself: a flat parse would make the comparison above weak.
    tree = _docstring_tree()
    assert tree["StoreUnavailable"] == "StoreError"
    assert tree["ChecksumMismatch"] == "FrameError"
    assert tree["SignatureMismatch"] == "FrameError"
    assert tree["AdapterTimeout"] == "AdapterError"
    assert tree["FrameError"] == "BroadcasterError"


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (InvalidEvent, ValueError),
        (ConfigError, ValueError),
        (BroadcasterClosed, RuntimeError),
        (FlushTimeout, TimeoutError),
        (FrameError, ValueError),
        (ChecksumMismatch, ValueError),
        (SignatureMismatch, ValueError),
    ],
)
def test_builtin_bases_for_generic_handlers(cls: type, builtin: type) -> None:
    assert issubclass(cls, builtin)


def test_invalid_event_carries_field_reason_and_index() -> None:
    error = InvalidEvent("payload", "too big")
    assert (error.field, error.reason, error.index) == ("payload", "too big", None)
    assert str(error) == "payload: too big"
    located = error.at(3)
    assert located is not error
    assert (located.field, located.reason, located.index) == ("payload", "too big", 3)
    assert str(located) == "event[3].payload: too big"
    assert error.index is None  # the original is unchanged


def test_config_error_carries_variable_and_value() -> None:
    error = ConfigError("WEBSOCKET_PORT", 70000, "too large")
    assert (error.variable, error.value, error.reason) == ("WEBSOCKET_PORT", 70000, "too large")
    assert str(error) == "WEBSOCKET_PORT=70000: too large"


def test_flush_timeout_carries_pending_and_timeout() -> None:
    error = FlushTimeout(7, 1.5)
    assert (error.pending, error.timeout) == (7, 1.5)
    assert "7" in str(error) and "1.5" in str(error)


def test_store_unavailable_carries_reason() -> None:
    error = StoreUnavailable("disk full")
    assert error.reason == "disk full"
    assert isinstance(error, StoreError)
    assert str(error) == "store unavailable: disk full"


@pytest.mark.parametrize("cls", [AdapterError, AdapterUnavailable, AdapterTimeout, AdapterRejected])
def test_adapter_errors_carry_adapter(cls: type[AdapterError]) -> None:
    error = cls("realtime", "no ack")
    assert (error.adapter, error.reason) == ("realtime", "no ack")
    assert str(error) == "realtime: no ack"
    assert isinstance(error, AdapterError)


def test_checksum_mismatch_carries_its_data() -> None:
    error = ChecksumMismatch(42, "crc32", "cbf43926", "00000000")
    assert (error.sequence_id, error.algorithm, error.expected, error.actual) == (
        42,
        "crc32",
        "cbf43926",
        "00000000",
    )
    message = str(error)
    assert "42" in message and "cbf43926" in message and "00000000" in message
    assert isinstance(error, FrameError)


def test_signature_mismatch_carries_its_data() -> None:
    error = SignatureMismatch(42, "unknown key id 'k3'")
    assert (error.sequence_id, error.reason) == (42, "unknown key id 'k3'")
    assert str(error) == "sequence_id 42: bad signature: unknown key id 'k3'"
    assert isinstance(error, FrameError)
    assert not isinstance(error, ChecksumMismatch)


def test_broadcaster_closed_is_catchable_as_root() -> None:
    with pytest.raises(BroadcasterError):
        raise BroadcasterClosed("closed")


def test_rollout_conflict_names_the_rollout_in_the_way() -> None:
    error = RolloutConflict("USER_ACTIVITY has rollout 3 running", rollout_id=3)
    assert (error.reason, error.rollout_id) == ("USER_ACTIVITY has rollout 3 running", 3)
    assert str(error) == "USER_ACTIVITY has rollout 3 running"
    assert RolloutConflict("changed").rollout_id is None


def test_history_pruned_carries_where_the_resume_asked_and_what_is_left() -> None:
    error = HistoryPruned("websocket", 10, 250, "history pruned")
    assert (error.adapter, error.since, error.oldest, error.reason) == (
        "websocket",
        10,
        250,
        "history pruned",
    )
    assert str(error) == "websocket: history pruned"
    assert isinstance(error, AdapterRejected)


def test_adapter_refused_carries_the_quota_and_what_the_far_side_said() -> None:
    error = AdapterRefused("realtime", "payload_too_large", "Payload too large")
    assert (error.adapter, error.reason, error.detail) == (
        "realtime",
        "payload_too_large",
        "Payload too large",
    )
    assert str(error) == "realtime: refused (payload_too_large): Payload too large"


def test_adapter_throttled_is_a_rate_limit_refusal_unless_held_back_by_pacing() -> None:
    error = AdapterThrottled("realtime", "ClientJoinRateLimitReached", 1.5)
    assert (error.adapter, error.reason, error.detail) == (
        "realtime",
        "rate_limit",
        "ClientJoinRateLimitReached",
    )
    assert (error.retry_after_s, error.refused) == (1.5, True)
    assert str(error) == "realtime: refused (rate_limit): ClientJoinRateLimitReached"
    assert AdapterThrottled("realtime", "paced", 0.2, refused=False).refused is False


def test_events_refused_names_each_refused_event_and_every_distinct_reason() -> None:
    refused = {3: "payload_too_large", 7: "payload_too_large", 9: "topic_too_long"}
    error = EventsRefused("realtime", refused, "2 of 5 events over the limits")
    assert (error.adapter, error.refused, error.detail) == (
        "realtime",
        refused,
        "2 of 5 events over the limits",
    )
    assert error.reason == "payload_too_large, topic_too_long"
    assert str(error) == (
        "realtime: refused (payload_too_large, topic_too_long): 2 of 5 events over the limits"
    )


def test_breaker_open_says_when_to_retry_and_half_open_says_nothing_of_when() -> None:
    error = BreakerOpen("realtime", "open", 12.3456)
    assert (error.adapter, error.state, error.retry_at) == ("realtime", "open", 12.3456)
    assert str(error) == "realtime: circuit breaker open; retry at 12.346"
    half_open = BreakerOpen("websocket", "half_open", None)
    assert (half_open.state, half_open.retry_at) == ("half_open", None)
    assert str(half_open) == "websocket: circuit breaker half_open"
    assert not isinstance(error, AdapterError)
