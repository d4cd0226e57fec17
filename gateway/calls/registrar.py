"""SIP registrar: bindings of app users to where they can be reached (RFC 3261 10.3).

Each binding remembers the flow the REGISTER arrived on (received/rport, the
TCP connection), because apps sit behind NAT: requests toward them must go back
to that source, over that connection (RFC 5626 5.3, RFC 5923). The decision
part (`decide`) is pure; `Registrar` keeps a write-through cache over the store.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gateway.sip.headers import NameAddr, parse_name_addr_list
from gateway.sip.message import Request, Response, make_response
from gateway.store.base import Store
from gateway.store.model import Binding
from gateway.transport.flow import Destination, Flow


class RegisterRefused(Exception):
    def __init__(self, status: int, reason: str, extra: list[tuple[str, str]] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.extra = extra or []


@dataclass(frozen=True, slots=True)
class ExpiryPolicy:
    min_expires: int
    max_expires: int
    default_expires: int


@dataclass
class Changes:
    save: list[Binding] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)  # contact URIs
    remove_all: bool = False


def _expires_of(contact: NameAddr, header: str | None, policy: ExpiryPolicy) -> int:
    raw = contact.params.get("expires") or header
    if raw is None:
        return policy.default_expires
    if not raw.strip().isdigit():
        raise RegisterRefused(400, "Bad Expires value")
    return int(raw)


def decide(
    request: Request,
    aor: str,
    flow: Flow,
    existing: list[Binding],
    policy: ExpiryPolicy,
    now: float,
) -> Changes:
    """What a REGISTER changes (RFC 3261 10.3 steps 6-7); raises RegisterRefused."""
    contacts = request.headers.get_list("Contact")
    header_expires = request.headers.get("Expires")
    if header_expires is not None:
        header_expires = header_expires.strip()
    changes = Changes()
    if not contacts:
        return changes  # a query: answer with the current bindings
    if any(c.strip() == "*" for c in contacts):
        if len(contacts) != 1 or header_expires != "0":
            raise RegisterRefused(400, "Wildcard Contact needs Expires: 0 and no other Contact")
        changes.remove_all = True
        return changes
    seq = request.cseq.seq
    call_id = request.call_id
    by_contact = {b.contact: b for b in existing}
    for value in contacts:
        try:
            contact = parse_name_addr_list(value)[0]
        except ValueError as exc:  # HeaderError, UriError: the client's mistake, not ours
            raise RegisterRefused(400, f"Bad Contact: {exc}") from None
        uri = str(contact.uri)
        expires = _expires_of(contact, header_expires, policy)
        old = by_contact.get(uri)
        if old is not None and old.call_id == call_id and old.cseq >= seq:
            raise RegisterRefused(500, "Out of order REGISTER (CSeq not above the binding's)")
        if expires == 0:
            changes.remove.append(uri)
            continue
        if expires < policy.min_expires:
            raise RegisterRefused(
                423, "Interval Too Brief", [("Min-Expires", str(policy.min_expires))]
            )
        expires = min(expires, policy.max_expires)
        changes.save.append(_binding(aor, contact, uri, expires, flow, request, now))
    return changes


def _binding(
    aor: str, contact: NameAddr, uri: str, expires: int, flow: Flow, request: Request, now: float
) -> Binding:
    reg_id = contact.params.get("reg-id")
    instance = contact.params.get("+sip.instance")
    return Binding(
        aor=aor,
        contact=uri,
        expires_at=now + expires,
        source_host=flow.remote[0],
        source_port=flow.remote[1],
        transport=flow.transport,
        flow_id=flow.conn_id,
        instance=instance.strip('"') if instance else None,
        reg_id=int(reg_id) if reg_id and reg_id.isdigit() else None,
        call_id=request.call_id,
        cseq=request.cseq.seq,
        user_agent=request.headers.get("User-Agent"),
        local_host=flow.local[0],
        local_port=flow.local[1],
    )


def destination_of(binding: Binding) -> Destination:
    """Send toward the binding's source, over its connection when it has one (RFC 5626).

    Registered apps live on the access side: without a flow, requests to them leave from
    the access role's listener."""
    remote = (binding.source_host, binding.source_port)
    flow = None
    if binding.transport == "udp":
        flow = Flow("udp", (binding.local_host, binding.local_port), remote)
    elif binding.flow_id is not None:
        flow = Flow(
            binding.transport, (binding.local_host, binding.local_port), remote, binding.flow_id
        )
    return Destination(binding.transport, remote, flow, role="access")


class Registrar:
    def __init__(self, store: Store, policy: ExpiryPolicy) -> None:
        self.store = store
        self.policy = policy
        self._bindings: dict[str, list[Binding]] = {}

    async def load(self) -> None:
        now = time.time()
        await self.store.purge_expired_bindings(now)
        for binding in await self.store.all_bindings(now):
            self._bindings.setdefault(binding.aor, []).append(binding)

    def bindings(self, aor: str) -> list[Binding]:
        now = time.time()
        live = [b for b in self._bindings.get(aor, []) if b.expires_at > now]
        if live:
            self._bindings[aor] = live
        else:
            self._bindings.pop(aor, None)
        return live

    def count(self) -> int:
        return sum(len(self.bindings(aor)) for aor in list(self._bindings))

    def all(self) -> list[Binding]:
        return [b for aor in list(self._bindings) for b in self.bindings(aor)]

    async def register(self, request: Request, aor: str, flow: Flow) -> Response:
        now = time.time()
        try:
            changes = decide(request, aor, flow, self.bindings(aor), self.policy, now)
        except RegisterRefused as exc:
            response = make_response(request, exc.status, exc.reason)
            for name, value in exc.extra:
                response.headers.add(name, value)
            return response
        await self._apply(aor, changes)
        return self._ok(request, aor, now)

    async def _apply(self, aor: str, changes: Changes) -> None:
        # Written before acknowledged (DESIGN rule 5): the 200 goes out after the store has it.
        if changes.remove_all:
            await self.store.remove_bindings(aor)
            self._bindings.pop(aor, None)
            return
        current = {b.contact: b for b in self._bindings.get(aor, [])}
        for contact in changes.remove:
            await self.store.remove_binding(aor, contact)
            current.pop(contact, None)
        for binding in changes.save:
            await self.store.save_binding(binding)
            current[binding.contact] = binding
        if current:
            self._bindings[aor] = list(current.values())
        else:
            self._bindings.pop(aor, None)

    def _ok(self, request: Request, aor: str, now: float) -> Response:
        response = make_response(request, 200)
        for binding in self.bindings(aor):
            left = max(0, int(binding.expires_at - now))
            response.headers.add("Contact", f"<{binding.contact}>;expires={left}")
        supported = {v.strip().lower() for v in request.headers.get_list("Supported")}
        if "outbound" in supported and any(b.reg_id is not None for b in self.bindings(aor)):
            response.headers.add("Require", "outbound")  # RFC 5626 6
        response.headers.add("Date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)))
        return response
