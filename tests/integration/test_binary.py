"""The single binary: built through `./justw binary x86_64`, run where there is no Python.

The binary (reused when `dist/edgegw-x86_64` is newer than every input; the recipe itself
decides) is copied into a minimal Debian 12 root without Python and run there through
chroot (images/binary/check.py): `--version`, then `edgegw run` on a small config whose
trunk is a sipp UAS on the host. sipp registers and authenticates as the subscriber and
calls a number routed to that trunk, with an RtpPeer as the app's media; the call must
complete both ways, media must come back through the relay, and the binary's own `cdr`
command, run in the same root, must show the answered call.

Needs root (chroot, unshare, mmdebstrap's root mode), mmdebstrap and sipp. Without them it
prints why and skips, except in CI (CI set): there a missing tool is a broken set-up and
fails the test.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from gateway import __version__
from images.binary.build import is_up_to_date
from images.binary.check import gateway_in_root, python_less_root, small_config, version_in_root
from tests.integration.peers import (
    GATEWAY_MEDIA_PORTS,
    REPO_ROOT,
    RtpPeer,
    SippRun,
    SipTrace,
    external_media,
    sdp_media_address,
    sipp_binary,
)

ARCH = "x86_64"
BINARY = REPO_ROOT / "dist" / f"edgegw-{ARCH}"
CALLEE = "+8613800138000"
BUILD_TIMEOUT = 900.0


def _missing() -> str | None:
    """Why this test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: chroot, unshare and mmdebstrap's root mode"
    if shutil.which("mmdebstrap") is None:
        return "needs mmdebstrap (Debian package mmdebstrap; ./justw test installs it)"
    if sipp_binary() is None:
        return "needs sipp (Debian package sip-tester)"
    return None


def _http_get(port: int, path: str) -> bytes:
    """The body of a GET on the gateway's HTTP listener (it may need a moment after SIP)."""
    deadline = time.monotonic() + 10.0
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as reply:
                body: bytes = reply.read()
                return body
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _invite_answered(trace: SipTrace) -> bool:
    return trace.direction == "received" and trace.status == 200 and trace.method == "INVITE"


@pytest.fixture(scope="module")
def binary() -> Path:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the single-binary test: {reason}")
        print(reason)
        pytest.skip(reason)
    done = subprocess.run(
        [str(REPO_ROOT / "justw"), "binary", ARCH],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"./justw binary {ARCH} failed:\n{done.stderr[-6000:]}"
    print(done.stderr.strip().rpartition("\n")[2])
    return BINARY


@pytest.mark.root
def test_binary_runs_without_python_and_places_a_call(binary: Path) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="egw-bin-") as short,
        python_less_root(ARCH, binary) as root,
    ):
        tmp = Path(short)
        assert version_in_root(root) == f"edgegw {__version__}"

        carrier = SippRun("carrier_uas", workdir=tmp, name="carrier", timeout=30, rtp_echo=True)
        config = small_config(
            trunk_port=carrier.local_port, media_min=random.randrange(*GATEWAY_MEDIA_PORTS, 100)
        )
        remote = f"127.0.0.1:{config.sip_port}"
        auth = (config.user, config.password)
        with (
            carrier,
            gateway_in_root(root, config) as gateway,
            RtpPeer() as app_media,
        ):
            print(f"cold start to first SIP answer: {gateway.cold_start:.2f} s")
            # The package's data file came along: the partner API serves it from the bundle.
            served = _http_get(config.http_port, "/v1/openapi.yaml")
            assert served == (REPO_ROOT / "gateway/control/openapi.yaml").read_bytes()
            with SippRun(
                "register", workdir=tmp, remote=remote, service=config.user, auth=auth
            ) as register:
                registered = register.wait()
            assert registered.ok, registered.describe() + gateway.output_text()[-3000:]

            carrier.wait_bound()
            with SippRun(
                external_media("uac_call", tmp / "uac_ext.xml", app_media.address),
                workdir=tmp,
                name="uac",
                remote=remote,
                timeout=20,
                service=CALLEE,
                keys={"caller": config.user},
                auth=auth,
                duration_ms=2000,
            ) as uac:
                answer = uac.wait_for_message(
                    lambda t: (
                        t.direction == "received" and t.status == 200 and t.method == "INVITE"
                    ),
                    timeout=10,
                )
                app_media.send_stream(sdp_media_address(answer.body), count=40)
                assert app_media.wait_for(40, timeout=5), f"{app_media.received} of 40 came back"
                called = uac.wait()
            assert called.ok, called.describe() + gateway.output_text()[-3000:]
            behind_trunk = carrier.wait(timeout=10)
            assert behind_trunk.ok, behind_trunk.describe()

            listed = gateway.cli("cdr", "--json")
            assert listed.returncode == 0, listed.stderr
            cdrs = json.loads(listed.stdout)
            assert [(c["callee"], c["trunk"], c["disposition"]) for c in cdrs] == [
                (CALLEE, "carrier", "answered")
            ], cdrs
            assert cdrs[0]["duration"] > 1.0, cdrs


def test_reuse_check_compares_the_binary_with_every_input(tmp_path: Path) -> None:
    """A binary older than a source is rebuilt, a newer one reused, a missing one built."""
    built = tmp_path / "edgegw"
    assert not is_up_to_date(built)
    built.write_bytes(b"")
    newest = max(
        path.stat().st_mtime
        for path in (REPO_ROOT / "gateway").rglob("*.py")
        if "__pycache__" not in path.parts
    )
    os.utime(built, (newest - 1, newest - 1))
    assert not is_up_to_date(built)
    os.utime(built, (time.time() + 60, time.time() + 60))
    assert is_up_to_date(built)
