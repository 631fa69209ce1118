"""The ``dlms-bridge`` command line.

Each subcommand lives in its own module under :mod:`bridge.commands` and provides
``add_arguments(parser)`` and ``run(args) -> int``. Modules are imported
only when their subcommand is used, so a slow import never delays another command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from bridge import __version__

#: Subcommand name -> (module under bridge.commands, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "run simulated meters, a local broker and the bridge, with a live view"),
    "run": ("run", "run the bridge service from a config file"),
    "check-config": ("check_config", "check a config file and report every error with its path"),
    "read": ("read", "read registers, the object list or a load profile from one meter"),
    "decode": ("decode", "decode HDLC frames and the APDUs inside them from hex, a file or a pcap"),
    "simulate": ("simulate", "serve simulated DLMS meters over TCP, with fault injection"),
    "capture": ("capture", "record a client-meter session as pcap through a proxy"),
    "replay": ("replay", "serve a recorded pcap session back as a meter"),
    "health": ("health", "ask the running service how it is: one verdict per check"),
    "diagnose": ("diagnose", "run the chain to one meter and the broker step by step"),
    "scan": ("scan", "find DLMS meters on hosts and ports: HDLC, wrapper or other"),
}

#: Exit code for bad input (usage, bad data, bad config).
EXIT_USAGE = 2

#: Exit code when the reader of stdout went away (``| head``): 128 + SIGPIPE, as a Unix tool.
EXIT_BROKEN_PIPE = 141


class _Parser(argparse.ArgumentParser):
    """Reports bad arguments in one line (what is wrong, where help is) and exits with 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """Build the parser; only the module of the chosen subcommand is imported."""
    parser = _Parser(
        prog="dlms-bridge",
        description="Read DLMS/COSEM meters over TCP and deliver every reading over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"dlms-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_line) in COMMANDS.items():
        p = sub.add_parser(name, help=help_line, description=help_line)
        if name == chosen:
            module = importlib.import_module(f"bridge.commands.{module_name}")
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dlms-bridge`` console script."""
    try:
        code = _main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of stdout is gone: stop quietly, and keep the interpreter's final flush of
        # what is still buffered from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return code


def _main(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # bad arguments (already reported), --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
