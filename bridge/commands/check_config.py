"""``dlms-bridge check-config FILE``: check a config file and report every error with its path.

Exit status 0 with a one-line summary when the file is usable; 2 with one error per line on
stderr when it is not. ``--json`` prints the resolved config (defaults merged, secrets masked).
"""

from __future__ import annotations

import argparse
import json
import sys

from bridge.api_meters import load_effective_config
from bridge.config import BridgeConfig, ConfigError, config_to_dict

#: Exit status for a config that cannot be used (same as ``bridge.cli.EXIT_USAGE``).
EXIT_BAD_CONFIG = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's arguments."""
    parser.add_argument("config", metavar="FILE", help="the TOML config file to check")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the resolved config as JSON (defaults merged, secrets masked)",
    )


def summary(config: BridgeConfig) -> str:
    """The one-line report of a valid config."""
    total = len(config.meters)
    enabled = len(config.enabled_meters)
    noun = "meter" if total == 1 else "meters"
    api = f", {len(config.api_meters)} from the admin API" if config.api_meters else ""
    return (
        f"OK: {total} {noun} ({enabled} enabled{api}), publish mode {config.publish.mode}, "
        f"broker {config.mqtt.address}{' (TLS)' if config.mqtt.tls else ''}"
    )


def run(args: argparse.Namespace) -> int:
    """Check ``args.config``; print the summary (or the JSON) or every error."""
    try:
        config = load_effective_config(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"{exc.source}: {line}", file=sys.stderr)
        count = len(exc.errors)
        print(
            f"{exc.source}: {count} error{'s' if count != 1 else ''}, config not usable",
            file=sys.stderr,
        )
        return EXIT_BAD_CONFIG
    if args.json:
        json.dump(config_to_dict(config), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(summary(config))
    return 0
