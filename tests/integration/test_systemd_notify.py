"""systemd's notify protocol against the real `edgegw run`, with a NOTIFY_SOCKET of the test's own.

PID 1 on the build machines is not systemd, so the test plays systemd's part: it binds an
AF_UNIX datagram socket (an abstract `@name` here; tests/integration/test_reload.py uses a
path), starts the gateway with NOTIFY_SOCKET and WATCHDOG_USEC set, and records every
datagram with the time it arrived. Checked: READY=1 comes once SIP, the control socket and
HTTP answer (each is asked the moment READY=1 arrives); WATCHDOG=1 arrives every half
WATCHDOG_USEC; while the gateway's event loop is blocked for 5.2 s (the bounded control
command `debug_stall`, which blocks the loop and nothing else: the process keeps running)
no WATCHDOG=1 comes, and the feeding resumes afterwards; SIGTERM brings STOPPING=1.
"""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import parse_config
from gateway.control.client import ControlClient, ControlError
from tests.integration.peers import REPO_ROOT, free_udp_port, sip_ping
from tests.integration.test_lifecycle import gateway_config

CLI = (sys.executable, "-m", "gateway.control.cli")
WATCHDOG_USEC = 400_000  # the gateway feeds every 0.2 s
STALL = 5.2


@dataclass(frozen=True)
class Notification:
    at: float  # time.monotonic() when it arrived
    fields: dict[str, str]


class NotifyListener:
    """systemd's end: a datagram socket that records every notification in a thread."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.received: list[Notification] = []
        self.malformed: list[bytes] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notify-rx", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            now = time.monotonic()
            lines = data.decode("utf-8").splitlines()
            if not lines or not all("=" in line for line in lines):
                self.malformed.append(data)
                continue
            fields = dict(line.split("=", 1) for line in lines)
            with self._lock:
                self.received.append(Notification(now, fields))

    def snapshot(self) -> list[Notification]:
        with self._lock:
            return list(self.received)

    def wait_for(self, key: str, timeout: float, since: float = 0.0) -> Notification:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for note in self.snapshot():
                if note.at >= since and key in note.fields:
                    return note
            time.sleep(0.01)
        raise AssertionError(f"no {key} within {timeout} s; got {self.snapshot()}")

    def watchdog_times(self) -> list[float]:
        return [n.at for n in self.snapshot() if n.fields.get("WATCHDOG") == "1"]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.sock.close()


@contextmanager
def gateway_under_systemd(
    tmp: Path, notify_socket: str, *, watchdog_pid: str = "$$"
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`edgegw run --config FILE` as systemd would start it: NOTIFY_SOCKET, WATCHDOG_USEC, and
    WATCHDOG_PID set by a shell wrapper ("$$": its own pid, which exec hands on)."""
    sip_port = free_udp_port()
    text = gateway_config(sip_port, free_udp_port()).replace("{var_dir}", str(tmp / "var"))
    config_path = tmp / "edgegw.toml"
    config_path.write_text(text, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["NOTIFY_SOCKET"] = notify_socket
    env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
    command = f'WATCHDOG_PID={watchdog_pid} exec "$@"'
    with (tmp / "gateway.stderr").open("wb") as log:
        process = subprocess.Popen(
            ["/bin/sh", "-c", command, "sh", *CLI, "run", "--config", str(config_path)],
            cwd=tmp,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        yield process, config_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        output = (tmp / "gateway.stderr").read_text(errors="replace")
        print(f"---- gateway output (exit {process.returncode}) ----\n{output[-8000:]}")


def test_ready_watchdog_stall_and_stopping(short_tmp: Path) -> None:
    name = f"edgegw-test-{secrets.token_hex(6)}"
    listener = NotifyListener(b"\0" + name.encode())
    try:
        with gateway_under_systemd(short_tmp, f"@{name}") as (process, config_path):
            config = parse_config(config_path.read_text(), source=str(config_path))
            sip = config.sip.listen[0]

            # READY=1: SIP, control and HTTP answer at once (not after a retry).
            ready = listener.wait_for("READY", timeout=20.0)
            assert ready.fields["READY"] == "1"
            assert ready.fields.get("STATUS") == "serving"
            assert (sip_ping(sip.host, sip.port, timeout=1.0) or "").startswith("SIP/2.0 200")
            control = ControlClient(config.control_socket_path, timeout=15.0)
            assert control.call("status")["active_calls"] == 0
            with urllib.request.urlopen(f"http://{config.http.listen}/metrics", timeout=2) as r:
                assert r.status == 200
            before_ready = [t for t in listener.watchdog_times() if t < ready.at]
            assert before_ready == [], "the watchdog is fed only once the gateway is ready"

            # WATCHDOG=1 every WATCHDOG_USEC / 2 = 0.2 s.
            time.sleep(1.2)
            feeds = listener.watchdog_times()
            assert len(feeds) >= 4, feeds
            gaps = [b - a for a, b in itertools.pairwise(feeds)]
            assert max(gaps) < 0.45, gaps

            # The loop blocked for STALL seconds: no feed meanwhile, feeding again after.
            stalled = control.call("debug_stall", seconds=STALL)["stalled"]
            ended = time.monotonic()
            assert stalled >= STALL
            started = ended - stalled
            during = [t for t in listener.watchdog_times() if started + 0.05 < t < ended - 0.05]
            assert during == [], f"fed during a {stalled} s stall at {during}"
            time.sleep(1.0)
            after = [t for t in listener.watchdog_times() if t > ended]
            assert len(after) >= 3, after

            # SIGTERM: STOPPING=1, then a clean exit.
            stop_sent = time.monotonic()
            process.send_signal(signal.SIGTERM)
            stopping = listener.wait_for("STOPPING", timeout=5.0, since=stop_sent)
            assert stopping.fields["STOPPING"] == "1"
            assert process.wait(timeout=10.0) == 0
        assert listener.malformed == []
    finally:
        listener.close()


def test_watchdog_meant_for_another_pid_and_bad_stall_requests(short_tmp: Path) -> None:
    """WATCHDOG_PID naming another process: READY=1 all the same, but nothing feeds a
    watchdog that is not ours. A stall asked for out of bounds is refused and stalls nothing."""
    name = f"edgegw-test-{secrets.token_hex(6)}"
    listener = NotifyListener(b"\0" + name.encode())
    try:
        with gateway_under_systemd(short_tmp, f"@{name}", watchdog_pid="1") as (process, path):
            config = parse_config(path.read_text(), source=str(path))
            listener.wait_for("READY", timeout=20.0)
            control = ControlClient(config.control_socket_path, timeout=15.0)
            for seconds, reason in ((60, "at most 30"), (0, "more than 0"), ("5", "a number")):
                asked = time.monotonic()
                with pytest.raises(ControlError, match=reason):
                    control.call("debug_stall", seconds=seconds)
                assert time.monotonic() - asked < 1.0
            time.sleep(0.6)
            assert listener.watchdog_times() == []
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10.0) == 0
        assert [n.fields.get("STOPPING") for n in listener.snapshot()][-1] == "1"
    finally:
        listener.close()
