"""One home for every default: the layers below the configuration take its values."""

from __future__ import annotations

import argparse
import inspect

import attrs

from bridge import outbox
from bridge.commands import read
from bridge.config import METER_DEFAULTS, MeterConfig, PublishConfig, parse_config
from bridge.publisher import PublisherSettings
from bridge.service import publisher_settings
from bridge.session import MeterEndpoint


def test_outbox_bounds_are_the_configured_defaults() -> None:
    config = PublishConfig()
    assert outbox.DEFAULT_MAX_BYTES == config.outbox_max_bytes == 256 * 1024 * 1024
    assert config.outbox_max_rows == outbox.DEFAULT_MAX_ROWS
    params = inspect.signature(outbox.Outbox).parameters
    assert params["max_bytes"].default == config.outbox_max_bytes
    assert params["max_rows"].default == config.outbox_max_rows


def test_publisher_defaults_are_the_configured_defaults() -> None:
    config = PublishConfig()
    settings = PublisherSettings()
    assert settings.batch_rows == config.max_readings_per_message == 500
    assert settings.max_payload_bytes == config.max_payload_bytes
    assert settings.max_bytes_per_s == config.max_bytes_per_s
    assert settings.max_messages_per_s == config.max_messages_per_s
    # What the service builds from a minimal file is what the publisher would default to.
    minimal = parse_config(
        '[mqtt]\nhost = "b"\n[[meters]]\nname = "m"\nhost = "h"\nport = 1\n'
        'registers = "field-meter"\n',
        env={},
    )
    built = publisher_settings(minimal)
    for field in attrs.fields(PublisherSettings):
        if field.name not in ("qos",):
            assert getattr(built, field.name) == getattr(settings, field.name), field.name


def test_meter_defaults_are_shared_by_the_session_and_the_read_command() -> None:
    meter = MeterConfig(name="m", host="h", port=1)
    endpoint = MeterEndpoint("h", 1)
    for name in ("transport", "client_sap", "server_physical", "byte_stuffing", "max_pdu_size"):
        assert getattr(endpoint, name) == getattr(meter, name) == METER_DEFAULTS[name]
    assert endpoint.timeout == meter.timeout_s == METER_DEFAULTS["timeout_s"]
    for name in ("interval_s", "inactivity_timeout_s", "hdlc_max_info", "hdlc_window"):
        assert getattr(meter, name) == METER_DEFAULTS[name]
    parser = argparse.ArgumentParser()
    read.add_arguments(parser)
    args = parser.parse_args(["--host", "h", "--port", "1"])
    assert args.timeout == meter.timeout_s
    assert args.max_info == meter.hdlc_max_info
    assert args.client_sap == meter.client_sap
    assert args.transport == meter.transport
