"""``dlms-bridge simulate``: serve simulated DLMS meters over TCP, with fault injection.

``--meters N`` meters are served on ports P, P+1, ... (``--port 0``: ephemeral ports), by one
process or, with ``--workers`` (automatic from 1,000 meters on), by worker processes that each
serve a share of the meters (see :mod:`bridge.simulator.workers`).
It prints one line per range of consecutive ports, then a line starting with ``ready``, and
serves until interrupted (Ctrl-C or SIGTERM). A bad ``--faults`` spec exits with status 2 and
names the bad part. With ``--control-port``, faults can be changed and counters read while it
runs (JSON lines, see :mod:`bridge.simulator.control`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Iterator

import trio

from bridge import meter_security
from bridge.commands.argtypes import host, integer, port, seconds
from bridge.limits import raise_open_file_limit
from bridge.simulator import (
    MODELS,
    TRANSPORTS,
    FaultSpecError,
    MeterSettings,
    Simulator,
    SimulatorConfig,
    SimulatorError,
    SimulatorPorts,
    parse_fault_spec,
)
from bridge.simulator.meter import MeterSecurity
from bridge.simulator.workers import AUTO_METERS_PER_WORKER, auto_workers, serve_in_workers
from codec.hdlc_params import LinkParameters

#: Exit status for bad arguments (same as ``bridge.cli.EXIT_USAGE``).
EXIT_USAGE = 2
#: Most meters one simulator serves.
MAX_METERS = 20_000
#: Most worker processes.
MAX_WORKERS = 64
#: ``--gather-ms auto``: requests gather this long (ms) from GATHER_FROM meters on, else 0.
AUTO_GATHER_MS = 10.0
GATHER_FROM = 100


def _gather(text: str) -> float | str:
    """``--gather-ms``: ``auto`` or 0..1000 milliseconds."""
    if text.strip().lower() == "auto":
        return "auto"
    return float(integer(0, 1000)(text))


def _workers(text: str) -> int | str:
    """``--workers``: ``auto`` or 1..MAX_WORKERS."""
    if text.strip().lower() == "auto":
        return "auto"
    return integer(1, MAX_WORKERS)(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the subcommand's arguments."""
    parser.add_argument(
        "--meters", type=integer(1, MAX_METERS), default=1, metavar="N", help="meters to serve (1)"
    )
    parser.add_argument(
        "--port",
        type=port(allow_zero=True),
        default=4061,
        metavar="P",
        help="port of meter 0; meter i on P+i (4061; 0: any free ports)",
    )
    parser.add_argument(
        "--host", type=host, default="127.0.0.1", help="address to listen on (127.0.0.1)"
    )
    parser.add_argument(
        "--workers",
        type=_workers,
        default="auto",
        metavar="N",
        help="processes serving the meters, each a share (auto: one per"
        f" {AUTO_METERS_PER_WORKER:,} meters, at most one per core)",
    )
    parser.add_argument(
        "--gather-ms",
        type=_gather,
        default="auto",
        metavar="MS",
        help="let requests gather up to MS ms and answer them together, for less CPU per poll"
        f" (auto: {AUTO_GATHER_MS:g} from {GATHER_FROM} meters on, else 0: answer at once)",
    )
    parser.add_argument("--transport", choices=TRANSPORTS, default="hdlc")
    parser.add_argument("--model", choices=sorted(MODELS), default="single-phase")
    parser.add_argument(
        "--password",
        default="00000000",
        help='LLS password of client SAP 1 (00000000; "" for none)',
    )
    parser.add_argument(
        "--faults",
        default="",
        metavar="SPEC",
        help="faults, e.g. 'all:garbage=0.1;3-5:fcs=0.2,delay=1;7:refuse' (see the docs)",
    )
    parser.add_argument(
        "--seed", type=integer(0, 2**63 - 1), default=0, help="seed of values and faults (0)"
    )
    parser.add_argument(
        "--control-port",
        type=port(allow_zero=True),
        default=None,
        metavar="C",
        help="JSON-lines control port",
    )
    parser.add_argument(
        "--inactivity-timeout",
        type=seconds(high=86_400, allow_low=True),
        default=180.0,
        metavar="S",
        help="drop idle links after S seconds (180; 0 never)",
    )
    parser.add_argument(
        "--max-info",
        type=integer(32, 2030),
        default=128,
        metavar="BYTES",
        help="the meters' HDLC maximum information field length (128)",
    )
    parser.add_argument(
        "--max-pdu",
        type=integer(64, 0xFFFF),
        default=1024,
        metavar="BYTES",
        help="server max receive PDU (1024)",
    )
    parser.add_argument(
        "--profile-period",
        type=int,
        default=900,
        metavar="S",
        help="seconds between load profile entries (900)",
    )
    parser.add_argument(
        "--record",
        metavar="DIR",
        help="record every session as pcap, one file per meter (DIR/meter-0000.pcap, ...)",
    )
    meter_security.add_arguments(parser, meter_side=True)
    parser.add_argument(
        "--strict-counters",
        action="store_true",
        help="refuse a client invocation counter not above any seen before (as a real meter);"
        " by default only within one association, so that test clients may restart at 1",
    )


def _meter_security(args: argparse.Namespace) -> tuple[bool, MeterSecurity | None]:
    """(keep the LLS password, the security client SAP 1 must use); ValueError says why."""
    secret = args.password.encode() if args.password else None
    options = meter_security.options_from_args(args, secret, meter_side=True)
    if options is None:
        return True, None
    if options.policy is None and options.mechanism_name in ("none", "lls"):
        return options.mechanism_name == "lls", None
    return True, MeterSecurity(
        options.mechanism,
        options.policy,
        options.system_title or MeterSecurity().system_title,
        options.keys,
        options.secret,
        strict_counters=args.strict_counters,
    )


def _check(args: argparse.Namespace) -> str | None:
    """The first problem with the arguments, or None."""
    if args.record is not None:
        try:  # the captures hold the password in clear: a new directory is the owner's only
            os.makedirs(args.record, mode=0o700, exist_ok=True)
        except OSError as exc:
            return f"--record {args.record}: {exc.strerror or exc}"
    if args.meters < 1:
        return f"--meters must be at least 1, not {args.meters}"
    if not 0 <= args.port <= 0xFFFF:
        return f"--port must be 0..65535, not {args.port}"
    if args.port and args.port + args.meters - 1 > 0xFFFF:
        return f"--meters {args.meters} from --port {args.port} run past port 65535"
    if args.control_port is not None and not 0 <= args.control_port <= 0xFFFF:
        return f"--control-port must be 0..65535, not {args.control_port}"
    if args.inactivity_timeout < 0:
        return "--inactivity-timeout must be >= 0"
    if not 32 <= args.max_info <= 2030:
        return f"--max-info must be 32..2030, not {args.max_info}"
    if not 64 <= args.max_pdu <= 0xFFFF:
        return f"--max-pdu must be 64..65535, not {args.max_pdu}"
    if not 1 <= args.profile_period <= 86_400:
        return f"--profile-period must be 1..86400 seconds, not {args.profile_period}"
    return None


def gather_seconds(option: float | str, meters: int) -> float:
    """The reactor's gathering time for ``--gather-ms`` (a number or ``auto``)."""
    if isinstance(option, str):
        return AUTO_GATHER_MS / 1000 if meters >= GATHER_FROM else 0.0
    return option / 1000


def port_ranges(ports: tuple[int, ...]) -> Iterator[tuple[int, int, int, int]]:
    """(first meter, last meter, first port, last port) for each run of consecutive ports."""
    start = 0
    for i in range(1, len(ports) + 1):
        if i == len(ports) or ports[i] != ports[i - 1] + 1:
            yield start, i - 1, ports[start], ports[i - 1]
            start = i


def describe(config: SimulatorConfig, ports: SimulatorPorts, workers: int = 1) -> list[str]:
    """The start-up lines: one per port range, then the ready line."""
    kind = f"{config.transport}, {config.settings.model}"
    sec = config.settings.security
    if sec is not None:
        policy = "no ciphering" if sec.policy is None else sec.policy.label
        kind += (
            f", client SAP 1: {meter_security.mechanism_name(sec.mechanism)} {policy},"
            f" system title {sec.system_title.hex().upper()}"
        )
    lines = []
    for first, last, low, high in port_ranges(ports.meters):
        meters = f"meter {first}" if first == last else f"meters {first}-{last}"
        where = f"port {low}" if low == high else f"ports {low}-{high}"
        lines.append(f"{meters}: {ports.host} {where} ({kind})")
    control = "" if ports.control is None else f", control port {ports.control}"
    faults = f", faults {config.faults}" if str(config.faults) else ""
    processes = f", {workers} worker processes" if workers > 1 else ""
    lines.append(
        f"ready: {len(ports.meters)} meters on {ports.host}, seed {config.seed}{processes}"
        f"{faults}{control}"
    )
    return lines


async def _serve(sim: Simulator, config: SimulatorConfig) -> None:
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(sim.serve)
        for line in describe(config, ports):
            print(line, flush=True)
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                return


def run(args: argparse.Namespace) -> int:
    """Parse the arguments, start the simulator and serve until interrupted."""
    problem = _check(args)
    if problem is None:
        try:
            faults = parse_fault_spec(args.faults, args.meters)
        except FaultSpecError as exc:
            problem = f"--faults: {exc}"
    keep_password, security = True, None
    if problem is None:
        try:
            keep_password, security = _meter_security(args)
        except ValueError as exc:
            problem = str(exc)
    if problem is not None:
        print(f"dlms-bridge simulate: {problem}", file=sys.stderr)
        return EXIT_USAGE
    settings = MeterSettings(
        model=args.model,
        password=args.password.encode() if args.password and keep_password else None,
        security=security,
        hdlc=LinkParameters(args.max_info, args.max_info, 1, 1),
        max_pdu=args.max_pdu,
        inactivity_timeout=args.inactivity_timeout,
        profile_period=args.profile_period,
    )
    config = SimulatorConfig(
        meters=args.meters,
        host=args.host,
        port=args.port,
        transport=args.transport,
        settings=settings,
        faults=faults,
        seed=args.seed,
        control_port=args.control_port,
        record_dir=args.record,
        gather=gather_seconds(args.gather_ms, args.meters),
    )
    soft, _ = raise_open_file_limit()
    if soft < 2 * args.meters + 64:
        print(
            f"dlms-bridge simulate: warning: the open file limit {soft} is low for "
            f"{args.meters} meters and their connections",
            file=sys.stderr,
        )
    workers = args.workers if isinstance(args.workers, int) else auto_workers(args.meters)
    workers = min(workers, args.meters)
    try:
        sim = Simulator(config)
        if workers > 1:

            def announce(ports: SimulatorPorts) -> None:
                for line in describe(config, ports, workers):
                    print(line, flush=True)

            return serve_in_workers(sim, workers, announce)
        trio.run(_serve, sim, config)
    except BaseException as exc:  # sorted out below; anything unexpected is re-raised
        error = _expected(exc)
        if error is None:
            raise
        if isinstance(error, SimulatorError):
            print(f"dlms-bridge simulate: {error}", file=sys.stderr)
            return 1
    return 0


def _expected(exc: BaseException) -> BaseException | None:
    """The SimulatorError or KeyboardInterrupt that ``exc`` is or only holds, else None."""
    if isinstance(exc, SimulatorError | KeyboardInterrupt):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_expected(e) for e in exc.exceptions]
        if leaves and all(leaf is not None for leaf in leaves):
            return next((e for e in leaves if isinstance(e, SimulatorError)), leaves[0])
    return None
