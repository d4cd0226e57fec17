"""systemd's notify protocol (sd_notify(3)): readiness, status, watchdog, stop and reload.

A service of ``Type=notify`` tells systemd about itself in datagrams of newline-separated
``KEY=VALUE`` lines sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``: a file path, or
an abstract name written with a leading ``@`` (the ``@`` stands for the NUL byte that starts
an abstract address, unix(7)). ``$WATCHDOG_USEC`` (with ``$WATCHDOG_PID``, when it names this
process) asks for ``WATCHDOG=1`` at least that often; systemd's documentation advises every
half of it. ``RELOADING=1`` carries ``MONOTONIC_USEC`` (CLOCK_MONOTONIC, as systemd 253
``Type=notify-reload`` wants it), and ``READY=1`` again ends the reload.

The protocol is a plain datagram with no answer, so no library is needed. Sending never
blocks and never raises: a notification that cannot be sent is logged and lost, as
``sd_notify()`` itself reports and forgets it; the service keeps serving.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

__all__ = [
    "Notifier",
    "NotifyError",
    "notify_address",
    "notify_message",
    "watchdog_interval",
]

log = structlog.get_logger("edgegw.sd_notify")


class NotifyError(ValueError):
    """An environment value of the notify protocol that cannot be used, with the reason."""


def notify_address(value: str) -> str | bytes:
    """The socket address ``$NOTIFY_SOCKET`` names: a path (str) or an abstract name (bytes,
    starting with NUL). Raises NotifyError for an empty, relative or over-long value."""
    if value.startswith("@"):
        if len(value) == 1:
            raise NotifyError("NOTIFY_SOCKET: an abstract name needs characters after '@'")
        abstract = b"\0" + os.fsencode(value[1:])
        size = len(abstract)
        address: str | bytes = abstract
    elif value.startswith("/"):
        size = len(os.fsencode(value)) + 1  # a path ends with NUL in sun_path
        address = value
    else:
        raise NotifyError(
            f"NOTIFY_SOCKET: must be an absolute path or an abstract '@name', got {value!r}"
        )
    if size > 108:  # sun_path holds 108 bytes (unix(7))
        raise NotifyError(f"NOTIFY_SOCKET: {size} bytes, more than a socket address holds")
    return address


def notify_message(fields: Mapping[str, str]) -> bytes:
    """One notification datagram: ``KEY=VALUE`` lines. Raises NotifyError for a key that is
    not upper-case letters, digits and underscores, or a value with a line break."""
    lines: list[str] = []
    for key, value in fields.items():
        if not key or not all(c.isupper() or c.isdigit() or c == "_" for c in key):
            raise NotifyError(f"notify key must be A-Z, 0-9 and _, got {key!r}")
        if "\n" in value or "\0" in value:
            raise NotifyError(f"notify value of {key} must be one line without NUL")
        lines.append(f"{key}={value}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """How often to send WATCHDOG=1 (half of ``$WATCHDOG_USEC``), in seconds; None when no
    watchdog is asked of process ``pid``. Raises NotifyError for a value that is not a
    positive integer."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid and watchdog_pid.strip() != str(pid):
        return None  # meant for another process (a parent that exec'ed us without it)
    try:
        value = int(usec)
    except ValueError:
        raise NotifyError(f"WATCHDOG_USEC: must be microseconds, got {usec!r}") from None
    if value <= 0:
        raise NotifyError(f"WATCHDOG_USEC: must be positive, got {value}")
    return value / 2_000_000


class Notifier:
    """Sends notifications to one socket; without a socket (not under systemd) it sends none."""

    def __init__(self, address: str | bytes | None, watchdog: float | None = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog
        self.sent = 0
        self.failed = 0
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.setblocking(False)

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str] | None = None, pid: int | None = None
    ) -> Notifier:
        """The notifier ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` ask for. A bad value is
        logged and that part is left off: a typo in a unit must not stop the gateway."""
        env = os.environ if env is None else env
        pid = os.getpid() if pid is None else pid
        address: str | bytes | None = None
        interval: float | None = None
        if env.get("NOTIFY_SOCKET"):
            try:
                address = notify_address(env["NOTIFY_SOCKET"])
                interval = watchdog_interval(env, pid)
            except NotifyError as exc:
                log.error("systemd notification setting ignored", error=str(exc))
        return cls(address, interval if address is not None else None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str) -> bool:
        """Send one notification; True when it left. Never blocks, never raises OSError."""
        if self._sock is None or self.address is None:
            return False
        message = notify_message(fields)
        try:
            self._sock.sendto(message, self.address)
        except OSError as exc:
            # systemd gone, or its queue full: the next notification may get through.
            self.failed += 1
            log.warning("systemd notification not sent", error=str(exc), fields=list(fields))
            return False
        self.sent += 1
        return True

    def ready(self, status: str = "") -> bool:
        return self.send(READY="1", **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG="1")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(RELOADING="1", MONOTONIC_USEC=str(usec))

    def stopping(self, status: str = "") -> bool:
        return self.send(STOPPING="1", **({"STATUS": status} if status else {}))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
