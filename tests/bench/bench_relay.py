"""Benchmark: plain RTP relayed through MediaSessions on loopback.

A figure, not a test. ``calls`` simulated calls each send ``pps`` G.711-sized
RTP packets per second in both directions for ``seconds``. The two peers of
every call live in a child process (sockets handed over with ``pass_fds``), so
the CPU time measured with ``time.process_time`` in this process is the
relay's own, comparable with a relay daemon's CPU. Prints packets relayed per
CPU-second of the relay process and the loss seen by the peers.

Run: ``.venv/bin/python -m tests.bench.bench_relay [--calls N] [--pps N] [--seconds S]``.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time
from dataclasses import dataclass

import trio

from gateway.media.relay import MediaSession, PortAllocator

_HOST = "127.0.0.1"
_PAYLOAD = 160  # 20 ms of G.711


@dataclass
class Load:
    calls: int = 20
    pps: int = 50
    seconds: float = 5.0


def _rtp_packet(seq: int) -> bytes:
    header = bytes([0x80, 0x08]) + seq.to_bytes(2, "big") + bytes(8)
    return header + bytes(_PAYLOAD)


def _peer_main() -> None:
    """Child process: every peer sends at a fixed rate and counts what comes back."""
    spec = json.loads(sys.stdin.read())
    peers = [(socket.socket(fileno=fd), port) for fd, port in spec["peers"]]
    selector = selectors.DefaultSelector()
    for sock, _ in peers:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, data=sock)
    sent, received = _drive(peers, selector, spec["pps"], spec["seconds"])
    print(json.dumps({"sent": sent, "received": received, "cpu": time.process_time()}))


def _drive(
    peers: list[tuple[socket.socket, int]],
    selector: selectors.BaseSelector,
    pps: int,
    seconds: float,
) -> tuple[int, int]:
    interval = 1.0 / pps
    packet = _rtp_packet(1)
    next_tick = time.monotonic()
    end = next_tick + seconds
    linger = end + 0.5  # let the last packets come back
    sent = received = 0
    while (now := time.monotonic()) < linger:
        if next_tick <= now < end:
            for sock, port in peers:
                sock.sendto(packet, (_HOST, port))
            sent += len(peers)
            next_tick += interval
        wake = next_tick if now < end else linger
        for key, _ in selector.select(max(0.0, wake - now)):
            received += _drain(key.data)
    return sent, received


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return count
        count += 1


async def _run(load: Load) -> dict[str, float]:
    allocator = PortAllocator(_HOST, 30000, 30000 + 8 * load.calls + 10)
    sessions: list[MediaSession] = []
    peer_socks: list[socket.socket] = []
    peers: list[tuple[int, int]] = []
    async with trio.open_nursery() as nursery:
        for _ in range(load.calls):
            session = MediaSession(allocator, host_for_sdp=_HOST, latch_window=5.0)
            ports = await nursery.start(session.run)
            for leg in ("a", "b"):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind((_HOST, 0))
                session.set_remote(leg, _HOST, sock.getsockname()[1])
                peer_socks.append(sock)
                peers.append((sock.fileno(), ports[leg][0]))
            sessions.append(session)
        spec = json.dumps({"peers": peers, "pps": load.pps, "seconds": load.seconds})
        cpu_start = time.process_time()
        wall_start = time.monotonic()
        result = await trio.run_process(
            [sys.executable, "-m", "tests.bench.bench_relay", "--peer"],
            stdin=spec.encode(),
            pass_fds=[fd for fd, _ in peers],
            capture_stdout=True,
        )
        cpu = time.process_time() - cpu_start
        wall = time.monotonic() - wall_start
        nursery.cancel_scope.cancel()
    for sock in peer_socks:
        sock.close()
    peer = json.loads(result.stdout)
    relayed = sum(s.stats()[leg]["packets_out"] for s in sessions for leg in ("a", "b"))
    return {
        "relayed": relayed,
        "sent": peer["sent"],
        "received": peer["received"],
        "relay_cpu": cpu,
        "peer_cpu": peer["cpu"],
        "wall": wall,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=Load.calls)
    parser.add_argument("--pps", type=int, default=Load.pps)
    parser.add_argument("--seconds", type=float, default=Load.seconds)
    parser.add_argument("--peer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer:
        _peer_main()
        return
    load = Load(args.calls, args.pps, args.seconds)
    figures = trio.run(_run, load)
    loss = 1.0 - figures["received"] / figures["sent"] if figures["sent"] else 0.0
    per_cpu = figures["relayed"] / figures["relay_cpu"] if figures["relay_cpu"] else 0.0
    print(
        f"relay: {load.calls} calls x {load.pps} pps each way for {load.seconds:g} s: "
        f"{figures['relayed']:.0f} packets relayed in {figures['relay_cpu']:.3f} CPU-s "
        f"= {per_cpu:,.0f} packets per CPU-second; "
        f"loss {loss:.4%} ({figures['sent'] - figures['received']:.0f} of "
        f"{figures['sent']:.0f}); peer process CPU {figures['peer_cpu']:.3f} s"
    )


if __name__ == "__main__":
    main()
