"""A call's life in the real gateway process: mid-call changes, session timers, crashes, the CLI.

The gateway runs as `edgegw run --config FILE` (peers.gateway_process); both ends of each
call are Python user agents on UDP (`Agent`): the caller is app user 1001, the callee sits
behind the carrier trunk. An agent reads its socket in a background task and answers what
a phone answers by itself (OPTIONS, BYE, the gateway's session refreshes), so tests only
drive what they check.

Covered: re-INVITE hold/resume and UPDATE (RFC 3311) carried across with each leg seeing
only the gateway's SDP (RFC 3264 8: same o= session, version moving on); session timers
(RFC 4028) ending a call whose callee vanished and keeping a refreshed one up; kill -9 then
restart closing the open call at its last checkpoint (DESIGN rule 5); SIGTERM sending BYE to
both legs; the CLI's outside contract (exit codes 0/1/3, --json, tables, config check);
the embedded demo started without --config.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from gateway import __version__
from gateway.sip.dialog import Dialog, DialogError
from gateway.sip.message import Request, Response, make_response, new_tag
from gateway.sip.sdp import SessionDescription, parse_sdp
from tests.integration.peers import (
    REPO_ROOT,
    GatewayProcess,
    free_udp_port,
    gateway_process,
    sip_ping,
)
from tests.integration.sipclient import (
    Message,
    NoMessage,
    UdpPeer,
    ack_for_failure,
    media_range,
    set_branch,
)

Address = tuple[str, int]

GATEWAY_MEDIA = "127.0.0.1"
# The agents name addresses of their own in SDP, so a leaked address is easy to spot.
CALLER_MEDIA: Address = ("127.0.0.11", 41000)
CALLEE_MEDIA: Address = ("127.0.0.12", 42000)
TRUNK_NUMBER = "+8613800138000"
CLI = (sys.executable, "-m", "gateway.control.cli")

_ANSWER_DIRECTION = {"sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
_RTPMAP = {"0": "PCMU/8000", "8": "PCMA/8000"}


# ---- a user agent that keeps reading ---------------------------------------------------------


class Agent:
    """A SIP phone on a UdpPeer: logs every message, answers refreshes, BYE and OPTIONS.

    `dialog` is set by the test once the call is up; in-dialog INVITE and UPDATE then get a
    200 whose SDP answers the offer (direction mirrored, RFC 3264 6.1) and whose
    Session-Expires repeats the request's (RFC 4028 9). A repeated request gets the same
    response again (a retransmission, RFC 3261 17.2).
    """

    def __init__(self, name: str, peer: UdpPeer, media: Address) -> None:
        self.name = name
        self.peer = peer
        self.media = media
        self.log: list[Message] = []
        self.dialog: Dialog | None = None
        self.refreshes_answered = 0
        self._session = random.randrange(1, 2**31)
        self._version = 0
        self._answered: dict[tuple[str, int, str], Response] = {}
        self._changed = trio.Event()
        self._scope = trio.CancelScope()

    @property
    def contact(self) -> str:
        host, port = self.peer.local
        return f"sip:{self.name}@{host}:{port}"

    async def run(self) -> None:
        with self._scope:
            while True:
                item = await self.peer.receive(timeout=60.0)
                if item is None:
                    continue
                message = item[0]
                self.log.append(message)
                self._changed.set()
                self._changed = trio.Event()
                if isinstance(message, Request):
                    await self._auto_answer(message)

    def vanish(self) -> None:
        """Gone without a word: no BYE, the socket closed."""
        self._scope.cancel()
        self.peer.close()

    # -- SDP --

    def sdp(self, direction: str = "sendrecv", formats: Sequence[str] = ("8", "0")) -> bytes:
        """A new SDP of ours (the o= version moves on with each one, RFC 3264 8)."""
        self._version += 1
        host, port = self.media
        lines = [
            "v=0",
            f"o={self.name} {self._session} {self._version} IN IP4 {host}",
            "s=-",
            f"c=IN IP4 {host}",
            "t=0 0",
            f"m=audio {port} RTP/AVP {' '.join(formats)}",
            *(f"a=rtpmap:{pt} {_RTPMAP[pt]}" for pt in formats if pt in _RTPMAP),
            f"a={direction}",
        ]
        return ("\r\n".join(lines) + "\r\n").encode()

    def answer_to(self, offer: bytes) -> bytes:
        description = parse_sdp(offer)
        media = description.media[0]
        direction = _ANSWER_DIRECTION.get(description.direction_of(media), "sendrecv")
        return self.sdp(direction, media.formats[:1])

    # -- answering by itself --

    async def _auto_answer(self, request: Request) -> None:
        key = (request.call_id, request.cseq.seq, request.method)
        if key in self._answered:
            await self.peer.send(self._answered[key])
            return
        response = self._response_to(request)
        if response is not None:
            self._answered[key] = response
            await self.peer.send(response)

    def _response_to(self, request: Request) -> Response | None:
        if request.method == "OPTIONS":
            return make_response(request, 200)
        if request.to.tag is None or self.dialog is None or request.method == "ACK":
            return None  # a new INVITE is the test's to answer; ACKs are only logged
        with contextlib.suppress(DialogError):
            self.dialog.receive_request(request)
        if request.method == "BYE":
            return make_response(request, 200)
        if request.method not in ("INVITE", "UPDATE"):
            return make_response(request, 200)
        self.refreshes_answered += 1
        ok = make_response(request, 200)
        ok.headers.set("Contact", f"<{self.contact}>")
        session_expires = request.headers.get("Session-Expires")
        if session_expires is not None:
            ok.headers.set("Session-Expires", session_expires)
            ok.headers.set("Require", "timer")
        if request.body:
            ok.headers.set("Content-Type", "application/sdp")
            ok.body = self.answer_to(request.body)
        return ok

    # -- waiting --

    def mark(self) -> int:
        """A position in the log: `since=` it, only later messages count."""
        return len(self.log)

    async def wait_for(
        self,
        predicate: Callable[[Message], bool],
        what: str,
        *,
        since: int = 0,
        timeout: float = 5.0,
    ) -> Message:
        with trio.move_on_after(timeout):
            while True:
                for message in self.log[since:]:
                    if predicate(message):
                        return message
                await self._changed.wait()
        got = ", ".join(_describe(m) for m in self.log[since:]) or "nothing"
        raise NoMessage(f"{self.name}: no {what} within {timeout} s (got: {got})")

    async def wait_request(
        self, method: str, *, since: int = 0, timeout: float = 5.0, call_id: str | None = None
    ) -> Request:
        def matches(message: Message) -> bool:
            return (
                isinstance(message, Request)
                and message.method == method
                and (call_id is None or message.call_id == call_id)
            )

        found = await self.wait_for(matches, f"{method}", since=since, timeout=timeout)
        assert isinstance(found, Request)
        return found

    async def wait_response(
        self, request: Request, *, since: int = 0, timeout: float = 5.0
    ) -> Response:
        """The final response to `request` (Call-ID and CSeq match)."""

        def matches(message: Message) -> bool:
            return (
                isinstance(message, Response)
                and message.call_id == request.call_id
                and message.cseq == request.cseq
                and message.status >= 200
            )

        what = f"final response to {request.method} (CSeq {request.cseq.seq})"
        found = await self.wait_for(matches, what, since=since, timeout=timeout)
        assert isinstance(found, Response)
        return found

    # -- sending --

    async def transact(self, request: Request, *, timeout: float = 5.0) -> Response:
        """Send `request` and return its final response; a non-2xx to an INVITE is ACKed."""
        since = self.mark()
        await self.peer.send(request)
        response = await self.wait_response(request, since=since, timeout=timeout)
        if request.method == "INVITE" and response.status >= 300:
            await self.peer.send(ack_for_failure(request, response))
        return response

    def in_dialog(self, method: str, body: bytes = b"") -> Request:
        assert self.dialog is not None, f"{self.name} has no dialog"
        request = self.dialog.create_request(
            method, body=body, content_type="application/sdp" if body else None
        )
        set_branch(request, "UDP", self.peer.local)
        return request

    async def ack(self, response: Response) -> None:
        """ACK a 2xx to an INVITE of ours (RFC 3261 13.2.2.4: a transaction of its own)."""
        assert self.dialog is not None
        ack = self.dialog.create_ack(response.cseq.seq)
        set_branch(ack, "UDP", self.peer.local)
        await self.peer.send(ack)


def _describe(message: Message) -> str:
    if isinstance(message, Response):
        return f"{message.status} {message.cseq.method}"
    return message.method


def is_in_dialog_request(methods: Sequence[str]) -> Callable[[Message], bool]:
    def matches(message: Message) -> bool:
        return (
            isinstance(message, Request)
            and message.method in methods
            and message.to.tag is not None
        )

    return matches


@asynccontextmanager
async def two_agents(sip_port: int) -> AsyncIterator[tuple[Agent, Agent]]:
    """The caller (app user 1001) and the callee (behind the trunk), reading in the background."""
    gateway = ("127.0.0.1", sip_port)
    caller_peer = await UdpPeer.open(gateway, host="127.0.0.1")
    callee_peer = await UdpPeer.open(gateway, host="127.0.0.1")
    caller = Agent("caller", caller_peer, CALLER_MEDIA)
    callee = Agent("callee", callee_peer, CALLEE_MEDIA)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller.run)
            nursery.start_soon(callee.run)
            yield caller, callee
            nursery.cancel_scope.cancel()
    finally:
        caller_peer.close()
        callee_peer.close()


# ---- the gateway and the call ----------------------------------------------------------------


def gateway_config(
    sip_port: int, trunk_port: int, *, general: str = "", sip: str = "", log_level: str = "info"
) -> str:
    """A loopback gateway: UDP SIP on `sip_port`, subscribers 1001/1002, one trunk."""
    low, high = media_range()
    return f"""
[general]
var_dir = "{{var_dir}}"
log_level = "{log_level}"
{general}

[sip]
listen = [{{ transport = "udp", host = "127.0.0.1", port = {sip_port} }}]
{sip}

[media]
host = "{GATEWAY_MEDIA}"
port_min = {low}
port_max = {high}

[http]
listen = "127.0.0.1:{free_udp_port(also_tcp=True)}"

[[subscribers]]
username = "1001"
password = "demo1001"
numbers = ["+8613900139001"]
balance = "1000.00"

[[subscribers]]
username = "1002"
password = "demo1002"
numbers = ["+8613900139002"]
balance = "1000.00"

[[trunks]]
name = "carrier"
host = "127.0.0.1"
port = {trunk_port}
tariff_per_minute = "0.10"
"""


@contextlib.contextmanager
def running(tmp: Path, config: str) -> Iterator[GatewayProcess]:
    """`peers.gateway_process`, and once it stopped: no traceback in what it printed."""
    with gateway_process(tmp, config) as gw:
        yield gw
    output = gw.stderr_text()
    assert "Traceback" not in output, output[-4000:]


@dataclass
class CallUp:
    """An answered call as its two ends saw it."""

    invite: Request  # the caller's INVITE that got through (with credentials)
    answer: Response  # the gateway's 200 to the caller
    incoming: Request  # the gateway's INVITE to the callee
    ok: Response  # the callee's 200

    @property
    def caller_port(self) -> int:
        """The gateway's relay port on the caller's leg."""
        return parse_sdp(self.answer.body).media[0].port

    @property
    def callee_port(self) -> int:
        """The gateway's relay port on the callee's leg."""
        return parse_sdp(self.incoming.body).media[0].port


async def establish(
    caller: Agent, callee: Agent, number: str = TRUNK_NUMBER, *, callee_allows_update: bool = True
) -> CallUp:
    """1001 calls `number` through the trunk; the callee answers; both ACKs arrive."""
    callee_since = callee.mark()
    invite = caller.peer.request("INVITE", from_user="1001", to_user=number, body=caller.sdp())
    invite.headers.set("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE")
    challenge = await caller.transact(invite)
    assert challenge.status == 407, _describe(challenge)
    invite = caller.peer.authorize(invite, challenge, "1001")
    since = caller.mark()
    await caller.peer.send(invite)
    incoming = await callee.wait_request("INVITE", since=callee_since)
    tag = new_tag()
    callee.dialog = Dialog.as_uas(incoming, tag, f"<{callee.contact}>")
    ok = make_response(incoming, 200, to_tag=tag)
    ok.headers.set("Contact", f"<{callee.contact}>")
    allow = "INVITE, ACK, BYE, CANCEL, OPTIONS" + (", UPDATE" if callee_allows_update else "")
    ok.headers.set("Allow", allow)
    ok.headers.set("Content-Type", "application/sdp")
    ok.body = callee.answer_to(incoming.body)
    callee.dialog.confirm()
    await callee.peer.send(ok)
    answer = await caller.wait_response(invite, since=since)
    assert answer.status == 200, _describe(answer)
    caller.dialog = Dialog.as_uac(invite, answer)
    await caller.ack(answer)
    await callee.wait_request("ACK", since=callee_since, call_id=incoming.call_id)
    return CallUp(invite, answer, incoming, ok)


async def hang_up(caller: Agent, callee: Agent) -> None:
    """The caller says BYE; the callee gets (and answers) the gateway's BYE."""
    since = callee.mark()
    response = await caller.transact(caller.in_dialog("BYE"))
    assert response.status == 200, _describe(response)
    await callee.wait_request("BYE", since=since)


async def cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """`edgegw ARGS` against `gw`, in a thread so the agents keep answering meanwhile."""
    return await trio.to_thread.run_sync(partial(gw.cli, *args))


async def cli_json(gw: GatewayProcess, *args: str) -> Any:
    done = await cli(gw, *args, "--json")
    assert done.returncode == 0, f"edgegw {' '.join(args)}: {done.returncode} {done.stderr}"
    return json.loads(done.stdout)


async def wait_for_cdrs(gw: GatewayProcess, count: int, timeout: float = 5.0) -> list[Any]:
    with trio.fail_after(timeout):
        while True:
            cdrs: list[Any] = await cli_json(gw, "cdr")
            if len(cdrs) >= count:
                return cdrs
            await trio.sleep(0.1)


def read_db(var_dir: Path, sql: str) -> list[sqlite3.Row]:
    """Rows straight from the gateway's SQLite file (read-only)."""
    uri = f"file:{var_dir / 'edgegw.sqlite'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as conn:
        conn.row_factory = sqlite3.Row
        return list(conn.execute(sql))


# ---- 1. re-INVITE hold/resume and UPDATE carried across ----------------------------------


def check_gateway_sdp(
    body: bytes, *, port: int, direction: str, after: SessionDescription
) -> SessionDescription:
    """SDP the gateway sent on a leg: its own address and port, the direction asked for, the
    same o= session as `after` with the next version."""
    sdp = parse_sdp(body)
    [media] = sdp.media
    connection = sdp.connection_of(media)
    assert connection is not None and connection.address == GATEWAY_MEDIA, body
    assert media.port == port, body
    assert sdp.direction_of(media) == direction, body
    assert sdp.origin.sess_id == after.origin.sess_id, body
    assert sdp.origin.sess_version == after.origin.sess_version + 1, body
    assert CALLER_MEDIA[0].encode() not in body and CALLEE_MEDIA[0].encode() not in body, body
    return sdp


async def reinvite(
    sender: Agent,
    receiver: Agent,
    method: str,
    direction: str,
    *,
    receiver_port: int,
    sender_port: int,
    receiver_last: SessionDescription,
    sender_last: SessionDescription,
) -> tuple[SessionDescription, SessionDescription]:
    """`sender` offers `direction` in a re-INVITE or UPDATE; check what each side sees.

    Returns the gateway's new SDP toward the receiver and toward the sender.
    """
    sender_since, receiver_since = sender.mark(), receiver.mark()
    assert receiver.dialog is not None
    request = sender.in_dialog(method, sender.sdp(direction))
    await sender.peer.send(request)
    carried = await receiver.wait_request(method, since=receiver_since)
    assert carried.call_id == receiver.dialog.call_id
    assert carried.to.tag == receiver.dialog.local_tag
    assert carried.headers.get("Contact"), "a target refresh request carries a Contact"
    toward_receiver = check_gateway_sdp(
        carried.body, port=receiver_port, direction=direction, after=receiver_last
    )
    response = await sender.wait_response(request, since=sender_since)
    assert response.status == 200, _describe(response)
    assert response.headers.get("Content-Type") == "application/sdp"
    toward_sender = check_gateway_sdp(
        response.body,
        port=sender_port,
        direction=_ANSWER_DIRECTION.get(direction, "sendrecv"),
        after=sender_last,
    )
    if method == "INVITE":
        ack = await receiver.wait_request("ACK", since=receiver_since, call_id=carried.call_id)
        assert ack.cseq.seq == carried.cseq.seq
        await sender.ack(response)
    return toward_receiver, toward_sender


async def test_hold_resume_and_update_are_carried_across(short_tmp: Path) -> None:
    sip_port = free_udp_port(also_tcp=True)
    async with two_agents(sip_port) as (caller, callee):
        with running(short_tmp, gateway_config(sip_port, callee.peer.local[1])) as gw:
            call = await establish(caller, callee)
            to_callee = parse_sdp(call.incoming.body)
            to_caller = parse_sdp(call.answer.body)
            assert call.caller_port != call.callee_port
            args = {"receiver_port": call.callee_port, "sender_port": call.caller_port}

            # Hold (RFC 3264 8.4), resume, then the same with UPDATE (RFC 3311 5.1).
            for method, direction in [
                ("INVITE", "sendonly"),
                ("INVITE", "sendrecv"),
                ("UPDATE", "sendonly"),
                ("UPDATE", "sendrecv"),
            ]:
                to_callee, to_caller = await reinvite(
                    caller,
                    callee,
                    method,
                    direction,
                    receiver_last=to_callee,
                    sender_last=to_caller,
                    **args,
                )

            # The callee's UPDATE goes the other way, with the caller leg's SDP.
            to_caller, to_callee = await reinvite(
                callee,
                caller,
                "UPDATE",
                "sendonly",
                receiver_port=call.caller_port,
                sender_port=call.callee_port,
                receiver_last=to_caller,
                sender_last=to_callee,
            )
            [active] = await cli_json(gw, "calls")
            assert active["state"] == "answered"
            # Each ACK of the caller stopped its 200 (T1 = 0.5 s: a lost ACK shows by now).
            await trio.sleep(0.7)
            oks = [
                m.cseq.seq
                for m in caller.log
                if isinstance(m, Response) and m.status == 200 and m.cseq.method == "INVITE"
            ]
            assert len(oks) == len(set(oks)) == 3, [_describe(m) for m in caller.log]

            await hang_up(caller, callee)
            [cdr] = await wait_for_cdrs(gw, 1)
            assert (cdr["disposition"], cdr["end_reason"]) == ("answered", "caller-bye")


# ---- 2. session timers (RFC 4028) ------------------------------------------------------------

SESSION_TIMER = "session_expires = 4\nmin_se = 2\nt1 = 0.1"
SESSION_EXPIRES = 4.0


async def test_session_timer_ends_a_call_whose_callee_vanished(short_tmp: Path) -> None:
    sip_port = free_udp_port(also_tcp=True)
    async with two_agents(sip_port) as (caller, callee):
        config = gateway_config(sip_port, callee.peer.local[1], sip=SESSION_TIMER)
        with running(short_tmp, config) as gw:
            call = await establish(caller, callee)
            assert (call.answer.headers.get("Session-Expires") or "").startswith("4;")
            assert (call.incoming.headers.get("Session-Expires") or "").startswith("4")
            since = caller.mark()
            vanished = trio.current_time()
            callee.vanish()

            # The refresh at half the interval gets no answer: the expiry (4 s) or
            # Timer F/B (64 * T1 = 6.4 s after the refresh) ends the call.
            bye = await caller.wait_request("BYE", since=since, timeout=12.0)
            took = trio.current_time() - vanished
            assert took < 2 + 6.4 + 1.5, f"BYE only after {took:.1f} s"
            assert bye.call_id == call.invite.call_id
            assert "Session" in (bye.headers.get("Reason") or ""), bye.headers.get("Reason")
            # The surviving caller was refreshed meanwhile and answered.
            assert caller.refreshes_answered >= 1

            [cdr] = await wait_for_cdrs(gw, 1)
            assert cdr["disposition"] == "answered"
            assert cdr["end_reason"] in ("session-refresh-failed", "session-timer-expired")
            assert cdr["caller_call_id"] == call.invite.call_id
            assert cdr["callee_call_id"] == call.incoming.call_id
            assert await cli_json(gw, "calls") == []


async def test_answered_refreshes_keep_the_call_up(short_tmp: Path) -> None:
    sip_port = free_udp_port(also_tcp=True)
    async with two_agents(sip_port) as (caller, callee):
        config = gateway_config(sip_port, callee.peer.local[1], sip=SESSION_TIMER)
        with running(short_tmp, config) as gw:
            # The callee does not allow UPDATE: it is refreshed with re-INVITEs (RFC 4028 9),
            # the caller with UPDATEs.
            call = await establish(caller, callee, callee_allows_update=False)
            started = trio.current_time()
            await trio.sleep_until(started + 2 * SESSION_EXPIRES + 0.5)

            [active] = await cli_json(gw, "calls")
            assert active["caller_call_id"] == call.invite.call_id
            assert active["callee_call_id"] == call.incoming.call_id
            assert active["state"] == "answered"
            # The gateway refreshes each leg at half the interval (RFC 4028 10).
            assert caller.refreshes_answered >= 3, caller.refreshes_answered
            assert callee.refreshes_answered >= 3, callee.refreshes_answered
            for agent, method in ((caller, "UPDATE"), (callee, "INVITE")):
                refreshes = [m for m in agent.log if is_in_dialog_request((method,))(m)]
                assert len(refreshes) == agent.refreshes_answered, [_describe(m) for m in agent.log]
                for refresh in refreshes:
                    assert isinstance(refresh, Request)
                    assert (refresh.headers.get("Session-Expires") or "").startswith("4")
            # Every refresh re-INVITE of the callee got its ACK (RFC 3261 13.2.2.4).
            invites = {m.cseq.seq for m in callee.log if is_in_dialog_request(("INVITE",))(m)}
            acks = {m.cseq.seq for m in callee.log if isinstance(m, Request) and m.method == "ACK"}
            assert invites <= acks, (invites, acks)
            assert not any(
                isinstance(m, Request) and m.method == "BYE" for m in caller.log + callee.log
            )

            await hang_up(caller, callee)
            [cdr] = await wait_for_cdrs(gw, 1)
            assert (cdr["disposition"], cdr["end_reason"]) == ("answered", "caller-bye")
            assert cdr["duration"] >= 2 * SESSION_EXPIRES


# ---- 3. kill -9 and restart ------------------------------------------------------------------

CHECKPOINT = "checkpoint_interval = 0.3"


async def test_restart_after_kill_closes_the_open_call_at_its_last_checkpoint(
    short_tmp: Path,
) -> None:
    sip_port = free_udp_port(also_tcp=True)
    async with two_agents(sip_port) as (caller, callee):
        config = gateway_config(sip_port, callee.peer.local[1], general=CHECKPOINT)
        with running(short_tmp, config) as gw:
            finished = await establish(caller, callee)
            await hang_up(caller, callee)
            [done] = await wait_for_cdrs(gw, 1)
            assert done["caller_call_id"] == finished.invite.call_id

            open_call = await establish(caller, callee)
            with trio.fail_after(5):
                while not read_db(gw.var_dir, "SELECT id FROM active_calls"):
                    await trio.sleep(0.05)
            await trio.sleep(1.0)  # a few more checkpoints
            gw.process.kill()
            await trio.to_thread.run_sync(gw.process.wait)
            killed_at = time.time()
        [row] = read_db(gw.var_dir, "SELECT * FROM active_calls")
        last_checkpoint = float(row["last_seen"])
        assert row["caller_call_id"] == open_call.invite.call_id
        assert killed_at - 1.0 < last_checkpoint <= killed_at

        await trio.sleep(1.0)  # the restart time must differ clearly from the checkpoint
        restarted_at = time.time()
        with running(short_tmp, config) as again:
            cdrs = await cli_json(again, "cdr")
            assert not read_db(again.var_dir, "SELECT id FROM active_calls")

    assert [c["id"] for c in cdrs].count(done["id"]) == 1
    assert len(cdrs) == 2, cdrs
    [recovered] = [c for c in cdrs if c["id"] != done["id"]]
    assert recovered["caller_call_id"] == open_call.invite.call_id
    assert recovered["callee_call_id"] == open_call.incoming.call_id
    assert (recovered["disposition"], recovered["end_reason"]) == ("answered", "gateway-restart")
    assert recovered["end"] == pytest.approx(last_checkpoint, abs=1e-6)
    assert recovered["end"] < restarted_at - 0.9
    assert recovered["answer"] is not None
    assert recovered["duration"] == pytest.approx(recovered["end"] - recovered["answer"], abs=0.01)


# ---- 4. SIGTERM --------------------------------------------------------------------------------


async def test_sigterm_says_bye_to_both_legs_and_writes_the_cdr(short_tmp: Path) -> None:
    sip_port = free_udp_port(also_tcp=True)
    async with two_agents(sip_port) as (caller, callee):
        with running(short_tmp, gateway_config(sip_port, callee.peer.local[1])) as gw:
            call = await establish(caller, callee)
            caller_since, callee_since = caller.mark(), callee.mark()
            gw.process.send_signal(signal.SIGTERM)
            to_caller = await caller.wait_request("BYE", since=caller_since)
            to_callee = await callee.wait_request("BYE", since=callee_since)
            code = await trio.to_thread.run_sync(partial(gw.process.wait, 10.0))
            assert code == 0, gw.stderr_text()[-3000:]

    assert to_caller.call_id == call.invite.call_id
    assert to_callee.call_id == call.incoming.call_id
    for bye in (to_caller, to_callee):
        assert "503" in (bye.headers.get("Reason") or ""), bye.headers.get("Reason")
    [cdr] = read_db(gw.var_dir, "SELECT * FROM cdrs")
    assert (cdr["disposition"], cdr["end_reason"]) == ("answered", "gateway-shutdown")
    assert cdr["caller_call_id"] == call.invite.call_id
    assert not read_db(gw.var_dir, "SELECT id FROM active_calls")


# ---- 5. the CLI's outside contract ------------------------------------------------------------


async def test_cli_against_a_running_gateway_and_after_it_stopped(short_tmp: Path) -> None:
    sip_port = free_udp_port(also_tcp=True)
    async with two_agents(sip_port) as (caller, callee):
        with running(short_tmp, gateway_config(sip_port, callee.peer.local[1])) as gw:
            status = await cli_json(gw, "status")
            assert status["version"] == __version__
            assert (status["registrations"], status["active_calls"]) == (0, 0)

            first = await establish(caller, callee)
            await hang_up(caller, callee)
            second = await establish(caller, callee)
            await hang_up(caller, callee)
            await wait_for_cdrs(gw, 2)
            live = await establish(caller, callee)

            assert (await cli_json(gw, "status"))["active_calls"] == 1
            [call] = await cli_json(gw, "calls")
            assert call["caller_call_id"] == live.invite.call_id
            assert call["callee_call_id"] == live.incoming.call_id
            assert (call["caller"], call["callee"], call["route"]) == (
                "1001",
                TRUNK_NUMBER,
                "trunk",
            )
            [latest] = await cli_json(gw, "cdr", "--limit", "1")
            assert latest["caller_call_id"] == second.invite.call_id
            every = await cli_json(gw, "cdr")
            assert [c["caller_call_id"] for c in every] == [
                second.invite.call_id,
                first.invite.call_id,
            ]

            for command, expected in [
                ("status", "edgegw status"),
                ("calls", call["id"]),
                ("cdr", latest["id"]),
            ]:
                table = await cli(gw, command)
                assert table.returncode == 0, table.stderr
                assert expected in table.stdout, table.stdout
            await hang_up(caller, callee)

    for command in ("status", "calls", "cdr"):
        for extra in ((), ("--json",)):
            gone = await cli(gw, command, *extra)
            assert gone.returncode == 3, (command, gone.returncode, gone.stderr)
            assert "gateway not running" in gone.stderr
            assert gone.stdout == ""


BAD_CONFIG = """
[general]
var_dir = "{var_dir}"
[sip]
listen = [{{ transport = "udp", host = "127.0.0.1", port = {port} }}]
[media]
port_min = 20001
"""
BAD_REASON = "media.port_min: must be even (RTP takes even ports), got 20001"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=30, env=env, check=False
    )


def test_config_check_names_file_key_and_reason(short_tmp: Path) -> None:
    bad = short_tmp / "bad.toml"
    bad.write_text(BAD_CONFIG.format(var_dir=short_tmp / "var", port=free_udp_port()))
    checked = run_cli("config", "check", str(bad), cwd=short_tmp)
    assert checked.returncode == 1, checked
    assert f"{bad}: {BAD_REASON}" in checked.stderr

    good = short_tmp / "good.toml"
    good.write_text(gateway_config(free_udp_port(), 5080).replace("{var_dir}", "var"))
    checked = run_cli("config", "check", str(good), cwd=short_tmp)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == f"{good}: ok"


def _udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_run_with_a_bad_config_exits_1_without_binding(short_tmp: Path) -> None:
    port = free_udp_port()
    bad = short_tmp / "bad.toml"
    var_dir = short_tmp / "var"
    bad.write_text(BAD_CONFIG.format(var_dir=var_dir, port=port))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    process = subprocess.Popen(
        [*CLI, "run", "--config", str(bad)],
        cwd=short_tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    bound_seen = False
    deadline = time.monotonic() + 20
    while process.poll() is None and time.monotonic() < deadline:
        bound_seen = bound_seen or not _udp_port_free(port)
        time.sleep(0.005)
    stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 1, (stdout, stderr)
    assert f"{bad}: {BAD_REASON}" in stderr
    assert not bound_seen, f"port {port} was bound by a gateway with a bad config"
    assert _udp_port_free(port)
    assert not var_dir.exists(), "a refused config must not create the var dir"


# ---- 6. the embedded demo ---------------------------------------------------------------------


def _demo_ports_free() -> str | None:
    """Why the demo cannot start here, or None."""
    for kind, name in ((socket.SOCK_DGRAM, "UDP"), (socket.SOCK_STREAM, "TCP")):
        with socket.socket(socket.AF_INET, kind) as probe:
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", 5060))
            except OSError as exc:
                return f"127.0.0.1:5060/{name} is taken ({exc.strerror}); the demo needs it"
    return None


def test_run_without_config_serves_the_loopback_demo(short_tmp: Path) -> None:
    busy = _demo_ports_free()
    if busy is not None:
        pytest.skip(busy)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    output = short_tmp / "demo.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [*CLI, "run"],
            cwd=short_tmp,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        answer = None
        deadline = time.monotonic() + 20
        while answer is None and time.monotonic() < deadline:
            if process.poll() is not None:
                log = output.read_text(errors="replace")
                if "Address already in use" in log:
                    pytest.skip(f"127.0.0.1:5060 was taken while the demo started:\n{log[-500:]}")
                pytest.fail(f"the demo exited with {process.returncode}:\n{log[-3000:]}")
            answer = sip_ping("127.0.0.1", 5060, timeout=0.2)
        assert answer == "SIP/2.0 200 OK", output.read_text(errors="replace")[-3000:]
        var = short_tmp / "var"
        assert (var / "edgegw.sqlite").is_file()
        control = var / "control.sock"
        deadline = time.monotonic() + 5
        while not control.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert control.is_socket()
        # No --socket: the CLI finds ./var/control.sock from the same directory.
        status = run_cli("status", "--json", cwd=short_tmp)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["sip_listen"][:1] == ["udp:127.0.0.1:5060"]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert process.returncode == 0, output.read_text(errors="replace")[-3000:]
