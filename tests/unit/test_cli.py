"""The `edgegw` command line: exit codes, --json output and tables against a test control server."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from click.testing import CliRunner, Result

import gateway as gateway_package
from gateway import __version__
from gateway.config import Config, default_config, parse_config
from gateway.control.cdr_query import CdrQuery, fetch_cdrs
from gateway.control.cli import (
    CALL_COLUMNS,
    CDR_COLUMNS,
    DEFAULT_CDR_LIMIT,
    DEFAULT_EXPORT_PAGE,
    DEFAULT_SOCKET,
    EXIT_FAILED,
    EXIT_NOT_RUNNING,
    EXIT_USAGE,
    cli,
    format_cell,
)
from gateway.control.server import ControlServer
from gateway.store.model import Cdr
from gateway.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[2]

START = 1_714_564_800.0  # 2024-05-01T12:00:00Z
CALLS = [
    {
        "id": "call-1",
        "caller": "1001",
        "callee": "+8613900139002",
        "route": "trunk",
        "trunk": "demo-carrier",
        "state": "answered",
        "start": START,
        "duration": 62.5,
    },
    {"id": "call-2", "caller": "1002", "callee": "1001", "start": START},
]
CDRS = [
    {
        "id": "cdr-1",
        "caller": "1001",
        "callee": "1002",
        "route": "app",
        "trunk": None,
        "start": START,
        "answer": START + 2,
        "end": START + 32,
        "duration": 30.0,
        "disposition": "answered",
        "end_reason": "caller-bye",
        "sip_status": 200,
    }
]
STATUS = {
    "version": "0.1.0",
    "started": START,
    "active_calls": 2,
    "sip": {"udp": "127.0.0.1:5060", "tcp": "127.0.0.1:5060"},
}


def local_iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


class FakeGateway:
    """Control handlers with canned answers that remember what they were asked."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []

    async def status(self, args: dict[str, Any]) -> Any:
        self.requests.append(("status", args))
        return STATUS

    async def calls(self, args: dict[str, Any]) -> Any:
        self.requests.append(("calls", args))
        return CALLS

    async def cdr(self, args: dict[str, Any]) -> Any:
        self.requests.append(("cdr", args))
        if args.get("limit") == 13:
            raise RuntimeError("store unavailable")
        return CDRS


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "control.sock"


@pytest.fixture
async def gateway(nursery: trio.Nursery, sock_path: Path) -> AsyncIterator[FakeGateway]:
    fake = FakeGateway()
    handlers = {"status": fake.status, "calls": fake.calls, "cdr": fake.cdr}
    await nursery.start(ControlServer(sock_path, handlers).serve)
    yield fake


def invoke(args: Sequence[str], env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, prog_name="edgegw")


async def ainvoke(args: Sequence[str], env: dict[str, str] | None = None) -> Result:
    # The CLI is blocking; the test's control server needs the Trio loop free meanwhile.
    return await trio.to_thread.run_sync(partial(invoke, args, env))


# --- no gateway needed ---------------------------------------------------------------------


def test_version() -> None:
    result = invoke(["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"edgegw {__version__}\n"


@pytest.mark.parametrize(
    "args",
    [
        ["no-such-command"],
        ["status", "--bogus"],
        ["cdr", "--limit", "zero"],
        ["cdr", "--limit", "0"],
        ["cdr", "--since", "yesterday-ish"],
        ["config", "check"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = invoke(args)
    assert result.exit_code == EXIT_USAGE == 2, result.output
    assert "Usage:" in result.stderr


def test_since_parse_error_names_the_formats() -> None:
    result = invoke(["cdr", "--since", "yesterday-ish"])
    assert "neither epoch seconds nor an ISO 8601 time" in result.stderr


@pytest.mark.parametrize("command", ["status", "calls", "cdr"])
def test_not_running_exits_3(command: str, tmp_path: Path) -> None:
    path = tmp_path / "absent.sock"
    result = invoke([command, "--socket", str(path)])
    assert result.exit_code == EXIT_NOT_RUNNING == 3
    assert result.stderr == (
        f"edgegw: gateway not running (no control socket at {path}): start it with `edgegw run`\n"
    )
    assert result.stdout == ""


def test_socket_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "from-env.sock"
    result = invoke(["status"], env={"EDGEGW_SOCKET": str(path)})
    assert result.exit_code == EXIT_NOT_RUNNING
    assert str(path) in result.stderr


def test_default_socket_is_under_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(["status"], env={"EDGEGW_SOCKET": ""})
    assert result.exit_code == EXIT_NOT_RUNNING
    assert f"no control socket at {DEFAULT_SOCKET}" in result.stderr
    assert Path("var/control.sock") == DEFAULT_SOCKET


def test_socket_option_beats_environment(tmp_path: Path) -> None:
    result = invoke(
        ["--socket", str(tmp_path / "global.sock"), "calls"],
        env={"EDGEGW_SOCKET": str(tmp_path / "env.sock")},
    )
    assert "global.sock" in result.stderr
    result = invoke(
        ["--socket", str(tmp_path / "global.sock"), "calls", "--socket", str(tmp_path / "cmd.sock")]
    )
    assert "cmd.sock" in result.stderr


def test_format_cell() -> None:
    assert format_cell("start", START) == local_iso(START)
    assert format_cell("answered_at", START) == local_iso(START)
    assert format_cell("duration", 2) == "2.0"
    assert format_cell("trunk", None) == "-"
    assert format_cell("srtp", True) == "yes"
    assert format_cell("count", 7) == "7"
    assert format_cell("codecs", ["PCMA", "PCMU"]) == '["PCMA", "PCMU"]'
    assert format_cell("start", float("nan")) == "nan"


# --- against a running control server ------------------------------------------------------


async def test_status_json(gateway: FakeGateway, sock_path: Path) -> None:
    result = await ainvoke(["--socket", str(sock_path), "status", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == STATUS
    assert gateway.requests == [("status", {})]


async def test_status_table(gateway: FakeGateway, sock_path: Path) -> None:
    result = await ainvoke(["status", "--socket", str(sock_path)])
    assert result.exit_code == 0, result.output
    assert "active_calls" in result.stdout
    assert "sip.udp" in result.stdout and "127.0.0.1:5060" in result.stdout
    assert local_iso(START) in result.stdout


async def test_calls_json_and_table(gateway: FakeGateway, sock_path: Path) -> None:
    result = await ainvoke(["calls", "--json", "--socket", str(sock_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == CALLS  # raw epoch floats in JSON

    result = await ainvoke(["calls", "--socket", str(sock_path)])
    assert result.exit_code == 0, result.output
    header = next(line for line in result.stdout.splitlines() if "caller" in line)
    assert [word for word in header.replace("┃", " ").split()] == [
        "id",
        "caller",
        "callee",
        "route",
        "trunk",
        "state",
        "start",
        "duration",
        "(s)",
    ]
    assert len(CALL_COLUMNS) == 8
    assert "call-1" in result.stdout and "demo-carrier" in result.stdout
    assert "62.5" in result.stdout
    assert local_iso(START) in result.stdout
    row2 = next(line for line in result.stdout.splitlines() if "call-2" in line)
    assert " - " in row2  # missing keys are shown, not fatal


async def test_cdr_args_and_output(gateway: FakeGateway, sock_path: Path) -> None:
    result = await ainvoke(["cdr", "--json", "--socket", str(sock_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == CDRS
    assert gateway.requests[-1] == ("cdr", {"limit": DEFAULT_CDR_LIMIT, "since": None})

    result = await ainvoke(
        ["cdr", "--limit", "5", "--since", "2024-05-01T12:00:00+00:00", "--socket", str(sock_path)]
    )
    assert result.exit_code == 0, result.output
    assert gateway.requests[-1] == ("cdr", {"limit": 5, "since": START})
    for value in ("cdr-1", "caller-bye", "answered", "30.0", local_iso(START + 32)):
        assert value in result.stdout
    assert "end reason" in result.stdout
    assert len(CDR_COLUMNS) == 11

    result = await ainvoke(["cdr", "--since", "1714564800.5", "--socket", str(sock_path)])
    assert gateway.requests[-1] == ("cdr", {"limit": DEFAULT_CDR_LIMIT, "since": START + 0.5})


async def test_since_naive_iso_is_local_time(gateway: FakeGateway, sock_path: Path) -> None:
    await ainvoke(["cdr", "--since", "2024-05-01T12:00:00", "--socket", str(sock_path)])
    assert gateway.requests[-1][1]["since"] == datetime(2024, 5, 1, 12, 0, 0).timestamp()


async def test_gateway_error_exits_1(gateway: FakeGateway, sock_path: Path) -> None:
    result = await ainvoke(["cdr", "--limit", "13", "--json", "--socket", str(sock_path)])
    assert result.exit_code == EXIT_FAILED == 1
    assert "edgegw: cdr: store unavailable" in result.stderr


async def test_unexpected_result_shape_falls_back_to_json(
    nursery: trio.Nursery, sock_path: Path
) -> None:
    async def odd(args: dict[str, Any]) -> Any:
        return ["not", "rows"]

    await nursery.start(ControlServer(sock_path, {"calls": odd, "status": odd}).serve)
    for command in ("calls", "status"):
        result = await ainvoke([command, "--socket", str(sock_path)])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == ["not", "rows"]


# --- cdr export ------------------------------------------------------------------------------

EXPORTED = 60  # CDRs in the export tests' store: call n started at START + 60 n


def rated_cdr(n: int) -> Cdr:
    return Cdr(
        id=f"x{n:03d}",
        caller="1001",
        callee="+8613800138000",
        route="trunk",
        trunk="demo-carrier",
        start=START + 60 * n,
        answer=START + 60 * n + 2,
        end=START + 60 * n + 32,
        duration=30.0,
        disposition="answered",
        end_reason="caller-bye",
        sip_status=200,
        caller_call_id=f"a{n}",
        callee_call_id=f"b{n}",
        payer="partner:demo" if n % 2 else "subscriber:1001",
        partner="demo" if n % 2 else None,
        rate_per_minute="0.10",
        billing_increment=[60, 60],
        billable_seconds=60,
        cost="0.10",
        trunks_tried=["demo-carrier"],
    )


@pytest.fixture
async def store_gateway(
    nursery: trio.Nursery, sock_path: Path, tmp_path: Path
) -> AsyncIterator[list[dict[str, Any]]]:
    """A control server answering `cdr` from a real store, as the gateway does; its requests."""
    requests: list[dict[str, Any]] = []
    async with SqliteStore(tmp_path / "state.db") as store:
        for n in range(EXPORTED):
            await store.write_cdr(rated_cdr(n))

        async def cdr(args: dict[str, Any]) -> Any:
            requests.append(args)
            if args.get("offset") == 13:  # the 14th page of one CDR each
                raise RuntimeError("store unavailable")
            cdrs = await fetch_cdrs(store, CdrQuery.from_args(args))
            return [msgspec.to_builtins(c) for c in cdrs]

        await nursery.start(ControlServer(sock_path, {"cdr": cdr}).serve)
        yield requests


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


async def test_export_csv_pages_through_the_window(
    store_gateway: list[dict[str, Any]], sock_path: Path
) -> None:
    result = await ainvoke(
        ["cdr", "export", "--since", str(START), "--page-size", "7", "--socket", str(sock_path)]
    )
    assert result.exit_code == 0, result.output
    rows = csv_rows(result.stdout)
    assert [row["id"] for row in rows] == [f"x{n:03d}" for n in range(EXPORTED)]  # oldest first
    assert (rows[1]["payer"], rows[1]["cost"], rows[1]["billing_increment"]) == (
        "partner:demo",
        "0.10",
        "60/60",
    )
    assert [r["offset"] for r in store_gateway] == list(range(0, EXPORTED + 1, 7))
    assert store_gateway[0] == {
        "since": START,
        "until": None,
        "partner": None,
        "limit": 7,
        "offset": 0,
    }
    assert result.stderr == ""


async def test_listing_json_carries_the_money(
    store_gateway: list[dict[str, Any]], sock_path: Path
) -> None:
    result = await ainvoke(["cdr", "--json", "--limit", "2", "--socket", str(sock_path)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        msgspec.to_builtins(rated_cdr(n)) for n in (EXPORTED - 1, EXPORTED - 2)
    ]
    assert store_gateway == [{"limit": 2, "since": None}]


async def test_export_default_page_takes_more_than_the_listing(
    store_gateway: list[dict[str, Any]], sock_path: Path
) -> None:
    assert DEFAULT_EXPORT_PAGE > DEFAULT_CDR_LIMIT
    result = await ainvoke(["cdr", "export", "--since", "0", "--socket", str(sock_path)])
    assert result.exit_code == 0, result.output
    assert len(csv_rows(result.stdout)) == EXPORTED
    assert [r["limit"] for r in store_gateway] == [DEFAULT_EXPORT_PAGE]


async def test_export_json_window_and_partner_to_a_file(
    store_gateway: list[dict[str, Any]], sock_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "cdrs.json"
    out.parent.mkdir()
    since, until = START + 60 * 10, "2024-05-01T12:20:00+00:00"  # START + 60 * 20
    result = await ainvoke(
        [
            *("--socket", str(sock_path), "cdr", "export", "--since", str(since)),
            *("--until", until, "--partner", "demo", "--format", "JSON"),
            *("--output", str(out), "--page-size", "2"),
        ]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == f"{out}: 5 CDRs\n"
    exported = json.loads(out.read_text(encoding="utf-8"))
    assert [c["id"] for c in exported] == ["x011", "x013", "x015", "x017", "x019"]
    assert exported[0]["rate_per_minute"] == "0.10" and exported[0]["trunks_tried"] == [
        "demo-carrier"
    ]
    assert store_gateway[0]["until"] == START + 60 * 20
    assert os.listdir(out.parent) == ["cdrs.json"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


async def test_export_replaces_a_file_only_when_complete(
    store_gateway: list[dict[str, Any]], sock_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cdrs.csv"
    out.write_text("previous export\n")
    # The gateway fails the 14th page: nothing is written and the old file stays.
    result = await ainvoke(
        [
            *("cdr", "export", "--since", "0", "--page-size", "1"),
            *("--output", str(out), "--socket", str(sock_path)),
        ]
    )
    assert result.exit_code == EXIT_FAILED, result.output
    assert result.stderr == "edgegw: cdr: store unavailable\n"
    assert out.read_text() == "previous export\n"
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]

    result = await ainvoke(
        ["cdr", "export", "--since", "0", "--output", str(out), "--socket", str(sock_path)]
    )
    assert result.exit_code == 0, result.output
    assert len(csv_rows(out.read_text(encoding="utf-8"))) == EXPORTED


async def test_export_to_a_missing_directory_fails(
    store_gateway: list[dict[str, Any]], sock_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "no-such-dir" / "cdrs.csv"
    result = await ainvoke(
        ["cdr", "export", "--since", "0", "--output", str(out), "--socket", str(sock_path)]
    )
    assert result.exit_code == EXIT_FAILED
    assert result.stderr == f"edgegw: cannot write {out}: No such file or directory\n"


async def test_export_refuses_a_gateway_that_ignores_the_window(
    nursery: trio.Nursery, sock_path: Path
) -> None:
    # What a gateway that knows only the listing (no until, partner or offset) would answer.
    old = [msgspec.to_builtins(rated_cdr(n)) for n in (3, 2)]

    async def listing_only(args: dict[str, Any]) -> Any:
        return old

    await nursery.start(ControlServer(sock_path, {"cdr": listing_only}).serve)
    export = ["cdr", "export", "--socket", str(sock_path), "--since", str(START)]
    result = await ainvoke([*export, "--page-size", "2"])
    assert result.exit_code == EXIT_FAILED
    assert (
        result.stderr
        == "edgegw: cdr: the gateway repeated a page at offset 2: it does not page CDRs\n"
    )
    result = await ainvoke([*export, "--until", str(START + 150)])
    assert result.exit_code == EXIT_FAILED
    assert (
        result.stderr
        == "edgegw: cdr: the gateway answered CDR x003 from outside the asked window\n"
    )
    result = await ainvoke([*export, "--partner", "other"])
    assert result.exit_code == EXIT_FAILED
    assert "outside the asked window" in result.stderr


async def test_export_refuses_an_answer_that_is_not_cdrs(
    gateway: FakeGateway, sock_path: Path
) -> None:
    result = await ainvoke(["cdr", "export", "--since", "0", "--socket", str(sock_path)])
    assert result.exit_code == EXIT_FAILED
    assert "edgegw: cdr: the gateway answered the page at offset 0 with no CDR list" in (
        result.stderr
    )
    assert "caller_call_id" in result.stderr  # the field the canned rows lack


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cdr", "export"], "Missing option '--since'"),
        (["cdr", "export", "--since", "yesterday-ish"], "neither epoch seconds nor an ISO 8601"),
        (["cdr", "export", "--since", "10", "--until", "soon"], "Invalid value for '--until'"),
        (["cdr", "export", "--since", "10", "--until", "10"], "must be later than --since"),
        (
            ["cdr", "export", "--since", "10", "--format", "xml"],
            "'xml' is not one of 'csv', 'json'",
        ),
        (["cdr", "export", "--since", "10", "--partner", ""], "'--partner': must not be empty"),
        (["cdr", "export", "--since", "10", "--page-size", "0"], "Invalid value for '--page-size'"),
        (
            ["cdr", "--since", "10", "export", "--since", "10"],
            "the listing's --since does not apply to `edgegw cdr export`",
        ),
        (["cdr", "--json", "--limit", "3", "export"], "the listing's --limit, --json do not apply"),
        (["cdr", "exprot"], "No such command 'exprot'"),
    ],
)
def test_export_usage_errors_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = invoke([*args, "--socket", str(tmp_path / "absent.sock")])
    assert result.exit_code == EXIT_USAGE, result.output
    assert message in result.stderr


def test_export_not_running_exits_3(tmp_path: Path) -> None:
    path = tmp_path / "absent.sock"
    for args in (
        ["cdr", "export", "--since", "0", "--socket", str(path)],
        ["cdr", "--socket", str(path), "export", "--since", "0"],
    ):
        result = invoke([*args, "--output", str(tmp_path / "never.csv")])
        assert result.exit_code == EXIT_NOT_RUNNING, result.output
        assert result.stderr == (
            f"edgegw: gateway not running (no control socket at {path}): "
            "start it with `edgegw run`\n"
        )
        assert not (tmp_path / "never.csv").exists()


# --- config files ----------------------------------------------------------------------------

BAD_CONFIG = '[media]\nport_min = "x"\n'
BAD_CONFIG_ERROR = "media.port_min: expected an int, got str"


@pytest.fixture
def good_config(tmp_path: Path) -> Path:
    path = tmp_path / "edgegw.toml"
    path.write_text(
        f'[general]\nvar_dir = "{tmp_path / "state"}"\n\n'
        '[[trunks]]\nname = "carrier-a"\nhost = "127.0.0.1"\nport = 5080\n'
    )
    return path


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_CONFIG)
    return path


def test_config_check_valid(good_config: Path) -> None:
    result = invoke(["config", "check", str(good_config)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{good_config}: ok\n"


def test_config_check_invalid(bad_config: Path) -> None:
    result = invoke(["config", "check", str(bad_config)])
    assert result.exit_code == EXIT_FAILED
    assert result.stderr == f"{bad_config}: {BAD_CONFIG_ERROR}\n"
    assert result.stdout == ""


def test_config_check_unreadable(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    result = invoke(["config", "check", str(missing)])
    assert result.exit_code == EXIT_FAILED
    assert result.stderr == f"{missing}: cannot read: No such file or directory\n"
    result = invoke(["config", "check", str(tmp_path)])
    assert result.exit_code == EXIT_FAILED
    assert result.stderr == f"{tmp_path}: cannot read: Is a directory\n"


def test_config_get_prints_values_with_defaults_filled_in(good_config: Path) -> None:
    for key, printed in (
        ("network.ssh_port", "22"),  # not in the file: the default
        ("trunks.0.port", "5080"),
        ("trunks.0.name", "carrier-a"),
        ("network.firewall", "true"),
    ):
        result = invoke(["config", "get", key, str(good_config)])
        assert (result.exit_code, result.stdout) == (0, printed + "\n"), (key, result.output)
    result = invoke(["config", "get", "trunks.0.networks", str(good_config)])
    assert json.loads(result.stdout) == []
    result = invoke(["config", "get", "network.ssh_port"])  # the embedded default
    assert result.stdout == "22\n"


def test_config_get_refuses_unknown_keys_and_bad_files(good_config: Path, bad_config: Path) -> None:
    for key, missing in (
        ("network.no_such", "no_such"),
        ("trunks.7.port", "7"),
        ("trunks.x", "x"),
        ("network.ssh_port.more", "more"),
    ):
        result = invoke(["config", "get", key, str(good_config)])
        assert result.exit_code == EXIT_FAILED
        assert result.stderr == f"edgegw: config has no key {key!r} (no {missing!r} there)\n"
        assert result.stdout == ""
    result = invoke(["config", "get", "network.ssh_port", str(bad_config)])
    assert result.exit_code == EXIT_FAILED
    assert result.stderr.startswith("edgegw: invalid config: "), result.stderr


async def test_config_default_writes_a_file_config_check_accepts(tmp_path: Path) -> None:
    path = tmp_path / "edgegw.toml"
    done = await run_edgegw("config", "default", "-o", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == f"{path}: written; start with `edgegw run --config {path}`\n"
    assert parse_config(path.read_text(), source=str(path)) == default_config()
    assert (await run_edgegw("config", "check", str(path))).returncode == 0
    printed = await run_edgegw("config", "default")
    assert printed.stdout.decode() == path.read_text()
    # An existing file is never overwritten.
    path.write_text("# the operator's\n")
    again = await run_edgegw("config", "default", "-o", str(path))
    assert again.returncode == EXIT_FAILED
    assert again.stderr.decode() == f"{path}: File exists: nothing written\n"
    assert path.read_text() == "# the operator's\n"


class FakeService:
    """Stands in for gateway.service so `run` is tested without starting a gateway."""

    def __init__(self, code: int) -> None:
        self.code = code
        self.configs: list[Config] = []
        self.paths: list[Path | None] = []

    def run(self, config: Config, config_path: Path | None = None) -> int:
        self.configs.append(config)
        self.paths.append(config_path)
        return self.code


@pytest.fixture
def service(monkeypatch: pytest.MonkeyPatch) -> FakeService:
    fake = FakeService(code=0)
    monkeypatch.setitem(sys.modules, "gateway.service", fake)
    monkeypatch.setattr(gateway_package, "service", fake, raising=False)
    return fake


def test_run_without_config_uses_embedded_default(service: FakeService) -> None:
    result = invoke(["run"])
    assert result.exit_code == 0, result.output
    assert service.configs == [default_config()]


def test_run_with_config(service: FakeService, good_config: Path) -> None:
    service.code = 1
    result = invoke(["run", "--config", str(good_config)])
    assert result.exit_code == 1  # the service's exit code is the process's
    assert [trunk.name for trunk in service.configs[0].trunks] == ["carrier-a"]
    result = invoke(["--config", str(good_config), "run"])
    assert [trunk.name for trunk in service.configs[1].trunks] == ["carrier-a"]


def test_run_with_invalid_config(service: FakeService, bad_config: Path, tmp_path: Path) -> None:
    result = invoke(["run", "--config", str(bad_config)])
    assert result.exit_code == EXIT_FAILED
    assert result.stderr == f"edgegw: invalid config: {bad_config}: {BAD_CONFIG_ERROR}\n"
    result = invoke(["run", "--config", str(tmp_path / "nope.toml")])
    assert result.exit_code == EXIT_FAILED
    assert "edgegw: invalid config: " in result.stderr and "cannot read" in result.stderr
    assert service.configs == []


def test_socket_from_config(good_config: Path, tmp_path: Path) -> None:
    result = invoke(["--config", str(good_config), "status"])
    assert result.exit_code == EXIT_NOT_RUNNING
    assert f"no control socket at {tmp_path / 'state' / 'control.sock'}" in result.stderr

    explicit = tmp_path / "explicit.toml"
    explicit.write_text(f'[control]\nsocket = "{tmp_path / "ctl.sock"}"\n')
    # --config on the command beats $EDGEGW_SOCKET; --socket beats --config.
    result = invoke(["calls", "--config", str(explicit)], env={"EDGEGW_SOCKET": "/nowhere"})
    assert f"no control socket at {tmp_path / 'ctl.sock'}" in result.stderr
    result = invoke(["calls", "--config", str(explicit), "--socket", str(tmp_path / "s.sock")])
    assert f"no control socket at {tmp_path / 's.sock'}" in result.stderr


def test_socket_from_invalid_config(bad_config: Path) -> None:
    result = invoke(["cdr", "--config", str(bad_config)])
    assert result.exit_code == EXIT_FAILED
    assert result.stderr == f"edgegw: invalid config: {bad_config}: {BAD_CONFIG_ERROR}\n"


async def test_config_names_a_live_socket(
    gateway: FakeGateway, sock_path: Path, tmp_path: Path
) -> None:
    config = tmp_path / "live.toml"
    config.write_text(f'[control]\nsocket = "{sock_path}"\n')
    result = await ainvoke(["--config", str(config), "status", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == STATUS


# --- as a real process ---------------------------------------------------------------------


async def run_edgegw(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [sys.executable, "-m", "gateway.control.cli", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def test_process_json_and_exit_codes(gateway: FakeGateway, sock_path: Path) -> None:
    done = await run_edgegw("calls", "--json", env={"EDGEGW_SOCKET": str(sock_path)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == CALLS

    done = await run_edgegw("status", "--socket", str(sock_path.with_name("gone.sock")))
    assert done.returncode == 3
    assert b"gateway not running" in done.stderr

    done = await run_edgegw("cdr", "--limit", "-1", "--socket", str(sock_path))
    assert done.returncode == 2

    done = await run_edgegw("--version")
    assert done.returncode == 0
    assert done.stdout.decode() == f"edgegw {__version__}\n"


async def test_process_config_check(good_config: Path, bad_config: Path) -> None:
    done = await run_edgegw("config", "check", str(good_config))
    assert (done.returncode, done.stdout) == (0, f"{good_config}: ok\n".encode())
    done = await run_edgegw("config", "check", str(bad_config))
    assert done.returncode == 1
    assert done.stderr.decode() == f"{bad_config}: {BAD_CONFIG_ERROR}\n"


async def test_listing_commands_do_not_import_the_service() -> None:
    # `status` and friends must not pay for importing the whole gateway stack.
    done = await trio.run_process(
        [
            sys.executable,
            "-c",
            "import sys, gateway.control.cli; print('gateway.service' in sys.modules)",
        ],
        cwd=REPO,
        capture_stdout=True,
    )
    assert done.stdout == b"False\n"
