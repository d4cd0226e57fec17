"""The configuration of edgegw: one typed tree loaded from one TOML file.

The file is decoded with ``tomllib`` and converted strictly into frozen msgspec Structs that
refuse unknown keys, so a typo is an error rather than a silently ignored setting. After
decoding, semantic checks (port ranges, enums, duplicates, E.164 numbers, expiry bounds, the
demo-secret rule of DESIGN rule 7) run. Every problem is a ``ConfigError`` naming the file,
the key and the reason (DESIGN rule 6), e.g.
``/etc/edgegw.toml: media.port_min: expected an int, got str``.

Every key has a default, so an empty file is a valid, unprovisioned box (no subscribers,
trunks or partners). ``default_config()`` is the embedded loopback demo of the design brief
and ``dump_default_toml()`` prints it as TOML.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import re
import tomllib
import typing
from collections.abc import Iterable, Iterator
from difflib import get_close_matches
from pathlib import Path
from typing import Any, Literal

import msgspec

from gateway.store.model import SrtpPolicy, Subscriber, Transport

__all__ = [
    "Config",
    "ConfigError",
    "ControlConfig",
    "GeneralConfig",
    "HttpConfig",
    "LimitsConfig",
    "ListenConfig",
    "MediaAddressConfig",
    "MediaConfig",
    "NetworkConfig",
    "NetworkInterfaceConfig",
    "NetworkRouteConfig",
    "PartnerConfig",
    "RoutingConfig",
    "SipConfig",
    "SubscriberConfig",
    "TrunkConfig",
    "config_to_toml",
    "default_config",
    "dump_default_toml",
    "load_config",
    "parse_config",
]

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["console", "json", "journald"]
DigestAlgorithm = Literal["MD5", "SHA-256"]
NetworkRole = Literal["access", "carrier", "mgmt"]
# A listener's role; "" takes it from the [network] interface holding its address.
ListenRole = Literal["", "access", "carrier", "mgmt"]

KNOWN_CODECS = ("PCMA", "PCMU", "G722", "G729", "opus")
SRTP_SUITES = (
    "AES_CM_128_HMAC_SHA1_80",
    "AES_CM_128_HMAC_SHA1_32",
    "AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM",
)


class ConfigError(ValueError):
    """A configuration refused: ``str()`` is "FILE: KEY: REASON" ("FILE: REASON" without key)."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(file, key, reason)
        self.file = file
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        if self.key:
            return f"{self.file}: {self.key}: {self.reason}"
        return f"{self.file}: {self.reason}"


class GeneralConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    var_dir: str = "./var"
    log_level: LogLevel = "info"
    log_format: LogFormat = "console"
    # How often calls in progress are written to the store; a crash loses at most this
    # much of their duration (DESIGN rule 5).
    checkpoint_interval: float = 5.0
    # The gateway's own log, besides stderr (empty: stderr only), rotated by size: at
    # log_max_bytes it becomes FILE.1 (FILE.1 becomes FILE.2 ...), log_backups kept.
    log_file: str = ""
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 5
    # Free space kept on the var dir's filesystem: below it status shows disk_low and
    # captures stop; CDRs are still written.
    disk_reserve_mb: int = 100
    # Retention (gateway.control.retention), checked every minute; 0 means no limit. Rotated
    # log files (FILE.1 ...) older than log_max_age_days are deleted; the oldest finished
    # files of <var_dir>/captures and <var_dir>/exports go past the size or age limit.
    log_max_age_days: int = 30
    capture_max_mb: int = 1024
    capture_max_age_days: int = 7
    export_max_mb: int = 1024
    export_max_age_days: int = 90

    @property
    def var_path(self) -> Path:
        return Path(self.var_dir)


class ListenConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    transport: Transport
    host: str
    port: int
    # Requests to trunks leave from a carrier listener, requests to apps from an access
    # one (gateway.net.roles); "": the role of the [network] interface with this address.
    role: ListenRole = ""


def _default_listen() -> list[ListenConfig]:
    return [
        ListenConfig(transport="udp", host="127.0.0.1", port=5060),
        ListenConfig(transport="tcp", host="127.0.0.1", port=5060),
        ListenConfig(transport="tls", host="127.0.0.1", port=5061),
    ]


class SipConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    listen: list[ListenConfig] = msgspec.field(default_factory=_default_listen)
    realm: str = "edgegw"
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    tcp_idle_timeout: float = 600.0
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    session_expires: int = 1800
    min_se: int = 90
    no_answer_timeout: float = 120.0
    max_message_size: int = 65535
    # MD5 only by default: sipp 3.6 answers only the first challenge, and baresip 1.0
    # gives up on a 401 that also offers SHA-256 ("Function not implemented"). Boxes
    # whose clients do RFC 7616 list "SHA-256" too, in the order to offer them (3.7).
    auth_algorithms: list[DigestAlgorithm] = msgspec.field(default_factory=lambda: ["MD5"])
    nonce_ttl: float = 300.0
    # SIP over TLS (RFC 3261 26.2). Certificate (chain) and unencrypted key, PEM; both empty:
    # a self-signed EC P-256 pair made under <var_dir>/tls/ on first run and reused after.
    tls_cert: str = ""
    tls_key: str = ""
    # A client that has not finished its TLS handshake by then is disconnected.
    tls_handshake_timeout: float = 10.0
    # Connections the gateway opens (to `transport = "tls"` trunks) check the server's
    # certificate and name against the system CA store plus `tls_ca_file` (PEM); off only
    # for a trusted link: without it SDES keys in SDP are open to a man in the middle.
    tls_verify_server: bool = True
    tls_ca_file: str = ""


class MediaAddressConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A role's media address: legs toward trunks bind on the carrier one, legs toward
    apps on the access one. Without an entry, a role's address is the first of its
    [network] interface (gateway.net.roles)."""

    role: Literal["access", "carrier"]
    host: str
    # Written into SDP instead of `host` (the public address of a 1:1 NAT).
    advertised_host: str = ""


class MediaConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    # The media address of legs whose role has no address of its own (see `addresses`).
    host: str = "127.0.0.1"
    advertised_host: str = ""
    # A media address of the other family (e.g. "::1" beside 127.0.0.1): a leg whose peer
    # is IPv6 gets IPv6 sockets while the other leg stays IPv4; the relay bridges them.
    host6: str = ""
    advertised_host6: str = ""
    port_min: int = 20000
    port_max: int = 29999
    timeout: float = 60.0
    latch_window: float = 5.0
    # Codec preference toward app clients (trunks have their own `codecs`).
    app_codecs: list[str] = msgspec.field(default_factory=lambda: ["opus", "G722", "PCMA", "PCMU"])
    # SRTP suites offered and accepted, in order of preference (RFC 4568, RFC 7714).
    srtp_suites: list[str] = msgspec.field(
        default_factory=lambda: [
            "AES_CM_128_HMAC_SHA1_80",
            "AEAD_AES_128_GCM",
            "AEAD_AES_256_GCM",
            "AES_CM_128_HMAC_SHA1_32",
        ]
    )
    # Networks whose plain UDP/TCP signalling may carry SDES keys (default: none; TLS and
    # a loopback-only SIP listener always may).
    sdes_trusted_networks: list[str] = []
    rtcp_mux: bool = True
    ptime: int = 20
    # Opus encoder toward app legs when transcoding (RFC 7587; libopus CTLs). In-band FEC
    # is sent only to peers whose fmtp says useinbandfec=1, DTX only to ones saying
    # usedtx=1, and the bitrate is capped by their maxaveragebitrate. DTX is off by
    # default: silence then stays continuous audio on the G.711 side.
    opus_bitrate: int = 32000
    opus_complexity: int = 5
    opus_fec: bool = True
    # Expected loss on app legs (percent): how much libopus spends on FEC.
    opus_packet_loss: int = 5
    opus_dtx: bool = False
    # Adaptive jitter buffer of a transcoded leg, in seconds: start, floor and ceiling.
    # It starts less than one 20 ms packet above the floor: a clean stream then never
    # needs a packet dropped to come down to the floor (a drop costs about 0.15 PESQ),
    # and a jittery one grows from there within its first second.
    jitter_initial: float = 0.03
    jitter_min: float = 0.02
    jitter_max: float = 0.2
    # Media addresses per network role, in place of those taken from [network].
    addresses: list[MediaAddressConfig] = []

    @property
    def advertised(self) -> str:
        """The address written into SDP: ``advertised_host``, or ``host`` when empty."""
        return self.advertised_host or self.host


class LimitsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    max_calls: int = 2000
    cps_per_account: int = 1000
    # Calls one account may have at once (DESIGN: 2,000 in the loopback demo).
    calls_per_account: int = 2000
    # New calls one account may start per minute; 0: no limit.
    calls_per_minute_per_account: int = 0
    # New calls per second over the whole box, every account together; 0: no limit.
    cps: int = 0
    # New calls are refused (503) while the process uses more than this fraction of one
    # core, averaged over the last second, or while its event loop wakes more than
    # max_loop_lag seconds late on average: existing calls keep their media. 0: off.
    max_cpu: float = 0.85
    max_loop_lag: float = 0.25
    # E.164 prefixes (digits, no '+') never carried to a trunk. The defaults are the
    # non-geographic codes priced at several US$ a minute that lead every list of
    # international revenue share fraud: 979 International Premium Rate Service, 881
    # satellite (GMSS: Iridium, Thuraya, ...), 882/883 International Networks, 870
    # Inmarsat. Emergency calls are never blocked.
    blocked_prefixes: list[str] = msgspec.field(
        default_factory=lambda: ["870", "881", "882", "883", "979"]
    )
    # This many failed digest authentications (wrong password or unknown user) from
    # one source address within auth_failure_window seconds ban it for ban_seconds:
    # its requests are dropped unanswered. 0: never ban. Sources in ban_exempt (and
    # the trunks' addresses) are never banned.
    auth_failures_before_ban: int = 10
    auth_failure_window: float = 60.0
    ban_seconds: float = 600.0
    ban_exempt: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    # Most an account (subscriber or partner) may spend per UTC day; "0.00": no cap.
    daily_spend_per_account: str = "0.00"


class ControlConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    socket: str = ""


class RoutingConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    # The number plan dialled numbers are read in (gateway.calls.numbers.PLANS).
    country: str = "CN"
    # Global switch for calling a subscriber's phone number when the app is not there.
    fallback_to_number: bool = True
    # Emergency short codes; empty: the country plan's list.
    emergency: list[str] = []
    # How long an app rings before the call falls back to the subscriber's number.
    ring_timeout: float = 30.0
    # How long a trunk may take to give any response (100 Trying included) before the
    # next trunk in least-cost order is tried.
    trunk_response_timeout: float = 4.0
    # Longest app-to-app call in seconds (0: no limit); trunks have their own.
    max_duration: float = 0.0


class HttpConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    listen: str = "127.0.0.1:8080"
    # A finished click-to-call answers GET /v1/calls/{id} this long, then only its CDR.
    call_retention: float = 3600.0
    # Longest masked-number binding a partner may ask for (ttl_s), in seconds.
    max_binding_ttl: float = 30 * 86400.0
    # Callback deliveries: tries in all, the first back-off (doubling after each failed
    # try) and its cap, and how long one try may take, in seconds.
    callback_attempts: int = 6
    callback_backoff: float = 1.0
    callback_backoff_max: float = 16.0
    callback_timeout: float = 5.0

    @property
    def host(self) -> str:
        return _split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_host_port(self.listen)[1]


class SubscriberConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    username: str
    password: str
    numbers: list[str] = []
    srtp: SrtpPolicy = "optional"
    fallback: bool = True
    balance: str = "0.00"
    # Codec preference toward this user's app; empty: media.app_codecs.
    codecs: list[str] = []
    # The user's own mobile (E.164): carrier calls to its numbers go there when the app
    # is offline. Empty: they get 480.
    mobile: str = ""

    def as_subscriber(self) -> Subscriber:
        """The store record provisioned from this entry."""
        return Subscriber(
            username=self.username,
            password=self.password,
            numbers=list(self.numbers),
            srtp=self.srtp,
            fallback=self.fallback,
            balance=self.balance,
            codecs=list(self.codecs),
            mobile=self.mobile,
        )


def _default_codecs() -> list[str]:
    return ["PCMA", "PCMU"]


def _every_number() -> list[str]:
    return [""]


class TrunkConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: str
    host: str
    port: int = 5060
    transport: Transport = "udp"
    codecs: list[str] = msgspec.field(default_factory=_default_codecs)
    prefixes: list[str] = msgspec.field(default_factory=_every_number)
    tariff_per_minute: str = "0.00"
    billing_increment: tuple[int, int] = (60, 60)
    options_ping: bool = False
    default: bool = False
    srtp: SrtpPolicy = "off"
    ptime: int = 20
    # Least-cost routing: what the carrier charges us, the tie-break between equal
    # prices (lower first) and how many calls it takes at once (0: no limit).
    price_per_minute: str = "0.00"
    priority: int = 0
    max_channels: int = 0
    # Longest call on this trunk in seconds (0: no limit).
    max_duration: float = 0.0
    # Source networks whose INVITEs count as this trunk (empty: its host's address).
    networks: list[str] = []
    # OPTIONS health checks (options_ping): seconds between pings, and how many
    # unanswered pings in a row mark the trunk down.
    options_interval: float = 30.0
    options_failures: int = 3
    # Outbound registration with digest credentials, for carriers that want it.
    register: bool = False
    username: str = ""
    password: str = ""
    register_expires: int = 3600
    # "static": host and port as given; "rfc3263": NAPTR/SRV/A lookups of host.
    resolve: Literal["static", "rfc3263"] = "static"
    # Reliable provisional responses (RFC 3262) toward this trunk.
    rel100: Literal["off", "supported", "required"] = "supported"
    # Caller identity toward the carrier (RFC 3325): P-Asserted-Identity on or off.
    send_pai: bool = True
    # Number rewriting toward the carrier: the format of called and calling numbers,
    # and a prefix added to the called number (carrier tech prefix).
    number_format: Literal["e164", "e164-no-plus", "national"] = "e164"
    add_prefix: str = ""
    # Extra headers on every INVITE toward this trunk, as "Name: value".
    add_headers: list[str] = []


class PartnerConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: str
    api_key: str
    budget: str = "0.00"
    masked_pool: list[str] = []
    # When the budget is spent: bill the calling user instead of refusing the call.
    bill_user: bool = False
    # Where call state changes are POSTed (empty: nowhere), signed with HMAC-SHA256 of
    # the body under callback_secret.
    callback_url: str = ""
    callback_secret: str = ""


class TariffConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A retail tariff: what a caller pays per minute to numbers under ``prefix``."""

    prefix: str
    per_minute: str
    billing_increment: tuple[int, int] = (60, 60)


class DnsConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    # Name servers as "host" or "host:port"; empty: the system's (/etc/resolv.conf).
    servers: list[str] = []
    timeout: float = 2.0


# The routing table of each role's policy routing when `table` is left at 0.
ROLE_TABLES: dict[str, int] = {"access": 101, "carrier": 102, "mgmt": 103}


class NetworkRouteConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    # "default" or a network such as 198.51.100.0/24.
    to: str
    # Next hop; empty: the destination is on the link.
    via: str = ""
    metric: int = 0
    # Also in the main table, for the box's own traffic that has no role address as source.
    main: bool = False


class NetworkInterfaceConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    role: NetworkRole
    # The physical interface; with `vlan` the addresses go on its sub-interface NAME.VLAN.
    name: str
    vlan: int = 0
    addresses: list[str] = []
    routes: list[NetworkRouteConfig] = []
    # Policy routing: `ip rule from <address> lookup <table>` (0: ROLE_TABLES[role]),
    # at priority `rule_priority` (0: 1000 + table).
    table: int = 0
    rule_priority: int = 0

    @property
    def link_name(self) -> str:
        return f"{self.name}.{self.vlan}" if self.vlan else self.name

    @property
    def routing_table(self) -> int:
        return self.table or ROLE_TABLES[self.role]

    @property
    def priority(self) -> int:
        return self.rule_priority or 1000 + self.routing_table


class NetworkConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    # Empty: the box's network is not managed (`edgegw net apply` does nothing).
    interfaces: list[NetworkInterfaceConfig] = []
    # DSCP marks (RFC 4594): EF on RTP/RTCP, CS3 on SIP.
    dscp_rtp: int = 46
    dscp_sip: int = 24
    # The nftables table `inet edgegw` per role; SSH is let in on mgmt only.
    firewall: bool = True
    ssh_port: int = 22


class Config(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    general: GeneralConfig = GeneralConfig()
    sip: SipConfig = SipConfig()
    media: MediaConfig = MediaConfig()
    limits: LimitsConfig = LimitsConfig()
    control: ControlConfig = ControlConfig()
    http: HttpConfig = HttpConfig()
    routing: RoutingConfig = RoutingConfig()
    subscribers: list[SubscriberConfig] = []
    trunks: list[TrunkConfig] = []
    partners: list[PartnerConfig] = []
    tariffs: list[TariffConfig] = []
    dns: DnsConfig = DnsConfig()
    network: NetworkConfig = NetworkConfig()

    @property
    def control_socket_path(self) -> Path:
        """``control.socket``, or ``<var_dir>/control.sock`` when it is empty."""
        if self.control.socket:
            return Path(self.control.socket)
        return self.general.var_path / "control.sock"


# -- loading -------------------------------------------------------------------------------


def load_config(path: Path) -> Config:
    """Read, decode and check a TOML file; raises ConfigError naming file, key and reason."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read the file: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(source, f"line {line}", "the file is not valid UTF-8") from exc
    return parse_config(text, source=source)


def parse_config(text: str, *, source: str) -> Config:
    """Decode and check TOML text; ``source`` names the file in errors."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _syntax_error(source, text, exc) from exc
    except RecursionError as exc:
        # tomllib parses nested arrays and inline tables recursively.
        raise ConfigError(source, "", "TOML syntax error: values nested too deeply") from exc
    try:
        config = msgspec.convert(raw, Config, strict=True)
    except msgspec.ValidationError as exc:
        key, reason = _explain_validation_error(str(exc))
        raise ConfigError(source, key, reason) from exc
    for key, reason in _problems(config):
        raise ConfigError(source, key, reason)
    return config


_TOML_POSITION = re.compile(r" \(at line (\d+), column (\d+)\)$")
_TOML_AT_END = " (at end of document)"


def _syntax_error(source: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    message = str(exc)
    position = _TOML_POSITION.search(message)
    if position is not None:
        key = f"line {position[1]}, column {position[2]}"
        message = message[: position.start()]
    else:
        key = f"line {max(len(text.splitlines()), 1)}"
        message = message.removesuffix(_TOML_AT_END) + " at end of file"
    return ConfigError(source, key, f"TOML syntax error: {_lower_first(message)}")


_MSGSPEC_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_TYPE_NAMES = {"object": "table", "null": "nothing"}


def _explain_validation_error(text: str) -> tuple[str, str]:
    """Turn msgspec's "Expected `int`, got `str` - at `$.a.b`" into ("a.b", reason)."""
    match = _MSGSPEC_AT.match(text)
    assert match is not None  # the pattern accepts every string
    message, path = match["message"], match["path"] or ""
    parts: list[str | int] = [name or int(index) for name, index in _PATH_PART.findall(path)]
    if field := _backticked(message, "Object contains unknown field "):
        return _key([*parts, field]), _unknown_key_reason(parts, field)
    if field := _backticked(message, "Object missing required field "):
        return _key([*parts, field]), "required key is missing"
    if message.startswith("Invalid enum value"):
        choices = _literal_choices(parts)
        if choices:
            return _key(parts), f"must be one of {', '.join(choices)}"
    if message.startswith("Expected "):
        return _key(parts), _expected_reason(message)
    return _key(parts), _lower_first(message)


def _backticked(message: str, prefix: str) -> str:
    if message.startswith(prefix + "`") and message.endswith("`"):
        return message[len(prefix) + 1 : -1]
    return ""


def _key(parts: Iterable[str | int]) -> str:
    key = ""
    for part in parts:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else part)
    return key or "(top level)"


def _expected_reason(message: str) -> str:
    def rename(match: re.Match[str]) -> str:
        return _TYPE_NAMES.get(match[1], match[1])

    text = re.sub(r"`([^`]+)`", rename, message.removeprefix("Expected "))
    article = "an" if text[:1] in "aeiou" else "a"
    return f"expected {article} {text}"


def _type_at(parts: list[str | int]) -> Any:
    kind: Any = Config
    for part in parts:
        if isinstance(part, int):
            args = typing.get_args(kind)
            if not args:
                return None
            kind = args[0]
        elif isinstance(kind, type) and issubclass(kind, msgspec.Struct):
            kind = typing.get_type_hints(kind).get(part)
        else:
            return None
    return kind


def _literal_choices(parts: list[str | int]) -> list[str]:
    kind = _type_at(parts)
    if typing.get_origin(kind) is Literal:
        return [str(choice) for choice in typing.get_args(kind)]
    return []


def _unknown_key_reason(parts: list[str | int], field: str) -> str:
    kind = _type_at(parts)
    known: tuple[str, ...] = ()
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        known = kind.__struct_fields__
    close = get_close_matches(field, known, n=1)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


# -- semantic checks -----------------------------------------------------------------------

Problem = tuple[str, str]

_E164 = re.compile(r"\+[0-9]{8,15}")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
_USERNAME = re.compile(r"[A-Za-z0-9._~+-]{1,64}")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_DEMO_PREFIX = "demo"


def _problems(config: Config) -> Iterator[Problem]:
    yield from _general_problems(config.general)
    yield from _sip_problems(config.sip)
    yield from _media_problems(config.media)
    yield from _limits_problems(config.limits)
    yield from _http_problems(config.http)
    yield from _routing_problems(config.routing)
    yield from _subscriber_problems(config.subscribers, config.sip.listen)
    yield from _trunk_problems(config.trunks)
    yield from _partner_problems(config.partners, config.http)
    yield from _duplicate_number_problems(config)
    yield from _tariff_problems(config.tariffs)
    yield from _dns_problems(config.dns)
    yield from _network_problems(config.network)
    yield from _listen_role_problems(config)


def _listen_role_problems(config: Config) -> Iterator[Problem]:
    """A listener's explicit role must be that of the interface its address is on."""
    owners: dict[str, str] = {}
    for interface in config.network.interfaces:
        for address in interface.addresses:
            with contextlib.suppress(ValueError):  # reported by _interface_problems
                owners.setdefault(str(ipaddress.ip_interface(address).ip), interface.role)
    for i, listen in enumerate(config.sip.listen):
        owner = owners.get(listen.host)
        if listen.role and owner is not None and owner != listen.role:
            yield (
                f"sip.listen[{i}].role",
                f"is {listen.role}, but {listen.host} is on the {owner} interface",
            )


def _general_problems(general: GeneralConfig) -> Iterator[Problem]:
    if not general.var_dir:
        yield "general.var_dir", "must not be empty"
    yield from _seconds_problem("general.checkpoint_interval", general.checkpoint_interval)
    if general.log_max_bytes < 4096:
        yield "general.log_max_bytes", f"must be at least 4096, got {general.log_max_bytes}"
    if general.log_backups < 1:
        yield "general.log_backups", f"must be at least 1, got {general.log_backups}"
    if general.disk_reserve_mb < 0:
        yield "general.disk_reserve_mb", f"must be 0 (off) or more, got {general.disk_reserve_mb}"
    for key in _RETENTION_KEYS:
        value = getattr(general, key)
        if value < 0:
            yield f"general.{key}", f"must be 0 (no limit) or more, got {value}"


_RETENTION_KEYS = (
    "log_max_age_days",
    "capture_max_mb",
    "capture_max_age_days",
    "export_max_mb",
    "export_max_age_days",
)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _port_problem(key: str, port: int) -> Iterator[Problem]:
    if not 1 <= port <= 65535:
        yield key, f"must be a port number from 1 to 65535, got {port}"


def _seconds_problem(key: str, value: float) -> Iterator[Problem]:
    if not (math.isfinite(value) and value > 0):
        yield key, f"must be a number of seconds greater than 0, got {value}"


def _sip_problems(sip: SipConfig) -> Iterator[Problem]:
    if not sip.listen:
        yield "sip.listen", "must name at least one address to listen on"
    seen: dict[tuple[str, str, int], int] = {}
    for i, listen in enumerate(sip.listen):
        key = f"sip.listen[{i}]"
        if not _is_ip(listen.host):
            yield f"{key}.host", f"must be an IP address, got {listen.host!r}"
        yield from _port_problem(f"{key}.port", listen.port)
        ident = (listen.transport, listen.host, listen.port)
        if ident in seen:
            yield key, f"duplicates sip.listen[{seen[ident]}]"
        seen.setdefault(ident, i)
    if not sip.realm or re.search(r'["\\\x00-\x1f\x7f]', sip.realm):
        yield "sip.realm", "must be non-empty, without quotes, backslashes or control characters"
    for name in ("t1", "t2", "t4", "tcp_idle_timeout", "no_answer_timeout"):
        yield from _seconds_problem(f"sip.{name}", getattr(sip, name))
    if sip.t2 < sip.t1:
        yield "sip.t2", f"must be at least sip.t1 ({sip.t1})"
    yield from _expires_problems(sip)
    if not sip.auth_algorithms or len(set(sip.auth_algorithms)) != len(sip.auth_algorithms):
        yield "sip.auth_algorithms", "must name MD5 and/or SHA-256, each once"
    if sip.nonce_ttl <= 0:
        yield "sip.nonce_ttl", f"must be positive, got {sip.nonce_ttl}"
    if not 1024 <= sip.max_message_size <= 65535:
        yield "sip.max_message_size", f"must be from 1024 to 65535, got {sip.max_message_size}"
    yield from _tls_problems(sip)


def _tls_problems(sip: SipConfig) -> Iterator[Problem]:
    yield from _seconds_problem("sip.tls_handshake_timeout", sip.tls_handshake_timeout)
    if sip.tls_cert and not sip.tls_key:
        yield "sip.tls_key", "must be set when sip.tls_cert is set"
    elif sip.tls_key and not sip.tls_cert:
        yield "sip.tls_cert", "must be set when sip.tls_key is set"
    if not (sip.tls_cert and sip.tls_key) and not sip.tls_ca_file:
        return
    # Imported here: cryptography and structlog would add a tenth of a second to every
    # `edgegw status`, which reads no certificate.
    from gateway.transport.certificates import CertificateError, check_ca_file, load_pair

    if sip.tls_cert and sip.tls_key:
        try:
            load_pair(sip.tls_cert, sip.tls_key)
        except CertificateError as exc:
            yield f"sip.tls_{exc.which}", str(exc)
    if sip.tls_ca_file:
        try:
            check_ca_file(sip.tls_ca_file)
        except CertificateError as exc:
            yield "sip.tls_ca_file", str(exc)


def _expires_problems(sip: SipConfig) -> Iterator[Problem]:
    if sip.min_expires < 1:
        yield "sip.min_expires", f"must be at least 1, got {sip.min_expires}"
    if sip.min_expires > sip.max_expires:
        yield "sip.min_expires", f"must not exceed sip.max_expires ({sip.max_expires})"
    if not sip.min_expires <= sip.default_expires <= sip.max_expires:
        yield (
            "sip.default_expires",
            f"must be between sip.min_expires ({sip.min_expires}) "
            f"and sip.max_expires ({sip.max_expires})",
        )
    # RFC 4028 asks for 90 s at least; shorter values are allowed so that tests
    # of session expiry run in seconds.
    if sip.min_se < 1:
        yield "sip.min_se", f"must be at least 1, got {sip.min_se}"
    if sip.session_expires < sip.min_se:
        yield "sip.session_expires", f"must be at least sip.min_se ({sip.min_se})"


def _media_problems(media: MediaConfig) -> Iterator[Problem]:
    if not _is_ip(media.host):
        yield "media.host", f"must be an IP address, got {media.host!r}"
    if media.advertised_host and not _is_ip(media.advertised_host):
        yield (
            "media.advertised_host",
            f"must be empty or an IP address, got {media.advertised_host!r}",
        )
    yield from _alternate_host_problems(media)
    yield from _port_problem("media.port_min", media.port_min)
    yield from _port_problem("media.port_max", media.port_max)
    if media.port_min % 2:
        yield "media.port_min", f"must be even (RTP takes even ports), got {media.port_min}"
    if media.port_max % 2 == 0:
        yield (
            "media.port_max",
            f"must be odd so the range ends with a whole RTP/RTCP pair, got {media.port_max}",
        )
    if media.port_min >= media.port_max:
        yield "media.port_max", f"must be greater than media.port_min ({media.port_min})"
    yield from _seconds_problem("media.timeout", media.timeout)
    yield from _seconds_problem("media.latch_window", media.latch_window)
    yield from _codec_problems("media.app_codecs", media.app_codecs)
    yield from _ptime_problem("media.ptime", media.ptime)
    for i, suite in enumerate(media.srtp_suites):
        if suite not in SRTP_SUITES:
            yield f"media.srtp_suites[{i}]", f"must be one of {', '.join(SRTP_SUITES)}"
    if not media.srtp_suites:
        yield "media.srtp_suites", "must name at least one suite"
    for i, network in enumerate(media.sdes_trusted_networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            yield (
                f"media.sdes_trusted_networks[{i}]",
                f"must be a network like 10.0.0.0/8, got {network!r}",
            )
    yield from _transcoding_problems(media)
    yield from _media_address_problems(media)


def _media_address_problems(media: MediaConfig) -> Iterator[Problem]:
    seen: dict[tuple[str, int], int] = {}
    for i, entry in enumerate(media.addresses):
        key = f"media.addresses[{i}]"
        if not _is_ip(entry.host) or ipaddress.ip_address(entry.host).is_unspecified:
            yield f"{key}.host", f"must be the role's own IP address, got {entry.host!r}"
            continue
        if entry.advertised_host and not _is_ip(entry.advertised_host):
            yield (
                f"{key}.advertised_host",
                f"must be empty or an IP address, got {entry.advertised_host!r}",
            )
        ident = (entry.role, ipaddress.ip_address(entry.host).version)
        if ident in seen:
            yield key, f"a second IPv{ident[1]} address for role {entry.role}: see [{seen[ident]}]"
        seen.setdefault(ident, i)


def _transcoding_problems(media: MediaConfig) -> Iterator[Problem]:
    # Ranges libopus accepts (opus_defines.h): bitrate 500..512000 b/s, complexity 0..10.
    if not 6000 <= media.opus_bitrate <= 510000:
        yield "media.opus_bitrate", f"must be from 6000 to 510000 (b/s), got {media.opus_bitrate}"
    if not 0 <= media.opus_complexity <= 10:
        yield "media.opus_complexity", f"must be from 0 to 10, got {media.opus_complexity}"
    if not 0 <= media.opus_packet_loss <= 100:
        yield "media.opus_packet_loss", f"must be from 0 to 100 (%), got {media.opus_packet_loss}"
    for name in ("jitter_initial", "jitter_min", "jitter_max"):
        yield from _seconds_problem(f"media.{name}", getattr(media, name))
    if media.jitter_max > 2.0:
        yield "media.jitter_max", f"must be at most 2.0 seconds, got {media.jitter_max}"
    if not media.jitter_min <= media.jitter_initial <= media.jitter_max:
        yield (
            "media.jitter_initial",
            f"must lie from media.jitter_min ({media.jitter_min}) to media.jitter_max "
            f"({media.jitter_max}), got {media.jitter_initial}",
        )


def _alternate_host_problems(media: MediaConfig) -> Iterator[Problem]:
    for key, value in (("host6", media.host6), ("advertised_host6", media.advertised_host6)):
        if value and not _is_ip(value):
            yield f"media.{key}", f"must be empty or an IP address, got {value!r}"
    if media.host6 and _is_ip(media.host6) and _is_ip(media.host):
        same = ipaddress.ip_address(media.host6).version == ipaddress.ip_address(media.host).version
        if same:
            yield (
                "media.host6",
                f"must be of the other address family than media.host ({media.host})",
            )


_PTIMES = (10, 20, 30, 40, 60)


def _routing_problems(routing: RoutingConfig) -> Iterator[Problem]:
    from gateway.calls.numbers import PLANS  # the plans live with the call logic

    if routing.country not in PLANS:
        known = ", ".join(sorted(PLANS))
        yield "routing.country", f"must be one of {known}, got {routing.country!r}"
    for i, code in enumerate(routing.emergency):
        if not code.isdigit() or not 2 <= len(code) <= 6:
            yield f"routing.emergency[{i}]", f"must be a short code of 2 to 6 digits, got {code!r}"
    yield from _seconds_problem("routing.ring_timeout", routing.ring_timeout)
    yield from _seconds_problem("routing.trunk_response_timeout", routing.trunk_response_timeout)
    if not (math.isfinite(routing.max_duration) and routing.max_duration >= 0):
        yield "routing.max_duration", f"must be 0 (no limit) or seconds, got {routing.max_duration}"


def _ptime_problem(key: str, ptime: int) -> Iterator[Problem]:
    if ptime not in _PTIMES:
        yield key, f"must be one of {', '.join(map(str, _PTIMES))} (ms), got {ptime}"


def _limits_problems(limits: LimitsConfig) -> Iterator[Problem]:
    if limits.max_calls < 1:
        yield "limits.max_calls", f"must be at least 1, got {limits.max_calls}"
    if limits.cps_per_account < 1:
        yield "limits.cps_per_account", f"must be at least 1, got {limits.cps_per_account}"
    yield from _admission_problems(limits)
    yield from _cents_problem("limits.daily_spend_per_account", limits.daily_spend_per_account)


def _admission_problems(limits: LimitsConfig) -> Iterator[Problem]:
    """The keys of gateway.calls.admission: counts, fractions, seconds, prefixes, networks."""
    if limits.calls_per_account < 1:
        yield "limits.calls_per_account", f"must be at least 1, got {limits.calls_per_account}"
    for key in ("calls_per_minute_per_account", "cps", "auth_failures_before_ban"):
        if getattr(limits, key) < 0:
            yield f"limits.{key}", f"must be 0 (off) or more, got {getattr(limits, key)}"
    if not (math.isfinite(limits.max_cpu) and 0 <= limits.max_cpu <= 1):
        reason = f"must be a fraction of one core from 0 (off) to 1, got {limits.max_cpu}"
        yield "limits.max_cpu", reason
    if not (math.isfinite(limits.max_loop_lag) and limits.max_loop_lag >= 0):
        reason = f"must be 0 (off) or a number of seconds, got {limits.max_loop_lag}"
        yield "limits.max_loop_lag", reason
    yield from _seconds_problem("limits.auth_failure_window", limits.auth_failure_window)
    yield from _seconds_problem("limits.ban_seconds", limits.ban_seconds)
    for i, prefix in enumerate(limits.blocked_prefixes):
        if not re.fullmatch(r"[0-9]{1,15}", prefix):
            reason = f"must be 1 to 15 digits of an E.164 number without '+', got {prefix!r}"
            yield f"limits.blocked_prefixes[{i}]", reason
    for i, network in enumerate(limits.ban_exempt):
        try:
            ipaddress.ip_network(network)
        except ValueError as exc:
            yield f"limits.ban_exempt[{i}]", f"must be an IP network such as 10.0.0.0/8: {exc}"


def _split_host_port(text: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port"; raises ValueError with the reason."""
    match = re.fullmatch(r"\[([^\]]+)\]:([0-9]{1,5})|([^:\[\]]+):([0-9]{1,5})", text)
    if match is None:
        raise ValueError(f'must be "HOST:PORT" (IPv6 as "[HOST]:PORT"), got {text!r}')
    host = match[1] or match[3]
    port = int(match[2] or match[4])
    if not _is_ip(host):
        raise ValueError(f"must name an IP address, got {host!r}")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be from 1 to 65535, got {port}")
    return host, port


def _http_problems(http: HttpConfig) -> Iterator[Problem]:
    try:
        _split_host_port(http.listen)
    except ValueError as exc:
        yield "http.listen", str(exc)
    yield from _seconds_problem("http.call_retention", http.call_retention)
    yield from _seconds_problem("http.max_binding_ttl", http.max_binding_ttl)
    if http.callback_attempts < 1:
        yield "http.callback_attempts", f"must be at least 1, got {http.callback_attempts}"
    if not (math.isfinite(http.callback_backoff) and http.callback_backoff >= 0):
        yield "http.callback_backoff", f"must be 0 or more seconds, got {http.callback_backoff}"
    if not (
        math.isfinite(http.callback_backoff_max)
        and http.callback_backoff_max >= http.callback_backoff
    ):
        yield (
            "http.callback_backoff_max",
            f"must be at least http.callback_backoff ({http.callback_backoff}), "
            f"got {http.callback_backoff_max}",
        )
    yield from _seconds_problem("http.callback_timeout", http.callback_timeout)


def _decimal_problem(key: str, value: str) -> Iterator[Problem]:
    if not _DECIMAL.fullmatch(value):
        yield key, f'must be a non-negative decimal string such as "12.50", got {value!r}'


def _cents_problem(key: str, value: str) -> Iterator[Problem]:
    """Money held in an account: a decimal in whole cents (the ledger keeps cents)."""
    yield from _decimal_problem(key, value)
    if re.fullmatch(r"[0-9]+\.[0-9]{3,}", value):
        yield key, f"must be whole cents (2 decimals), got {value!r}"


def _number_problems(key: str, numbers: list[str]) -> Iterator[Problem]:
    for j, number in enumerate(numbers):
        if not _E164.fullmatch(number):
            yield f"{key}[{j}]", f"must be E.164: '+' then 8 to 15 digits, got {number!r}"


def _subscriber_problems(
    subscribers: list[SubscriberConfig], listen: list[ListenConfig]
) -> Iterator[Problem]:
    loopback_only = all(_is_loopback(entry.host) for entry in listen)
    seen: dict[str, int] = {}
    for i, sub in enumerate(subscribers):
        key = f"subscribers[{i}]"
        if not _USERNAME.fullmatch(sub.username):
            yield f"{key}.username", "must be 1 to 64 letters, digits or . _ ~ + -"
        if sub.username in seen:
            yield (
                f"{key}.username",
                f"duplicate username {sub.username!r} (also subscribers[{seen[sub.username]}])",
            )
        seen.setdefault(sub.username, i)
        if sub.codecs:
            yield from _codec_problems(f"{key}.codecs", sub.codecs)
        if not sub.password:
            yield f"{key}.password", "must not be empty"
        elif sub.password.startswith(_DEMO_PREFIX) and not loopback_only:
            yield (
                f"{key}.password",
                "demo passwords are accepted only while SIP listens on loopback",
            )
        yield from _number_problems(f"{key}.numbers", sub.numbers)
        if sub.mobile:
            yield from _number_problems(f"{key}.mobile", [sub.mobile])
            if sub.mobile in sub.numbers:
                yield f"{key}.mobile", "must not be one of the subscriber's own numbers"
        yield from _cents_problem(f"{key}.balance", sub.balance)


def _unique_name_problems(section: str, names: list[str]) -> Iterator[Problem]:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not _NAME.fullmatch(name):
            yield f"{section}[{i}].name", "must be 1 to 64 letters, digits or . _ -"
        if name in seen:
            yield f"{section}[{i}].name", f"duplicate name {name!r} (also {section}[{seen[name]}])"
        seen.setdefault(name, i)


def _trunk_problems(trunks: list[TrunkConfig]) -> Iterator[Problem]:
    yield from _unique_name_problems("trunks", [trunk.name for trunk in trunks])
    defaults = [i for i, trunk in enumerate(trunks) if trunk.default]
    if len(defaults) > 1:
        yield (
            f"trunks[{defaults[1]}].default",
            f"only one trunk may be the default (also trunks[{defaults[0]}])",
        )
    for i, trunk in enumerate(trunks):
        key = f"trunks[{i}]"
        if not (_is_ip(trunk.host) or _HOSTNAME.fullmatch(trunk.host)):
            yield f"{key}.host", f"must be an IP address or a host name, got {trunk.host!r}"
        yield from _port_problem(f"{key}.port", trunk.port)
        yield from _codec_problems(f"{key}.codecs", trunk.codecs)
        yield from _ptime_problem(f"{key}.ptime", trunk.ptime)
        yield from _prefix_problems(f"{key}.prefixes", trunk.prefixes)
        yield from _decimal_problem(f"{key}.tariff_per_minute", trunk.tariff_per_minute)
        if min(trunk.billing_increment) < 1:
            yield (
                f"{key}.billing_increment",
                f"both increments must be at least 1 second, got {list(trunk.billing_increment)}",
            )
        yield from _trunk_lcr_problems(key, trunk)


def _trunk_lcr_problems(key: str, trunk: TrunkConfig) -> Iterator[Problem]:
    yield from _decimal_problem(f"{key}.price_per_minute", trunk.price_per_minute)
    if trunk.max_channels < 0:
        yield f"{key}.max_channels", f"must be 0 (no limit) or more, got {trunk.max_channels}"
    if not (math.isfinite(trunk.max_duration) and trunk.max_duration >= 0):
        yield f"{key}.max_duration", f"must be 0 (no limit) or seconds, got {trunk.max_duration}"
    yield from _seconds_problem(f"{key}.options_interval", trunk.options_interval)
    if trunk.options_failures < 1:
        yield f"{key}.options_failures", f"must be at least 1, got {trunk.options_failures}"
    for j, network in enumerate(trunk.networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            yield f"{key}.networks[{j}]", f"must be an address or network, got {network!r}"
    if trunk.register and not (trunk.username and trunk.password):
        yield f"{key}.username", "register = true needs username and password"
    if not re.fullmatch(r"[0-9]{0,15}", trunk.add_prefix):
        yield f"{key}.add_prefix", f"must be digits, got {trunk.add_prefix!r}"
    for j, header in enumerate(trunk.add_headers):
        name, colon, value = header.partition(":")
        if not colon or not re.fullmatch(r"[A-Za-z0-9!%'*+.^_`|~-]+", name.strip()):
            yield f"{key}.add_headers[{j}]", f'must be "Name: value", got {header!r}'
        elif re.search(r"[\r\n\x00]", value):
            yield f"{key}.add_headers[{j}]", "must not contain line breaks"


def _codec_problems(key: str, codecs: list[str]) -> Iterator[Problem]:
    if not codecs:
        yield key, "must name at least one codec"
    known = {codec.lower(): codec for codec in KNOWN_CODECS}
    seen: set[str] = set()
    for j, codec in enumerate(codecs):
        if codec.lower() not in known:
            yield f"{key}[{j}]", f"unknown codec {codec!r} (known: {', '.join(KNOWN_CODECS)})"
        elif codec.lower() in seen:
            yield f"{key}[{j}]", f"codec {codec!r} is listed twice"
        seen.add(codec.lower())


def _prefix_problems(key: str, prefixes: list[str]) -> Iterator[Problem]:
    if not prefixes:
        yield key, 'must name at least one prefix ("" takes every number)'
    seen: set[str] = set()
    for j, prefix in enumerate(prefixes):
        if not re.fullmatch(r"[0-9]{0,15}", prefix):
            yield (
                f"{key}[{j}]",
                f"must be leading digits of the E.164 number without '+', got {prefix!r}",
            )
        elif prefix in seen:
            yield f"{key}[{j}]", f"prefix {prefix!r} is listed twice"
        seen.add(prefix)


def _partner_problems(partners: list[PartnerConfig], http: HttpConfig) -> Iterator[Problem]:
    yield from _unique_name_problems("partners", [partner.name for partner in partners])
    try:
        http_loopback = _is_loopback(_split_host_port(http.listen)[0])
    except ValueError:
        http_loopback = False  # http.listen itself is reported by _http_problems
    for i, partner in enumerate(partners):
        key = f"partners[{i}]"
        if not partner.api_key:
            yield f"{key}.api_key", "must not be empty"
        elif partner.api_key.startswith(_DEMO_PREFIX) and not http_loopback:
            yield f"{key}.api_key", "demo keys are accepted only while HTTP listens on loopback"
        yield from _cents_problem(f"{key}.budget", partner.budget)
        yield from _number_problems(f"{key}.masked_pool", partner.masked_pool)
        if partner.callback_url and not re.fullmatch(
            r"https?://[^\s/?#@]+(/\S*)?", partner.callback_url
        ):
            yield (
                f"{key}.callback_url",
                f"must be an http:// or https:// URL, got {partner.callback_url!r}",
            )
        if partner.callback_url and not partner.callback_secret:
            yield f"{key}.callback_secret", "callback_url needs a secret to sign callbacks with"


def _duplicate_number_problems(config: Config) -> Iterator[Problem]:
    owners: dict[str, str] = {}
    lists = [(f"subscribers[{i}].numbers", s.numbers) for i, s in enumerate(config.subscribers)]
    lists += [(f"partners[{i}].masked_pool", p.masked_pool) for i, p in enumerate(config.partners)]
    for key, numbers in lists:
        for j, number in enumerate(numbers):
            if number in owners:
                yield f"{key}[{j}]", f"duplicate number {number} (also {owners[number]})"
            owners.setdefault(number, f"{key}[{j}]")


# -- the embedded default and its TOML text --------------------------------------------------


def default_config(var_dir: Path | str | None = None) -> Config:
    """The loopback demo of the design brief (``./justw run`` starts on this)."""
    general = GeneralConfig() if var_dir is None else GeneralConfig(var_dir=str(var_dir))
    subscribers = [
        SubscriberConfig(
            username=user,
            password=f"demo{user}",
            numbers=[number],
            srtp="optional",
            fallback=True,
            balance="1000000.00",
        )
        for user, number in (("1001", "+8613900139001"), ("1002", "+8613900139002"))
    ]
    carrier = TrunkConfig(
        name="demo-carrier",
        host="127.0.0.1",
        port=5080,
        transport="udp",
        codecs=["PCMA", "PCMU"],
        prefixes=[""],
        tariff_per_minute="0.10",
        billing_increment=(60, 60),
        options_ping=False,
    )
    partner = PartnerConfig(
        name="demo",
        api_key="demo-key",
        budget="1000000.00",
        masked_pool=[f"+86170000000{n:02d}" for n in range(100)],
    )
    return Config(
        general=general,
        limits=LimitsConfig(max_calls=2000, cps_per_account=1000),
        subscribers=subscribers,
        trunks=[carrier],
        partners=[partner],
    )


_DEFAULT_HEADER = """\
# edgegw embedded default: the loopback demo (see DESIGN.md, "Outside contract").
# Every key shown has this value when it is left out; an empty file is a valid,
# unprovisioned box without subscribers, trunks or partners.
# Demo passwords and keys (starting with "demo") are refused unless SIP (resp. HTTP)
# listens on loopback only.
"""


def dump_default_toml() -> str:
    """The embedded default as commented TOML text; ``parse_config`` reads it back."""
    return _DEFAULT_HEADER + config_to_toml(default_config())


def config_to_toml(config: Config) -> str:
    """Serialize a configuration as TOML (tables, arrays of tables, inline tables in lists)."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    plain = {k: v for k, v in data.items() if not _is_table(v) and not _is_table_array(v)}
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in plain.items()]
    for name, value in data.items():
        if _is_table(value):
            lines += ["", f"[{_toml_key(name)}]", *_toml_pairs(value)]
        elif _is_table_array(value):
            for item in value:
                lines += ["", f"[[{_toml_key(name)}]]", *_toml_pairs(item)]
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table(value: object) -> bool:
    return isinstance(value, dict)


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _toml_pairs(table: dict[str, Any]) -> list[str]:
    return [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)


def _toml_string(text: str) -> str:
    # JSON escapes are TOML escapes, except that TOML also forbids a raw DEL.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007F")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _toml_float(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, dict):
        return "{ " + ", ".join(_toml_pairs(value)) + " }" if value else "{}"
    if isinstance(value, list | tuple):
        return _toml_array([_toml_value(v) for v in value])
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def _toml_float(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def _toml_array(items: list[str]) -> str:
    one_line = "[" + ", ".join(items) + "]"
    if len(one_line) <= 80:
        return one_line
    rows: list[str] = []
    for item in items:
        if rows and len(rows[-1]) + len(item) + 2 <= 88:
            rows[-1] += f" {item},"
        else:
            rows.append(f"    {item},")
    return "[\n" + "\n".join(rows) + "\n]"


def _tariff_problems(tariffs: list[TariffConfig]) -> Iterator[Problem]:
    seen: dict[str, int] = {}
    for i, tariff in enumerate(tariffs):
        key = f"tariffs[{i}]"
        if not re.fullmatch(r"[0-9]{0,15}", tariff.prefix):
            yield f"{key}.prefix", f"must be leading digits without '+', got {tariff.prefix!r}"
        elif tariff.prefix in seen:
            yield f"{key}.prefix", f"duplicate prefix (also tariffs[{seen[tariff.prefix]}])"
        seen.setdefault(tariff.prefix, i)
        yield from _decimal_problem(f"{key}.per_minute", tariff.per_minute)
        if min(tariff.billing_increment) < 1:
            yield f"{key}.billing_increment", "both increments must be at least 1 second"


def _dns_problems(dns: DnsConfig) -> Iterator[Problem]:
    for i, server in enumerate(dns.servers):
        if _is_ip(server):
            continue
        try:
            _split_host_port(server)
        except ValueError as exc:
            reason = str(exc)
            if reason.startswith("must be "):
                reason = "must be an IP address, or " + reason.removeprefix("must be ")
            yield f"dns.servers[{i}]", reason
    yield from _seconds_problem("dns.timeout", dns.timeout)


# -- [network] -------------------------------------------------------------------------------

_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_RESERVED_TABLES = (253, 254, 255)  # default, main, local


def _network_problems(network: NetworkConfig) -> Iterator[Problem]:
    for key, dscp in (
        ("network.dscp_rtp", network.dscp_rtp),
        ("network.dscp_sip", network.dscp_sip),
    ):
        if not 0 <= dscp <= 63:
            yield key, f"must be a DSCP value from 0 to 63, got {dscp}"
    yield from _port_problem("network.ssh_port", network.ssh_port)
    seen: dict[str, str] = {}
    for i, interface in enumerate(network.interfaces):
        key = f"network.interfaces[{i}]"
        for what, value in (
            ("role", interface.role),
            ("link", interface.link_name),
            ("table", str(interface.routing_table)),
            ("rule priority", str(interface.priority)),
        ):
            ident = f"{what} {value}"
            if ident in seen:
                yield key, f"{ident} is also used by {seen[ident]}"
            seen.setdefault(ident, key)
        yield from _interface_problems(key, interface)


def _interface_problems(key: str, interface: NetworkInterfaceConfig) -> Iterator[Problem]:
    if not 0 <= interface.vlan <= 4094:
        yield f"{key}.vlan", f"must be a VLAN id from 1 to 4094 (0: none), got {interface.vlan}"
    if not _IFNAME.fullmatch(interface.link_name) or interface.link_name in (".", ".."):
        yield (
            f"{key}.name",
            f"{interface.link_name!r} is not an interface name (1 to 15 letters, digits or . _ -)",
        )
    if interface.routing_table < 1 or interface.routing_table in _RESERVED_TABLES:
        yield f"{key}.table", f"must be a table id other than 253, 254, 255, got {interface.table}"
    if not 1 <= interface.priority <= 32765:
        yield f"{key}.rule_priority", f"must be from 1 to 32765, got {interface.priority}"
    for j, address in enumerate(interface.addresses):
        try:
            parsed = ipaddress.ip_interface(address)
        except ValueError:
            parsed = None
        if parsed is None or "/" not in address:
            yield f"{key}.addresses[{j}]", f"must be an address with prefix length, got {address!r}"
        elif parsed.version != 4:
            yield f"{key}.addresses[{j}]", f"only IPv4 addresses are managed, got {address!r}"
    for j, route in enumerate(interface.routes):
        yield from _route_problems(f"{key}.routes[{j}]", route)


def _route_problems(key: str, route: NetworkRouteConfig) -> Iterator[Problem]:
    if route.to != "default":
        try:
            if ipaddress.ip_network(route.to).version != 4:
                yield f"{key}.to", f"only IPv4 routes are managed, got {route.to!r}"
        except ValueError:
            yield f"{key}.to", f'must be "default" or an IPv4 network, got {route.to!r}'
    if route.via:
        try:
            if ipaddress.ip_address(route.via).version != 4:
                yield f"{key}.via", f"must be an IPv4 address, got {route.via!r}"
        except ValueError:
            yield f"{key}.via", f"must be an IPv4 address, got {route.via!r}"
    if not 0 <= route.metric <= 2**32 - 1:
        yield f"{key}.metric", f"must be from 0 to 4294967295, got {route.metric}"
