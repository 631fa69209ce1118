"""``dlms-bridge health``: ask the running service how it is, one verdict per check.

Exit codes follow the Nagios plugin convention: 0 healthy, 1 warnings, 2 critical or the
service unreachable. The first line of the output is a one-line summary (what a Nagios plugin
prints); the checks follow, one per line. ``--json`` prints the documented JSON report instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import trio

from bridge.commands.argtypes import seconds
from bridge.config import ConfigError, load_config
from bridge.health import HealthReport, Verdict, evaluate, unreachable
from bridge.status_socket import StatusUnavailable, query_status, socket_path

EXIT_CRITICAL = int(Verdict.CRITICAL)
#: Where ``--config`` points when not given (the systemd unit's config).
DEFAULT_CONFIG = Path("/etc/dlms-bridge/bridge.toml")

_COLOURS = {Verdict.OK: "\x1b[32m", Verdict.WARNING: "\x1b[33m", Verdict.CRITICAL: "\x1b[31m"}
_RESET = "\x1b[0m"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options."""
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        help=f"the bridge's config file: its data directory holds the status socket "
        f"(default {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--socket", type=Path, help="the status socket itself (instead of --config)"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--timeout",
        type=seconds(high=3600),
        default=5.0,
        help="seconds to wait for the service (default 5)",
    )
    parser.add_argument(
        "--wait",
        type=seconds(high=86_400, allow_low=True),
        default=0.0,
        metavar="S",
        help="ask again until healthy or S seconds have passed (for ExecStartPost)",
    )


def _socket(args: argparse.Namespace) -> Path:
    if args.socket is not None:
        return Path(args.socket)
    config = load_config(args.config or DEFAULT_CONFIG)
    return socket_path(config.bridge.data_dir)


def _use_colour(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def render(report: HealthReport, *, colour: bool) -> str:
    """The text form: the summary line, then one line per check."""
    width = max((len(c.name) for c in report.checks), default=0)
    perfdata = report.perfdata()
    lines = [f"{report.summary()} | {perfdata}" if perfdata else report.summary()]
    for check in report.checks:
        label = f"{check.verdict.label:<8}"
        if colour:
            label = f"{_COLOURS[check.verdict]}{label}{_RESET}"
        lines.append(f"  {label} {check.name:<{width}}  {check.detail}")
    return "\n".join(lines)


async def _ask(path: Path, timeout: float, wait: float) -> HealthReport:
    """Ask (again every second, up to ``wait`` seconds, until healthy) and judge."""
    deadline = trio.current_time() + wait
    while True:
        try:
            status = await query_status(path, timeout)
        except StatusUnavailable as exc:
            report = unreachable(str(exc))
        else:
            try:
                report = evaluate(status, time.time())
            except (TypeError, ValueError, AttributeError) as exc:
                report = unreachable(f"{path}: a status this program cannot read ({exc})")
        if report.exit_code == 0 or trio.current_time() + 1 > deadline:
            return report
        await trio.sleep(1)


def run(args: argparse.Namespace) -> int:
    """Ask, judge, print; the exit code is the verdict."""
    if not args.timeout > 0 or args.wait < 0:
        print("health: --timeout must be > 0 and --wait >= 0", file=sys.stderr)
        return EXIT_CRITICAL
    try:
        path = _socket(args)
    except ConfigError as exc:
        report = unreachable(f"the config cannot be used: {exc.errors[0] if exc.errors else exc}")
    else:
        report = trio.run(_ask, path, args.timeout, args.wait)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render(report, colour=_use_colour(sys.stdout)))
    return report.exit_code
