"""Locating SIP servers in DNS: NAPTR, SRV and A/AAAA lookups for trunks (RFC 3263).

A trunk configured with ``resolve = "rfc3263"`` is found the way RFC 3263 4.1-4.2 says:

* NAPTR records of the domain (RFC 3403) whose flag is "S" and whose service is one we
  speak (``SIP+D2U``, ``SIP+D2T``, ``SIPS+D2T``; ``SIP+D2S`` is SCTP, which the gateway
  does not carry, so it is skipped), in order, then preference;
* the SRV records each of them names (or, without NAPTR, ``_sip._udp``, ``_sip._tcp`` or
  ``_sips._tcp`` of the domain for the configured transport), by priority and, within a
  priority, weighted-random by weight (RFC 2782);
* the A/AAAA records of each SRV target; without any SRV, those of the domain itself at
  the configured port.

The result is an ordered list of ``Target(transport, address, port)`` for failover: the
caller tries them in order on 408, 503 and timeouts (RFC 3263 4.3). A trunk with
``resolve = "static"`` and a host name gets only the A/AAAA step; one with an IP address
needs no lookup at all.

The ordering (``order_naptr``, ``order_srv``) and the record cache (``RecordCache``, TTLs
as the answers give them, negative answers per RFC 2308 5) are sans-IO and take the time
and the random source as arguments. ``Resolver`` is the Trio edge: queries go out through
dnspython's asynchronous resolver (which runs on Trio), to the configured name servers or
the system's, each lookup bounded by ``dns.timeout``.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import dns.asyncresolver
import dns.exception
import dns.message
import dns.nameserver
import dns.rdata
import dns.rdatatype
import dns.resolver
import trio
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.NAPTR import NAPTR
from dns.rdtypes.IN.SRV import SRV

from gateway.config import DnsConfig, TrunkConfig

__all__ = [
    "DnsConfigError",
    "DnsError",
    "DnsTimeout",
    "NaptrRecord",
    "RecordCache",
    "Resolver",
    "SrvRecord",
    "Target",
    "families_of",
    "order_naptr",
    "order_srv",
    "parse_server",
    "srv_name",
]

Family = Literal[4, 6]
RecordType = Literal["NAPTR", "SRV", "A", "AAAA"]

# RFC 3263 4.1 service fields and the transport each one means; SCTP is known but not
# carried by the gateway's endpoint.
_NAPTR_SERVICES = {"SIP+D2U": "udp", "SIP+D2T": "tcp", "SIPS+D2T": "tls", "SIP+D2S": "sctp"}
_SRV_PREFIX = {"udp": "_sip._udp", "tcp": "_sip._tcp", "tls": "_sips._tcp"}
# No answer is kept longer than a day, whatever TTL it claims.
MAX_TTL = 86400.0
MAX_CACHE_ENTRIES = 1024


class DnsError(Exception):
    """A name could not be resolved to any target; the text names it and says why."""


class DnsTimeout(DnsError):
    """The name servers did not answer within ``dns.timeout``."""


class DnsConfigError(ValueError):
    """A ``dns.servers`` entry that is not "ADDRESS", "ADDRESS:PORT" or "[IPV6]:PORT"."""


class Target(NamedTuple):
    """One place to send a request: transport ("udp", "tcp", "tls"), IP address, port."""

    transport: str
    host: str
    port: int

    def describe(self) -> str:
        """As in logs and status: udp:203.0.113.5:5060, tcp:[2001:db8::1]:5060."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class NaptrRecord:
    order: int
    preference: int
    flags: str
    service: str
    regexp: str
    replacement: str


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str


Record = NaptrRecord | SrvRecord | str  # A and AAAA records are their address text


# ---- sans-IO: ordering ------------------------------------------------------------------


def srv_name(transport: str, domain: str) -> str:
    """The SRV owner name for `transport` at `domain` (RFC 3263 4.1, last paragraphs)."""
    return f"{_SRV_PREFIX[transport]}.{domain.rstrip('.')}"


def order_naptr(records: Iterable[NaptrRecord], transports: Iterable[str]) -> list[tuple[str, str]]:
    """(transport, SRV name) of the usable NAPTR records, best first (RFC 3263 4.1).

    Usable: flag "S" (the replacement is an SRV name), a SIP service we speak and is in
    `transports`, no regexp (RFC 3263 4.1 says the replacement is used as it is).
    """
    allowed = set(transports)
    usable: list[tuple[int, int, str, str]] = []
    for record in records:
        transport = _NAPTR_SERVICES.get(record.service.upper())
        if transport is None or transport not in allowed:
            continue
        if record.flags.lower() != "s" or record.regexp or record.replacement in ("", "."):
            continue
        usable.append((record.order, record.preference, transport, record.replacement))
    usable.sort(key=lambda item: (item[0], item[1]))
    seen: set[tuple[str, str]] = set()
    ordered: list[tuple[str, str]] = []
    for _order, _preference, transport, name in usable:
        key = (transport, name.rstrip(".").lower())
        if key not in seen:
            seen.add(key)
            ordered.append((transport, name.rstrip(".")))
    return ordered


def order_srv(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """SRV records in the order to try them (RFC 2782, "Usage rules").

    Lowest priority first; within one priority, repeatedly pick a record at random with
    probability proportional to its weight (weight-0 records placed first, so they are
    picked only rarely when others weigh more). A single record whose target is "."
    means the service is decidedly not available: the result is empty.
    """
    if len(records) == 1 and records[0].target.rstrip(".") == "":
        return []
    live = [record for record in records if record.target.rstrip(".")]
    ordered: list[SrvRecord] = []
    for priority in sorted({record.priority for record in live}):
        ordered += _weighted_order([r for r in live if r.priority == priority], rng)
    return ordered


def _weighted_order(group: list[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    pending = [r for r in group if r.weight == 0] + [r for r in group if r.weight > 0]
    ordered: list[SrvRecord] = []
    while pending:
        total = sum(record.weight for record in pending)
        pick = rng.randint(0, total)
        running = 0
        for index, record in enumerate(pending):
            running += record.weight
            if running >= pick:
                ordered.append(pending.pop(index))
                break
    return ordered


# ---- sans-IO: the cache -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CacheEntry:
    expires_at: float
    records: tuple[Record, ...]
    nxdomain: bool = False


class RecordCache:
    """Answers kept for their TTL; negative ones (no data, NXDOMAIN) as RFC 2308 5 says."""

    def __init__(self, capacity: int = MAX_CACHE_ENTRIES) -> None:
        self.capacity = capacity
        self._entries: dict[tuple[str, str], CacheEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, name: str, rdtype: str, now: float) -> CacheEntry | None:
        key = (name.rstrip(".").lower(), rdtype)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at <= now:
            del self._entries[key]
            return None
        return entry

    def put(
        self,
        name: str,
        rdtype: str,
        records: Sequence[Record],
        ttl: float,
        now: float,
        *,
        nxdomain: bool = False,
    ) -> None:
        if ttl <= 0:
            return
        if len(self._entries) >= self.capacity:
            self._evict(now)
        key = (name.rstrip(".").lower(), rdtype)
        self._entries[key] = CacheEntry(now + min(ttl, MAX_TTL), tuple(records), nxdomain)

    def _evict(self, now: float) -> None:
        for key in [k for k, e in self._entries.items() if e.expires_at <= now]:
            del self._entries[key]
        while len(self._entries) >= self.capacity:
            del self._entries[next(iter(self._entries))]


# ---- configuration ----------------------------------------------------------------------

_BRACKETED = re.compile(r"\[([^\]]+)\]:([0-9]{1,5})")


def parse_server(text: str) -> tuple[str, int]:
    """A ``dns.servers`` entry as (address, port); port 53 when none is given."""
    host, port = text, 53
    match = _BRACKETED.fullmatch(text)
    if match is not None:
        host, port = match[1], int(match[2])
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
        if not port_text.isdigit():
            raise DnsConfigError(f"name server {text!r}: port must be a number")
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise DnsConfigError(f"name server {text!r}: must be an IP address") from None
    if not 1 <= port <= 65535:
        raise DnsConfigError(f"name server {text!r}: port must be from 1 to 65535")
    return host, port


def families_of(hosts: Iterable[str]) -> frozenset[Family]:
    """The address families of `hosts` (IP addresses, e.g. the SIP listeners)."""
    return frozenset(6 if ":" in host else 4 for host in hosts)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# ---- the Trio edge ----------------------------------------------------------------------


class Resolver:
    """RFC 3263 lookups over dnspython on Trio, with a TTL cache.

    `families` are the address families the gateway can send from (its SIP listeners):
    AAAA is asked only when 6 is among them, A only when 4 is.
    """

    def __init__(
        self,
        config: DnsConfig,
        *,
        families: Iterable[Family] = (4, 6),
        clock: Callable[[], float] = trio.current_time,
        rng: random.Random | None = None,
    ) -> None:
        if not config.timeout > 0:
            raise DnsConfigError(f"dns.timeout must be positive, got {config.timeout}")
        self.timeout = config.timeout
        self.families = frozenset(families)
        self.cache = RecordCache()
        self.queries = 0  # sent to a name server (cache misses)
        self._clock = clock
        self._rng = rng or random.Random()
        self._servers = [parse_server(server) for server in config.servers]
        self._resolver: dns.asyncresolver.Resolver | None = None

    def _dnspython(self) -> dns.asyncresolver.Resolver:
        # Made on first use: reading /etc/resolv.conf is left until a name needs it.
        if self._resolver is None:
            resolver = dns.asyncresolver.Resolver(configure=not self._servers)
            if self._servers:
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(host, port) for host, port in self._servers
                ]
            resolver.timeout = self.timeout
            resolver.lifetime = self.timeout
            resolver.cache = None  # ours, which keeps negative answers too
            self._resolver = resolver
        return self._resolver

    # ---- public --------------------------------------------------------------------------

    async def targets_for(self, trunk: TrunkConfig) -> list[Target]:
        """Where to send to `trunk`, in the order to try."""
        if trunk.resolve == "rfc3263":
            return await self.locate(trunk.host, trunk.transport, trunk.port)
        return await self.static(trunk.host, trunk.transport, trunk.port)

    async def static(self, host: str, transport: str, port: int) -> list[Target]:
        """`host` at `port`: as it is when an IP address, else its A/AAAA records."""
        if _is_ip(host):
            return [Target(transport, host, port)]
        addresses = await self.addresses(host)
        if not addresses:
            raise DnsError(f"{host}: no address record (A/AAAA)")
        return [Target(transport, address, port) for address in addresses]

    async def locate(self, host: str, transport: str, port: int) -> list[Target]:
        """RFC 3263 4.1-4.2 for a domain; `transport` and `port` apply without NAPTR/SRV."""
        if _is_ip(host):
            return [Target(transport, host, port)]
        transports = ("tls",) if transport == "tls" else ("udp", "tcp", "tls")
        naptr = await self._lookup(host, "NAPTR", no_such_domain_fails=True)
        services = order_naptr([r for r in naptr if isinstance(r, NaptrRecord)], transports)
        targets: list[Target] = []
        for service_transport, name in services:
            targets += await self._srv_targets(service_transport, name) or []
        if not targets:
            targets = await self._configured_srv(host, transport) or []
        if not targets:
            targets = [Target(transport, a, port) for a in await self.addresses(host)]
        if not targets:
            raise DnsError(f"{host}: no NAPTR, SRV or address record for SIP")
        return _unique(targets)

    async def _configured_srv(self, host: str, transport: str) -> list[Target] | None:
        """SRV of `host` for `transport`; None when there is none (then A/AAAA apply)."""
        name = srv_name(transport, host)
        targets = await self._srv_targets(transport, name)
        if targets is not None and not targets:
            # RFC 2782: a "." target means "decidedly not available"; targets without
            # addresses leave nothing to try either. A/AAAA of the domain are not SIP.
            raise DnsError(f"{name}: the SRV records name no target with an address")
        return targets

    async def addresses(self, host: str) -> list[str]:
        """The IPv4 then IPv6 addresses of `host` (empty when it has none)."""
        found: list[str] = []
        kinds: tuple[tuple[Family, RecordType], ...] = ((4, "A"), (6, "AAAA"))
        for family, rdtype in kinds:
            if family in self.families:
                found += [r for r in await self._lookup(host, rdtype) if isinstance(r, str)]
        return found

    # ---- lookups ---------------------------------------------------------------------------

    async def _srv_targets(self, transport: str, name: str) -> list[Target] | None:
        """The targets of the SRV records at `name`, in order; None when it has none."""
        records = [r for r in await self._lookup(name, "SRV") if isinstance(r, SrvRecord)]
        if not records:
            return None
        targets: list[Target] = []
        for record in order_srv(records, self._rng):
            for address in await self.addresses(record.target):
                targets.append(Target(transport, address, record.port))
        return targets

    async def _lookup(
        self, name: str, rdtype: RecordType, *, no_such_domain_fails: bool = False
    ) -> tuple[Record, ...]:
        now = self._clock()
        entry = self.cache.get(name, rdtype, now)
        if entry is None:
            entry = await self._query(name, rdtype, now)
        if entry.nxdomain and no_such_domain_fails:
            raise DnsError(f"{name}: no such domain (NXDOMAIN)")
        return entry.records

    async def _query(self, name: str, rdtype: RecordType, now: float) -> CacheEntry:
        self.queries += 1
        qname = name.rstrip(".") + "."
        try:
            answer = await self._dnspython().resolve(qname, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            responses: dict[object, dns.message.Message] = exc.kwargs.get("responses", {})
            ttl = _negative_ttl(responses.values())
            self.cache.put(name, rdtype, (), ttl, now, nxdomain=True)
            return CacheEntry(now + ttl, (), nxdomain=True)
        except dns.exception.Timeout as exc:
            raise DnsTimeout(f"{name} {rdtype}: no answer within {self.timeout:g} s") from exc
        except dns.resolver.NoNameservers as exc:
            raise DnsError(f"{name} {rdtype}: every name server failed ({exc})") from exc
        except dns.exception.DNSException as exc:
            raise DnsError(f"{name} {rdtype}: {exc}") from exc
        if answer.rrset is None:
            ttl = _negative_ttl([answer.response])
            self.cache.put(name, rdtype, (), ttl, now)
            return CacheEntry(now + ttl, ())
        records = tuple(_record(rdata) for rdata in answer.rrset)
        self.cache.put(name, rdtype, records, float(answer.rrset.ttl), now)
        return CacheEntry(now + answer.rrset.ttl, records)


def _record(rdata: dns.rdata.Rdata) -> Record:
    """dnspython's rdata as our plain records."""
    if isinstance(rdata, NAPTR):
        return NaptrRecord(
            order=rdata.order,
            preference=rdata.preference,
            flags=_text(rdata.flags),
            service=_text(rdata.service),
            regexp=_text(rdata.regexp),
            replacement=rdata.replacement.to_text().rstrip("."),
        )
    if isinstance(rdata, SRV):
        return SrvRecord(
            priority=rdata.priority,
            weight=rdata.weight,
            port=rdata.port,
            target=rdata.target.to_text().rstrip("."),
        )
    if isinstance(rdata, A | AAAA):
        return str(rdata.address)
    raise DnsError(f"unexpected {rdata.rdtype!r} record in an answer")


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace")


def _negative_ttl(responses: Iterable[dns.message.Message]) -> float:
    """RFC 2308 5: the lesser of the SOA's TTL and its MINIMUM; 0 (not kept) without one."""
    for response in responses:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                soa = rrset[0]
                assert isinstance(soa, SOA)
                return float(min(rrset.ttl, soa.minimum))
    return 0.0


def _unique(targets: list[Target]) -> list[Target]:
    seen: set[Target] = set()
    ordered: list[Target] = []
    for target in targets:
        if target not in seen:
            seen.add(target)
            ordered.append(target)
    return ordered
