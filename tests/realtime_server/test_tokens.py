"""Access tokens of private channels, judged as Supabase's server judges them
(pure: the time is passed in). PyJWT, an independent implementation, makes
the tokens and reads the ones this module mints."""

from __future__ import annotations

import base64
from typing import Any

import jwt
import orjson
import pytest

from broadcaster.realtime_server.tokens import (
    DEFAULT_PRIVATE_ROLES,
    TokenCheck,
    TokenProblem,
    TokenRefusal,
    is_refresh,
    mint_token,
    service_role_key,
    token_for_join,
)

SECRET = "super-secret-jwt-token-with-at-least-64-characters-long-for-hs512-too"
NOW = 1_800_000_000.25
CHANNEL = "events:critical"


def token(claims: dict[str, Any], *, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def claims(**extra: Any) -> dict[str, Any]:
    return {"role": "authenticated", "exp": int(NOW) + 60, "sub": "user-1", **extra}


CHECK = TokenCheck(SECRET)


def test_minted_tokens_are_hs256_jwts_anyone_can_verify() -> None:
    minted = mint_token(SECRET, claims())
    assert jwt.get_unverified_header(minted) == {"alg": "HS256", "typ": "JWT"}
    assert (
        jwt.decode(minted, SECRET, algorithms=["HS256"], options={"verify_exp": False}) == claims()
    )
    assert mint_token(SECRET.encode(), claims()) == minted
    assert CHECK.verify(minted, NOW) == claims()


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_a_token_signed_with_the_secret_passes(algorithm: str) -> None:
    assert CHECK.authorize(token(claims(), algorithm=algorithm), NOW) == claims()


def test_the_token_is_cleaned_as_supabase_cleans_it() -> None:
    good = token(claims())
    messy = good.replace(".", "%2E", 1)[:10] + " \n" + good.replace(".", "%2E", 1)[10:]
    assert CHECK.verify(messy, NOW) == claims()


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        (None, TokenProblem.MALFORMED),
        ("not-a-jwt", TokenProblem.MALFORMED),
        ("a.b", TokenProblem.MALFORMED),
        ("!!!.###.$$$", TokenProblem.MALFORMED),
        (mint_token(SECRET, claims()).split(".")[0] + ".WzFd.sig", TokenProblem.MALFORMED),
        ("WzFd." + mint_token(SECRET, claims()).split(".", 1)[1], TokenProblem.MALFORMED),
        (
            token(claims(), secret="another-secret-of-at-least-32-characters-long"),
            TokenProblem.SIGNATURE,
        ),
        (mint_token(SECRET, claims()).rsplit(".", 1)[0] + ".a", TokenProblem.SIGNATURE),
        (token(claims(exp=int(NOW) - 5)), TokenProblem.EXPIRED),
        (token({"exp": int(NOW) + 60}), TokenProblem.MISSING_CLAIMS),
        (token({"role": "authenticated"}), TokenProblem.MISSING_CLAIMS),
        (token(claims(exp="soon")), TokenProblem.MISSING_CLAIMS),
        (token(claims(exp=True)), TokenProblem.MISSING_CLAIMS),
    ],
    ids=[
        "none",
        "one-part",
        "two-parts",
        "not-base64",
        "claims-not-an-object",
        "header-not-an-object",
        "other-secret",
        "signature-not-base64",
        "expired",
        "no-role",
        "no-exp",
        "exp-a-string",
        "exp-a-boolean",
    ],
)
def test_bad_tokens_are_refused_with_their_problem(
    given: str | None, problem: TokenProblem
) -> None:
    verdict = CHECK.authorize(given, NOW)
    assert isinstance(verdict, TokenRefusal) and verdict.problem == problem


@pytest.mark.parametrize(
    "header",
    [{"alg": "RS256", "typ": "JWT"}, {"typ": "JWT"}, {"alg": ["HS256"]}],
    ids=["rs256", "no-alg", "alg-a-list"],
)
def test_only_hmac_algorithms_have_a_signer(header: dict[str, Any]) -> None:
    good = mint_token(SECRET, claims()).split(".")
    head = base64.urlsafe_b64encode(orjson.dumps(header)).rstrip(b"=").decode()
    verdict = CHECK.verify(".".join([head, good[1], good[2]]), NOW)
    assert verdict == TokenRefusal(TokenProblem.SIGNER)


def test_expiry_is_judged_in_whole_seconds() -> None:
    at_exp = CHECK.verify(token(claims(exp=int(NOW))), NOW)
    assert at_exp == TokenRefusal(TokenProblem.EXPIRED, 0)
    assert CHECK.verify(token(claims(exp=int(NOW) + 1)), NOW) == claims(exp=int(NOW) + 1)
    long_gone = CHECK.verify(token(claims(exp=int(NOW) - 3600.5)), NOW)
    assert long_gone == TokenRefusal(TokenProblem.EXPIRED, 3601)


def test_the_role_stands_in_for_the_rls_policies() -> None:
    assert DEFAULT_PRIVATE_ROLES == ("authenticated", "service_role")
    for role in ("authenticated", "service_role"):
        assert CHECK.authorize(token(claims(role=role)), NOW) == claims(role=role)
    assert CHECK.authorize(token(claims(role="anon")), NOW) == TokenRefusal(
        TokenProblem.UNAUTHORIZED
    )
    only_anon = TokenCheck(SECRET.encode(), ["anon"])
    assert only_anon.authorize(token(claims(role="anon")), NOW) == claims(role="anon")
    assert isinstance(only_anon.authorize(token(claims()), NOW), TokenRefusal)
    # verify() alone does not judge the role.
    assert only_anon.verify(token(claims()), NOW) == claims()


def test_without_a_secret_no_token_passes() -> None:
    check = TokenCheck(None)
    assert not check.has_secret and CHECK.has_secret
    assert check.authorize(token(claims()), NOW) == TokenRefusal(TokenProblem.NO_SECRET)


@pytest.mark.parametrize(
    ("refusal", "join", "shutdown"),
    [
        (
            TokenRefusal(TokenProblem.MALFORMED),
            "MalformedJWT: The token provided is not a valid JWT",
            "The token provided is not a valid JWT",
        ),
        (
            TokenRefusal(TokenProblem.SIGNER),
            "JwtSignerError: Failed to generate JWT signer, check your JWT secret or JWKS "
            "configuration",
            ":error_generating_signer",
        ),
        (
            TokenRefusal(TokenProblem.SIGNATURE),
            "JwtSignatureError: Failed to validate JWT signature",
            ":signature_error",
        ),
        (
            TokenRefusal(TokenProblem.EXPIRED, 12),
            "InvalidJWTToken: Token has expired 12 seconds ago",
            "Token has expired 12 seconds ago",
        ),
        (
            TokenRefusal(TokenProblem.MISSING_CLAIMS),
            "InvalidJWTToken: Fields `role` and `exp` are required in JWT",
            "Fields `role` and `exp` are required in JWT",
        ),
        (
            TokenRefusal(TokenProblem.UNAUTHORIZED),
            "Unauthorized: You do not have permissions to read from this Channel topic: "
            "events:critical",
            "You do not have permissions to read from this Channel topic: events:critical",
        ),
        (
            TokenRefusal(TokenProblem.NO_SECRET),
            "Unauthorized: this server has no JWT secret to verify access tokens with",
            "this server has no JWT secret to verify access tokens with",
        ),
    ],
)
def test_refusals_read_as_supabases(refusal: TokenRefusal, join: str, shutdown: str) -> None:
    assert refusal.join_reason(CHANNEL) == join
    assert refusal.shutdown_message(CHANNEL) == shutdown


def test_a_join_is_judged_by_its_own_token_else_the_apikey() -> None:
    assert token_for_join({"access_token": "user"}, "key") == "user"
    assert token_for_join({"access_token": "user", "user_token": "older"}, "key") == "older"
    assert token_for_join({}, "key") == "key"
    assert token_for_join({"access_token": None}, "key") == "key"
    assert token_for_join({"access_token": "sb_publishable_x"}, "key") == "key"
    assert token_for_join({"user_token": "sb_publishable_x"}, "key") == "key"
    assert token_for_join({}, None) is None


def test_a_refresh_is_a_new_token_that_is_no_api_key() -> None:
    assert is_refresh("new", "old")
    assert is_refresh("new", None)
    assert not is_refresh("same", "same")
    assert not is_refresh(None, "old")
    assert not is_refresh("sb_secret_x", "old")


def test_a_service_key_is_a_long_lived_service_role_token() -> None:
    key = service_role_key(SECRET, NOW)
    decoded = jwt.decode(
        key, SECRET, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
    )
    assert decoded == {
        "iss": "supabase",
        "role": "service_role",
        "iat": int(NOW),
        "exp": int(NOW) + 10 * 365 * 86_400,
    }
    assert CHECK.authorize(key, NOW + 9 * 365 * 86_400) == decoded


def test_minted_tokens_are_base64url_without_padding() -> None:
    """RFC 7515: a JWT's segments carry no '=' padding; stricter verifiers refuse it."""
    for sub in ("u", "us", "use"):  # every length modulo 3
        minted = mint_token(SECRET, claims(sub=sub))
        assert "=" not in minted and minted.count(".") == 2


def test_a_secret_given_as_text_checks_tokens_signed_with_its_utf8_bytes() -> None:
    check = TokenCheck("sécret-" + SECRET)
    signed = jwt.encode(claims(), ("sécret-" + SECRET).encode(), algorithm="HS256")
    verified = check.verify(signed, NOW)
    assert isinstance(verified, dict) and verified["sub"] == "user-1"
