"""``dlms-bridge demo``: simulated meters, a local broker and the bridge, with a live view."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import trio

from bridge.commands.argtypes import integer, log_level, port, seconds
from bridge.demo import DEFAULT_FAULTS, DemoOptions, run_demo
from bridge.logs import setup_logging
from bridge.simulator.faults import FaultSpecError, parse_fault_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options."""
    parser.add_argument(
        "--meters", type=integer(1, 1000), default=5, help="simulated meters (default 5)"
    )
    parser.add_argument(
        "--interval",
        type=seconds(high=86_400),
        default=2.0,
        help="seconds between reads of a meter (default 2)",
    )
    parser.add_argument(
        "--faults",
        default=DEFAULT_FAULTS,
        help=f"simulator fault spec (default {DEFAULT_FAULTS!r}; '' for none)",
    )
    parser.add_argument(
        "--duration",
        type=seconds(high=365 * 86_400),
        help="stop after this many seconds (default: at Ctrl-C)",
    )
    parser.add_argument("--data-dir", type=Path, help="where to keep the demo's files")
    parser.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="local broker: Mosquitto when installed, else amqtt (default auto)",
    )
    parser.add_argument("--mqtt-port", type=port(), help="broker port (default 1883 when free)")
    parser.add_argument(
        "--sim-port",
        type=port(allow_zero=True),
        default=4061,
        help="first meter port (default 4061; 0: any)",
    )
    parser.add_argument(
        "--no-live", action="store_true", help="print a status line every 5 s instead of a table"
    )
    parser.add_argument(
        "--log-level", type=log_level, default="warning", help="bridge log level (default warning)"
    )


def run(args: argparse.Namespace) -> int:
    """Run the demo; prints a JSON summary at the end."""
    if args.meters < 1 or args.interval <= 0:
        print("demo: --meters must be >= 1 and --interval > 0", file=sys.stderr)
        return 2
    if args.faults:
        try:
            parse_fault_spec(args.faults)
        except FaultSpecError as exc:
            print(f"demo: --faults: {exc}", file=sys.stderr)
            return 2
    setup_logging(args.log_level, stream=sys.stderr)
    logging.getLogger("bridge.mqtt").setLevel(logging.ERROR)
    options = DemoOptions(
        meters=args.meters,
        interval_s=args.interval,
        faults=args.faults,
        duration_s=args.duration,
        data_dir=args.data_dir,
        broker=args.broker,
        mqtt_port=args.mqtt_port,
        sim_port=args.sim_port,
        live=not args.no_live and sys.stdout.isatty(),
    )
    try:
        summary = trio.run(run_demo, options)
    except KeyboardInterrupt:
        print("\ndemo: stopped", file=sys.stderr)
        return 0
    except (RuntimeError, OSError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"summary": summary}))
    return 0
