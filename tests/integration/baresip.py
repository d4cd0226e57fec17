"""Real baresip clients for integration tests (Debian `baresip-core` 1.0.0).

`Baresip` writes a headless config directory (config + accounts), starts
`baresip -f DIR` (inside a network namespace or not) on a pseudo-terminal, reads its log
in a thread and drives it with its own commands (`/dial`, `/hangup`, `/quit`). What the
call carried is recorded by the `sndfile` module: one WAV of what the client sent
(`...-enc.wav`) and one of what it received and decoded (`...-dec.wav`), at the codec's
rate, 16-bit mono; the paths are taken from its log.

Facts about baresip 1.0.0 this relies on (checked on the build machines):

* stdio needs a terminal: on a pipe it fails ("Operation not permitted") and no
  command can be given, and its log is block-buffered; a pty gives both.
* `ausine` runs only at 48 kHz stereo (`ausrc_srate 48000`, `ausrc_channels 2`; baresip
  resamples to the codec). `aufile` plays a WAV once at the file's rate (`ausrc_srate`
  set to it), then silence.
* `mediaenc=none` is not a value: leave `mediaenc` out for plain RTP.
* Its digest client (libre) gives up with "Function not implemented" when a 401/407
  carries any challenge other than MD5, so the gateway must offer MD5 only to it.
* With SRTP the log says `srtp: audio: SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)`.
"""

from __future__ import annotations

import contextlib
import os
import pty
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import pytest

from tests.integration.netns import Namespace
from tests.speech import dominant_frequency, read_wav, rms_dbov, tone_seconds

MODULE_PATH: Final = Path("/usr/lib/baresip/modules")
MODULES: Final = (
    "stdio.so",
    "g711.so",
    "g722.so",
    "opus.so",
    "ausine.so",
    "aufile.so",
    "alsa.so",
    "sndfile.so",
    "srtp.so",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_SRTP = re.compile(r"SRTP is Enabled \(cryptosuite=([^)]+)\)")
_ENCODER = re.compile(r"audio: Set audio encoder: (\S+) (\d+)Hz (\d+)ch")
_DECODER = re.compile(r"audio: Set audio decoder: (\S+) (\d+)Hz (\d+)ch")
_DUMP = re.compile(r"sndfile: dumping (encode|decode) audio to (\S+\.wav)")

Address = tuple[str, int]


def baresip_binary() -> str | None:
    """The baresip executable on PATH, or None (tests then skip with a reason)."""
    return shutil.which("baresip")


class BaresipError(RuntimeError):
    """baresip did not do what a test waited for; the message carries its log's tail."""


@dataclass(frozen=True)
class Sine:
    """Send a sine of `frequency` Hz (module ausine)."""

    frequency: int

    def config_lines(self) -> list[str]:
        return [
            f"audio_source ausine,{self.frequency}",
            "ausrc_srate 48000",
            "ausrc_channels 2",
        ]


@dataclass(frozen=True)
class WavFile:
    """Send a 16-bit mono WAV file once, then silence (module aufile)."""

    path: Path
    rate: int

    def config_lines(self) -> list[str]:
        return [
            f"audio_source aufile,{self.path}",
            f"ausrc_srate {self.rate}",
            "ausrc_channels 1",
        ]


AudioSource = Sine | WavFile


@dataclass(frozen=True)
class Codec:
    name: str
    rate: int
    channels: int


class Baresip:
    """One baresip user agent with one account, in `workdir/<user>/`.

    `domain` is the account's host (the registrar), `outbound` where every request goes
    over `transport` (baresip 1.0.0 does not check a TLS server's certificate),
    `sip_listen` the address and port it binds for SIP (it also binds TLS on port + 1, so
    give two clients ports far apart). `mediaenc` is baresip's media encryption
    ("srtp-mand", "srtp", "srtpf", "dtls_srtp"...) or None for plain RTP. `codecs` are its
    `audio_codecs` entries, e.g. "PCMA/8000/1" or "opus/48000/2".

    Use as a context manager: the process always ends with the block.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        user: str,
        password: str,
        domain: str,
        outbound: Address,
        sip_listen: Address,
        source: AudioSource,
        codecs: tuple[str, ...] = ("PCMU/8000/1",),
        mediaenc: str | None = None,
        namespace: Namespace | None = None,
        transport: Literal["udp", "tcp", "tls"] = "udp",
        regint: int = 120,
        answermode: str = "auto",
    ) -> None:
        binary = baresip_binary()
        if binary is None:
            raise FileNotFoundError("baresip is not on PATH (Debian package baresip-core)")
        self.binary = binary
        self.user = user
        self.password = password
        self.domain = domain
        self.outbound = outbound
        self.sip_listen = sip_listen
        self.source = source
        self.codecs = codecs
        self.mediaenc = mediaenc
        self.namespace = namespace
        self.transport = transport
        self.regint = regint
        self.answermode = answermode
        self.config_dir = workdir / f"baresip-{user}"
        self.snd_dir = self.config_dir / "audio"
        self.log_path = self.config_dir / "baresip.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._master = -1
        self._text = ""
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None

    # ---- configuration ---------------------------------------------------------------------

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    @property
    def _transport_param(self) -> str:
        return "" if self.transport == "udp" else f";transport={self.transport}"

    def account_line(self) -> str:
        host, port = self.outbound
        params = [
            f"auth_pass={self.password}",
            f'outbound="sip:{host}:{port}{self._transport_param}"',
            f"regint={self.regint}",
            f"answermode={self.answermode}",
            f"audio_codecs={','.join(self.codecs)}",
        ]
        if self.mediaenc is not None:
            params.append(f"mediaenc={self.mediaenc}")
        return f"<{self.aor}>;" + ";".join(params)

    def config_text(self) -> str:
        host, port = self.sip_listen
        lines = [
            f"sip_listen {host}:{port}",
            # ALSA's "null" device: no sound card needed, and the received audio is
            # recorded by sndfile before it reaches the player.
            "audio_player alsa,null",
            "audio_alert alsa,null",
            *self.source.config_lines(),
            f"module_path {MODULE_PATH}",
            *(f"module {name}" for name in MODULES),
            "module_app account.so",
            "module_app menu.so",
            f"snd_path {self.snd_dir}",
        ]
        return "\n".join(lines) + "\n"

    def write_config(self) -> None:
        self.snd_dir.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "config").write_text(self.config_text(), encoding="utf-8")
        (self.config_dir / "accounts").write_text(self.account_line() + "\n", encoding="utf-8")

    # ---- process ---------------------------------------------------------------------------

    def start(self) -> Baresip:
        if self.process is not None:
            raise BaresipError(f"baresip {self.user}: already started")
        self.write_config()
        master, slave = pty.openpty()
        args = [self.binary, "-f", str(self.config_dir)]
        try:
            # Its own session: a signal meant for the test run does not reach it first.
            if self.namespace is not None:
                self.process = self.namespace.popen(
                    args, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
                )
            else:
                self.process = subprocess.Popen(
                    args, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
                )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._master = master
        self._reader = threading.Thread(target=self._read, name=f"baresip-{self.user}", daemon=True)
        self._reader.start()
        return self

    def __enter__(self) -> Baresip:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> None:
        # The terminal ends lines with CR LF, and the call status line redraws itself
        # with a bare CR: both become one newline (a CR at a chunk's end waits for the next).
        pending = ""
        with self.log_path.open("a", encoding="utf-8") as log:
            while True:
                try:
                    data = os.read(self._master, 65536)
                except OSError:  # EIO: every holder of the pty's slave side is gone
                    data = b""
                if not data:
                    break
                text = pending + _ANSI.sub("", data.decode("utf-8", "replace"))
                pending = "\r" if text.endswith("\r") else ""
                text = text.removesuffix("\r").replace("\r\n", "\n").replace("\r", "\n")
                log.write(text)
                log.flush()
                with self._changed:
                    self._text += text
                    self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log(self) -> str:
        with self._changed:
            return self._text

    def mark(self) -> int:
        """A position in the log: `wait_for(..., since=mark)` looks only after it."""
        return len(self.log)

    def describe(self, chars: int = 3000) -> str:
        code = None if self.process is None else self.process.poll()
        return f"baresip {self.user} (exit {code}), log tail:\n{self.log[-chars:]}"

    def wait_for(
        self,
        pattern: str,
        timeout: float = 10.0,
        *,
        since: int = 0,
        fail: str | None = None,
    ) -> re.Match[str]:
        """The first match of `pattern` in the log after `since`; waits up to `timeout` s.

        BaresipError when `fail` matches first, when the process ends, or on timeout.
        """
        wanted = re.compile(pattern, re.MULTILINE)
        failure = re.compile(fail, re.MULTILINE) if fail else None
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                text = self._text[since:]
                if failure is not None and (bad := failure.search(text)):
                    raise BaresipError(
                        f"waiting for {pattern!r}, got {bad.group(0)!r}\n{self.describe()}"
                    )
                if found := wanted.search(text):
                    return found
                remaining = deadline - time.monotonic()
                ended = self._reader is None or not self._reader.is_alive()
                if remaining <= 0 or ended:
                    why = "it ended" if ended else f"{timeout:g} s passed"
                    raise BaresipError(f"no {pattern!r} ({why})\n{self.describe()}")
                self._changed.wait(min(remaining, 0.2))

    def wait_registered(self, timeout: float = 10.0) -> None:
        self.wait_for(
            rf"{re.escape(self.user)}@\S+: \{{\d+/\w+/v\d\}} 200 OK",
            timeout,
            fail=r"reg: .*: (Register: .*|\d{3} .*)",
        )

    def command(self, line: str) -> None:
        """Type a long command (e.g. "/dial sip:1002@host") at baresip's console."""
        if not self.running:
            raise BaresipError(f"cannot send {line!r}: not running\n{self.describe()}")
        os.write(self._master, line.encode() + b"\n")

    def dial(self, uri: str) -> int:
        """Start a call to `uri`; the log mark from just before it."""
        mark = self.mark()
        self.command(f"/dial {uri}")
        return mark

    def wait_established(self, timeout: float = 10.0, *, since: int = 0) -> str:
        """Wait until a call is established; the peer's URI."""
        found = self.wait_for(
            r"Call established: (\S+)",
            timeout,
            since=since,
            fail=r"session closed: .*|Call with \S+ terminated",
        )
        return found.group(1)

    def hangup(self) -> int:
        mark = self.mark()
        self.command("/hangup")
        return mark

    def wait_terminated(self, timeout: float = 10.0, *, since: int = 0) -> None:
        self.wait_for(r"Call with \S+ terminated|session closed", timeout, since=since)

    def quit(self, timeout: float = 5.0) -> int:
        """Ask baresip to quit (it unregisters and closes its recordings); its exit code."""
        process = self.process
        if process is None:
            raise BaresipError(f"baresip {self.user}: never started")
        if process.poll() is None:
            with contextlib.suppress(OSError):
                os.write(self._master, b"/quit\n")
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(2.0)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self._finish_reader()
        return process.returncode

    def close(self) -> None:
        """End the process however it is doing (quit, then SIGTERM, then SIGKILL)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.quit(timeout=3.0)
        self._finish_reader()

    def _finish_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(3.0)
        if self._master >= 0 and (self._reader is None or not self._reader.is_alive()):
            os.close(self._master)
            self._master = -1

    # ---- what the log says -----------------------------------------------------------------

    def srtp_suites(self) -> list[str]:
        """The SRTP crypto suites baresip reported enabled, one per stream started."""
        return _SRTP.findall(self.log)

    def encoder(self) -> Codec | None:
        """The last audio encoder baresip set (the codec it sends), or None."""
        return _last_codec(_ENCODER, self.log)

    def decoder(self) -> Codec | None:
        """The last audio decoder baresip set (the codec it receives), or None."""
        return _last_codec(_DECODER, self.log)

    def recordings(self, kind: str) -> list[Path]:
        """The WAV files sndfile opened, "encode" (sent) or "decode" (received), in order."""
        return [Path(path) for what, path in _DUMP.findall(self.log) if what == kind]

    def received_wav(self) -> Path:
        """The recording of what the (last) call received, as decoded."""
        return self._last_recording("decode")

    def sent_wav(self) -> Path:
        """The recording of what the (last) call sent, before encoding."""
        return self._last_recording("encode")

    def _last_recording(self, kind: str) -> Path:
        found = self.recordings(kind)
        if not found:
            raise BaresipError(f"no {kind} recording in the log\n{self.describe()}")
        return found[-1]


def _last_codec(pattern: re.Pattern[str], text: str) -> Codec | None:
    found = pattern.findall(text)
    if not found:
        return None
    name, rate, channels = found[-1]
    return Codec(name, int(rate), int(channels))


def assert_heard_tone(
    client: Baresip, peer: Baresip, other: int, own: int, duration: float
) -> None:
    """What ``client`` recorded: ``peer``'s tone ``other`` for most of a call of
    ``duration`` seconds, at the level ``peer`` sent it, and never its own tone ``own``
    (no echo, no crossed streams)."""
    heard = read_wav(client.received_wav())
    sent = read_wav(peer.sent_wav())
    seconds = tone_seconds(heard, other)
    print(
        f"{client.user}: call {duration:.2f} s, received {heard.seconds:.2f} s at "
        f"{heard.rate} Hz, {other} Hz tone {seconds:.2f} s, dominant "
        f"{dominant_frequency(heard):.1f} Hz, level {rms_dbov(heard):.1f} dBov "
        f"(sent {rms_dbov(sent):.1f} dBov)"
    )
    assert seconds >= 0.8 * duration, client.describe()
    assert dominant_frequency(heard) == pytest.approx(other, abs=2.0)
    assert abs(rms_dbov(heard) - rms_dbov(sent)) < 1.5
    assert tone_seconds(heard, own) == 0.0
