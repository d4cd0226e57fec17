"""Where a SIP URI says to send (RFC 3263 4 without DNS): `sips:` and `;transport=tls`
go over TLS to 5061 unless a port is given; transports we do not speak are refused."""

from __future__ import annotations

import pytest

from gateway.sip.uri import SipUri, UriError, parse_uri
from gateway.transport.flow import Destination, Flow


def uri(text: str) -> SipUri:
    parsed = parse_uri(text)
    assert isinstance(parsed, SipUri)
    return parsed


@pytest.mark.parametrize(
    ("text", "transport", "address"),
    [
        ("sip:1001@127.0.0.1", "udp", ("127.0.0.1", 5060)),
        ("sip:1001@127.0.0.1;transport=tcp", "tcp", ("127.0.0.1", 5060)),
        ("sip:1001@127.0.0.1;transport=TLS", "tls", ("127.0.0.1", 5061)),
        ("sips:1001@127.0.0.1", "tls", ("127.0.0.1", 5061)),
        ("sips:1001@[::1]:7061", "tls", ("::1", 7061)),
        # RFC 3261 26.2.2 / RFC 5630 3.1.3: sips over "tcp" is TLS over TCP.
        ("sips:gw.example;transport=tcp", "tls", ("gw.example", 5061)),
        ("sip:198.51.100.1:5080;transport=tls", "tls", ("198.51.100.1", 5080)),
    ],
)
def test_destination_for_uri(text: str, transport: str, address: tuple[str, int]) -> None:
    assert Destination.for_uri(uri(text)) == Destination(transport, address)


@pytest.mark.parametrize(
    "text", ["sip:h;transport=sctp", "sips:h;transport=ws", "sips:h;transport=udp"]
)
def test_transports_we_do_not_speak_are_refused(text: str) -> None:
    with pytest.raises(UriError, match="Unsupported transport"):
        Destination.for_uri(uri(text))


def test_a_tls_flow_is_reliable_and_says_tls_in_via() -> None:
    flow = Flow("tls", ("127.0.0.1", 5061), ("127.0.0.1", 40000), "tls-x-1")
    assert (flow.reliable, flow.via_transport) == (True, "TLS")
