"""Tokens and scopes (SPEC 13), as pure values: parsing the two variables,
finding the token presented, what each scope grants, masking a store URL."""

from __future__ import annotations

import json

import pytest

from broadcaster.exceptions import ConfigError
from broadcaster.security import (
    GRANTS,
    MIN_TOKEN_LENGTH,
    ApiToken,
    Permission,
    Scope,
    TokenSet,
    mask_url_password,
    parse_token_settings,
)

LONG = "x" * MIN_TOKEN_LENGTH


def tokens_json(**entries: object) -> str:
    return json.dumps(entries)


def test_the_admin_token_is_taken_whole() -> None:
    for secret in ("V7oS/Oh28Z9l7Q/XLWBDhA==", "tok,en-0123456789ab", "a=b,c=d-0123456789"):
        tokens = parse_token_settings(secret, None)
        [token] = tokens
        assert (token.name, token.scope, token.secret) == ("admin", Scope.ADMIN, secret.encode())
        assert tokens.authenticate(secret) is token
        parts = {"=", "==", secret.split("=")[0], secret.split(",")[-1]} - {secret}
        for part in parts:
            assert tokens.authenticate(part) is None


def test_named_tokens_with_scopes() -> None:
    tokens = parse_token_settings(
        None,
        tokens_json(
            ci={"token": "ci-" + LONG, "scope": "read"},
            ops={"token": "ops-" + LONG, "scope": "operator"},
        ),
    )
    assert tokens.names == ["ci", "ops"] and len(tokens) == 2
    ci = tokens.authenticate("ci-" + LONG)
    assert ci is not None and ci.scope is Scope.READ
    assert ci.allows(Permission.READ) and not ci.allows(Permission.OPERATE)
    assert tokens.authenticate(("ops-" + LONG).encode()) == tokens.first(Scope.OPERATOR)
    assert tokens.first(Scope.ADMIN) is None
    assert tokens.authenticate(None) is None and tokens.authenticate("") is None


def test_neither_variable_gives_no_tokens() -> None:
    assert len(parse_token_settings(None, None)) == 0


def test_a_token_never_shows_its_secret() -> None:
    token = ApiToken("ci", b"the-secret-value-123", Scope.READ)
    assert "the-secret" not in repr(token) and "ci" in repr(token)


@pytest.mark.parametrize(
    ("admin", "tokens", "says"),
    [
        ("short", None, "has 5 characters; at least 16"),
        ("", None, "expected a non-empty string"),
        (None, "{not json", "not valid JSON"),
        (None, "[1, 2]", "expected a JSON object"),
        (None, tokens_json(x="tok"), "token 'x': expected"),
        (None, tokens_json(x={"token": LONG, "scope": "root"}), "unknown scope 'root'"),
        (None, tokens_json(x={"token": LONG}), "unknown scope None"),
        (None, tokens_json(x={"token": LONG, "scope": "read", "ttl": 5}), "unknown field(s) ttl"),
        (None, tokens_json(x={"token": 12345678901234567, "scope": "read"}), "non-empty string"),
        (None, tokens_json(x={"token": "short", "scope": "read"}), "token 'x' has 5"),
        (None, tokens_json(**{" ": {"token": LONG, "scope": "read"}}), "1-64 printable"),
        (None, tokens_json(**{"a\n": {"token": LONG, "scope": "read"}}), "1-64 printable"),
        (LONG, tokens_json(admin={"token": "y" * 16, "scope": "read"}), "'admin' is used twice"),
        (LONG, tokens_json(ci={"token": LONG, "scope": "read"}), "the same secret"),
    ],
)
def test_bad_token_settings_are_one_line_without_the_secret(
    admin: str | None, tokens: str | None, says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_token_settings(admin, tokens)
    message = str(info.value)
    assert says in message and "\n" not in message
    assert info.value.value == "********"
    assert info.value.variable == (
        "BROADCASTER_ADMIN_TOKEN" if admin is not None and tokens is None else "BROADCASTER_TOKENS"
    )


def test_scopes_grant_what_the_spec_says() -> None:
    assert GRANTS == {
        Scope.ADMIN: frozenset(Permission),
        Scope.OPERATOR: {Permission.READ, Permission.OPERATE},
        Scope.READ: {Permission.READ},
        Scope.INGEST: {Permission.INGEST},
        Scope.CONSUMER: {Permission.CONSUME},
    }


def test_tokens_made_in_code() -> None:
    tokens = TokenSet.of({"a": "one", "b": "two"}, Scope.CONSUMER)
    assert [t.scope for t in tokens] == [Scope.CONSUMER, Scope.CONSUMER]
    found = tokens.authenticate("two")
    assert found is not None and found.name == "b"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("sqlite:///./broadcaster.db", "sqlite:///./broadcaster.db"),
        ("memory://", "memory://"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        (
            "postgresql://u:p%40ss@h:5432/db?sslmode=require",
            "postgresql://u:********@h:5432/db?sslmode=require",
        ),
        ("postgresql://h/db?user=u&password=secret", "postgresql://h/db?user=u&password=********"),
        ("postgresql://h/db?flag", "postgresql://h/db?flag"),
    ],
)
def test_store_urls_lose_their_password(url: str, masked: str) -> None:
    assert mask_url_password(url) == masked


@pytest.mark.parametrize(
    ("admin", "tokens", "message"),
    [
        (
            "short",
            None,
            "BROADCASTER_ADMIN_TOKEN=********: token 'admin' has 5 characters;"
            f" at least {MIN_TOKEN_LENGTH} are required",
        ),
        (
            None,
            "[1, 2]",
            "BROADCASTER_TOKENS=********: expected a JSON object"
            ' {"<name>": {"token": ..., "scope": ...}}',
        ),
        (
            None,
            tokens_json(x={"token": LONG, "scope": "root"}),
            "BROADCASTER_TOKENS=********: token 'x': unknown scope 'root';"
            " known: admin, operator, read, ingest, consumer",
        ),
        (
            None,
            tokens_json(x={"token": LONG, "scope": "read", "ttl": 5, "note": ""}),
            "BROADCASTER_TOKENS=********: token 'x': unknown field(s) note, ttl",
        ),
    ],
)
def test_a_bad_token_setting_says_what_is_expected(
    admin: str | None, tokens: str | None, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_token_settings(admin, tokens)
    assert str(info.value) == message


def test_a_token_name_is_at_most_64_characters() -> None:
    at_limit = tokens_json(**{"n" * 64: {"token": LONG, "scope": "read"}})
    assert parse_token_settings(None, at_limit).names == ["n" * 64]
    with pytest.raises(ConfigError, match="must be 1-64 printable characters"):
        parse_token_settings(None, tokens_json(**{"n" * 65: {"token": LONG, "scope": "read"}}))


def test_a_secret_that_is_not_utf8_is_taken_and_matched_byte_for_byte() -> None:
    """The environment hands Python undecodable bytes as lone surrogates; a
    token set from such a value still authenticates the same bytes."""
    secret = LONG + "\udcff"
    tokens = parse_token_settings(secret, None)
    [token] = tokens
    assert token.secret == LONG.encode() + b"\xff"
    assert tokens.authenticate(secret) is token
    assert tokens.authenticate(LONG.encode() + b"\xff") is token
    assert tokens.authenticate(LONG + "\udcfe") is None


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:p@ss@h/db", "postgresql://u:********@h/db"),
        ("postgresql://u:pa:ss@h/db", "postgresql://u:********@h/db"),
        ("postgresql://h/db?password=a=b&user=u", "postgresql://h/db?password=********&user=u"),
    ],
)
def test_a_password_holding_the_separators_is_masked_whole(url: str, masked: str) -> None:
    assert mask_url_password(url) == masked
