"""Retention: the gateway's own files on disk kept within size and age limits.

Three places are kept in bounds, each a single directory (never its subdirectories):

* ``<var_dir>/captures``: pcaps of ``edgegw capture``; ``general.capture_max_mb`` and
  ``general.capture_max_age_days``. A capture still being written is never deleted.
* ``<var_dir>/exports``: CDR exports written there (``edgegw cdr export --to-var``, or an
  ``--output`` inside it); ``general.export_max_mb`` and ``general.export_max_age_days``.
  The CDRs themselves live in the store and are never touched: these files are copies.
* the directory of ``general.log_file``: its rotated files ``FILE.1``, ``FILE.2`` ... older
  than ``general.log_max_age_days``; never the live ``FILE``, never any other file.

A limit of 0 means no limit. Over the size limit the oldest files go first (by mtime).

The planner (:func:`plan`) is pure: a listing, the limits and the time in, the files to
delete out. The I/O is two small functions around it (:func:`scan_directory`,
:func:`prune_directory`) working through a descriptor of the directory, so what is listed
and what is deleted are names in that one directory; symbolic links are neither followed
nor deleted. :class:`Retention` is the Trio task of the service: a pass at start, then one
a minute; deletions are logged, errors are logged and never fatal, ``edgegw status`` shows
the use of captures and exports and the last pass.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog
import trio

from gateway.config import GeneralConfig

__all__ = [
    "INTERVAL",
    "Deletion",
    "FileEntry",
    "Limits",
    "Place",
    "PlaceResult",
    "Plan",
    "Retention",
    "plan",
    "prune_directory",
    "rotated_log_names",
    "scan_directory",
]

log = structlog.get_logger("edgegw.retention")

INTERVAL = 60.0
DAY = 86400.0
MB = 1024 * 1024
# A file changed this recently may be one a capture or an export has just opened (after
# the pass looked at which are running): it waits for the next pass.
FRESH = 2.0
# write_atomically (cli.py) and mkstemp name their temporary files ".NAME.xxx.tmp": one
# is an export in progress until it is this old, then the leftover of a crash.
STALE_TEMP = 3600.0
# Names of deleted files kept for status.
_SHOWN = 20


# ---- the planner (sans-IO) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One name in a directory as listed, without following a symbolic link."""

    name: str
    size: int
    mtime: float
    running: bool = False  # a capture still being written to it
    regular: bool = True  # a regular file (not a link, directory, socket ...)


@dataclass(frozen=True, slots=True)
class Limits:
    """Total size and age limits of one directory; 0 is no limit."""

    max_bytes: int = 0
    max_age: float = 0.0  # seconds

    @classmethod
    def of(cls, max_mb: int, max_age_days: float) -> Limits:
        return cls(max_bytes=max_mb * MB, max_age=max_age_days * DAY)


@dataclass(frozen=True, slots=True)
class Deletion:
    entry: FileEntry
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What a pass deletes, and the directory's counted use before and after."""

    delete: tuple[Deletion, ...]
    files: int
    total_bytes: int

    @property
    def kept_bytes(self) -> int:
        return self.total_bytes - sum(d.entry.size for d in self.delete)


def _plain_name(name: str) -> bool:
    # A listing only ever holds names of the directory itself: anything else is not ours.
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


def _in_use(entry: FileEntry, now: float) -> bool:
    if entry.running or entry.mtime > now - FRESH:
        return True
    return entry.name.startswith(".") and entry.mtime > now - STALE_TEMP


def plan(
    entries: Iterable[FileEntry],
    limits: Limits,
    now: float,
    *,
    keep: Collection[str] = (),
    select: Callable[[str], bool] | None = None,
) -> Plan:
    """The files of a directory listing to delete under ``limits`` at time ``now``.

    Counted: regular files with a plain name, not in ``keep`` and taken by ``select`` (all
    when None). Files in use (running, changed in the last FRESH seconds, or a fresh
    temporary file) count toward the size but are never deleted. The rest, oldest first:
    older than ``max_age`` goes; then while the total is over ``max_bytes``, the oldest goes.
    """
    counted = [
        e
        for e in entries
        if e.regular
        and _plain_name(e.name)
        and e.name not in keep
        and (select is None or select(e.name))
    ]
    total = sum(e.size for e in counted)
    remaining = total
    deletions: list[Deletion] = []
    for entry in sorted(counted, key=lambda e: (e.mtime, e.name)):
        if _in_use(entry, now):
            continue
        if limits.max_age and now - entry.mtime > limits.max_age:
            reason = f"older than {limits.max_age / DAY:g} days"
        elif limits.max_bytes and remaining > limits.max_bytes:
            reason = f"total over {limits.max_bytes / MB:g} MB"
        else:
            continue
        deletions.append(Deletion(entry, reason))
        remaining -= entry.size
    return Plan(tuple(deletions), len(counted), total)


def rotated_log_names(log_name: str) -> Callable[[str], bool]:
    """Selects ``LOG.1``, ``LOG.2`` ... (what RotatingFileHandler renames ``LOG`` to)."""
    pattern = re.compile(re.escape(log_name) + r"\.[0-9]+")
    return lambda name: pattern.fullmatch(name) is not None


# ---- the I/O around it -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    """One directory to keep in bounds."""

    label: str
    directory: Path
    limits: Limits
    running: frozenset[str] = frozenset()  # names of files still being written
    keep: frozenset[str] = frozenset()
    select: Callable[[str], bool] | None = None


@dataclass(frozen=True, slots=True)
class PlaceResult:
    """What a pass did to one place: its use after, what it deleted, what failed."""

    label: str
    directory: Path
    files: int
    bytes: int
    deleted: tuple[Deletion, ...]
    errors: tuple[str, ...]


def scan_directory(dir_fd: int, running: Collection[str]) -> list[FileEntry]:
    """The names in the directory open as ``dir_fd``, each as lstat sees it. Raises OSError."""
    entries = []
    with os.scandir(dir_fd) as listing:
        for item in listing:
            try:
                info = item.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone since the listing
            entries.append(
                FileEntry(
                    name=item.name,
                    size=info.st_size,
                    mtime=info.st_mtime,
                    running=item.name in running,
                    regular=stat.S_ISREG(info.st_mode),
                )
            )
    return entries


def _unchanged(dir_fd: int, entry: FileEntry) -> bool:
    # The name may have been replaced since the scan (an export renamed over it): the
    # decision was about the file listed, so a different one is left alone.
    info = os.lstat(entry.name, dir_fd=dir_fd)
    return (
        stat.S_ISREG(info.st_mode) and info.st_size == entry.size and info.st_mtime == entry.mtime
    )


def prune_directory(place: Place, now: float) -> PlaceResult:
    """Scan ``place``, plan and delete; an error is reported in the result, never raised."""
    errors: list[str] = []
    deleted: list[Deletion] = []
    try:
        dir_fd = os.open(place.directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return PlaceResult(place.label, place.directory, 0, 0, (), ())
    except OSError as exc:
        error = f"cannot open {place.directory}: {exc.strerror or exc}"
        return PlaceResult(place.label, place.directory, 0, 0, (), (error,))
    try:
        entries = scan_directory(dir_fd, place.running)
        decided = plan(entries, place.limits, now, keep=place.keep, select=place.select)
        remaining = decided.total_bytes
        for deletion in decided.delete:
            name = deletion.entry.name
            try:
                if _unchanged(dir_fd, deletion.entry):
                    os.unlink(name, dir_fd=dir_fd)
                    deleted.append(deletion)
                    remaining -= deletion.entry.size
            except FileNotFoundError:
                remaining -= deletion.entry.size  # someone else removed it
            except OSError as exc:
                errors.append(f"cannot delete {place.directory / name}: {exc.strerror or exc}")
        files = decided.files - len(deleted)
    except OSError as exc:
        errors.append(f"cannot list {place.directory}: {exc.strerror or exc}")
        files, remaining = 0, 0
    finally:
        os.close(dir_fd)
    return PlaceResult(
        place.label, place.directory, files, remaining, tuple(deleted), tuple(errors)
    )


def _prune_all(places: list[Place], now: float) -> list[PlaceResult]:
    for place in places:
        # Made here so status shows them and `cdr export --to-var` has somewhere to write;
        # one that cannot be made has nothing in it to prune.
        with contextlib.suppress(OSError):
            place.directory.mkdir(parents=True, exist_ok=True)
    return [prune_directory(place, now) for place in places]


# ---- the task of the service -------------------------------------------------------------


class CaptureListing(Protocol):
    """What retention needs of the captures (gateway.control.capture.CaptureRegistry)."""

    def list(self) -> list[dict[str, Any]]: ...


@dataclass
class _Pass:
    time: float
    deleted: list[str] = field(default_factory=list)
    freed: int = 0
    errors: list[str] = field(default_factory=list)


class Retention:
    """Prunes captures, exports and rotated logs at start and every ``interval`` seconds.

    ``general`` gives the current ``[general]`` config (read at each pass, so a reload that
    changes a limit is seen); ``var_dir`` is the gateway's var dir.
    """

    def __init__(
        self,
        general: Callable[[], GeneralConfig],
        var_dir: Path,
        captures: CaptureListing,
        *,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._general = general
        self.captures_dir = var_dir.absolute() / "captures"
        self.exports_dir = var_dir.absolute() / "exports"
        self._captures = captures
        self._interval = interval
        self._clock = clock
        self._use: dict[str, PlaceResult] = {}
        self._last: _Pass | None = None
        self.deleted_total = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """A pass, then ``started``; then a pass every interval until cancelled."""
        await self._pass_logged()
        task_status.started()
        while True:
            await trio.sleep(self._interval)
            await self._pass_logged()

    async def _pass_logged(self) -> None:
        try:
            await self.prune()
        except Exception:
            # Housekeeping: whatever goes wrong here must not take calls down with it.
            log.exception("retention pass failed")

    async def prune(self) -> list[PlaceResult]:
        """One pass over the three places; logs what it deleted and what failed."""
        general = self._general()
        now = self._clock()
        results = []
        logs = self._log_place(general)
        if logs is not None:
            # On the event loop: the log's own rotation runs there, so the two never meet.
            results.append(prune_directory(logs, now))
        places = self._data_places(general, self._running())  # the registry is the loop's
        results += await trio.to_thread.run_sync(_prune_all, places, now)
        self._record(now, results)
        return results

    def _data_places(self, general: GeneralConfig, running: frozenset[str]) -> list[Place]:
        return [
            Place(
                "captures",
                self.captures_dir,
                Limits.of(general.capture_max_mb, general.capture_max_age_days),
                running=running,
            ),
            Place(
                "exports",
                self.exports_dir,
                Limits.of(general.export_max_mb, general.export_max_age_days),
            ),
        ]

    def _running(self) -> frozenset[str]:
        names = set()
        for capture in self._captures.list():
            path = Path(str(capture.get("file", ""))).absolute()
            if capture.get("state") == "running" and path.parent == self.captures_dir:
                names.add(path.name)
        return frozenset(names)

    @staticmethod
    def _log_place(general: GeneralConfig) -> Place | None:
        if not general.log_file or not general.log_max_age_days:
            return None
        path = Path(general.log_file)
        return Place(
            "logs",
            path.parent,
            Limits.of(0, general.log_max_age_days),
            keep=frozenset({path.name}),
            select=rotated_log_names(path.name),
        )

    def _record(self, now: float, results: list[PlaceResult]) -> None:
        done = _Pass(now)
        for result in results:
            self._use[result.label] = result
            for deletion in result.deleted:
                path = result.directory / deletion.entry.name
                log.info(
                    "retention deleted a file",
                    place=result.label,
                    file=str(path),
                    bytes=deletion.entry.size,
                    reason=deletion.reason,
                )
                done.deleted.append(str(path))
                done.freed += deletion.entry.size
            for error in result.errors:
                log.error("retention could not prune", place=result.label, error=error)
                done.errors.append(error)
        self.deleted_total += len(done.deleted)
        self._last = done

    def snapshot(self) -> dict[str, Any]:
        """For ``edgegw status``: use and limits of captures and exports, and the last pass."""
        general = self._general()
        limits = {
            "captures": (self.captures_dir, general.capture_max_mb, general.capture_max_age_days),
            "exports": (self.exports_dir, general.export_max_mb, general.export_max_age_days),
        }
        shown: dict[str, Any] = {}
        for label, (directory, max_mb, max_days) in limits.items():
            use = self._use.get(label)
            shown[label] = {
                "dir": str(directory),
                "files": None if use is None else use.files,
                "mb": None if use is None else round(use.bytes / MB, 3),
                "max_mb": max_mb,
                "max_age_days": max_days,
            }
        last = self._last
        shown["last_pruning"] = {
            "time": None if last is None else last.time,
            "deleted": None if last is None else len(last.deleted),
            "freed_mb": None if last is None else round(last.freed / MB, 3),
            "deleted_files": [] if last is None else last.deleted[-_SHOWN:],
            "errors": [] if last is None else last.errors,
        }
        shown["deleted_total"] = self.deleted_total
        return shown

    def handlers(self) -> dict[str, Callable[[dict[str, Any]], Awaitable[Any]]]:
        """Control-socket command ``retention``: the snapshot (with the directories)."""
        return {"retention": self._handle}

    async def _handle(self, args: dict[str, Any]) -> dict[str, Any]:
        return self.snapshot()
