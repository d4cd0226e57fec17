"""A sampling profiler for the gateway process, for benchmarks (py-spy is not available).

cProfile times every Python call, which inflates code made of many small calls
(the SIP parser, Trio's scheduler) against code that spends its time in C; its
figures also count wall time, idle waits included. This samples instead: a
``SIGPROF`` timer fires every ``interval`` of *CPU* time and the main thread's
stack is counted. Idle time costs no CPU, so it takes no samples; what the
samples show is where the CPU went.

Run a module under it (the gateway: ``gateway.control.cli run --config F``)::

    python -m tests.bench.sample_profile --out FILE -m gateway.control.cli run --config F

On exit it writes FILE (one line per distinct stack, root first, frames joined
by ``;``, then the count: the "collapsed" format flame graph tools read) and
``report(FILE)`` prints the functions with the most samples, by own time and by
time including callees.
"""

from __future__ import annotations

import argparse
import collections
import runpy
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from types import FrameType

_DEFAULT_INTERVAL = 0.001

Stack = tuple[str, ...]


class Sampler:
    """Counts the main thread's stacks at every SIGPROF."""

    def __init__(self, interval: float = _DEFAULT_INTERVAL) -> None:
        self.interval = interval
        self.stacks: collections.Counter[Stack] = collections.Counter()

    def start(self) -> None:
        signal.signal(signal.SIGPROF, self._sample)
        signal.setitimer(signal.ITIMER_PROF, self.interval, self.interval)

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_PROF, 0, 0)
        signal.signal(signal.SIGPROF, signal.SIG_IGN)

    def _sample(self, signum: int, frame: FrameType | None) -> None:
        names: list[str] = []
        while frame is not None:
            names.append(frame_name(frame))
            frame = frame.f_back
        names.reverse()
        self.stacks[tuple(names)] += 1

    def write(self, path: Path) -> None:
        lines = [f"{';'.join(stack)} {count}" for stack, count in self.stacks.most_common()]
        path.write_text("\n".join(lines) + "\n")


def frame_name(frame: FrameType) -> str:
    """``path/file.py:function``, the path shortened to what follows site-packages or the
    repository (the ``gateway`` package)."""
    code = frame.f_code
    filename = code.co_filename
    for marker in ("site-packages/", "/gateway/", "/lib/python3"):
        index = filename.rfind(marker)
        if index >= 0:
            filename = filename[index + len(marker) :]
            if marker == "/gateway/":
                filename = "gateway/" + filename
            break
    return f"{filename}:{code.co_name}"


def read_collapsed(path: Path) -> collections.Counter[Stack]:
    stacks: collections.Counter[Stack] = collections.Counter()
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames:
            stacks[tuple(frames.split(";"))] += int(count)
    return stacks


def totals(stacks: Iterable[tuple[Stack, int]]) -> tuple[int, dict[str, int], dict[str, int]]:
    """(samples, own samples per function, samples per function including callees)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    samples = 0
    for stack, count in stacks:
        samples += count
        if stack:
            own[stack[-1]] += count
        for name in set(stack):  # a recursive function counts once per sample
            inclusive[name] += count
    return samples, own, inclusive


def report(path: Path, top: int = 30) -> str:
    """The functions with the most samples, by own time and including callees."""
    samples, own, inclusive = totals(read_collapsed(path).items())
    if not samples:
        return f"{path}: no samples"
    lines = [f"{samples} samples ({path}); top {top} by own time:"]
    for name, count in sorted(own.items(), key=lambda item: -item[1])[:top]:
        lines.append(f"  {count / samples:6.1%}  {name}")
    lines.append(f"top {top} of the gateway's own functions, including callees:")
    ours = [(n, c) for n, c in inclusive.items() if n.startswith("gateway/")]
    for name, count in sorted(ours, key=lambda item: -item[1])[:top]:
        lines.append(f"  {count / samples:6.1%}  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="collapsed stacks file")
    parser.add_argument(
        "--interval", type=float, default=_DEFAULT_INTERVAL, help="CPU seconds between samples"
    )
    parser.add_argument("-m", dest="module", required=True, help="the module to run as __main__")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    args = parser.parse_args(argv)
    sampler = Sampler(args.interval)
    sys.argv = [args.module, *args.args]
    sampler.start()
    try:
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)
    finally:
        sampler.stop()
        sampler.write(args.out)


if __name__ == "__main__":
    main()
