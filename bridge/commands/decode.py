"""``dlms-bridge decode``: HDLC frames (or wrapper PDUs) and their APDUs, one JSON line each."""

from __future__ import annotations

import argparse
import json
import string
import sys
from pathlib import Path
from typing import Any

from codec.decoder import StreamDecoder
from codec.errors import ProtocolError

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
    decoder = StreamDecoder(args.transport, transparency=args.byte_stuffing, apdus=not args.no_apdu)
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

            count, stats = decode_pcap(args.pcap, _emit, transport=args.transport)
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
    except BrokenPipeError:
        raise  # the reader of stdout is gone: the CLI ends quietly
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
