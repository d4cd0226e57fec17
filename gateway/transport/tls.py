"""SIP over TLS (RFC 3261 26.2, 26.3.1; RFC 5630 for `sips:` and `;transport=tls`).

`TlsTransport` is the TCP transport of `gateway.transport.connections` with a TLS 1.2+
session (Python `ssl` through `trio.SSLStream`) between the socket and the SIP framing;
framing, the writer queue, idle close, CRLF keep-alives and flow ids are the TCP ones,
and its flows say "tls", so Via reads `SIP/2.0/TLS` and requests to a client registered
over TLS go back over its own connection (RFC 5626 5.3, RFC 5923).

A connection that fails its handshake (plain SIP or random bytes on the TLS port, a
TLS 1.0/1.1-only client, a certificate we do not trust) or does not finish it within
the handshake timeout (a slowloris) is closed, counted in `handshake_failures` and
logged once; no other connection notices. Outgoing connections verify the server
against the system CA store plus an optional CA file unless verification is turned off.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio

from gateway.transport.certificates import CertificatePair, check_ca_file
from gateway.transport.connections import SetupFailed, TcpConnection, TcpTransport

__all__ = ["TlsContexts", "TlsTransport", "client_context", "server_context"]

log = structlog.get_logger("edgegw.tls")

MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2
DEFAULT_HANDSHAKE_TIMEOUT = 10.0


def server_context(pair: CertificatePair) -> ssl.SSLContext:
    """A TLS 1.2+ server context presenting `pair`; clients are not asked for certificates."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = MINIMUM_VERSION
    context.load_cert_chain(pair.cert, pair.key)
    return context


def client_context(*, verify: bool = True, ca_file: str | Path = "") -> ssl.SSLContext:
    """A TLS 1.2+ client context: system CAs plus `ca_file`, hostname checked, unless not `verify`.

    Verification off is for trunks with self-signed certificates on trusted links only:
    it leaves the SDES keys in the SDP open to whoever sits in the middle.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = MINIMUM_VERSION
    if ca_file:
        check_ca_file(ca_file)
        context.load_verify_locations(cafile=str(ca_file))
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


@dataclass(frozen=True)
class TlsContexts:
    """What a TLS transport needs: `server` only when something listens for TLS."""

    server: ssl.SSLContext | None
    client: ssl.SSLContext
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT


class TlsTransport(TcpTransport):
    """TLS listeners and connections: the TCP machinery with a handshake in front."""

    name = "tls"

    def __init__(
        self, contexts: TlsContexts, idle_timeout: float, max_message: int = 65535
    ) -> None:
        super().__init__(idle_timeout, max_message)
        self.contexts = contexts
        self.handshake_failures = 0

    async def _listen(self, host: str, port: int) -> list[trio.SocketListener]:
        if self.contexts.server is None:
            raise ValueError("a TLS listener needs a server certificate (TlsContexts.server)")
        return await super()._listen(host, port)

    async def _secure(
        self, conn: TcpConnection, raw: trio.SocketStream, *, inbound: bool
    ) -> trio.abc.Stream:
        if inbound:
            assert self.contexts.server is not None  # _listen refuses to listen without it
            stream = trio.SSLStream(raw, self.contexts.server, server_side=True)
        else:
            # Checked against an IP SAN when the host is an address, a DNS SAN otherwise.
            stream = trio.SSLStream(raw, self.contexts.client, server_hostname=conn.remote[0])
        try:
            with trio.fail_after(self.contexts.handshake_timeout):
                await stream.do_handshake()
        except (trio.BrokenResourceError, trio.TooSlowError, OSError) as exc:
            self._handshake_failed(conn, exc)
            await trio.aclose_forcefully(stream)
            raise SetupFailed from exc
        return stream

    def _handshake_failed(self, conn: TcpConnection, exc: BaseException) -> None:
        self.handshake_failures += 1
        if isinstance(exc, trio.TooSlowError):
            reason = f"no handshake within {self.contexts.handshake_timeout} s"
        else:
            cause = exc.__cause__ or exc
            reason = getattr(cause, "reason", None) or str(cause) or type(cause).__name__
        log.info("tls handshake failed", remote=conn.remote, reason=reason)
