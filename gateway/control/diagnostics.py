"""`edgegw diag bundle`: one .tar.gz with what a field engineer's escalation needs.

The bundle holds the effective config with every secret masked, recent logs, the gateway's
status, its calls in progress and its recent CDRs (JSON), the network state (`ip -j` output)
and versions, plus a README saying what is in it and what is missing and why. The live parts
come over the control socket; when the gateway is not running the bundle is still made, from
the config file and the store file on disk, and the README says so.

Secrets never leave the gateway: it masks its own config (the ``diag config`` control
command) before answering, and the CLI masks a config it reads itself the same way.

The bundle is built in steps (:func:`bundle_steps`) so the CLI can show a progress bar; it
is written to a temporary file and renamed into place, readable by its owner only (it holds
phone numbers and addresses).
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import platform
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec

from gateway import __version__
from gateway.config import Config
from gateway.control.client import ControlError, GatewayNotRunning
from gateway.control.server import Handler
from gateway.store.backup import publish, store_path
from gateway.store.model import Cdr

__all__ = [
    "MASK",
    "RECENT_CDRS",
    "Bundle",
    "GatewayLink",
    "bundle_steps",
    "default_bundle_name",
    "diagnostics_handlers",
    "log_file_of",
    "mask_secrets",
    "write_bundle",
]

MASK = "***"
RECENT_CDRS = 1000
# The tail of a log file that goes in; older lines are the log rotation's business.
LOG_TAIL_BYTES = 8 * 1024 * 1024
_COMMAND_TIMEOUT = 5.0
# Config keys whose values are secrets, wherever they appear (subscribers, trunks, partners).
_SECRET_KEYS = frozenset({"password", "api_key", "callback_secret"})
_NETWORK_COMMANDS = {
    "ip-addr.json": ("ip", "-j", "addr"),
    "ip-route.json": ("ip", "-j", "route", "show", "table", "all"),
    "ip-route6.json": ("ip", "-j", "-6", "route", "show", "table", "all"),
    "ip-rule.json": ("ip", "-j", "rule"),
    "ip-rule6.json": ("ip", "-j", "-6", "rule"),
}
_PACKAGES = (
    "trio",
    "msgspec",
    "click",
    "rich",
    "structlog",
    "cffi",
    "pylibsrtp",
    "cryptography",
    "pyroute2",
    "hypercorn",
    "starlette",
    "httpx",
    "prometheus-client",
    "dnspython",
)


def mask_secrets(value: Any) -> Any:
    """A copy of a JSON-like tree with every non-empty secret value replaced by ``***``."""
    if isinstance(value, dict):
        return {
            key: MASK if key in _SECRET_KEYS and item not in ("", None) else mask_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(item) for item in value]
    return value


def log_file_of(config: Config) -> str:
    """The gateway's log file, "" when it logs to stderr/journald only."""
    # Read by name: the log-file key belongs to the logging work and may not exist yet.
    return str(getattr(config.general, "log_file", "") or "")


def diagnostics_handlers(current: Callable[[], Config]) -> dict[str, Handler]:
    """The gateway's side: its effective config (``current()``: a reload replaces it),
    masked, and where it logs."""

    async def diag_config(args: dict[str, Any]) -> dict[str, Any]:
        config = current()
        return {
            "config": mask_secrets(msgspec.to_builtins(config)),
            "log_file": _absolute(log_file_of(config)),
            "var_dir": str(config.general.var_path.resolve()),
            "pid": os.getpid(),
        }

    return {"diag config": diag_config}


def _absolute(path: str) -> str:
    return str(Path(path).resolve()) if path else ""


class GatewayLink(Protocol):
    """What the bundle needs of the control client (`ControlClient` is one)."""

    def call(self, cmd: str, **args: Any) -> Any: ...


@dataclass
class Bundle:
    """The files of a bundle being built, and the README's notes about them."""

    config: Config
    config_source: str
    link: GatewayLink | None
    files: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    log_file: str = ""

    def add_json(self, name: str, value: Any) -> None:
        self.files[name] = json.dumps(value, indent=2, ensure_ascii=False).encode() + b"\n"

    def ask(self, cmd: str, **args: Any) -> Any | None:
        """The gateway's answer, or None (with a note) when it cannot give one."""
        if self.link is None:
            return None
        try:
            return self.link.call(cmd, **args)
        except GatewayNotRunning as exc:
            self.notes.append(f"{cmd}: {exc}; the rest comes from files on disk")
            self.link = None
        except ControlError as exc:
            self.notes.append(f"{cmd}: the gateway answered with an error: {exc}")
        return None


def bundle_steps(bundle: Bundle) -> list[tuple[str, Callable[[Bundle], None]]]:
    """The steps that fill ``bundle``, each with a label for a progress bar."""
    return [
        ("gateway status", _status_step),
        ("effective config", _config_step),
        ("calls in progress", _calls_step),
        ("recent CDRs", _cdr_step),
        ("logs", _log_step),
        ("network state", _network_step),
        ("versions", _versions_step),
    ]


def _status_step(bundle: Bundle) -> None:
    status = bundle.ask("status")
    if status is None:
        if bundle.link is None:
            bundle.notes.append("gateway not running: no live status, calls or config")
        return
    bundle.add_json("status.json", status)


def _config_step(bundle: Bundle) -> None:
    answer = bundle.ask("diag config")
    if isinstance(answer, dict) and "config" in answer:
        bundle.add_json("config.json", mask_secrets(answer["config"]))
        bundle.log_file = str(answer.get("log_file") or "")
        bundle.notes.append("config.json: the running gateway's effective config, secrets masked")
        return
    bundle.add_json("config.json", mask_secrets(msgspec.to_builtins(bundle.config)))
    bundle.log_file = _absolute(log_file_of(bundle.config))
    bundle.notes.append(f"config.json: read from {bundle.config_source}, secrets masked")


def _calls_step(bundle: Bundle) -> None:
    calls = bundle.ask("calls")
    if calls is not None:
        bundle.add_json("calls.json", calls)


def _cdr_step(bundle: Bundle) -> None:
    cdrs = bundle.ask("cdr", limit=RECENT_CDRS)
    if cdrs is not None:
        bundle.add_json("cdrs.json", cdrs)
        return
    path = store_path(bundle.config)
    try:
        rows = _stored_cdrs(path)
    except (sqlite3.Error, OSError) as exc:
        bundle.notes.append(f"cdrs.json: none: cannot read the store file {path}: {exc}")
        return
    bundle.add_json("cdrs.json", rows)
    bundle.notes.append(f"cdrs.json: the last {len(rows)} CDRs, read from the store file {path}")


def _stored_cdrs(path: Path) -> list[dict[str, Any]]:
    """The newest CDRs of a store file, read-only (the gateway is not running)."""
    if not path.is_file():
        raise FileNotFoundError(f"no store file at {path}")
    lists = {f.name for f in _cdr_fields() if isinstance(f.type, msgspec.inspect.ListType)}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        cursor = conn.execute(
            "SELECT * FROM cdrs ORDER BY start DESC, seq DESC LIMIT ?", (RECENT_CDRS,)
        )
        names = [column[0] for column in cursor.description]
        rows = cursor.fetchall()
    finally:
        conn.close()
    result: list[dict[str, Any]] = []
    for row in rows:
        record = {name: value for name, value in zip(names, row, strict=True) if name != "seq"}
        for name in lists & record.keys():
            record[name] = json.loads(str(record[name]))
        result.append(record)
    return result


def _cdr_fields() -> tuple[msgspec.inspect.Field, ...]:
    info = msgspec.inspect.type_info(Cdr)
    assert isinstance(info, msgspec.inspect.StructType)
    return info.fields


def _log_step(bundle: Bundle) -> None:
    if not bundle.log_file:
        bundle.notes.append(
            "logs: none: the gateway logs to stderr only (journald or the terminal that ran "
            "it); see `journalctl -u edgegw` there"
        )
        return
    path = Path(bundle.log_file)
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(0, size - LOG_TAIL_BYTES))
            tail = handle.read()
    except OSError as exc:
        bundle.notes.append(f"logs: cannot read {path}: {exc.strerror or exc}")
        return
    bundle.files[f"logs/{path.name}"] = tail
    cut = " (its last 8 MiB)" if size > LOG_TAIL_BYTES else ""
    bundle.notes.append(f"logs/{path.name}: {path}{cut}")


def _network_step(bundle: Bundle) -> None:
    if shutil.which("ip") is None:
        bundle.notes.append("network: none: the `ip` command (iproute2) is not installed")
        return
    for name, command in _NETWORK_COMMANDS.items():
        try:
            done = subprocess.run(
                command, capture_output=True, timeout=_COMMAND_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            bundle.notes.append(f"network/{name}: `{' '.join(command)}` failed: {exc}")
            continue
        if done.returncode != 0:
            error = done.stderr.decode(errors="replace").strip()
            bundle.notes.append(f"network/{name}: `{' '.join(command)}` failed: {error}")
            continue
        bundle.files[f"network/{name}"] = done.stdout


def _versions_step(bundle: Bundle) -> None:
    packages: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    bundle.add_json(
        "versions.json",
        {
            "edgegw_cli": __version__,
            "python": sys.version,
            "platform": platform.platform(),
            "machine": platform.machine(),
            "sqlite": sqlite3.sqlite_version,
            "packages": packages,
        },
    )


def _readme(bundle: Bundle, made: float) -> bytes:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(made))
    live = "running" if "status.json" in bundle.files else "not running (or not answering)"
    lines = [
        "edgegw diagnostic bundle",
        "",
        f"made: {stamp} on {socket.gethostname()} by edgegw {__version__}",
        f"gateway: {live}",
        "secrets (passwords, API keys, callback secrets) are masked as ***",
        "",
        "files:",
        *(f"  {name}" for name in sorted(bundle.files)),
        "",
        "notes:",
        *(f"  - {note}" for note in bundle.notes),
    ]
    return ("\n".join(lines) + "\n").encode()


def default_bundle_name(now: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return f"edgegw-diag-{socket.gethostname()}-{stamp}.tar.gz"


def _members(bundle: Bundle, top: str, made: float) -> Iterator[tuple[tarfile.TarInfo, bytes]]:
    files = {"README.txt": _readme(bundle, made), **bundle.files}
    for name, data in files.items():
        info = tarfile.TarInfo(f"{top}/{name}")
        info.size = len(data)
        info.mtime = int(made)
        info.mode = 0o600
        yield info, data


def write_bundle(bundle: Bundle, output: Path, made: float) -> int:
    """Write the bundle as ``output`` (a .tar.gz, atomically, mode 0600); its size in bytes.

    Raises OSError."""
    top = output.name.removesuffix(".tar.gz").removesuffix(".tgz") or "edgegw-diag"
    temp = output.with_name(f".{output.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for info, data in _members(bundle, top, made):
                tar.addfile(info, io.BytesIO(data))
        publish(temp, output)
    finally:
        temp.unlink(missing_ok=True)
    return output.stat().st_size
