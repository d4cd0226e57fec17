"""Micro-benchmark of the G.711 codec: cost of one 20 ms (160-sample) frame.

Run with ``.venv/bin/python tests/bench/bench_g711.py``. It prints figures;
it asserts nothing. Each figure is the best of several timed runs, so it shows
the cost of the code rather than of other load on the machine.
"""

from __future__ import annotations

import array
import math
import time
from collections.abc import Callable
from typing import Literal

from gateway._native_g711 import ffi, lib
from gateway.media.g711 import G711Codec, alaw_to_ulaw

FRAME = 160  # 20 ms at 8 kHz
LOOPS = 20_000
REPEATS = 5


def best_seconds_per_call(call: Callable[[], object], loops: int = LOOPS) -> float:
    """Fastest per-call time over REPEATS runs of ``loops`` calls."""
    best = math.inf
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(loops):
            call()
        best = min(best, (time.perf_counter() - start) / loops)
    return best


def speech_like_frame() -> bytes:
    """A 440 Hz tone at -6 dBFS, so every segment of the law is exercised."""
    samples = [round(16384 * math.sin(2 * math.pi * 440 * i / 8000)) for i in range(FRAME)]
    return array.array("h", samples).tobytes()


def report(label: str, seconds: float) -> None:
    print(f"{label:<44} {seconds * 1e6:8.3f} µs/frame {1 / seconds:12,.0f} frames/s")


def bench_codec(encoding: Literal["PCMA", "PCMU"], pcm: bytes) -> None:
    codec = G711Codec(encoding)
    payload = codec.encode(pcm)
    report(
        f"{encoding} encode (G711Codec.encode)", best_seconds_per_call(lambda: codec.encode(pcm))
    )
    report(
        f"{encoding} decode (G711Codec.decode)",
        best_seconds_per_call(lambda: codec.decode(payload)),
    )


def bench_per_sample() -> None:
    """Large buffers amortise the call overhead and show the per-sample cost."""
    every_value = array.array("h", range(-32768, 32768)).tobytes()
    big = 16 * len(every_value) // 2
    big_pcm = ffi.new("int16_t[]", big)
    big_codes = ffi.new("uint8_t[]", big)
    ffi.memmove(big_pcm, every_value * 16, 2 * big)
    ffi.memmove(big_codes, bytes(range(256)) * (big // 256), big)
    runs: dict[str, Callable[[], object]] = {
        "alaw_encode": lambda: lib.alaw_encode(big_pcm, big_codes, big),
        "ulaw_encode": lambda: lib.ulaw_encode(big_pcm, big_codes, big),
        "alaw_decode": lambda: lib.alaw_decode(big_codes, big_pcm, big),
        "ulaw_decode": lambda: lib.ulaw_decode(big_codes, big_pcm, big),
    }
    for name, run in runs.items():
        per_sample = best_seconds_per_call(run, loops=20) / big
        print(f"native {name} per sample (1 Mi-sample buffer) {per_sample * 1e9:8.3f} ns")


def main() -> None:
    pcm = speech_like_frame()
    print(f"G.711, {FRAME}-sample frames, best of {REPEATS} x {LOOPS:,} calls")
    bench_codec("PCMA", pcm)
    bench_codec("PCMU", pcm)
    alaw = G711Codec("PCMA").encode(pcm)
    report("PCMA -> PCMU (alaw_to_ulaw)", best_seconds_per_call(lambda: alaw_to_ulaw(alaw)))

    # The bare native calls, without the wrapper's copies: the floor the
    # wrapper adds to.
    pcm_buf = ffi.new("int16_t[]", FRAME)
    code_buf = ffi.new("uint8_t[]", FRAME)
    ffi.memmove(pcm_buf, pcm, len(pcm))
    report(
        "native alaw_encode call",
        best_seconds_per_call(lambda: lib.alaw_encode(pcm_buf, code_buf, FRAME)),
    )
    report(
        "native alaw_decode call",
        best_seconds_per_call(lambda: lib.alaw_decode(code_buf, pcm_buf, FRAME)),
    )

    bench_per_sample()


if __name__ == "__main__":
    main()
