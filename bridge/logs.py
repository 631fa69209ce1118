"""Structured log lines: ``logger message key=value ...``, for journald or for a terminal.

Under systemd, stdout goes to the journal, which reads a ``<N>`` prefix on each line as the
syslog priority (sd-daemon(3)) and adds its own timestamps::

    <6>poller meter=m1 event=connected host=127.0.0.1:4061
    <4>mqtt event=disconnected reason="connection refused"

On a terminal the same line gets a timestamp and a level name instead::

    2024-05-01 12:00:00.123 INFO    poller meter=m1 event=connected host=127.0.0.1:4061

Fields come from ``extra={...}`` (any attribute a standard :class:`logging.LogRecord` does not
have), from a :class:`logging.LoggerAdapter`'s ``extra``, and from :func:`log_event`. Values are
quoted logfmt-style when they contain spaces, quotes, ``=`` or control characters, so every record
stays on one line (a traceback is the exception: it follows on lines of its own, each with the
record's priority prefix so the journal keeps them together at the right level).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = [
    "FIELDS_ATTR",
    "LogfmtFormatter",
    "format_value",
    "log_event",
    "setup_logging",
    "syslog_priority",
]

#: LogRecord attribute holding the fields given to :func:`log_event`. One dict attribute rather
#: than one attribute per field, so a field may be called ``name`` or ``module``.
FIELDS_ATTR = "dlms_fields"

#: Logger names under this prefix are shown without it: ``bridge.poller`` -> ``poller``.
_NAME_PREFIX = "bridge."

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
#: The log level names accepted everywhere (config and command line), lowest first.
LEVEL_NAMES = tuple(_LEVELS)

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime", FIELDS_ATTR}


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level: 2 crit, 3 err, 4 warning, 6 info, 7 debug."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def _needs_quotes(text: str) -> bool:
    if not text:
        return True
    return any(ch in ' ="\\' or not ch.isprintable() for ch in text)


def format_value(value: Any) -> str:
    """Render a field value for logfmt: bare if it can be, else a double-quoted string."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex() or '""'
    if isinstance(value, BaseException):
        message = str(value)
        text = f"{type(value).__name__}: {message}" if message else type(value).__name__
    else:
        text = str(value)
    # JSON string escaping is logfmt's quoting: \" \\ \n \t and \u00XX for other controls.
    return json.dumps(text, ensure_ascii=False) if _needs_quotes(text) else text


def _format_key(key: str) -> str:
    cleaned = "".join(ch if ch.isprintable() and ch not in ' ="\\' else "_" for ch in key)
    return cleaned or "_"


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = {
        key: value for key, value in vars(record).items() if key not in _STANDARD_ATTRS
    }
    fields.update(getattr(record, FIELDS_ATTR, None) or {})
    return fields


class LogfmtFormatter(logging.Formatter):
    """Renders ``[<N>][time LEVEL ]logger message key=value ...`` (see the module docstring).

    ``journald_prefix`` adds the ``<N>`` priority prefix to every line; ``timestamps`` adds the
    local time and level name (for terminals; the journal has its own).
    """

    def __init__(self, *, journald_prefix: bool, timestamps: bool = False) -> None:
        super().__init__()
        self.journald_prefix = journald_prefix
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        if name.startswith(_NAME_PREFIX):
            name = name[len(_NAME_PREFIX) :]
        parts = [name or "root"]
        message = record.getMessage()
        if message:
            # A message is free text, but a record must stay on one line.
            parts.append(message.replace("\r", "\\r").replace("\n", "\\n"))
        parts.extend(
            f"{_format_key(key)}={format_value(value)}"
            for key, value in _record_fields(record).items()
        )
        line = " ".join(parts)
        if self.timestamps:
            line = f"{self._timestamp(record)} {record.levelname:<7} {line}"
        lines = [line]
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            lines.extend(record.exc_text.splitlines())
        if record.stack_info:
            lines.extend(self.formatStack(record.stack_info).splitlines())
        if self.journald_prefix:
            prefix = f"<{syslog_priority(record.levelno)}>"
            lines = [prefix + item for item in lines]
        return "\n".join(lines)

    @staticmethod
    def _timestamp(record: logging.LogRecord) -> str:
        local = time.localtime(record.created)
        return f"{time.strftime('%Y-%m-%d %H:%M:%S', local)}.{int(record.msecs):03d}"


def log_event(
    logger: logging.Logger | logging.LoggerAdapter[Any], level: int, event: str, **fields: Any
) -> None:
    """Log ``event=<event>`` with ``fields``, after the adapter's own fields if any.

    ``log_event(LoggerAdapter(getLogger("bridge.poller"), {"meter": "m1"}), INFO, "connected",
    host="127.0.0.1:4061")`` logs ``poller meter=m1 event=connected host=127.0.0.1:4061``.
    """
    context: Mapping[str, Any] = {}
    target: Any = logger
    # A LoggerAdapter would replace our ``extra`` with its own; merge them here instead.
    while isinstance(target, logging.LoggerAdapter):
        context = {**(target.extra or {}), **context}
        target = target.logger
    if not target.isEnabledFor(level):
        return
    merged = {**context, "event": event, **fields}
    target.log(level, "", extra={FIELDS_ATTR: merged}, stacklevel=2)


def _parse_level(level: int | str) -> int:
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.lower()]
    except KeyError:
        known = ", ".join(_LEVELS)
        raise ValueError(f"unknown log level {level!r} (expected one of {known})") from None


#: The handler installed by :func:`setup_logging`, replaced by a later call.
_installed: logging.Handler | None = None


def setup_logging(
    level: int | str,
    *,
    journald_prefix: bool | None = None,
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Send the root logger's records at ``level`` and above to ``stream`` (default stdout).

    ``journald_prefix=None`` decides automatically: priority prefixes and no timestamps when
    ``JOURNAL_STREAM`` is set or the stream is not a terminal, timestamps and level names
    otherwise. Calling it again replaces the handler it installed before.
    """
    global _installed
    out = sys.stdout if stream is None else stream
    env = os.environ if environ is None else environ
    if journald_prefix is None:
        journald_prefix = bool(env.get("JOURNAL_STREAM")) or not _isatty(out)
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        LogfmtFormatter(journald_prefix=journald_prefix, timestamps=not journald_prefix)
    )
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    root.setLevel(_parse_level(level))
    _installed = handler
    return handler


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
