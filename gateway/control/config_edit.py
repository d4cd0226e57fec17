"""Trunk and partner provisioning: `edgegw trunk|partner add|set|remove|show` edit the running
gateway's config file and apply it live.

Trunks and partners live in the config file, so the gateway (the one process that knows its
file) edits that file and reloads it through :class:`gateway.control.reload.Reloader`. An edit

1. reads the file, which must hold exactly the running config (no edits waiting for
   `edgegw config reload`), and builds the new text: only the ``[[trunks]]`` or
   ``[[partners]]`` table concerned changes, through tomlkit, so the operator's comments and
   layout everywhere else stay byte for byte (a new entry is a new table after the last one);
2. checks the new text with :func:`gateway.config.parse_config` (the rules of
   `edgegw config check`: errors name file, key and reason) and with
   :func:`gateway.control.reload.check_reload` (the change must be one a reload applies);
3. writes it atomically (temporary file in the same directory, fsync, ``os.replace``; same
   mode and owner), the previous text kept as ``FILE.bak``;
4. reloads; when that fails the previous text is put back.

A refused edit writes nothing and the running config stays as it was. Secrets (passwords,
API keys, callback secrets) are never sent back, except a partner key the gateway generated,
once, in the answer to `partner add`.

The file is cut into top-level table blocks by text (a header line, with the comment lines
right above it, up to the next one) rather than edited as one tomlkit document: tomlkit
reorders tables of an array written in several places (``[[trunks]]`` before and after
``[[subscribers]]``), which would move the operator's comments.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec
import tomlkit
import trio

from gateway.config import Config, ConfigError, PartnerConfig, TrunkConfig, parse_config
from gateway.control.diagnostics import mask_secrets
from gateway.control.reload import Reloader, changed_keys, check_reload
from gateway.control.server import CommandRefused, Handler

__all__ = [
    "ConfigEditError",
    "ConfigEditor",
    "TableBlock",
    "add_table",
    "parse_assignments",
    "remove_table",
    "set_table",
    "table_blocks",
]

Section = Literal["trunks", "partners"]

_NOUN: dict[Section, str] = {"trunks": "trunk", "partners": "partner"}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_DEFAULT_HINT = (
    "write the default to a file (`edgegw config default -o FILE`) and start the gateway "
    "with `edgegw run --config FILE`"
)


class ConfigEditError(CommandRefused, ValueError):
    """An edit refused; the message says what was wrong, and that nothing was changed."""


# ---- the file as blocks of text (pure) ---------------------------------------------------


@dataclass(frozen=True)
class TableBlock:
    """The lines ``[start, end)`` of one ``[[section]]`` table: the comment lines right above
    its header, the header, its keys and the blank lines after them."""

    section: str
    start: int
    end: int
    name: str | None


def _header_path(line: str) -> tuple[tuple[str, ...], bool] | None:
    """The key path of a table header line and whether it is ``[[...]]``; None otherwise."""
    if not line.lstrip().startswith("["):
        return None
    try:
        data: Any = tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(data, dict) and len(data) == 1:
        key, data = next(iter(data.items()))
        path.append(key)
        if isinstance(data, list):
            return tuple(path), True
    return (tuple(path), False) if path and data == {} else None


def _parses(lines: list[str]) -> bool:
    try:
        tomllib.loads("".join(lines))
    except tomllib.TOMLDecodeError:
        return False
    return True


def _headers(lines: list[str]) -> Iterator[tuple[int, tuple[str, ...], bool]]:
    """Header lines that really are headers: the text since the previous one must parse on
    its own, so a ``[6]`` inside a multi-line array or string is not taken for one."""
    previous = 0
    for index, line in enumerate(lines):
        found = _header_path(line)
        if found is not None and _parses(lines[previous:index]):
            yield index, found[0], found[1]
            previous = index


def _comment_start(lines: list[str], header: int, floor: int) -> int:
    """The first of the comment lines right above line ``header`` (no blank line between)."""
    start = header
    while start > floor and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    # A comment-looking line that closes a multi-line string above belongs to that string.
    while start < header and not _parses(lines[floor:start]):
        start += 1
    return start


def table_blocks(text: str) -> list[TableBlock]:
    """Every top-level ``[[section]]`` table of a TOML text, in file order (it must parse)."""
    lines = text.splitlines(keepends=True)
    headers = list(_headers(lines))
    starts: list[int] = []
    floor = 0
    for index, _path, _array in headers:
        starts.append(_comment_start(lines, index, floor))
        floor = index + 1
    blocks: list[TableBlock] = []
    for i, (index, path, array) in enumerate(headers):
        if not array or len(path) != 1:
            continue
        end = starts[i + 1] if i + 1 < len(headers) else len(lines)
        entry = tomllib.loads("".join(lines[index:end]))[path[0]][0]
        name = entry.get("name")
        blocks.append(TableBlock(path[0], starts[i], end, name if isinstance(name, str) else None))
    return blocks


def _block_of(text: str, section: str, name: str) -> TableBlock | None:
    return next((b for b in table_blocks(text) if b.section == section and b.name == name), None)


def _render(section: str, fields: dict[str, Any]) -> str:
    table = tomlkit.table()
    for key, value in fields.items():
        table[key] = value
    tables = tomlkit.aot()
    tables.append(table)
    document = tomlkit.document()
    document.append(section, tables)
    return document.as_string()


def add_table(text: str, section: str, fields: dict[str, Any]) -> str:
    """``text`` with a new ``[[section]]`` table of ``fields`` after the last one of its
    section (at the end when there is none); the rest of the text unchanged."""
    lines = text.splitlines(keepends=True)
    same = [block for block in table_blocks(text) if block.section == section]
    at = same[-1].end if same else len(lines)
    before, after = lines[:at], lines[at:]
    if before and not before[-1].endswith(("\n", "\r")):
        before[-1] += "\n"
    gap = ["\n"] if before and before[-1].strip() else []
    trailer = ["\n"] if after else []
    return "".join([*before, *gap, _render(section, fields), *trailer, *after])


def set_table(text: str, section: str, name: str, fields: dict[str, Any]) -> str | None:
    """``text`` with ``fields`` assigned in the ``[[section]]`` table named ``name`` (other
    keys, comments and layout kept); None when there is no such table."""
    block = _block_of(text, section, name)
    if block is None:
        return None
    lines = text.splitlines(keepends=True)
    document = tomlkit.parse("".join(lines[block.start : block.end]))
    table = document[section][0]
    for key, value in fields.items():
        table[key] = value
    return "".join([*lines[: block.start], document.as_string(), *lines[block.end :]])


def remove_table(text: str, section: str, name: str) -> str | None:
    """``text`` without the ``[[section]]`` table named ``name`` (and the comment lines right
    above it); None when there is no such table."""
    block = _block_of(text, section, name)
    if block is None:
        return None
    lines = text.splitlines(keepends=True)
    return "".join([*lines[: block.start], *lines[block.end :]])


def parse_assignments(assignments: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs, each VALUE a TOML value (``true``, ``[6, 6]``, ``"text"``); a VALUE
    that is not TOML is taken as a string, so ``resolve=rfc3263`` needs no quotes."""
    fields: dict[str, Any] = {}
    for assignment in assignments:
        key, equals, value = assignment.partition("=")
        key = key.strip()
        if not equals or not _BARE_KEY.fullmatch(key):
            raise ConfigEditError(f"--set {assignment!r}: write KEY=VALUE, e.g. options_ping=true")
        if key in fields:
            raise ConfigEditError(f"--set {key}: given twice")
        try:
            fields[key] = tomllib.loads(f"value = {value.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            fields[key] = value.strip()
    return fields


# ---- the file on disk --------------------------------------------------------------------


def _write_file(path: Path, data: bytes, like: os.stat_result) -> None:
    """``data`` to ``path`` at once or not at all, with the mode and owner of ``like``."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temp, like.st_mode & 0o7777)
        with contextlib.suppress(PermissionError):  # only root may give a file away
            os.chown(temp, like.st_uid, like.st_gid)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename survives a power cut
    finally:
        os.close(directory)


def _backup_path(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


@dataclass(frozen=True)
class _Planned:
    """A checked edit: the new text and config, and the old bytes to keep."""

    path: Path
    old: bytes
    new: str
    config: Config
    stat: os.stat_result


# ---- the control handlers ----------------------------------------------------------------


class _EditArgs(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    fields: dict[str, Any] = {}
    assignments: list[str] = []


class _NameArgs(msgspec.Struct, forbid_unknown_fields=True):
    name: str


_A = TypeVar("_A", bound=msgspec.Struct)


def _parse_args(kind: type[_A], args: dict[str, Any], command: str) -> _A:
    try:
        return msgspec.convert(args, kind)
    except msgspec.ValidationError as exc:
        raise ConfigEditError(f"bad arguments for {command}: {exc}") from None


class ConfigEditor:
    """The ``trunk add|set|remove|show`` and ``partner add|set|remove|show`` handlers."""

    def __init__(self, reloader: Reloader) -> None:
        self.reloader = reloader
        self._lock = trio.Lock()

    def handlers(self) -> dict[str, Handler]:
        return {
            "trunk add": self.trunk_add,
            "trunk set": self.trunk_set,
            "trunk remove": self.trunk_remove,
            "trunk show": self.trunk_show,
            "partner add": self.partner_add,
            "partner set": self.partner_set,
            "partner remove": self.partner_remove,
            "partner show": self.partner_show,
        }

    @property
    def config(self) -> Config:
        return self.reloader.gateway.config

    # ---- trunks --------------------------------------------------------------------------

    async def trunk_add(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._add("trunks", args)

    async def trunk_set(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._set("trunks", args)

    async def trunk_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._remove("trunks", args)

    async def trunk_show(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._show("trunks", _parse_args(_NameArgs, args, "trunk show").name)

    # ---- partners ------------------------------------------------------------------------

    async def partner_add(self, args: dict[str, Any]) -> dict[str, Any]:
        request = _parse_args(_EditArgs, args, "partner add")
        generated = None
        if "api_key" not in request.fields and not any(
            a.partition("=")[0].strip() == "api_key" for a in request.assignments
        ):
            generated = secrets.token_urlsafe(32)
            request.fields = {"api_key": generated, **request.fields}
        result = await self._add("partners", msgspec.to_builtins(request))
        if generated is not None:
            result["api_key"] = generated  # the one time it is shown
        return result

    async def partner_set(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._set("partners", args)

    async def partner_remove(self, args: dict[str, Any]) -> dict[str, Any]:
        return await self._remove("partners", args)

    async def partner_show(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._show("partners", _parse_args(_NameArgs, args, "partner show").name)

    # ---- the edits -----------------------------------------------------------------------

    async def _add(self, section: Section, args: dict[str, Any]) -> dict[str, Any]:
        noun = _NOUN[section]
        request = _parse_args(_EditArgs, args, f"{noun} add")
        fields = {"name": request.name, **self._fields(request)}

        def edit(text: str, file: str) -> str:
            if _block_of(text, section, request.name) is not None:
                raise ConfigEditError(
                    f"{noun} {request.name!r} already exists in {file}: change it with "
                    f"`edgegw {noun} set`"
                )
            return add_table(text, section, fields)

        return await self._edit(section, request.name, edit)

    async def _set(self, section: Section, args: dict[str, Any]) -> dict[str, Any]:
        noun = _NOUN[section]
        request = _parse_args(_EditArgs, args, f"{noun} set")
        fields = self._fields(request)
        if not fields:
            raise ConfigEditError(f"{noun} set {request.name}: nothing to change")

        def edit(text: str, file: str) -> str:
            new = set_table(text, section, request.name, fields)
            if new is None:
                raise self._unknown(section, request.name, file)
            return new

        return await self._edit(section, request.name, edit)

    async def _remove(self, section: Section, args: dict[str, Any]) -> dict[str, Any]:
        name = _parse_args(_NameArgs, args, f"{_NOUN[section]} remove").name

        def edit(text: str, file: str) -> str:
            new = remove_table(text, section, name)
            if new is None:
                raise self._unknown(section, name, file)
            return new

        result = await self._edit(section, name, edit)
        result["removed"] = True
        return result

    def _show(self, section: Section, name: str) -> dict[str, Any]:
        entry = self._entry(self.config, section, name)
        if entry is None:
            raise self._unknown(section, name, str(self.reloader.path or "the running config"))
        return {**self._view(entry), "file": str(self.reloader.path or "")}

    def _fields(self, request: _EditArgs) -> dict[str, Any]:
        given = parse_assignments(request.assignments)
        if "name" in given or "name" in request.fields:
            raise ConfigEditError("--set name: the name is the NAME argument; it cannot change")
        for key in given:
            if key in request.fields:
                raise ConfigEditError(f"--set {key}: also given as an option")
        return {**request.fields, **given}

    def _unknown(self, section: Section, name: str, file: str) -> ConfigEditError:
        names = ", ".join(entry.name for entry in self._entries(self.config, section))
        return ConfigEditError(
            f"no {_NOUN[section]} {name!r} in {file} ({section}: {names or 'none'})"
        )

    @staticmethod
    def _entries(config: Config, section: Section) -> list[TrunkConfig] | list[PartnerConfig]:
        return config.trunks if section == "trunks" else config.partners

    @classmethod
    def _entry(
        cls, config: Config, section: Section, name: str
    ) -> TrunkConfig | PartnerConfig | None:
        return next((e for e in cls._entries(config, section) if e.name == name), None)

    @staticmethod
    def _view(entry: TrunkConfig | PartnerConfig) -> dict[str, Any]:
        view: dict[str, Any] = mask_secrets(msgspec.to_builtins(entry))
        return view

    async def _edit(
        self, section: Section, name: str, edit: Callable[[str, str], str]
    ) -> dict[str, Any]:
        path = self.reloader.path
        if path is None:
            raise ConfigEditError(
                f"the gateway runs on the embedded default config, which has no file to "
                f"change {section} in: {_DEFAULT_HINT}"
            )
        async with self._lock:
            planned = await trio.to_thread.run_sync(self._plan, path, section, edit)
            backup = _backup_path(planned.path)
            try:
                await trio.to_thread.run_sync(self._publish, planned, backup)
            except OSError as exc:
                raise ConfigEditError(
                    f"cannot write {planned.path}: {exc.strerror or exc}: nothing was changed"
                ) from exc
            try:
                result = await self.reloader.reload()
            except BaseException as exc:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(
                        _write_file, planned.path, planned.old, planned.stat
                    )
                if isinstance(exc, CommandRefused):
                    raise ConfigEditError(f"{exc}; {planned.path} was put back") from exc
                raise
        entry = self._entry(planned.config, section, name)
        return {
            "name": name,
            _NOUN[section]: None if entry is None else self._view(entry),
            "file": str(planned.path),
            "backup": str(backup),
            "changed": result.changed,
        }

    def _plan(self, path: Path, section: Section, edit: Callable[[str, str], str]) -> _Planned:
        """Read, edit and check; raises ConfigEditError before anything is written."""
        real = Path(os.path.realpath(path))  # a symlinked config keeps its link
        file = str(path)
        try:
            stat = real.stat()
            old = real.read_bytes()
            text = old.decode("utf-8")
        except (OSError, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not valid UTF-8"
            raise ConfigEditError(f"cannot read {file}: {reason or exc}") from exc
        running = self.config
        try:
            current = parse_config(text, source=file)
        except ConfigError as exc:
            raise ConfigEditError(f"the config file does not load: {exc}") from exc
        pending = changed_keys(running, current)
        if pending:
            raise ConfigEditError(
                f"{file} has changes the gateway has not applied ({', '.join(pending[:3])}): "
                "apply them with `edgegw config reload`, or undo them, then try again"
            )
        if _inline(text, section, current):
            raise ConfigEditError(
                f"{file}: {section} is written as an inline array: write each entry as a "
                f"[[{section}]] table to change it with edgegw"
            )
        new = edit(text, file)
        try:
            config = parse_config(new, source=file)
        except ConfigError as exc:
            raise ConfigEditError(f"{exc} (nothing was changed)") from exc
        try:
            changed = check_reload(running, config, file)
        except CommandRefused as exc:
            raise ConfigEditError(f"{exc} (nothing was changed)") from exc
        outside = [key for key in changed if not key.startswith(section)]
        if outside:  # cannot happen while the edit touches one table; never write it
            raise ConfigEditError(f"{file}: {outside[0]}: the edit changed more than {section}")
        return _Planned(real, old, new, config, stat)

    @staticmethod
    def _publish(planned: _Planned, backup: Path) -> None:
        _write_file(backup, planned.old, planned.stat)
        _write_file(planned.path, planned.new.encode("utf-8"), planned.stat)


def _inline(text: str, section: str, config: Config) -> bool:
    """Whether the section has entries that are not ``[[section]]`` tables of their own."""
    tables = sum(1 for block in table_blocks(text) if block.section == section)
    return tables != len(getattr(config, section))
