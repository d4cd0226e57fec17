"""Check that `dist/edgegw-ARCH` runs on a Debian 12 system without Python.

Usage: `python images/binary/check.py ARCH` (part of `./justw image-test`; the x86_64 call
test is tests/integration/test_binary.py, which uses the pieces here).

A minimal root file system (`mmdebstrap --variant=essential bookworm`, cached) is unpacked,
checked to hold no python3, and given the binary; the binary then runs inside it through
chroot (rootfs.chroot_command), for aarch64 under qemu-user. Since chroot keeps the host's
network namespace, the gateway inside listens on the host's loopback and peers on the host
(sipp) reach it. The cold start is the time from starting the process to the first answer
to a SIP OPTIONS, polled every 10 ms; in one-file mode it includes unpacking the bundle.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from images.binary.rootfs import (  # noqa: E402
    RootfsError,
    check_arch,
    chroot_command,
    chroot_env,
    missing_tools,
    remove_root,
    rootfs_tarball,
    run_in_root,
    temporary_root,
    unpack,
)
from tests.integration.peers import free_udp_port, sip_ping  # noqa: E402

BINARY_IN_ROOT = "/usr/local/bin/edgegw"
CONFIG_IN_ROOT = "/etc/edgegw/edgegw.toml"
VAR_IN_ROOT = "/var/lib/edgegw"
POLL_INTERVAL = 0.01


class CheckError(RuntimeError):
    """The binary did not behave in the rootfs; the message says what it did instead."""


@contextlib.contextmanager
def python_less_root(arch: str, binary: Path) -> Iterator[Path]:
    """An unpacked essential Debian 12 root of `arch` holding `binary` as BINARY_IN_ROOT and
    no Python; removed when the block ends."""
    tarball = rootfs_tarball(check_arch(arch))
    root = temporary_root(f"run-{arch}-")
    try:
        unpack(tarball, root)
        pythons = [p for p in ("usr/bin/python3", "usr/bin/python3.11") if (root / p).exists()]
        if pythons:
            raise CheckError(f"{tarball.name} holds {', '.join(pythons)}: not a Python-less root")
        target = root / BINARY_IN_ROOT.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, target)
        yield root
    finally:
        remove_root(root)


@dataclass(frozen=True)
class SmallConfig:
    """What the test config of `gateway_config` puts where."""

    sip_port: int
    http_port: int
    trunk_port: int
    media_min: int
    user: str = "1001"
    password: str = "demo1001"
    number: str = "+8613900139001"

    def text(self) -> str:
        return f"""
[general]
var_dir = "{VAR_IN_ROOT}"
[sip]
listen = [{{ transport = "udp", host = "127.0.0.1", port = {self.sip_port} }}]
[media]
host = "127.0.0.1"
port_min = {self.media_min}
port_max = {self.media_min + 99}
[http]
listen = "127.0.0.1:{self.http_port}"
[[subscribers]]
username = "{self.user}"
password = "{self.password}"
numbers = ["{self.number}"]
balance = "100.00"
[[trunks]]
name = "carrier"
host = "127.0.0.1"
port = {self.trunk_port}
tariff_per_minute = "0.10"
"""


def small_config(trunk_port: int, media_min: int = 10000) -> SmallConfig:
    return SmallConfig(
        sip_port=free_udp_port(also_tcp=True),
        http_port=free_udp_port(also_tcp=True),
        trunk_port=trunk_port,
        media_min=media_min,
    )


@dataclass
class RunningGateway:
    """`edgegw run` inside a root, and the host-side paths of its files."""

    root: Path
    process: subprocess.Popen[bytes]
    config: SmallConfig
    cold_start: float
    output: Path

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """The binary's own CLI run in the same root, on the gateway's control socket."""
        return run_in_root(
            self.root,
            [BINARY_IN_ROOT, "--socket", f"{VAR_IN_ROOT}/control.sock", *args],
            timeout=timeout,
            check=False,
        )

    def output_text(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")


def version_in_root(root: Path, timeout: float = 120.0) -> str:
    """The first line `edgegw --version` prints inside `root`."""
    done = run_in_root(root, [BINARY_IN_ROOT, "--version"], timeout=timeout)
    return done.stdout.strip()


@contextlib.contextmanager
def gateway_in_root(
    root: Path, config: SmallConfig, *, startup_timeout: float = 60.0
) -> Iterator[RunningGateway]:
    """Start the binary's `run` in `root`; yields once it answered SIP OPTIONS, with the
    measured cold start; SIGTERM (then SIGKILL) at the end."""
    config_file = root / CONFIG_IN_ROOT.lstrip("/")
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(config.text(), encoding="utf-8")
    output = root / "gateway.log"
    with output.open("wb") as sink:
        started = time.monotonic()
        process = subprocess.Popen(
            chroot_command(root, [BINARY_IN_ROOT, "run", "--config", CONFIG_IN_ROOT]),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=chroot_env(),
        )
    try:
        cold_start = _first_sip_answer(process, config.sip_port, started, startup_timeout, output)
        yield RunningGateway(root, process, config, cold_start, output)
    finally:
        _stop(process)


def _first_sip_answer(
    process: subprocess.Popen[bytes], port: int, started: float, timeout: float, output: Path
) -> float:
    deadline = started + timeout
    while True:
        if process.poll() is not None:
            text = output.read_text(errors="replace")[-4000:]
            raise CheckError(f"gateway exited with {process.returncode} before answering:\n{text}")
        tick = time.monotonic()
        if sip_ping("127.0.0.1", port, timeout=POLL_INTERVAL) is not None:
            return time.monotonic() - started
        if tick > deadline:
            raise CheckError(f"no SIP answer on 127.0.0.1:{port} within {timeout:g} s")
        time.sleep(max(0.0, POLL_INTERVAL - (time.monotonic() - tick)))


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            # Field 4 of /proc/PID/stat is the parent pid (after the command in parentheses).
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (the one-file bootloader forwards it to the gateway), then SIGKILL to the
    bootloader and the gateway it started, which would otherwise be left behind."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15.0)
        return
    except subprocess.TimeoutExpired:
        pass
    for child in _children(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    process.kill()
    process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run dist/edgegw-ARCH in a Python-less root.")
    parser.add_argument("arch", help="x86_64 or aarch64")
    options = parser.parse_args(argv)
    binary = REPO_ROOT / "dist" / f"edgegw-{options.arch}"
    if not binary.is_file():
        print(f"check: {binary} missing: run ./justw binary {options.arch}", file=sys.stderr)
        return 1
    missing = missing_tools(options.arch)
    if missing:
        print(f"check: running {options.arch} here needs {', '.join(missing)}", file=sys.stderr)
        return 1
    try:
        with python_less_root(options.arch, binary) as root:
            started = time.monotonic()
            version = version_in_root(root)
            print(f"check: {version} ({time.monotonic() - started:.2f} s for --version)")
            config = small_config(trunk_port=free_udp_port())
            with gateway_in_root(root, config, startup_timeout=300.0) as gateway:
                print(f"check: cold start to first SIP answer {gateway.cold_start:.2f} s")
    except (CheckError, RootfsError, subprocess.TimeoutExpired) as exc:
        print(f"check: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
