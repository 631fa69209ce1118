"""Whatever ``check-config`` accepts, ``run`` runs: one validation for both.

Edge configs (limits of MQTT string fields, host names under IDNA rules, topic templates, port
ranges, deep nesting) are checked with ``dlms-bridge check-config``; every accepted one is then
started through the service's own startup path (``BridgeService.run``: lock, outbox, MQTT
client, publisher, pollers) against a real Mosquitto and the simulator, and must run without a
crash, a traceback or a crashed poller. Rejected ones must give exit 2 and a line naming the key,
never quoting a secret.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge.cli import main
from bridge.config import load_config
from bridge.service import BridgeService, mqtt_settings
from tests.bridge.conftest import GATEWAY_TOKEN
from tests.bridge.mosquitto import TOKEN_PASSWORD, Mosquitto
from tests.bridge.waiting import wait_until

SECRET = "s3cr3t-\u0007-value"


def toml_string(value: str) -> str:
    """A TOML basic string for `value` (escapes control characters)."""
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif not ch.isprintable():
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def config_text(
    *,
    mqtt: dict[str, Any] | None = None,
    publish: dict[str, Any] | None = None,
    meters: list[dict[str, Any]] | None = None,
    extra: str = "",
) -> str:
    """A config for the broker and simulator placeholders {BROKER_PORT}, {M0}, {M1}."""

    def table(values: dict[str, Any]) -> str:
        lines = []
        for key, value in values.items():
            shown = toml_string(value) if isinstance(value, str) else str(value).lower()
            lines.append(f"{key} = {shown}")
        return "\n".join(lines)

    mqtt = {"host": "127.0.0.1", "port": "{BROKER_PORT}", **(mqtt or {})}
    meters = meters or [{"name": "m0", "host": "127.0.0.1", "port": "{M0}"}]
    parts = [
        '[bridge]\nname = "edge"\nsummary_interval_s = 0.5\n',
        "[mqtt]\n" + table(mqtt).replace('"{BROKER_PORT}"', "{BROKER_PORT}"),
        "[publish]\n" + table(publish or {}),
        '[defaults]\npassword = "00000000"\nregisters = "field-meter"\n'
        "interval_s = 0.5\ntimeout_s = 0.3\n",
    ]
    for meter in meters:
        parts.append(
            "[[meters]]\n" + table(meter).replace('"{M0}"', "{M0}").replace('"{M1}"', "{M1}")
        )
    return "\n\n".join(parts) + "\n" + extra


GATEWAY_LOGIN = {"username": GATEWAY_TOKEN, "password": TOKEN_PASSWORD}
LABEL_63 = "a" * 63
TWO_METERS = [
    {"name": "m0", "host": "127.0.0.1", "port": "{M0}"},
    {"name": "m1", "host": "127.0.0.1", "port": "{M1}"},
]

ACCEPTED = {
    "topic mode, one meter, no {meter}": config_text(
        mqtt=GATEWAY_LOGIN, publish={"mode": "topic", "topic": "site/{bridge}/telemetry"}
    ),
    "topic mode, two meters, {meter} and {bridge}": config_text(
        mqtt=GATEWAY_LOGIN,
        publish={"mode": "topic", "topic": "site/{bridge}/{meter}"},
        meters=TWO_METERS,
    ),
    "device mode, client id plus meter name at 65535 bytes": config_text(
        mqtt={"client_id": "c" * (65535 - 3)},
        publish={"mode": "device"},
        meters=[{"name": "m0", "host": "127.0.0.1", "port": "{M0}", "token": "token-meter-a"}],
    ),
    "client id of 65535 bytes": config_text(mqtt={**GATEWAY_LOGIN, "client_id": "c" * 65535}),
    "username and password of 65535 bytes (UTF-8)": config_text(
        mqtt={"username": "u" * 65535, "password": "\u00e9" * 32767}
    ),
    "token of 65535 bytes": config_text(mqtt={"token": "t" * 65535}),
    "meter host with a 63-character label": config_text(
        mqtt=GATEWAY_LOGIN,
        meters=[{"name": "m0", "host": f"{LABEL_63}.invalid", "port": 65535}],
    ),
    "IDNA meter host and IPv6 literal": config_text(
        mqtt=GATEWAY_LOGIN,
        meters=[
            {"name": "m0", "host": "b\u00fccher.invalid.", "port": 1},
            {"name": "m1", "host": "::1", "port": "{M1}"},
        ],
    ),
}

REJECTED = {
    "topic mode, two meters, no {meter}": (
        config_text(publish={"mode": "topic", "topic": "site/all"}, meters=TWO_METERS),
        "publish.topic: must contain {meter}: 2 meters share the connection",
    ),
    "client id over 65535 bytes": (
        config_text(mqtt={"client_id": "\u00e9" * 32768}),
        "mqtt.client_id: is 65536 bytes of UTF-8, more than MQTT allows (65535)",
    ),
    "token over 65535 bytes": (
        config_text(mqtt={"token": "t" * 65536}),
        "mqtt.token: is 65536 bytes of UTF-8, more than MQTT allows (65535)",
    ),
    "password over 65535 bytes": (
        config_text(mqtt={"username": "u", "password": "p" * 70000}),
        "mqtt.password: is 70000 bytes of UTF-8, more than MQTT allows (65535)",
    ),
    "host label over 63 characters": (
        config_text(mqtt={"host": "a" * 64 + ".example"}),
        "mqtt.host: host name label 1 is 64 characters long, more than 63",
    ),
    "meter host label over 63 characters": (
        config_text(meters=[{"name": "m0", "host": "x." + "b" * 80, "port": 1}]),
        "meters[0].host: host name label 2 is 80 characters long, more than 63",
    ),
    "host name over 253 characters": (
        config_text(mqtt={"host": ".".join([LABEL_63] * 4)}),
        "mqtt.host: host name is 255 characters long in ASCII form, more than 253",
    ),
    "host name only IDNA 2003 takes": (
        config_text(meters=[{"name": "m0", "host": "\u2603.example", "port": 1}]),
        "meters[0].host: not a valid host name under IDNA 2008 rules",
    ),
    "empty label": (
        config_text(mqtt={"host": "a..b"}),
        "mqtt.host: host name 'a..b' has an empty label",
    ),
    "device mode client id too long with the meter's name": (
        config_text(
            mqtt={"client_id": "c" * 65530},
            publish={"mode": "device"},
            meters=[{"name": "meter-1", "host": "h", "port": 1, "token": "t"}],
        ),
        "meters[0].name: makes the client id of its connection (mqtt.client_id + '-' + name) "
        "65538 bytes long",
    ),
    "mqtt port 0": (config_text(mqtt={"port": 0}), "mqtt.port: must be between 1 and 65535"),
    "meter port 65536": (
        config_text(meters=[{"name": "m0", "host": "h", "port": 65536}]),
        "meters[0].port: must be between 1 and 65535, got 65536",
    ),
    "token with a control character": (
        config_text(mqtt={"token": SECRET}),
        "mqtt.token: contains a control character at position 8",
    ),
    "token of the wrong type": (
        config_text(mqtt={"token": 12345678}),
        "mqtt.token: expected a string, got a value of type int",
    ),
    "meter password with a control character": (
        config_text(meters=[{"name": "m0", "host": "h", "port": 1, "password": SECRET}]),
        "meters[0].password: contains a control character at position 8",
    ),
    "meter password over 255 bytes": (
        config_text(meters=[{"name": "m0", "host": "h", "port": 1, "password": "p" * 256}]),
        "meters[0].password: must be at most 255 bytes",
    ),
    "TOML nested 600 levels": (
        config_text(extra="x = " + "[" * 600 + "]" * 600 + "\n"),
        "<top>: arrays or tables nested more than 32 levels deep",
    ),
    "a table nested 40 levels": (
        config_text().replace('name = "edge"', "name = " + "{ a = " * 40 + "1" + " }" * 40),
        "bridge.name: arrays or tables nested more than 32 levels deep",
    ),
}


def _write(tmp_path: Path, text: str, broker_port: int, ports: tuple[int, ...]) -> Path:
    text = text.replace("{BROKER_PORT}", str(broker_port))
    text = text.replace("{M0}", str(ports[0])).replace("{M1}", str(ports[1]))
    path = tmp_path / "bridge.toml"
    path.write_text(text.replace('name = "edge"', f'name = "edge"\ndata_dir = "{tmp_path}/data"'))
    return path


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_configs_name_the_key_and_never_quote_secrets(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text, expected = REJECTED[case]
    path = _write(tmp_path, text, 1883, (4061, 4062))
    assert main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert expected in err, err
    assert "s3cr3t" not in err and "p" * 64 not in err
    # `run` refuses it the same way, before starting anything.
    assert main(["run", "--config", str(path)]) == 2
    _, err = capsys.readouterr()
    assert expected in err and "s3cr3t" not in err and "Traceback" not in err


async def test_every_config_check_config_accepts_runs(
    tmp_path: Path,
    mosquitto: Mosquitto,
    simulator: Any,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    _sim, ports = await simulator(meters=2, seed=4)
    for case, text in sorted(ACCEPTED.items()):
        caplog.clear()
        directory = tmp_path / case.replace(" ", "-").replace("{", "").replace("}", "")
        directory.mkdir()
        path = _write(directory, text, mosquitto.port, ports)
        assert main(["check-config", str(path)]) == 0, (case, capsys.readouterr().err)
        capsys.readouterr()
        config = load_config(path)
        service = BridgeService(
            config, config_path=path, handle_signals=False, shutdown_flush_s=0.5
        )
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(service.run)
                # The meters on the simulator are read twice (the others may fail meanwhile).
                local = [m.name for m in config.meters if m.host == "127.0.0.1"]
                await wait_until(
                    lambda service=service, local=local: all(
                        service.snapshot()["meters"].get(name, {}).get("successes", 0) >= 2
                        for name in local
                    ),
                    20,
                    f"{case}: two readings of every meter on the simulator",
                )
                snapshot = service.snapshot()
                service.stop()
        for name, meter in snapshot["meters"].items():
            assert meter["crashes"] == 0, (case, name, meter)
        assert not [a for a in snapshot["alarms"] if a.endswith(".crashed")], (case, snapshot)
        tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
        assert not tracebacks, (case, tracebacks)
        # The meters on the simulator were read: the startup path really ran.
        for name, meter in snapshot["meters"].items():
            if config.meters[[m.name for m in config.meters].index(name)].host == "127.0.0.1":
                assert meter["successes"] >= 2, (case, name, meter)


async def test_reload_refused_line_never_quotes_a_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    path = _write(tmp_path, config_text(mqtt=GATEWAY_LOGIN), 1883, (4061, 4062))
    service = BridgeService(load_config(path), config_path=path, handle_signals=False)
    path.write_text(path.read_text().replace('"00000000"', toml_string(SECRET)))
    assert await service.reload() is False
    lines = [r.getMessage() + str(getattr(r, "dlms_fields", "")) for r in caplog.records]
    refused = [line for line in lines if "reload_refused" in line]
    assert len(refused) == 1, lines
    assert "defaults.password: contains a control character at position 8" in refused[0]
    assert not [line for line in lines if "s3cr3t" in line]


def test_refused_login_names_the_credential_source_not_its_characters(tmp_path: Path) -> None:
    token_file = tmp_path / "token.txt"
    token_file.write_text("tok-from-file\n")
    cases = {
        'token = "tok-inline"': "the token from mqtt.token in the config file",
        f'token_file = "{token_file}"': f"the token from file {token_file} (mqtt.token_file)",
        'token_env = "TB_TOKEN"': "the token from environment variable TB_TOKEN (mqtt.token_env)",
        'username = "bridge"\npassword_env = "MQTT_PW"': (
            "mqtt.username in the config file with the password from environment variable "
            "MQTT_PW (mqtt.password_env)"
        ),
    }
    for line, expected in cases.items():
        text = config_text().replace("[publish]", f"{line}\n\n[publish]")
        path = _write(tmp_path, text, 1883, (4061, 4062))
        config = load_config(path, env={"TB_TOKEN": "tok-from-env", "MQTT_PW": "pw"})
        assert mqtt_settings(config).credential_source == expected
