"""A tiny authoritative DNS server for tests (answers built with dnspython, on 127.0.0.1)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import trio

from gateway.config import DnsConfig
from tests.integration.peers import free_udp_port

SOA = "ns.test. hostmaster.test. 1 3600 600 86400 60"


def _fqdn(name: str) -> str:
    return name.lower().rstrip(".") + "."


@dataclass
class TinyDns:
    """Authoritative answers for a few names; NXDOMAIN for the rest (RFC 2308 SOA included).

    `records` maps (name, type) to rdata texts in zone-file form. Names in `silent` are
    never answered, names in `servfail` get SERVFAIL.
    """

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    ttl: int = 300
    silent: set[str] = field(default_factory=set)
    servfail: set[str] = field(default_factory=set)
    queries: list[tuple[str, str]] = field(default_factory=list)
    port: int = 0

    def add(self, name: str, rdtype: str, *texts: str) -> None:
        self.records.setdefault((_fqdn(name), rdtype), []).extend(texts)

    def answer(self, query: dns.message.Message) -> dns.message.Message | None:
        question = query.question[0]
        name = _fqdn(question.name.to_text())
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name.rstrip("."), rdtype))
        if name in self.silent:
            return None
        response = dns.message.make_response(query)
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        texts = self.records.get((name, rdtype))
        if texts:
            response.answer.append(dns.rrset.from_text_list(name, self.ttl, "IN", rdtype, texts))
            return response
        # A name with records below it exists (an empty non-terminal, RFC 8020): no data.
        if not any(owner == name or owner.endswith("." + name) for owner, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(dns.rrset.from_text("test.", 300, "IN", "SOA", SOA))
        return response

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            self.port = free_udp_port("127.0.0.1")
            await sock.bind(("127.0.0.1", self.port))
            task_status.started()
            while True:
                data, source = await sock.recvfrom(4096)
                response = self.answer(dns.message.from_wire(data))
                if response is not None:
                    await sock.sendto(response.to_wire(), source)

    def config(self, timeout: float = 1.0) -> DnsConfig:
        return DnsConfig(servers=[f"127.0.0.1:{self.port}"], timeout=timeout)


@asynccontextmanager
async def tiny_dns() -> AsyncIterator[TinyDns]:
    server = TinyDns()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()
