"""``dlms-bridge run --config FILE``: the service."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import trio

from bridge.api_meters import load_effective_config
from bridge.commands.argtypes import log_level
from bridge.config import ConfigError
from bridge.limits import limit_malloc_arenas, raise_open_file_limit
from bridge.lock import AlreadyRunning
from bridge.logs import setup_logging
from bridge.outbox import OutboxError
from bridge.service import BridgeService

EXIT_CONFIG = 2
EXIT_ALREADY_RUNNING = 3
EXIT_FAILED = 1

log = logging.getLogger("bridge.run")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options."""
    parser.add_argument(
        "--config", "-c", type=Path, required=True, help="the bridge's TOML config file"
    )
    parser.add_argument(
        "--log-level",
        type=log_level,
        help="override [bridge].log_level (debug, info, warning, error)",
    )


def run(args: argparse.Namespace) -> int:
    """Load the config (refusing a bad one with exit code 2) and run until signalled."""
    try:
        config = load_effective_config(args.config)
    except ConfigError as exc:
        print(f"dlms-bridge: the config cannot be used:\n  {exc}", file=sys.stderr)
        return EXIT_CONFIG
    # Whatever the service writes (outbox, lock, files of later features) is its own: 0600
    # files and 0700 directories unless a file says otherwise.
    os.umask(0o077)
    setup_logging(args.log_level or config.bridge.log_level)
    limit, _ = raise_open_file_limit()
    limit_malloc_arenas()  # before the first thread, and for the worker processes
    enabled = sum(m.enabled for m in config.meters)
    if limit < enabled + 64:
        log.warning(
            "open-files limit %d is low for %d meters: raise LimitNOFILE in the unit",
            limit,
            enabled,
        )
    service = BridgeService(config, config_path=args.config, console=True, manage_heap=True)
    try:
        trio.run(service.run)
    except AlreadyRunning as exc:
        print(f"dlms-bridge: {exc}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    except OutboxError as exc:
        print(f"dlms-bridge: outbox unusable: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        # Raised before the service starts: the data directory cannot be created or locked
        # (permissions, a read-only file system, a file in the way).
        print(
            f"dlms-bridge: cannot use the data directory {config.bridge.data_dir}: {exc}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return 0
