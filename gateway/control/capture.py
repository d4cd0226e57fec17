"""Per-call packet capture: `edgegw capture start|stop|list` write a call's packets as a pcap.

A capture taps two places, each set only while a capture needs it:

* the SIP endpoint's ``tap`` (:mod:`gateway.transport.endpoint`): every message received or
  sent, as raw bytes with its flow. Those whose Call-ID (RFC 3261 20.8) is one of the call's
  two legs' (the caller side ``Call.a``, the callee side ``Call.b``) are kept;
* the call's :class:`~gateway.media.relay.MediaSession` ``tap``: each RTP/RTCP datagram as
  received and as sent, SRTP as it was on the wire (the relay never hands over clear text).

The taps only stamp the wall-clock time and queue the packet (bounded: a full queue drops
and counts). One writer task per capture turns the queue into pcap records
(:mod:`gateway.media.pcap`) and writes them from a worker thread, so no file I/O happens on
the packet path. SIP over TCP becomes TCP segments with running sequence numbers. SIP over
TLS is not written: the gateway never holds the ciphertext the peer saw, and clear text
presented as the wire would mislead whoever reads the file; such messages are counted and
``list`` says so.

A capture stops at ``edgegw capture stop``, when the disk is nearly full (captures give up
disk first; ``disk_low`` is asked before each write), or when its call ends: after a short
linger, so the BYE toward the other leg and the 200s answering both BYEs are in the file.
Files are ``<var_dir>/captures/<call id>-<UTC time>.pcap`` unless the command names one.
"""

from __future__ import annotations

import collections
import io
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import structlog
import trio

from gateway.media.pcap import Address, PcapError, PcapWriter
from gateway.media.relay import MediaSession
from gateway.transport.endpoint import SipTap
from gateway.transport.flow import Flow

__all__ = [
    "DEFAULT_LINGER",
    "Capture",
    "CaptureError",
    "CaptureRegistry",
    "CapturedCall",
    "SipTapHolder",
    "sip_call_id",
]

log = structlog.get_logger("edgegw.capture")

DEFAULT_LINGER = 1.0
# Packets waiting for the writer: a few seconds of a call's four RTP/RTCP streams both ways.
_QUEUE = 4096
# Records encoded per write: one thread hop per batch, not per packet.
_BATCH = 512
# Stopped captures kept for `list`.
_KEEP_STOPPED = 50
_STOP_WAIT = 10.0
_CALL_ID = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$", re.IGNORECASE | re.M)

STOPPED_BY_COMMAND = "stopped by command"
CALL_ENDED = "call ended"
DISK_LOW = "disk nearly full"
GATEWAY_STOPPED = "gateway stopped"


class CaptureError(Exception):
    """A capture that cannot be started or stopped; the message says why and what to do."""


class _Leg(Protocol):
    @property
    def call_id(self) -> str: ...


class SipTapHolder(Protocol):
    """Where SIP is tapped (gateway.transport.endpoint.SipEndpoint)."""

    tap: SipTap | None


class CapturedCall(Protocol):
    """What a capture needs of a call (gateway.calls.b2bua.Call)."""

    @property
    def id(self) -> str: ...
    @property
    def a(self) -> _Leg: ...
    @property
    def b(self) -> _Leg: ...
    @property
    def media(self) -> MediaSession: ...
    @property
    def ended(self) -> trio.Event: ...


@dataclass(frozen=True, slots=True)
class _Packet:
    time: float
    transport: str  # "udp" or "tcp"
    source: Address
    destination: Address
    data: bytes


@dataclass(eq=False)
class Capture:
    """One capture: its file, its queue and what it wrote."""

    call_id: str
    path: Path
    sip_call_ids: tuple[str, ...]
    media: MediaSession
    clock: Callable[[], float]
    started: float
    queue_send: trio.MemorySendChannel[_Packet]
    queue_receive: trio.MemoryReceiveChannel[_Packet]
    packets: int = 0
    octets: int = 0  # IP bytes written
    dropped: int = 0  # the writer fell behind: the queue was full
    unwritable: int = 0  # an address a pcap record cannot hold (see gateway.media.pcap)
    tls_messages: int = 0  # SIP over TLS seen and not written
    stopped: float | None = None
    stop_reason: str = ""
    done: trio.Event = field(default_factory=trio.Event)

    def on_media(self, data: bytes, source: Address, destination: Address) -> None:
        """The relay's tap: one RTP/RTCP datagram as received or as sent."""
        self.queue(_Packet(self.clock(), "udp", source, destination, data))

    def queue(self, packet: _Packet) -> None:
        if self.stopped is not None:
            return  # a relay loop reads its tap once per wake: late packets are ignored
        try:
            self.queue_send.send_nowait(packet)
        except trio.WouldBlock:
            self.dropped += 1

    def summary(self) -> dict[str, Any]:
        note = ""
        if self.tls_messages:
            note = (
                f"{self.tls_messages} SIP messages over TLS not captured "
                "(encrypted on the wire; the gateway holds no ciphertext to write)"
            )
        return {
            "call_id": self.call_id,
            "file": str(self.path),
            "state": "running" if self.stopped is None else "stopped",
            "packets": self.packets,
            "bytes": self.octets,
            "dropped": self.dropped,
            "unwritable": self.unwritable,
            "tls_not_captured": self.tls_messages,
            "started": self.started,
            "stopped": self.stopped,
            "stop_reason": self.stop_reason,
            "sip_call_ids": list(self.sip_call_ids),
            "note": note,
        }


def sip_call_id(data: bytes) -> str | None:
    """The Call-ID of a raw SIP message (full or compact header name), None when it has none."""
    end = data.find(b"\r\n\r\n")
    match = _CALL_ID.search(data, 0, end if end >= 0 else len(data))
    return None if match is None else match.group(1).decode("utf-8", "replace")


def _create(path: Path, make_parent: bool) -> BinaryIO:
    if make_parent:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    return os.fdopen(fd, "wb")


class CaptureRegistry:
    """The running and recent captures of the gateway; ``run`` owns their writer tasks.

    ``calls`` is the live table of calls by id (CallCore.calls); ``disk_low`` says whether
    the disk is nearly full (gateway.control.disk.DiskMonitor.disk_low).
    """

    def __init__(
        self,
        directory: Path,
        *,
        calls: Mapping[str, CapturedCall],
        endpoint: SipTapHolder,
        disk_low: Callable[[], bool],
        linger: float = DEFAULT_LINGER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self._calls = calls
        self._endpoint = endpoint
        self._disk_low = disk_low
        self._linger = linger
        self._clock = clock
        self._running: dict[str, Capture] = {}
        self._by_sip_call_id: dict[str, Capture] = {}
        self._stopped: collections.deque[Capture] = collections.deque(maxlen=_KEEP_STOPPED)
        self._nursery: trio.Nursery | None = None

    # ---- life ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve captures until cancelled; on the way out each writes what it has queued."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            for capture in list(self._running.values()):
                self._stop(capture, GATEWAY_STOPPED)

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        """Control-socket commands: capture_start {call, output?}, capture_stop {call},
        capture_list."""
        return {
            "capture_start": self._handle_start,
            "capture_stop": self._handle_stop,
            "capture_list": self._handle_list,
        }

    async def _handle_start(self, args: dict[str, Any]) -> dict[str, Any]:
        output = args.get("output")
        return await self.start(str(args.get("call", "")), Path(output) if output else None)

    async def _handle_stop(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self.stop(str(args.get("call", "")))

    async def _handle_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        return self.list()

    # ---- commands ----------------------------------------------------------------------------

    async def start(self, call_id: str, output: Path | None = None) -> dict[str, Any]:
        """Start capturing call ``call_id`` into ``output`` (absolute), else the captures dir."""
        call = self._startable(call_id)
        if output is not None and not output.is_absolute():
            raise CaptureError(f"capture file {output} must be an absolute path")
        path = output or self.directory / f"{call_id}-{_stamp(self._clock())}.pcap"
        try:
            handle = await trio.to_thread.run_sync(_create, path, output is None)
        except FileExistsError:
            raise CaptureError(f"{path} already exists: give another --output") from None
        except OSError as exc:
            raise CaptureError(f"cannot create {path}: {exc.strerror or exc}") from None
        try:
            call = self._startable(call_id)  # the world may have moved while the file opened
        except CaptureError:
            await trio.to_thread.run_sync(_discard, handle, path)
            raise
        assert self._nursery is not None  # _startable checked it
        send, receive = trio.open_memory_channel[_Packet](_QUEUE)
        capture = Capture(
            call_id=call_id,
            path=path,
            sip_call_ids=(call.a.call_id, call.b.call_id),
            media=call.media,
            clock=self._clock,
            started=self._clock(),
            queue_send=send,
            queue_receive=receive,
        )
        self._running[call_id] = capture
        for sip_id in capture.sip_call_ids:
            self._by_sip_call_id[sip_id] = capture
        call.media.tap = capture.on_media
        self._endpoint.tap = self._on_sip
        self._nursery.start_soon(self._run_capture, capture, call, handle)
        log.info("capture started", call=call_id, file=str(path))
        return capture.summary()

    def _startable(self, call_id: str) -> CapturedCall:
        if self._nursery is None:
            raise CaptureError("captures are not running (the gateway is stopping)")
        call = self._calls.get(call_id)
        if call is None or call.ended.is_set():
            raise CaptureError(f"no call {call_id!r} in progress (see `edgegw calls`)")
        running = self._running.get(call_id)
        if running is not None:
            raise CaptureError(f"call {call_id} is already being captured to {running.path}")
        if self._disk_low():
            raise CaptureError("disk nearly full: captures are refused until space is freed")
        return call

    async def stop(self, call_id: str) -> dict[str, Any]:
        """Stop the capture of ``call_id``; returns once its file is complete and closed."""
        capture = self._running.get(call_id)
        if capture is None:
            raise CaptureError(
                f"no capture of call {call_id!r} is running (see `edgegw capture list`)"
            )
        self._stop(capture, STOPPED_BY_COMMAND)
        with trio.move_on_after(_STOP_WAIT):
            await capture.done.wait()
        return capture.summary()

    def list(self) -> list[dict[str, Any]]:
        """Running and recently stopped captures, oldest first."""
        captures = [*self._stopped, *self._running.values()]
        return [c.summary() for c in sorted(captures, key=lambda c: c.started)]

    # ---- taps --------------------------------------------------------------------------------

    def _on_sip(self, data: bytes, flow: Flow, sent: bool) -> None:
        call_id = sip_call_id(data)
        capture = self._by_sip_call_id.get(call_id) if call_id is not None else None
        if capture is None:
            return
        if flow.transport == "tls":
            capture.tls_messages += 1
            return
        source, destination = (flow.local, flow.remote) if sent else (flow.remote, flow.local)
        transport = "udp" if flow.transport == "udp" else "tcp"
        capture.queue(_Packet(self._clock(), transport, source, destination, data))

    def _stop(self, capture: Capture, reason: str) -> None:
        if capture.stopped is not None:
            return
        capture.stopped = self._clock()
        capture.stop_reason = reason
        self._running.pop(capture.call_id, None)
        for sip_id in capture.sip_call_ids:
            if self._by_sip_call_id.get(sip_id) is capture:
                del self._by_sip_call_id[sip_id]
        if capture.media.tap == capture.on_media:
            capture.media.tap = None
        if not self._running:
            self._endpoint.tap = None  # no capture: SIP pays nothing but a None test
        capture.queue_send.close()  # the writer drains what is queued, then closes the file
        self._stopped.append(capture)
        log.info("capture stopped", call=capture.call_id, reason=reason, file=str(capture.path))

    # ---- the writer --------------------------------------------------------------------------

    async def _run_capture(self, capture: Capture, call: CapturedCall, handle: BinaryIO) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._end_with_call, capture, call)
            await self._write(capture, handle)
            nursery.cancel_scope.cancel()

    async def _end_with_call(self, capture: Capture, call: CapturedCall) -> None:
        while not call.ended.is_set() and self._calls.get(capture.call_id) is call:
            with trio.move_on_after(1.0):
                await call.ended.wait()
        await trio.sleep(self._linger)  # the other leg's BYE and both 200s still to come
        self._stop(capture, CALL_ENDED)

    async def _write(self, capture: Capture, handle: BinaryIO) -> None:
        buffer = io.BytesIO()
        pcap = PcapWriter(buffer)  # the global header, written with the first chunk
        try:
            await self._flush(capture, pcap, buffer, handle)
            async for first in capture.queue_receive:
                batch = _drain(capture.queue_receive, first)
                if self._disk_low():
                    self._stop(capture, DISK_LOW)
                    return
                _encode(capture, pcap, batch)
                await self._flush(capture, pcap, buffer, handle)
        except OSError as exc:
            log.error("capture write failed", call=capture.call_id, error=str(exc))
            self._stop(capture, f"write failed: {exc.strerror or exc}")
        finally:
            with trio.CancelScope(shield=True):
                await self._finish(capture, pcap, buffer, handle)

    async def _finish(
        self, capture: Capture, pcap: PcapWriter, buffer: io.BytesIO, handle: BinaryIO
    ) -> None:
        """At the end, also when the gateway stops: what is still queued, then close."""
        try:
            if capture.stop_reason != DISK_LOW and not capture.stop_reason.startswith("write"):
                while batch := _drain(capture.queue_receive, None):
                    _encode(capture, pcap, batch)
                await self._flush(capture, pcap, buffer, handle)
        except OSError as exc:
            log.error("capture write failed", call=capture.call_id, error=str(exc))
        finally:
            capture.queue_receive.close()
            await trio.to_thread.run_sync(handle.close)
            capture.done.set()

    @staticmethod
    async def _flush(
        capture: Capture, pcap: PcapWriter, buffer: io.BytesIO, handle: BinaryIO
    ) -> None:
        chunk = buffer.getvalue()
        if not chunk:
            return
        buffer.seek(0)
        buffer.truncate()
        await trio.to_thread.run_sync(_write_chunk, handle, chunk)
        capture.packets, capture.octets = pcap.packets, pcap.bytes


def _drain(receive: trio.MemoryReceiveChannel[_Packet], first: _Packet | None) -> list[_Packet]:
    batch = [] if first is None else [first]
    while len(batch) < _BATCH:
        try:
            batch.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break
    return batch


def _encode(capture: Capture, pcap: PcapWriter, batch: list[_Packet]) -> None:
    for packet in batch:
        write = pcap.write_udp if packet.transport == "udp" else pcap.write_tcp
        try:
            write(packet.time, packet.source, packet.destination, packet.data)
        except PcapError:
            capture.unwritable += 1


def _write_chunk(handle: BinaryIO, chunk: bytes) -> None:
    handle.write(chunk)
    handle.flush()  # tshark may read the file while the capture runs


def _discard(handle: BinaryIO, path: Path) -> None:
    handle.close()
    path.unlink(missing_ok=True)


def _stamp(epoch: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))
