"""The ``edgegw`` command line: run the gateway, check a config, and inspect a running gateway.

``run`` and ``config check`` work on a config file; ``status``, ``calls``, ``cdr`` and
``cdr export`` ask the running gateway over its control socket (:mod:`gateway.control.client`).
Listing commands print rich tables for people, or exactly one JSON document with ``--json`` for
scripts. ``cdr export`` pages through every CDR of a time window and writes them as CSV or JSON
(:mod:`gateway.store.cdr_export`), to stdout or atomically to a file.

Exit codes (the outside contract): 0 ok, 1 failed, 2 usage error, 3 gateway not running.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import msgspec
from click.core import ParameterSource
from rich.console import Console
from rich.table import Table

from gateway import __version__
from gateway.config import Config, ConfigError, default_config, load_config
from gateway.control.client import ControlClient, ControlError, GatewayNotRunning
from gateway.store.cdr_export import cdrs_to_csv, cdrs_to_json
from gateway.store.model import Cdr

__all__ = [
    "CALL_COLUMNS",
    "CDR_COLUMNS",
    "DEFAULT_CDR_LIMIT",
    "DEFAULT_EXPORT_PAGE",
    "DEFAULT_SOCKET",
    "EXIT_FAILED",
    "EXIT_NOT_RUNNING",
    "EXIT_OK",
    "EXIT_USAGE",
    "SOCKET_ENV",
    "cli",
    "export_window",
    "format_cell",
    "main",
    "parse_time",
    "resolve_socket",
    "rows_table",
    "status_table",
    "write_atomically",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3

SOCKET_ENV = "EDGEGW_SOCKET"
DEFAULT_SOCKET = Path("var/control.sock")
DEFAULT_CDR_LIMIT = 100
# CDRs per control request of an export: a few hundred KiB of JSON, well inside one response.
DEFAULT_EXPORT_PAGE = 500

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


def _time_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


_LISTING_ONLY = ("limit", "since", "as_json")


@cli.group(invoke_without_command=True)
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
    callback=_time_option,
    help="Only calls that started at or after this time.",
)
@_socket_options
@click.pass_context
def cdr(
    ctx: click.Context,
    limit: int,
    since: float | None,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """List call detail records, newest first; `edgegw cdr export` writes a window of them."""
    options: _GlobalOptions = ctx.obj
    if ctx.invoked_subcommand is not None:
        # Only the socket choice carries over to a subcommand; the listing's own options
        # before it would be silently ignored, so they are refused.
        misplaced = [
            f"--{name.removeprefix('as_')}"
            for name in _LISTING_ONLY
            if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT
        ]
        if misplaced:
            raise click.UsageError(
                f"the listing's {', '.join(misplaced)} "
                f"{'does' if len(misplaced) == 1 else 'do'} not apply to "
                f"`edgegw cdr {ctx.invoked_subcommand}`: give its options after its name",
                ctx,
            )
        ctx.obj = replace(
            options, socket=socket_path or options.socket, config=config_path or options.config
        )
        return
    path = resolve_socket(options, socket_path, config_path)
    result = _call(path, "cdr", limit=limit, since=since)
    if as_json or not _all_dicts(result):
        _print_json(result)
        return
    _console().print(rows_table("call detail records", CDR_COLUMNS, result))


def _page_of_cdrs(result: Any, offset: int) -> list[Cdr]:
    try:
        return msgspec.convert(result, list[Cdr])
    except msgspec.ValidationError as exc:
        _fail(f"cdr: the gateway answered the page at offset {offset} with no CDR list: {exc}")


def _outside(cdr: Cdr, since: float, until: float | None, partner: str | None) -> bool:
    return (
        cdr.start < since
        or (until is not None and cdr.start >= until)
        or (partner is not None and cdr.partner != partner)
    )


def export_window(
    path: Path, since: float, until: float | None, partner: str | None, page_size: int
) -> list[Cdr]:
    """Every CDR that started in [since, until) (of ``partner`` when given), oldest first.

    Pages through the gateway's ``cdr`` command ``page_size`` records at a time until a short
    page. A CDR written meanwhile moves older ones a place down the pages, so one may come
    twice: it is kept once. Exits 1 when the gateway answers outside the window or repeats a
    page, as a gateway that ignores the window or the offset (an older version) would.
    """
    found: dict[str, Cdr] = {}
    offset = 0
    while True:
        window = {"since": since, "until": until, "partner": partner}
        result = _call(path, "cdr", **window, limit=page_size, offset=offset)
        page = _page_of_cdrs(result, offset)
        stray = next((c for c in page if _outside(c, since, until, partner)), None)
        if stray is not None:
            _fail(f"cdr: the gateway answered CDR {stray.id} from outside the asked window")
        new = [c for c in page if c.id not in found]
        if len(page) == page_size and not new:
            _fail(f"cdr: the gateway repeated a page at offset {offset}: it does not page CDRs")
        found.update((c.id, c) for c in new)
        if len(page) < page_size:
            return sorted(reversed(found.values()), key=lambda c: c.start)
        offset += page_size


def _new_file_mode() -> int:
    # What open() would give a new file: mkstemp's 0600 would hide the export from others.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, line ends as given) to ``path`` all at once or not at all.

    The text goes to a temporary file beside ``path``, is flushed to disk, and is renamed
    over ``path``; a reader never sees half a file, and a failure leaves ``path`` as it was.
    Raises OSError.
    """
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, _new_file_mode())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)


@cdr.command("export")
@click.option(
    "--since",
    required=True,
    metavar="ISO-or-epoch",
    callback=_time_option,
    help="Only calls that started at or after this time.",
)
@click.option(
    "--until",
    metavar="ISO-or-epoch",
    callback=_time_option,
    help="Only calls that started before this time [default: no end].",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["csv", "json"], case_sensitive=False),
    default="csv",
    show_default=True,
    help="CSV (RFC 4180, a header row) or one JSON list.",
)
@click.option("--partner", metavar="NAME", help="Only calls of this partner.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to FILE (atomically: a temporary file renamed into place) [default: stdout].",
)
@click.option(
    "--page-size",
    type=click.IntRange(min=1),
    default=DEFAULT_EXPORT_PAGE,
    show_default=True,
    help="CDRs per request to the gateway.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Take the control socket from this config file.",
)
@click.option(
    "--socket",
    "socket_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Control socket of the gateway [default: ${SOCKET_ENV} or ./{DEFAULT_SOCKET}].",
)
@click.pass_obj
def cdr_export(
    options: _GlobalOptions,
    since: float,
    until: float | None,
    output_format: str,
    partner: str | None,
    output: Path | None,
    page_size: int,
    config_path: Path | None,
    socket_path: Path | None,
) -> None:
    """Export every CDR of a time window, oldest first, with its payer, tariff and cost."""
    if until is not None and until <= since:
        raise click.BadParameter("must be later than --since", param_hint="'--until'")
    if partner is not None and not partner:
        raise click.BadParameter("must not be empty", param_hint="'--partner'")
    path = resolve_socket(options, socket_path, config_path)
    cdrs = export_window(path, since, until, partner, page_size)
    text = cdrs_to_csv(cdrs) if output_format.lower() == "csv" else cdrs_to_json(cdrs) + "\n"
    if output is None:
        # Bytes, not click.echo: that would strip escape sequences from a piped export, and
        # a CDR's text fields are the caller's to choose.
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8"))
        sys.stdout.buffer.flush()
        return
    try:
        write_atomically(output, text)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    click.echo(f"{output}: {len(cdrs)} CDRs", err=True)


def main() -> None:
    """Entry point of the ``edgegw`` console script."""
    cli.main(prog_name="edgegw")


if __name__ == "__main__":
    main()
