"""``dlms-bridge decode``: HDLC frames (or wrapper PDUs) and their APDUs, one JSON line each."""

from __future__ import annotations

import argparse
import json
import string
import sys
from pathlib import Path
from typing import Any

from bridge import meter_security
from codec.decoder import DecipherContext, StreamDecoder
from codec.errors import ProtocolError
from codec.security import SecurityKeys

EXIT_BAD_INPUT = 2
_HEX = frozenset(string.hexdigits)


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


def parse_hex(parts: list[str]) -> bytes:
    """Join hex words into bytes; raises ValueError naming the bad word."""
    out = bytearray()
    for index, word in enumerate(parts, 1):
        cleaned = word.replace(":", "").replace(" ", "").replace("\n", "").replace("\t", "")
        cleaned = cleaned.replace("0x", "").replace("0X", "")
        if not cleaned:
            continue
        bad = next((c for c in cleaned if c not in _HEX), None)
        if bad is not None:
            raise ValueError(f"word {index} ({word[:40]!r}) is not hex: {bad!r} is not a hex digit")
        if len(cleaned) % 2:
            raise ValueError(f"word {index} ({word[:40]!r}) has an odd number of hex digits")
        out += bytes.fromhex(cleaned)
    return bytes(out)


def _emit(item: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(item, separators=(",", ":")) + "\n")


def _decode_stream(data: bytes, args: argparse.Namespace) -> tuple[int, dict[str, int]]:
    decoder = StreamDecoder(
        args.transport,
        transparency=args.byte_stuffing,
        apdus=not args.no_apdu,
        context=_context(args),
    )
    count = 0
    for item in decoder.feed(data) + decoder.feed(b""):
        _emit(item)
        count += 1
    return count, decoder.stats()


def run(args: argparse.Namespace) -> int:
    """Decode and print; exit 2 on bad input."""
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
        else:
            if args.file is not None:
                data = args.file.read_bytes()
            elif args.hex:
                data = parse_hex(args.hex)
            else:
                if sys.stdin.isatty():
                    print(
                        "decode: give hex bytes, --file or --pcap (or pipe hex in)", file=sys.stderr
                    )
                    return EXIT_BAD_INPUT
                data = parse_hex(sys.stdin.read().split())
            if not data:
                print("decode: no bytes to decode", file=sys.stderr)
                return EXIT_BAD_INPUT
            count, stats = _decode_stream(data, args)
    except (ValueError, OSError, ProtocolError) as exc:
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
