"""Tests for gateway.sip.auth: digest challenges, verification and client responses."""

from __future__ import annotations

import base64
import hashlib
import struct
from collections.abc import Callable

import pytest

from gateway.sip import auth
from gateway.sip.auth import (
    AuthError,
    AuthOutcome,
    DigestServer,
    digest_authorization,
    parse_auth_params,
)

REALM = "edgegw.example"
SECRET = b"0123456789abcdef0123456789abcdef"
USERS = {"1001": "demo1001", "1002": "demo1002"}
URI = "sip:1002@edgegw.example"
NOW = 1000.0


def lookup(username: str) -> str | None:
    return USERS.get(username)


def make_server(**kwargs: object) -> DigestServer:
    return DigestServer(REALM, SECRET, **kwargs)  # type: ignore[arg-type]


def challenge_for(server: DigestServer, algorithm: str, now: float = NOW) -> str:
    for value in server.challenge(now):
        if f"algorithm={algorithm}," in value:
            return value
    raise AssertionError(f"no {algorithm} challenge")


def answer(
    challenge: str,
    *,
    username: str = "1001",
    password: str = "demo1001",
    method: str = "INVITE",
    nc: int = 1,
) -> str:
    return digest_authorization(
        challenge, method=method, uri=URI, username=username, password=password, nc=nc
    )


def reencode_nonce(header: str, change: Callable[[bytes], bytes]) -> str:
    params = parse_auth_params(header)[1]
    raw = base64.urlsafe_b64decode(params["nonce"] + "=")
    nonce = base64.urlsafe_b64encode(change(raw)).rstrip(b"=").decode()
    return header.replace(params["nonce"], nonce)


# --- known answers ---------------------------------------------------------------------


def test_md5_rfc2617_section_3_5_example() -> None:
    challenge = (
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    value = digest_authorization(
        challenge,
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle Of Life",
        cnonce="0a4f113b",
    )
    params = parse_auth_params(value)[1]
    assert params["response"] == "6629fae49393a05397450978507c4ef1"
    assert params["opaque"] == "5ccc069c403ebaf9f0171e9517f40e41"
    assert params["nc"] == "00000001"
    assert params["qop"] == "auth"


RFC7616_CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg}, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def test_sha256_against_independent_rfc7616_computation() -> None:
    def h(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    # RFC 7616 3.4.1: response = H(H(A1):nonce:nc:cnonce:qop:H(A2))
    ha1 = h("Mufasa:http-auth@example.org:Circle of Life")
    ha2 = h("GET:/dir/index.html")
    nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    expected = h(f"{ha1}:{nonce}:00000001:{RFC7616_CNONCE}:auth:{ha2}")
    value = digest_authorization(
        RFC7616_CHALLENGE.format(alg="SHA-256"),
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle of Life",
        cnonce=RFC7616_CNONCE,
    )
    response = parse_auth_params(value)[1]["response"]
    assert response == expected
    # The figure printed in RFC 7616 section 3.9.1.
    assert response == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def test_md5_rfc7616_example() -> None:
    value = digest_authorization(
        RFC7616_CHALLENGE.format(alg="MD5"),
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle of Life",
        cnonce=RFC7616_CNONCE,
    )
    assert parse_auth_params(value)[1]["response"] == "8ca523f5e9506fed4657c9700eebdbec"


# --- client formatting -----------------------------------------------------------------


def test_client_quoting_follows_rfc7616() -> None:
    value = digest_authorization(
        'Digest realm="r", nonce="n", algorithm=SHA-256, qop="auth"',
        method="REGISTER",
        uri="sip:r",
        username='we"ird\\',
        password="p",
        nc=0x1F,
        cnonce="c",
    )
    assert value.startswith('Digest username="we\\"ird\\\\", realm="r", nonce="n", uri="sip:r"')
    assert ", algorithm=SHA-256," in value
    assert ', cnonce="c", qop=auth, nc=0000001f' in value
    assert parse_auth_params(value)[1]["username"] == 'we"ird\\'


def test_client_without_qop_uses_rfc2069_form() -> None:
    value = digest_authorization(
        'Digest realm="r", nonce="abc"',
        method="INVITE",
        uri="sip:x@r",
        username="u",
        password="p",
    )
    params = parse_auth_params(value)[1]
    assert "qop" not in params and "nc" not in params and "cnonce" not in params
    ha1 = hashlib.md5(b"u:r:p").hexdigest()
    ha2 = hashlib.md5(b"INVITE:sip:x@r").hexdigest()
    assert params["response"] == hashlib.md5(f"{ha1}:abc:{ha2}".encode()).hexdigest()
    assert params["algorithm"] == "MD5"


@pytest.mark.parametrize(
    ("challenge", "message"),
    [
        ('Basic realm="r"', "unsupported scheme Basic"),
        ('Digest nonce="n"', "missing parameter: realm"),
        ('Digest realm="r"', "missing parameter: nonce"),
        ('Digest realm="r", nonce="n", algorithm=SHA-512', "unsupported algorithm SHA-512"),
        ('Digest realm="r", nonce="n", qop="auth-int"', "unsupported qop auth-int"),
        ('Digest realm="r, nonce="n"', "expected ',' after realm"),
    ],
)
def test_client_rejects_unusable_challenges(challenge: str, message: str) -> None:
    with pytest.raises(AuthError, match=message):
        digest_authorization(challenge, method="INVITE", uri="sip:x", username="u", password="p")


def test_client_rejects_out_of_range_nc() -> None:
    with pytest.raises(ValueError, match="nc"):
        digest_authorization(
            'Digest realm="r", nonce="n"', method="A", uri="u", username="u", password="p", nc=0
        )


# --- server challenges and round trips -------------------------------------------------


def test_challenges_follow_the_configured_preference_with_qop_auth() -> None:
    server = make_server(algorithms=("MD5", "SHA-256"))
    first, second = server.challenge(NOW)
    assert first.startswith(f'Digest realm="{REALM}", nonce="')
    assert first.endswith(', algorithm=MD5, qop="auth"')
    assert second.endswith(', algorithm=SHA-256, qop="auth"')
    assert (
        make_server(algorithms=("SHA-256", "MD5"))
        .challenge(NOW)[0]
        .endswith(', algorithm=SHA-256, qop="auth"')
    )
    assert parse_auth_params(first)[1]["nonce"] == parse_auth_params(second)[1]["nonce"]
    assert all(v.endswith(", stale=true") for v in server.challenge(NOW, stale=True))


def test_each_challenge_has_a_fresh_nonce() -> None:
    server = make_server()
    nonces = {parse_auth_params(server.challenge(NOW)[0])[1]["nonce"] for _ in range(50)}
    assert len(nonces) == 50


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5", "SHA-256-sess", "MD5-sess"])
def test_round_trip(algorithm: str) -> None:
    server = make_server(algorithms=(algorithm,))
    header = answer(challenge_for(server, algorithm))
    result = server.verify("INVITE", header, lookup, NOW + 1)
    assert result.outcome is AuthOutcome.OK, result.reason
    assert result.ok
    assert result.username == "1001"
    assert result.uri == URI
    assert result.algorithm == algorithm


def test_method_is_part_of_the_response() -> None:
    server = make_server()
    header = answer(challenge_for(server, "SHA-256"), method="REGISTER")
    result = server.verify("INVITE", header, lookup, NOW)
    assert result.outcome is AuthOutcome.BAD_CREDENTIALS


def test_wrong_password() -> None:
    server = make_server()
    header = answer(challenge_for(server, "MD5"), password="guess")
    result = server.verify("INVITE", header, lookup, NOW)
    assert result.outcome is AuthOutcome.BAD_CREDENTIALS
    assert result.reason == "response mismatch"
    assert result.username == "1001"
    assert server.replay_entries == 0


def test_unknown_user_costs_the_same_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    server = make_server()
    calls: list[str] = []
    real = auth._response

    def counting(*args: object, **kwargs: str) -> str:
        calls.append(kwargs["username"])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(auth, "_response", counting)
    challenge = challenge_for(server, "SHA-256")
    unknown = server.verify("INVITE", answer(challenge, username="1003"), lookup, NOW)
    wrong = server.verify("INVITE", answer(challenge, password="x", nc=2), lookup, NOW)
    assert unknown.outcome is AuthOutcome.UNKNOWN_USER
    assert unknown.reason == "unknown user 1003"
    assert unknown.username == "1003"
    assert wrong.outcome is AuthOutcome.BAD_CREDENTIALS
    # answer() hashed once per call; verify hashed once per call as well.
    assert calls.count("1003") == 2
    assert calls.count("1001") == 2


def test_forged_nonce_from_another_secret() -> None:
    other = DigestServer(REALM, b"another secret of 32 bytes......")
    server = make_server()
    header = answer(challenge_for(other, "SHA-256"))
    result = server.verify("INVITE", header, lookup, NOW)
    assert result.outcome is AuthOutcome.BAD_CREDENTIALS
    assert result.reason == "nonce forged"


def test_nonce_from_another_realm_is_forged() -> None:
    other = DigestServer("other.example", SECRET)
    nonce = other.new_nonce(NOW)
    challenge = f'Digest realm="{REALM}", nonce="{nonce}", algorithm=MD5, qop="auth"'
    result = make_server().verify("INVITE", answer(challenge), lookup, NOW)
    assert result.reason == "nonce forged"


def test_modified_nonce_time_is_detected() -> None:
    server = make_server()
    header = answer(challenge_for(server, "SHA-256", now=NOW))

    def later(raw: bytes) -> bytes:
        return struct.pack(">d", NOW + 10_000) + raw[8:]

    tampered = reencode_nonce(header, later)
    assert tampered != header
    # Re-sign the tampered header so only the nonce MAC can catch it.
    params = parse_auth_params(tampered)[1]
    challenge = f'Digest realm="{REALM}", nonce="{params["nonce"]}", algorithm=SHA-256, qop=auth'
    result = server.verify("INVITE", answer(challenge), lookup, NOW + 10_000)
    assert result.outcome is AuthOutcome.BAD_CREDENTIALS
    assert result.reason == "nonce forged"


@pytest.mark.parametrize("nonce", ["short", "x" * 42 + "!", "é" * 43, "A" * 42 + "B"])
def test_garbage_nonce_is_malformed(nonce: str) -> None:
    challenge = f'Digest realm="{REALM}", nonce="{nonce}", algorithm=MD5, qop="auth"'
    result = make_server().verify("INVITE", answer(challenge), lookup, NOW)
    assert result.outcome is AuthOutcome.MALFORMED
    assert result.reason == "nonce malformed"


def test_stale_nonce_with_good_credentials() -> None:
    server = make_server(nonce_ttl=30.0)
    header = answer(challenge_for(server, "SHA-256"))
    assert server.verify("INVITE", header, lookup, NOW + 30.0).ok
    late = answer(challenge_for(server, "SHA-256"))
    result = server.verify("INVITE", late, lookup, NOW + 30.5)
    assert result.outcome is AuthOutcome.STALE
    assert result.reason == "nonce expired"
    assert server.replay_entries == 1


def test_stale_nonce_with_bad_password_is_bad_credentials() -> None:
    server = make_server(nonce_ttl=30.0)
    header = answer(challenge_for(server, "MD5"), password="nope")
    result = server.verify("INVITE", header, lookup, NOW + 31)
    assert result.outcome is AuthOutcome.BAD_CREDENTIALS


def test_nonce_from_the_future_is_stale() -> None:
    server = make_server()
    header = answer(challenge_for(server, "MD5", now=NOW + 50))
    assert server.verify("INVITE", header, lookup, NOW).outcome is AuthOutcome.STALE


def test_replayed_nc_is_refused() -> None:
    server = make_server()
    header = answer(challenge_for(server, "SHA-256"))
    assert server.verify("INVITE", header, lookup, NOW).ok
    result = server.verify("INVITE", header, lookup, NOW + 1)
    assert result.outcome is AuthOutcome.REPLAY
    assert result.reason == "nc replayed (00000001)"


def test_increasing_nc_is_accepted_and_lower_refused() -> None:
    server = make_server()
    challenge = challenge_for(server, "MD5")
    for nc in (1, 2, 5):
        assert server.verify("INVITE", answer(challenge, nc=nc), lookup, NOW).ok
    for nc in (5, 4, 1):
        outcome = server.verify("INVITE", answer(challenge, nc=nc), lookup, NOW).outcome
        assert outcome is AuthOutcome.REPLAY
    assert server.verify("INVITE", answer(challenge, nc=6), lookup, NOW).ok
    assert server.replay_entries == 1


def test_failed_attempts_do_not_consume_nc() -> None:
    server = make_server()
    challenge = challenge_for(server, "MD5")
    bad = server.verify("INVITE", answer(challenge, password="bad"), lookup, NOW)
    assert bad.outcome is AuthOutcome.BAD_CREDENTIALS
    assert server.verify("INVITE", answer(challenge), lookup, NOW).ok


def test_wrong_realm() -> None:
    server = make_server()
    nonce = server.new_nonce(NOW)
    challenge = f'Digest realm="elsewhere", nonce="{nonce}", algorithm=MD5, qop="auth"'
    result = server.verify("INVITE", answer(challenge), lookup, NOW)
    assert result.outcome is AuthOutcome.WRONG_REALM
    assert result.reason == "realm 'elsewhere'"


def test_algorithm_not_offered_is_malformed() -> None:
    md5_only = make_server(algorithms=("MD5",))
    sha_server = make_server()
    header = answer(challenge_for(sha_server, "SHA-256"))
    result = md5_only.verify("INVITE", header, lookup, NOW)
    assert result.outcome is AuthOutcome.MALFORMED
    assert result.reason == "algorithm SHA-256 not offered"


def test_missing_algorithm_means_md5() -> None:
    server = make_server()
    header = answer(challenge_for(server, "MD5")).replace(", algorithm=MD5", "")
    assert server.verify("INVITE", header, lookup, NOW).ok


def _valid_header() -> str:
    return answer(challenge_for(make_server(), "MD5"))


def _drop(name: str) -> str:
    parts = [p for p in _valid_header()[len("Digest ") :].split(", ") if not p.startswith(name)]
    return "Digest " + ", ".join(parts)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("", "empty header"),
        ("   ", "empty header"),
        ("@@@", "expected an authentication scheme"),
        ("Digest", "missing parameter: username"),
        ("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==", "unsupported scheme Basic"),
        ('Digest username="1001", realm="x', "unterminated or invalid quoted string for realm"),
        ("Digest username=1001, uri=sip:1002@x", "bad value for uri (missing quotes?)"),
        ('Digest username="1001" realm="x"', "expected ',' after username"),
        ('Digest username "1001"', "expected '=' after username"),
        ('Digest username=, realm="x"', "empty value for username"),
        ("Digest username=@1001", "bad value for username (missing quotes?)"),
        ('Digest username="a\x01b"', "unterminated or invalid quoted string for username"),
        ('Digest ="x"', "expected parameter name at offset 7"),
        ('Digest username="a", username="b"', "duplicate parameter: username"),
        ("Digest " + "x" * 9000, "header too long"),
        (_drop("nc="), "missing parameter: nc"),
        (_drop("cnonce="), "missing parameter: cnonce"),
        (_drop("qop="), "missing parameter: qop"),
        (_drop("uri="), "missing parameter: uri"),
        (_drop("response="), "missing parameter: response"),
        (_valid_header().replace("qop=auth", 'qop="auth-int"'), "unsupported qop auth-int"),
        (_valid_header().replace("nc=00000001", "nc=1"), "bad nc '1' (want 8 hex digits)"),
        (_valid_header().replace("nc=00000001", "nc=+0000001"), "bad nc '+0000001'"),
        (_valid_header().replace('uri="', 'uri="" , x="'), "empty parameter: uri"),
        (
            _valid_header().replace('response="', 'response="zz'),
            "bad response (want 32 hex digits for MD5)",
        ),
        (_valid_header().replace("algorithm=MD5", "algorithm=SHA-1"), "unsupported algorithm"),
        (_valid_header() + ", userhash=true", "userhash not supported"),
    ],
)
def test_malformed_headers(header: str, reason: str) -> None:
    result = make_server().verify("INVITE", header, lookup, NOW)
    assert result.outcome is AuthOutcome.MALFORMED
    assert reason in result.reason


def test_malformed_result_keeps_username_when_readable() -> None:
    result = make_server().verify("INVITE", _drop("nc="), lookup, NOW)
    assert result.username == "1001"


def test_parse_auth_params_unescapes_and_lowercases() -> None:
    scheme, params = parse_auth_params(
        'Digest  Realm="a \\"b\\" c" ,, nonce=abc,  QOP="auth,auth-int",'
    )
    assert scheme == "Digest"
    assert params == {"realm": 'a "b" c', "nonce": "abc", "qop": "auth,auth-int"}


def test_parse_auth_params_allows_whitespace_around_equals() -> None:
    assert parse_auth_params('Digest realm = "r" , nonce\t=\t"n"')[1] == {
        "realm": "r",
        "nonce": "n",
    }


def test_trailing_newline_is_refused() -> None:
    with pytest.raises(AuthError):
        parse_auth_params('Digest realm="r"\n')


def test_replay_table_is_a_bounded_lru() -> None:
    server = make_server(replay_capacity=3)
    headers = [answer(challenge_for(server, "MD5")) for _ in range(5)]
    for header in headers:
        assert server.verify("INVITE", header, lookup, NOW).ok
    assert server.replay_entries == 3
    # The most recent nonces are still remembered...
    assert server.verify("INVITE", headers[-1], lookup, NOW).outcome is AuthOutcome.REPLAY
    # ...the oldest was evicted (bounded memory is the trade-off; ttl still limits it).
    assert server.verify("INVITE", headers[0], lookup, NOW).ok
    assert server.replay_entries == 3


def test_recently_used_nonce_survives_eviction() -> None:
    server = make_server(replay_capacity=2)
    first = challenge_for(server, "MD5")
    second = challenge_for(server, "MD5")
    assert server.verify("INVITE", answer(first), lookup, NOW).ok
    assert server.verify("INVITE", answer(second), lookup, NOW).ok
    assert server.verify("INVITE", answer(first, nc=2), lookup, NOW).ok  # refreshes `first`
    assert server.verify("INVITE", answer(challenge_for(server, "MD5")), lookup, NOW).ok
    assert server.verify("INVITE", answer(first, nc=2), lookup, NOW).outcome is AuthOutcome.REPLAY


def test_challenge_flood_allocates_no_state() -> None:
    server = make_server()
    for i in range(100_000):
        server.challenge(NOW + i * 0.001)
    assert server.replay_entries == 0
    assert not server._highest_nc
    bogus = answer(challenge_for(server, "MD5"), password="wrong")
    for _ in range(100):
        server.verify("INVITE", bogus, lookup, NOW)
    assert server.replay_entries == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"secret": b"short"}, "secret"),
        ({"nonce_ttl": 0.0}, "nonce_ttl"),
        ({"replay_capacity": 0}, "replay_capacity"),
        ({"algorithms": ()}, "algorithms"),
        ({"algorithms": ("SHA-1",)}, "unsupported algorithm SHA-1"),
    ],
)
def test_server_rejects_bad_configuration(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"secret": SECRET, **kwargs}
    secret = args.pop("secret")
    with pytest.raises(ValueError, match=message):
        DigestServer(REALM, secret, **args)  # type: ignore[arg-type]
