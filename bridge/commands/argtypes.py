"""Argument types for the subcommands: every number has a range, every name a syntax.

Each type is a callable for ``argparse``'s ``type=``: it returns the parsed value or raises
:class:`argparse.ArgumentTypeError` with a message naming what is wrong, so that bad input ends
in one line and exit status 2, never a traceback. Secrets are never quoted in a message.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import unicodedata
from collections.abc import Callable
from pathlib import Path

from bridge.logs import LEVEL_NAMES

__all__ = [
    "MAX_PASSWORD_BYTES",
    "entries",
    "host",
    "integer",
    "log_level",
    "password_file",
    "password_text",
    "port",
    "seconds",
]

#: Longest password accepted on the command line or from a file (bytes).
MAX_PASSWORD_BYTES = 1024
#: A password file larger than this is not a password file.
_MAX_PASSWORD_FILE = 64 * 1024


def integer(low: int, high: int) -> Callable[[str], int]:
    """A whole number from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_quote(text)} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: {low}..{high}")
        return value

    parse.__name__ = "integer"
    return parse


def port(*, allow_zero: bool = False) -> Callable[[str], int]:
    """A TCP port, 1..65535 (or 0..65535 with ``allow_zero``: any free port)."""
    low = 0 if allow_zero else 1
    check = integer(low, 65535)

    def parse(text: str) -> int:
        try:
            return check(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"{_quote(text)} is not a port: give a number from {low} to 65535"
            ) from None

    parse.__name__ = "port"
    return parse


def seconds(
    *, low: float = 0.0, high: float = 86_400.0, allow_low: bool = False
) -> Callable[[str], float]:
    """A finite number of seconds, above ``low`` (or from it, with ``allow_low``) up to ``high``."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_quote(text)} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{_quote(text)} is not a finite number")
        if value < low or (value == low and not allow_low) or value > high:
            bound = "from" if allow_low else "more than"
            raise argparse.ArgumentTypeError(
                f"{value:g} is out of range: {bound} {low:g} up to {high:g} seconds"
            )
        return value

    parse.__name__ = "seconds"
    return parse


def host(text: str) -> str:
    """A host name (IDNA rules: labels of 1..63 characters, 253 in all) or an IP address."""
    value = text.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not value:
        raise argparse.ArgumentTypeError("empty host name")
    bad = next((i for i, ch in enumerate(value) if not ch.isprintable() or ch.isspace()), None)
    if bad is not None:
        raise argparse.ArgumentTypeError(
            f"host name has a space or control character at position {bad + 1}"
        )
    try:
        encoded = value.rstrip(".").encode("idna")
    except UnicodeError as exc:
        reason = str(exc).rpartition(": ")[2].rstrip(")") or "not valid"
        raise argparse.ArgumentTypeError(
            f"{_quote(value)} is not a valid host name ({reason}; labels are 1 to 63 characters)"
        ) from None
    if len(encoded) > 253:
        raise argparse.ArgumentTypeError(
            f"host name of {len(encoded)} characters is too long (at most 253)"
        )
    return value


def log_level(text: str) -> str:
    """One of the log levels, any case."""
    value = text.strip().lower()
    if value not in LEVEL_NAMES:
        raise argparse.ArgumentTypeError(
            f"{_quote(text)} is not a log level: use one of {', '.join(LEVEL_NAMES)}"
        )
    return value


def entries(text: str) -> tuple[int, int]:
    """``A:B``: profile entries A to B, 1-based; B may be 0 or empty (to the last)."""
    first, sep, last = text.partition(":")
    try:
        a = int(first.strip(), 10)
        b = int(last.strip() or "0", 10) if sep else a
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{_quote(text)} is not A:B (whole numbers, e.g. 1:96; B=0 to the last)"
        ) from None
    if not 1 <= a <= 0xFFFFFFFF or not 0 <= b <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError(f"{_quote(text)}: A must be 1 or more, B 0 or more")
    if b and b < a:
        raise argparse.ArgumentTypeError(f"{_quote(text)}: B ({b}) comes before A ({a})")
    return a, b


def password_text(text: str) -> bytes:
    """A password given on the command line (checked like a file's, never echoed)."""
    return _check_password(text, None)


def password_file(text: str) -> bytes:
    """The password held in a file: UTF-8 text, one line (a final newline is dropped)."""
    path = Path(text)
    try:
        size = os.stat(path).st_size
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text}: is a directory, not a password file")
        if size > _MAX_PASSWORD_FILE:
            raise argparse.ArgumentTypeError(
                f"{text}: {size} bytes is too large for a password file"
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text}: cannot read: {exc.strerror or exc}") from None
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise argparse.ArgumentTypeError(
            f"{text}: not a text file (byte {exc.start + 1} is not UTF-8)"
        ) from None
    if decoded.endswith("\n"):
        decoded = decoded[:-1]
        if decoded.endswith("\r"):
            decoded = decoded[:-1]
    return _check_password(decoded, text)


def _check_password(value: str, where: str | None) -> bytes:
    at = "" if where is None else f"{where}: "
    if not value:
        raise argparse.ArgumentTypeError(f"{at}the password is empty")
    for index, ch in enumerate(value, 1):
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in "\u2028\u2029":
            what = "a line break" if ch in "\r\n\u2028\u2029" else "a control character"
            raise argparse.ArgumentTypeError(
                f"{at}the password contains {what} at position {index}"
            )
    encoded = value.encode("utf-8")
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise argparse.ArgumentTypeError(
            f"{at}the password is {len(encoded)} bytes long, at most "
            f"{MAX_PASSWORD_BYTES} are allowed"
        )
    return encoded


def _quote(text: str, limit: int = 40) -> str:
    """``text`` quoted for a message, shortened, control characters escaped."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)
