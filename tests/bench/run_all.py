"""Run every benchmark with its defaults and print their figures (``./justw bench``).

Benchmarks give figures, not verdicts: one that cannot run (a missing tool, a
gateway that does not start) is reported and the others still run; the exit
code is 1 when any of them could not run.

Run: ``.venv/bin/python -m tests.bench.run_all``.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable

from tests.bench import (
    bench_call_setup,
    bench_g711,
    bench_relay,
    bench_srtp_relay,
    bench_transcode,
)

BENCHES: list[tuple[str, Callable[[], None]]] = [
    ("G.711 codec (bench_g711)", bench_g711.main),
    ("RTP relay (bench_relay)", lambda: bench_relay.main([])),
    ("call set-up, sipp (bench_call_setup)", lambda: bench_call_setup.main([])),
    ("SRTP and G.711 relay vs rtpengine (bench_srtp_relay)", lambda: bench_srtp_relay.main([])),
    ("Opus<->G.711 transcoding vs rtpengine (bench_transcode)", lambda: bench_transcode.main([])),
]


def run(name: str, bench: Callable[[], None]) -> bool:
    """Run one benchmark under a heading; False when it could not run."""
    print(f"\n=== {name} ===", flush=True)
    started = time.monotonic()
    try:
        bench()
    except SystemExit as exc:  # argparse and the benches' own "cannot run" exits
        if exc.code not in (None, 0):
            print(f"!!! {name} did not run: {exc.code}", flush=True)
            return False
    except Exception:
        traceback.print_exc()
        print(f"!!! {name} failed", flush=True)
        return False
    print(f"--- {name}: {time.monotonic() - started:.1f} s", flush=True)
    return True


def main() -> None:
    results = [run(name, bench) for name, bench in BENCHES]
    failed = [name for (name, _), ok in zip(BENCHES, results, strict=True) if not ok]
    if failed:
        print(f"\nbenchmarks that did not run: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
