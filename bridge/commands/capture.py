"""``dlms-bridge capture``: a recording proxy between a client and a meter, writing pcap."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import trio

from bridge.capture import PcapWriter, ProxySession, RecordingProxy
from bridge.commands.argtypes import host as check_host
from bridge.commands.argtypes import port, seconds

EXIT_BAD_ARGS = 2
EXIT_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options."""
    parser.add_argument(
        "--listen",
        type=port(allow_zero=True),
        required=True,
        metavar="PORT",
        help="port for clients (0: any free)",
    )
    parser.add_argument(
        "--meter", required=True, metavar="HOST:PORT", help="the meter to forward to"
    )
    parser.add_argument(
        "--out", type=Path, required=True, metavar="FILE.pcap", help="the capture to write"
    )
    parser.add_argument(
        "--listen-host",
        type=check_host,
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=seconds(high=3600),
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the meter to accept a connection (default 5)",
    )


def parse_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``; raises ValueError saying what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text:
        raise ValueError(f"{text[:60]!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text[:60]!r}: write an IPv6 address in brackets, as [::1]:4059")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text[:60]!r}: port {port_text[:20]!r} is not a number from 1 to 65535")
    try:
        host = check_host(host)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None
    return host, int(port_text)


def _check(args: argparse.Namespace) -> tuple[str, int]:
    try:
        meter = parse_host_port(args.meter)
    except ValueError as exc:
        raise ValueError(f"--meter {exc}") from None
    parent = args.out.parent
    if not parent.is_dir():
        raise ValueError(f"--out {args.out}: directory {parent} does not exist")
    if args.out.is_dir():
        raise ValueError(f"--out {args.out}: is a directory, give a file name")
    return meter


def run(args: argparse.Namespace) -> int:
    """Run the proxy until Ctrl-C or SIGTERM."""
    try:
        meter = _check(args)
    except ValueError as exc:
        print(f"capture: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    try:
        writer = PcapWriter(args.out)
    except OSError as exc:
        print(f"capture: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    try:
        return trio.run(_serve, args, meter, writer)
    finally:
        writer.close()


def _print_session(session: ProxySession) -> None:
    print(session.describe(), flush=True)


async def _serve(args: argparse.Namespace, meter: tuple[str, int], writer: PcapWriter) -> int:
    proxy = RecordingProxy(
        writer, meter, connect_timeout=args.connect_timeout, on_session=_print_session
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                addresses = await nursery.start(proxy.serve, args.listen, args.listen_host)
            except OSError as exc:
                print(
                    f"capture: cannot listen on {args.listen_host}:{args.listen}: "
                    f"{exc.strerror or exc}",
                    file=sys.stderr,
                )
                nursery.cancel_scope.cancel()
                return EXIT_FAILED
            where = ", ".join(f"{host}:{port}" for host, port in addresses)
            print(
                f"listening on {where}, forwarding to {args.meter}, recording to {args.out}",
                flush=True,
            )
            async for signum in signals:
                print(f"capture: {signal.Signals(signum).name}, closing", file=sys.stderr)
                nursery.cancel_scope.cancel()
                break
    print(
        f"recorded {len(proxy.sessions)} session(s), {writer.packets} packets, to {args.out}",
        flush=True,
    )
    return 0
