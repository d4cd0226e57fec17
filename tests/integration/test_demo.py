"""The embedded default shows issue 4's call logic (DESIGN.md, outside contract).

`edgegw run` with no config, as `./justw run` starts it, inside a network namespace of
its own, so its fixed loopback ports (SIP 5060, HTTP 8080, demo-carrier 5080) are free
whatever else runs on the machine. The demo carrier is sipp on 127.0.0.1:5080; the
partner is a real HTTP client with the demo key.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.netns import Namespace, Topology
from tests.integration.peers import REPO_ROOT, SippRun, sip_ping

API = "http://127.0.0.1:8080"
DEMO = {"Authorization": "Bearer demo-key"}
A, B = "+8613800138000", "+8613800138001"


@pytest.fixture
def demo(topology: Topology, short_tmp: Path) -> Iterator[Namespace]:
    """The namespace, this thread inside it, the demo gateway running in `short_tmp`."""
    namespace = topology.namespace("demo")
    with namespace.entered():
        log = (short_tmp / "gateway.log").open("wb")
        gateway = subprocess.Popen(
            [sys.executable, "-m", "gateway.control.cli", "run"],
            cwd=short_tmp,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        )
        try:
            deadline = time.monotonic() + 20
            while sip_ping("127.0.0.1", 5060, timeout=0.2) is None:
                assert gateway.poll() is None, (short_tmp / "gateway.log").read_text()
                assert time.monotonic() < deadline, "the demo gateway did not answer SIP"
            yield namespace
        finally:
            gateway.terminate()
            gateway.wait(timeout=10)
            log.close()
            print((short_tmp / "gateway.log").read_text()[-6000:], file=sys.stderr)


def cli_json(tmp: Path, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.control.cli", *args, "--json"],
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=15,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_state(client: httpx.Client, call_id: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        body: dict[str, Any] = client.get(f"/v1/calls/{call_id}").json()
        if body["state"] == state:
            return body
        assert time.monotonic() < deadline, f"call never reached {state}: {body}"
        time.sleep(0.1)


def test_the_demo_carries_fallback_click_to_call_and_bindings(
    demo: Namespace, short_tmp: Path
) -> None:
    carrier = SippRun(
        "carrier_uas", workdir=short_tmp, name="carrier", local_port=5080, calls=3, timeout=30
    )
    with carrier:  # the with block starts it
        carrier.wait_bound()
        # 1001 calls 1002, who is not registered: out on demo-carrier to 1002's number.
        caller = SippRun(
            "uac_call",
            workdir=short_tmp,
            name="caller",
            remote="127.0.0.1:5060",
            service="1002",
            auth=("1001", "demo1001"),
            keys={"caller": "1001"},
            duration_ms=300,
            timeout=15,
        )
        with caller:
            called = caller.wait()
            assert called.ok, called.describe()
        with httpx.Client(base_url=API, headers=DEMO, trust_env=False) as client:
            created = client.post("/v1/calls", json={"from": A, "to": B})
            assert created.status_code == 201, created.text
            call_id = created.json()["id"]
            wait_state(client, call_id, "bridged")
            assert client.delete(f"/v1/calls/{call_id}").status_code == 200
            assert wait_state(client, call_id, "ended")["cause"] == "api-delete"
            bound = client.post("/v1/bindings", json={"a": A, "b": B, "ttl_s": 60})
            assert bound.status_code == 201, bound.text
            assert bound.json()["number"].startswith("+86170000000")
            assert httpx.post(f"{API}/v1/calls", json={"from": A, "to": B}).status_code == 401
            bad = client.post("/v1/calls", json={"from": A, "to": "call me"})
            assert bad.status_code == 400 and bad.json()["field"] == "to", bad.text
        done = carrier.wait(timeout=15)
        assert done.ok, done.describe()
    invites = [t.first_line for t in done.received("INVITE")]
    assert "INVITE sip:+8613900139002@127.0.0.1:5080 SIP/2.0" in invites
    assert f"INVITE sip:{A}@127.0.0.1:5080 SIP/2.0" in invites
    assert f"INVITE sip:{B}@127.0.0.1:5080 SIP/2.0" in invites
    records = {c["route"]: c for c in cli_json(short_tmp, "cdr")}
    assert records["fallback"]["callee"] == "+8613900139002"
    assert records["fallback"]["payer"] == "subscriber:1001"
    assert records["click-to-call"]["payer"] == "partner:demo"
