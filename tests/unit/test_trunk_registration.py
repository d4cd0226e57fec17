"""The outbound registration state machine, driven with responses and times (no sockets)."""

from __future__ import annotations

import pytest

from gateway.calls.trunk_registration import (
    RegistrationState,
    RetryPolicy,
    TrunkRegistration,
    registration_for,
)
from gateway.config import TrunkConfig
from gateway.sip.auth import AuthOutcome, DigestServer, parse_auth_params
from gateway.sip.message import Request, Response, make_response, parse

CONTACT = "sip:127.0.0.1:5060"
REGISTRAR = "sip:carrier.test"
AOR = "sip:trunk-user@carrier.test"
SECRET = b"registrar-secret-0123456789"
RETRY = RetryPolicy(first=10.0, factor=2.0, cap=35.0)


def registration(password: str = "s3cret", expires: int = 600) -> TrunkRegistration:
    return TrunkRegistration(
        name="carrier",
        registrar_uri=REGISTRAR,
        aor=AOR,
        username="trunk-user",
        password=password,
        expires=expires,
        retry=RETRY,
    )


def state(reg: TrunkRegistration) -> RegistrationState:
    return reg.state  # a call, so that mypy does not keep an earlier narrowing


def wire(request: Request) -> Request:
    """What the registrar receives: the request as bytes, with the Via the endpoint adds."""
    request.headers.prepend("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKunit")
    again = parse(request.to_bytes())
    assert isinstance(again, Request)
    return again


def response(request: Request, status: int, *headers: tuple[str, str]) -> Response:
    reply = make_response(request, status, to_tag="registrar")
    for name, value in headers:
        reply.headers.add(name, value)
    return reply


def challenge(request: Request, digest: DigestServer, now: float, stale: bool = False) -> Response:
    values = digest.challenge(now, stale=stale)
    return response(request, 401, *(("WWW-Authenticate", value) for value in values))


def ok(request: Request, expires: int) -> Response:
    return response(request, 200, ("Contact", f"<{CONTACT}>;expires={expires}"))


def registered(reg: TrunkRegistration, digest: DigestServer, now: float = 0.0) -> Request:
    """Register through one challenge; the authenticated REGISTER."""
    first = reg.poll(now, CONTACT)
    assert first is not None
    answered = reg.on_response(challenge(wire(first), digest, now), now)
    assert answered is not None
    assert reg.on_response(ok(wire(answered), 600), now) is None
    return answered


def test_first_register_and_its_headers() -> None:
    reg = registration()
    assert state(reg) is RegistrationState.IDLE and reg.next_deadline() == 0.0
    request = reg.poll(0.0, CONTACT)
    assert request is not None
    sent = wire(request)
    assert sent.method == "REGISTER" and sent.uri == REGISTRAR
    assert sent.headers.get("To") == f"<{AOR}>"
    assert sent.from_.uri == sent.to.uri and sent.from_.tag
    assert sent.headers.get("Contact") == f"<{CONTACT}>"
    assert sent.headers.get("Expires") == "600"
    assert str(sent.cseq) == "1 REGISTER"
    assert "Authorization" not in sent.headers
    assert state(reg) is RegistrationState.REGISTERING
    assert reg.next_deadline() is None  # waiting for the answer
    assert reg.poll(1.0, CONTACT) is None


def test_challenge_answered_and_accepted_by_the_registrar() -> None:
    digest = DigestServer("carrier.test", SECRET, algorithms=("SHA-256", "MD5"))
    reg = registration()
    first = reg.poll(0.0, CONTACT)
    assert first is not None
    retry = reg.on_response(response(first, 100), 0.1)
    assert retry is None  # provisional: nothing to do
    retry = reg.on_response(challenge(wire(first), digest, 0.0), 0.1)
    assert retry is not None
    sent = wire(retry)
    assert sent.call_id == first.call_id and sent.cseq.seq == 2
    authorization = sent.headers.get("Authorization")
    assert authorization is not None
    result = digest.verify("REGISTER", authorization, {"trunk-user": "s3cret"}.get, 0.2)
    assert result.ok and result.algorithm == "SHA-256" and result.uri == REGISTRAR


def test_200_registers_and_refresh_comes_at_half_with_preemptive_credentials() -> None:
    digest = DigestServer("carrier.test", SECRET, algorithms=("MD5",))
    reg = registration()
    registered(reg, digest, now=0.0)
    assert state(reg) is RegistrationState.REGISTERED
    assert reg.granted == 600 and reg.expires_at == 600.0
    assert reg.next_deadline() == 300.0
    assert reg.poll(299.0, CONTACT) is None
    refresh = reg.poll(300.0, CONTACT)
    assert refresh is not None
    sent = wire(refresh)
    assert sent.cseq.seq == 3
    authorization = sent.headers.get("Authorization")
    assert authorization is not None
    assert parse_auth_params(authorization)[1]["nc"] == "00000002"
    assert digest.verify("REGISTER", authorization, {"trunk-user": "s3cret"}.get, 300.0).ok
    assert state(reg) is RegistrationState.REGISTERED  # still bound while refreshing


def test_granted_expiry_from_our_contact_else_the_expires_header() -> None:
    reg = registration(expires=3600)
    request = reg.poll(0.0, CONTACT)
    assert request is not None
    others = response(
        request,
        200,
        ("Contact", "<sip:other@203.0.113.1>;expires=3000"),
        ("Contact", f"<{CONTACT}>;expires=120"),
    )
    reg.on_response(others, 0.0)
    assert reg.granted == 120 and reg.next_deadline() == 60.0

    reg = registration(expires=3600)
    request = reg.poll(0.0, CONTACT)
    assert request is not None
    reg.on_response(response(request, 200, ("Expires", "1800")), 0.0)
    assert reg.granted == 1800


def test_200_that_keeps_no_binding_is_a_failure() -> None:
    reg = registration()
    request = reg.poll(0.0, CONTACT)
    assert request is not None
    reg.on_response(ok(request, 0), 0.0)
    assert state(reg) is RegistrationState.FAILED
    assert reg.last_reason == "the registrar kept no binding for our Contact"


def test_423_retries_at_once_with_min_expires() -> None:
    reg = registration(expires=30)
    request = reg.poll(0.0, CONTACT)
    assert request is not None
    retry = reg.on_response(response(request, 423, ("Min-Expires", "120")), 0.0)
    assert retry is not None
    assert retry.headers.get("Expires") == "120" and retry.cseq.seq == 2
    reg.on_response(ok(retry, 120), 0.0)
    assert state(reg) is RegistrationState.REGISTERED and reg.expires == 120


@pytest.mark.parametrize("min_expires", [None, "20", "30", "abc", "100000"])
def test_423_with_unusable_min_expires_fails(min_expires: str | None) -> None:
    reg = registration(expires=30)
    request = reg.poll(0.0, CONTACT)
    assert request is not None
    headers = [] if min_expires is None else [("Min-Expires", min_expires)]
    assert reg.on_response(response(request, 423, *headers), 0.0) is None
    assert state(reg) is RegistrationState.FAILED
    assert reg.last_reason is not None and "Min-Expires" in reg.last_reason


def test_wrong_password_fails_after_one_answer_and_backs_off() -> None:
    digest = DigestServer("carrier.test", SECRET, algorithms=("MD5",))
    reg = registration(password="wrong")
    first = reg.poll(0.0, CONTACT)
    assert first is not None
    answered = reg.on_response(challenge(wire(first), digest, 0.0), 0.0)
    assert answered is not None
    authorization = answered.headers.get("Authorization") or ""
    verdict = digest.verify("REGISTER", authorization, {"trunk-user": "s3cret"}.get, 0.0)
    assert verdict.outcome is AuthOutcome.BAD_CREDENTIALS
    # The gateway as registrar says 403; a registrar that challenges again is refused too.
    assert reg.on_response(response(answered, 403), 0.0) is None
    assert state(reg) is RegistrationState.FAILED and reg.failures == 1
    assert reg.last_status == 403 and reg.next_deadline() == 10.0
    again = reg.poll(10.0, CONTACT)
    assert again is not None
    assert reg.on_response(challenge(wire(again), digest, 10.0), 10.0) is not None
    third = reg.outstanding
    assert third is not None
    assert reg.on_response(challenge(wire(third), digest, 10.0), 10.0) is None
    assert reg.failures == 2 and reg.next_deadline() == 30.0
    assert reg.last_reason is not None and "without stale=true" in reg.last_reason


def test_back_off_doubles_up_to_the_cap() -> None:
    reg = registration()
    now = 0.0
    delays = []
    for _ in range(4):
        request = reg.poll(now, CONTACT)
        assert request is not None
        reg.on_failure("timeout", now)
        deadline = reg.next_deadline()
        assert deadline is not None
        delays.append(deadline - now)
        now = deadline
    assert delays == [10.0, 20.0, 35.0, 35.0]
    assert state(reg) is RegistrationState.FAILED and reg.last_reason == "timeout"


def test_retry_after_is_honoured() -> None:
    reg = registration()
    request = reg.poll(0.0, CONTACT)
    assert request is not None
    reg.on_response(response(request, 503, ("Retry-After", "120 (maintenance);duration=60")), 0.0)
    assert reg.next_deadline() == 120.0
    assert reg.last_status == 503


def test_stale_challenge_on_refresh_is_answered() -> None:
    digest = DigestServer("carrier.test", SECRET, algorithms=("MD5",), nonce_ttl=100.0)
    reg = registration()
    registered(reg, digest, now=0.0)
    refresh = reg.poll(300.0, CONTACT)
    assert refresh is not None
    authorization = refresh.headers.get("Authorization") or ""
    verdict = digest.verify("REGISTER", authorization, {"trunk-user": "s3cret"}.get, 300.0)
    assert verdict.outcome is AuthOutcome.STALE
    retry = reg.on_response(challenge(wire(refresh), digest, 300.0, stale=True), 300.0)
    assert retry is not None
    authorization = retry.headers.get("Authorization") or ""
    assert digest.verify("REGISTER", authorization, {"trunk-user": "s3cret"}.get, 300.0).ok


def test_stop_deregisters_with_expires_zero() -> None:
    digest = DigestServer("carrier.test", SECRET, algorithms=("MD5",))
    reg = registration()
    registered(reg, digest, now=0.0)
    bye = reg.stop(50.0)
    assert bye is not None
    assert bye.headers.get("Expires") == "0"
    assert bye.headers.get("Contact") == f"<{CONTACT}>"
    assert "Authorization" in bye.headers
    assert state(reg) is RegistrationState.UNREGISTERING
    # The registrar wants fresh credentials for it: answered once.
    retry = reg.on_response(challenge(wire(bye), digest, 50.0), 50.0)
    assert retry is not None and retry.headers.get("Expires") == "0"
    assert reg.on_response(response(retry, 200), 50.0) is None
    assert state(reg) is RegistrationState.UNREGISTERED
    assert reg.expires_at is None and reg.next_deadline() is None
    assert reg.poll(1000.0, CONTACT) is None


def test_stop_without_a_binding_sends_nothing() -> None:
    reg = registration()
    assert reg.stop(0.0) is None
    assert state(reg) is RegistrationState.UNREGISTERED

    digest = DigestServer("carrier.test", SECRET, algorithms=("MD5",))
    expired = registration()
    registered(expired, digest, now=0.0)
    assert expired.stop(601.0) is None  # the binding has run out by itself


def test_deregistration_timeout_ends_it() -> None:
    digest = DigestServer("carrier.test", SECRET, algorithms=("MD5",))
    reg = registration()
    registered(reg, digest, now=0.0)
    assert reg.stop(10.0) is not None
    reg.on_failure("timeout", 42.0)
    assert state(reg) is RegistrationState.UNREGISTERED and reg.next_deadline() is None


def test_snapshot_in_wall_clock_time() -> None:
    digest = DigestServer("carrier.test", SECRET, algorithms=("MD5",))
    reg = registration()
    registered(reg, digest, now=100.0)
    row = reg.snapshot(now=110.0, wall_now=1_700_000_000.0)
    assert row == {
        "name": "carrier",
        "aor": AOR,
        "state": "registered",
        "registered": True,
        "expires": 600,
        "expires_at": 1_700_000_590.0,
        "next_register_at": 1_699_999_990.0 + 300.0,
        "failures": 0,
        "last_status": 200,
        "last_reason": "OK",
    }


def test_built_from_trunk_config() -> None:
    trunk = TrunkConfig(
        name="carrier",
        host="carrier.test",
        port=5070,
        transport="tcp",
        register=True,
        username="trunk-user",
        password="s3cret",
        register_expires=900,
    )
    reg = registration_for(trunk, RETRY)
    assert reg.aor == "sip:trunk-user@carrier.test"
    assert reg.registrar_uri == "sip:carrier.test:5070;transport=tcp"
    assert reg.expires == 900


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="register_expires must be at least 1"):
        registration(expires=0)
    with pytest.raises(ValueError, match="retry policy"):
        RetryPolicy(first=0.0)
    with pytest.raises(ValueError, match="retry policy"):
        RetryPolicy(first=10.0, cap=5.0)
