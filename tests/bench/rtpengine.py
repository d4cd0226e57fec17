"""rtpengine for side-by-side benchmarks: the daemon, bencode and an ng protocol client.

Benchmarks compare edgegw's relay with rtpengine (Debian ``rtpengine-daemon``
10.5) on the same load in the same run. This module starts rtpengine in
userspace only (``--table=-1``) on loopback, pinned to chosen cores, and talks
to it over its ng control protocol: a bencoded dictionary in one UDP datagram,
prefixed with a cookie and a space; the reply carries the same cookie
(rtpengine's ng protocol documentation). Bencode is the BitTorrent encoding
(BEP 3): ``i<int>e``, ``<length>:<bytes>``, ``l...e``, ``d...e`` with keys
sorted as raw bytes.

Strings decode to ``str`` (UTF-8, undecodable bytes kept as surrogates so they
encode back unchanged). An ng reply whose ``result`` is ``error`` raises
:class:`NgError` with rtpengine's ``error-reason``; no reply within the
timeout (after retransmissions with the same cookie, which rtpengine answers
from its cache rather than executing twice) raises :class:`NgTimeout`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TypeAlias

__all__ = [
    "BValue",
    "BencodeError",
    "NgClient",
    "NgError",
    "NgTimeout",
    "RtpEngine",
    "RtpEngineError",
    "bdecode",
    "bencode",
    "child_setup",
    "rtpengine_version",
]

BValue: TypeAlias = int | str | bytes | list["BValue"] | dict[str, "BValue"]
"""What bencode carries. ``bdecode`` gives ``str`` for strings, never ``bytes``."""

_ENCODING = "utf-8"
_ERRORS = "surrogateescape"
_HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_READY_TIMEOUT = 10.0


class BencodeError(ValueError):
    """Bytes that are not bencode, or a value bencode cannot carry."""


class NgError(RuntimeError):
    """rtpengine answered ``result: error``; the message holds its ``error-reason``."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(f"rtpengine refused {command!r}: {reason}")
        self.command = command
        self.reason = reason


class NgTimeout(TimeoutError):
    """rtpengine did not answer an ng command in time."""


class RtpEngineError(RuntimeError):
    """The rtpengine daemon is not installed, did not start, or died."""


# ---- bencode (BEP 3) -----------------------------------------------------------------------


def bencode(value: BValue) -> bytes:
    """The bencoding of ``value``; raises :class:`BencodeError` for other types."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: BValue, out: list[bytes]) -> None:
    if isinstance(value, bool):  # a bool is an int to Python, but means nothing here
        raise BencodeError(f"bencode has no booleans: got {value!r}")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, str):
        _encode_bytes(value.encode(_ENCODING, _ERRORS), out)
    elif isinstance(value, bytes):
        _encode_bytes(value, out)
    elif isinstance(value, list):
        out.append(b"l")
        for item in value:
            _encode(item, out)
        out.append(b"e")
    elif isinstance(value, dict):
        _encode_dict(value, out)
    else:
        raise BencodeError(f"bencode cannot carry a {type(value).__name__}: {value!r}")


def _encode_bytes(data: bytes, out: list[bytes]) -> None:
    out.append(b"%d:" % len(data))
    out.append(data)


def _encode_dict(value: dict[str, BValue], out: list[bytes]) -> None:
    items: list[tuple[bytes, BValue]] = []
    for key, item in value.items():
        if not isinstance(key, str):
            raise BencodeError(f"bencode dictionary keys are strings: got {key!r}")
        items.append((key.encode(_ENCODING, _ERRORS), item))
    items.sort(key=lambda pair: pair[0])
    out.append(b"d")
    for key_bytes, item in items:
        _encode_bytes(key_bytes, out)
        _encode(item, out)
    out.append(b"e")


def bdecode(data: bytes) -> BValue:
    """The value bencoded in ``data``, which must hold exactly one value."""
    value, end = _decode(data, 0)
    if end != len(data):
        raise BencodeError(f"bencode: {len(data) - end} trailing byte(s) after the value")
    return value


def _decode(data: bytes, pos: int) -> tuple[BValue, int]:
    if pos >= len(data):
        raise BencodeError(f"bencode: data ends at byte {pos} where a value should start")
    lead = data[pos : pos + 1]
    if lead == b"i":
        return _decode_int(data, pos)
    if lead == b"l":
        items: list[BValue] = []
        pos += 1
        while data[pos : pos + 1] != b"e":
            item, pos = _decode(data, pos)
            items.append(item)
        return items, pos + 1
    if lead == b"d":
        return _decode_dict(data, pos)
    if lead.isdigit():
        raw, end = _decode_bytes(data, pos)
        return raw.decode(_ENCODING, _ERRORS), end
    raise BencodeError(f"bencode: unexpected byte {lead!r} at {pos}")


def _decode_int(data: bytes, pos: int) -> tuple[int, int]:
    end = data.find(b"e", pos)
    if end < 0:
        raise BencodeError(f"bencode: integer at {pos} has no end")
    text = data[pos + 1 : end]
    digits = text[1:] if text.startswith(b"-") else text
    if not digits.isdigit() or (digits.startswith(b"0") and text != b"0"):
        raise BencodeError(f"bencode: malformed integer {text!r} at {pos}")
    return int(text), end + 1


def _decode_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    colon = data.find(b":", pos)
    if colon < 0 or not data[pos:colon].isdigit():
        raise BencodeError(f"bencode: malformed string length at {pos}")
    start = colon + 1
    end = start + int(data[pos:colon])
    if end > len(data):
        raise BencodeError(f"bencode: string at {pos} runs past the end of the data")
    return data[start:end], end


def _decode_dict(data: bytes, pos: int) -> tuple[dict[str, BValue], int]:
    result: dict[str, BValue] = {}
    pos += 1
    while data[pos : pos + 1] != b"e":
        if pos >= len(data):
            raise BencodeError("bencode: dictionary has no end")
        if not data[pos : pos + 1].isdigit():
            raise BencodeError(f"bencode: dictionary key at {pos} is not a string")
        key, pos = _decode_bytes(data, pos)
        result[key.decode(_ENCODING, _ERRORS)], pos = _decode(data, pos)
    return result, pos + 1


# ---- ng client -----------------------------------------------------------------------------


class NgClient:
    """Blocking ng protocol client: one command, one datagram, one reply."""

    def __init__(
        self, address: tuple[str, int], *, timeout: float = 2.0, attempts: int = 3
    ) -> None:
        if attempts < 1:
            raise ValueError(f"ng client: attempts must be at least 1, got {attempts}")
        self.address = address
        self.timeout = timeout
        self.attempts = attempts
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.connect(address)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> NgClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def command(
        self, command: str, params: Mapping[str, BValue] | None = None
    ) -> dict[str, BValue]:
        """Send ``command`` with ``params``; rtpengine's reply dictionary.

        Raises :class:`NgError` on ``result: error``, :class:`NgTimeout` when
        no reply came after ``attempts`` tries of ``timeout`` seconds each.
        """
        cookie = secrets.token_hex(8).encode("ascii")
        request = cookie + b" " + bencode({**(params or {}), "command": command})
        for _ in range(self.attempts):
            self._sock.send(request)
            reply = self._await_reply(cookie)
            if reply is not None:
                return _checked(command, reply)
        raise NgTimeout(
            f"rtpengine at {self.address[0]}:{self.address[1]} did not answer {command!r} "
            f"within {self.attempts} x {self.timeout:g} s"
        )

    def _await_reply(self, cookie: bytes) -> BValue | None:
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            self._sock.settimeout(left)
            try:
                datagram = self._sock.recv(65535)
            except TimeoutError:
                return None
            except ConnectionRefusedError:  # nobody listens (yet): as good as no answer
                time.sleep(min(left, 0.05))
                continue
            head, sep, body = datagram.partition(b" ")
            if sep and head == cookie:  # otherwise a late reply to an earlier command
                return bdecode(body)
        return None

    def ping(self) -> None:
        reply = self.command("ping")
        if reply.get("result") != "pong":
            raise NgError("ping", f"unexpected reply {reply!r}")

    def offer(
        self, sdp: str, call_id: str, from_tag: str, options: Mapping[str, BValue] | None = None
    ) -> str:
        """The SDP rtpengine rewrote the offer into (toward the callee)."""
        reply = self.command(
            "offer", {**(options or {}), "sdp": sdp, "call-id": call_id, "from-tag": from_tag}
        )
        return _sdp_of("offer", reply)

    def answer(
        self,
        sdp: str,
        call_id: str,
        from_tag: str,
        to_tag: str,
        options: Mapping[str, BValue] | None = None,
    ) -> str:
        """The SDP rtpengine rewrote the answer into (toward the caller)."""
        params = {**(options or {}), "sdp": sdp, "call-id": call_id}
        reply = self.command("answer", {**params, "from-tag": from_tag, "to-tag": to_tag})
        return _sdp_of("answer", reply)

    def delete(
        self,
        call_id: str,
        from_tag: str | None = None,
        options: Mapping[str, BValue] | None = None,
    ) -> dict[str, BValue]:
        params: dict[str, BValue] = {**(options or {}), "call-id": call_id}
        if from_tag is not None:
            params["from-tag"] = from_tag
        return self.command("delete", params)

    def query(self, call_id: str, options: Mapping[str, BValue] | None = None) -> dict[str, BValue]:
        return self.command("query", {**(options or {}), "call-id": call_id})


def _checked(command: str, reply: BValue) -> dict[str, BValue]:
    if not isinstance(reply, dict):
        raise NgError(command, f"reply is not a dictionary: {reply!r}")
    if reply.get("result") == "error":
        reason = reply.get("error-reason", "no error-reason given")
        raise NgError(command, str(reason))
    return reply


def _sdp_of(command: str, reply: dict[str, BValue]) -> str:
    sdp = reply.get("sdp")
    if not isinstance(sdp, str):
        raise NgError(command, f"reply has no SDP: {reply!r}")
    return sdp


# ---- the daemon ----------------------------------------------------------------------------


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def rtpengine_version() -> str:
    """What ``rtpengine --version`` says, e.g. ``10.5.3.5-1+deb12u1``."""
    if shutil.which("rtpengine") is None:
        raise RtpEngineError("rtpengine is not installed (Debian package rtpengine-daemon)")
    result = subprocess.run(
        ["rtpengine", "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    text = (result.stdout + result.stderr).strip()
    return text.removeprefix("Version:").strip() or "unknown version"


def child_setup(
    cores: frozenset[int] | None, nice: int = 0, rt_priority: int = 0
) -> Callable[[], None]:
    """A preexec_fn: pin the child to ``cores``, set its priority, kill it when we die.

    ``nice`` is as nice(1); ``rt_priority`` above 0 puts the child under
    SCHED_RR at that priority (sched(7)), ahead of every ordinary process.
    Both need root (CAP_SYS_NICE) to raise priority. PR_SET_PDEATHSIG
    (prctl(2)) makes the kernel send SIGKILL to the child when the thread that
    started it exits, so a benchmark killed mid-run leaves no process behind.
    """
    chosen = None if cores is None else set(cores)
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        if chosen is not None:
            os.sched_setaffinity(0, chosen)
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
        if rt_priority > 0:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(rt_priority))
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return setup


class RtpEngine:
    """One userspace rtpengine on loopback, for the time of a ``with`` block.

    ``cores`` pins it (all its threads) with the affinity mask, ``nice`` sets
    its scheduling priority (as nice(1)); ``log_level``
    is syslog's (4: warnings), low so that logging costs no CPU in a
    benchmark. Its stderr goes to a temporary file, shown when it fails.
    """

    def __init__(
        self,
        *,
        port_min: int = 30000,
        port_max: int = 39999,
        cores: frozenset[int] | None = None,
        nice: int = 0,
        log_level: int = 4,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port_min = port_min
        self.port_max = port_max
        self.cores = cores
        self.nice = nice
        self.log_level = log_level
        self.extra_args = extra_args
        self.ng_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None
        self._client: NgClient | None = None

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RtpEngineError("rtpengine is not running")
        return self._process.pid

    @property
    def client(self) -> NgClient:
        if self._client is None:
            raise RtpEngineError("rtpengine is not running")
        return self._client

    def command(self) -> list[str]:
        return [
            "rtpengine",
            "--config-file=none",
            "--table=-1",
            f"--interface={_HOST}",
            f"--listen-ng={_HOST}:{self.ng_port}",
            "--foreground",
            "--log-stderr",
            f"--log-level={self.log_level}",
            f"--port-min={self.port_min}",
            f"--port-max={self.port_max}",
            *self.extra_args,
        ]

    def start(self) -> None:
        """Start the daemon and wait until it answers ping."""
        if shutil.which("rtpengine") is None:
            raise RtpEngineError("rtpengine is not installed (Debian package rtpengine-daemon)")
        self.ng_port = _free_udp_port()
        handle, name = tempfile.mkstemp(prefix="rtpengine-", suffix=".log")
        self._log = Path(name)
        with os.fdopen(handle, "wb") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=child_setup(self.cores, self.nice),
            )
        self._client = NgClient((_HOST, self.ng_port), timeout=0.5, attempts=1)
        deadline = time.monotonic() + _READY_TIMEOUT
        while True:
            if self._process.poll() is not None:
                self.stop()
                raise RtpEngineError(f"rtpengine exited at start:\n{self.log_tail()}")
            try:
                self._client.ping()
                break
            except NgTimeout:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RtpEngineError(
                        f"rtpengine did not answer ping within {_READY_TIMEOUT:g} s:\n"
                        f"{self.log_tail()}"
                    ) from None
        self._client.timeout, self._client.attempts = 2.0, 3

    def log_tail(self, lines: int = 20) -> str:
        if self._log is None or not self._log.exists():
            return "(no log)"
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 5 s) and remove its log (idempotent)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.unlink()
            self._log = None

    def __enter__(self) -> RtpEngine:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
