"""Benchmark: call set-ups per second through the gateway, digest auth + B2BUA, with sipp.

A figure, not a test (DESIGN "Targets": >= 300 set-ups per second on one core,
0 failed). The gateway runs as its own process on a fresh var dir, pinned to
one core; a sipp trunk (``scenarios/bench_uas.xml``) and a sipp caller
(``scenarios/bench_uac.xml``: INVITE, 407, ACK, INVITE with credentials, 200,
ACK, pause, BYE) run on another core. No RTP is sent: this measures
signalling, call set-up and tear-down, CDR writing.

Figures per run: offered rate, calls completed and failed (sipp's own count),
the achieved rate, the gateway's CPU time over the run (utime + stime from
``/proc/<pid>/stat``, so its SQLite worker threads count too), set-ups per
gateway CPU-second and the number of CDRs the gateway wrote.

Run: ``.venv/bin/python -m tests.bench.bench_call_setup [--rate 300] [--calls 3000]``;
``--sweep`` tries increasing rates and reports the highest one carried (no call failed
and at least 95 % of the rate achieved: under overload sipp's retransmissions still
complete every call, only seconds late);
``--profile FILE`` runs the gateway under cProfile, ``--sample FILE`` under the sampling
profiler of :mod:`tests.bench.sample_profile` (CPU time, lower overhead); either prints the
gateway's hottest functions.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import pstats
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.control.client import ControlClient, ControlError, GatewayNotRunning
from tests.bench import sample_profile

_HOST = "127.0.0.1"
_SCENARIOS = Path(__file__).resolve().parent / "scenarios"
_REPOSITORY = Path(__file__).resolve().parents[2]
_CALLEE = "+8613800138000"  # any number that is not a subscriber's goes out on the trunk
_SWEEP_RATES = (50, 100, 200, 300, 400)
_READY_TIMEOUT = 20.0
_DRAIN_TIMEOUT = 30.0
# sipp's final statistics row names these columns (3.6.1, -trace_stat).
_SUCCESSFUL = "SuccessfulCall(C)"
_FAILED = "FailedCall(C)"
_CREATED = "TotalCallCreated"
_RETRANSMISSIONS = "Retransmissions(C)"
_SETUP_TIME = "ResponseTime1(C)"
_CALL_LENGTH = "CallLength(C)"
# A rate counts as carried when no call failed and this share of it was achieved.
_SUSTAINED = 0.95


class BenchError(RuntimeError):
    """The benchmark could not run (a missing tool, a gateway that did not start...)."""


@dataclass(frozen=True)
class Load:
    rate: int = 300
    calls: int = 3000
    duration_ms: int = 500
    limit: int = 5000
    log_level: str = "warning"


@dataclass(frozen=True)
class Figures:
    load: Load
    created: int
    completed: int
    failed: int
    retransmissions: int
    setup_ms: float  # mean INVITE-to-200, 407 round included (sipp's ResponseTime1)
    call_ms: float  # mean call length, first INVITE to the 200 for the BYE
    wall: float  # seconds sipp ran
    gateway_cpu: float
    gateway_sys: float  # of which in the kernel
    gateway_main: float  # of which on the main (Trio) thread
    cdrs: int
    cdrs_answered: int
    trunk_failed: int
    timed_out: bool  # sipp's global timeout ended the run

    @property
    def load_seconds(self) -> float:
        """The time calls were being placed: sipp's run minus (about) the last call's length."""
        return max(self.wall - self.call_ms / 1000, 1e-3)

    @property
    def achieved_cps(self) -> float:
        return self.completed / self.load_seconds

    @property
    def setups_per_cpu_second(self) -> float:
        return self.completed / self.gateway_cpu if self.gateway_cpu > 0 else 0.0

    @property
    def sustained(self) -> bool:
        """Every call completed and the offered rate was carried."""
        return (
            self.failed == 0
            and self.completed == self.load.calls
            and self.achieved_cps >= _SUSTAINED * self.load.rate
        )

    @property
    def gateway_load(self) -> float:
        """Share of its core the gateway used while sipp ran."""
        return self.gateway_cpu / self.wall if self.wall > 0 else 0.0


@dataclass(frozen=True)
class Profiler:
    """Run the gateway under a profiler: "cprofile" (pstats file) or "sample" (collapsed)."""

    kind: Literal["cprofile", "sample"]
    output: Path

    def command(self) -> list[str]:
        if self.kind == "cprofile":
            return ["-m", "cProfile", "-o", str(self.output)]
        return ["-m", "tests.bench.sample_profile", "--out", str(self.output)]

    def report(self, top: int = 30) -> str:
        if self.kind == "cprofile":
            out = io.StringIO()
            stats = pstats.Stats(str(self.output), stream=out)
            stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
            return f"cProfile of the gateway, top {top} by own time:\n{out.getvalue()}"
        return (
            f"CPU samples of the gateway's main thread: {sample_profile.report(self.output, top)}"
        )


@dataclass(frozen=True)
class Cores:
    """Where the gateway and where sipp run; None leaves the process unpinned."""

    gateway: frozenset[int] | None
    load: frozenset[int] | None

    @classmethod
    def split(cls) -> Cores:
        available = sorted(os.sched_getaffinity(0))
        if len(available) < 2:
            return cls(None, None)
        return cls(frozenset(available[:1]), frozenset(available[1:2]))

    def describe(self) -> str:
        if self.gateway is None or self.load is None:
            return "one CPU only: gateway and sipp share it (figures are pessimistic)"
        return f"gateway on CPU {min(self.gateway)}, sipp on CPU {min(self.load)}"


# ---- small pieces --------------------------------------------------------------------------


def free_udp_port(*, pair: bool = False) -> int:
    """A UDP port nobody holds now; with ``pair`` an even one whose successor is free too."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((_HOST, 0))
            port: int = probe.getsockname()[1]
            if not pair:
                return port
            if port % 2 or port >= 65534:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
                try:
                    second.bind((_HOST, port + 1))
                except OSError:
                    continue
                return port
    raise BenchError("no free UDP port pair on loopback")


def pinned(cores: frozenset[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child to ``cores`` (None: leave it where it is)."""
    if cores is None:
        return None
    chosen = set(cores)

    def pin() -> None:
        os.sched_setaffinity(0, chosen)

    return pin


@dataclass(frozen=True)
class CpuTimes:
    """CPU seconds of the gateway: the whole process, its kernel share, its main thread."""

    total: float
    system: float
    main_thread: float

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(
            self.total - other.total,
            self.system - other.system,
            self.main_thread - other.main_thread,
        )


def _utime_stime(stat_file: Path) -> tuple[float, float]:
    stat = stat_file.read_text()
    # The command name sits in parentheses and may itself hold spaces or ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def cpu_times(pid: int) -> CpuTimes:
    """From /proc: the process line counts every thread, ended ones included (the SQLite
    workers), the task line of ``pid`` itself only the main thread (the Trio loop)."""
    user, system = _utime_stime(Path(f"/proc/{pid}/stat"))
    main_user, main_system = _utime_stime(Path(f"/proc/{pid}/task/{pid}/stat"))
    return CpuTimes(user + system, system, main_user + main_system)


def gateway_config(var: Path, sip_port: int, trunk_port: int, log_level: str) -> str:
    """A TOML config: one subscriber (the scenario's credentials) and one trunk."""
    return f"""\
[general]
var_dir = "{var}"
log_level = "{log_level}"

[sip]
listen = [{{ transport = "udp", host = "{_HOST}", port = {sip_port} }}]
# sipp answers only the first challenge and knows MD5 only.
auth_algorithms = ["MD5"]

[media]
host = "{_HOST}"
port_min = 40000
port_max = 49999

[limits]
max_calls = 20000
cps_per_account = 100000
# The bench measures what the box can set up; admission control would refuse the
# excess with 503 instead (that is tested in tests/integration/test_fraud_limits.py).
max_cpu = 0.0
max_loop_lag = 0.0

[control]
socket = "{var / "control.sock"}"

[[subscribers]]
username = "1001"
password = "demo1001"
numbers = ["+8613900139001"]
balance = "1000000.00"

[[trunks]]
name = "bench-trunk"
host = "{_HOST}"
port = {trunk_port}
"""


def last_stat_row(path: Path) -> dict[str, str]:
    """The last row of a sipp -trace_stat file, as column -> value."""
    if not path.exists():
        raise BenchError(f"sipp wrote no statistics file ({path})")
    rows = list(csv.reader(io.StringIO(path.read_text(errors="replace")), delimiter=";"))
    if len(rows) < 2:
        raise BenchError(f"sipp statistics file {path} has no data row")
    return dict(zip(rows[0], rows[-1], strict=False))


def stat_int(row: dict[str, str], column: str) -> int:
    try:
        return int(row[column])
    except (KeyError, ValueError) as exc:
        raise BenchError(f"sipp statistics lack a usable {column!r} column") from exc


def stat_ms(row: dict[str, str], column: str) -> float:
    """sipp writes durations as HH:MM:SS:microseconds."""
    try:
        hours, minutes, seconds, micros = (int(part) for part in row[column].split(":"))
    except (KeyError, ValueError) as exc:
        raise BenchError(f"sipp statistics lack a usable {column!r} column") from exc
    return ((hours * 60 + minutes) * 60 + seconds) * 1000 + micros / 1000


def count_cdrs(database: Path) -> tuple[int, int]:
    """(all CDRs, answered CDRs), read-only so the gateway's writer is not disturbed."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        total, answered = db.execute(
            "SELECT count(*), coalesce(sum(disposition = 'answered'), 0) FROM cdrs"
        ).fetchone()
    return int(total), int(answered)


def tail(path: Path, lines: int = 15) -> str:
    if not path.exists():
        return "(no output)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ---- the processes -------------------------------------------------------------------------


class Gateway:
    """The gateway under test as a child process (optionally under a profiler)."""

    def __init__(
        self, workdir: Path, cores: Cores, log_level: str, profiler: Profiler | None
    ) -> None:
        self.workdir = workdir
        self.var = workdir / "var"
        self.sip_port = free_udp_port()
        self.trunk_port = free_udp_port()
        self.config = workdir / "gateway.toml"
        self.config.write_text(gateway_config(self.var, self.sip_port, self.trunk_port, log_level))
        self.log = workdir / "gateway.log"
        self.cores = cores
        self.profiler = profiler
        self.process: subprocess.Popen[bytes] | None = None
        self.client = ControlClient(self.var / "control.sock", timeout=5.0)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        command = [sys.executable]
        if self.profiler is not None:
            command += self.profiler.command()
        command += ["-m", "gateway.control.cli", "run", "--config", str(self.config)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=pinned(self.cores.gateway),
                cwd=_REPOSITORY,  # so that -m tests.bench.sample_profile is found
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BenchError(f"the gateway exited at start:\n{tail(self.log)}")
            with contextlib.suppress(GatewayNotRunning, ControlError):
                self.client.call("status")
                return
            time.sleep(0.05)
        raise BenchError(f"the gateway did not answer on its control socket:\n{tail(self.log)}")

    def active_calls(self) -> int:
        try:
            status = self.client.call("status")
        except (GatewayNotRunning, ControlError) as exc:
            raise BenchError(f"the gateway stopped answering: {exc}\n{tail(self.log)}") from exc
        return int(status["active_calls"])

    def wait_idle(self) -> None:
        """Until every call has ended and written its CDR (or the drain timeout passes)."""
        deadline = time.monotonic() + _DRAIN_TIMEOUT
        while time.monotonic() < deadline and self.active_calls() > 0:
            time.sleep(0.1)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Trunk:
    """sipp answering every INVITE as the carrier trunk."""

    def __init__(self, workdir: Path, port: int, cores: Cores) -> None:
        self.stats = workdir / "trunk_stats.csv"
        self.errors = workdir / "trunk_errors.log"
        self.command = [
            *("sipp", "-sf", str(_SCENARIOS / "bench_uas.xml")),
            *("-i", _HOST, "-p", str(port), "-mp", str(free_udp_port(pair=True))),
            *("-trace_stat", "-stf", str(self.stats), "-fd", "1"),
            *("-trace_err", "-error_file", str(self.errors)),
            "-nostdin",
        ]
        self.cores = cores
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=pinned(self.cores.load),
        )
        time.sleep(0.3)  # sipp binds its sockets
        if self.process.poll() is not None:
            raise BenchError(f"the sipp trunk exited at start (code {self.process.returncode})")

    def stop(self) -> int:
        """Stop it (SIGUSR1: finish open calls, then exit); its failed-call count."""
        process = self.process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGUSR1)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        try:
            return stat_int(last_stat_row(self.stats), _FAILED)
        except BenchError:
            return 0


def run_callers(
    workdir: Path, load: Load, sip_port: int, cores: Cores
) -> tuple[dict[str, str], bool]:
    """sipp places the calls; its final statistics row, and whether its timeout cut it short."""
    stats = workdir / "caller_stats.csv"
    errors = workdir / "caller_errors.log"
    # The global timeout: the time the calls take at this rate, plus retransmission slack.
    timeout = int(load.calls / load.rate + load.duration_ms / 1000) + 40
    command = [
        *("sipp", "-sf", str(_SCENARIOS / "bench_uac.xml"), "-s", _CALLEE),
        # An explicit port: sipp would take 5060 when it is free, a demo gateway's port.
        *("-i", _HOST, "-p", str(free_udp_port()), "-mp", str(free_udp_port(pair=True))),
        *("-r", str(load.rate), "-m", str(load.calls), "-l", str(load.limit)),
        *("-d", str(load.duration_ms), "-timeout", str(timeout), "-timeout_error"),
        *("-trace_stat", "-stf", str(stats), "-fd", "1"),
        *("-trace_err", "-error_file", str(errors)),
        "-nostdin",
        f"{_HOST}:{sip_port}",
    ]
    try:
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=pinned(cores.load),
            timeout=timeout + 30,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"sipp did not stop within {timeout + 30} s") from exc
    # 0: every call succeeded, 1: some failed, 255: a fatal error, which is also how
    # sipp 3.6.1 ends at its global timeout (-timeout_error): then it wrote its figures.
    timed_out = result.returncode == 255 and stats.exists()
    if result.returncode not in (0, 1) and not timed_out:
        raise BenchError(
            f"sipp failed (exit {result.returncode}): "
            f"{result.stderr.decode(errors='replace').strip()[-800:]}"
        )
    return last_stat_row(stats), timed_out


def measure(
    load: Load, cores: Cores, *, keep: bool = False, profiler: Profiler | None = None
) -> Figures:
    """One run on a fresh gateway: start it and the trunk, place the calls, collect figures."""
    workdir = Path(tempfile.mkdtemp(prefix="edgegw-bench-"))
    gateway = Gateway(workdir, cores, load.log_level, profiler)
    trunk = Trunk(workdir, gateway.trunk_port, cores)
    try:
        gateway.start()
        trunk.start()
        cpu_before = cpu_times(gateway.pid)
        started = time.monotonic()
        row, timed_out = run_callers(workdir, load, gateway.sip_port, cores)
        wall = time.monotonic() - started
        gateway.wait_idle()
        cpu = cpu_times(gateway.pid) - cpu_before
        trunk_failed = trunk.stop()
        cdrs, answered = count_cdrs(gateway.var / "edgegw.sqlite")
    finally:
        trunk.stop()
        gateway.stop()
        if keep or profiler is not None:
            print(f"(kept {workdir})")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return Figures(
        load=load,
        created=stat_int(row, _CREATED),
        completed=stat_int(row, _SUCCESSFUL),
        failed=stat_int(row, _FAILED),
        retransmissions=stat_int(row, _RETRANSMISSIONS),
        setup_ms=stat_ms(row, _SETUP_TIME),
        call_ms=stat_ms(row, _CALL_LENGTH),
        wall=wall,
        gateway_cpu=cpu.total,
        gateway_sys=cpu.system,
        gateway_main=cpu.main_thread,
        cdrs=cdrs,
        cdrs_answered=answered,
        trunk_failed=trunk_failed,
        timed_out=timed_out,
    )


# ---- reporting -----------------------------------------------------------------------------

_COLUMNS = (
    ("offered cps", 11),
    ("calls", 6),
    ("completed", 9),
    ("failed", 6),
    ("achieved cps", 12),
    ("gw CPU-s", 8),
    ("gw core %", 9),
    ("set-ups/CPU-s", 13),
    ("CDRs", 6),
    ("set-up ms", 9),
    ("retrans", 7),
)


def table_header() -> str:
    names = " ".join(f"{name:>{width}}" for name, width in _COLUMNS)
    return f"{names}\n{'-' * len(names)}"


def table_row(figures: Figures) -> str:
    cells = (
        f"{figures.load.rate}",
        f"{figures.created}",
        f"{figures.completed}",
        f"{figures.failed}",
        f"{figures.achieved_cps:.1f}",
        f"{figures.gateway_cpu:.2f}",
        f"{figures.gateway_load:.0%}",
        f"{figures.setups_per_cpu_second:.1f}",
        f"{figures.cdrs}",
        f"{figures.setup_ms:.1f}",
        f"{figures.retransmissions}",
    )
    return " ".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, _COLUMNS, strict=True))


def notes(figures: Figures) -> Iterator[str]:
    cpu = figures.gateway_cpu or 1.0
    yield (
        f"  gateway CPU: {figures.gateway_main / cpu:.0%} on the main (Trio) thread, "
        f"{1 - figures.gateway_main / cpu:.0%} in worker threads (SQLite); "
        f"{figures.gateway_sys / cpu:.0%} of it in the kernel"
    )
    if not figures.sustained:
        yield (
            f"  note: rate not carried ({figures.failed} failed, "
            f"{figures.achieved_cps:.0f} of {figures.load.rate} calls/s achieved)"
        )
    if figures.timed_out:
        yield (
            f"  note: sipp's timeout ended the run with {figures.load.calls - figures.completed}"
            f" of {figures.load.calls} calls not completed"
        )
    if figures.cdrs != figures.completed:
        yield (
            f"  note: {figures.cdrs} CDRs ({figures.cdrs_answered} answered) "
            f"for {figures.completed} completed calls"
        )
    if figures.trunk_failed:
        yield f"  note: the sipp trunk counted {figures.trunk_failed} failed calls"


def sweep(base: Load, rates: Sequence[int], seconds: float, cores: Cores, keep: bool) -> None:
    """Increasing rates, ``seconds`` of calls each, until one is not carried.

    Under overload sipp's retransmissions usually complete every call in the
    end, only later; so a rate counts as carried when no call failed *and* at
    least 95 % of it was achieved.
    """
    print(table_header())
    best: int | None = None
    for rate in rates:
        load = Load(
            rate, max(1, round(rate * seconds)), base.duration_ms, base.limit, base.log_level
        )
        figures = measure(load, cores, keep=keep)
        print(table_row(figures))
        for line in notes(figures):
            print(line)
        if not figures.sustained:
            break
        best = rate
    if best is None:
        print(f"none of the rates {list(rates)} was carried with 0 failed calls")
    else:
        print(f"highest rate carried with 0 failed calls: {best} calls/s")


def _rates(text: str) -> list[int]:
    try:
        rates = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected rates like 50,100,200, got {text!r}") from None
    if not rates or min(rates) < 1:
        raise argparse.ArgumentTypeError(f"expected positive rates, got {text!r}")
    return rates


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Load()
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=_positive, default=defaults.rate, help="calls per second")
    parser.add_argument("--calls", type=_positive, default=defaults.calls, help="calls to place")
    parser.add_argument(
        "--duration-ms",
        type=int,
        default=defaults.duration_ms,
        help="pause between the ACK and the BYE (ms)",
    )
    parser.add_argument(
        "--limit", type=_positive, default=defaults.limit, help="most calls open at once (sipp -l)"
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default=defaults.log_level,
        help="the gateway's log level (info logs two lines per call)",
    )
    parser.add_argument("--sweep", action="store_true", help="try increasing rates")
    parser.add_argument(
        "--rates",
        type=_rates,
        default=list(_SWEEP_RATES),
        help="rates for --sweep, comma-separated",
    )
    parser.add_argument(
        "--sweep-seconds",
        type=float,
        default=5.0,
        help="seconds of calls per rate in --sweep",
    )
    profiling = parser.add_mutually_exclusive_group()
    profiling.add_argument(
        "--profile", type=Path, help="run the gateway under cProfile, stats into FILE"
    )
    profiling.add_argument(
        "--sample", type=Path, help="run the gateway under the sampling profiler into FILE"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directories")
    args = parser.parse_args(argv)
    if args.duration_ms < 0:
        parser.error("--duration-ms must not be negative")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if shutil.which("sipp") is None:
        raise SystemExit("bench_call_setup: sipp is not installed (Debian package sip-tester)")
    cores = Cores.split()
    load = Load(args.rate, args.calls, args.duration_ms, args.limit, args.log_level)
    print(
        f"call set-up through edgegw (digest auth + B2BUA, no RTP), sipp; {cores.describe()}; "
        f"pause {load.duration_ms} ms; gateway log level {load.log_level}"
    )
    try:
        if args.sweep:
            sweep(load, args.rates, args.sweep_seconds, cores, args.keep)
            return
        profiler = None
        if args.profile is not None:
            profiler = Profiler("cprofile", args.profile.resolve())
        elif args.sample is not None:
            profiler = Profiler("sample", args.sample.resolve())
        figures = measure(load, cores, keep=args.keep, profiler=profiler)
    except BenchError as exc:
        raise SystemExit(f"bench_call_setup: {exc}") from exc
    print(table_header())
    print(table_row(figures))
    for line in notes(figures):
        print(line)
    if profiler is not None:
        print()
        print(profiler.report())


if __name__ == "__main__":
    main()
