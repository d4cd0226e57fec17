"""The operations commands of `edgegw` against a real gateway process with a real call up.

A sipp app caller (1001) calls a carrier number; a sipp carrier answers on the trunk and
echoes the RTP. With the call up, the real `edgegw` command is run (human and `--json`
output, exit codes): `status` (process, media, refusal and trunk figures), `calls` and
`calls --watch` (bounded by `--count`, and ended by SIGINT), `call show` (both legs),
`regs`, `trunks`, `drain` (a new INVITE gets 503 Draining, the call goes on) and
`call hangup`, after which both sipp peers have received their BYE. `trunk ping` is run
against a sipp peer that answers OPTIONS and a UDP socket that never answers.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.peers import REPO_ROOT, free_udp_port, sipp_binary
from tests.integration.test_calls import CARRIER_NUMBER, GATEWAY_HOST, TRUNK_NAME, Lab

pytestmark = pytest.mark.skipif(
    sipp_binary() is None, reason="sipp not on PATH (Debian package sip-tester)"
)

# The command as the gateway_process fixture runs it (python -m: no install needed).
EDGEGW = (sys.executable, "-m", "gateway.control.cli")
NOT_RUNNING_HINT = "gateway not running"
START_HINT = "start it with `edgegw run`"


def extra_trunks(pingable_port: int, silent_port: int) -> str:
    """Two more trunks for `trunk ping`; their prefix (999) keeps them out of the call's route."""
    return "".join(
        f"""
        [[trunks]]
        name = "{name}"
        host = "127.0.0.1"
        port = {port}
        prefixes = ["999"]
        """
        for name, port in (("pingable", pingable_port), ("silent", silent_port))
    )


@pytest.fixture
def lab() -> Iterator[Lab]:
    # Short: the control socket path under it must fit in 107 bytes.
    with tempfile.TemporaryDirectory(prefix="egw-") as name, contextlib.ExitStack() as stack:
        yield Lab(Path(name), stack)


@pytest.fixture
def silent_peer() -> Iterator[socket.socket]:
    """A bound UDP socket that reads nothing and answers nothing."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock


def edgegw(lab: Lab, *args: str, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    return lab.gw.cli(*args, timeout=timeout)


def as_json(lab: Lab, *args: str) -> Any:
    done = edgegw(lab, *args, "--json")
    assert done.returncode == 0, f"edgegw {' '.join(args)}: {done.stderr}"
    return json.loads(done.stdout)


def wait_until(check: Any, what: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def answered_call(lab: Lab) -> dict[str, Any]:
    def one_answered() -> dict[str, Any] | None:
        calls: list[dict[str, Any]] = as_json(lab, "calls")
        return calls[0] if len(calls) == 1 and calls[0]["state"] == "answered" else None

    call: dict[str, Any] = wait_until(one_answered, "the call answered")
    return call


def invite_while_draining(lab: Lab) -> str:
    """A bare INVITE from a new source; the status line the gateway answers it with."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(3.0)
        port = sock.getsockname()[1]
        invite = (
            f"INVITE sip:{CARRIER_NUMBER}@{lab.remote} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-drain-1;rport\r\n"
            f"From: <sip:1001@{GATEWAY_HOST}>;tag=drain1\r\n"
            f"To: <sip:{CARRIER_NUMBER}@{GATEWAY_HOST}>\r\n"
            "Call-ID: drain-test-1\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:1001@127.0.0.1:{port}>\r\n"
            "Max-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.sendto(invite.encode(), ("127.0.0.1", lab.sip_port))
        while True:
            data = sock.recv(65535).decode("utf-8", "replace")
            status_line = data.split("\r\n", 1)[0]
            if not status_line.startswith("SIP/2.0 100"):
                return status_line


def test_status_calls_show_drain_and_hangup_on_a_live_call(
    lab: Lab, silent_peer: socket.socket
) -> None:
    lab.start_gateway(extra=extra_trunks(free_udp_port(), silent_peer.getsockname()[1]))
    registered_port = free_udp_port()
    lab.register("1002", registered_port)
    carrier = lab.carrier(rtp_echo=True)
    uac = lab.caller("uac_call_wait_bye", CARRIER_NUMBER, timeout=30)
    uac.start()
    call = answered_call(lab)
    call_id = call["id"]

    # ---- status
    status = as_json(lab, "status")
    assert status["active_calls"] == 1 and status["registrations"] == 1
    assert status["draining"] is False and status["uptime"] >= 0
    cpu, memory = status["cpu"], status["memory"]
    assert cpu["user_seconds"] + cpu["system_seconds"] > 0.1, cpu
    assert cpu["percent"] is not None and 0 <= cpu["percent"] < 400, cpu
    assert cpu["window_seconds"] >= 0.25, cpu
    assert memory["rss_bytes"] > 10_000_000 and memory["peak_rss_bytes"] > 10_000_000, memory
    assert isinstance(status["media_drops"], dict)
    assert status["sip_refusals"] == {} and status["bans"] == 0
    assert status["banned_dropped"] == 0
    trunks = {row["name"]: row for row in status["trunks"]}
    assert set(trunks) == {TRUNK_NAME, "pingable", "silent"}
    assert trunks[TRUNK_NAME]["channels"] == 1 and trunks["silent"]["channels"] == 0
    assert trunks[TRUNK_NAME]["address"] == f"127.0.0.1:{lab.trunk_port}"
    assert [row["name"] for row in status["trunk_health"]] == [TRUNK_NAME, "pingable", "silent"]
    human = edgegw(lab, "status")
    assert human.returncode == 0, human.stderr
    for text in ("active_calls", "cpu.percent", "memory.rss_bytes", "draining", "trunks"):
        assert text in human.stdout, human.stdout
    assert f"127.0.0.1:{lab.trunk_port}" in human.stdout and "DRAINING" not in human.stdout

    # ---- calls, once and watched
    human = edgegw(lab, "calls")
    assert human.returncode == 0 and call_id in human.stdout, human.stdout
    watched = edgegw(lab, "calls", "--watch", "--interval", "0.2", "--count", "3")
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.count(call_id) == 3 and watched.stdout.count("Ctrl-C stops") == 3
    lines = edgegw(lab, "calls", "--watch", "--interval", "0.2", "--count", "2", "--json")
    assert lines.returncode == 0, lines.stderr
    assert [[c["id"] for c in json.loads(line)] for line in lines.stdout.splitlines()] == [
        [call_id],
        [call_id],
    ]
    assert edgegw(lab, "calls", "--count", "2").returncode == 2  # --count needs --watch
    watch_until_interrupted(lab, call_id)

    # ---- call show
    detail = as_json(lab, "call", "show", call_id)
    assert detail["id"] == call_id and detail["transcoding"] is False
    a, b = detail["legs"]["a"], detail["legs"]["b"]
    assert (a["role"], b["role"]) == ("caller", "callee")
    assert a["codec"] == b["codec"] == "PCMA/8000" and a["srtp"] == b["srtp"] == "none"
    assert b["remote"] == f"127.0.0.1:{carrier.media_port}"
    assert a["sip_call_id"] == call["caller_call_id"] and b["sip_call_id"] == call["callee_call_id"]
    assert lab.in_media_range(int(a["local"].rsplit(":", 1)[1]))
    echoed = wait_until(
        lambda: as_json(lab, "call", "show", call_id)["legs"]["b"]["packets_in"], "the echo"
    )
    assert echoed > 0
    # A relayed call whose peers send no RTCP (sipp here): no loss/jitter/RTT/MOS of it.
    for leg in (a, b):
        assert (leg["rtt_ms"], leg["jitter_ms"], leg["lost"], leg["mos"]) == (None,) * 4, leg
    human = edgegw(lab, "call", "show", call_id)
    assert human.returncode == 0, human.stderr
    for text in ("a (caller)", "b (callee)", "PCMA/8000", "packets in", "rtt ms", call_id):
        assert text in human.stdout, human.stdout

    unknown = edgegw(lab, "call", "show", "no-such-call")
    assert unknown.returncode == 1 and "no call in progress with id 'no-such-call'" in (
        unknown.stderr
    )
    assert unknown.stdout == ""
    assert edgegw(lab, "call", "hangup", "no-such-call").returncode == 1
    assert edgegw(lab, "call", "show").returncode == 2  # ID missing: usage

    # ---- regs and trunks
    (binding,) = as_json(lab, "regs")
    assert "1002" in binding["aor"] and binding["source"] == f"127.0.0.1:{registered_port}"
    assert binding["transport"] == "udp" and binding["expires_in"] > 0
    human = edgegw(lab, "regs")
    assert human.returncode == 0 and f"127.0.0.1:{registered_port}" in human.stdout
    rows = {row["name"]: row for row in as_json(lab, "trunks")}
    assert rows[TRUNK_NAME]["channels"] == 1 and rows[TRUNK_NAME]["health"] == "up"
    assert rows["pingable"]["registration"] is None and rows["pingable"]["max_channels"] is None
    human = edgegw(lab, "trunks")
    assert human.returncode == 0 and "pingable" in human.stdout and "silent" in human.stdout

    # ---- drain: new calls refused, the call in progress goes on
    drained = edgegw(lab, "drain")
    assert drained.returncode == 0 and "draining" in drained.stdout, drained.stderr
    assert as_json(lab, "status")["draining"] is True
    assert "DRAINING" in edgegw(lab, "status").stdout
    assert invite_while_draining(lab) == "SIP/2.0 503 Draining"
    status = as_json(lab, "status")
    assert status["sip_refusals"] == {"draining": 1} and status["active_calls"] == 1
    assert as_json(lab, "drain", "--off") == {"draining": False, "active_calls": 1}

    # ---- hangup: both peers get their BYE, the call is gone
    hung = edgegw(lab, "call", "hangup", call_id)
    assert hung.returncode == 0 and call_id in hung.stdout, hung.stderr
    called = uac.wait(timeout=10)
    assert called.ok, called.describe()
    behind_trunk = carrier.wait(timeout=10)
    assert behind_trunk.ok, behind_trunk.describe()
    assert called.received("BYE") and behind_trunk.received("BYE")
    assert as_json(lab, "calls") == []
    gone = edgegw(lab, "call", "show", call_id)
    assert gone.returncode == 1 and "no call in progress" in gone.stderr
    cdr = lab.wait_cdr()
    assert (cdr["id"], cdr["disposition"]) == (call_id, "answered"), cdr


def watch_until_interrupted(lab: Lab, call_id: str) -> None:
    """`calls --watch` with no count runs until SIGINT (Ctrl-C), then exits 0."""
    process = subprocess.Popen(
        [*EDGEGW, "--socket", str(lab.gw.control_socket), "calls", "--watch", "--interval", "0.2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        assert process.stdout is not None
        seen = ""
        while call_id not in seen:
            line = process.stdout.readline()
            assert line, "the watch ended by itself"
            seen += line
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=5) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_trunk_ping_answering_silent_and_unknown(lab: Lab, silent_peer: socket.socket) -> None:
    options = lab.sipp("uas_options", "options-peer", calls=2)
    lab.start_gateway(extra=extra_trunks(options.local_port, silent_peer.getsockname()[1]))
    options.start().wait_bound()

    answered = edgegw(lab, "trunk", "ping", "pingable")
    assert answered.returncode == 0, answered.stderr
    assert answered.stdout.startswith(
        f"trunk pingable: 200 from udp:127.0.0.1:{options.local_port} in "
    ), answered.stdout
    result = as_json(lab, "trunk", "ping", "pingable")
    assert result["alive"] is True and result["status"] == 200
    assert 0 < result["rtt_ms"] < 500, result

    started = time.monotonic()
    silent = edgegw(lab, "trunk", "ping", "silent")
    assert silent.returncode == 1, silent.stdout
    assert "trunk silent: no answer to OPTIONS (timeout)" in silent.stderr
    assert time.monotonic() - started < 5  # 10*T1 (T1 = 0.1 s in this config)
    silent_json = edgegw(lab, "trunk", "ping", "silent", "--json")
    assert silent_json.returncode == 1
    assert json.loads(silent_json.stdout)["error"] == "timeout"

    unknown = edgegw(lab, "trunk", "ping", "nowhere")
    assert unknown.returncode == 1
    assert f"known trunks: {TRUNK_NAME}, pingable, silent" in unknown.stderr
    assert options.wait(timeout=5).ok


@pytest.mark.parametrize(
    "args", [["call", "show", "x"], ["call", "hangup", "x"], ["regs"], ["trunks"], ["drain"]]
)
def test_not_running_exits_3_with_the_hint(args: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [*EDGEGW, "--socket", str(tmp_path / "none.sock"), *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=15,
        check=False,
    )
    assert done.returncode == 3
    assert NOT_RUNNING_HINT in done.stderr and START_HINT in done.stderr
