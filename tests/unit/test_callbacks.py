"""Callback deliveries against a real local HTTP receiver that checks the HMAC signature.

The receiver fails the first N deliveries with 500 and records what arrived in order;
back-off times are shortened to hundredths of a second. The click-to-call tests drive
`PartnerService` with a recording originator (tests/partner_peers.py); the signed
callbacks of a call placed by the real core are checked in
tests/integration/test_partner_api.py.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from gateway.calls.origination import CallRefused, ClickToCallState
from gateway.calls.partners import PartnerService, Refused
from gateway.config import Config, HttpConfig, PartnerConfig
from gateway.control.callbacks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    CallbackSender,
    Delivery,
    RetryPolicy,
    sign,
)
from gateway.store.sqlite import SqliteStore
from tests.partner_peers import CallbackReceiver, RecordingOriginator, free_tcp_port, serve_asgi

SECRET = b"s3cret"
FAST = RetryPolicy(attempts=5, first_delay=0.02, max_delay=0.08, timeout=2.0)


def test_signature_is_hmac_sha256_of_the_body() -> None:
    # RFC 4231 test case 2.
    assert sign(b"Jefe", b"what do ya want for nothing?") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


def test_back_off_doubles_up_to_its_cap() -> None:
    policy = RetryPolicy(attempts=6, first_delay=1.0, max_delay=16.0)
    assert [policy.delay(n) for n in range(1, 7)] == [1, 2, 4, 8, 16, 16]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempts": 0}, "attempts must be at least 1"),
        ({"first_delay": 2.0, "max_delay": 1.0}, "first_delay <= max_delay"),
        ({"timeout": 0.0}, "timeout must be greater than 0"),
    ],
)
def test_bad_retry_policy_is_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.fixture
async def sender() -> AsyncIterator[CallbackSender]:
    async with trio.open_nursery() as nursery:
        sender = CallbackSender(FAST)
        await nursery.start(sender.run)
        yield sender
        nursery.cancel_scope.cancel()


async def settled(sender: CallbackSender) -> None:
    """Wait until every submitted delivery is finished (delivered, refused or given up)."""
    with trio.fail_after(5):
        while sender.queued:
            await trio.sleep(0.01)


async def receiver_at(nursery: trio.Nursery, receiver: CallbackReceiver) -> str:
    return await serve_asgi(nursery, receiver) + "/hook"


async def test_5xx_is_retried_with_back_off_until_delivered(
    nursery: trio.Nursery, sender: CallbackSender
) -> None:
    receiver = CallbackReceiver(SECRET, fail_first=3)
    url = await receiver_at(nursery, receiver)
    sender.submit(Delivery("call-1", url, SECRET, b'{"n":1}'))
    await settled(sender)
    arrivals = receiver.arrivals
    assert [a.status for a in arrivals] == [500, 500, 500, 200]
    assert all(a.signature_ok and a.body == b'{"n":1}' for a in arrivals)
    assert arrivals[0].headers[SIGNATURE_HEADER.lower()] == sign(SECRET, b'{"n":1}')
    assert arrivals[0].headers[TIMESTAMP_HEADER.lower()].isdigit()
    assert arrivals[0].headers["content-type"] == "application/json"
    gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(arrivals)]
    # 0.02, 0.04, then 0.08 (the cap): each wait at least its back-off.
    assert all(gap >= want for gap, want in zip(gaps, (0.02, 0.04, 0.08), strict=True)), gaps
    assert (sender.stats.delivered, sender.stats.retried, sender.stats.abandoned) == (1, 3, 0)


async def test_4xx_is_final_and_not_retried(nursery: trio.Nursery, sender: CallbackSender) -> None:
    receiver = CallbackReceiver(SECRET, status=410)
    url = await receiver_at(nursery, receiver)
    sender.submit(Delivery("call-1", url, SECRET, b"{}"))
    sender.submit(Delivery("call-1", url, SECRET, b"[]"))  # the next one still goes out
    await settled(sender)
    assert [(a.status, a.body) for a in receiver.arrivals] == [(410, b"{}"), (410, b"[]")]
    assert (sender.stats.rejected, sender.stats.retried) == (2, 0)


async def test_a_wrong_secret_is_caught_by_the_receiver(
    nursery: trio.Nursery, sender: CallbackSender
) -> None:
    receiver = CallbackReceiver(SECRET)
    url = await receiver_at(nursery, receiver)
    sender.submit(Delivery("call-1", url, b"not-the-secret", b"{}"))
    await settled(sender)
    # The receiver answers 401 to a bad signature, which is final.
    assert [(a.signature_ok, a.status) for a in receiver.arrivals] == [(False, 401)]


async def test_attempts_are_bounded(nursery: trio.Nursery, sender: CallbackSender) -> None:
    receiver = CallbackReceiver(SECRET, fail_first=100)
    url = await receiver_at(nursery, receiver)
    sender.submit(Delivery("call-1", url, SECRET, b"{}"))
    await settled(sender)
    assert len(receiver.arrivals) == FAST.attempts
    assert (sender.stats.abandoned, sender.stats.retried) == (1, FAST.attempts - 1)


async def test_connection_refused_is_retried_until_the_receiver_is_up(
    nursery: trio.Nursery,
) -> None:
    policy = RetryPolicy(attempts=8, first_delay=0.05, max_delay=0.2, timeout=2.0)
    sender = CallbackSender(policy)
    await nursery.start(sender.run)
    port = free_tcp_port()
    sender.submit(Delivery("call-1", f"http://127.0.0.1:{port}/hook", SECRET, b"{}"))
    await trio.sleep(0.1)  # at least one try found nothing listening
    assert sender.stats.retried >= 1
    receiver = CallbackReceiver(SECRET)
    await serve_asgi(nursery, receiver, port)
    await settled(sender)
    assert [a.signature_ok for a in receiver.arrivals] == [True]
    assert sender.stats.delivered == 1


async def test_order_is_kept_per_call_and_calls_do_not_wait_for_each_other(
    nursery: trio.Nursery,
) -> None:
    # Only a1's first try fails, and its retry waits 0.5 s: long enough on a loaded box
    # for b1, submitted meanwhile, to go through first (with a shorter back-off the retry
    # could come first, or b1 take the second failure, and the order says nothing).
    sender = CallbackSender(RetryPolicy(attempts=5, first_delay=0.5, max_delay=1.0, timeout=2.0))
    await nursery.start(sender.run)
    receiver = CallbackReceiver(SECRET, fail_first=1)
    url = await receiver_at(nursery, receiver)
    for n in (1, 2, 3):
        sender.submit(Delivery("call-a", url, SECRET, b'{"a":%d}' % n))
    await receiver.arrived.wait()  # a1's first try has arrived (and failed)
    sender.submit(Delivery("call-b", url, SECRET, b'{"b":1}'))
    accepted = await receiver.wait_for(4)
    bodies = [a.body for a in accepted]
    assert [b for b in bodies if b.startswith(b'{"a"')] == [b'{"a":1}', b'{"a":2}', b'{"a":3}']
    # b1 got through while a1 was still being retried.
    assert bodies.index(b'{"b":1}') < bodies.index(b'{"a":2}')


async def test_submit_without_run_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="not running"):
        CallbackSender(FAST).submit(Delivery("c", "http://127.0.0.1:1/", SECRET, b"{}"))


async def test_unusable_url_is_not_retried(sender: CallbackSender) -> None:
    sender.submit(Delivery("call-1", "ftp://127.0.0.1/hook", SECRET, b"{}"))
    await settled(sender)
    assert (sender.stats.rejected, sender.stats.retried) == (1, 0)


# ---- click-to-call state changes ---------------------------------------------------------


def partner_config(hook: str = "") -> Config:
    partner = PartnerConfig(
        name="acme",
        api_key="key-acme",
        budget="10.00",
        callback_url=hook,
        callback_secret=SECRET.decode() if hook else "",
    )
    http = HttpConfig(callback_attempts=5, callback_backoff=0.02, callback_backoff_max=0.08)
    return Config(partners=[partner], http=http)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    async with SqliteStore(tmp_path / "state.db") as opened:
        yield opened


async def start_service(
    nursery: trio.Nursery, config: Config, store: SqliteStore
) -> tuple[PartnerService, RecordingOriginator]:
    originator = RecordingOriginator(nursery)
    service = PartnerService(config, store, originator)
    await nursery.start(service.run)
    return service, originator


async def test_each_state_change_is_pushed_signed_and_in_order(
    nursery: trio.Nursery, store: SqliteStore
) -> None:
    receiver = CallbackReceiver(SECRET, fail_first=2)
    hook = await receiver_at(nursery, receiver)
    config = partner_config(hook)
    service, originator = await start_service(nursery, config, store)
    call = await service.create_call(config.partners[0], "+8613800138000", "13800138001", None)
    for state in (
        ClickToCallState.CALLING_A,
        ClickToCallState.CALLING_B,
        ClickToCallState.BRIDGED,
    ):
        originator.drive(call.id, state)
    originator.drive(call.id, ClickToCallState.ENDED, "b-bye")
    accepted = await receiver.wait_for(4)
    events = [a.json() for a in accepted]
    assert [(e["sequence"], e["state"], e["cause"]) for e in events] == [
        (1, "calling_a", None),
        (2, "calling_b", None),
        (3, "bridged", None),
        (4, "ended", "b-bye"),
    ]
    assert {(e["event"], e["id"], e["from"], e["to"]) for e in events} == {
        ("call.state", call.id, "+8613800138000", "+8613800138001")
    }
    assert all(a.signature_ok for a in receiver.arrivals)
    assert [a.status for a in receiver.arrivals[:2]] == [500, 500]


async def test_a_calls_own_callback_url_wins_and_is_signed_with_the_partner_secret(
    nursery: trio.Nursery, store: SqliteStore
) -> None:
    partner_hook = CallbackReceiver(SECRET)
    call_hook = CallbackReceiver(SECRET)
    config = partner_config(await receiver_at(nursery, partner_hook))
    service, originator = await start_service(nursery, config, store)
    url = await receiver_at(nursery, call_hook)
    call = await service.create_call(config.partners[0], "+8613800138000", "+8613800138001", url)
    originator.drive(call.id, ClickToCallState.CALLING_A)
    arrivals = await call_hook.wait_for(1)
    assert arrivals[0].json()["state"] == "calling_a" and arrivals[0].signature_ok
    assert partner_hook.arrivals == []


async def test_without_a_callback_secret_the_api_key_signs(
    nursery: trio.Nursery, store: SqliteStore
) -> None:
    receiver = CallbackReceiver(b"key-acme")
    config = partner_config()  # no callback_url nor secret of its own
    service, originator = await start_service(nursery, config, store)
    url = await receiver_at(nursery, receiver)
    call = await service.create_call(config.partners[0], "+8613800138000", "+8613800138001", url)
    originator.drive(call.id, ClickToCallState.CALLING_A)
    assert (await receiver.wait_for(1))[0].signature_ok


async def test_states_reported_before_the_id_is_known_are_sent_with_it(
    nursery: trio.Nursery, store: SqliteStore
) -> None:
    receiver = CallbackReceiver(SECRET)
    config = partner_config(await receiver_at(nursery, receiver))
    service, originator = await start_service(nursery, config, store)
    originator.report_at_once = (ClickToCallState.CALLING_A,)
    call = await service.create_call(config.partners[0], "+8613800138000", "+8613800138001", None)
    assert call.state is ClickToCallState.CALLING_A
    event = (await receiver.wait_for(1))[0].json()
    assert (event["id"], event["state"], event["sequence"]) == (call.id, "calling_a", 1)


async def test_a_refused_call_sends_no_callback(nursery: trio.Nursery, store: SqliteStore) -> None:
    receiver = CallbackReceiver(SECRET)
    config = partner_config(await receiver_at(nursery, receiver))
    service, originator = await start_service(nursery, config, store)
    originator.report_at_once = (ClickToCallState.CALLING_A,)
    originator.refuse_next = CallRefused(503, "the gateway is full")
    with pytest.raises(Refused, match="full") as refused:
        await service.create_call(config.partners[0], "+8613800138000", "+8613800138001", None)
    assert refused.value.status == 503
    await trio.sleep(0.1)
    assert receiver.arrivals == [] and service.callbacks.queued == 0
    assert service.active_calls == 0
