"""The TOML config: defaults, resolution, secrets, every error with its path, round trips."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import (
    DEFAULT_DATA_DIR,
    MASK,
    PRESETS,
    BridgeConfig,
    ConfigError,
    MeterConfig,
    MqttConfig,
    PublishConfig,
    RegisterConfig,
    ServiceConfig,
    TlsConfig,
    _BridgeSection,
    _MeterSection,
    _MqttSection,
    _PublishSection,
    _TlsSection,
    config_from_dict,
    config_to_dict,
    converter,
    diff_meters,
    load_config,
    masked,
    parse_config,
)
from codec.obis import Obis
from tests.codec.conftest import load_vectors

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "bridge.example.toml"

MINIMAL = """
[mqtt]
host = "broker.local"

[[meters]]
name = "m1"
host = "10.0.0.7"
port = 3333
registers = "field-meter"
"""


def parse(text: str, **kwargs: Any) -> BridgeConfig:
    kwargs.setdefault("env", {})
    return parse_config(text, **kwargs)


def errors_of(text: str, **kwargs: Any) -> list[str]:
    kwargs.setdefault("env", {})
    with pytest.raises(ConfigError) as info:
        parse_config(text, **kwargs)
    return info.value.errors


def meter_config(extra: str = "", *, defaults: str = "", head: str = "") -> str:
    """A valid config with one meter, ``extra`` added to the meter's table."""
    return f"""
{head}
[mqtt]
host = "broker.local"
[defaults]
{defaults}
[[meters]]
name = "m1"
host = "10.0.0.7"
port = 3333
registers = "field-meter"
{extra}
"""


# --------------------------------------------------------------------------------------------
# The example file and the defaults.


def test_example_file_loads_and_matches_the_simulator() -> None:
    cfg = load_config(EXAMPLE, env={})
    assert cfg.source == str(EXAMPLE)
    assert cfg.publish.mode == "gateway"
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == ("127.0.0.1", 1883, None)
    assert cfg.mqtt.token == "demo-gateway-token"
    assert cfg.mqtt.auth_username == "demo-gateway-token"
    assert [m.name for m in cfg.meters] == ["sim-1", "sim-2", "sim-3"]
    assert [m.port for m in cfg.meters] == [4061, 4062, 4063]
    for m in cfg.meters:
        assert m.host == "127.0.0.1"
        assert m.enabled
        assert m.transport == "hdlc"
        assert (m.client_sap, m.server_logical, m.server_physical) == (1, 0, 1)
        assert m.server_address_size == 1
        assert m.password == "00000000"
        assert m.registers == PRESETS["field-meter"]
        assert m.token is None


def test_example_file_documents_every_option() -> None:
    """Each key the file may hold appears in the example: set, commented out, or in a list."""
    text = EXAMPLE.read_text()
    keys = {
        attr.name
        for cls in (_BridgeSection, _MqttSection, _PublishSection, _MeterSection, _TlsSection)
        for attr in attrs.fields(cls)
    }
    missing = [k for k in sorted(keys) if not re.search(rf"^#?\s*{k}(\s+=|\s\s)", text, re.M)]
    assert missing == []


def test_defaults_of_a_minimal_config() -> None:
    cfg = parse(MINIMAL)
    assert cfg.bridge.data_dir == DEFAULT_DATA_DIR
    assert cfg.bridge.name  # the host name
    assert cfg.bridge.summary_interval_s == 60.0
    assert cfg.bridge.log_level == "info"
    assert cfg.mqtt == MqttConfig(host="broker.local", port=1883, client_id=cfg.mqtt.client_id)
    assert cfg.mqtt.client_id.startswith("dlms-bridge-")
    assert cfg.publish == PublishConfig()
    (m,) = cfg.meters
    assert m == MeterConfig(name="m1", host="10.0.0.7", port=3333, registers=PRESETS["field-meter"])
    assert (m.interval_s, m.timeout_s, m.inactivity_timeout_s) == (15.0, 5.0, 180.0)
    assert (m.max_pdu_size, m.hdlc_max_info, m.hdlc_window, m.byte_stuffing) == (
        1024,
        128,
        1,
        False,
    )
    assert m.password is None


def test_presets() -> None:
    assert [r.key for r in PRESETS["field-meter"]] == [
        "voltage_l1",
        "current_l1",
        "frequency",
        "active_power",
        "active_energy",
    ]
    assert [str(r.obis) for r in PRESETS["three-phase"]] == [
        "1-1:32.7.0",
        "1-1:31.7.0",
        "1-1:14.7.0",
        "1-1:1.7.0",
        "1-1:1.8.0",
        "1-1:52.7.0",
        "1-1:51.7.0",
        "1-1:72.7.0",
        "1-1:71.7.0",
    ]
    assert {(r.class_id, r.attribute) for r in PRESETS["three-phase"]} == {(3, 2)}


def test_presets_agree_with_the_field_meter_facts() -> None:
    facts = load_vectors()
    meter = facts["meter_in_the_field"]
    expected = [(r["key"], Obis.parse(r["obis"]), r["class"]) for r in meter["registers"]]
    assert [(r.key, r.obis, r.class_id) for r in PRESETS["field-meter"]] == expected
    extra = [Obis.parse(o) for o in meter["three_phase_extra"]]
    assert [r.obis for r in PRESETS["three-phase"][5:]] == extra


def test_defaults_section_applies_to_meters_that_do_not_override() -> None:
    cfg = parse(
        """
[mqtt]
host = "b"
[defaults]
port = 4061
interval_s = 30
timeout_s = 10
client_sap = 16
registers = "three-phase"
password = "12345678"
[[meters]]
name = "a"
host = "h1"
[[meters]]
name = "b"
host = "h2"
port = 5000
interval_s = 60
password_env = "B_PW"
registers = [{ key = "e", obis = "1.0.1.8.0.255", class_id = 3 }]
""",
        env={"B_PW": "b-secret"},
    )
    a, b = cfg.meters
    assert (a.port, a.interval_s, a.timeout_s, a.client_sap) == (4061, 30.0, 10.0, 16)
    assert a.registers == PRESETS["three-phase"]
    assert a.password == "12345678"
    assert (b.port, b.interval_s, b.timeout_s) == (5000, 60.0, 10.0)
    # A meter's password_env replaces the whole password setting of [defaults].
    assert b.password == "b-secret"
    assert b.registers == (RegisterConfig(key="e", obis=Obis(1, 0, 1, 8, 0, 255)),)


@pytest.mark.parametrize(
    "text", ["1-1:32.7.0", "1-1:32.7.0*255", "1-1:32.7.0.255", "1.1.32.7.0.255", " 1-1:32.7.0 "]
)
def test_obis_notations(text: str) -> None:
    cfg = parse(
        meter_config(defaults=f'registers = [{{ key = "v", obis = "{text}" }}]').replace(
            'registers = "field-meter"', ""
        )
    )
    assert cfg.meters[0].registers[0].obis == Obis(1, 1, 32, 7, 0, 255)


def test_address_size_auto() -> None:
    def size(logical: int, physical: int) -> int:
        cfg = parse(meter_config(f"server_logical = {logical}\nserver_physical = {physical}"))
        return cfg.meters[0].server_address_size

    assert size(0, 1) == 1  # the field meter
    assert size(0, 127) == 1
    assert size(1, 17) == 2
    assert size(127, 127) == 2
    assert size(1, 128) == 4
    assert size(0x3FFF, 0x3FFF) == 4


def test_wrapper_defaults_to_logical_device_1() -> None:
    cfg = parse(meter_config('transport = "wrapper"'))
    assert cfg.meters[0].transport == "wrapper"
    assert cfg.meters[0].server_logical == 1
    cfg = parse(meter_config('transport = "wrapper"\nserver_logical = 3\nclient_sap = 300'))
    assert (cfg.meters[0].server_logical, cfg.meters[0].client_sap) == (3, 300)


def test_tls() -> None:
    cfg = parse(MINIMAL.replace('host = "broker.local"', 'host = "b"\ntls = true'))
    assert cfg.mqtt.tls == TlsConfig()
    assert cfg.mqtt.port == 8883
    cfg = parse(MINIMAL.replace('host = "broker.local"', 'host = "b"\ntls = false'))
    assert (cfg.mqtt.tls, cfg.mqtt.port) == (None, 1883)


def test_tls_files_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    (tmp_path / "c.pem").write_text("x")
    text = MINIMAL.replace(
        'host = "broker.local"',
        'host = "b"\nport = 8884\n'
        'tls = { ca_file = "ca.pem", cert_file = "c.pem", insecure = true }',
    )
    cfg = parse(text, base_dir=tmp_path)
    assert cfg.mqtt.tls == TlsConfig(
        ca_file=str(tmp_path / "ca.pem"), cert_file=str(tmp_path / "c.pem"), insecure=True
    )
    assert cfg.mqtt.port == 8884


def test_data_dir_from_state_directory_and_relative(tmp_path: Path) -> None:
    cfg = parse(MINIMAL, env={"STATE_DIRECTORY": "/var/lib/dlms-bridge-2:/var/lib/other"})
    assert cfg.bridge.data_dir == "/var/lib/dlms-bridge-2"
    cfg = parse("[bridge]\ndata_dir = 'state'\n" + MINIMAL, base_dir=tmp_path)
    assert cfg.bridge.data_dir == str(tmp_path / "state")


def test_client_id_is_stable_and_distinct_per_instance() -> None:
    def client_id(head: str) -> str:
        return parse(head + MINIMAL).mqtt.client_id

    first = client_id("[bridge]\nname = 'sub 7'\ndata_dir = '/srv/a'\n")
    assert first == client_id("[bridge]\nname = 'sub 7'\ndata_dir = '/srv/a'\n")
    assert re.fullmatch(r"dlms-bridge-sub-7-[0-9a-f]{8}", first)
    assert first != client_id("[bridge]\nname = 'sub 7'\ndata_dir = '/srv/b'\n")
    assert first != client_id("[bridge]\nname = 'sub 8'\ndata_dir = '/srv/a'\n")
    explicit = MINIMAL.replace('host = "broker.local"', 'host = "b"\nclient_id = "mine"')
    assert parse(explicit).mqtt.client_id == "mine"


# --------------------------------------------------------------------------------------------
# Secrets.


def test_secrets_from_file_and_env(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("file-token\n")
    cfg = parse(
        meter_config(defaults='password_file = "token"').replace(
            'host = "broker.local"', 'host = "b"\ntoken_env = "TB"'
        ),
        env={"TB": "env-token"},
        base_dir=tmp_path,
    )
    assert cfg.mqtt.token == "env-token"
    assert cfg.meters[0].password == "file-token"  # one trailing newline dropped


def test_secrets_stay_out_of_repr_and_are_masked() -> None:
    text = meter_config(defaults='password = "meter-pw-123"').replace(
        'host = "broker.local"', 'host = "b"\nusername = "u"\npassword = "mqtt-pw-456"'
    )
    cfg = parse(text)
    assert (cfg.mqtt.username, cfg.mqtt.password) == ("u", "mqtt-pw-456")
    for secret in ("meter-pw-123", "mqtt-pw-456"):
        assert secret not in repr(cfg)
        assert secret not in json.dumps(config_to_dict(cfg))
    shown = config_to_dict(cfg)
    assert shown["mqtt"]["password"] == MASK
    assert shown["meters"][0]["password"] == MASK
    assert shown["mqtt"]["token"] is None  # absent secrets stay absent
    assert masked(cfg).meters[0].registers == cfg.meters[0].registers
    assert config_to_dict(cfg, mask_secrets=False)["mqtt"]["password"] == "mqtt-pw-456"


def test_device_mode_tokens() -> None:
    cfg = parse(
        """
[mqtt]
host = "b"
[publish]
mode = "device"
[defaults]
port = 1
registers = "field-meter"
[[meters]]
name = "a"
host = "h1"
token = "tok-a"
[[meters]]
name = "b"
host = "h2"
token_env = "TOK_B"
""",
        env={"TOK_B": "tok-b"},
    )
    assert [m.token for m in cfg.meters] == ["tok-a", "tok-b"]
    assert cfg.mqtt.token is None


def test_topic_mode() -> None:
    cfg = parse(
        meter_config(
            head='[publish]\nmode = "topic"\ntopic = "x/{bridge}/{meter}"\npayload = "flat"'
        )
    )
    assert (cfg.publish.topic, cfg.publish.payload) == ("x/{bridge}/{meter}", "flat")


# --------------------------------------------------------------------------------------------
# Errors: each with its path, all at once.

ERROR_CASES = [
    (
        meter_config('port = "abc"').replace("port = 3333\n", ""),
        "meters[0].port: expected an int, got 'abc'",
    ),
    (
        meter_config("port = 0").replace("port = 3333\n", ""),
        "meters[0].port: must be between 1 and 65535, got 0",
    ),
    (
        meter_config("port = true").replace("port = 3333\n", ""),
        "meters[0].port: expected an int, got True",
    ),
    (
        meter_config("intervall = 3"),
        "meters[0].intervall: unknown key (did you mean 'interval_s'?)",
    ),
    (meter_config("colour = 3"), "meters[0].colour: unknown key"),
    ("[mqt]\n" + MINIMAL, "mqt: unknown key (did you mean 'mqtt'?)"),
    (
        meter_config("timeout_s = 15"),
        "meters[0].timeout_s: timeout_s (15) must be less than interval_s (15)",
    ),
    (
        meter_config(defaults="timeout_s = 20"),
        "defaults.timeout_s: timeout_s (20) must be less than interval_s (15)",
    ),
    (meter_config("interval_s = -1"), "meters[0].interval_s: must be a positive number, got -1.0"),
    (meter_config("interval_s = nan"), "meters[0].interval_s: must be a positive number, got nan"),
    (meter_config('interval_s = "15"'), "meters[0].interval_s: expected a number, got '15'"),
    (
        meter_config("interval_s = 1e300"),
        "meters[0].interval_s: must be at most 86400 s (one day), got 1e+300",
    ),
    (
        meter_config(defaults="interval_s = 86401.5"),
        "defaults.interval_s: must be at most 86400 s (one day), got 86401.5",
    ),
    (
        meter_config('transport = "tcp"'),
        "meters[0].transport: expected one of 'hdlc', 'wrapper', got 'tcp'",
    ),
    (
        meter_config("server_address_size = 3"),
        "meters[0].server_address_size: expected one of 1, 2, 4, 'auto', got 3",
    ),
    (
        meter_config("server_logical = 1\nserver_address_size = 1"),
        "meters[0].server_address_size: 1 byte holds only server_logical 0 and "
        "server_physical up to 127, got 1 and 1",
    ),
    (
        meter_config("client_sap = 200"),
        "meters[0].client_sap: must be at most 127 with HDLC, got 200",
    ),
    (meter_config("hdlc_window = 8"), "meters[0].hdlc_window: must be between 1 and 7, got 8"),
    (meter_config('name = ""').replace('name = "m1"\n', ""), "meters[0].name: must not be empty"),
    (meter_config().replace('host = "10.0.0.7"\n', ""), "meters[0].host: required"),
    (
        meter_config().replace("port = 3333\n", ""),
        "meters[0].port: required (set it here or in [defaults])",
    ),
    (
        meter_config().replace('registers = "field-meter"\n', ""),
        "meters[0].registers: required (set it here or in [defaults])",
    ),
    (
        meter_config().replace('"field-meter"', '"four-phase"'),
        "meters[0].registers: unknown preset 'four-phase' (known: 'field-meter', 'three-phase')",
    ),
    (
        meter_config().replace('"field-meter"', "[]"),
        "meters[0].registers: must list at least one register",
    ),
    (
        meter_config().replace('"field-meter"', "3"),
        "meters[0].registers: expected a preset name ('field-meter', 'three-phase') "
        "or an array of tables, got 3",
    ),
    (
        meter_config().replace(
            '"field-meter"', '[{ key = "v", obis = "1-1:32.7.0" }, { key = "v", obis = "1-1:99" }]'
        ),
        "meters[0].registers[1].obis: not an OBIS code: '1-1:99' "
        "(expected A-B:C.D.E, A-B:C.D.E*F or A.B.C.D.E.F, groups 0..255)",
    ),
    (
        meter_config().replace(
            '"field-meter"',
            '[{ key = "v", obis = "1-1:32.7.0" }, { key = "v", obis = "1-1:1.8.0" }]',
        ),
        "meters[0].registers[1].key: duplicate of meters[0].registers[0].key ('v')",
    ),
    (
        meter_config().replace('"field-meter"', '[{ key = "a b", obis = "1-1:1.8.0" }]'),
        "meters[0].registers[0].key: must be letters, digits, '_', '.' or '-', got 'a b'",
    ),
    (
        meter_config().replace('"field-meter"', '[{ obis = "1-1:1.8.0", attribute = 0 }]'),
        "meters[0].registers[0].key: required",
    ),
    (
        meter_config().replace(
            '"field-meter"', '[{ key = "k", obis = "1-1:1.8.0", attribute = 0 }]'
        ),
        "meters[0].registers[0].attribute: must be between 1 and 127, got 0",
    ),
    (
        meter_config().replace('"field-meter"', '["1-1:1.8.0"]'),
        "meters[0].registers[0]: expected a table, got '1-1:1.8.0'",
    ),
    (MINIMAL.replace('host = "broker.local"', ""), "mqtt.host: required"),
    (
        MINIMAL.replace('host = "broker.local"', 'host = "b"\nqos = 2'),
        "mqtt.qos: expected one of 0, 1, got 2",
    ),
    (
        MINIMAL.replace('host = "broker.local"', 'host = "b"\nqos = true'),
        "mqtt.qos: expected one of 0, 1, got True",
    ),
    (
        MINIMAL.replace('host = "broker.local"', 'host = "b"\ntls = "yes"'),
        "mqtt.tls: expected true, false or a table, got 'yes'",
    ),
    (
        MINIMAL.replace('host = "broker.local"', 'host = "b"\ntls = { cafile = "x" }'),
        "mqtt.tls.cafile: unknown key (did you mean 'ca_file'?)",
    ),
    (
        MINIMAL.replace('host = "broker.local"', 'host = "b"\ntls = { key_file = "/dev/null" }'),
        "mqtt.tls.key_file: needs mqtt.tls.cert_file",
    ),
    (
        MINIMAL.replace('host = "broker.local"', 'host = "b"\ntoken = "a"\ntoken_env = "T"'),
        "mqtt.token_env: give only one of mqtt.token and mqtt.token_env",
    ),
    (
        MINIMAL.replace('host = "broker.local"', 'host = "b"\ntoken_file = "/nonexistent/t"'),
        "mqtt.token_file: cannot read /nonexistent/t: No such file or directory",
    ),
    (
        MINIMAL.replace('host = "broker.local"', 'host = "b"\ntoken_env = "NOPE"'),
        "mqtt.token_env: environment variable NOPE is not set",
    ),
    (
        MINIMAL.replace('host = "broker.local"', 'host = "b"\ntoken = "t"\nusername = "u"'),
        "mqtt.username: not used with a token (the token is the user name)",
    ),
    (
        MINIMAL.replace('host = "broker.local"', 'host = "b"\npassword = "p"'),
        "mqtt.password: needs mqtt.username",
    ),
    (
        meter_config(head='[publish]\nmode = "device"'),
        'meters[0].token: required in publish mode "device" (or token_file, token_env)',
    ),
    (meter_config('token = "t"'), 'meters[0].token: only used in publish mode "device"'),
    (
        meter_config('token = "t"', head='[publish]\nmode = "device"').replace(
            'host = "broker.local"', 'host = "b"\ntoken = "g"'
        ),
        'mqtt.token: not used in publish mode "device": each meter logs in with its own token',
    ),
    (
        meter_config(head='[publish]\nmode = "topic"'),
        'publish.topic: required in publish mode "topic"',
    ),
    (
        meter_config(head='[publish]\nmode = "topic"\ntopic = "m/{meter}/{key}"'),
        "publish.topic: unknown placeholder {key} in 'm/{meter}/{key}' "
        "(allowed: {meter}, {bridge})",
    ),
    (
        meter_config(head='[publish]\nmode = "topic"\ntopic = "m/+/x"'),
        "publish.topic: must not contain '+', '#' or NUL: 'm/+/x'",
    ),
    (
        meter_config(head='[publish]\nmode = "topic"\ntopic = "m/{meter"'),
        "publish.topic: not a valid template: expected '}' before end of string",
    ),
    (
        meter_config(head='[publish]\ntopic = "m/{meter}"'),
        'publish.topic: only used in publish mode "topic"',
    ),
    (
        meter_config(head='[publish]\nmode = "broadcast"'),
        "publish.mode: expected one of 'gateway', 'device', 'topic', got 'broadcast'",
    ),
    (
        meter_config(head="[publish]\nmax_payload_bytes = 100000"),
        "publish.max_payload_bytes: 100000 is more than publish.max_bytes_per_s (65536): "
        "such a message could never be sent",
    ),
    (
        meter_config(head="[bridge]\nlog_level = 'verbose'"),
        "bridge.log_level: expected one of 'debug', 'info', 'warning', 'error', got 'verbose'",
    ),
    ("[mqtt]\nhost = 'b'\n", "meters: no meters: add at least one [[meters]] table"),
    ("meters = 3\n[mqtt]\nhost = 'b'\n", "meters: expected an array of tables ([[meters]]), got 3"),
    (
        "mqtt = 3\n[[meters]]\nname='a'\nhost='h'\nport=1\nregisters='field-meter'",
        "mqtt: expected a table, got 3",
    ),
    (
        "[mqtt]\nhost = 'b'\nhost = 'c'\n",
        "line 3, column 11: TOML syntax error: Cannot overwrite a value",
    ),
    (
        "[mqtt\n",
        "line 1, column 6: TOML syntax error: Expected ']' at the end of a table declaration",
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_error_message_names_the_path(text: str, expected: str) -> None:
    assert expected in errors_of(text)


def test_duplicates_across_meters() -> None:
    text = """
[mqtt]
host = "b"
[publish]
mode = "device"
[defaults]
port = 3333
registers = "field-meter"
[[meters]]
name = "m1"
host = "10.0.0.1"
token = "t1"
[[meters]]
name = "m2"
host = "10.0.0.1"
server_physical = 2
token = "t2"
[[meters]]
name = "m3"
host = "10.0.0.2"
token = "t3"
[[meters]]
name = "m1"
host = "10.0.0.1"
server_physical = 2
token = "t3"
"""
    assert errors_of(text) == [
        "meters[3].name: duplicate of meters[0].name ('m1')",
        "meters[3].host: same host, port and server address as meters[1] ('m2')",
        "meters[3].token: same token as meters[2] ('m3')",
    ]


def test_every_error_is_reported_at_once() -> None:
    text = """
[bridge]
summary_interval_s = 0
[mqtt]
host = "b"
port = 70000
[publish]
outbox_synchronous = "off"
[defaults]
registers = "field-meter"
[[meters]]
name = "m1"
host = "h"
port = "abc"
[[meters]]
name = "m2"
host = "h"
port = 3333
timeout_s = 20
registers = [{ key = "v", obis = "1-1:99" }]
[[meters]]
name = "m1"
host = "h2"
port = 1
intervall = 3
"""
    assert errors_of(text) == [
        "bridge.summary_interval_s: must be a positive number, got 0.0",
        "mqtt.port: must be between 1 and 65535, got 70000",
        "publish.outbox_synchronous: expected one of 'full', 'normal', got 'off'",
        "meters[0].port: expected an int, got 'abc'",
        "meters[1].registers[0].obis: not an OBIS code: '1-1:99' (expected A-B:C.D.E, "
        "A-B:C.D.E*F or A.B.C.D.E.F, groups 0..255)",
        "meters[2].intervall: unknown key (did you mean 'interval_s'?)",
    ]
    # Once those are fixed, the checks that need whole sections find the rest.
    fixed = (
        text.replace('"abc"', "2")
        .replace('"1-1:99"', '"1-1:1.8.0"')
        .replace("intervall = 3", "interval_s = 30")
        .replace('"off"', '"normal"')
        .replace("70000", "1883")
        .replace("= 0\n", "= 5\n")
    )
    assert errors_of(fixed) == [
        "meters[1].timeout_s: timeout_s (20) must be less than interval_s (15)",
        "meters[2].name: duplicate of meters[0].name ('m1')",
    ]


def test_config_error_str_lists_everything() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("[mqtt]\nport = 0\n", source="bridge.toml", env={})
    assert str(info.value) == (
        "bridge.toml: 3 errors\n"
        "  mqtt.host: required\n"
        "  mqtt.port: must be between 1 and 65535, got 0\n"
        "  meters: no meters: add at least one [[meters]] table"
    )


def test_load_config_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.toml")
    assert info.value.errors == [
        f"cannot read {tmp_path / 'missing.toml'}: No such file or directory"
    ]
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"[mqtt]\nhost = '\xe9'\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert info.value.errors == ["not UTF-8 text (byte 15 is 0xe9)"]


def test_secret_file_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    text = MINIMAL.replace('host = "broker.local"', 'host = "b"\ntoken_file = "empty"')
    assert errors_of(text, base_dir=tmp_path) == [f"mqtt.token_file: {tmp_path / 'empty'} is empty"]
    if os.geteuid() != 0:  # root reads anything
        (tmp_path / "locked").write_text("x")
        (tmp_path / "locked").chmod(0)
        text = MINIMAL.replace('host = "broker.local"', 'host = "b"\ntoken_file = "locked"')
        assert errors_of(text, base_dir=tmp_path) == [
            f"mqtt.token_file: cannot read {tmp_path / 'locked'}: Permission denied"
        ]


# --------------------------------------------------------------------------------------------
# Properties.

_names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=12)
_secret = st.none() | st.text(min_size=1, max_size=10)
_seconds = st.floats(min_value=0.001, max_value=1e6, allow_nan=False)
_registers = st.builds(
    RegisterConfig,
    key=st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
    obis=st.builds(Obis, *[st.integers(0, 255)] * 6),
    class_id=st.integers(1, 65535),
    attribute=st.integers(1, 127),
)
_meters = st.builds(
    MeterConfig,
    name=_names,
    host=_names,
    port=st.integers(1, 65535),
    enabled=st.booleans(),
    transport=st.sampled_from(["hdlc", "wrapper"]),
    client_sap=st.integers(0, 127),
    server_logical=st.integers(0, 0x3FFF),
    server_physical=st.integers(0, 0x3FFF),
    server_address_size=st.sampled_from([1, 2, 4]),
    password=_secret,
    interval_s=_seconds,
    timeout_s=_seconds,
    inactivity_timeout_s=_seconds,
    registers=st.lists(_registers, max_size=4).map(tuple),
    max_pdu_size=st.integers(64, 65535),
    hdlc_max_info=st.integers(32, 2030),
    hdlc_window=st.integers(1, 7),
    byte_stuffing=st.booleans(),
    token=_secret,
)
_configs = st.builds(
    BridgeConfig,
    bridge=st.builds(
        ServiceConfig,
        name=_names,
        data_dir=_names,
        summary_interval_s=_seconds,
        log_level=st.sampled_from(["debug", "info", "warning", "error"]),
    ),
    mqtt=st.builds(
        MqttConfig,
        host=_names,
        port=st.integers(1, 65535),
        client_id=_names,
        tls=st.none() | st.builds(TlsConfig, ca_file=st.none() | _names, insecure=st.booleans()),
        token=_secret,
        username=st.none() | _names,
        password=_secret,
        keepalive=st.integers(5, 65535),
        qos=st.sampled_from([0, 1]),
    ),
    publish=st.builds(
        PublishConfig,
        mode=st.sampled_from(["gateway", "device", "topic"]),
        topic=st.none() | _names,
        payload=st.sampled_from(["thingsboard", "flat"]),
        max_messages_per_s=_seconds,
        max_payload_bytes=st.integers(256, 2**20),
        outbox_synchronous=st.sampled_from(["full", "normal"]),
    ),
    meters=st.lists(_meters, max_size=3).map(tuple),
    source=_names,
)


@given(_configs)
def test_structure_unstructure_round_trip(cfg: BridgeConfig) -> None:
    plain = converter.unstructure(cfg)
    assert converter.structure(plain, BridgeConfig) == cfg
    # And through JSON, as `check-config --json` prints it (without masking).
    assert converter.structure(json.loads(json.dumps(plain)), BridgeConfig) == cfg


def test_round_trip_of_the_example() -> None:
    cfg = load_config(EXAMPLE, env={})
    assert converter.structure(converter.unstructure(cfg), BridgeConfig) == cfg


_KEYS = sorted(
    {
        a.name
        for c in (ServiceConfig, MqttConfig, PublishConfig, MeterConfig, TlsConfig, RegisterConfig)
        for a in attrs.fields(c)
    }
    | {"bridge", "mqtt", "publish", "defaults", "meters", "token_file", "password_env", "obis"}
)
_toml_scalars = (
    st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.booleans()
    | st.text(max_size=12)
    | st.sampled_from(["field-meter", "hdlc", "1-1:1.8.0", "auto", "topic", "device"])
)
_toml_values = st.recursive(
    _toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=25,
)


# A path of bare or quoted keys and indexes, then the message.
_LOCATED = re.compile(
    r'^(?:[\w-]+|"(?:[^"\\]|\\.)*")(?:\.(?:[\w-]+|"(?:[^"\\]|\\.)*")|\[\d+\])*: \S'
)


@given(st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=4), _toml_values, max_size=6))
def test_any_document_gives_a_config_or_located_errors(document: dict[str, Any]) -> None:
    errors: list[str] = []
    try:
        config_from_dict(document, env={})
    except ConfigError as exc:
        errors = exc.errors
        assert errors, "a ConfigError names at least one problem"
    for line in errors:
        assert _LOCATED.match(line), line


def test_diff_meters() -> None:
    base = parse("""
[mqtt]
host = "b"
[defaults]
port = 1
registers = "field-meter"
[[meters]]
name = "a"
host = "h1"
[[meters]]
name = "b"
host = "h2"
[[meters]]
name = "c"
host = "h3"
""")
    a, b, c = base.meters
    b2 = attrs.evolve(b, interval_s=60.0)
    c2 = attrs.evolve(c, password="rotated")  # a new secret is a change too
    d = attrs.evolve(a, name="d", host="h4")
    added, removed, changed = diff_meters(base.meters, [d, b2, c2])
    assert (added, removed, changed) == ([d], [a], [b2, c2])
    assert diff_meters(base.meters, base.meters) == ([], [], [])


def test_unknown_keys_do_not_hide_other_errors_of_the_same_table() -> None:
    errors = errors_of(
        """
[bridge]
name = "x"
data_dir = "/tmp/x"
[mqtt]
host = "h"
[defaults]
registers = "field-meter"
[[meters]]
name = "a"
host = "h"
port = 99999
intervall = 3
[[meters]]
name = "b"
host = "h"
port = "abc"
foo = 1
"""
    )
    assert errors == [
        "meters[0].intervall: unknown key (did you mean 'interval_s'?)",
        "meters[0].port: must be between 1 and 65535, got 99999",
        "meters[1].port: expected an int, got 'abc'",
        "meters[1].foo: unknown key",
    ]


def test_attributes_are_registers_published_as_device_attributes() -> None:
    text = MINIMAL.replace(
        "[[meters]]",
        '[defaults]\nattributes = [{ key = "serial", obis = "0-0:96.1.0", class_id = 1 }]\n'
        "[[meters]]",
        1,
    )
    (m,) = parse(text).meters
    assert [(a.key, str(a.obis), a.class_id, a.attribute) for a in m.attributes] == [
        ("serial", "0-0:96.1.0", 1, 2)
    ]
    clash = MINIMAL + 'attributes = [{ key = "voltage_l1", obis = "0-0:96.1.0", class_id = 1 }]\n'
    assert errors_of(clash) == [
        "meters[0].attributes[0].key: 'voltage_l1' is also the key of a register"
    ]
