"""``dlms-bridge diagnose``: check the chain to one meter (and the broker) step by step.

``--config FILE --meter NAME`` takes everything from the config (and checks the MQTT side too);
``--host H --port P`` with the connection options of ``read`` checks a meter that is not
configured yet (add ``--config FILE`` to check the broker as well). Exit 0 only when every
step passes, 1 when one fails (the report names it), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import attrs
import trio

from bridge import meter_security
from bridge.commands.argtypes import (
    host,
    integer,
    password_file,
    password_text,
    port,
    seconds,
)
from bridge.config import BridgeConfig, ConfigError, MeterConfig, load_config
from bridge.counters import PersistentCounter, counter_path
from bridge.diagnose import DiagnoseReport, diagnose_meter
from bridge.diagnose_mqtt import TAKEOVER_WAIT_S, diagnose_mqtt
from bridge.mqtt import MqttSettings
from bridge.poller import endpoint_for
from bridge.service import mqtt_settings
from bridge.session import MeterEndpoint
from codec.client import RegisterSpec
from codec.errors import EncodeError
from codec.hdlc_params import LinkParameters

EXIT_FAILED = 1
EXIT_USAGE = 2
#: Reply timeout of a meter given by its connection options: the session's own default.
_METER_TIMEOUT_S = MeterEndpoint(host="", port=0).timeout
#: How long the broker may take to answer: the MQTT client's own connect timeout.
_MQTT_TIMEOUT_S = MqttSettings(host="", client_id="").connect_timeout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options."""
    parser.add_argument(
        "registers",
        nargs="*",
        metavar="OBIS",
        help="registers to read (OBIS or CLASS/OBIS[/ATTR]); default: the configured ones, "
        "or the clock",
    )
    parser.add_argument("--config", "-c", type=Path, help="the bridge's config file")
    parser.add_argument("--meter", help="the configured meter to check (needs --config)")
    parser.add_argument("--host", type=host, help="meter host name or address (instead of --meter)")
    parser.add_argument("--port", type=port(), help="meter TCP port (1..65535)")
    parser.add_argument("--transport", choices=("hdlc", "wrapper"), default="hdlc")
    parser.add_argument(
        "--client-sap", type=integer(1, 0x7F), default=1, help="client SAP, 1..127 (default 1)"
    )
    parser.add_argument(
        "--server-logical", type=integer(0, 0x3FFF), default=0, help="0..16383 (default 0)"
    )
    parser.add_argument(
        "--server-physical", type=integer(0, 0x3FFF), default=1, help="0..16383 (default 1)"
    )
    parser.add_argument("--server-address-size", type=int, choices=(1, 2, 4))
    secret = parser.add_mutually_exclusive_group()
    secret.add_argument(
        "--password", type=password_text, help="LLS password (prefer --password-file)"
    )
    secret.add_argument(
        "--password-file", type=password_file, metavar="FILE", help="file holding the LLS password"
    )
    parser.add_argument(
        "--timeout",
        type=seconds(high=3600),
        help="reply timeout, s (default: the meter's configured one, or "
        f"{_METER_TIMEOUT_S:g}; for the broker {_MQTT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--retries", type=integer(0, 10), default=1, help="retransmissions, 0..10 (default 1)"
    )
    parser.add_argument(
        "--max-info",
        type=integer(32, 2030),
        default=128,
        help="HDLC max information field, 32..2030",
    )
    parser.add_argument("--byte-stuffing", action="store_true", help="link uses 0x7D escapes")
    parser.add_argument(
        "--idle",
        type=seconds(high=86_400),
        metavar="S",
        help="leave the association idle S seconds, then use it again (inactivity timeout)",
    )
    parser.add_argument(
        "--publish",
        action="store_true",
        help="test publish as a telemetry key 'diagnose' (default: a harmless diagnostic message)",
    )
    parser.add_argument(
        "--takeover-wait",
        type=seconds(high=3600, allow_low=True),
        default=TAKEOVER_WAIT_S,
        metavar="S",
        help=f"seconds our MQTT connection must stay up (default {TAKEOVER_WAIT_S:g})",
    )
    parser.add_argument("--no-mqtt", action="store_true", help="skip the broker side")
    meter_security.add_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")


class _Usage(ValueError):
    """Bad input: one line, exit 2."""


def _from_options(args: argparse.Namespace) -> MeterEndpoint:
    if args.port is None:
        raise _Usage("--host needs --port")
    # Both were read and checked by their argument types.
    password: bytes | None = args.password_file or args.password
    timeout = args.timeout or _METER_TIMEOUT_S
    try:
        options = meter_security.options_from_args(args, password)
        security = None
        if options is not None:
            directory = args.counter_dir or meter_security.default_counter_dir()
            title = options.system_title or meter_security.instance_system_title(directory)
            counter = PersistentCounter(counter_path(directory, f"{args.host}_{args.port}", title))
            security = options.client_settings(counter, system_title=title)
    except ValueError as exc:
        raise _Usage(str(exc)) from None
    endpoint = MeterEndpoint(
        security=security,
        host=args.host,
        port=args.port,
        transport=args.transport,
        client_sap=args.client_sap,
        server_logical=args.server_logical,
        server_physical=args.server_physical,
        server_address_size=args.server_address_size,
        password=password,
        timeout=timeout,
        connect_timeout=timeout,
        retries=args.retries,
        link_parameters=LinkParameters(max_info_tx=args.max_info, max_info_rx=args.max_info),
        byte_stuffing=args.byte_stuffing,
    )
    try:
        endpoint.make_link()  # the addresses must fit their fields
    except EncodeError as exc:
        raise _Usage(str(exc)) from None
    return endpoint


def _registers(args: argparse.Namespace, meter: MeterConfig | None) -> list[RegisterSpec]:
    from bridge.commands.read import parse_register

    if args.registers:
        try:
            return [parse_register(r) for r in args.registers]
        except ValueError as exc:
            raise _Usage(f"register: {exc}") from None
    if meter is not None and meter.registers:
        return [RegisterSpec(r.obis, r.class_id, r.attribute, r.key) for r in meter.registers]
    from bridge.poller import CLOCK_TIME

    return [RegisterSpec(CLOCK_TIME.obis, CLOCK_TIME.class_id, CLOCK_TIME.attribute_id, "clock")]


def _plan(
    args: argparse.Namespace,
) -> tuple[BridgeConfig | None, MeterConfig | None, MeterEndpoint, list[RegisterSpec]]:
    config = None
    if args.config is not None:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise _Usage(f"the config cannot be used: {exc}") from None
    meter = None
    if args.meter is not None:
        if config is None:
            raise _Usage("--meter needs --config")
        if args.host is not None:
            raise _Usage("give --meter or --host, not both")
        meter = next((m for m in config.meters if m.name == args.meter), None)
        if meter is None:
            names = ", ".join(m.name for m in config.meters) or "none"
            raise _Usage(f"--meter: no meter {args.meter!r} in {args.config} (meters: {names})")
        endpoint = endpoint_for(meter)
        if meter.security is not None and config is not None:
            # The service's own counters (shared safely, see bridge.counters).
            endpoint = attrs.evolve(
                endpoint,
                security=meter_security.client_settings_for(meter, config.bridge.data_dir),
                frame_counter=meter.frame_counter,
            )
        if args.timeout is not None:
            endpoint = attrs.evolve(endpoint, timeout=args.timeout, connect_timeout=args.timeout)
        endpoint = attrs.evolve(endpoint, retries=args.retries)
    elif args.host is not None:
        endpoint = _from_options(args)
    else:
        raise _Usage("say which meter: --config FILE --meter NAME, or --host H --port P")
    if args.timeout is not None and not args.timeout > 0:
        raise _Usage("--timeout must be > 0")
    if args.idle is not None and not args.idle > 0:
        raise _Usage("--idle must be > 0")
    if args.retries < 0:
        raise _Usage("--retries must be >= 0")
    return config, meter, endpoint, _registers(args, meter)


async def _diagnose(
    args: argparse.Namespace,
    config: BridgeConfig | None,
    meter: MeterConfig | None,
    endpoint: MeterEndpoint,
    registers: list[RegisterSpec],
) -> DiagnoseReport:
    report = DiagnoseReport(target=meter.name if meter is not None else endpoint.label)
    report.steps.extend(await diagnose_meter(endpoint, registers, idle_s=args.idle))
    if config is not None and not args.no_mqtt and report.ok:
        device = meter if (config.publish.mode == "device" and meter is not None) else None
        settings = mqtt_settings(config, meter=device)
        report.steps.extend(
            await diagnose_mqtt(
                config,
                settings,
                meter=meter,
                timeout=args.timeout or _MQTT_TIMEOUT_S,
                publish_telemetry=args.publish,
                takeover_wait_s=args.takeover_wait,
            )
        )
    return report


def _use_colour() -> bool:
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def render(report: DiagnoseReport, *, colour: bool) -> str:
    """The text form: one line per step, the hint under the failed one, a verdict line."""
    lines = []
    green, red, reset = ("\x1b[32m", "\x1b[31m", "\x1b[0m") if colour else ("", "", "")
    for step in report.steps:
        mark = f"{green}PASS{reset}" if step.ok else f"{red}FAIL{reset}"
        lines.append(f"{mark}  {step.step}: {step.detail}")
        if not step.ok and step.hint:
            lines.append(f"      -> {step.hint}")
        for tried in step.data.get("tried", []) if not step.ok else []:
            lines.append(f"         tried {tried}")
    failed = report.failed
    lines.append(
        f"{report.target}: every step passed"
        if failed is None
        else f"{report.target}: FAILED at {failed.step}"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Plan, run the steps, print; 0 only when every step passed."""
    try:
        config, meter, endpoint, registers = _plan(args)
    except _Usage as exc:
        print(f"diagnose: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # The report says what went wrong; the components' own log lines would only repeat it.
    logging.getLogger("bridge").addHandler(logging.NullHandler())
    report = trio.run(_diagnose, args, config, meter, endpoint, registers)
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(render(report, colour=_use_colour()))
    return 0 if report.ok else EXIT_FAILED
