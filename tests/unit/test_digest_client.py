"""The digest client against RFC 7616 3.9.1 and against the gateway's own DigestServer."""

from __future__ import annotations

import pytest

from gateway.sip.auth import AuthOutcome, DigestServer, parse_auth_params
from gateway.sip.digest_client import DigestClient, DigestRejected, choose_challenge

# RFC 7616 3.9.1: the example challenge and the responses the RFC gives for it.
RFC_CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg}, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC_RESPONSES = {
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
}

SECRET = b"0123456789abcdef0123456789abcdef"
PASSWORDS = {"carrier-user": "s3cret"}
URI = "sip:carrier.test"


def server(*algorithms: str) -> DigestServer:
    return DigestServer("carrier.test", SECRET, algorithms=algorithms)


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_rfc_7616_example(algorithm: str) -> None:
    client = DigestClient("Mufasa", "Circle of Life", cnonce=lambda: RFC_CNONCE)
    name, value = client.answer(
        401, [RFC_CHALLENGE.format(alg=algorithm)], "GET", "/dir/index.html"
    )
    assert name == "Authorization"
    scheme, params = parse_auth_params(value)
    assert scheme == "Digest"
    assert params["response"] == RFC_RESPONSES[algorithm]
    assert params["nc"] == "00000001"
    assert params["qop"] == "auth"
    assert params["cnonce"] == RFC_CNONCE
    assert params["algorithm"] == algorithm
    assert params["opaque"] == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [(("SHA-256", "MD5"), "SHA-256"), (("MD5", "SHA-256"), "MD5"), (("MD5",), "MD5")],
)
def test_answers_the_first_supported_challenge_and_the_server_accepts(
    offered: tuple[str, ...], chosen: str
) -> None:
    digest = server(*offered)
    client = DigestClient("carrier-user", "s3cret")
    _name, value = client.answer(401, digest.challenge(now=100.0), "REGISTER", URI)
    assert client.algorithm == chosen
    result = digest.verify("REGISTER", value, PASSWORDS.get, now=101.0)
    assert result.ok, result.reason
    assert result.algorithm == chosen


def test_preemptive_credentials_count_nc_up_and_are_accepted() -> None:
    digest = server("SHA-256", "MD5")
    client = DigestClient("carrier-user", "s3cret")
    assert client.preemptive("REGISTER", URI) is None  # nothing to reuse yet
    _name, first = client.answer(401, digest.challenge(now=0.0), "REGISTER", URI)
    assert digest.verify("REGISTER", first, PASSWORDS.get, now=1.0).ok
    again = client.preemptive("REGISTER", URI)
    assert again is not None
    assert parse_auth_params(again[1])[1]["nc"] == "00000002"
    assert digest.verify("REGISTER", again[1], PASSWORDS.get, now=2.0).ok
    # The first one again is a replay.
    assert digest.verify("REGISTER", first, PASSWORDS.get, now=3.0).outcome is AuthOutcome.REPLAY


def test_wrong_password_is_refused_by_the_server() -> None:
    digest = server("MD5")
    client = DigestClient("carrier-user", "wrong")
    _name, value = client.answer(401, digest.challenge(now=0.0), "REGISTER", URI)
    outcome = digest.verify("REGISTER", value, PASSWORDS.get, now=1.0).outcome
    assert outcome is AuthOutcome.BAD_CREDENTIALS


def test_proxy_challenge_gets_proxy_authorization() -> None:
    digest = server("MD5")
    client = DigestClient("carrier-user", "s3cret")
    name, value = client.answer(407, digest.challenge(now=0.0), "INVITE", URI)
    assert name == "Proxy-Authorization"
    assert digest.verify("INVITE", value, PASSWORDS.get, now=1.0).ok
    again = client.preemptive("INVITE", URI)
    assert again is not None and again[0] == "Proxy-Authorization"


def test_second_challenge_after_fresh_credentials_is_a_refusal() -> None:
    digest = server("MD5")
    client = DigestClient("carrier-user", "wrong")
    client.answer(401, digest.challenge(now=0.0), "REGISTER", URI)
    # A server that re-challenges a wrong password with a new nonce: no second try.
    with pytest.raises(DigestRejected, match="without stale=true"):
        client.answer(401, digest.challenge(now=1.0), "REGISTER", URI)


def test_same_nonce_twice_is_a_refusal() -> None:
    digest = server("MD5")
    challenge = digest.challenge(now=0.0)
    client = DigestClient("carrier-user", "s3cret")
    client.answer(401, challenge, "REGISTER", URI)
    client.preemptive("REGISTER", URI)  # a later request; then the same nonce comes back
    with pytest.raises(DigestRejected, match="nonce already answered"):
        client.answer(401, challenge, "REGISTER", URI)


def test_stale_challenge_is_answered_again() -> None:
    digest = server("MD5")
    client = DigestClient("carrier-user", "s3cret")
    client.answer(401, digest.challenge(now=0.0), "REGISTER", URI)
    _name, value = client.answer(401, digest.challenge(now=1.0, stale=True), "REGISTER", URI)
    assert digest.verify("REGISTER", value, PASSWORDS.get, now=2.0).ok


def test_challenge_after_preemptive_credentials_is_answered() -> None:
    digest = server("MD5")
    client = DigestClient("carrier-user", "s3cret")
    client.answer(401, digest.challenge(now=0.0), "REGISTER", URI)
    client.preemptive("REGISTER", URI)
    # E.g. the server forgot its nonces in a restart and challenges without stale=true.
    _name, value = client.answer(401, digest.challenge(now=500.0), "REGISTER", URI)
    assert digest.verify("REGISTER", value, PASSWORDS.get, now=501.0).ok


def test_forget_drops_the_nonce() -> None:
    digest = server("MD5")
    client = DigestClient("carrier-user", "s3cret")
    client.answer(401, digest.challenge(now=0.0), "REGISTER", URI)
    client.forget()
    assert client.nonce is None
    assert client.preemptive("REGISTER", URI) is None


@pytest.mark.parametrize(
    ("challenges", "reason"),
    [
        ([], "no challenge"),
        (['Basic realm="carrier.test"'], "scheme Basic is not Digest"),
        (['Digest realm="r", nonce="n", algorithm=SHA-512-256'], "unsupported algorithm"),
        (['Digest realm="r", nonce="n", qop="auth-int"'], "unsupported qop"),
        (['Digest realm="r"'], "missing parameter: nonce"),
        (['Digest realm="unterminated'], "unterminated or invalid quoted string for realm"),
    ],
)
def test_unanswerable_challenges_are_named(challenges: list[str], reason: str) -> None:
    client = DigestClient("carrier-user", "s3cret")
    with pytest.raises(DigestRejected, match=reason):
        client.answer(401, challenges, "REGISTER", URI)


def test_unsupported_first_then_supported_is_chosen() -> None:
    chosen = choose_challenge(
        ['Digest realm="r", nonce="a", algorithm=SHA-512-256', 'Digest realm="r", nonce="b"']
    )
    assert (chosen.nonce, chosen.algorithm, chosen.stale) == ("b", "MD5", False)


def test_answer_needs_a_challenge_status() -> None:
    client = DigestClient("carrier-user", "s3cret")
    with pytest.raises(ValueError, match="status 403"):
        client.answer(403, ['Digest realm="r", nonce="n"'], "REGISTER", URI)


def test_rfc_2069_challenge_without_qop_is_answered() -> None:
    client = DigestClient("u", "p", cnonce=lambda: "c")
    _name, value = client.answer(401, ['Digest realm="r", nonce="n"'], "REGISTER", URI)
    params = parse_auth_params(value)[1]
    assert "qop" not in params and "nc" not in params
    assert len(params["response"]) == 32
