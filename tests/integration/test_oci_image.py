"""The OCI image: built by `./justw image-oci x86_64`, read by skopeo and umoci, run without
an engine.

The recipe builds (or reuses) the binary and writes dist/edgegw-x86_64.oci.tar; rebuilding it
from the same inputs must give the same bytes. `skopeo inspect` must see the platform, user,
entrypoint, ports, labels and health check; `umoci unpack` must give a runtime bundle whose
process runs as 5060 in /var/lib/edgegw, owned by that user. Then the image's entrypoint runs,
as a container engine would start it, in fresh PID and mount namespaces (chroot into the
unpacked root as uid/gid 5060, the image's environment, /proc and /dev mounted inside):

* on the image's own default config in a fresh network namespace too: it must come up
  unprovisioned (no subscribers, no trunks) and the image's health check command, run in the
  gateway's namespaces as `nsenter` (like `docker exec`), must succeed;
* on a test config put in place of /etc/edgegw/edgegw.toml, in the host's network namespace
  on loopback: sipp registers as the one subscriber and calls a number routed to a sipp UAS
  trunk, with RTP through the relay; the process must run as 5060 with no capabilities.

When dist/edgegw-aarch64.oci.tar exists, the multi-arch index is built from both and skopeo
must resolve each platform through it.

Needs root (umoci unpack keeps owners, unshare, chroot), skopeo, umoci, mmdebstrap and sipp;
without them it prints why and skips, except in CI (CI set), where that fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway import __version__
from images.oci.build import ENTRYPOINT, HEALTHCHECK, MEDIA_PORTS, UID
from images.oci.build import main as build_main
from tests.integration.peers import (
    GATEWAY_MEDIA_PORTS,
    REPO_ROOT,
    RtpPeer,
    SippRun,
    SipTrace,
    external_media,
    free_udp_port,
    sdp_media_address,
    sip_ping,
    sipp_binary,
)

ARCH = "x86_64"
IMAGE = REPO_ROOT / "dist" / f"edgegw-{ARCH}.oci.tar"
BUILD_TIMEOUT = 900.0
CALLEE = "+8613800138000"
START_TIMEOUT = 20.0


def _missing() -> str | None:
    """Why this test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root: umoci unpack keeps owners, unshare and chroot"
    for tool, package in (
        ("skopeo", "skopeo"),
        ("umoci", "umoci"),
        ("mmdebstrap", "mmdebstrap"),
        ("nsenter", "util-linux"),
    ):
        if shutil.which(tool) is None:
            return f"needs {tool} (Debian package {package}; ./justw test installs it)"
    if sipp_binary() is None:
        return "needs sipp (Debian package sip-tester)"
    return None


@dataclass(frozen=True)
class Bundle:
    """An unpacked image: umoci's runtime config and the root file system."""

    path: Path
    config: dict[str, Any]

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    @property
    def env(self) -> dict[str, str]:
        pairs = (item.split("=", 1) for item in self.config["process"]["env"])
        return {key: value for key, value in pairs}


@pytest.fixture(scope="module")
def image() -> Path:
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the OCI image test: {reason}")
        print(reason)
        pytest.skip(reason)
    started = time.monotonic()
    done = subprocess.run(
        [str(REPO_ROOT / "justw"), "image-oci", ARCH],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"./justw image-oci {ARCH} failed:\n{done.stderr[-6000:]}"
    print(f"{done.stdout.strip()} (recipe: {time.monotonic() - started:.1f} s)")
    return IMAGE


def _skopeo(*args: str) -> Any:
    done = subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"skopeo {' '.join(args)}: {done.stderr}"
    return json.loads(done.stdout)


@pytest.fixture
def bundle(image: Path, tmp_path: Path) -> Bundle:
    layout = tmp_path / "layout"
    layout.mkdir()
    subprocess.run(["tar", "-xf", str(image), "-C", str(layout)], check=True, timeout=60)
    target = tmp_path / "bundle"
    done = subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:edgegw", str(target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"umoci unpack: {done.stderr}"
    return Bundle(target, json.loads((target / "config.json").read_text()))


def test_the_same_inputs_give_the_same_archive(image: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.oci.tar"
    args = ["image", "--arch", ARCH, "--binary", str(REPO_ROOT / "dist" / f"edgegw-{ARCH}")]
    assert build_main([*args, "--out", str(again)]) == 0
    assert again.read_bytes() == image.read_bytes()


def test_skopeo_sees_platform_user_entrypoint_ports_and_health_check(image: Path) -> None:
    inspected = _skopeo("inspect", f"oci-archive:{image}")
    assert (inspected["Architecture"], inspected["Os"]) == ("amd64", "linux")
    labels = inspected["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert len(labels["org.opencontainers.image.revision"]) == 40, labels
    assert labels["io.edgegw.capabilities.required"] == ""
    assert len(inspected["Layers"]) == 2
    # --raw: the config blob as written; skopeo's parsed view drops Docker's Healthcheck.
    config = _skopeo("inspect", "--config", "--raw", f"oci-archive:{image}")["config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ENTRYPOINT
    assert config["WorkingDir"] == "/var/lib/edgegw"
    ports = set(config["ExposedPorts"])
    assert {"5060/udp", "5060/tcp", "5061/tcp", "8080/tcp"} <= ports
    media = {f"{port}/udp" for port in range(MEDIA_PORTS[0], MEDIA_PORTS[1] + 1)}
    assert media <= ports and len(ports) == 4 + len(media)
    assert config["Healthcheck"]["Test"] == ["CMD", *HEALTHCHECK]


def test_umoci_unpacks_a_bundle_running_as_the_image_user(bundle: Bundle) -> None:
    process = bundle.config["process"]
    assert process["user"]["uid"] == UID and process["user"]["gid"] == UID
    assert process["args"] == ENTRYPOINT
    assert process["cwd"] == "/var/lib/edgegw"
    root = bundle.rootfs
    assert f"edgegw:x:{UID}:{UID}:" in (root / "etc/passwd").read_text()
    state = (root / "var/lib/edgegw").stat()
    assert (state.st_uid, state.st_gid, state.st_mode & 0o777) == (UID, UID, 0o750)
    binary = (root / "usr/local/bin/edgegw").stat()
    assert binary.st_uid == 0 and binary.st_mode & 0o777 == 0o755
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    config = (root / "etc/edgegw/edgegw.toml").read_text()
    for provisioned in ("[[subscribers]]", "[[trunks]]", "[[partners]]", "password", "api_key"):
        assert provisioned not in config
    assert (root / "etc/ssl/certs/ca-certificates.crt").read_text().count("BEGIN CERT") > 100


# ---- running the entrypoint ---------------------------------------------------------------


@dataclass
class Running:
    """The entrypoint started in its own namespaces: `launcher` is the unshare process."""

    bundle: Bundle
    launcher: subprocess.Popen[bytes]
    log: Path

    def gateway_pids(self) -> list[int]:
        """Host PIDs of the image's binary under the launcher (bootloader and its child)."""
        binary = str(self.bundle.rootfs / "usr/local/bin/edgegw")
        found = []
        for pid in _descendants(self.launcher.pid):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/exe") == binary:
                    found.append(pid)
        return sorted(found)

    def exec(
        self, argv: Sequence[str], *, timeout: float = 20.0
    ) -> subprocess.CompletedProcess[str]:
        """`argv` in the gateway's namespaces, root and working directory, as the image's
        user with the image's environment: what `docker exec` does."""
        pids = self.gateway_pids()
        assert pids, f"gateway not running\n{self.output()}"
        command = ["nsenter", f"--target={pids[0]}", "--mount", "--pid", "--net"]
        command += ["--root", "--wd", f"--setuid={UID}", f"--setgid={UID}", *argv]
        return subprocess.run(
            command,
            env=self.bundle.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


# sh runs on the host side of the new namespaces: it mounts /proc (of the new PID namespace)
# and /dev into the root, then becomes the entrypoint through chroot.
_LAUNCH = 'mount -t proc proc "$ROOT/proc" && mount --rbind /dev "$ROOT/dev" && exec "$@"'


@contextlib.contextmanager
def entrypoint(bundle: Bundle, *, own_network: bool) -> Iterator[Running]:
    """The image's process (args, user, cwd, env of umoci's config.json) until the block
    ends: SIGTERM to it, the namespaces killed with their launcher after 10 s."""
    process = bundle.config["process"]
    user = f"{process['user']['uid']}:{process['user']['gid']}"
    chroot = ["chroot", f"--userspec={user}", str(bundle.rootfs), *process["args"]]
    namespaces = ["--pid", "--mount", "--fork", "--kill-child"] + (["--net"] if own_network else [])
    log = bundle.path / "gateway.log"
    env = {**bundle.env, "ROOT": str(bundle.rootfs), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    with log.open("wb") as out:
        launcher = subprocess.Popen(
            ["unshare", *namespaces, "sh", "-c", _LAUNCH, "launch", *chroot],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    running = Running(bundle, launcher, log)
    try:
        yield running
    finally:
        for pid in running.gateway_pids()[:1]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            launcher.wait(timeout=10)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
        print(f"---- gateway in the image (exit {launcher.returncode}) ----\n{running.output()}")


def _wait_for(running: Running, ready: Any, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < START_TIMEOUT:
        assert running.launcher.poll() is None, f"gateway exited:\n{running.output()}"
        if ready():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{what} within {START_TIMEOUT:g} s\n{running.output()}")


def _proc_status(pid: int) -> dict[str, str]:
    pairs = (line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: value.strip() for key, value in pairs}


def _assert_runs_as_image_user(running: Running) -> None:
    pids = running.gateway_pids()
    assert pids, running.output()
    for pid in pids:
        status = _proc_status(pid)
        assert status["Uid"].split() == [str(UID)] * 4, status
        assert status["Gid"].split() == [str(UID)] * 4, status
        assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == 0, status


def test_default_config_comes_up_unprovisioned_and_healthy(bundle: Bundle) -> None:
    socket = bundle.rootfs / "var/lib/edgegw/control.sock"
    with entrypoint(bundle, own_network=True) as running:
        took = _wait_for(running, socket.exists, "no control socket")
        print(f"control socket after {took:.1f} s")
        _assert_runs_as_image_user(running)
        health = running.exec(HEALTHCHECK)
        assert health.returncode == 0, f"{health.stdout}{health.stderr}\n{running.output()}"
        # No --config and no --socket: the image's EDGEGW_SOCKET finds the gateway.
        status = json.loads(running.exec(["edgegw", "status", "--json"]).stdout)
        assert status["sip_listen"] == ["udp:0.0.0.0:5060", "tcp:0.0.0.0:5060", "tls:0.0.0.0:5061"]
        assert status["media_ports_capacity"] > 0
        for listing in (["subscriber", "list"], ["trunks"]):
            done = running.exec(["edgegw", *listing, "--json"])
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout) == [], listing


def _call_config(sip_port: int, trunk_port: int, media_min: int) -> str:
    return f"""
[general]
var_dir = "/var/lib/edgegw"
[control]
socket = "/var/lib/edgegw/control.sock"
[sip]
listen = [{{ transport = "udp", host = "127.0.0.1", port = {sip_port} }}]
t1 = 0.1
t2 = 0.4
[media]
host = "127.0.0.1"
port_min = {media_min}
port_max = {media_min + 99}
[http]
listen = "127.0.0.1:{free_udp_port(also_tcp=True)}"
[[subscribers]]
username = "1001"
password = "pw-1001-image"
numbers = ["+8613900139001"]
balance = "10.00"
[[trunks]]
name = "carrier"
host = "127.0.0.1"
port = {trunk_port}
tariff_per_minute = "0.10"
"""


def _answered(trace: SipTrace) -> bool:
    return trace.direction == "received" and trace.status == 200 and trace.method == "INVITE"


def test_a_call_through_the_image_entrypoint(bundle: Bundle, tmp_path: Path) -> None:
    sip_port = free_udp_port(also_tcp=True)
    trunk_port = free_udp_port()
    media_min = random.randrange(*GATEWAY_MEDIA_PORTS, 100)
    (bundle.rootfs / "etc/edgegw/edgegw.toml").write_text(
        _call_config(sip_port, trunk_port, media_min)
    )
    work = tmp_path / "sipp"
    with contextlib.ExitStack() as stack:
        running = stack.enter_context(entrypoint(bundle, own_network=False))
        took = _wait_for(
            running, lambda: sip_ping("127.0.0.1", sip_port, 0.2) is not None, "no SIP answer"
        )
        print(f"first SIP answer after {took:.1f} s (cold start of the image's entrypoint)")
        _assert_runs_as_image_user(running)
        health = running.exec(HEALTHCHECK)
        assert health.returncode == 0, f"{health.stdout}{health.stderr}"

        carrier = SippRun(
            "carrier_uas", workdir=work, name="carrier", local_port=trunk_port, rtp_echo=True
        )
        stack.callback(carrier.kill)
        carrier.start().wait_bound()
        media = stack.enter_context(RtpPeer("127.0.0.2"))
        caller = SippRun(
            external_media("uac_call", work / "uac_ext.xml", media.address),
            workdir=work,
            name="caller",
            remote=f"127.0.0.1:{sip_port}",
            service=CALLEE,
            auth=("1001", "pw-1001-image"),
            keys={"caller": "1001"},
            duration_ms=2000,
            timeout=15,
        )
        stack.callback(caller.kill)
        caller.start()
        answer = caller.wait_for_message(_answered, timeout=10)
        relay = sdp_media_address(answer.body)
        assert relay[0] == "127.0.0.1" and media_min <= relay[1] < media_min + 100, answer.body
        media.send_stream(relay, count=40)
        assert media.wait_for(40, timeout=5), f"{media.received} RTP packets came back"
        called = caller.wait()
        assert called.ok, called.describe()
        behind = carrier.wait(timeout=5)
        assert behind.ok, behind.describe()
        (invite,) = behind.received("INVITE")
        assert invite.first_line.startswith(f"INVITE sip:{CALLEE}@127.0.0.1:{trunk_port} ")
