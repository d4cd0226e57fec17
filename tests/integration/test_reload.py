"""Config reload against the real `edgegw run`: `edgegw config reload` and SIGHUP.

The gateway runs on a file (peers.gateway_process) which the test rewrites, then asks for a
reload. Covered: live changes (a new subscriber who can then register, a limit that refuses
the next call, a new trunk in the status) applied while a call is up, whose media keeps
flowing both ways and which then ends normally with its CDR; an invalid file and a
restart-only change (sip.listen) refused with file, key and reason, exit 1, the running
config kept; SIGHUP applying a file, and refusing a bad one without stopping, with
RELOADING=1 then READY=1 on a NOTIFY_SOCKET path of the test's own.
"""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path

import pytest
import trio

from gateway.sip.message import Response
from tests.integration.peers import GatewayProcess, RtpPeer, free_udp_port, sip_ping
from tests.integration.sipclient import UdpPeer
from tests.integration.test_lifecycle import (
    CALLEE_MEDIA,
    CALLER_MEDIA,
    TRUNK_NUMBER,
    cli,
    cli_json,
    establish,
    gateway_config,
    hang_up,
    running,
    two_agents,
    wait_for_cdrs,
)
from tests.integration.test_systemd_notify import NotifyListener

NEW_SUBSCRIBER = """
[[subscribers]]
username = "1003"
password = "demo1003"
numbers = ["+8613900139003"]
balance = "10.00"
"""


def new_trunk(port: int) -> str:
    return f"""
[[trunks]]
name = "carrier2"
host = "127.0.0.1"
port = {port}
prefixes = ["99"]
"""


async def register(peer: UdpPeer, user: str, password: str) -> Response:
    request = peer.request("REGISTER", from_user=user, to_user=user, extra=[("Expires", "60")])
    challenge = await peer.transact(request)
    if challenge.status != 401:
        return challenge
    return await peer.transact(peer.authorize(request, challenge, user, password=password))


def rewrite(gw: GatewayProcess, text: str) -> None:
    gw.config_path.write_text(text, encoding="utf-8")


async def media_round_trip(caller: RtpPeer, toward: int, count: int, total: int) -> None:
    """`count` packets from the caller's media to the gateway's port on its leg, echoed by
    the callee's media: the caller has `total` back in the end."""
    caller.send_stream(("127.0.0.1", toward), count)
    assert await caller.wait_for_async(total, timeout=5.0), caller.received


async def test_live_reload_keeps_the_call_up(short_tmp: Path) -> None:
    sip_port = free_udp_port(also_tcp=True)
    async with two_agents(sip_port) as (caller, callee):
        original = gateway_config(sip_port, callee.peer.local[1])
        with (
            running(short_tmp, original) as gw,
            RtpPeer(*CALLER_MEDIA) as caller_media,
            RtpPeer(*CALLEE_MEDIA, echo=True),
        ):
            call = await establish(caller, callee)
            await media_round_trip(caller_media, call.caller_port, 25, 25)
            [before] = await cli_json(gw, "calls")
            call_id = before["id"]

            other = await UdpPeer.open(("127.0.0.1", sip_port), host="127.0.0.1")
            try:
                refused = await register(other, "1003", "demo1003")
                assert refused.status in (401, 403), refused.status

                base = gw.config_path.read_text()
                extra = NEW_SUBSCRIBER + new_trunk(free_udp_port()) + "[limits]\nmax_calls = 1\n"
                rewrite(gw, base + extra)
                result = await cli_json(gw, "config", "reload")
                assert result["applied"] is True
                assert result["file"] == str(gw.config_path)
                assert set(result["changed"]) == {"subscribers", "trunks", "limits.max_calls"}

                # The call goes on: media both ways, listed, then ends normally.
                await media_round_trip(caller_media, call.caller_port, 25, 50)
                [listed] = await cli_json(gw, "calls")
                assert listed["id"] == call_id

                # New calls see the new config: 1003 registers, max_calls = 1 refuses.
                assert (await register(other, "1003", "demo1003")).status == 200
                second = other.invite("1002", TRUNK_NUMBER)
                answer = await other.with_auth(second, "1002")
                assert (answer.status, answer.reason) == (503, "Too Many Calls")
                status = await cli_json(gw, "status")
                assert "carrier2" in {t["name"] for t in status["trunks"]}
            finally:
                other.close()

            await hang_up(caller, callee)
            [cdr] = await wait_for_cdrs(gw, 1)
        assert cdr["caller_call_id"] == call.invite.call_id
        assert (cdr["disposition"], cdr["end_reason"]) == ("answered", "caller-bye"), cdr


async def test_bad_and_restart_only_configs_are_refused(short_tmp: Path) -> None:
    sip_port = free_udp_port(also_tcp=True)
    with running(short_tmp, gateway_config(sip_port, free_udp_port())) as gw:
        base = gw.config_path.read_text()

        rewrite(gw, base + "[limits]\nmax_calls = 0\n")
        done = await cli(gw, "config", "reload")
        assert done.returncode == 1, done
        assert f"{gw.config_path}: limits.max_calls: must be at least 1" in done.stderr

        rewrite(gw, base + "[limits\n")
        done = await cli(gw, "config", "reload")
        assert done.returncode == 1 and "TOML syntax error" in done.stderr, done

        moved = base.replace(f"port = {sip_port} }}", f"port = {free_udp_port()} }}")
        assert moved != base
        rewrite(gw, moved + NEW_SUBSCRIBER)
        done = await cli(gw, "config", "reload")
        assert done.returncode == 1, done
        assert "sip.listen[0].port: changes only with a restart" in done.stderr, done.stderr

        # Nothing of the refused files was applied: same port, no 1003.
        assert (sip_ping("127.0.0.1", sip_port) or "").startswith("SIP/2.0 200")
        peer = await UdpPeer.open(("127.0.0.1", sip_port), host="127.0.0.1")
        try:
            assert (await register(peer, "1003", "demo1003")).status != 200
        finally:
            peer.close()

        rewrite(gw, base)
        done = await cli(gw, "config", "reload")
        assert done.returncode == 0, done
        assert done.stdout.strip() == f"{gw.config_path}: no change"


async def test_sighup_reloads_and_tells_systemd(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notify_path = short_tmp / f"n{secrets.token_hex(3)}.sock"
    listener = NotifyListener(str(notify_path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    sip_port = free_udp_port(also_tcp=True)
    try:
        with running(short_tmp, gateway_config(sip_port, free_udp_port())) as gw:
            await trio.to_thread.run_sync(listener.wait_for, "READY", 10.0)
            base = gw.config_path.read_text()

            # A bad file: refused, logged, the gateway serves on.
            rewrite(gw, base + "[limits]\nmax_calls = 0\n")
            os.kill(gw.process.pid, signal.SIGHUP)
            with trio.fail_after(5):
                while "config reload refused" not in gw.stderr_text():
                    await trio.sleep(0.05)
            assert gw.process.poll() is None
            assert "limits.max_calls: must be at least 1" in gw.stderr_text()

            rewrite(gw, base + NEW_SUBSCRIBER)
            os.kill(gw.process.pid, signal.SIGHUP)
            peer = await UdpPeer.open(("127.0.0.1", sip_port), host="127.0.0.1")
            try:
                with trio.fail_after(5):
                    while (await register(peer, "1003", "demo1003")).status != 200:
                        await trio.sleep(0.1)
            finally:
                peer.close()
        names = [next(iter(n.fields)) for n in listener.snapshot()]
        # READY at start; RELOADING then READY for each SIGHUP (refused or not); STOPPING.
        assert names == ["READY", "RELOADING", "READY", "RELOADING", "READY", "STOPPING"], names
        reloading = [n for n in listener.snapshot() if "RELOADING" in n.fields]
        assert all(int(n.fields["MONOTONIC_USEC"]) > 0 for n in reloading)
    finally:
        listener.close()
