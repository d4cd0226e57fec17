"""SIP dialog state, sans-IO.

Implements RFC 3261 section 12 (dialog creation by UAC and UAS, 12.1; requests
within a dialog, 12.2, including strict-router handling of the route set;
target refresh; CSeq ordering; termination, 12.3), the ACK for a 2xx
(13.2.2.4) and the BYE rules of section 15.

A `Dialog` only holds state and builds or checks messages: the caller adds a
Via with a fresh branch and hands requests to the transaction layer.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from gateway.sip.headers import CSeq, HeaderError, NameAddr, parse_name_addr
from gateway.sip.message import Headers, Request, Response
from gateway.sip.uri import SipUri, TelUri, UriError

# Requests that may change the remote target (RFC 3261 12.2, RFC 3311 5.2).
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE"})
# Requests that carry our Contact so the peer can refresh its target.
_CONTACT_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})
MAX_CSEQ = 2**31 - 1


class DialogError(ValueError):
    """A message does not fit the dialog.

    `status` is the response the caller should send for an offending request:
    500 for an out-of-order CSeq (12.2.2), 481 when the request does not belong
    to a live dialog, 400 for a malformed From/To/CSeq/Contact/Record-Route;
    None when no response applies.
    """

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Role(enum.Enum):
    UAC = "uac"
    UAS = "uas"


@dataclass(frozen=True, slots=True)
class _Fields:
    """The dialog-relevant headers of a message, parsed once."""

    call_id: str
    from_: NameAddr
    to: NameAddr
    cseq: CSeq


def _fields(message: Request | Response) -> _Fields:
    # Header properties parse lazily and raise HeaderError / UriError; turn that
    # into this module's error so hostile input has one documented failure mode.
    try:
        return _Fields(message.call_id, message.from_, message.to, message.cseq)
    except ValueError as exc:
        raise DialogError(f"Malformed message: {exc}", 400) from exc


def _route_set(message: Request | Response, *, reverse: bool) -> list[str]:
    routes = message.headers.get_list("Record-Route")
    for route in routes:
        _route_uri(route)
    return routes[::-1] if reverse else routes


def _route_uri(route: str) -> SipUri | TelUri:
    try:
        return parse_name_addr(route).uri
    except (HeaderError, UriError) as exc:
        raise DialogError(f"Bad Record-Route entry {route!r}: {exc}", 400) from exc


def _contact_of(message: Request | Response) -> NameAddr | None:
    contacts = message.headers.get_list("Contact")
    if not contacts or contacts[0].strip() == "*":
        return None
    try:
        return parse_name_addr(contacts[0])
    except (HeaderError, UriError) as exc:
        raise DialogError(f"Bad Contact header: {exc}", 400) from exc


def _name_addr_value(uri: str, tag: str | None) -> str:
    return f"<{uri}>" if tag is None else f"<{uri}>;tag={tag}"


def _bracketed(contact: str) -> str:
    return contact if "<" in contact else f"<{contact}>"


def _is_loose(route: str) -> bool:
    uri = _route_uri(route)
    return isinstance(uri, SipUri) and "lr" in uri.params


def _as_request_uri(route: str) -> str:
    # RFC 3261 12.2.1.1 / 19.1.1: the method parameter and headers are not
    # allowed in a Request-URI, so a strict router's URI loses them.
    uri = _route_uri(route)
    if isinstance(uri, SipUri):
        params = {k: v for k, v in uri.params.items() if k != "method"}
        uri = replace(uri, params=params, headers={})
    return str(uri)


@dataclass
class Dialog:
    """One dialog (RFC 3261 12): identifiers, sequence numbers, route set, target."""

    role: Role
    call_id: str
    local_tag: str
    remote_tag: str | None
    local_seq: int | None
    remote_seq: int | None
    local_uri: str
    remote_uri: str
    remote_target: str
    local_contact: str
    invite_cseq: int
    route_set: list[str] = field(default_factory=list)
    state: DialogState = DialogState.EARLY

    @classmethod
    def as_uac(cls, invite: Request, response: Response) -> Dialog:
        """The dialog a 101-199 with a To tag (early) or a 2xx (confirmed) creates
        for the UAC that sent `invite` (RFC 3261 12.1.2)."""
        status = response.status
        sent, got = _fields(invite), _fields(response)
        if invite.method != "INVITE" or got.cseq.method != "INVITE":
            raise DialogError("Only an INVITE and a response to it create a dialog here")
        if got.call_id != sent.call_id or got.cseq.seq != sent.cseq.seq:
            raise DialogError("Response does not answer this INVITE")
        local_tag = sent.from_.tag
        if local_tag is None:
            raise DialogError("INVITE has no From tag")
        remote_tag = got.to.tag
        if not 101 <= status <= 299:
            raise DialogError(f"A {status} response does not create a dialog")
        if status < 200 and remote_tag is None:
            raise DialogError("A provisional response without To tag creates no dialog")
        local_contact = invite.headers.get_list("Contact")
        if not local_contact:
            raise DialogError("INVITE has no Contact")
        remote_uri = str(sent.to.uri)
        contact = _contact_of(response)
        if contact is None and status >= 200:
            raise DialogError(f"{status} response to INVITE has no Contact")
        return cls(
            role=Role.UAC,
            call_id=sent.call_id,
            local_tag=local_tag,
            remote_tag=remote_tag,
            local_seq=sent.cseq.seq,
            remote_seq=None,
            local_uri=str(sent.from_.uri),
            remote_uri=remote_uri,
            remote_target=remote_uri if contact is None else str(contact.uri),
            local_contact=local_contact[0],
            invite_cseq=sent.cseq.seq,
            route_set=_route_set(response, reverse=True),
            state=DialogState.EARLY if status < 200 else DialogState.CONFIRMED,
        )

    @classmethod
    def as_uas(cls, invite: Request, local_tag: str, local_contact: str) -> Dialog:
        """The dialog of the UAS answering `invite` with To tag `local_tag`
        (RFC 3261 12.1.1). It is early until `confirm()` (when the 2xx is sent)."""
        if invite.method != "INVITE":
            raise DialogError(f"{invite.method} does not create a dialog here")
        got = _fields(invite)
        if got.to.tag is not None:
            raise DialogError("INVITE already has a To tag: it is inside a dialog", 481)
        if not local_tag:
            raise DialogError("Local tag must not be empty")
        contact = _contact_of(invite)
        if contact is None:
            raise DialogError("INVITE has no Contact", 400)
        return cls(
            role=Role.UAS,
            call_id=got.call_id,
            local_tag=local_tag,
            remote_tag=got.from_.tag,
            local_seq=None,
            remote_seq=got.cseq.seq,
            local_uri=str(got.to.uri),
            remote_uri=str(got.from_.uri),
            remote_target=str(contact.uri),
            local_contact=local_contact,
            invite_cseq=got.cseq.seq,
            route_set=_route_set(invite, reverse=False),
        )

    @property
    def id(self) -> tuple[str, str, str | None]:
        """(Call-ID, local tag, remote tag)."""
        return self.call_id, self.local_tag, self.remote_tag

    def confirm(self) -> None:
        """The 2xx to the initial INVITE was sent (UAS) or received (UAC)."""
        if self.state is DialogState.TERMINATED:
            raise DialogError("Dialog is terminated", 481)
        self.state = DialogState.CONFIRMED

    def terminate(self) -> None:
        self.state = DialogState.TERMINATED

    def matches(self, message: Request | Response) -> bool:
        """Whether `message` belongs to this dialog: a request from the peer, or
        a response to a request we sent in it."""
        try:
            got = _fields(message)
        except DialogError:
            return False
        return self._matches(message, got)

    def _matches(self, message: Request | Response, got: _Fields) -> bool:
        if got.call_id != self.call_id:
            return False
        from_tag, to_tag = got.from_.tag, got.to.tag
        if isinstance(message, Request):
            return to_tag == self.local_tag and from_tag == self.remote_tag
        return from_tag == self.local_tag and to_tag == self.remote_tag

    def create_request(
        self,
        method: str,
        *,
        body: bytes = b"",
        content_type: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
    ) -> Request:
        """A new request within the dialog (RFC 3261 12.2.1.1), with the next CSeq.

        The caller adds the Via (with a new branch). ACK goes through
        `create_ack` and CANCEL is built from the INVITE it cancels.
        """
        method = method.upper()
        if method in ("ACK", "CANCEL"):
            raise DialogError(f"{method} is not created with create_request")
        if self.state is DialogState.TERMINATED:
            raise DialogError("Dialog is terminated", 481)
        if method == "BYE" and self.role is Role.UAS and self.state is DialogState.EARLY:
            raise DialogError("The callee must not send BYE on an early dialog (RFC 3261 15)")
        if body and content_type is None:
            raise DialogError("A body needs a content type")
        seq = 1 if self.local_seq is None else self.local_seq + 1
        if seq > MAX_CSEQ:
            raise DialogError("Local CSeq exhausted")
        self.local_seq = seq
        request = self._build(method, seq, body, content_type)
        if method in _CONTACT_METHODS:
            request.headers.add("Contact", _bracketed(self.local_contact))
        for name, value in extra:
            request.headers.add(name, value)
        return request

    def create_ack(
        self, invite_cseq: int, body: bytes = b"", content_type: str | None = None
    ) -> Request:
        """The ACK for a 2xx to the INVITE with CSeq `invite_cseq` (13.2.2.4)."""
        if self.state is DialogState.TERMINATED:
            raise DialogError("Dialog is terminated", 481)
        return self._build("ACK", invite_cseq, body, content_type)

    def _build(self, method: str, seq: int, body: bytes, content_type: str | None) -> Request:
        if body and content_type is None:
            raise DialogError("A body needs a content type")
        request_uri, routes = self._request_uri_and_routes()
        headers = Headers()
        for route in routes:
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        headers.add("From", _name_addr_value(self.local_uri, self.local_tag))
        headers.add("To", _name_addr_value(self.remote_uri, self.remote_tag))
        headers.add("Call-ID", self.call_id)
        headers.add("CSeq", f"{seq} {method}")
        if content_type is not None and body:
            headers.add("Content-Type", content_type)
        return Request(method, request_uri, headers, body)

    def _request_uri_and_routes(self) -> tuple[str, list[str]]:
        if not self.route_set or _is_loose(self.route_set[0]):
            return self.remote_target, list(self.route_set)
        # Strict router first (12.2.1.1): its URI becomes the Request-URI and the
        # remote target goes last in the Route header.
        first, rest = self.route_set[0], self.route_set[1:]
        return _as_request_uri(first), [*rest, f"<{self.remote_target}>"]

    def receive_request(self, request: Request) -> None:
        """Check and apply a request from the peer (RFC 3261 12.2.2).

        Raises DialogError with status 481 when it does not belong to this live
        dialog and 500 when its CSeq is lower than the last one (out of order).
        """
        if self.state is DialogState.TERMINATED:
            raise DialogError("Dialog is terminated", 481)
        got = _fields(request)
        if not self._matches(request, got):
            raise DialogError("Request does not belong to this dialog", 481)
        method = request.method
        if method in ("ACK", "CANCEL"):
            return  # they reuse the CSeq number of the request they refer to
        seq = got.cseq.seq
        if self.remote_seq is not None and seq < self.remote_seq:
            raise DialogError(f"CSeq {seq} is lower than the last ({self.remote_seq})", 500)
        contact = _contact_of(request) if method in TARGET_REFRESH_METHODS else None
        self.remote_seq = seq
        if contact is not None:
            self.remote_target = str(contact.uri)
        if method == "BYE":
            self.state = DialogState.TERMINATED

    def update_from_response(self, response: Response) -> None:
        """Apply a response to a request we sent in this dialog (or to the INVITE
        that created it): target refresh, early -> confirmed, termination."""
        got = _fields(response)
        if self._ends_early_dialog(response.status, got):
            self.state = DialogState.TERMINATED
            return
        if not self._matches(response, got):
            raise DialogError("Response does not belong to this dialog")
        status, method = response.status, got.cseq.method
        if status in (408, 481) or (method == "BYE" and status >= 200):
            # 12.2.1.2: a 481 or 408 to an in-dialog request ends the dialog.
            self.state = DialogState.TERMINATED
            return
        initial = method == "INVITE" and got.cseq.seq == self.invite_cseq
        if method in TARGET_REFRESH_METHODS and (200 <= status < 300 or (initial and status > 100)):
            self._refresh_target(response)
        if initial and 200 <= status < 300 and self.state is DialogState.EARLY:
            # 13.2.2.4: the route set is recomputed from the 2xx.
            self.route_set = _route_set(response, reverse=True)
            self.state = DialogState.CONFIRMED

    def _ends_early_dialog(self, status: int, got: _Fields) -> bool:
        # 12.3: a non-2xx final to the initial INVITE ends every early dialog of
        # that INVITE, whatever To tag the final response carries.
        return (
            self.state is DialogState.EARLY
            and self.role is Role.UAC
            and status >= 300
            and got.cseq.method == "INVITE"
            and got.cseq.seq == self.invite_cseq
            and got.call_id == self.call_id
            and got.from_.tag == self.local_tag
        )

    def _refresh_target(self, message: Request | Response) -> None:
        contact = _contact_of(message)
        if contact is not None:
            self.remote_target = str(contact.uri)
