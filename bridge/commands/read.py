"""``dlms-bridge read``: read registers, the object list or a load profile from one meter."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys
from typing import Any

import trio

from bridge import meter_security
from bridge.commands.argtypes import (
    entries,
    host,
    integer,
    password_file,
    password_text,
    port,
    seconds,
)
from bridge.config import METER_DEFAULTS as _D
from bridge.counters import CounterFileError, PersistentCounter, counter_path
from bridge.session import MeterEndpoint, MeterIOError, MeterSession
from codec.association import DEFAULT_MAX_RESPONSE_SIZE, SecuritySettings
from codec.client import RegisterSpec
from codec.decoder import DecipherContext, StreamDecoder
from codec.errors import (
    AssociationError,
    DataAccessError,
    EncodeError,
    LinkError,
    ProtocolError,
    ResponseTimeout,
)
from codec.hdlc_params import LinkParameters
from codec.obis import Obis
from codec.security import SecurityError

EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_REFUSED = 4
EXIT_OBJECT = 5
EXIT_PROTOCOL = 6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options."""
    parser.add_argument(
        "registers",
        nargs="*",
        metavar="OBIS",
        help="registers to read: '1-1:32.7.0' (class 3, attribute 2), or CLASS/OBIS[/ATTR] "
        "such as '1/0-0:42.0.0/2'",
    )
    parser.add_argument("--host", type=host, required=True, help="meter host name or address")
    parser.add_argument("--port", type=port(), required=True, help="meter TCP port (1..65535)")
    parser.add_argument("--transport", choices=("hdlc", "wrapper"), default=_D["transport"])
    parser.add_argument(
        "--client-sap",
        type=integer(1, 0x7F),
        default=_D["client_sap"],
        help="client SAP, 1..127 (default %(default)s)",
    )
    parser.add_argument(
        "--server-logical", type=integer(0, 0x3FFF), default=0, help="0..16383 (default 0)"
    )
    parser.add_argument(
        "--server-physical",
        type=integer(0, 0x3FFF),
        default=_D["server_physical"],
        help="0..16383 (default %(default)s)",
    )
    parser.add_argument(
        "--server-address-size",
        type=int,
        choices=(1, 2, 4),
        help="HDLC server address bytes (default: the smallest that fits)",
    )
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument(
        "--password", type=password_text, help="LLS password (prefer --password-file)"
    )
    secret.add_argument(
        "--password-file",
        type=password_file,
        metavar="FILE",
        help="file holding the LLS password (UTF-8, one line)",
    )
    parser.add_argument(
        "--timeout",
        type=seconds(high=3600),
        default=_D["timeout_s"],
        help="reply timeout of one frame, s (default %(default)s)",
    )
    parser.add_argument(
        "--retries", type=integer(0, 10), default=2, help="retransmissions, 0..10 (default 2)"
    )
    parser.add_argument(
        "--request-timeout",
        type=seconds(high=86_400),
        metavar="SECONDS",
        help="overall deadline of each request and its whole reply "
        "(default: timeout x (retries + 2))",
    )
    parser.add_argument(
        "--max-response",
        type=integer(1024, 64 * 1024 * 1024),
        default=DEFAULT_MAX_RESPONSE_SIZE,
        metavar="BYTES",
        help="largest reply taken in blocks, such as a profile's buffer "
        f"(default {DEFAULT_MAX_RESPONSE_SIZE})",
    )
    parser.add_argument(
        "--max-info",
        type=integer(32, 2030),
        default=_D["hdlc_max_info"],
        help="HDLC max information field, 32..2030 (default %(default)s)",
    )
    parser.add_argument("--byte-stuffing", action="store_true", help="link uses 0x7D escapes")
    parser.add_argument("--list-objects", action="store_true", help="print the object list")
    parser.add_argument("--profile", metavar="OBIS", help="read this profile generic's buffer")
    parser.add_argument("--from", dest="start", metavar="TIME", help="profile range start (ISO)")
    parser.add_argument("--to", dest="end", metavar="TIME", help="profile range end (ISO)")
    parser.add_argument(
        "--entries",
        type=entries,
        metavar="A:B",
        help="profile entries A to B (1-based; B=0: to the last)",
    )
    parser.add_argument(
        "--trace", action="store_true", help="print every frame sent and received to stderr"
    )
    meter_security.add_arguments(parser)
    parser.add_argument(
        "--frame-counter",
        metavar="OBIS",
        help="with --security: read this frame counter (e.g. 0-0:43.1.0) via the public client"
        " first, and count on from it",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument(
        "--json",
        action="store_true",
        help="print strict JSON (the default when the output is not a terminal)",
    )
    output.add_argument(
        "--table",
        action="store_true",
        help="print a table for people (the default on a terminal)",
    )


def parse_register(text: str) -> RegisterSpec:
    """``OBIS`` or ``CLASS/OBIS[/ATTR]``; raises ValueError with the reason."""
    parts = text.split("/")
    if len(parts) == 1:
        return RegisterSpec(Obis.parse(parts[0]))
    if len(parts) in (2, 3):
        class_id = _number(parts[0], f"{text[:60]!r}: class", 0, 0xFFFF)
        attribute = _number(parts[2], f"{text[:60]!r}: attribute", 1, 127) if len(parts) == 3 else 2
        return RegisterSpec(Obis.parse(parts[1]), class_id, attribute)
    raise ValueError(f"{text[:60]!r}: expected OBIS or CLASS/OBIS[/ATTRIBUTE]")


def _number(text: str, what: str, low: int, high: int) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise ValueError(f"{what} {text[:20]!r} is not a whole number") from None
    if not low <= value <= high:
        raise ValueError(f"{what} {value} is out of range {low}..{high}")
    return value


def _parse_time(text: str, what: str) -> _dt.datetime:
    try:
        value = _dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{what}: not an ISO date/time: {text!r}") from None
    return value if value.tzinfo is not None else value.astimezone()


def _security(args: argparse.Namespace, password: bytes | None) -> SecuritySettings | None:
    """The security settings of the command line, with a persistent counter (None: none)."""
    options = meter_security.options_from_args(args, password)
    if options is None:
        return None
    directory = args.counter_dir or meter_security.default_counter_dir()
    title = options.system_title or meter_security.instance_system_title(directory)
    counter = PersistentCounter(counter_path(directory, f"{args.host}_{args.port}", title))
    return options.client_settings(counter, system_title=title)


def _endpoint(args: argparse.Namespace) -> MeterEndpoint:
    # Both were read and checked by their argument types.
    password: bytes | None = args.password_file or args.password
    security = _security(args, password)
    if args.frame_counter is not None and security is None:
        raise ValueError("--frame-counter needs --security (with HLS or ciphering)")
    return MeterEndpoint(
        host=args.host,
        port=args.port,
        transport=args.transport,
        client_sap=args.client_sap,
        server_logical=args.server_logical,
        server_physical=args.server_physical,
        server_address_size=args.server_address_size,
        password=password,
        timeout=args.timeout,
        retries=args.retries,
        request_timeout=args.request_timeout,
        max_response_size=args.max_response,
        link_parameters=LinkParameters(max_info_tx=args.max_info, max_info_rx=args.max_info),
        byte_stuffing=args.byte_stuffing,
        security=security,
        frame_counter=None if args.frame_counter is None else Obis.parse(args.frame_counter),
    )


class _TracingSession(MeterSession):
    """A session that prints every frame both ways to stderr as JSON lines."""

    def __init__(self, endpoint: MeterEndpoint) -> None:
        super().__init__(endpoint)
        self._out, self._in = StreamDecoder.pair(
            endpoint.transport, transparency=endpoint.byte_stuffing
        )
        sec = endpoint.security
        if sec is not None:
            self._out.context = self._in.context = DecipherContext(sec.keys)

    async def _send(self, data: bytes) -> None:
        for item in self._out.feed(data):
            _trace("client->meter", item)
        await super()._send(data)

    async def _receive(self) -> bytes:
        data = await super()._receive()
        if data:
            for item in self._in.feed(data):
                _trace("meter->client", item)
        return data


def _trace(direction: str, item: dict[str, Any]) -> None:
    print(json.dumps({"direction": direction, **item}, separators=(",", ":")), file=sys.stderr)


async def _read(
    args: argparse.Namespace, specs: list[RegisterSpec], endpoint: MeterEndpoint
) -> dict[str, Any]:
    session = _TracingSession(endpoint) if args.trace else MeterSession(endpoint)
    negotiated = await session.open()
    try:
        result: dict[str, Any] = {
            "meter": endpoint.label,
            "transport": endpoint.transport,
            "negotiated": {
                "conformance": negotiated.conformance.names(),
                "server_max_pdu_size": negotiated.server_max_pdu_size,
                "dlms_version": negotiated.dlms_version,
            },
        }
        if specs:
            readings = await session.read_registers(specs)
            result["registers"] = [r.to_json() for r in readings]
        if args.list_objects:
            objects = await session.object_list()
            result["objects"] = [
                {"class_id": o.class_id, "version": o.version, "obis": str(o.obis)} for o in objects
            ]
        if args.profile:
            selection: dict[str, Any] = {}
            if args.start or args.end:
                selection["start"] = _parse_time(args.start or "", "--from")
                selection["end"] = _parse_time(args.end or "", "--to")
            elif args.entries:
                selection["from_entry"], selection["to_entry"] = args.entries
            profile = await session.read_profile(Obis.parse(args.profile), **selection)
            result["profile"] = {"obis": str(Obis.parse(args.profile)), **profile.to_json()}
        sec, association = endpoint.security, session.association
        if sec is not None and association is not None:
            result["security"] = {
                "mechanism": meter_security.mechanism_name(sec.mechanism),
                "policy": None if sec.policy is None else sec.policy.label,
                "system_title": sec.system_title.hex().upper(),
                "meter_system_title": None
                if association.server_system_title is None
                else association.server_system_title.hex().upper(),
                "last_invocation_counter": association.client_counter,
                "meter_invocation_counter": association.server_counter,
            }
        result["stats"] = session.stats()
        return result
    finally:
        await session.release()


def run(args: argparse.Namespace) -> int:
    """Read and print JSON; one clear line and a non-zero code on failure."""
    try:
        specs = [parse_register(r) for r in args.registers]
        if args.profile:
            Obis.parse(args.profile)
        if args.start or args.end:
            if not (args.start and args.end):
                raise ValueError("--from and --to go together")
            _parse_time(args.start, "--from")
            _parse_time(args.end, "--to")
        endpoint = _endpoint(args)
        # The addresses must fit their fields before anything is sent.
        endpoint.make_link()
    except (ValueError, EncodeError, CounterFileError, OSError) as exc:
        print(f"read: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not (specs or args.list_objects or args.profile):
        print(
            "read: nothing to read: give OBIS codes, --list-objects or --profile", file=sys.stderr
        )
        return EXIT_USAGE
    label = f"{args.host}:{args.port}"
    try:
        result = trio.run(_read, args, specs, endpoint)
    except MeterIOError as exc:
        print(f"read: meter unreachable: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except AssociationError as exc:
        print(f"read: {label} refused the association: {exc} [{exc.code}]", file=sys.stderr)
        return EXIT_REFUSED
    except SecurityError as exc:
        print(f"read: {label}: security check failed: {exc} [{exc.code}]", file=sys.stderr)
        return EXIT_REFUSED
    except CounterFileError as exc:
        print(f"read: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DataAccessError as exc:
        print(f"read: {label}: {exc}", file=sys.stderr)
        return EXIT_OBJECT
    except ResponseTimeout as exc:
        print(f"read: {label} stopped answering: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (LinkError, ProtocolError) as exc:
        if isinstance(exc, EncodeError):
            print(f"read: {exc}", file=sys.stderr)
            return EXIT_USAGE
        print(f"read: protocol error with {label}: {exc} [{exc.code}]", file=sys.stderr)
        return EXIT_PROTOCOL
    if args.json or not (args.table or sys.stdout.isatty()):
        print(json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False))
    else:
        print(render_table(result))
    failed = [r for r in result.get("registers", []) if "error" in r]
    for item in failed:
        print(f"read: {label}: {item['obis']}: {item['error']}", file=sys.stderr)
    return EXIT_OBJECT if failed else 0


# -- the table for people -------------------------------------------------------------------------


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _columns(header: list[str], rows: list[list[str]]) -> list[str]:
    table = [header, *rows]
    n = max(len(r) for r in table)
    table = [r + [""] * (n - len(r)) for r in table]
    widths = [max(len(r[i]) for r in table) for i in range(n)]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]


def render_table(result: dict[str, Any]) -> str:
    """The result of a read as text tables: registers, objects, profile rows."""
    negotiated = result.get("negotiated", {})
    lines = [
        f"meter {result['meter']} ({result['transport']}), DLMS version "
        f"{negotiated.get('dlms_version')}, max PDU {negotiated.get('server_max_pdu_size')}"
    ]
    registers = result.get("registers")
    if registers:
        rows = []
        for r in registers:
            if "error" in r:
                value = f"error: {r['error']}"
            else:
                value = _cell(r["value"])
                if r.get("unit"):
                    value += f" {r['unit']}"
                notes = [n for n in (r.get("label"), r.get("quality")) if n]
                if notes:
                    value += f" ({', '.join(notes)})"
            rows.append([r["obis"], r["key"], value, r.get("type") or ""])
        lines += ["", *_columns(["OBIS", "KEY", "VALUE", "TYPE"], rows)]
    objects = result.get("objects")
    if objects:
        rows = [[str(o["class_id"]), str(o["version"]), o["obis"]] for o in objects]
        lines += ["", *_columns(["CLASS", "VERSION", "OBIS"], rows)]
    profile = result.get("profile")
    if profile:
        header = []
        for c in profile["columns"]:
            unit = f" [{c['unit']}]" if c.get("unit") else ""
            header.append(f"{c['obis']}/{c['attribute']}{unit}")
        rows = [[_cell(v) for v in row] for row in profile["rows"]]
        lines += ["", f"profile {profile['obis']}: {len(rows)} rows"]
        lines += _columns(header, rows)
    return "\n".join(lines)
