"""``dlms-bridge replay``: serve a recorded pcap session back as a meter."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import trio

from bridge.capture import ReplayResult, ReplayServer
from bridge.commands.argtypes import host, integer, port, seconds
from bridge.pcap import CaptureError, RecordedSession, read_sessions

EXIT_BAD_ARGS = 2
EXIT_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options."""
    parser.add_argument("pcap", type=Path, metavar="FILE.pcap", help="the capture to serve")
    parser.add_argument("--port", type=port(allow_zero=True), help="port to serve on (0: any free)")
    parser.add_argument(
        "--host", type=host, default="127.0.0.1", help="address to serve on (default 127.0.0.1)"
    )
    parser.add_argument(
        "--session",
        type=integer(0, 1_000_000),
        metavar="N",
        help="serve only session N (from 0) to every connection; default: session k to the k-th",
    )
    parser.add_argument(
        "--loop", action="store_true", help="serve the sessions again for each new connection"
    )
    parser.add_argument(
        "--speed",
        type=seconds(high=1000, allow_low=True),
        default=1.0,
        help="pace replies as recorded times this factor (default 1; 0: no pauses)",
    )
    parser.add_argument(
        "--list", action="store_true", help="list the sessions in the capture and exit"
    )


def _describe(session: RecordedSession) -> str:
    ending = session.closed_by or "no end captured"
    if session.reset:
        ending += " (reset)"
    return (
        f"session {session.index}: {session.label}, {len(session.segments)} segments, "
        f"client {len(session.client_bytes)} bytes, meter {len(session.server_bytes)} bytes, "
        f"{session.end - session.start:.2f} s, closed by {ending}"
    )


def run(args: argparse.Namespace) -> int:
    """Serve until every session was served (or Ctrl-C / SIGTERM with ``--loop``)."""
    try:
        sessions = read_sessions(args.pcap)
    except (CaptureError, OSError) as exc:
        print(f"replay: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    if not sessions:
        print(f"replay: {args.pcap} holds no TCP session", file=sys.stderr)
        return EXIT_BAD_ARGS
    if args.list:
        for session in sessions:
            print(_describe(session))
        return 0
    if args.port is None:
        print("replay: give --port (or --list)", file=sys.stderr)
        return EXIT_BAD_ARGS
    try:
        server = ReplayServer(
            sessions,
            only=args.session,
            loop=args.loop,
            speed=args.speed,
            on_result=_print_result,
            on_warning=_print_warning,
        )
    except ValueError as exc:
        print(f"replay: {args.pcap}: {exc}", file=sys.stderr)
        return EXIT_BAD_ARGS
    return trio.run(_serve, args, server, len(sessions))


def _print_result(result: ReplayResult) -> None:
    print(result.describe(), flush=True)


def _print_warning(message: str) -> None:
    print(f"replay: warning: {message}", file=sys.stderr, flush=True)


async def _serve(args: argparse.Namespace, server: ReplayServer, count: int) -> int:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                async for signum in signals:
                    print(f"replay: {signal.Signals(signum).name}, closing", file=sys.stderr)
                    nursery.cancel_scope.cancel()
                    return

            async def serve(task_status: trio.TaskStatus[list[tuple[str, int]]]) -> None:
                await server.serve(args.port, args.host, task_status=task_status)
                nursery.cancel_scope.cancel()

            try:
                addresses = await nursery.start(serve)
            except OSError as exc:
                print(
                    f"replay: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
                    file=sys.stderr,
                )
                nursery.cancel_scope.cancel()
                return EXIT_FAILED
            nursery.start_soon(watch_signals)
            which = f"session {args.session}" if args.session is not None else f"{count} session(s)"
            where = ", ".join(f"{host}:{port}" for host, port in addresses)
            print(
                f"serving {which} from {args.pcap} on {where}"
                + (" (looping)" if args.loop else ""),
                flush=True,
            )
    print(f"served {len(server.results)} connection(s), {server.warnings} warning(s)", flush=True)
    return 0
