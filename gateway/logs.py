"""Structured logs (structlog) to stderr: console lines, JSON objects, or journald lines.

* ``console``: for a person at a terminal.
* ``json``: one JSON object per line (a traceback is one escaped string field), with
  ``event``, ``level``, ``timestamp`` and the event's keys. Every call event carries the
  call's id under ``call``, so ``grep <id>`` follows a call across both legs.
* ``journald``: for a systemd service whose stderr goes to the journal. python-systemd
  (``systemd.journal``) is not a dependency, so instead of native journal fields each
  event is one line prefixed with its sd-daemon priority (``<6>`` info, ``<4>`` warning,
  ``<3>`` error, ``<7>`` debug: sd-daemon(3)); journald's ``SyslogLevelPrefix=`` (on by
  default) turns the prefix into the entry's PRIORITY. The rest is ``key=value`` pairs
  with values quoted like Python literals, so a traceback stays on its line, and no
  timestamp (the journal stamps each line).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["JOURNALD_PRIORITIES", "configure_logging", "journald_renderer"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}

# sd-daemon(3): SD_CRIT "<2>", SD_ERR "<3>", SD_WARNING "<4>", SD_INFO "<6>", SD_DEBUG "<7>".
JOURNALD_PRIORITIES = {
    "critical": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "info": 6,
    "debug": 7,
}

_KEY_VALUE = structlog.processors.KeyValueRenderer(key_order=["event"], drop_missing=True)


def journald_renderer(logger: Any, method: str, event: MutableMapping[str, Any]) -> str:
    """One journald line: ``<priority>event='...' key=value ...`` (see the module doc)."""
    level = str(event.pop("level", method))
    priority = JOURNALD_PRIORITIES.get(level, 6)
    return f"<{priority}>{_KEY_VALUE(logger, method, event)}"


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if fmt == "json":
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    elif fmt == "journald":
        processors += [structlog.processors.format_exc_info, journald_renderer]
    else:
        processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
