"""Store files at rest: checking a copy of the store, and restoring one into a stopped box.

`edgegw backup` has the running gateway copy its store online (``SqliteStore.backup``) into
a temporary file; :func:`verify_store_file` checks that copy (SQLite's own
``PRAGMA integrity_check``, then that it is an edgegw store of a schema this version
understands) before :func:`publish` renames it into place, so a backup file that exists is
a good one. `edgegw restore` runs while the gateway is stopped: :func:`restore_store` copies
the backup beside the store, checks the copy the same way, keeps the current store as
``<name>.before-restore`` and renames the copy into place. Each step that replaces a file is
a rename, so a failure leaves the old store or the new one, never a mixture.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gateway.config import Config
from gateway.store.sqlite import SCHEMA_VERSION

__all__ = [
    "BEFORE_RESTORE",
    "STORE_FILE",
    "RestoreResult",
    "StoreFileError",
    "StoreFileInfo",
    "publish",
    "restore_store",
    "store_path",
    "verify_store_file",
]

STORE_FILE = "edgegw.sqlite"
"""The store's file name under the var dir (what `gateway.service.Gateway` opens)."""

BEFORE_RESTORE = ".before-restore"
"""Suffix of the store a restore replaced."""

_SQLITE_MAGIC = b"SQLite format 3\x00"
# The tables of schema version 1: every edgegw store has them, whatever its version.
_REQUIRED_TABLES = (
    "schema_version",
    "subscribers",
    "subscriber_numbers",
    "bindings",
    "cdrs",
    "active_calls",
)
# SQLite keeps a WAL-mode database's recent commits in these files beside it.
_SIDE_FILES = ("-wal", "-shm")
_INTEGRITY_MESSAGES = 5


class StoreFileError(Exception):
    """A file that is not a usable edgegw store, or a restore that could not be done."""


@dataclass(frozen=True)
class StoreFileInfo:
    """What a checked store file holds."""

    path: str
    bytes: int
    schema_version: int
    subscribers: int
    accounts: int
    cdrs: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RestoreResult:
    """A restore done: what is in place now, and where the replaced store went."""

    restored: StoreFileInfo
    store: str
    kept: str | None
    earlier_kept: str | None  # an older .before-restore, renamed out of the way

    def as_dict(self) -> dict[str, Any]:
        return {
            "restored": self.restored.as_dict(),
            "store": self.store,
            "kept": self.kept,
            "earlier_kept": self.earlier_kept,
        }


def store_path(config: Config) -> Path:
    """The store file of a gateway running on ``config``."""
    return config.general.var_path / STORE_FILE


def verify_store_file(path: Path) -> StoreFileInfo:
    """Check that ``path`` is an intact edgegw store this version can open.

    Raises StoreFileError naming the file and what is wrong with it: unreadable, not SQLite,
    damaged (the first messages of ``PRAGMA integrity_check``), not an edgegw store, or of a
    newer schema than this edgegw understands. An older schema is fine: the gateway migrates
    it when it opens it.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            magic = handle.read(len(_SQLITE_MAGIC))
        size = path.stat().st_size
    except OSError as exc:
        raise StoreFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if magic != _SQLITE_MAGIC:
        raise StoreFileError(f"{path}: not an edgegw store (not an SQLite database)")
    try:
        conn = sqlite3.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreFileError(f"{path}: cannot open: {exc}") from exc
    try:
        return _inspect(conn, path, size)
    except sqlite3.Error as exc:
        raise StoreFileError(f"{path}: cannot read the database: {exc}") from exc
    finally:
        conn.close()


def _inspect(conn: sqlite3.Connection, path: Path, size: int) -> StoreFileInfo:
    problems = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    if problems != ["ok"]:
        shown = "; ".join(problems[:_INTEGRITY_MESSAGES])
        raise StoreFileError(f"{path}: integrity check failed: {shown}")
    tables = {str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master")}
    missing = [name for name in _REQUIRED_TABLES if name not in tables]
    if missing:
        raise StoreFileError(f"{path}: not an edgegw store (no table {', '.join(missing)})")
    version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    if not isinstance(version, int) or version < 1:
        raise StoreFileError(f"{path}: not an edgegw store (no schema version recorded)")
    if version > SCHEMA_VERSION:
        raise StoreFileError(
            f"{path}: schema version {version} is newer than this edgegw understands "
            f"({SCHEMA_VERSION}): use the edgegw version that wrote it"
        )
    return StoreFileInfo(
        path=str(path),
        bytes=size,
        schema_version=version,
        subscribers=_count(conn, "subscribers"),
        accounts=_count(conn, "accounts") if "accounts" in tables else 0,
        cdrs=_count(conn, "cdrs"),
    )


def _count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(temp: Path, target: Path) -> None:
    """Move the finished file ``temp`` to ``target`` (same directory) so that it survives a
    power cut: the data, then the rename, reach the disk. Raises OSError."""
    _fsync_file(temp)
    os.replace(temp, target)
    _fsync_dir(target.parent)


def _side(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _settle_wal(store: Path) -> None:
    """Fold a WAL left by a crash into the store file, so the file alone is the store."""
    try:
        conn = sqlite3.connect(store, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except sqlite3.Error:
        return  # a damaged old store is kept as it is, side files included (below)


def _keep_old(store: Path) -> tuple[Path, Path | None]:
    """Hard-link the current store to ``<name>.before-restore`` (an older one is renamed
    ``.before-restore.<epoch>``) and move its side files along, so a WAL of the old store can
    never be applied to the restored one."""
    kept = _side(store, BEFORE_RESTORE)
    earlier: Path | None = None
    if kept.exists():
        earlier = _side(kept, f".{int(time.time())}")
        os.replace(kept, earlier)
    try:
        os.link(store, kept)
    except OSError:
        shutil.copy2(store, kept)  # a file system without hard links
    _fsync_file(kept)
    for suffix in _SIDE_FILES:
        side = _side(store, suffix)
        if side.exists():
            os.replace(side, _side(kept, suffix))
    return kept, earlier


def restore_store(backup: Path, store: Path) -> RestoreResult:
    """Put a copy of ``backup`` in place as the store file ``store`` (the gateway stopped).

    The copy is checked (:func:`verify_store_file`) before anything is replaced; the
    current store, if any, is kept as ``<store>.before-restore``. Raises StoreFileError.
    """
    backup, store = Path(backup), Path(store)
    if backup.resolve() == store.resolve():
        raise StoreFileError(f"{backup}: is the store itself; restore from a backup copy")
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreFileError(f"{store.parent}: cannot create: {exc.strerror or exc}") from exc
    temp = store.with_name(f".{store.name}.restore-{secrets.token_hex(4)}.tmp")
    try:
        try:
            shutil.copyfile(backup, temp)
            os.chmod(temp, 0o600)
        except OSError as exc:
            raise StoreFileError(
                f"cannot copy {backup} to {store.parent}: {exc.strerror or exc}"
            ) from exc
        try:
            info = verify_store_file(temp)
        except StoreFileError as exc:  # name the file the operator gave, not our copy
            raise StoreFileError(str(exc).replace(str(temp), str(backup))) from None
        kept: Path | None = None
        earlier: Path | None = None
        try:
            if store.exists():
                _settle_wal(store)
                kept, earlier = _keep_old(store)
            publish(temp, store)
        except OSError as exc:
            raise StoreFileError(f"cannot replace {store}: {exc.strerror or exc}") from exc
    finally:
        temp.unlink(missing_ok=True)
    restored = StoreFileInfo(
        path=str(backup),
        bytes=info.bytes,
        schema_version=info.schema_version,
        subscribers=info.subscribers,
        accounts=info.accounts,
        cdrs=info.cdrs,
    )
    return RestoreResult(
        restored=restored,
        store=str(store),
        kept=None if kept is None else str(kept),
        earlier_kept=None if earlier is None else str(earlier),
    )
