"""The box's media addresses, one per network role and address family.

A leg toward a carrier trunk binds its RTP/RTCP sockets on the carrier
("interconnect") address, a leg toward an app on the access address; addresses
of role ``""`` (``media.host``/``media.host6``) serve legs whose role has none
of its own. Each address has its own port allocator (the same port range on
another host) and the address written into SDP for it (RFC 4566 c=; the public
address behind a 1:1 NAT).

:meth:`MediaAddresses.pick` says which address a leg of a role and family binds
on. Nothing here binds a socket: this is the lookup the relay
(:mod:`gateway.media.relay`) consults when it opens or moves a leg.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only for annotations: the relay imports this module.
    from gateway.media.relay import PortAllocator

__all__ = ["MediaAddress", "MediaAddresses", "canonical_host"]


def canonical_host(host: str) -> tuple[socket.AddressFamily, str]:
    """The family and canonical text of a numeric IP address.

    Canonical means what the kernel reports as a packet's source, so SDP
    addresses and received sources compare as plain strings.
    """
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, host)
        except (OSError, ValueError):
            continue
        return family, socket.inet_ntop(family, packed)
    raise ValueError(f"not a numeric IPv4 or IPv6 address: {host!r}")


def _family_name(family: socket.AddressFamily) -> str:
    return "IPv6" if family == socket.AF_INET6 else "IPv4"


@dataclass(frozen=True)
class MediaAddress:
    """One media address: its role, where its sockets bind, what SDP says.

    ``sdp_host`` is stored in canonical form and must be of the allocator's
    family (a peer cannot reach IPv4 sockets at an IPv6 address).
    """

    role: str
    allocator: PortAllocator
    sdp_host: str

    def __post_init__(self) -> None:
        family, canonical = canonical_host(self.sdp_host)
        if family != self.allocator.family:
            raise ValueError(
                f"media address {self.allocator.host} (role {self.role!r}): SDP address "
                f"{self.sdp_host} is {_family_name(family)}, the sockets are "
                f"{_family_name(self.allocator.family)}"
            )
        object.__setattr__(self, "sdp_host", canonical)

    @property
    def family(self) -> socket.AddressFamily:
        """The address family of the sockets bound here."""
        return self.allocator.family


class MediaAddresses:
    """The media addresses a call's legs may bind on; the first is the default."""

    def __init__(self, entries: Sequence[MediaAddress]) -> None:
        if not entries:
            raise ValueError("media addresses: need at least one address")
        seen: dict[tuple[str, socket.AddressFamily], MediaAddress] = {}
        for entry in entries:
            key = (entry.role, entry.family)
            if key in seen:
                raise ValueError(
                    f"media addresses: two {_family_name(entry.family)} addresses for role "
                    f"{entry.role!r} ({seen[key].allocator.host} and {entry.allocator.host})"
                )
            seen[key] = entry
        self.entries: tuple[MediaAddress, ...] = tuple(entries)
        self._by_key = seen

    @classmethod
    def single(
        cls,
        allocator: PortAllocator,
        sdp_host: str,
        alternate: PortAllocator | None = None,
        alternate_sdp_host: str | None = None,
    ) -> MediaAddresses:
        """Role-less addresses: ``allocator``, and ``alternate`` of the other family."""
        entries = [MediaAddress("", allocator, sdp_host)]
        if alternate is not None:
            if alternate.family == allocator.family:
                raise ValueError("the alternate media allocator must be of the other family")
            entries.append(MediaAddress("", alternate, alternate_sdp_host or alternate.host))
        return cls(entries)

    def __iter__(self) -> Iterator[MediaAddress]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def default(self) -> MediaAddress:
        """The address of last resort (the first given)."""
        return self.entries[0]

    def pick(self, role: str, family: socket.AddressFamily | None = None) -> MediaAddress:
        """The address a leg of ``role`` binds on when its peer is of ``family``.

        Preference: the role's address of that family; a role-less one of that
        family; the role's first address of any family (the offer/answer then
        refuses the peer's family); the default. ``family`` None means the
        role's first address, else the default's family.
        """
        if family is None:
            own = self._first_of(role)
            if own is not None:
                return own
            family = self.default.family
        for key in ((role, family), ("", family)):
            found = self._by_key.get(key)
            if found is not None:
                return found
        return self._first_of(role) or self.default

    def families(self, role: str = "") -> tuple[socket.AddressFamily, ...]:
        """The families a leg of ``role`` can bind in (its own or role-less addresses)."""
        found: list[socket.AddressFamily] = []
        for entry in self.entries:
            if entry.role in (role, "") and entry.family not in found:
                found.append(entry.family)
        return tuple(found) or (self.default.family,)

    @property
    def allocators(self) -> tuple[PortAllocator, ...]:
        """Each distinct allocator once, in order (for status: ports in use per address)."""
        distinct: list[PortAllocator] = []
        for entry in self.entries:
            if not any(entry.allocator is known for known in distinct):
                distinct.append(entry.allocator)
        return tuple(distinct)

    @property
    def in_use(self) -> int:
        """Port pairs handed out over all addresses."""
        return sum(allocator.in_use for allocator in self.allocators)

    @property
    def capacity(self) -> int:
        """Port pairs all addresses hold together."""
        return sum(allocator.capacity for allocator in self.allocators)

    def _first_of(self, role: str) -> MediaAddress | None:
        return next((entry for entry in self.entries if entry.role == role), None)
