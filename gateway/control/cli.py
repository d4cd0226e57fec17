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
import re
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
from rich.live import Live
from rich.table import Table

from gateway import __version__
from gateway.config import Config, ConfigError, default_config, dump_default_toml, load_config
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

    raise click.exceptions.Exit(service.run(config, path))


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


@config_group.command("get")
@click.argument("key")
@click.argument("file", type=click.Path(path_type=Path), required=False)
def config_get(key: str, file: Path | None) -> None:
    """Print KEY (dotted: network.ssh_port, sip.listen.0.port) of FILE's config with every
    default filled in [default FILE: the embedded default]; tables and lists as JSON.

    For scripts on the box (the disk image's sshd takes its port from network.ssh_port)."""
    config = _load_config(file) if file is not None else default_config()
    value: object = msgspec.to_builtins(config)
    for part in key.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            _fail(f"config has no key {key!r} (no {part!r} there)")
    if isinstance(value, dict | list):
        click.echo(msgspec.json.encode(value).decode())
    else:
        click.echo(str(value).lower() if isinstance(value, bool) else str(value))


@config_group.command("default")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (refused if it exists) instead of stdout.",
)
def config_default(output: Path | None) -> None:
    """Print the embedded default (the demo) as TOML, to edit and start with --config."""
    text = dump_default_toml()
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with output.open("x", encoding="utf-8") as file:
            file.write(text)
    except OSError as exc:
        click.echo(f"{output}: {exc.strerror or exc}: nothing written", err=True)
        raise click.exceptions.Exit(EXIT_FAILED) from exc
    click.echo(f"{output}: written; start with `edgegw run --config {output}`")


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
    """Show the running gateway's status: calls, trunks, CPU, memory, drops, refusals."""
    result = _call(resolve_socket(options, socket_path, config_path), "status")
    if as_json or not isinstance(result, dict):
        _print_json(result)
        return
    print_status(result)


@cli.command()
@click.option("--watch", is_flag=True, help="Refresh the list until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="With --watch: seconds between refreshes.",
)
@click.option("--count", type=click.IntRange(min=1), help="With --watch: stop after N refreshes.")
@_socket_options
@click.pass_context
def calls(
    ctx: click.Context,
    watch: bool,
    interval: float,
    count: int | None,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """List the calls in progress; --watch keeps the list live (--json: a line per refresh)."""
    path = resolve_socket(ctx.obj, socket_path, config_path)
    if watch:
        watch_calls(path, as_json, interval, count)
        return
    for name in ("interval", "count"):
        if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT:
            raise click.UsageError(f"--{name} applies only with --watch", ctx)
    result = _call(path, "calls")
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
    "--to-var",
    is_flag=True,
    help="Write to the gateway's <var_dir>/exports/cdrs-SINCE-UNTIL.FORMAT (kept there by "
    "general.export_max_mb and export_max_age_days).",
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
    to_var: bool,
    page_size: int,
    config_path: Path | None,
    socket_path: Path | None,
) -> None:
    """Export every CDR of a time window, oldest first, with its payer, tariff and cost."""
    if to_var and output is not None:
        raise click.UsageError("give --output or --to-var, not both")
    if until is not None and until <= since:
        raise click.BadParameter("must be later than --since", param_hint="'--until'")
    if partner is not None and not partner:
        raise click.BadParameter("must not be empty", param_hint="'--partner'")
    path = resolve_socket(options, socket_path, config_path)
    cdrs = export_window(path, since, until, partner, page_size)
    text = cdrs_to_csv(cdrs) if output_format.lower() == "csv" else cdrs_to_json(cdrs) + "\n"
    if to_var:
        output = export_path_in_var(path, since, until, output_format.lower())
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


# ---- operations (status details, live calls, call show/hangup, regs, trunks, drain) ----

REG_COLUMNS = ("aor", "contact", "source", "transport", "expires_in", "user_agent")
TRUNK_COLUMNS = (
    "name",
    "address",
    "transport",
    "health",
    "last_rtt_ms",
    "registration",
    "channels",
    "max_channels",
)
# `edgegw call show`: the call's own fields, then one row per leg figure.
CALL_FIELDS = (
    "id",
    "caller",
    "callee",
    "route",
    "trunk",
    "state",
    "start",
    "answer",
    "duration",
    "transcoding",
)
LEG_FIELDS = (
    "sip_call_id",
    "local",
    "remote",
    "latched",
    "codec",
    "payload_type",
    "ptime",
    "srtp",
    "packets_in",
    "packets_out",
    "bytes_in",
    "bytes_out",
    "rtcp_packets_in",
    "rtcp_packets_out",
    "drops",
    "lost",
    "jitter_ms",
    "remote_fraction_lost",
    "remote_jitter_ms",
    "rtt_ms",
    "loss_pct",
    "mos",
)


def _is_rows(value: Any) -> bool:
    return bool(value) and _all_dicts(value)


def _columns_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def print_status(result: Mapping[str, Any]) -> None:
    """The status as a key/value table, then a table for each list section (trunks...)."""
    console = _console()
    if result.get("draining"):
        console.print("[bold yellow]DRAINING[/]: new calls get 503; calls in progress go on")
    console.print(status_table({k: v for k, v in result.items() if not _is_rows(v)}))
    for key, value in result.items():
        if _is_rows(value):
            console.print(rows_table(key.replace("_", " "), _columns_of(value), value))


def _calls_table(result: list[dict[str, Any]], title: str = "active calls") -> Table:
    now = time.time()
    return rows_table(title, CALL_COLUMNS, [_with_live_duration(call, now) for call in result])


def watch_calls(path: Path, as_json: bool, interval: float, count: int | None) -> None:
    """Show the calls every ``interval`` seconds until Ctrl-C (or ``count`` refreshes).

    A terminal gets one table redrawn in place; a pipe gets a table per refresh, and
    ``--json`` one JSON document per line per refresh.
    """
    console = _console()
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    shown = 0
    try:
        if live is not None:
            live.start()
        while count is None or shown < count:
            if shown:
                time.sleep(interval)
            result = _call(path, "calls")
            shown += 1
            if as_json or not _all_dicts(result):
                click.echo(json.dumps(result, ensure_ascii=False))
                continue
            title = f"active calls at {datetime.now().strftime('%H:%M:%S')} (Ctrl-C stops)"
            table = _calls_table(result, title)
            if live is not None:
                live.update(table, refresh=True)
            else:
                console.print(table)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends: not a failure
    finally:
        if live is not None:
            live.stop()


def call_tables(detail: Mapping[str, Any]) -> tuple[Table, Table]:
    """`edgegw call show`: the call's fields, and its two legs side by side."""
    call = Table(title=f"call {detail.get('id')}", show_header=False)
    call.add_column("key", style="bold")
    call.add_column("value")
    for key in CALL_FIELDS:
        call.add_row(_header(key), format_cell(key, detail.get(key)))
    legs_of = detail.get("legs")
    legs: Mapping[str, Any] = legs_of if isinstance(legs_of, Mapping) else {}
    table = Table(title="legs")
    table.add_column("")
    sides = [side for side in ("a", "b") if isinstance(legs.get(side), Mapping)]
    for side in sides:
        table.add_column(f"{side} ({legs[side].get('role', '?')})")
    for key in LEG_FIELDS:
        table.add_row(key.replace("_", " "), *(format_cell(key, legs[s].get(key)) for s in sides))
    return call, table


@cli.group("call")
def call_group() -> None:
    """Inspect or end one call in progress (ids as `edgegw calls` lists them)."""


@call_group.command("show")
@click.argument("call_id", metavar="ID")
@_socket_options
@click.pass_obj
def call_show(
    options: _GlobalOptions,
    call_id: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Both legs of call ID: addresses, codecs, SRTP, packets, loss, jitter, RTT, MOS.

    Loss, jitter and RTT come from the gateway's own RTCP, which it runs on transcoded
    calls; a relayed call passes RTCP end to end and shows '-' there. Exits 1 when no
    call in progress has that id.
    """
    result = _call(resolve_socket(options, socket_path, config_path), "call show", id=call_id)
    if as_json or not isinstance(result, dict):
        _print_json(result)
        return
    console = _console()
    for table in call_tables(result):
        console.print(table)


@call_group.command("hangup")
@click.argument("call_id", metavar="ID")
@_socket_options
@click.pass_obj
def call_hangup(
    options: _GlobalOptions,
    call_id: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """End call ID now: BYE (or CANCEL) to both legs. Exits 1 when there is no such call."""
    result = _call(resolve_socket(options, socket_path, config_path), "call hangup", id=call_id)
    if as_json:
        _print_json(result)
        return
    click.echo(f"call {call_id}: hanging up both legs")


@cli.command()
@_socket_options
@click.pass_obj
def regs(
    options: _GlobalOptions, socket_path: Path | None, config_path: Path | None, as_json: bool
) -> None:
    """List the registrar's bindings (app users' registered contacts)."""
    result = _call(resolve_socket(options, socket_path, config_path), "regs")
    _show_rows(result, as_json, "registrations", REG_COLUMNS)


@cli.command()
@_socket_options
@click.pass_obj
def trunks(
    options: _GlobalOptions, socket_path: Path | None, config_path: Path | None, as_json: bool
) -> None:
    """List the carrier trunks: address, OPTIONS health, registration, channels in use."""
    result = _call(resolve_socket(options, socket_path, config_path), "trunks")
    _show_rows(result, as_json, "trunks", TRUNK_COLUMNS)


@cli.group("trunk")
def trunk_group() -> None:
    """Work with one carrier trunk."""


def _ping_line(result: Mapping[str, Any]) -> str:
    name, target = result.get("name"), result.get("target") or "?"
    status, rtt = result.get("status"), result.get("rtt_ms")
    if status is None:
        return f"trunk {name}: no answer to OPTIONS ({result.get('error')}) from {target}"
    line = f"trunk {name}: {status} from {target} in {rtt} ms"
    return line if result.get("alive") else f"{line}: overloaded or in maintenance"


@trunk_group.command("ping")
@click.argument("name")
@_socket_options
@click.pass_obj
def trunk_ping(
    options: _GlobalOptions,
    name: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Send trunk NAME a SIP OPTIONS now and show the answer and its round-trip time.

    Exits 0 when the trunk answers, 1 when it does not (no answer, or 503) or when no
    trunk has that name (the known names are listed).
    """
    result = _call(resolve_socket(options, socket_path, config_path), "trunk ping", name=name)
    alive = isinstance(result, dict) and result.get("alive") is True
    if as_json or not isinstance(result, dict):
        _print_json(result)
    elif alive:
        click.echo(_ping_line(result))
    else:
        click.echo(f"edgegw: {_ping_line(result)}", err=True)
    if not alive:
        raise click.exceptions.Exit(EXIT_FAILED)


@cli.command()
@click.option("--off", is_flag=True, help="Stop draining: take new calls again.")
@_socket_options
@click.pass_obj
def drain(
    options: _GlobalOptions,
    off: bool,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Take no new calls (INVITEs get 503 Draining); calls in progress go on to their end.

    `edgegw status` shows "draining: yes" meanwhile; `edgegw drain --off` takes calls again.
    """
    path = resolve_socket(options, socket_path, config_path)
    result = _call(path, "drain", on=not off)
    if as_json or not isinstance(result, dict):
        _print_json(result)
        return
    active = result.get("active_calls")
    if result.get("draining"):
        click.echo(f"draining: new calls get 503; calls in progress go on ({active} now)")
    else:
        click.echo(f"not draining: taking new calls ({active} calls in progress)")


# ---- network (net show, net apply) ----


def _net_config(options: _GlobalOptions, config_path: Path | None) -> Config:
    path = config_path or options.config
    return _load_config(path) if path is not None else default_config()


def _net_config_option(command: _F) -> _F:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Config file whose [network] section to use [default: the embedded default].",
    )(command)


@cli.group("net")
def net_group() -> None:
    """Network set-up of this box, by role (runs locally as root, not through the gateway)."""


@net_group.command("show")
@_net_config_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON document.")
@click.pass_obj
def net_show(options: _GlobalOptions, config_path: Path | None, as_json: bool) -> None:
    """Show each role's interface, addresses, routes and rules, and the firewall table."""
    from gateway.net import firewall, setup

    config = _net_config(options, config_path)
    try:
        state = setup.read_current()
        present = firewall.current_table() is not None
    except (OSError, firewall.FirewallError) as exc:
        _fail(f"net show: {exc}")
    report = setup.show_network(config, state, present)
    if as_json:
        _print_json(report)
        return
    if not report["managed"]:
        click.echo("network not managed: the config's [network] section names no interfaces")
    for role, info in report["roles"].items():
        up = "up" if info["up"] else ("down" if info["present"] else "missing")
        click.echo(f"{role}: {info['interface']} {up}, table {info['table']}")
        click.echo(f"  addresses: {', '.join(info['addresses']) or '-'}")
        for route in info["routes"]:
            via = f" via {route['via']}" if route["via"] else ""
            click.echo(f"  route {route['dst']}{via} dev {route['dev']} table {route['table']}")
        for rule in info["rules"]:
            click.echo(f"  rule {rule['priority']}: from {rule['from']} lookup {rule['table']}")
    click.echo(
        f"firewall table {report['firewall']['table']}: "
        f"{'present' if report['firewall']['present'] else 'absent'}"
    )


@net_group.command("apply")
@_net_config_option
@click.option("--yes", is_flag=True, help="Apply the changes (without it they are only shown).")
@click.option(
    "--check-timeout",
    type=click.FloatRange(min=0.0),
    default=30.0,
    show_default=True,
    help="Seconds the gateway has to answer SIP OPTIONS on each role's address.",
)
@click.pass_obj
def net_apply(
    options: _GlobalOptions, config_path: Path | None, yes: bool, check_timeout: float
) -> None:
    """Show the changes the [network] config needs; with --yes apply them, check that the
    gateway answers SIP OPTIONS on each role's address, and roll back if anything fails."""
    from pyroute2 import IPRoute

    from gateway.net import apply, check, plan, setup
    from gateway.net.state import read_state

    config = _net_config(options, config_path)
    try:
        with IPRoute() as ipr:
            network_plan = setup.plan_network(config, read_state(ipr))
            for line in network_plan.lines():
                click.echo(line)
            if not network_plan.managed:
                click.echo(
                    "network not managed: the config's [network] section names no interfaces"
                )
                return
            if not yes:
                click.echo(f"{len(network_plan.lines())} changes shown; apply them with --yes")
                return
            targets = check.sip_targets(config)
            applied = setup.apply_network(
                ipr, network_plan, check.sip_options_check(targets, check_timeout)
            )
    except plan.PlanError as exc:
        _fail(f"net apply: {exc}")
    except apply.ApplyError as exc:
        _fail(f"net apply failed at {exc}")
    except OSError as exc:
        _fail(f"net apply: {exc}")
    checked = ", ".join(str(target) for target in targets) or "no SIP listener on a role address"
    click.echo(f"applied {len(applied)} changes; SIP OPTIONS answered: {checked}")


# ---- config reload ----


@config_group.command("reload")
@_socket_options
@click.pass_obj
def config_reload(
    options: _GlobalOptions, socket_path: Path | None, config_path: Path | None, as_json: bool
) -> None:
    """Make the running gateway read its config file again (as SIGHUP does).

    Live changes (subscribers, trunks, partners, tariffs, routing, limits, per-call media
    settings) apply to new calls at once; calls in progress go on unchanged. A file that is
    invalid, or changes a key that needs a restart, is refused with the reason (exit 1) and
    the gateway keeps its running config.
    """
    result = _call(resolve_socket(options, socket_path, config_path), "config_reload")
    if as_json or not isinstance(result, dict):
        _print_json(result)
        return
    changed = result.get("changed") or []
    if not changed:
        click.echo(f"{result.get('file')}: no change")
        return
    click.echo(f"{result.get('file')}: reloaded, {len(changed)} changed:")
    for key in changed:
        click.echo(f"  {key}")


# ---- capture ----

CAPTURE_COLUMNS = ("call_id", "state", "packets", "bytes", "file", "stop_reason", "note")


@cli.group("capture")
def capture_group() -> None:
    """Packet captures of single calls: SIP and RTP/RTCP as pcap files (Wireshark, tshark)."""


@capture_group.command("start")
@click.argument("call_id", metavar="CALL-ID")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The pcap file to write (must not exist) [default: <var>/captures/ID-TIME.pcap].",
)
@_socket_options
@click.pass_obj
def capture_start(
    options: _GlobalOptions,
    call_id: str,
    output: Path | None,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Capture call CALL-ID (an id from `edgegw calls`) until it ends or `capture stop`."""
    # The gateway runs in its own directory: a relative name means the caller's.
    target = str(output.absolute()) if output is not None else None
    path = resolve_socket(options, socket_path, config_path)
    result = _call(path, "capture_start", call=call_id, output=target)
    if as_json or not isinstance(result, dict):
        _print_json(result)
        return
    click.echo(f"capturing call {result.get('call_id')} to {result.get('file')}")


@capture_group.command("stop")
@click.argument("call_id", metavar="CALL-ID")
@_socket_options
@click.pass_obj
def capture_stop(
    options: _GlobalOptions,
    call_id: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Stop capturing call CALL-ID; returns once the file is complete."""
    path = resolve_socket(options, socket_path, config_path)
    result = _call(path, "capture_stop", call=call_id)
    if as_json or not isinstance(result, dict):
        _print_json(result)
        return
    click.echo(
        f"{result.get('file')}: {result.get('packets')} packets, {result.get('bytes')} bytes"
    )
    if result.get("note"):
        click.echo(f"note: {result['note']}")


@capture_group.command("list")
@_socket_options
@click.pass_obj
def capture_list(
    options: _GlobalOptions, socket_path: Path | None, config_path: Path | None, as_json: bool
) -> None:
    """List running and recent captures: call, file, packets, bytes, running or stopped."""
    result = _call(resolve_socket(options, socket_path, config_path), "capture_list")
    _show_rows(result, as_json, "captures", CAPTURE_COLUMNS)


# ---- provisioning (subscribers, balances, partners, numbers, backup, restore, diag) ----

SUBSCRIBER_COLUMNS = (
    "username",
    "numbers",
    "srtp",
    "fallback",
    "codecs",
    "mobile",
    "balance",
    "registrations",
)
ACCOUNT_COLUMNS = ("account", "balance", "reserved")
LEDGER_COLUMNS = ("id", "at", "amount", "balance_after", "reason", "call_id")
PARTNER_COLUMNS = ("name", "balance", "pool_size", "bindings", "bill_user", "callbacks")
NUMBER_COLUMNS = ("number", "owner", "state", "binding", "expires_at")
_AMOUNT_TEXT = "a decimal of whole cents such as 10 or 12.50"
_CONFIG_ONLY = (
    "Trunks and partners (their keys, pools and initial budgets) are kept in the config file "
    "only: `edgegw trunk|partner add|set|remove` edit it and apply the change at once."
)


def _comma_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [item.strip() for item in value.split(",") if item.strip()]


def _amount(ctx: click.Context, param: click.Parameter, value: str) -> str:
    text = value.strip()
    if not re.fullmatch(r"-?[0-9]{1,15}(\.[0-9]{1,2})?", text):
        raise click.BadParameter(f"{value!r} is not {_AMOUNT_TEXT}", ctx, param)
    return text


def _account(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None or ":" not in value:
        return value  # a bare name: the gateway looks it up
    kind, _, name = value.partition(":")
    if kind not in ("subscriber", "partner") or not name:
        raise click.BadParameter(
            f"{value!r}: write subscriber:NAME, partner:NAME or a bare NAME", ctx, param
        )
    return value


def _subscriber_fields(command: _F) -> _F:
    """The options `subscriber add` and `subscriber set` share (--password differs)."""
    for option in reversed(
        [
            click.option(
                "--numbers",
                callback=_comma_list,
                metavar="E164[,E164...]",
                help='Numbers it owns, e.g. +8613900139003 ("" for none; set replaces all).',
            ),
            click.option(
                "--srtp",
                type=click.Choice(["mandatory", "optional", "off"]),
                help="SRTP policy toward its app [add: optional].",
            ),
            click.option(
                "--fallback/--no-fallback",
                default=None,
                help="Call its number through a carrier when the app is not there [add: on].",
            ),
            click.option(
                "--codecs",
                callback=_comma_list,
                metavar="CODEC[,CODEC...]",
                help='Codec preference toward its app ("": the gateway\'s media.app_codecs).',
            ),
            click.option(
                "--mobile",
                metavar="E164",
                help='Its own phone, for carrier calls while the app is offline ("": none).',
            ),
        ]
    ):
        command = option(command)
    return _socket_options(command)


def _print_notes(result: Any) -> None:
    if isinstance(result, dict):
        for note in result.get("notes") or []:
            click.echo(f"note: {note}", err=True)


def _listed(row: Mapping[str, Any]) -> dict[str, Any]:
    """Lists shown comma-separated in a table cell."""
    return {k: ", ".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()}


def _show_rows(result: Any, as_json: bool, title: str, columns: Sequence[str]) -> None:
    if as_json or not _all_dicts(result):
        _print_json(result)
        return
    _console().print(rows_table(title, columns, [_listed(row) for row in result]))


def _subscriber_line(verb: str, sub: Mapping[str, Any]) -> str:
    numbers = ", ".join(sub.get("numbers") or []) or "no numbers"
    return (
        f"subscriber {sub.get('username')} {verb}: {numbers}; srtp {sub.get('srtp')}, "
        f"fallback {format_cell('fallback', sub.get('fallback'))}, "
        f"balance {format_cell('balance', sub.get('balance'))}"
    )


@cli.group("subscriber")
def subscriber_group() -> None:
    """App users: list, add, set, remove. A change applies at once, without a restart.

    Balances change through `edgegw balance topup`. Passwords are never shown.
    """


@subscriber_group.command("list")
@_socket_options
@click.pass_obj
def subscriber_list(
    options: _GlobalOptions, socket_path: Path | None, config_path: Path | None, as_json: bool
) -> None:
    """List the subscribers, their numbers, policies, balance and registrations."""
    result = _call(resolve_socket(options, socket_path, config_path), "subscriber list")
    _show_rows(result, as_json, "subscribers", SUBSCRIBER_COLUMNS)


def _changes(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


@subscriber_group.command("add")
@click.argument("username")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    help="Its digest password [asked for when not given].",
)
@_subscriber_fields
@click.pass_obj
def subscriber_add(
    options: _GlobalOptions,
    /,
    username: str,
    password: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
    **fields: Any,
) -> None:
    """Add subscriber USERNAME (1 to 64 letters, digits or . _ ~ + -)."""
    path = resolve_socket(options, socket_path, config_path)
    result = _call(
        path, "subscriber add", username=username, password=password, **_changes(**fields)
    )
    if as_json:
        _print_json(result)
    else:
        click.echo(_subscriber_line("added", result))
    _print_notes(result)


@subscriber_group.command("set")
@click.argument("username")
@click.option("--password", help="A new digest password.")
@_subscriber_fields
@click.pass_obj
def subscriber_set(
    options: _GlobalOptions,
    /,
    username: str,
    password: str | None,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
    **fields: Any,
) -> None:
    """Change subscriber USERNAME: only the options given change."""
    changes = _changes(password=password, **fields)
    if not changes:
        raise click.UsageError(
            "nothing to change: give --password, --numbers, --srtp, --fallback/--no-fallback, "
            "--codecs or --mobile"
        )
    path = resolve_socket(options, socket_path, config_path)
    result = _call(path, "subscriber set", username=username, **changes)
    if as_json:
        _print_json(result)
    else:
        click.echo(_subscriber_line("changed", result))
    _print_notes(result)


@subscriber_group.command("remove")
@click.argument("username")
@_socket_options
@click.pass_obj
def subscriber_remove(
    options: _GlobalOptions,
    username: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Remove subscriber USERNAME: its registrations go and new requests are refused."""
    path = resolve_socket(options, socket_path, config_path)
    result = _call(path, "subscriber remove", username=username)
    if as_json:
        _print_json(result)
    else:
        dropped = result.get("registrations_dropped") if isinstance(result, dict) else None
        click.echo(f"subscriber {username} removed ({dropped} registrations dropped)")
    _print_notes(result)


@cli.group("balance")
def balance_group() -> None:
    """Prepaid accounts: subscribers' balances and partners' subsidy budgets.

    ACCOUNT is subscriber:NAME or partner:NAME (a bare NAME when only one account has it).
    """


@balance_group.command("show")
@click.argument("account", required=False, callback=_account)
@_socket_options
@click.pass_obj
def balance_show(
    options: _GlobalOptions,
    account: str | None,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Show ACCOUNT's balance and what its calls hold; every account when none is given."""
    path = resolve_socket(options, socket_path, config_path)
    if account is None:
        _show_rows(_call(path, "balance show"), as_json, "accounts", ACCOUNT_COLUMNS)
        return
    result = _call(path, "balance show", account=account)
    if as_json or not isinstance(result, dict):
        _print_json(result)
        return
    _console().print(status_table(result))


@balance_group.command("topup")
@click.argument("account", metavar="subscriber:NAME|partner:NAME", callback=_account)
@click.argument("amount", callback=_amount)
@click.option(
    "--reason",
    type=click.Choice(["topup", "adjustment"]),
    default="topup",
    show_default=True,
    help="topup: AMOUNT > 0; adjustment: either sign (a negative AMOUNT goes after `--`).",
)
@_socket_options
@click.pass_obj
def balance_topup(
    options: _GlobalOptions,
    account: str,
    amount: str,
    reason: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Add AMOUNT to ACCOUNT, with a ledger row; calls in progress can use it at once."""
    path = resolve_socket(options, socket_path, config_path)
    result = _call(path, "balance topup", account=account, amount=amount, reason=reason)
    if as_json or not isinstance(result, dict):
        _print_json(result)
        return
    click.echo(f"{result.get('account')}: {reason} {amount}, balance now {result.get('balance')}")


@balance_group.command("ledger")
@click.argument("account", callback=_account)
@click.option(
    "--since",
    metavar="ISO-or-epoch",
    callback=_time_option,
    help="Only changes at or after this time.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Most rows to show.",
)
@_socket_options
@click.pass_obj
def balance_ledger(
    options: _GlobalOptions,
    account: str,
    since: float | None,
    limit: int,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """List ACCOUNT's balance changes (provision, topup, adjustment, call), newest first."""
    path = resolve_socket(options, socket_path, config_path)
    result = _call(path, "balance ledger", account=account, since=since, limit=limit)
    if not as_json and _all_dicts(result):
        result = [{**row, "at": format_cell("time", row.get("at"))} for row in result]
    _show_rows(result, as_json, f"ledger of {account}", LEDGER_COLUMNS)


@cli.group("partner", help=f"Partner platforms. {_CONFIG_ONLY}")
def partner_group() -> None:
    pass


@partner_group.command("list")
@_socket_options
@click.pass_obj
def partner_list(
    options: _GlobalOptions, socket_path: Path | None, config_path: Path | None, as_json: bool
) -> None:
    """List partners: budget balance, masked-number pool size and live bindings (no keys)."""
    result = _call(resolve_socket(options, socket_path, config_path), "partner list")
    _show_rows(result, as_json, "partners", PARTNER_COLUMNS)


@cli.group(
    "number",
    help="Numbers: subscribers' own and partners' masked-number pools. "
    "Add or remove a subscriber's with `number add|remove` (or `subscriber set NAME "
    f"--numbers`). {_CONFIG_ONLY}",
)
def number_group() -> None:
    pass


@number_group.command("list")
@_socket_options
@click.pass_obj
def number_list(
    options: _GlobalOptions, socket_path: Path | None, config_path: Path | None, as_json: bool
) -> None:
    """List every number: its owner, and registered/offline (a subscriber's) or bound/free
    (a partner pool's)."""
    result = _call(resolve_socket(options, socket_path, config_path), "number list")
    _show_rows(result, as_json, "numbers", NUMBER_COLUMNS)


@number_group.command("add")
@click.argument("number")
@click.option("--subscriber", required=True, help="The subscriber the number rings.")
@_socket_options
@click.pass_obj
def number_add(
    options: _GlobalOptions,
    number: str,
    subscriber: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Give NUMBER (E.164) to a subscriber: calls to it ring the subscriber from now on."""
    path = resolve_socket(options, socket_path, config_path)
    result = _call(path, "number add", number=number, subscriber=subscriber)
    _number_changed(result, "added to", as_json)


@number_group.command("remove")
@click.argument("number")
@_socket_options
@click.pass_obj
def number_remove(
    options: _GlobalOptions,
    number: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Take NUMBER from the subscriber owning it: calls to it are refused from now on."""
    path = resolve_socket(options, socket_path, config_path)
    _number_changed(_call(path, "number remove", number=number), "removed from", as_json)


def _number_changed(result: Any, what: str, as_json: bool) -> None:
    if as_json:
        _print_json(result)
    elif isinstance(result, dict):
        click.echo(f"{result.get('number')} {what} {result.get('owner')}")
    _print_notes(result)


@cli.command("backup")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@_socket_options
@click.pass_obj
def backup_command(
    options: _GlobalOptions,
    file: Path,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Copy the running gateway's store into FILE, online and consistent.

    The copy is checked (SQLite integrity check, edgegw schema) before it replaces FILE;
    FILE is readable by its owner only: it holds passwords. The gateway writes it, so its
    directory must be writable by the gateway's user.
    """
    target = file.expanduser().absolute()
    result = _call(resolve_socket(options, socket_path, config_path), "backup", target=str(target))
    if as_json or not isinstance(result, dict):
        _print_json(result)
        return
    click.echo(
        f"{target}: schema {result.get('schema_version')}, {result.get('bytes')} bytes, "
        f"integrity {result.get('integrity')}: {result.get('subscribers')} subscribers, "
        f"{result.get('accounts')} accounts, {result.get('cdrs')} CDRs "
        f"({result.get('seconds')} s)"
    )


def _config_or_default(options: _GlobalOptions, config_path: Path | None) -> tuple[Config, str]:
    path = config_path or options.config
    if path is None:
        return default_config(), "the embedded default config"
    return _load_config(path), str(path)


def _refuse_if_running(path: Path) -> None:
    try:
        ControlClient(path, timeout=3.0).call("status")
    except GatewayNotRunning:
        return
    except ControlError as exc:
        _fail(f"restore: something answers on the control socket {path} ({exc}): stop it first")
    _fail(
        f"restore: the gateway is running (it answers on {path}): stop it first "
        "(`systemctl stop edgegw`, or Ctrl-C where `edgegw run` runs), then restore"
    )


@cli.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_socket_options
@click.pass_obj
def restore_command(
    options: _GlobalOptions,
    file: Path,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Put backup FILE in place as the store of a STOPPED gateway.

    --config names the box's config (where its store and control socket are; default: the
    embedded default, ./var). Refused while the gateway answers on its control socket. The
    file must be an intact edgegw store of a schema this version understands; the current
    store is kept as edgegw.sqlite.before-restore.
    """
    from gateway.store.backup import StoreFileError, restore_store, store_path

    config, _source = _config_or_default(options, config_path)
    _refuse_if_running(resolve_socket(options, socket_path, config_path))
    try:
        result = restore_store(file, store_path(config))
    except StoreFileError as exc:
        _fail(f"restore: {exc}")
    if as_json:
        _print_json(result.as_dict())
        return
    info = result.restored
    click.echo(
        f"restored {file} into {result.store}: schema {info.schema_version}, "
        f"{info.subscribers} subscribers, {info.accounts} accounts, {info.cdrs} CDRs"
    )
    if result.kept:
        click.echo(f"the previous store is kept as {result.kept}")
    if result.earlier_kept:
        click.echo(f"an earlier {Path(result.kept or '').name} was renamed {result.earlier_kept}")


@cli.group("diag")
def diag_group() -> None:
    """Diagnostics to hand to support."""


@diag_group.command("bundle")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The .tar.gz to write [default: ./edgegw-diag-HOST-TIME.tar.gz].",
)
@_socket_options
@click.pass_obj
def diag_bundle(
    options: _GlobalOptions,
    output: Path | None,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Write one .tar.gz: config (secrets masked), logs, status, calls, recent CDRs, network
    state and versions. Works when the gateway is stopped too (from --config and its files),
    and its README.txt says what is missing and why."""
    from gateway.control.diagnostics import Bundle, bundle_steps, default_bundle_name, write_bundle

    config, source = _config_or_default(options, config_path)
    path = resolve_socket(options, socket_path, config_path)
    bundle = Bundle(config, source, ControlClient(path))
    steps = bundle_steps(bundle)
    if sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as progress:
            task = progress.add_task("diag bundle", total=len(steps))
            for label, step in steps:
                progress.update(task, description=label)
                step(bundle)
                progress.advance(task)
    else:
        for _label, step in steps:
            step(bundle)
    made = time.time()
    target = output or Path(default_bundle_name(made))
    try:
        size = write_bundle(bundle, target, made)
    except OSError as exc:
        _fail(f"diag bundle: cannot write {target}: {exc.strerror or exc}")
    running = "status.json" in bundle.files
    if as_json:
        _print_json(
            {"path": str(target), "bytes": size, "files": sorted(bundle.files), "live": running}
        )
        return
    state = "" if running else " (gateway not running: no live parts, see its README.txt)"
    click.echo(f"{target}: {len(bundle.files) + 1} files, {size} bytes{state}")


# ---- retention ----


def _file_stamp(epoch: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))


def export_path_in_var(socket: Path, since: float, until: float | None, fmt: str) -> Path:
    """Where ``cdr export --to-var`` writes: the running gateway's exports directory, asked
    of it (its var dir may be relative to its own working directory, not this one), as
    ``cdrs-SINCE-UNTIL.FMT`` in UTC, UNTIL being now for an open window."""
    result = _call(socket, "retention")
    exports = result.get("exports") if isinstance(result, dict) else None
    directory = exports.get("dir") if isinstance(exports, dict) else None
    if not isinstance(directory, str) or not directory:
        _fail("cdr export: the gateway did not say where its exports directory is")
    end = time.time() if until is None else until
    path = Path(directory) / f"cdrs-{_file_stamp(since)}-{_file_stamp(end)}.{fmt}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"cannot make {path.parent}: {exc.strerror or exc}")
    return path


# ---- trunk and partner provisioning ----
# `edgegw trunk|partner add|set|remove|show`: the gateway edits its config file and reloads it
# (gateway.control.config_edit); a refused change writes nothing (exit 1 with the reason).


def _prefix_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    # Unlike other lists an empty item stays: "" is the prefix that takes every number.
    return None if value is None else [item.strip() for item in value.split(",")]


def _set_option(command: _F) -> _F:
    return click.option(
        "--set",
        "assignments",
        multiple=True,
        metavar="KEY=VALUE",
        help="Any other field, VALUE in TOML (options_ping=true, 'billing_increment=[6,6]'); "
        "repeatable.",
    )(command)


def _trunk_fields(command: _F) -> _F:
    """The options `trunk add` and `trunk set` share (add also requires --host)."""
    for option in reversed(
        [
            click.option("--port", type=int, help="SIP port [add: 5060]."),
            click.option("--transport", metavar="udp|tcp|tls", help="[add: udp]."),
            click.option(
                "--prefixes",
                callback=_prefix_list,
                metavar="DIGITS[,DIGITS...]",
                help='E.164 prefixes it takes, without "+" ("" every number) [add: ""].',
            ),
            click.option(
                "--codecs",
                callback=_comma_list,
                metavar="CODEC[,CODEC...]",
                help="Codecs in order of preference [add: PCMA,PCMU].",
            ),
            click.option("--price-per-minute", metavar="D", help="What the carrier charges."),
            click.option("--tariff-per-minute", metavar="D", help="What callers pay."),
            click.option("--priority", type=int, help="Tie-break of equal prices (lower first)."),
            click.option("--max-channels", type=int, help="Calls at once (0: no limit)."),
            click.option(
                "--networks",
                callback=_comma_list,
                metavar="CIDR[,CIDR...]",
                help="Source networks whose INVITEs count as this trunk.",
            ),
            click.option(
                "--register/--no-register",
                default=None,
                help="Outbound registration (needs --username and --password).",
            ),
            click.option("--username", help="Registration user name."),
            click.option("--password", help="Registration password (never shown)."),
            _set_option,
        ]
    ):
        command = option(command)
    return _socket_options(command)


def _partner_fields(command: _F) -> _F:
    """The options `partner add` and `partner set` share."""
    for option in reversed(
        [
            click.option("--api-key", help="Its bearer key [add: a random one, shown once]."),
            click.option(
                "--budget",
                metavar="D",
                help="Initial balance of its account (a new partner's; change a balance "
                "later with `edgegw balance topup`).",
            ),
            click.option(
                "--masked-pool",
                callback=_comma_list,
                metavar="E164[,E164...]",
                help="Its masked numbers (set replaces the whole pool).",
            ),
            click.option("--callback-url", metavar="URL", help="Where call events are POSTed."),
            click.option("--callback-secret", help="HMAC key of the callbacks (never shown)."),
            click.option(
                "--bill-user/--no-bill-user",
                default=None,
                help="Bill the calling user once its budget is spent [add: no].",
            ),
            _set_option,
        ]
    ):
        command = option(command)
    return _socket_options(command)


def _edit_request(
    name: str, assignments: tuple[str, ...], fields: dict[str, Any]
) -> dict[str, Any]:
    return {"name": name, "fields": _changes(**fields), "assignments": list(assignments)}


def _saved(result: Mapping[str, Any]) -> str:
    changed = result.get("changed") or []
    applied = f"applied ({', '.join(changed)})" if changed else "no change to apply"
    return f"{result.get('file')} saved, previous version in {result.get('backup')}; {applied}"


def _trunk_line(verb: str, result: Any) -> str:
    if not isinstance(result, dict) or not isinstance(result.get("trunk"), dict):
        return f"trunk {verb}"
    trunk = result["trunk"]
    prefixes = ", ".join(f'"{p}"' if p == "" else p for p in trunk.get("prefixes") or [])
    return (
        f"trunk {trunk.get('name')} {verb}: {trunk.get('host')}:{trunk.get('port')} "
        f"{trunk.get('transport')}, prefixes {prefixes}, codecs "
        f"{', '.join(trunk.get('codecs') or [])}\n{_saved(result)}"
    )


def _partner_line(verb: str, result: Any) -> str:
    if not isinstance(result, dict) or not isinstance(result.get("partner"), dict):
        return f"partner {verb}"
    partner = result["partner"]
    return (
        f"partner {partner.get('name')} {verb}: budget {partner.get('budget')}, "
        f"{len(partner.get('masked_pool') or [])} masked numbers, bill user "
        f"{format_cell('bill_user', partner.get('bill_user'))}\n{_saved(result)}"
    )


def _show_entry(kind: str, result: Any, as_json: bool) -> None:
    if as_json or not isinstance(result, dict):
        _print_json(result)
        return
    table = Table(title=f"{kind} {result.get('name')}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in result.items():
        table.add_row(key, format_cell(key, value))
    _console().print(table)


def _edited(kind: str, verb: str, result: Any, as_json: bool) -> None:
    if as_json:
        _print_json(result)
    elif kind == "trunk":
        click.echo(_trunk_line(verb, result))
    else:
        click.echo(_partner_line(verb, result))


@trunk_group.command("add")
@click.argument("name")
@click.option("--host", required=True, help="The carrier's address or host name.")
@_trunk_fields
@click.pass_obj
def trunk_add(
    options: _GlobalOptions,
    /,
    name: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
    assignments: tuple[str, ...],
    **fields: Any,
) -> None:
    """Add trunk NAME to the gateway's config file and apply it at once."""
    path = resolve_socket(options, socket_path, config_path)
    result = _call(path, "trunk add", **_edit_request(name, assignments, fields))
    _edited("trunk", "added", result, as_json)


@trunk_group.command("set")
@click.argument("name")
@click.option("--host", help="The carrier's address or host name.")
@_trunk_fields
@click.pass_obj
def trunk_set(
    options: _GlobalOptions,
    /,
    name: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
    assignments: tuple[str, ...],
    **fields: Any,
) -> None:
    """Change trunk NAME: only the options given change; new calls use it at once."""
    where = (options, socket_path, config_path)
    _set_fields("trunk", "--port", where, name, assignments, fields, as_json)


@trunk_group.command("remove")
@click.argument("name")
@_socket_options
@click.pass_obj
def trunk_remove(
    options: _GlobalOptions,
    name: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Remove trunk NAME from the config file: new calls no longer use it; calls in
    progress on it go on."""
    result = _call(resolve_socket(options, socket_path, config_path), "trunk remove", name=name)
    if as_json or not isinstance(result, dict):
        _print_json(result)
    else:
        click.echo(f"trunk {name} removed; calls in progress on it go on\n{_saved(result)}")


@trunk_group.command("show")
@click.argument("name")
@_socket_options
@click.pass_obj
def trunk_show(
    options: _GlobalOptions,
    name: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Show every setting of trunk NAME (its password masked)."""
    result = _call(resolve_socket(options, socket_path, config_path), "trunk show", name=name)
    _show_entry("trunk", result, as_json)


@partner_group.command("add")
@click.argument("name")
@_partner_fields
@click.pass_obj
def partner_add(
    options: _GlobalOptions,
    /,
    name: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
    assignments: tuple[str, ...],
    **fields: Any,
) -> None:
    """Add partner NAME to the config file and apply it at once. Without --api-key the
    gateway makes a random key and prints it this once: keep it."""
    path = resolve_socket(options, socket_path, config_path)
    result = _call(path, "partner add", **_edit_request(name, assignments, fields))
    _edited("partner", "added", result, as_json)
    if not as_json and isinstance(result, dict) and result.get("api_key"):
        click.echo(f"API key (shown only now): {result['api_key']}")


@partner_group.command("set")
@click.argument("name")
@_partner_fields
@click.pass_obj
def partner_set(
    options: _GlobalOptions,
    /,
    name: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
    assignments: tuple[str, ...],
    **fields: Any,
) -> None:
    """Change partner NAME: only the options given change, at once."""
    where = (options, socket_path, config_path)
    _set_fields("partner", "--api-key", where, name, assignments, fields, as_json)


def _set_fields(
    noun: str,
    example: str,
    where: tuple[_GlobalOptions, Path | None, Path | None],
    name: str,
    assignments: tuple[str, ...],
    fields: dict[str, Any],
    as_json: bool,
) -> None:
    """`trunk set` and `partner set`: refuse an empty change, else send it and show it."""
    if not _changes(**fields) and not assignments:
        raise click.UsageError(f"nothing to change: give an option such as {example}, or --set")
    path = resolve_socket(*where)
    result = _call(path, f"{noun} set", **_edit_request(name, assignments, fields))
    _edited(noun, "changed", result, as_json)


@partner_group.command("remove")
@click.argument("name")
@_socket_options
@click.pass_obj
def partner_remove(
    options: _GlobalOptions,
    name: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Remove partner NAME from the config file: its API key stops working at once; its
    account and CDRs are kept."""
    path = resolve_socket(options, socket_path, config_path)
    result = _call(path, "partner remove", name=name)
    if as_json or not isinstance(result, dict):
        _print_json(result)
    else:
        click.echo(f"partner {name} removed; its API key no longer works\n{_saved(result)}")


@partner_group.command("show")
@click.argument("name")
@_socket_options
@click.pass_obj
def partner_show(
    options: _GlobalOptions,
    name: str,
    socket_path: Path | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Show every setting of partner NAME (its API key and callback secret masked)."""
    result = _call(resolve_socket(options, socket_path, config_path), "partner show", name=name)
    _show_entry("partner", result, as_json)


# ---- upgrade ----


@cli.command("upgrade")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--reboot", is_flag=True, help="Reboot into the new slot once it is written.")
def upgrade_command(file: Path, reboot: bool) -> None:
    """Write the update bundle FILE to the root slot that is not running and boot it next
    (disk image, as root). The bundle must be signed with this image's key; the new slot
    gets one try and is kept only if its boot passes `edgegw health`."""
    import subprocess

    from gateway.control import upgrade

    if os.geteuid() != 0:
        _fail("upgrade: needs root (it writes a partition and the ESP)")
    try:
        with upgrade.local_box() as box:
            written = upgrade.upgrade(file, box, now=time.time(), report=click.echo)
    except upgrade.UpgradeError as exc:
        _fail(f"upgrade refused, nothing written: {exc}")
    plan = written.plan
    click.echo(
        f"slot {plan.target} is ready; slot {plan.running} stays the fallback. "
        + ("rebooting" if reboot else "reboot to start it (`systemctl reboot`)")
    )
    if reboot:
        done = subprocess.run(["systemctl", "reboot"], check=False)
        if done.returncode != 0:
            _fail(f"upgrade: systemctl reboot exited {done.returncode}")


@cli.command("health")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Config of the gateway to check [default: the embedded default].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.0),
    default=120.0,
    show_default=True,
    help="Seconds the gateway has to answer.",
)
@click.option(
    "--boot-assessment",
    is_flag=True,
    help="Judge this boot of a disk image: unhealthy fails (and the box reboots into the "
    "other slot) only when another slot can take over; else the boot is kept.",
)
@click.pass_obj
def health_command(
    options: _GlobalOptions, config_path: Path | None, timeout: float, boot_assessment: bool
) -> None:
    """Exit 0 once the gateway answers SIP OPTIONS on each UDP listener and `edgegw status`
    works, 1 if it does not within --timeout (the boot-assessment check of a new slot)."""
    from gateway.control import upgrade
    from gateway.net.check import options_ping

    config = _net_config(options, config_path)
    socket_path = config.control_socket_path

    def status_problem() -> str | None:
        try:
            ControlClient(socket_path, timeout=5.0).call("status")
        except GatewayNotRunning:
            return f"gateway not running (no control socket at {socket_path})"
        except ControlError as exc:
            return str(exc)
        return None

    targets = upgrade.health_targets(config)
    result = upgrade.wait_healthy(
        targets, status_problem, ping=lambda t: options_ping(t, 1.0), timeout=timeout
    )
    where = ", ".join(f"{t.host}:{t.port}" for t in targets) or "no UDP listener"
    if not result.healthy:
        unhealthy = f"health: unhealthy after {result.seconds:.0f} s: {'; '.join(result.problems)}"
        _fail(_keep_boot_without_fallback(unhealthy) if boot_assessment else unhealthy)
    click.echo(f"health: good after {result.seconds:.1f} s: OPTIONS answered on {where}, status ok")


def _keep_boot_without_fallback(unhealthy: str) -> str:
    """What to fail with when another slot can take over (the box then reboots into it);
    exit 0, keeping this boot, when none can: a reboot would only come back here, and a box
    that reboots every few minutes cannot be reached to fix it."""
    from gateway.control import upgrade

    try:
        with upgrade.local_box() as box:
            running = upgrade.running_slot(box.cmdline.read_text(encoding="utf-8"))
            other = upgrade.fallback_slot(box.entries(), running)
    except (upgrade.UpgradeError, OSError) as exc:
        return f"{unhealthy}; cannot tell whether a slot can take over: {exc}"
    if other is not None:
        return f"{unhealthy}; slot {other} takes over after the reboot"
    click.echo(
        f"{unhealthy}; no other slot to fall back to: this boot of slot {running} is kept"
        " and the box stays up (fix it, then `systemctl restart edgegw`)"
    )
    raise click.exceptions.Exit(0)


def main() -> None:
    """Entry point of the ``edgegw`` console script."""
    cli.main(prog_name="edgegw")


if __name__ == "__main__":
    main()
