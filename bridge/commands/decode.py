"""``dlms-bridge decode``: HDLC frames (or wrapper PDUs) and their APDUs, one JSON line each.

Input of any size is streamed: a file is read, and stdin's hex parsed, in chunks of
:data:`CHUNK` bytes, each fed to the scanner and described before the next is read, so memory
stays bounded by the scanner's buffer whatever the input's size.
"""

from __future__ import annotations

import argparse
import json
import string
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from bridge import meter_security
from codec.decoder import DecipherContext, StreamDecoder
from codec.errors import ProtocolError
from codec.security import SecurityKeys

EXIT_BAD_INPUT = 2
_HEX = frozenset(string.hexdigits)
#: Bytes read (and fed to the scanner) at a time.
CHUNK = 64 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options."""
    parser.add_argument(
        "hex",
        nargs="*",
        help="bytes in hex (spaces, ':' and '0x' allowed); read from stdin when none is given",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--file", type=Path, help="read raw bytes from this file")
    source.add_argument(
        "--pcap", type=Path, help="read both directions of the TCP sessions in a pcap capture"
    )
    parser.add_argument(
        "--transport", choices=("hdlc", "wrapper"), default="hdlc", help="framing (default hdlc)"
    )
    parser.add_argument(
        "--byte-stuffing",
        action="store_true",
        help="the link uses ISO/IEC 13239 transparency (0x7D escapes); off for DLMS meters",
    )
    parser.add_argument("--no-apdu", action="store_true", help="describe frames only")
    keys = parser.add_argument_group(
        "ciphered APDUs", "decipher them with these keys (system titles from the AARQ/AARE)"
    )
    for name in ("block-cipher-key", "authentication-key"):
        one = keys.add_mutually_exclusive_group()
        one.add_argument(f"--{name}", metavar="HEX", help=f"{name.replace('-', ' ')} (16 bytes)")
        one.add_argument(f"--{name}-file", type=Path, metavar="FILE", help="file holding it")
    keys.add_argument("--system-title", metavar="HEX", help="the client's, if not captured")
    keys.add_argument("--meter-system-title", metavar="HEX", help="the meter's, if not captured")


def _context(args: argparse.Namespace) -> DecipherContext | None:
    """The deciphering context of the options (None: no keys); ValueError says what is wrong."""
    ek = meter_security.key_from_args(args, "block-cipher-key")
    ak = meter_security.key_from_args(args, "authentication-key")
    if (ek is None) != (ak is None):
        raise ValueError("give both --block-cipher-key and --authentication-key")
    titles = [
        None if value is None else meter_security.parse_hex(value, 8, flag)
        for value, flag in (
            (args.system_title, "--system-title"),
            (args.meter_system_title, "--meter-system-title"),
        )
    ]
    if ek is None or ak is None:
        if any(titles):
            raise ValueError("system titles are only used with the keys")
        return None
    return DecipherContext(SecurityKeys(ek, ak), client_title=titles[0], server_title=titles[1])


def parse_hex(parts: list[str], first: int = 1) -> bytes:
    """Join hex words into bytes; raises ValueError naming the bad word (counted from
    ``first``)."""
    out = bytearray()
    for index, word in enumerate(parts, first):
        cleaned = _clean(word)
        if not cleaned:
            continue
        bad = next((c for c in cleaned if c not in _HEX), None)
        if bad is not None:
            raise ValueError(f"word {index} ({word[:40]!r}) is not hex: {bad!r} is not a hex digit")
        if len(cleaned) % 2:
            raise ValueError(f"word {index} ({word[:40]!r}) has an odd number of hex digits")
        out += bytes.fromhex(cleaned)
    return bytes(out)


def _clean(word: str) -> str:
    cleaned = word.replace(":", "").replace(" ", "").replace("\n", "").replace("\t", "")
    return cleaned.replace("0x", "").replace("0X", "")


def read_chunks(stream: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    """Raw bytes from ``stream``, ``size`` at a time."""
    while chunk := stream.read(size):
        yield chunk


def hex_chunks(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Bytes from hex text arriving in chunks (words may be split between chunks).

    A word too long to hold (hex with no spaces at all) is converted as it arrives, an even
    number of digits at a time. Raises ValueError naming the bad word and where it is.
    """
    carry = ""
    index = 1
    for chunk in chunks:
        try:
            text = carry + chunk.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"input is not hex text: byte 0x{chunk[exc.start]:02x} is not ASCII"
            ) from None
        words = text.split()
        carry = "" if text[-1:].isspace() or not words else words.pop()
        if words:
            yield parse_hex(words, index)
            index += len(words)
        if len(carry) > CHUNK:
            cleaned = _clean(carry)
            # Keep a trailing "0" back: it may start a "0x" completed by the next chunk.
            keep = 1 if cleaned.endswith("0") else 0
            cut = (len(cleaned) - keep) // 2 * 2
            yield parse_hex([cleaned[:cut]], index)
            carry = cleaned[cut:]
    if carry:
        yield parse_hex([carry], index)


def _emit(item: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(item, separators=(",", ":")) + "\n")


def _decode_stream(
    chunks: Iterable[bytes], args: argparse.Namespace
) -> tuple[int, int, dict[str, int]]:
    """Decode chunk by chunk; returns (items printed, bytes read, scanner counters)."""
    decoder = StreamDecoder(
        args.transport,
        transparency=args.byte_stuffing,
        apdus=not args.no_apdu,
        context=_context(args),
    )
    count = total = 0
    for chunk in chunks:
        if not chunk:
            continue
        total += len(chunk)
        for item in decoder.feed(chunk):
            _emit(item)
            count += 1
    if total:
        for item in decoder.feed(b""):
            _emit(item)
            count += 1
    return count, total, decoder.stats()


def run(args: argparse.Namespace) -> int:
    """Decode and print; exit 2 on bad input."""
    total = 0
    try:
        if args.pcap is not None:
            from bridge.capture import decode_pcap

            context = _context(args)
            count, stats = decode_pcap(
                args.pcap,
                _emit,
                transport=args.transport,
                keys=None if context is None else context.keys,
            )
        elif args.file is not None:
            if args.file.is_dir():
                raise ValueError(f"--file {args.file}: is a directory")
            with args.file.open("rb") as f:
                count, total, stats = _decode_stream(read_chunks(f), args)
        elif args.hex:
            count, total, stats = _decode_stream([parse_hex(args.hex)], args)
        else:
            if sys.stdin.isatty():
                print("decode: give hex bytes, --file or --pcap (or pipe hex in)", file=sys.stderr)
                return EXIT_BAD_INPUT
            count, total, stats = _decode_stream(hex_chunks(read_chunks(sys.stdin.buffer)), args)
        if args.pcap is None and not total:
            print("decode: no bytes to decode", file=sys.stderr)
            return EXIT_BAD_INPUT
    except BrokenPipeError:
        raise  # the reader of stdout is gone: the CLI ends quietly
    except OSError as exc:
        where = args.file or args.pcap or "stdin"
        print(f"decode: {where}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, ProtocolError) as exc:
        print(f"decode: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _emit({"summary": {**stats, "decoded": count}})
    if count == 0:
        print(
            f"decode: no valid {args.transport.upper()} frame found "
            f"({stats.get('bytes_discarded', 0)} bytes discarded)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    return 0
