"""``dlms-bridge scan TARGETS``: find DLMS meters (HDLC or wrapper) and tell other listeners apart.

Exit 0 when the scan ran (whatever it found), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import trio

from bridge.commands.argtypes import integer, password_file, password_text, seconds
from bridge.config import ConfigError, load_config
from bridge.scan import (
    DEFAULT_PORTS,
    Credentials,
    Found,
    Progress,
    ScanError,
    check_names,
    host_names,
    parse_ports,
    parse_targets,
    scan,
)

EXIT_USAGE = 2
#: Default TCP connect and probe reply timeout, s.
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_CONCURRENCY = 64
MAX_CONCURRENCY = 1024
_PORTS = ",".join(map(str, DEFAULT_PORTS))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options."""
    parser.add_argument(
        "targets",
        nargs="+",
        metavar="TARGET",
        help="host names, addresses, CIDR blocks (10.0.0.0/24) or ranges (10.0.0.5-40)",
    )
    parser.add_argument(
        "--ports",
        default=_PORTS,
        help=f"ports to try, e.g. 4059,4061 or 4059-4070 (default {_PORTS})",
    )
    parser.add_argument(
        "--concurrency",
        type=integer(1, MAX_CONCURRENCY),
        default=DEFAULT_CONCURRENCY,
        help=f"connections at a time (default {DEFAULT_CONCURRENCY}, at most {MAX_CONCURRENCY})",
    )
    parser.add_argument(
        "--timeout",
        type=seconds(high=3600),
        default=DEFAULT_TIMEOUT_S,
        help=f"connect and reply timeout, s (default {DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--config", "-c", type=Path, help="try the client SAP and password of this config's meters"
    )
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument(
        "--password", type=password_text, help="LLS password to try (prefer --password-file)"
    )
    secret.add_argument(
        "--password-file", type=password_file, metavar="FILE", help="file holding the LLS password"
    )
    parser.add_argument(
        "--client-sap", type=integer(1, 0x7F), help="client SAP for the password (default 1)"
    )
    parser.add_argument(
        "--config-out", type=Path, metavar="FILE", help="write [[meters]] tables for what was found"
    )
    parser.add_argument("--force", action="store_true", help="allow more than a /16")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def _credentials(args: argparse.Namespace) -> Credentials | None:
    password: bytes | None = None
    client_sap = args.client_sap
    if args.password_file is not None or args.password is not None:
        # Both were read and checked by their argument types.
        password = args.password_file or args.password
    elif args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise ScanError(f"the config cannot be used: {exc}") from None
        meter = next((m for m in config.meters if m.password is not None), None)
        if meter is None:
            return None
        password = meter.password.encode() if meter.password is not None else None
        client_sap = client_sap if client_sap is not None else meter.client_sap
    if password is None:
        return None
    return Credentials(client_sap=client_sap if client_sap is not None else 1, password=password)


def _yes_no(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def render(found: list[Found]) -> str:
    """The table of what was found."""
    header = ("address", "port", "transport", "server address", "public", "password", "detail")
    rows = [header]
    for f in found:
        if f.transport == "hdlc":
            server = f"{f.server_logical}/{f.server_physical}"
        elif f.transport == "wrapper":
            server = f"wPort {f.server_logical}"
        else:
            server = "-"
        rows.append(
            (
                f.host,
                str(f.port),
                f.transport,
                server,
                _yes_no(f.public),
                _yes_no(f.configured),
                f.detail,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    )


def config_tables(found: list[Found]) -> str:
    """``[[meters]]`` tables for the meters found, ready to paste (no secrets)."""
    out = [
        "# Meters found by dlms-bridge scan. Set each meter's password (or password_file) and\n"
        "# registers here or in [defaults].\n"
    ]
    for f in found:
        if not f.is_meter:
            continue
        name = f"meter-{f.host.replace('.', '-').replace(':', '-')}-{f.port}"
        lines = [
            "[[meters]]",
            f'name = "{name}"',
            f'host = "{f.host}"',
            f"port = {f.port}",
            f'transport = "{f.transport}"',
            f"server_logical = {f.server_logical}",
        ]
        if f.transport == "hdlc":
            lines.append(f"server_physical = {f.server_physical}")
        if f.configured:
            lines.append("# the configured password associates")
        elif f.public:
            lines.append("# only the public client (client_sap = 16, no password) was seen to work")
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


class _Bar:
    """A progress line on stderr, only on a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        self._last = 0.0

    def __call__(self, p: Progress) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and p.done < p.total:
            return
        self._last = now
        width = 30
        filled = int(width * p.done / max(1, p.total))
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {p.done}/{p.total}"
            f"  open {p.open}  meters {p.meters}"
        )
        sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def run(args: argparse.Namespace) -> int:
    """Check the input, scan, print the table or JSON."""
    try:
        ports = parse_ports(args.ports)
        count, hosts = parse_targets(args.targets, force=args.force)
        if not 1 <= args.concurrency <= MAX_CONCURRENCY:
            raise ScanError(f"--concurrency must be 1..{MAX_CONCURRENCY}, not {args.concurrency}")
        if not args.timeout > 0:
            raise ScanError("--timeout must be > 0")
        credentials = _credentials(args)
    except ScanError as exc:
        print(f"scan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    bar = _Bar()
    started = time.monotonic()

    async def main() -> list[Found]:
        await check_names(host_names(args.targets), args.timeout)
        return await scan(
            hosts,
            ports,
            host_count=count,
            concurrency=args.concurrency,
            timeout=args.timeout,
            credentials=credentials,
            on_progress=bar,
        )

    try:
        found = trio.run(main)
    except ScanError as exc:
        print(f"scan: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        bar.done()
    if args.config_out is not None:
        try:
            args.config_out.write_text(config_tables(found))
        except OSError as exc:
            print(f"scan: --config-out: {exc.strerror or exc}: {args.config_out}", file=sys.stderr)
            return EXIT_USAGE
    if args.json:
        print(
            json.dumps(
                {
                    "addresses": count,
                    "ports": ports,
                    "elapsed_s": round(time.monotonic() - started, 3),
                    "found": [f.to_json() for f in found],
                },
                indent=2,
            )
        )
    else:
        meters = sum(f.is_meter for f in found)
        print(render(found))
        print(f"{count} address(es) x {len(ports)} port(s): {len(found)} open, {meters} meter(s)")
    return 0
