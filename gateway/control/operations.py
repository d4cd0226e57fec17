"""Control-socket handlers for field operations: what ``edgegw status``, ``calls``,
``call show|hangup``, ``regs``, ``trunks``, ``trunk ping`` and ``drain`` ask the gateway.

Everything here reads state the running pieces already keep (the call core, the
registrar, the trunk monitor and registrations, each call's media session and, on a
transcoded call, the gateway's own RTCP per leg, RFC 3550 6.4) and returns plain
JSON-able data; nothing here measures media or computes quality itself. The one figure
of its own is the process's recent CPU share, from two samples of ``os.times()``.

Handlers read the gateway's pieces at request time, through :class:`GatewayParts`, so a
piece the gateway replaces (a config reload) is seen at once.
"""

from __future__ import annotations

import os
import resource
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
import trio

from gateway.calls.b2bua import Call
from gateway.calls.core import CallCore
from gateway.calls.negotiation import LegMedia
from gateway.calls.registrar import Registrar
from gateway.calls.trunk_health import TrunkMonitor
from gateway.calls.trunk_registration import TrunkRegistrations
from gateway.config import Config
from gateway.store.model import Binding

__all__ = [
    "BadArgument",
    "CpuMeter",
    "GatewayParts",
    "Operations",
    "UnknownCall",
    "UnknownTrunk",
    "binding_row",
    "call_detail",
    "media_drops",
    "memory_usage",
]

log = structlog.get_logger("edgegw.operations")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

# A CPU share over less than this is mostly noise; a sample older than the longest is
# history, not "recent".
_CPU_MIN_WINDOW = 0.25
_CPU_MAX_AGE = 60.0
_CPU_SAMPLES = 16


class GatewayParts(Protocol):
    """The pieces of the running gateway the handlers read (gateway.service.Gateway)."""

    @property
    def config(self) -> Config: ...
    @property
    def core(self) -> CallCore: ...
    @property
    def registrar(self) -> Registrar: ...
    @property
    def trunk_monitor(self) -> TrunkMonitor: ...
    @property
    def trunk_registrations(self) -> TrunkRegistrations: ...


class BadArgument(ValueError):
    """A control request whose arguments are missing or of the wrong type."""


class UnknownCall(LookupError):
    """No call in progress has the id asked for."""

    def __init__(self, call_id: str) -> None:
        super().__init__(f"no call in progress with id {call_id!r} (see `edgegw calls`)")
        self.call_id = call_id


class UnknownTrunk(LookupError):
    """A trunk name that is not configured; the message lists the names that are."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        names = ", ".join(sorted(known)) or "none configured"
        super().__init__(f"no trunk named {name!r} (known trunks: {names})")
        self.name = name


def _text_arg(args: Mapping[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise BadArgument(f"argument {key!r} must be a non-empty string, got {value!r}")
    return value


def _bool_arg(args: Mapping[str, Any], key: str, default: bool) -> bool:
    value = args.get(key, default)
    if not isinstance(value, bool):
        raise BadArgument(f"argument {key!r} must be true or false, got {value!r}")
    return value


# ---- the process ----------------------------------------------------------------------------


def _cpu_seconds() -> tuple[float, float]:
    times = os.times()
    return times.user, times.system


@dataclass
class CpuMeter:
    """The process's CPU share "recently": between this request and an earlier one.

    Each reading is kept; the share is taken against the newest kept reading that is at
    least ``min_window`` and at most ``max_age`` seconds old. When there is none (the
    first request, or none for a minute) the meter samples over ``min_window`` now.
    """

    min_window: float = _CPU_MIN_WINDOW
    max_age: float = _CPU_MAX_AGE
    clock: Callable[[], float] = time.monotonic
    _samples: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=_CPU_SAMPLES))

    def _sample(self) -> tuple[float, float]:
        user, system = _cpu_seconds()
        sample = (self.clock(), user + system)
        self._samples.append(sample)
        return sample

    def _baseline(self, now: float) -> tuple[float, float] | None:
        for at, cpu in reversed(self._samples):
            age = now - at
            if self.min_window <= age <= self.max_age:
                return at, cpu
        return None

    async def reading(self) -> dict[str, Any]:
        """User and system seconds since start, and the recent share in percent of one core."""
        now = self.clock()
        baseline = self._baseline(now)
        if baseline is None:
            baseline = self._sample()
            await trio.sleep(self.min_window)
        at, cpu = self._sample()
        user, system = _cpu_seconds()
        window = at - baseline[0]
        return {
            "user_seconds": round(user, 3),
            "system_seconds": round(system, 3),
            "percent": round(100.0 * (cpu - baseline[1]) / window, 1) if window > 0 else None,
            "window_seconds": round(window, 2),
        }


def memory_usage() -> dict[str, int | None]:
    """Resident set size now (/proc/self/statm) and at its peak (getrusage), in bytes."""
    rss: int | None = None
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        rss = None  # not Linux, or /proc not mounted: the peak still tells something
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"rss_bytes": rss, "peak_rss_bytes": peak_kib * 1024}


# ---- calls ----------------------------------------------------------------------------------


def media_drops(calls: Iterable[Call]) -> dict[str, int]:
    """Relayed packets dropped, by reason, summed over both legs of ``calls``."""
    totals: dict[str, int] = {}
    for call in calls:
        for leg in call.media.stats().values():
            for reason, count in leg["drops"].items():
                totals[reason] = totals.get(reason, 0) + count
    return dict(sorted(totals.items()))


def _address(pair: list[Any] | None) -> str | None:
    if pair is None:
        return None
    host, port = pair
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _milliseconds(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 2)


def _rated(quality: Any, side: str) -> dict[str, Any]:
    """The E-model's figures of one leg as the call's summary carries them
    (``summary()["quality"][side]``, gateway.media.quality); None where it has none.
    Only shown here, never computed."""
    leg = quality.get(side) if isinstance(quality, Mapping) else None
    found: Mapping[str, Any] = leg if isinstance(leg, Mapping) else {}
    return {"loss_pct": found.get("loss_pct"), "mos": found.get("mos")}


def _negotiated(leg: LegMedia | None) -> dict[str, Any]:
    if leg is None:
        return {"codec": None, "payload_type": None, "ptime": None, "srtp": None}
    codec = leg.codec
    return {
        "codec": f"{codec.encoding}/{codec.clock_rate}",
        "payload_type": codec.payload_type,
        "ptime": leg.ptime,
        "srtp": leg.srtp_local.suite if leg.srtp_local is not None else "none",
    }


def _quality(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Loss, jitter and RTT of one leg: from the gateway's own RTCP on a transcoded
    call; on a relayed one from the reports the peers send each other through the relay
    (what the peer lost of our stream, and the RTT; the E-model's figures are in MOS)."""
    transcoding = stats.get("transcoding")
    if not isinstance(transcoding, Mapping):
        relayed = stats.get("rtcp_relayed")
        report: Mapping[str, Any] = (
            relayed if isinstance(relayed, Mapping) and relayed.get("packets") else {}
        )
        return {
            "lost": None,  # the relay counts no sequence gaps; the peer's report says
            "jitter_ms": None,
            "remote_fraction_lost": report.get("fraction_lost"),
            "remote_jitter_ms": None,
            "rtt_ms": _milliseconds(report.get("rtt")),
        }
    inbound, rtcp = transcoding["in"], transcoding["rtcp"]
    return {
        "lost": inbound["lost"],  # of the packets this leg's peer sent us
        "jitter_ms": _milliseconds(inbound["jitter"]),
        "remote_fraction_lost": rtcp["remote_fraction_lost"],  # of ours, as the peer saw it
        "remote_jitter_ms": _milliseconds(rtcp["remote_jitter"]),
        "rtt_ms": _milliseconds(rtcp["rtt"]),
    }


def _leg_detail(
    side: str,
    sip_call_id: str | None,
    stats: Mapping[str, Any],
    negotiated: LegMedia | None,
    quality: Any,
) -> dict[str, Any]:
    rtp, rtcp = stats["rtp"], stats["rtcp"]
    return {
        "role": "caller" if side == "a" else "callee",
        "sip_call_id": sip_call_id,
        "local": _address(rtp["local"]),
        "remote": _address(rtp["latched"] or rtp["expected"]),
        "latched": rtp["latched"] is not None,
        **_negotiated(negotiated),
        "packets_in": rtp["packets_in"],
        "packets_out": rtp["packets_out"],
        "bytes_in": rtp["bytes_in"],
        "bytes_out": rtp["bytes_out"],
        "rtcp_packets_in": rtcp["packets_in"],
        "rtcp_packets_out": rtcp["packets_out"],
        "drops": stats["drops"],
        **_quality(stats),
        **_rated(quality, side),
    }


def call_detail(call: Call) -> dict[str, Any]:
    """The call's summary (as ``edgegw calls --json``) with both legs spelled out."""
    summary: dict[str, Any] = dict(call.summary())
    media: Mapping[str, Any] = call.media.stats()
    plan = call.call_media.plan
    sip_ids = {"a": call.record.caller_call_id, "b": call.record.callee_call_id}
    quality = summary.get("quality")
    legs = {
        side: _leg_detail(
            side, sip_ids[side], media[side], plan.leg(side) if plan else None, quality
        )
        for side in ("a", "b")
    }
    return {**summary, "transcoding": call.media.transcoding, "legs": legs}


# ---- registrations and trunks ---------------------------------------------------------------


def binding_row(binding: Binding, now: float) -> dict[str, Any]:
    """One registrar binding as `edgegw regs` shows it."""
    return {
        "aor": binding.aor,
        "contact": binding.contact,
        "source": _address([binding.source_host, binding.source_port]),
        "transport": binding.transport,
        "expires_in": max(0, round(binding.expires_at - now)),
        "expires_at": binding.expires_at,
        "user_agent": binding.user_agent,
        "instance": binding.instance,
    }


def _trunk_rows(parts: GatewayParts) -> list[dict[str, Any]]:
    health = {row["name"]: row for row in parts.trunk_monitor.snapshot()}
    registrations = {row["name"]: row for row in parts.trunk_registrations.snapshot()}
    channels = parts.core.channels
    rows = []
    for trunk in parts.config.trunks:
        checked = health.get(trunk.name, {})
        registered = registrations.get(trunk.name)
        rows.append(
            {
                "name": trunk.name,
                "address": _address([trunk.host, trunk.port]),
                "transport": trunk.transport,
                "resolve": trunk.resolve,
                "health": checked.get("state", "up"),
                "up": checked.get("up", True),
                "monitored": checked.get("monitored", False),
                "last_rtt_ms": checked.get("last_rtt_ms"),
                "last_ping_at": checked.get("last_ping_at"),
                "registration": None if registered is None else registered["state"],
                "channels": channels.get(trunk.name, 0),
                "max_channels": trunk.max_channels or None,  # None: no limit
            }
        )
    return rows


# ---- the handlers ---------------------------------------------------------------------------


class Operations:
    """The operations handlers of the control socket; :meth:`handlers` names them.

    ``base_status`` is the gateway's own status handler; ``status`` adds the process, media,
    SIP-refusal and per-trunk figures to what it returns.
    """

    def __init__(self, parts: GatewayParts, base_status: Handler) -> None:
        self.parts = parts
        self._base_status = base_status
        self.cpu = CpuMeter()

    def handlers(self) -> dict[str, Handler]:
        """Command name (as the CLI spells it) to handler, for the ControlServer."""
        return {
            "status": self.status,
            "call show": self.call_show,
            "call hangup": self.call_hangup,
            "regs": self.regs,
            "trunks": self.trunks,
            "trunk ping": self.trunk_ping,
            "drain": self.drain,
        }

    def _call(self, args: Mapping[str, Any]) -> Call:
        call_id = _text_arg(args, "id")
        call = self.parts.core.calls.get(call_id)
        if call is None:
            raise UnknownCall(call_id)
        return call

    async def status(self, args: dict[str, Any]) -> dict[str, Any]:
        base = await self._base_status(args)
        core = self.parts.core
        stats = core.stats
        return {
            **base,
            "draining": core.draining,
            "cpu": await self.cpu.reading(),
            "memory": memory_usage(),
            "media_drops": media_drops(list(core.calls.values())),
            "sip_refusals": dict(sorted(stats.refusals.items())),
            "bans": stats.bans,
            "banned_dropped": stats.banned_dropped,
            "trunks": _trunk_rows(self.parts),
        }

    async def call_show(self, args: dict[str, Any]) -> dict[str, Any]:
        return call_detail(self._call(args))

    async def call_hangup(self, args: dict[str, Any]) -> dict[str, Any]:
        call = self._call(args)
        if not self.parts.core.hangup(call.id):
            raise UnknownCall(call.id)  # it ended between the look-up and now
        log.info("call hung up from the control socket", call=call.id)
        return {"id": call.id, "hangup": True}

    async def regs(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        now = time.time()
        bindings = sorted(self.parts.registrar.all(), key=lambda b: (b.aor, b.contact))
        return [binding_row(binding, now) for binding in bindings]

    async def trunks(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return _trunk_rows(self.parts)

    async def trunk_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        name = _text_arg(args, "name")
        monitor = self.parts.trunk_monitor
        if name not in monitor.trunks:
            raise UnknownTrunk(name, monitor.trunks)
        result = await monitor.ping(name)
        return {"name": name, "alive": result.alive, **result.as_dict()}

    async def drain(self, args: dict[str, Any]) -> dict[str, Any]:
        core = self.parts.core
        draining = _bool_arg(args, "on", True)
        if core.draining != draining:
            log.warning("draining" if draining else "drain ended", calls=len(core.calls))
        core.draining = draining
        return {"draining": draining, "active_calls": len(core.calls)}
