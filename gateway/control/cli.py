"""The ``edgegw`` command line: run the gateway, check a config, and inspect a running gateway.

``run`` and ``config check`` work on a config file; ``status``, ``calls`` and ``cdr`` ask the
running gateway over its control socket (:mod:`gateway.control.client`). Listing commands print
rich tables for people, or exactly one JSON document with ``--json`` for scripts.

Exit codes (the outside contract): 0 ok, 1 failed, 2 usage error, 3 gateway not running.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.table import Table

from gateway import __version__
from gateway.config import Config, ConfigError, default_config, load_config
from gateway.control.client import ControlClient, ControlError, GatewayNotRunning

__all__ = [
    "CALL_COLUMNS",
    "CDR_COLUMNS",
    "DEFAULT_CDR_LIMIT",
    "DEFAULT_SOCKET",
    "EXIT_FAILED",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "EXIT_USAGE",
    "SOCKET_ENV",
    "cli",
    "format_cell",
    "main",
    "parse_time",
    "resolve_socket",
    "rows_table",
    "status_table",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3

SOCKET_ENV = "EDGEGW_SOCKET"
DEFAULT_SOCKET = Path("var/control.sock")
DEFAULT_CDR_LIMIT = 100

CALL_COLUMNS = ("id", "caller", "callee", "route", "trunk", "state", "start", "duration")
CDR_COLUMNS = (
    "id",
    "caller",
    "callee",
    "route",
    "trunk",
    "start",
    "answer",
    "end",
    "duration",
    "disposition",
    "end_reason",
)

# Keys whose numbers are wall-clock epoch seconds, shown as local ISO times in tables.
_TIME_KEYS = frozenset({"start", "answer", "end", "started", "now", "time", "since"})
# Wide enough that a CDR row stays on one line when piped into grep or a file.
_PIPE_WIDTH = 240

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class _GlobalOptions:
    socket: Path | None
    config: Path | None


def _fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    click.echo(f"edgegw: {message}", err=True)
    raise click.exceptions.Exit(code)


def _check_readable(path: Path) -> str | None:
    """Return "FILE: cannot read: REASON" when the file cannot be read, else None."""
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        return f"{path}: cannot read: {exc.strerror or exc}"
    return None


def _load_config(path: Path) -> Config:
    unreadable = _check_readable(path)
    if unreadable is not None:
        _fail(f"invalid config: {unreadable}")
    try:
        return load_config(path)
    except ConfigError as exc:
        _fail(f"invalid config: {exc}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="edgegw", message="%(prog)s %(version)s")
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Control socket of the gateway [default: ${SOCKET_ENV} or ./{DEFAULT_SOCKET}].",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file of the gateway (for run, and to find its control socket).",
)
@click.pass_context
def cli(ctx: click.Context, socket_path: Path | None, config_path: Path | None) -> None:
    """edgegw: the edge media gateway and its field tools."""
    ctx.obj = _GlobalOptions(socket=socket_path, config=config_path)


@cli.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config file [default: the embedded loopback demo].",
)
@click.pass_obj
def run(options: _GlobalOptions, config_path: Path | None) -> None:
    """Run the gateway in the foreground."""
    path = config_path or options.config
    config = _load_config(path) if path is not None else default_config()
    # The service pulls in the whole SIP and media stack; only `run` needs it.
    from gateway import service

    raise click.exceptions.Exit(service.run(config))


@cli.group("config")
def config_group() -> None:
    """Work with config files."""


@config_group.command("check")
@click.argument("file", type=click.Path(path_type=Path))
def config_check(file: Path) -> None:
    """Validate FILE: exit 0 when it is a valid config, 1 with the reason otherwise."""
    problem = _check_readable(file)
    if problem is None:
        try:
            load_config(file)
        except ConfigError as exc:
            problem = str(exc)
    if problem is not None:
        click.echo(problem, err=True)
        raise click.exceptions.Exit(EXIT_FAILED)
    click.echo(f"{file}: ok")


def _socket_options(command: _F) -> _F:
    """Add the options every command that talks to the gateway takes."""
    command = click.option(
        "--json", "as_json", is_flag=True, help="Print the result as one JSON document."
    )(command)
    command = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Take the control socket from this config file.",
    )(command)
    command = click.option(
        "--socket",
        "socket_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"Control socket of the gateway [default: ${SOCKET_ENV} or ./{DEFAULT_SOCKET}].",
    )(command)
    return command


def resolve_socket(
    options: _GlobalOptions, socket_path: Path | None, config_path: Path | None
) -> Path:
    """Pick the control socket: --socket, then --config, then $EDGEGW_SOCKET, then ./var."""
    explicit = socket_path or options.socket
    if explicit is not None:
        return explicit
    config = config_path or options.config
    if config is not None:
        return _load_config(config).control_socket_path
    from_env = os.environ.get(SOCKET_ENV)
    if from_env:
        return Path(from_env)
    return DEFAULT_SOCKET


def _call(path: Path, cmd: str, **args: Any) -> Any:
    try:
        return ControlClient(path).call(cmd, **args)
    except GatewayNotRunning:
        _fail(
            f"gateway not running (no control socket at {path}): start it with `edgegw run`",
            EXIT_NOT_RUNNING,
        )
    except ControlError as exc:
        _fail(f"{cmd}: {exc}")


def _print_json(result: Any) -> None:
    click.echo(json.dumps(result, indent=2, ensure_ascii=False))


def _console() -> Console:
    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, width=_PIPE_WIDTH)
    return console


def _is_time_key(key: str) -> bool:
    return key in _TIME_KEYS or key.endswith("_at")


def _format_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def format_cell(key: str, value: Any) -> str:
    """Render one value for a table: times as local ISO, durations in seconds, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if _is_time_key(key) and math.isfinite(value):
            return _format_time(float(value))
        if key == "duration" or key.endswith("_seconds"):
            return f"{float(value):.1f}"
        return str(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _header(key: str) -> str:
    return "duration (s)" if key == "duration" else key.replace("_", " ")


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def status_table(status: Mapping[str, Any]) -> Table:
    """A key/value table of the gateway's status; nested sections become dotted keys."""
    table = Table(title="edgegw status", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for name, value in _flatten(status):
        table.add_row(name, format_cell(name.rsplit(".", 1)[-1], value))
    return table


def rows_table(title: str, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Table:
    """A table of ``rows`` showing ``columns``; a key a row lacks is shown as '-'."""
    table = Table(title=title, caption=f"{len(rows)} shown")
    for column in columns:
        table.add_column(_header(column), no_wrap=column in _TIME_KEYS)
    for row in rows:
        table.add_row(*(format_cell(column, row.get(column)) for column in columns))
    return table


def _with_live_duration(call: Mapping[str, Any], now: float) -> Mapping[str, Any]:
    # A call in progress may not carry a duration yet: show how long it has run so far.
    start = call.get("start")
    if call.get("duration") is None and isinstance(start, int | float):
        return {**call, "duration": max(0.0, now - float(start))}
    return call


def _all_dicts(result: Any) -> bool:
    return isinstance(result, list) and all(isinstance(row, dict) for row in result)


@cli.command()
@_socket_options
@click.pass_obj
def status(
    options: _GlobalOptions, socket_path: Path | None, config_path: Path | None, as_json: bool
) -> None:
    """Show the running gateway's status."""
    result = _call(resolve_socket(options, socket_path, config_path), "status")
    if as_json or not isinstance(result, dict):
        _print_json(result)
        return
    _console().print(status_table(result))


@cli.command()
@_socket_options
@click.pass_obj
def calls(
    options: _GlobalOptions, socket_path: Path | None, config_path: Path | None, as_json: bool
) -> None:
    """List the calls in progress."""
    result = _call(resolve_socket(options, socket_path, config_path), "calls")
    if as_json or not _all_dicts(result):
        _print_json(result)
        return
    now = time.time()
    rows = [_with_live_duration(call, now) for call in result]
    _console().print(rows_table("active calls", CALL_COLUMNS, rows))


def parse_time(text: str) -> float:
    """Epoch seconds from epoch seconds or ISO 8601 text (local time when no offset is given).

    Raises ValueError naming the accepted forms.
    """
    try:
        epoch = float(text)
    except ValueError:
        try:
            epoch = datetime.fromisoformat(text.strip()).timestamp()
        except ValueError:
            raise ValueError(
                f"{text!r} is neither epoch seconds nor an ISO 8601 time (e.g. 2024-05-01T12:00:00)"
            ) from None
    if not math.isfinite(epoch):
        raise ValueError(f"{text!r} is not a finite time")
    return epoch


def _since_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@cli.command()
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=DEFAULT_CDR_LIMIT,
    show_default=True,
    help="Most records to show.",
)
@click.option(
    "--since",
    metavar="ISO-or-epoch",
    callback=_since_option,
    help="Only calls that started at or after this time.",
)
@_socket_options
@click.pass_obj
def cdr(
    options: _GlobalOptions,
    limit: int,
    since: float | None,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """List call detail records."""
    path = resolve_socket(options, socket_path, config_path)
    result = _call(path, "cdr", limit=limit, since=since)
    if as_json or not _all_dicts(result):
        _print_json(result)
        return
    _console().print(rows_table("call detail records", CDR_COLUMNS, result))


def main() -> None:
    """Entry point of the ``edgegw`` console script."""
    cli.main(prog_name="edgegw")


if __name__ == "__main__":
    main()
