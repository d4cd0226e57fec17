"""The gateway's use of its disk: its own log file rotated by size, and the low-disk flag.

* ``open_log_file`` adds ``general.log_file`` beside whatever structlog already writes to
  (stderr, or what gateway.logs configured): every rendered line goes to both. The file is a
  ``logging.handlers.RotatingFileHandler``: at ``general.log_max_bytes`` it is renamed to
  ``FILE.1`` (``FILE.1`` to ``FILE.2``, ...) and ``general.log_backups`` old files are kept,
  so the log never takes more than ``(backups + 1) * max_bytes``.
* ``DiskMonitor`` says whether the var dir's filesystem has less than
  ``general.disk_reserve_mb`` free (``shutil.disk_usage``). Packet captures ask
  ``disk_low()`` before they write and stop when it is true: captures are the first thing
  to give up disk. CDRs never ask: a call's record is written whatever the free space
  (DESIGN rule 5); the reserve is what keeps room for them. ``edgegw status`` shows the flag.
"""

from __future__ import annotations

import logging
import logging.handlers
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from gateway.config import GeneralConfig

__all__ = ["DiskMonitor", "LogFileError", "open_log_file"]

log = structlog.get_logger("edgegw.disk")

# statvfs is cheap, but captures may ask for every packet: one look per second is plenty.
CHECK_INTERVAL = 1.0
_MB = 1024 * 1024


class LogFileError(OSError):
    """``general.log_file`` cannot be opened for appending; the message names it."""


class _TeeLogger:
    """A structlog logger writing each rendered line to the logger it wraps and to a file."""

    def __init__(self, inner: Any, handler: logging.Handler) -> None:
        self._inner = inner
        self._handler = handler

    def __getattr__(self, method: str) -> Callable[..., None]:
        forward = getattr(self._inner, method)

        def write(message: Any, *args: Any, **kwargs: Any) -> None:
            forward(message, *args, **kwargs)
            record = logging.LogRecord("edgegw", logging.INFO, "", 0, str(message), None, None)
            self._handler.handle(record)

        return write


def open_log_file(general: GeneralConfig) -> logging.Handler | None:
    """Tee structlog's output into ``general.log_file`` (None when it is empty); the handler,
    for closing. Call after gateway.logs.configure_logging. Raises LogFileError."""
    if not general.log_file:
        return None
    path = Path(general.log_file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=general.log_max_bytes, backupCount=general.log_backups, encoding="utf-8"
        )
    except OSError as exc:
        raise LogFileError(f"general.log_file: cannot open {path}: {exc.strerror or exc}") from exc
    handler.setFormatter(logging.Formatter("%(message)s"))
    inner_factory = structlog.get_config()["logger_factory"]

    def factory(*args: Any) -> _TeeLogger:
        return _TeeLogger(inner_factory(*args), handler)

    structlog.configure(logger_factory=factory)
    return handler


class DiskMonitor:
    """Whether the filesystem holding ``path`` has less than ``reserve_mb`` MiB free."""

    def __init__(
        self,
        path: Path,
        reserve_mb: int,
        *,
        interval: float = CHECK_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        usage: Callable[[Path], Any] = shutil.disk_usage,
    ) -> None:
        self.path = path
        self.reserve_mb = reserve_mb
        self.free_bytes: int | None = None
        self._interval = interval
        self._clock = clock
        self._usage = usage
        self._checked_at = -float("inf")
        self._low = False

    def disk_low(self) -> bool:
        """True while free space is under the reserve; looks at the disk at most once per
        interval. A filesystem that cannot be asked about counts as low."""
        now = self._clock()
        if now - self._checked_at >= self._interval:
            self._checked_at = now
            self._set_low(self._measure())
        return self._low

    def set_reserve(self, reserve_mb: int) -> None:
        """Take a new reserve (config reload) and look again at once."""
        self.reserve_mb = reserve_mb
        self._checked_at = -float("inf")

    def snapshot(self) -> dict[str, Any]:
        low = self.disk_low()
        free = None if self.free_bytes is None else round(self.free_bytes / _MB, 1)
        return {"disk_low": low, "disk_free_mb": free, "disk_reserve_mb": self.reserve_mb}

    def _measure(self) -> bool:
        try:
            self.free_bytes = int(self._usage(self.path).free)
        except OSError as exc:
            log.error("cannot read free disk space", path=str(self.path), error=str(exc))
            self.free_bytes = None
            return True
        return self.free_bytes < self.reserve_mb * _MB

    def _set_low(self, low: bool) -> None:
        if low and not self._low:
            log.warning(
                "disk nearly full: captures stop, CDRs are still written",
                path=str(self.path),
                free_mb=None if self.free_bytes is None else self.free_bytes // _MB,
                reserve_mb=self.reserve_mb,
            )
        elif self._low and not low:
            log.info("disk space back above the reserve", path=str(self.path))
        self._low = low
