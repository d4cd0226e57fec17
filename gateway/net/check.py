"""After a network change: does the gateway still answer SIP on every role's address?

`sip_targets(config)` lists, per role, each address the gateway's UDP SIP listeners cover
(a listener on that address, or on 0.0.0.0). `sip_options_check(targets, timeout)` is the
`gateway.net.apply.Check` that sends OPTIONS (RFC 3261 11) to each until every one has
answered with any SIP response, or reports the ones that did not within `timeout`.
Roles without a SIP listener on their addresses (usually mgmt) are not checked.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import Config
from gateway.sip.message import Headers, ParseError, Request, Response, parse

__all__ = ["DEFAULT_CHECK_TIMEOUT", "SipTarget", "options_ping", "sip_options_check", "sip_targets"]

DEFAULT_CHECK_TIMEOUT = 30.0
_TRY_TIMEOUT = 0.3
_PAUSE = 0.1


@dataclass(frozen=True)
class SipTarget:
    role: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.role} {self.host}:{self.port}"


def sip_targets(config: Config) -> list[SipTarget]:
    targets: list[SipTarget] = []
    for interface in config.network.interfaces:
        for text in interface.addresses:
            host = str(ipaddress.ip_interface(text).ip)
            targets += [
                SipTarget(interface.role, host, entry.port)
                for entry in config.sip.listen
                if entry.transport == "udp" and entry.host in (host, "0.0.0.0")
            ]
    return targets


def _options(target: SipTarget, local: tuple[str, int], call_id: str) -> bytes:
    tag = secrets.token_hex(4)
    headers = Headers(
        [
            ("Via", f"SIP/2.0/UDP {local[0]}:{local[1]};branch=z9hG4bK{tag};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:netcheck@{local[0]}>;tag={tag}"),
            ("To", f"<sip:{target.host}:{target.port}>"),
            ("Call-ID", call_id),
            ("CSeq", "1 OPTIONS"),
        ]
    )
    return Request("OPTIONS", f"sip:{target.host}:{target.port}", headers).to_bytes()


def options_ping(target: SipTarget, timeout: float = _TRY_TIMEOUT) -> Response | None:
    """One OPTIONS over UDP; the response to it, or None when none came in `timeout`."""
    call_id = f"netcheck-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((target.host, target.port))
            sock.send(_options(target, sock.getsockname()[:2], call_id))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                answer = _response(sock.recv(65535), call_id)
                if answer is not None:
                    return answer
        except OSError:  # refused (nothing listens), unreachable, timed out
            return None
    return None


def _response(data: bytes, call_id: str) -> Response | None:
    try:
        message = parse(data)
    except ParseError:
        return None
    if isinstance(message, Response) and message.headers.get("Call-ID") == call_id:
        return message
    return None


def sip_options_check(
    targets: list[SipTarget],
    timeout: float = DEFAULT_CHECK_TIMEOUT,
    *,
    ping: Callable[[SipTarget], Response | None] = options_ping,
) -> Callable[[], str | None]:
    """A check that passes once every target answered OPTIONS, within `timeout` seconds."""

    def check() -> str | None:
        pending = list(targets)
        deadline = time.monotonic() + timeout
        while pending:
            pending = [target for target in pending if ping(target) is None]
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(_PAUSE)
        if pending:
            names = ", ".join(str(target) for target in pending)
            return f"no answer to SIP OPTIONS within {timeout:g} s from {names}"
        return None

    return check
