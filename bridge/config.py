"""The bridge's TOML configuration: attrs models, structured by cattrs, every error with its path.

A config file has these sections (``deploy/bridge.example.toml`` documents every option)::

    [bridge]     instance name, data directory, summaries, log level
    [mqtt]       broker, TLS, credentials, client id, keepalive, QoS
    [publish]    payload mode, pacing, outbox limits
    [web]        the operators' console: listen address, admin token, local history bounds
    [alarms]     thresholds of the alarms the service raises itself
    [defaults]   meter settings applied to every [[meters]] entry that does not set them
    [[meters]]   one table per meter

Loading happens in two steps. The TOML document is first structured into private *section*
classes that mirror the file (every field optional, unknown keys refused), which gives type errors
with their path for free. Those sections are then checked and resolved into the public, frozen
models below: defaults merged into each meter, ``"auto"`` values decided, relative paths made
absolute, secrets read from their file or environment variable. Every problem found on the way is
collected, so one run of ``dlms-bridge check-config`` reports all of them::

    meters[2].port: expected an int, got 'abc'
    meters[0].registers[1].obis: not an OBIS code: '1-1:99' (...)
    meters[0].intervall: unknown key (did you mean 'interval_s'?)

Secrets (tokens, passwords) live in the resolved models as plain strings but never appear in their
``repr``; :func:`masked` replaces them for display.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import ipaddress
import json
import math
import os
import re
import socket
import string
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast, get_args, get_origin

import attrs
import cattrs
import idna
from cattrs.cols import list_structure_factory
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn

from bridge import meter_security
from bridge.sharding import parse_shard
from codec.obis import InvalidObis, Obis

__all__ = [
    "DEFAULT_DATA_DIR",
    "INTERVAL_MAX_S",
    "PRESETS",
    "AlarmsConfig",
    "BridgeConfig",
    "ClockConfig",
    "ConfigError",
    "MeterConfig",
    "MqttConfig",
    "ProfileConfig",
    "PublishConfig",
    "RegisterConfig",
    "ServiceConfig",
    "TlsConfig",
    "WebConfig",
    "config_from_dict",
    "config_to_dict",
    "converter",
    "diff_meters",
    "load_config",
    "masked",
    "parse_config",
]

#: Where the outbox and the lock file live when neither the config nor systemd says otherwise.
DEFAULT_DATA_DIR = "/var/lib/dlms-bridge"
#: ``[bridge] workers``: 0 is automatic (see :func:`bridge.workers.worker_count`).
DEFAULT_WORKERS = 0
#: The most poller processes ``[bridge] workers`` may ask for.
MAX_WORKERS = 64

#: Longest wait between reconnects to the broker, seconds (``mqtt.reconnect_max_s``).
RECONNECT_MAX_S = 30.0
#: Seconds a publish may wait for its PUBACK, none arriving, before the alarm
#: (``mqtt.puback_alarm_s``).
PUBACK_ALARM_S = 10.0

#: What :func:`masked` puts in place of a secret.
MASK = "***"
#: The longest poll interval of a meter (s): one day. The config file, the console API, the
#: ``set_interval`` RPC and the ``interval_s`` shared attribute all hold to it (a longer one,
#: such as 1e300, would silently stop polling the meter).
INTERVAL_MAX_S = 86_400.0

Transport = Literal["hdlc", "wrapper"]
PublishMode = Literal["gateway", "device", "topic"]
PayloadFormat = Literal["thingsboard", "flat"]
LogLevel = Literal["debug", "info", "warning", "error"]
Synchronous = Literal["full", "normal"]
Security = Literal["none", "lls", "hls-md5", "hls-sha1", "hls-sha256", "hls-gmac"]
SecurityPolicyName = Literal["none", "authenticated", "encrypted", "authenticated-encrypted"]

#: Longest string MQTT can carry in a packet field (client id, user name, password, topic).
MQTT_STRING_MAX = 65_535
#: Longest low-level-security password of a meter (bytes of UTF-8).
METER_PASSWORD_MAX = 255
#: Host names: a label of at most 63 characters, the name at most 253 (ASCII form).
HOST_LABEL_MAX = 63
HOST_NAME_MAX = 253
#: Deepest nesting of arrays and tables a config may have.
MAX_NESTING = 32
# Largest config file read: a device or pipe that never ends must not fill memory.
CONFIG_FILE_MAX = 16 * 1024 * 1024
#: Largest secret file read (a token or password is far smaller).
_SECRET_FILE_MAX = 4 * MQTT_STRING_MAX
#: Keys whose values are secrets: never quoted in an error.
SECRET_KEYS = frozenset({"token", "password", "block_cipher_key", "authentication_key"})

#: Placeholders allowed in ``publish.topic``.
TOPIC_PLACEHOLDERS = ("meter", "bridge")

#: The top-level tables, in the order errors are reported.
_SECTION_ORDER = ("bridge", "mqtt", "publish", "web", "alarms", "defaults", "meters")

M = TypeVar("M")
S = TypeVar("S")

_KEY_RE = re.compile(r"[A-Za-z0-9_.\-]+")


def _secret() -> Any:
    """A resolved secret: kept out of ``repr`` and marked for :func:`masked`."""
    return attrs.field(default=None, repr=False, metadata={"secret": True})


class ConfigError(Exception):
    """A config that cannot be used; ``errors`` holds one ``"path: message"`` line per problem."""

    def __init__(self, errors: Sequence[str], *, source: str = "<string>") -> None:
        self.errors = list(errors)
        self.source = source
        super().__init__(self.errors)

    def __str__(self) -> str:
        count = len(self.errors)
        head = f"{self.source}: {count} error{'s' if count != 1 else ''}"
        return "\n  ".join([head, *self.errors])


# --------------------------------------------------------------------------------------------
# The resolved, public models.


@attrs.frozen(kw_only=True)
class RegisterConfig:
    """One COSEM attribute to read, published under ``key``."""

    key: str
    obis: Obis
    class_id: int = 3
    attribute: int = 2


def _preset(*pairs: tuple[str, str]) -> tuple[RegisterConfig, ...]:
    return tuple(RegisterConfig(key=key, obis=Obis.parse(obis)) for key, obis in pairs)


_FIELD_METER = (
    ("voltage_l1", "1-1:32.7.0"),
    ("current_l1", "1-1:31.7.0"),
    ("frequency", "1-1:14.7.0"),
    ("active_power", "1-1:1.7.0"),
    ("active_energy", "1-1:1.8.0"),
)

#: Named register lists usable as ``registers = "<name>"``.
PRESETS: dict[str, tuple[RegisterConfig, ...]] = {
    # The single-phase meter in the field: every value is a class 3 register, attribute 2.
    "field-meter": _preset(*_FIELD_METER),
    "three-phase": _preset(
        *_FIELD_METER,
        ("voltage_l2", "1-1:52.7.0"),
        ("current_l2", "1-1:51.7.0"),
        ("voltage_l3", "1-1:72.7.0"),
        ("current_l3", "1-1:71.7.0"),
    ),
}


#: Defaults of a ``profiles = [...]`` entry.
PROFILE_BACKFILL_HOURS = 168.0
PROFILE_EVERY_S = 900.0
PROFILE_CHUNK_HOURS = 24.0
#: Largest backfill_hours and chunk_hours: ten years, far more than any meter keeps.
PROFILE_MAX_HOURS = 87_600.0


@attrs.frozen(kw_only=True)
class ProfileConfig:
    """A profile generic (load, billing, event log) read by range and delivered as telemetry.

    Each entry becomes one reading stamped with its own capture time; ``keys`` maps a column's
    OBIS code (as written in the config) to its telemetry key, other columns are published
    under their OBIS code.
    """

    obis: Obis
    #: How far back the first read (no high-water mark yet) goes.
    backfill_hours: float = PROFILE_BACKFILL_HOURS
    #: How often new entries are read (besides after every gap).
    every_s: float = PROFILE_EVERY_S
    #: A gap is read in ranges of at most this many hours, one per pause between polls.
    chunk_hours: float = PROFILE_CHUNK_HOURS
    #: (column OBIS, key) pairs.
    keys: tuple[tuple[str, str], ...] = ()

    def key_for(self, column: Obis) -> str | None:
        """The configured key of a column, if any."""
        for obis, key in self.keys:
            if Obis.parse(obis) == column:
                return key
        return None


#: Defaults of the clock health settings of a meter.
CLOCK_CHECK_S = 3600.0
CLOCK_DRIFT_ALARM_S = 60.0
CLOCK_SYNC_THRESHOLD_S = 10.0
CLOCK_SYNC_MAX_S = 3600.0


@attrs.frozen(kw_only=True)
class ClockConfig:
    """Clock health of a meter: how often its clock is read, when drift is an alarm, and the
    bounds within which the bridge may set it."""

    #: Seconds between clock reads (0: never; ``get_clock``/``sync_clock`` RPCs still work).
    #: The first read comes 5 minutes after start (sooner if ``check_s`` is shorter).
    check_s: float = CLOCK_CHECK_S
    #: A drift (meter minus box, either sign) past this raises ``meter.<name>.clock_drift``.
    drift_alarm_s: float = CLOCK_DRIFT_ALARM_S
    #: Set the meter's clock automatically when the drift exceeds ``sync_threshold_s``.
    auto_sync: bool = False
    #: ``sync_clock`` leaves a meter alone whose drift is below this.
    sync_threshold_s: float = CLOCK_SYNC_THRESHOLD_S
    #: Automatic sync never corrects more than this (a larger drift needs an operator's RPC).
    sync_max_s: float = CLOCK_SYNC_MAX_S


@attrs.frozen(kw_only=True)
class ServiceConfig:
    """The ``[bridge]`` section: who this instance is and where it keeps its state."""

    name: str
    data_dir: str
    summary_interval_s: float = 60.0
    log_level: LogLevel = "info"
    #: ``(K, N)``: this bridge polls only the meters that shard K of N owns (rendezvous hashing
    #: on the meter name); ``None``: every meter.
    shard: tuple[int, int] | None = None
    #: Poller processes; 0 picks one per core, but no more than one per 2,500 polls a second
    #: (:data:`bridge.workers.POLLS_PER_AUTO_WORKER`).
    workers: int = DEFAULT_WORKERS


@attrs.frozen(kw_only=True)
class TlsConfig:
    """TLS towards the broker; no ``ca_file`` means the system's CA store."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    #: Skip certificate and host name verification (test brokers only).
    insecure: bool = False


@attrs.frozen(kw_only=True)
class MqttConfig:
    """The ``[mqtt]`` section, with its credentials resolved."""

    host: str
    port: int
    client_id: str
    tls: TlsConfig | None = None
    #: ThingsBoard access token; sent as the MQTT user name with no password.
    token: str | None = _secret()
    username: str | None = None
    password: str | None = _secret()
    keepalive: int = 60
    qos: Literal[0, 1] = 1
    #: Longest wait between reconnect attempts, seconds.
    reconnect_max_s: float = RECONNECT_MAX_S
    #: Seconds a message may wait for its PUBACK (none arriving) before the alarm.
    puback_alarm_s: float = PUBACK_ALARM_S
    #: Where the token (or the password) came from, e.g. ``file /etc/x (mqtt.token_file)``.
    credential_source: str | None = None

    @property
    def auth_username(self) -> str | None:
        """The user name to log in with: the token if there is one."""
        return self.token if self.token is not None else self.username

    @property
    def address(self) -> str:
        """``host:port`` for messages, with IPv6 literals bracketed."""
        return _host_port(self.host, self.port)


@attrs.frozen(kw_only=True)
class PublishConfig:
    """The ``[publish]`` section: how readings become MQTT messages, and how fast.

    These defaults are the only ones: the publisher and the outbox take theirs from here.
    """

    mode: PublishMode = "gateway"
    #: Topic template in mode ``"topic"``, e.g. ``"meters/{meter}/telemetry"``.
    topic: str | None = None
    #: Payload format in mode ``"topic"``.
    payload: PayloadFormat = "thingsboard"
    max_messages_per_s: float = 4.0
    max_payload_bytes: int = 32_768
    max_bytes_per_s: int = 65_536
    max_readings_per_message: int = 500
    outbox_max_rows: int = 1_000_000
    outbox_max_bytes: int = 256 * 1024 * 1024
    outbox_synchronous: Synchronous = "full"
    #: Memory for readings kept while the outbox cannot write (disk full): their JSON plus
    #: ``SPILL_OVERHEAD`` bytes each.
    outbox_spill_max_bytes: int = 16 * 1024 * 1024
    #: Seconds of outbox growth while connected before ``publisher.falling_behind``.
    backlog_alarm_s: float = 60.0


#: Built-in values of the meter settings; ``port`` and ``registers`` have none.
_BUILTIN_METER: dict[str, Any] = {
    "transport": "hdlc",
    "client_sap": 1,
    "server_physical": 1,
    "server_address_size": "auto",
    "interval_s": 15.0,
    "timeout_s": 5.0,
    "inactivity_timeout_s": 180.0,
    "max_pdu_size": 1024,
    "hdlc_max_info": 128,
    "hdlc_window": 1,
    "byte_stuffing": False,
    "dedicated_key": False,
    "allow_control": False,
}
#: The same, read-only, for other layers (the ``read`` command, the session): one home.
METER_DEFAULTS: Mapping[str, Any] = MappingProxyType(_BUILTIN_METER)


@attrs.frozen(kw_only=True)
class WebConfig:
    """The ``[web]`` section: the operators' console (dashboard, admin API, metrics)."""

    enabled: bool = True
    #: ``host:port`` to listen on; a loopback address keeps the read-only API open.
    listen: str = "127.0.0.1:8080"
    #: The admin token, from ``token_file`` or ``token_env``; ``None``: generated into
    #: ``<data_dir>/admin-token`` at first start.
    token: str | None = _secret()
    #: Local history (``<data_dir>/history.sqlite``): kept this long, and at most this many values.
    history_max_age_s: float = 7 * 86400.0
    history_max_rows: int = 2_000_000
    #: At most one value per meter and key this often in the local history (0: every value).
    #: A fleet polled every second would otherwise fill the row bound within minutes.
    history_step_s: float = 10.0

    @property
    def host_port(self) -> tuple[str, int]:
        """``listen`` split into host and port (IPv6 literals without brackets)."""
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


@attrs.frozen(kw_only=True)
class AlarmsConfig:
    """The ``[alarms]`` section: thresholds of the alarms the service raises itself."""

    #: Window over which rates are computed (seconds).
    window_s: float = 600.0
    #: Alarm when fewer than this fraction of the readings taken were published in the window.
    publish_ratio_min: float = 0.5
    #: Alarm when a meter's successful cycles fall below this fraction in the window.
    success_rate_min: float = 0.8
    #: Alarm when a meter gave no reading for this many of its intervals.
    no_reading_intervals: int = 5
    #: Alarm when a meter's link needed more resynchronisations than this per hour.
    resyncs_per_hour_max: float = 60.0
    #: Alarm when the outbox holds more than this fraction of its row or byte bound.
    outbox_high_fraction: float = 0.8


@attrs.frozen(kw_only=True)
class MeterConfig:
    """One meter with ``[defaults]`` merged in and every ``"auto"`` decided."""

    name: str
    host: str
    port: int
    enabled: bool = True
    transport: Transport = _BUILTIN_METER["transport"]
    client_sap: int = _BUILTIN_METER["client_sap"]
    #: HDLC: upper address (0 on the field meter). Wrapper: the destination wPort.
    server_logical: int = 0
    #: HDLC lower address; unused by the wrapper.
    server_physical: int = _BUILTIN_METER["server_physical"]
    #: Bytes of the HDLC server address: 1, 2 or 4.
    server_address_size: Literal[1, 2, 4] = 1
    #: Low-level security (LLS) password; ``None`` means no authentication.
    password: str | None = _secret()
    interval_s: float = _BUILTIN_METER["interval_s"]
    timeout_s: float = _BUILTIN_METER["timeout_s"]
    inactivity_timeout_s: float = _BUILTIN_METER["inactivity_timeout_s"]
    registers: tuple[RegisterConfig, ...] = ()
    #: Values that never change (serial number, firmware): read with the registers, published
    #: as device attributes when the connection to the broker is made and when they change.
    attributes: tuple[RegisterConfig, ...] = ()
    max_pdu_size: int = _BUILTIN_METER["max_pdu_size"]
    hdlc_max_info: int = _BUILTIN_METER["hdlc_max_info"]
    hdlc_window: int = _BUILTIN_METER["hdlc_window"]
    byte_stuffing: bool = _BUILTIN_METER["byte_stuffing"]
    #: ThingsBoard device token, publish mode ``"device"`` only.
    token: str | None = _secret()
    #: Where the token came from, e.g. ``environment variable M1_TOKEN (meters[0].token_env)``.
    token_source: str | None = None
    #: Authentication mechanism; None: LLS if a password is set, else none.
    security: Security | None = None
    #: Ciphering; None: the mechanism's default (see bridge.meter_security).
    security_policy: SecurityPolicyName | None = None
    #: Our system title (16 hex digits); None: derived from the instance.
    system_title: str | None = None
    #: The meter's system title, checked against its AARE when given.
    meter_system_title: str | None = None
    #: Suite 0 keys (32 hex digits each).
    block_cipher_key: str | None = _secret()
    authentication_key: str | None = _secret()
    #: Cipher with a dedicated key agreed in each association (ded- APDUs).
    dedicated_key: bool = _BUILTIN_METER["dedicated_key"]
    #: Read this frame counter through the public client before associating.
    frame_counter: Obis | None = None
    #: Profiles read by range with a high-water mark (load profile, billing, event logs).
    profiles: tuple[ProfileConfig, ...] = ()
    #: Allow the ``disconnect``/``reconnect`` RPCs (the supply relay).
    allow_control: bool = _BUILTIN_METER["allow_control"]
    clock: ClockConfig = attrs.Factory(ClockConfig)

    @property
    def address(self) -> str:
        """``host:port`` for messages, with IPv6 literals bracketed."""
        return _host_port(self.host, self.port)


@attrs.frozen(kw_only=True)
class BridgeConfig:
    """A whole, valid configuration."""

    bridge: ServiceConfig
    mqtt: MqttConfig
    publish: PublishConfig = attrs.Factory(PublishConfig)
    meters: tuple[MeterConfig, ...] = ()
    web: WebConfig = attrs.Factory(WebConfig)
    alarms: AlarmsConfig = attrs.Factory(AlarmsConfig)
    #: Names of the meters added or changed through the admin API (kept in the data directory).
    api_meters: tuple[str, ...] = ()
    #: Where it was read from (a path, or ``"<string>"``), for reloads and messages.
    source: str = "<string>"

    @property
    def enabled_meters(self) -> tuple[MeterConfig, ...]:
        """The meters to poll."""
        return tuple(m for m in self.meters if m.enabled)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------------------------
# The file's sections as written: every field optional where [defaults] or a built-in value may
# fill it in. Type errors are found while structuring; the value checks are in _CHECKS.


@attrs.frozen(kw_only=True)
class _BridgeSection:
    name: str | None = None
    data_dir: str | None = None
    summary_interval_s: float = 60.0
    log_level: LogLevel = "info"
    shard: str | None = None
    workers: int | None = None


@attrs.frozen(kw_only=True)
class _TlsSection:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False


@attrs.frozen(kw_only=True)
class _MqttSection:
    host: str | None = None
    port: int | None = None
    tls: bool | _TlsSection | None = None
    token: str | None = None
    token_file: str | None = None
    token_env: str | None = None
    username: str | None = None
    password: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    client_id: str | None = None
    keepalive: int = 60
    qos: Literal[0, 1] = 1
    reconnect_max_s: float = RECONNECT_MAX_S
    puback_alarm_s: float = PUBACK_ALARM_S


_PUBLISH_DEFAULTS = PublishConfig()
#: The topic template of publish mode "topic" when ``topic`` is not given.
DEFAULT_TOPIC = "meters/{meter}/telemetry"


@attrs.frozen(kw_only=True)
class _PublishSection:
    mode: PublishMode = "gateway"
    topic: str | None = None
    payload: PayloadFormat | None = None
    max_messages_per_s: float = _PUBLISH_DEFAULTS.max_messages_per_s
    max_payload_bytes: int = _PUBLISH_DEFAULTS.max_payload_bytes
    max_bytes_per_s: int = _PUBLISH_DEFAULTS.max_bytes_per_s
    max_readings_per_message: int = _PUBLISH_DEFAULTS.max_readings_per_message
    outbox_max_rows: int = _PUBLISH_DEFAULTS.outbox_max_rows
    outbox_max_bytes: int = _PUBLISH_DEFAULTS.outbox_max_bytes
    outbox_synchronous: Synchronous = _PUBLISH_DEFAULTS.outbox_synchronous
    outbox_spill_max_bytes: int = _PUBLISH_DEFAULTS.outbox_spill_max_bytes
    backlog_alarm_s: float = _PUBLISH_DEFAULTS.backlog_alarm_s


_WEB_DEFAULTS = WebConfig()


@attrs.frozen(kw_only=True)
class _WebSection:
    enabled: bool = True
    listen: str = _WEB_DEFAULTS.listen
    token: str | None = None
    token_file: str | None = None
    token_env: str | None = None
    history_max_age_s: float = _WEB_DEFAULTS.history_max_age_s
    history_max_rows: int = _WEB_DEFAULTS.history_max_rows
    history_step_s: float = _WEB_DEFAULTS.history_step_s


_ALARMS_DEFAULTS = AlarmsConfig()


@attrs.frozen(kw_only=True)
class _AlarmsSection:
    window_s: float = _ALARMS_DEFAULTS.window_s
    publish_ratio_min: float = _ALARMS_DEFAULTS.publish_ratio_min
    success_rate_min: float = _ALARMS_DEFAULTS.success_rate_min
    no_reading_intervals: int = _ALARMS_DEFAULTS.no_reading_intervals
    resyncs_per_hour_max: float = _ALARMS_DEFAULTS.resyncs_per_hour_max
    outbox_high_fraction: float = _ALARMS_DEFAULTS.outbox_high_fraction


@attrs.frozen(kw_only=True)
class _RegisterSection:
    key: str | None = None
    obis: Obis | None = None
    class_id: int = 3
    attribute: int = 2


_Registers = str | list[_RegisterSection]


@attrs.frozen(kw_only=True)
class _ProfileSection:
    obis: Obis | None = None
    backfill_hours: float = PROFILE_BACKFILL_HOURS
    every_s: float = PROFILE_EVERY_S
    chunk_hours: float = PROFILE_CHUNK_HOURS
    keys: dict[str, str] = attrs.Factory(dict)


@attrs.frozen(kw_only=True)
class _ClockSection:
    check_s: float = CLOCK_CHECK_S
    drift_alarm_s: float = CLOCK_DRIFT_ALARM_S
    auto_sync: bool = False
    sync_threshold_s: float = CLOCK_SYNC_THRESHOLD_S
    sync_max_s: float = CLOCK_SYNC_MAX_S


@attrs.frozen(kw_only=True)
class _MeterDefaults:
    """Settings that ``[defaults]`` may give and each ``[[meters]]`` entry may override."""

    port: int | None = None
    transport: Transport | None = None
    client_sap: int | None = None
    server_logical: int | None = None
    server_physical: int | None = None
    server_address_size: Literal[1, 2, 4, "auto"] | None = None
    password: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    interval_s: float | None = None
    timeout_s: float | None = None
    inactivity_timeout_s: float | None = None
    registers: _Registers | None = None
    attributes: list[_RegisterSection] | None = None
    max_pdu_size: int | None = None
    hdlc_max_info: int | None = None
    hdlc_window: int | None = None
    byte_stuffing: bool | None = None
    security: Security | None = None
    security_policy: SecurityPolicyName | None = None
    system_title: str | None = None
    meter_system_title: str | None = None
    block_cipher_key: str | None = None
    block_cipher_key_file: str | None = None
    block_cipher_key_env: str | None = None
    authentication_key: str | None = None
    authentication_key_file: str | None = None
    authentication_key_env: str | None = None
    dedicated_key: bool | None = None
    frame_counter: Obis | None = None
    profiles: list[_ProfileSection] | None = None
    allow_control: bool | None = None
    clock: _ClockSection | None = None


@attrs.frozen(kw_only=True)
class _MeterSection(_MeterDefaults):
    name: str | None = None
    host: str | None = None
    enabled: bool = True
    token: str | None = None
    token_file: str | None = None
    token_env: str | None = None


#: Keys that must be present, per section.
_REQUIRED: dict[type, tuple[str, ...]] = {
    _MqttSection: ("host",),
    _RegisterSection: ("key", "obis"),
    _ProfileSection: ("obis",),
    _MeterSection: ("name", "host"),
}

Check = Callable[[Any], "str | None"]


def _in_range(lo: int, hi: int) -> Check:
    def check(value: int) -> str | None:
        return None if lo <= value <= hi else f"must be between {lo} and {hi}, got {value}"

    return check


def _between(lo: float, hi: float) -> Check:
    def check(value: float) -> str | None:
        if math.isfinite(value) and lo <= value <= hi:
            return None
        return f"must be between {lo:g} and {hi:g} seconds, got {value}"

    return check


def _profile_hours(value: float) -> str | None:
    if 0 < value <= PROFILE_MAX_HOURS:
        return None
    return f"must be more than 0 and at most {PROFILE_MAX_HOURS:g} (10 years), got {value}"


def _positive(value: float) -> str | None:
    if math.isfinite(value) and value > 0:
        return None
    return f"must be a positive number, got {value}"


def interval_problem(value: float) -> str | None:
    """Why ``value`` (a number) cannot be a meter's ``interval_s``, or None if it can.
    (It must also exceed the meter's ``timeout_s``; that is checked where both are known.)"""
    problem = _positive(value)
    if problem is None and value > INTERVAL_MAX_S:
        problem = f"must be at most {INTERVAL_MAX_S:g} s (one day), got {value:g}"
    return problem


def _non_empty(value: str) -> str | None:
    # Never quote the value: it may be a token or a password.
    if not value.strip():
        return "must not be empty"
    for position, ch in enumerate(value, 1):
        if not ch.isprintable():
            return f"contains a control character at position {position}"
    return None


def _mqtt_string(value: str) -> str | None:
    """A string that goes into an MQTT packet field: 65,535 bytes of UTF-8 at most."""
    problem = _non_empty(value)
    if problem is None:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:
            return f"is not valid Unicode (a lone surrogate at position {exc.start + 1})"
        if size > MQTT_STRING_MAX:
            problem = f"is {size} bytes of UTF-8, more than MQTT allows ({MQTT_STRING_MAX})"
    return problem


def _meter_password(value: str) -> str | None:
    problem = _non_empty(value)
    if problem is None and len(value.encode("utf-8", "surrogatepass")) > METER_PASSWORD_MAX:
        problem = f"must be at most {METER_PASSWORD_MAX} bytes"
    return problem


def _name(value: str) -> str | None:
    problem = _non_empty(value)
    if problem is None and len(value) > 255:
        problem = f"must be at most 255 characters, got {len(value)}"
    return problem


def _host(value: str) -> str | None:
    """An IP address or a host name that the resolver can take (IDNA rules)."""
    problem = _non_empty(value)
    if problem is not None:
        return problem
    if any(ch.isspace() for ch in value):
        return f"not a host name or address: {_show(value)}"
    try:
        ipaddress.ip_address(value)
        return None
    except ValueError:
        pass
    if ":" in value:
        return f"not a host name or IPv6 address: {_show(value)}"
    name = value[:-1] if value.endswith(".") else value
    labels = name.split(".")
    for index, label in enumerate(labels, 1):
        if not label:
            return f"host name {_show(value)} has an empty label"
        try:
            encoded = label.encode("idna")
        except UnicodeError:
            if len(label) > HOST_LABEL_MAX:
                return (
                    f"host name label {index} is {len(label)} characters long, "
                    f"more than {HOST_LABEL_MAX}"
                )
            return f"host name label {index} is not valid under IDNA rules: {_show(label)}"
        if len(encoded) > HOST_LABEL_MAX:
            return (
                f"host name label {index} is {len(encoded)} characters long in ASCII form, "
                f"more than {HOST_LABEL_MAX}"
            )
    try:
        total = len(name.encode("idna"))
    except UnicodeError:
        return f"not a valid host name under IDNA rules: {_show(value)}"
    if total > HOST_NAME_MAX:
        return f"host name is {total} characters long in ASCII form, more than {HOST_NAME_MAX}"
    if not name.isascii():
        # The meters' connections (Trio) encode names by IDNA 2008 with UTS-46, the broker's
        # (the socket module) by IDNA 2003: a name must pass both.
        try:
            idna.encode(name, uts46=True)
        except (idna.IDNAError, UnicodeError) as exc:
            return f"not a valid host name under IDNA 2008 rules: {_show(value)} ({exc})"
    return None


def _listen(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"expected host:port (e.g. 127.0.0.1:8080 or [::1]:8080), got {value!r}"
    return _host(host.strip("[]"))


def _fraction(value: float) -> str | None:
    if math.isfinite(value) and 0 <= value <= 1:
        return None
    return f"must be between 0 and 1, got {value}"


def _register_key(value: str) -> str | None:
    if _KEY_RE.fullmatch(value) is None:
        return f"must be letters, digits, '_', '.' or '-', got {value!r}"
    return None


#: Value checks by key; a key means the same thing in every section that has it.
#: Each returns an error message or None. Checks that involve several keys are in _Resolver.
_CHECKS: dict[str, Check] = {
    "name": _name,
    "host": _host,
    "port": _in_range(1, 65535),
    **dict.fromkeys(
        (
            "data_dir",
            "ca_file",
            "cert_file",
            "key_file",
            "token_file",
            "token_env",
            "password_file",
            "password_env",
        ),
        _non_empty,
    ),
    # Strings that go into MQTT packets; the meters' password is checked in _Resolver.
    **dict.fromkeys(("token", "username", "password", "client_id", "topic"), _mqtt_string),
    **dict.fromkeys(
        (
            "summary_interval_s",
            "timeout_s",
            "inactivity_timeout_s",
            "max_messages_per_s",
            "every_s",
            "drift_alarm_s",
            "sync_threshold_s",
            "sync_max_s",
        ),
        _positive,
    ),
    **dict.fromkeys(("backfill_hours", "chunk_hours"), _profile_hours),
    "interval_s": interval_problem,
    "check_s": lambda v: None if math.isfinite(v) and v >= 0 else f"must be >= 0, got {v}",
    "keepalive": _in_range(5, 65535),
    "reconnect_max_s": _between(1.0, 3600.0),
    "puback_alarm_s": _between(1.0, 3600.0),
    "backlog_alarm_s": _between(5.0, 86400.0),
    "listen": _listen,
    "history_max_age_s": _positive,
    "window_s": _positive,
    "resyncs_per_hour_max": _positive,
    "history_max_rows": _in_range(1000, 2**40),
    "history_step_s": _between(0.0, 86400.0),
    "no_reading_intervals": _in_range(1, 1_000_000),
    **dict.fromkeys(("publish_ratio_min", "success_rate_min", "outbox_high_fraction"), _fraction),
    "max_payload_bytes": _in_range(256, 268_435_455),  # MQTT's own limit
    "max_bytes_per_s": _in_range(256, 2**40),
    "max_readings_per_message": _in_range(1, 100_000),
    "outbox_max_rows": _in_range(100, 2**40),
    "outbox_max_bytes": _in_range(65_536, 2**50),
    "outbox_spill_max_bytes": _in_range(65_536, 2**34),
    "key": _register_key,
    "class_id": _in_range(1, 65535),
    "attribute": _in_range(1, 127),
    # Transport-specific limits are checked once the transport is known.
    "client_sap": _in_range(0, 65535),
    "server_logical": _in_range(0, 65535),
    "server_physical": _in_range(0, 0x3FFF),
    "max_pdu_size": _in_range(64, 65535),
    "hdlc_max_info": _in_range(32, 2030),
    "hdlc_window": _in_range(1, 7),
}

# --------------------------------------------------------------------------------------------
# The converter: strict about TOML types (no "3" for 3, no true for 1), unknown keys refused.


class _Invalid(ValueError):
    """A value of the wrong type or form; its message is shown as is, after the path.

    `masked` is the message to show when the value is a secret (it never quotes the value).
    """

    def __init__(self, message: str, *, masked: str | None = None) -> None:
        super().__init__(message)
        self.masked = masked or message.rsplit(", got ", 1)[0]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _structure_int(value: Any, _: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"expected an int, got {_show(value)}")
    return value


def _structure_float(value: Any, _: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"expected a number, got {_show(value)}")
    return float(value)


def _structure_str(value: Any, _: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(
            f"expected a string, got {_show(value)}",
            masked=f"expected a string, got a value of type {type(value).__name__}",
        )
    return value


def _structure_bool(value: Any, _: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, got {_show(value)}")
    return value


def _structure_obis(value: Any, _: Any) -> Obis:
    if not isinstance(value, str):
        raise _Invalid(f"expected an OBIS code as a string, got {_show(value)}")
    try:
        return Obis.parse(value)
    except InvalidObis as exc:
        raise _Invalid(
            f"not an OBIS code: {_show(value)} (expected A-B:C.D.E, A-B:C.D.E*F or "
            "A.B.C.D.E.F, groups 0..255)"
        ) from exc


def _is_literal(tp: Any) -> bool:
    return get_origin(tp) is Literal


def _structure_literal(value: Any, tp: Any) -> Any:
    choices = get_args(tp)
    # Compare types too: in Python ``True == 1``, but ``qos = true`` is a mistake.
    for choice in choices:
        if type(value) is type(choice) and value == choice:
            return value
    shown = ", ".join(_show(c) for c in choices)
    raise _Invalid(f"expected one of {shown}, got {_show(value)}")


def _is_sequence_type(tp: Any) -> bool:
    return get_origin(tp) in (list, tuple)


def _make_sequence_hook(tp: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    elem = (get_args(tp) or (Any,))[0]
    inner = list_structure_factory(list[elem], conv)  # type: ignore[valid-type]
    as_tuple = get_origin(tp) is tuple

    def structure(value: Any, _: Any) -> Any:
        # A string is iterable, but a string where an array belongs is a mistake.
        if not isinstance(value, list | tuple):
            raise _Invalid(f"expected an array, got {_show(value)}")
        items = inner(value, list[elem])  # type: ignore[valid-type]
        return tuple(items) if as_tuple else items

    return structure


def _make_attrs_hook(cl: type, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    generated: Callable[[Any, Any], Any] = make_dict_structure_fn(cl, conv)
    known = {a.name for a in attrs.fields(cl)}

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise _Invalid(f"expected a table, got {_show(value)}")
        extra = set(value) - known
        if not extra:
            return generated(value, cl)
        # Report the unknown keys together with whatever else is wrong in the same table,
        # rather than stopping at the first unknown key.
        errors: list[Exception] = [ForbiddenExtraKeysError("", cl, extra)]
        try:
            generated({k: v for k, v in value.items() if k in known}, cl)
        except ClassValidationError as exc:
            errors.extend(exc.exceptions)
        raise ClassValidationError(f"while structuring {cl.__name__}", errors, cl)

    return structure


def _structure_registers(value: Any, _: Any) -> _Registers:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return converter.structure(value, list[_RegisterSection])
    raise _Invalid(
        f"expected a preset name ({', '.join(map(repr, PRESETS))}) or an array of tables, "
        f"got {_show(value)}"
    )


def _structure_tls(value: Any, _: Any) -> bool | _TlsSection:
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        return converter.structure(value, _TlsSection)
    raise _Invalid(f"expected true, false or a table, got {_show(value)}")


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)
    conv.register_structure_hook(int, _structure_int)
    conv.register_structure_hook(float, _structure_float)
    conv.register_structure_hook(str, _structure_str)
    conv.register_structure_hook(bool, _structure_bool)
    conv.register_structure_hook(Obis, _structure_obis)
    conv.register_unstructure_hook(Obis, str)
    conv.register_structure_hook_func(_is_literal, _structure_literal)
    conv.register_structure_hook_func(lambda t: t == _Registers | None, _structure_registers)
    conv.register_structure_hook_func(lambda t: t == bool | _TlsSection | None, _structure_tls)
    conv.register_structure_hook_factory(_is_sequence_type, lambda t: _make_sequence_hook(t, conv))
    conv.register_structure_hook_factory(attrs.has, lambda t: _make_attrs_hook(t, conv))
    return conv


#: The converter for both the file's sections and the resolved models; strict about types.
#: ``converter.structure(converter.unstructure(cfg), BridgeConfig) == cfg`` for any config.
converter = _make_converter()


def _cattrs_errors(exc: BaseException, path: str) -> Iterator[str]:
    """Flatten a cattrs validation error into ``path: message`` lines."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            if isinstance(note, IterableValidationNote):
                yield from _cattrs_errors(sub, f"{path}[{note.index}]")
            else:
                yield from _cattrs_errors(sub, _join(path, note.name))
        for sub in without:
            yield from _cattrs_errors(sub, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        known = [a.name for a in attrs.fields(exc.cl)]
        for key in sorted(exc.extra_fields):
            yield f"{_join(path, key)}: {_unknown_key(key, known)}"
    elif isinstance(exc, _Invalid):
        secret = path.rpartition(".")[2] in SECRET_KEYS | _secret_names()
        yield f"{path or '<top>'}: {exc.masked if secret else exc}"
    elif isinstance(exc, KeyError):
        yield f"{path}: required key missing"
    else:
        yield f"{path or '<top>'}: {type(exc).__name__}: {exc}"


@functools.cache
def _secret_names() -> frozenset[str]:
    """The keys of the sections that hold secrets (the fields marked by :func:`_secret`)."""
    models = (MqttConfig, WebConfig, MeterConfig)
    return frozenset(f.name for m in models for f in attrs.fields(m) if f.metadata.get("secret"))


def _unknown_key(key: str, known: Sequence[str]) -> str:
    hint = difflib.get_close_matches(key, known, n=1)
    return f"unknown key (did you mean {hint[0]!r}?)" if hint else "unknown key"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _join(path: str, name: str) -> str:
    """Append a key to a path, quoted as TOML would need it (``bridge."a b"``)."""
    if _BARE_KEY.fullmatch(name) is None:
        name = json.dumps(name, ensure_ascii=False)
    return f"{path}.{name}" if path else name


# --------------------------------------------------------------------------------------------
# Resolution: sections to models, with every check that needs more than one field.


@attrs.define(eq=False)
class _Resolver:
    env: Mapping[str, str]
    base_dir: Path
    errors: list[str] = attrs.Factory(list)
    #: Where each secret came from, by (section path, field): for messages, never the value.
    sources: dict[tuple[str, str], str] = attrs.Factory(dict)
    #: Equal clock settings as one object (a fleet's meters mostly have the same; frozen).
    clocks: dict[ClockConfig, ClockConfig] = attrs.Factory(dict)

    def error(self, path: str, message: str) -> None:
        line = f"{path}: {message}"
        if line not in self.errors:  # one bad [defaults] value is reported once, not per meter
            self.errors.append(line)

    def structure(self, value: Any, cl: type[S], path: str) -> S | None:
        """Structure one part of the document; on failure report why and return None."""
        try:
            return converter.structure(value, cl)
        except (ClassValidationError, IterableValidationError, _Invalid) as exc:
            for line in _cattrs_errors(exc, path):
                self.errors.append(line)
            if not (isinstance(exc, ClassValidationError) and isinstance(value, Mapping)):
                return None
            if not all(isinstance(e, ForbiddenExtraKeysError) for e in exc.exceptions):
                return None
        # Only unknown keys were wrong (already reported): check the rest of the table too.
        known = {a.name for a in attrs.fields(cl)}  # type: ignore[arg-type]
        try:
            return converter.structure({k: v for k, v in value.items() if k in known}, cl)
        except (ClassValidationError, IterableValidationError, _Invalid):
            return None

    def unknown_key(self, path: str, key: str, known: Iterable[str]) -> None:
        self.error(_join(path, key), _unknown_key(key, list(known)))

    def check_fields(self, section: Any, path: str) -> None:
        """Run the checks of :data:`_CHECKS` and :data:`_REQUIRED` on one section."""
        required = _REQUIRED.get(type(section), ())
        for field in attrs.fields(type(section)):
            value = getattr(section, field.name)
            if value is None:
                if field.name in required:
                    self.error(_join(path, field.name), "required")
                continue
            check = _CHECKS.get(field.name)
            problem = None if check is None else check(value)
            if problem is not None:
                self.error(_join(path, field.name), problem)

    def path(self, raw: str) -> str:
        """A path from the file, relative to the config file's directory."""
        return str((self.base_dir / os.path.expanduser(raw)).absolute())

    def readable(self, path: str, raw: str | None) -> str | None:
        """Resolve a file name and report it if it cannot be opened."""
        if raw is None:
            return None
        resolved = self.path(raw)
        try:
            with open(resolved, "rb"):
                pass
        except OSError as exc:
            self.error(path, f"cannot read {resolved}: {exc.strerror or exc}")
        return resolved

    def secret(self, section: Any, field: str, path: str, check: Check | None = None) -> str | None:
        """Resolve ``field``, ``field_file`` or ``field_env``: at most one may be given.

        The value is checked with ``check`` (whatever its source) and where it came from is
        kept in :attr:`sources` under ``(path, field)``, for messages that must name the
        credential without showing it.
        """
        sources = [
            (f"{field}{suffix}", getattr(section, f"{field}{suffix}"))
            for suffix in ("", "_file", "_env")
        ]
        given = [(name, value) for name, value in sources if value is not None]
        if not given:
            return None
        if len(given) > 1:
            names = " and ".join(_join(path, name) for name, _ in given)
            self.error(_join(path, given[1][0]), f"give only one of {names}")
            return None
        name, value = given[0]
        where = _join(path, name)
        secret: str | None
        if name == field:
            secret = str(value)
            source = f"{where} in the config file"
        elif name.endswith("_env"):
            secret = self.env.get(value)
            if secret is None:
                self.error(where, f"environment variable {value} is not set")
            elif not secret:
                self.error(where, f"environment variable {value} is empty")
            secret = secret or None
            source = f"environment variable {value} ({where})"
        else:
            resolved = self.path(value)
            secret = self.read_secret(where, resolved)
            source = f"file {resolved} ({where})"
        if secret is None:
            return None
        problem = None if check is None else check(secret)
        if problem is not None:
            self.error(where, problem)
        self.sources[(path, field)] = source
        return secret

    def read_secret(self, where: str, resolved: str) -> str | None:
        """A secret file's text (one trailing newline dropped); None, reported, if unusable."""
        try:
            with open(resolved, "rb") as f:
                raw = f.read(_SECRET_FILE_MAX + 1)
        except OSError as exc:
            self.error(where, f"cannot read {resolved}: {exc.strerror or exc}")
            return None
        if len(raw) > _SECRET_FILE_MAX:
            self.error(where, f"{resolved} is larger than {_SECRET_FILE_MAX} bytes")
            return None
        try:
            # One trailing newline is what editors and `echo` add, never part of a secret.
            secret = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            self.error(where, f"cannot read {resolved}: not UTF-8 text (byte {exc.start + 1})")
            return None
        if not secret:
            self.error(where, f"{resolved} is empty")
            return None
        return secret

    # -- sections -----------------------------------------------------------------------------

    def service(self, section: _BridgeSection) -> ServiceConfig:
        self.check_fields(section, "bridge")
        if section.data_dir is not None:
            data_dir = self.path(section.data_dir)
        else:
            # systemd's StateDirectory= sets STATE_DIRECTORY, colon-separated if several.
            state = self.env.get("STATE_DIRECTORY", "").split(":")[0]
            data_dir = state or DEFAULT_DATA_DIR
        name = section.name or socket.gethostname().split(".")[0] or "bridge"
        shard = None
        if section.shard is not None:
            try:
                shard = parse_shard(section.shard)
            except ValueError as exc:
                self.error("bridge.shard", str(exc))
        workers = DEFAULT_WORKERS
        if section.workers is not None:
            if not 0 <= section.workers <= MAX_WORKERS:
                self.error(
                    "bridge.workers",
                    f"must be between 0 (one per core) and {MAX_WORKERS}, not {section.workers}",
                )
            else:
                workers = section.workers
        return ServiceConfig(
            name=name,
            data_dir=data_dir,
            summary_interval_s=section.summary_interval_s,
            log_level=section.log_level,
            shard=shard,
            workers=workers,
        )

    def mqtt(self, section: _MqttSection, service: ServiceConfig, mode: str | None) -> MqttConfig:
        self.check_fields(section, "mqtt")
        tls: TlsConfig | None = None
        if isinstance(section.tls, _TlsSection):
            self.check_fields(section.tls, "mqtt.tls")
            raw = section.tls
            if raw.key_file is not None and raw.cert_file is None:
                self.error("mqtt.tls.key_file", "needs mqtt.tls.cert_file")
            tls = TlsConfig(
                ca_file=self.readable("mqtt.tls.ca_file", raw.ca_file),
                cert_file=self.readable("mqtt.tls.cert_file", raw.cert_file),
                key_file=self.readable("mqtt.tls.key_file", raw.key_file),
                insecure=raw.insecure,
            )
        elif section.tls:
            tls = TlsConfig()
        token = self.secret(section, "token", "mqtt", _mqtt_string)
        password = self.secret(section, "password", "mqtt", _mqtt_string)
        if token is not None and section.username is not None:
            self.error("mqtt.username", "not used with a token (the token is the user name)")
        if password is not None and section.username is None:
            self.error("mqtt.password", "needs mqtt.username")
        if mode == "device":
            for name in ("token", "token_file", "token_env", "username"):
                if getattr(section, name) is not None:
                    self.error(
                        f"mqtt.{name}",
                        'not used in publish mode "device": each meter logs in with its own token',
                    )
        port = section.port if section.port is not None else (8883 if tls else 1883)
        client_id = section.client_id or _default_client_id(service)
        return MqttConfig(
            host=section.host or "",
            port=port,
            client_id=client_id,
            tls=tls,
            token=token,
            username=section.username,
            password=password,
            keepalive=section.keepalive,
            qos=section.qos,
            reconnect_max_s=section.reconnect_max_s,
            puback_alarm_s=section.puback_alarm_s,
            credential_source=self.sources.get(
                ("mqtt", "token") if token is not None else ("mqtt", "password")
            ),
        )

    def publish(self, section: _PublishSection) -> PublishConfig:
        self.check_fields(section, "publish")
        if section.mode == "topic":
            if section.topic is None:
                self.error("publish.topic", 'required in publish mode "topic"')
            else:
                problem = _check_topic(section.topic)
                if problem is not None:
                    self.error("publish.topic", problem)
        else:
            for name in ("topic", "payload"):
                if getattr(section, name) is not None:
                    self.error(f"publish.{name}", 'only used in publish mode "topic"')
        if section.max_payload_bytes > section.max_bytes_per_s:
            self.error(
                "publish.max_payload_bytes",
                f"{section.max_payload_bytes} is more than publish.max_bytes_per_s "
                f"({section.max_bytes_per_s}): such a message could never be sent",
            )
        return PublishConfig(
            mode=section.mode,
            topic=section.topic,
            payload=section.payload or "thingsboard",
            max_messages_per_s=section.max_messages_per_s,
            max_payload_bytes=section.max_payload_bytes,
            max_bytes_per_s=section.max_bytes_per_s,
            max_readings_per_message=section.max_readings_per_message,
            outbox_max_rows=section.outbox_max_rows,
            outbox_max_bytes=section.outbox_max_bytes,
            outbox_synchronous=section.outbox_synchronous,
            outbox_spill_max_bytes=section.outbox_spill_max_bytes,
            backlog_alarm_s=section.backlog_alarm_s,
        )

    def web(self, section: _WebSection) -> WebConfig:
        self.check_fields(section, "web")
        return WebConfig(
            enabled=section.enabled,
            listen=section.listen,
            token=self.secret(section, "token", "web"),
            history_max_age_s=section.history_max_age_s,
            history_max_rows=section.history_max_rows,
            history_step_s=section.history_step_s,
        )

    def alarms(self, section: _AlarmsSection) -> AlarmsConfig:
        self.check_fields(section, "alarms")
        return AlarmsConfig(**attrs.asdict(section))

    def registers(self, value: _Registers, path: str) -> tuple[RegisterConfig, ...]:
        if isinstance(value, str):
            preset = PRESETS.get(value)
            if preset is None:
                known = ", ".join(map(repr, PRESETS))
                self.error(path, f"unknown preset {value!r} (known: {known})")
                return ()
            return preset
        if not value:
            self.error(path, "must list at least one register")
        result: list[RegisterConfig] = []
        first_by_key: dict[str, int] = {}
        for i, raw in enumerate(value):
            self.check_fields(raw, f"{path}[{i}]")
            if raw.key is None or raw.obis is None:
                continue
            if raw.key in first_by_key:
                self.error(
                    f"{path}[{i}].key",
                    f"duplicate of {path}[{first_by_key[raw.key]}].key ({raw.key!r})",
                )
            first_by_key.setdefault(raw.key, i)
            result.append(
                RegisterConfig(
                    key=raw.key, obis=raw.obis, class_id=raw.class_id, attribute=raw.attribute
                )
            )
        return tuple(result)

    def profiles(self, value: list[_ProfileSection], path: str) -> tuple[ProfileConfig, ...]:
        result: list[ProfileConfig] = []
        first_by_obis: dict[Obis, int] = {}
        for i, raw in enumerate(value):
            where = f"{path}[{i}]"
            self.check_fields(raw, where)
            if raw.obis is None:
                continue
            if raw.obis in first_by_obis:
                self.error(f"{where}.obis", f"duplicate of {path}[{first_by_obis[raw.obis]}].obis")
            first_by_obis.setdefault(raw.obis, i)
            keys: list[tuple[str, str]] = []
            for column, key in raw.keys.items():
                try:
                    Obis.parse(column)
                except InvalidObis:
                    self.error(_join(f"{where}.keys", column), "not an OBIS code")
                    continue
                problem = _register_key(key)
                if problem is not None:
                    self.error(_join(f"{where}.keys", column), problem)
                    continue
                keys.append((column, key))
            result.append(
                ProfileConfig(
                    obis=raw.obis,
                    backfill_hours=raw.backfill_hours,
                    every_s=raw.every_s,
                    chunk_hours=raw.chunk_hours,
                    keys=tuple(keys),
                )
            )
        return tuple(result)

    def clock(self, raw: _ClockSection, path: str) -> ClockConfig:
        self.check_fields(raw, path)
        if raw.sync_threshold_s > raw.sync_max_s:
            self.error(
                f"{path}.sync_threshold_s",
                f"{raw.sync_threshold_s:g} is more than {path}.sync_max_s ({raw.sync_max_s:g})",
            )
        return ClockConfig(
            check_s=raw.check_s,
            drift_alarm_s=raw.drift_alarm_s,
            auto_sync=raw.auto_sync,
            sync_threshold_s=raw.sync_threshold_s,
            sync_max_s=raw.sync_max_s,
        )

    def meter(
        self,
        raw: _MeterSection,
        path: str,
        defaults: _MeterDefaults,
        default_regs: Any,
        mode: str | None,
    ) -> MeterConfig | None:
        self.check_fields(raw, path)

        def pick(name: str) -> Any:
            value = getattr(raw, name)
            if value is None:
                value = getattr(defaults, name)
            return _BUILTIN_METER.get(name) if value is None else value

        def origin(*names: str) -> str:
            """Where to report a problem with these settings: the meter if it set any."""
            for name in names:
                if getattr(raw, name) is not None:
                    return f"{path}.{name}"
            return f"defaults.{names[0]}"

        # A secret is one setting with three spellings: the meter's replaces all of [defaults]'.
        pw_names = ("password", "password_file", "password_env")
        if any(getattr(raw, n) is not None for n in pw_names):
            password = self.secret(raw, "password", path, _meter_password)
        else:
            password = self.secret(defaults, "password", "defaults", _meter_password)
        token = self.secret(raw, "token", path, _mqtt_string)
        if mode == "device" and raw.enabled and token is None and not self.has_secret(raw, "token"):
            self.error(
                f"{path}.token", 'required in publish mode "device" (or token_file, token_env)'
            )
        if mode not in ("device", None) and self.has_secret(raw, "token"):
            given = next(
                n for n in ("token", "token_file", "token_env") if getattr(raw, n) is not None
            )
            self.error(f"{path}.{given}", 'only used in publish mode "device"')

        if raw.registers is not None:
            registers = self.registers(raw.registers, f"{path}.registers")
        elif default_regs is None:
            self.error(f"{path}.registers", "required (set it here or in [defaults])")
            registers = ()
        else:
            registers = default_regs

        attributes: tuple[RegisterConfig, ...] = ()
        attributes_path = (
            f"{path}.attributes" if raw.attributes is not None else "defaults.attributes"
        )
        raw_attributes = raw.attributes if raw.attributes is not None else defaults.attributes
        if raw_attributes:
            attributes = self.registers(raw_attributes, attributes_path)
            keys = {r.key for r in registers}
            for i, attribute in enumerate(attributes):
                if attribute.key in keys:
                    self.error(
                        f"{attributes_path}[{i}].key",
                        f"{attribute.key!r} is also the key of a register",
                    )

        port = pick("port")
        if port is None:
            self.error(f"{path}.port", "required (set it here or in [defaults])")
        transport = pick("transport")
        interval_s, timeout_s = pick("interval_s"), pick("timeout_s")
        if timeout_s >= interval_s:
            self.error(
                origin("timeout_s", "interval_s"),
                f"timeout_s ({timeout_s:g}) must be less than interval_s ({interval_s:g})",
            )
        client_sap = pick("client_sap")
        logical = pick("server_logical")
        if logical is None:
            # The wrapper addresses logical devices by wPort; the management device is 1.
            logical = 1 if transport == "wrapper" else 0
        physical = pick("server_physical")
        size = pick("server_address_size")
        if transport == "hdlc":
            if client_sap > 0x7F:
                self.error(origin("client_sap"), f"must be at most 127 with HDLC, got {client_sap}")
            if logical > 0x3FFF:
                self.error(
                    origin("server_logical"), f"must be at most 16383 with HDLC, got {logical}"
                )
            size = self.address_size(size, logical, physical, origin("server_address_size"))
        elif size == "auto":
            size = 2  # not on the wire with the wrapper; any valid value will do
        profiles: tuple[ProfileConfig, ...] = ()
        raw_profiles = pick("profiles")
        if raw_profiles is not None:
            profiles = self.profiles(raw_profiles, origin("profiles"))
        raw_clock = pick("clock")
        clock = ClockConfig() if raw_clock is None else self.clock(raw_clock, origin("clock"))
        clock = self.clocks.setdefault(clock, clock)
        if port is None:
            return None
        return MeterConfig(
            name=raw.name or "",
            host=sys.intern(raw.host or ""),  # many meters behind one gateway address
            port=port,
            enabled=raw.enabled,
            transport=transport,
            client_sap=client_sap,
            server_logical=logical,
            server_physical=physical,
            server_address_size=size,
            password=password,
            interval_s=interval_s,
            timeout_s=timeout_s,
            inactivity_timeout_s=pick("inactivity_timeout_s"),
            registers=registers,
            attributes=attributes,
            max_pdu_size=pick("max_pdu_size"),
            hdlc_max_info=pick("hdlc_max_info"),
            hdlc_window=pick("hdlc_window"),
            byte_stuffing=pick("byte_stuffing"),
            token=token,
            token_source=self.sources.get((path, "token")),
            **self.security(raw, defaults, path, pick, origin, password),
            profiles=profiles,
            allow_control=pick("allow_control"),
            clock=clock,
        )

    def security(
        self,
        raw: _MeterSection,
        defaults: _MeterDefaults,
        path: str,
        pick: Callable[[str], Any],
        origin: Callable[..., str],
        password: str | None,
    ) -> dict[str, Any]:
        """The meter's security keys, checked alone and together (bridge.meter_security)."""
        keys: dict[str, str | None] = {}
        for name in ("block_cipher_key", "authentication_key"):
            names = (name, f"{name}_file", f"{name}_env")
            if any(getattr(raw, n) is not None for n in names):
                keys[name] = self.secret(raw, name, path)
            else:
                keys[name] = self.secret(defaults, name, "defaults")
        mechanism = pick("security")
        policy = pick("security_policy")
        out: dict[str, Any] = {
            "security": mechanism,
            "security_policy": policy,
            "system_title": pick("system_title"),
            "meter_system_title": pick("meter_system_title"),
            "dedicated_key": pick("dedicated_key"),
            "frame_counter": pick("frame_counter"),
            **keys,
        }
        if mechanism is None:
            stray = [
                k
                for k in ("security_policy", "system_title", "frame_counter")
                if out[k] is not None
            ]
            stray += [k for k in ("block_cipher_key", "authentication_key") if keys[k] is not None]
            if stray:
                self.error(origin(stray[0]), 'needs security (e.g. security = "hls-gmac")')
            return out
        parsed: dict[str, bytes | None] = {}
        for name, length in (
            ("system_title", 8),
            ("meter_system_title", 8),
            ("block_cipher_key", 16),
            ("authentication_key", 16),
        ):
            value = out[name]
            parsed[name] = None
            if value is None:
                continue
            try:
                parsed[name] = meter_security.parse_hex(value, length, "value")
            except ValueError as exc:
                where = (
                    origin(name)
                    if name in ("system_title", "meter_system_title")
                    else (f"{path}.{name}" if self.has_secret(raw, name) else f"defaults.{name}")
                )
                self.error(where, str(exc).removeprefix("value: "))
        options = meter_security.SecurityOptions(
            mechanism,
            policy,
            system_title=parsed["system_title"],
            meter_system_title=parsed["meter_system_title"],
            block_cipher_key=parsed["block_cipher_key"]
            or (b"?" if out["block_cipher_key"] is not None else None),
            authentication_key=parsed["authentication_key"]
            or (b"?" if out["authentication_key"] is not None else None),
            secret=None if password is None else password.encode(),
            dedicated_key=out["dedicated_key"],
        )
        out["security_policy"] = options.policy_name  # the mechanism's default, decided here
        for key, message in meter_security.check(options):
            if key in ("block_cipher_key", "authentication_key", "password"):
                where = (
                    f"{path}.{key}"
                    if self.has_secret(raw, key)
                    else (f"defaults.{key}" if self.has_secret(defaults, key) else f"{path}.{key}")
                )
            else:
                where = (
                    origin(key) if key in ("security_policy", "dedicated_key") else f"{path}.{key}"
                )
            self.error(where, message)
        return out

    def address_size(self, size: Any, logical: int, physical: int, path: str) -> Literal[1, 2, 4]:
        """Decide ``"auto"`` and check that the addresses fit in the size asked for.

        One byte carries only a physical address below 128 (logical 0, as on the field meter),
        two bytes carry 7 bits each, four bytes 14 bits each.
        """
        fits_1 = logical == 0 and physical <= 0x7F
        fits_2 = logical <= 0x7F and physical <= 0x7F
        if size == "auto":
            return 1 if fits_1 else 2 if fits_2 else 4
        if size == 1 and not fits_1:
            self.error(
                path,
                f"1 byte holds only server_logical 0 and server_physical up to 127, "
                f"got {logical} and {physical}",
            )
        elif size == 2 and not fits_2:
            self.error(
                path,
                f"2 bytes hold server_logical and server_physical up to 127, "
                f"got {logical} and {physical}",
            )
        return size  # type: ignore[no-any-return]

    @staticmethod
    def has_secret(section: Any, name: str) -> bool:
        """Whether any of ``name``, ``name_file``, ``name_env`` is given."""
        return any(getattr(section, f"{name}{s}") is not None for s in ("", "_file", "_env"))


def _check_topic(topic: str) -> str | None:
    """Check a topic template: known placeholders only, no wildcards."""
    try:
        parts = list(string.Formatter().parse(topic))
    except ValueError as exc:
        return f"not a valid template: {exc}"
    allowed = ", ".join("{" + p + "}" for p in TOPIC_PLACEHOLDERS)
    for literal, field, spec, conversion in parts:
        if any(ch in literal for ch in "+#\0"):
            return f"must not contain '+', '#' or NUL: {topic!r}"
        if field is None:
            continue
        if field not in TOPIC_PLACEHOLDERS or spec or conversion:
            return f"unknown placeholder {{{field}}} in {topic!r} (allowed: {allowed})"
    if topic.startswith("/") or topic.endswith("/") or "//" in topic:
        return f"has an empty level: {topic!r}"
    return None


def _check_topic_for(
    topic: str, service: ServiceConfig, meters: Sequence[MeterConfig], resolver: _Resolver
) -> None:
    """Topic mode: the template must tell the meters apart and fit MQTT with every name."""
    if len(meters) > 1 and "{meter}" not in topic:
        resolver.error(
            "publish.topic",
            f"must contain {{meter}}: {len(meters)} meters share the connection and would "
            "publish on one topic",
        )
    if "{bridge}" in topic and any(ch in service.name for ch in "+#/\0"):
        resolver.error(
            "bridge.name",
            f"{_show(service.name)} cannot go into an MQTT topic level via {{bridge}} "
            "('+', '#' and '/' are not allowed)",
        )
    base = topic.replace("{bridge}", service.name)
    for i, m in enumerate(meters):
        size = len(base.replace("{meter}", m.name).encode("utf-8", "surrogatepass"))
        if size > MQTT_STRING_MAX:
            resolver.error(
                f"meters[{i}].name",
                f"makes publish.topic {size} bytes long, more than MQTT allows ({MQTT_STRING_MAX})",
            )


def _too_deep(document: Any) -> str | None:
    """Where the first value nested more than MAX_NESTING levels deep starts, if any: the
    path of its table and key (``bridge.name``), not all its levels."""
    stack: list[tuple[Any, str, int]] = [(document, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_NESTING:
            return path or "<top>"
        if isinstance(value, Mapping):
            keys: list[tuple[str, Any]] = [(str(k), v) for k, v in value.items()]
            children = [(v, path if depth >= 2 else _join(path, k)) for k, v in keys]
        elif isinstance(value, list | tuple):
            children = [(v, path if depth >= 2 else f"{path}[{i}]") for i, v in enumerate(value)]
        else:
            continue
        stack.extend((v, p, depth + 1) for v, p in children)
    return None


def _machine_id() -> str:
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            with open(path, encoding="ascii") as f:
                value = f.read().strip()
        except (OSError, UnicodeDecodeError):
            continue
        if value:
            return value
    return socket.gethostname()


def _default_client_id(service: ServiceConfig) -> str:
    """``dlms-bridge-<name>-<8 hex>``: stable across restarts, distinct per machine and data dir.

    Two instances with one client id would kick each other off the broker in a loop.
    """
    digest = hashlib.sha256(f"{_machine_id()}\0{service.data_dir}".encode()).hexdigest()[:8]
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", service.name).strip("-")[:32] or "bridge"
    return f"dlms-bridge-{name}-{digest}"


def _check_meters(meters: Sequence[MeterConfig], mode: str | None, resolver: _Resolver) -> None:
    """Checks across meters: unique names, addresses and device tokens."""
    by_name: dict[str, int] = {}
    by_address: dict[tuple[Any, ...], int] = {}
    by_token: dict[str, int] = {}
    for i, m in enumerate(meters):
        if m.name in by_name:
            j = by_name[m.name]
            resolver.error(f"meters[{i}].name", f"duplicate of meters[{j}].name ({m.name!r})")
        by_name.setdefault(m.name, i)
        if m.transport == "hdlc":
            address: tuple[Any, ...] = (m.host.lower(), m.port, m.server_logical, m.server_physical)
        else:
            address = (m.host.lower(), m.port, m.server_logical)
        if address in by_address:
            j = by_address[address]
            resolver.error(
                f"meters[{i}].host",
                f"same host, port and server address as meters[{j}] ({meters[j].name!r})",
            )
        by_address.setdefault(address, i)
        if mode == "device" and m.token is not None:
            if m.token in by_token:
                j = by_token[m.token]
                resolver.error(
                    f"meters[{i}].token", f"same token as meters[{j}] ({meters[j].name!r})"
                )
            by_token.setdefault(m.token, i)
        if mode == "topic" and any(ch in m.name for ch in "+#/"):
            resolver.error(
                f"meters[{i}].name",
                f"{m.name!r} cannot go into an MQTT topic level ('+', '#' and '/' are not allowed)",
            )


# --------------------------------------------------------------------------------------------
# Public API.


def parse_config(
    text: str,
    *,
    source: str = "<string>",
    env: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> BridgeConfig:
    """Parse and check a TOML config.

    Relative paths in it are relative to ``base_dir`` (default: the current directory);
    ``*_env`` secrets and ``STATE_DIRECTORY`` come from ``env`` (default: ``os.environ``).
    Raises :class:`ConfigError` listing every problem found.
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_toml_error(exc)], source=source) from None
    except RecursionError:
        # The TOML parser recurses per level of inline arrays and tables.
        message = f"arrays or tables nested more than {MAX_NESTING} levels deep"
        raise ConfigError([f"<top>: {message}"], source=source) from None
    return config_from_dict(document, source=source, env=env, base_dir=base_dir)


def config_from_dict(
    document: Mapping[str, Any],
    *,
    source: str = "<dict>",
    env: Mapping[str, str] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> BridgeConfig:
    """Check a config given as the dict a TOML parser would return; see :func:`parse_config`."""
    too_deep = _too_deep(document)
    if too_deep is not None:
        message = f"arrays or tables nested more than {MAX_NESTING} levels deep"
        raise ConfigError([f"{too_deep}: {message}"], source=source)
    resolver = _Resolver(
        env=os.environ if env is None else env,
        base_dir=Path(os.getcwd() if base_dir is None else base_dir),
    )
    # Each section and each meter is structured on its own, so that a type error in one does
    # not hide the problems of the others.
    for key in document:
        if key not in _SECTION_ORDER:
            resolver.unknown_key("", key, _SECTION_ORDER)
    bridge_s = resolver.structure(document.get("bridge", {}), _BridgeSection, "bridge")
    mqtt_s = resolver.structure(document.get("mqtt", {}), _MqttSection, "mqtt")
    publish_s = resolver.structure(document.get("publish", {}), _PublishSection, "publish")
    web_s = resolver.structure(document.get("web", {}), _WebSection, "web")
    alarms_s = resolver.structure(document.get("alarms", {}), _AlarmsSection, "alarms")
    defaults_s = resolver.structure(document.get("defaults", {}), _MeterDefaults, "defaults")
    raw_meters = document.get("meters", [])
    if not isinstance(raw_meters, list):
        resolver.error(
            "meters", f"expected an array of tables ([[meters]]), got {_show(raw_meters)}"
        )
        raw_meters = []
    elif not raw_meters:
        resolver.error("meters", "no meters: add at least one [[meters]] table")
    meter_sections = [
        resolver.structure(m, _MeterSection, f"meters[{i}]") for i, m in enumerate(raw_meters)
    ]

    mode = None if publish_s is None else publish_s.mode
    service = resolver.service(bridge_s or _BridgeSection())
    mqtt = None if mqtt_s is None else resolver.mqtt(mqtt_s, service, mode)
    publish = None if publish_s is None else resolver.publish(publish_s)
    web = None if web_s is None else resolver.web(web_s)
    alarms = None if alarms_s is None else resolver.alarms(alarms_s)
    meters: list[MeterConfig | None] = []
    if defaults_s is None:
        for i, raw in enumerate(meter_sections):
            if raw is not None:
                resolver.check_fields(raw, f"meters[{i}]")
    else:
        resolver.check_fields(defaults_s, "defaults")
        if resolver.has_secret(defaults_s, "password"):
            # Reported even if every meter overrides it.
            resolver.secret(defaults_s, "password", "defaults", _meter_password)
        default_regs = (
            None
            if defaults_s.registers is None
            else resolver.registers(defaults_s.registers, "defaults.registers")
        )
        meters = [
            None
            if raw is None
            else resolver.meter(raw, f"meters[{i}]", defaults_s, default_regs, mode)
            for i, raw in enumerate(meter_sections)
        ]
    resolved = [m for m in meters if m is not None]
    if len(resolved) == len(raw_meters):
        _check_meters(resolved, mode, resolver)
    if publish is not None and publish.mode == "topic" and publish.topic is not None:
        _check_topic_for(publish.topic, service, resolved, resolver)
    if mode == "device" and mqtt is not None:
        # Each meter's connection is "<client_id>-<meter name>".
        for i, m in enumerate(resolved):
            size = len(f"{mqtt.client_id}-{m.name}".encode("utf-8", "surrogatepass"))
            if size > MQTT_STRING_MAX:
                resolver.error(
                    f"meters[{i}].name",
                    f"makes the client id of its connection (mqtt.client_id + '-' + name) "
                    f"{size} bytes long, more than MQTT allows ({MQTT_STRING_MAX})",
                )
    if resolver.errors or mqtt is None or publish is None or web is None or alarms is None:
        raise ConfigError(sorted(resolver.errors, key=_file_order), source=source)
    return BridgeConfig(
        bridge=service,
        mqtt=mqtt,
        publish=publish,
        meters=tuple(resolved),
        web=web,
        alarms=alarms,
        source=source,
    )


def load_config(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> BridgeConfig:
    """Read and check the config file at ``path``; paths in it are relative to its directory."""
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            raw = f.read(CONFIG_FILE_MAX + 1)
    except OSError as exc:
        raise ConfigError([f"cannot read {source}: {exc.strerror or exc}"], source=source) from None
    if len(raw) > CONFIG_FILE_MAX:
        message = f"larger than {CONFIG_FILE_MAX // (1024 * 1024)} MiB: not a config file"
        raise ConfigError([message], source=source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text (byte {exc.start} is 0x{raw[exc.start]:02x})"
        raise ConfigError([message], source=source) from None
    base_dir = os.path.dirname(os.path.abspath(source))
    return parse_config(text, source=source, env=env, base_dir=base_dir)


_ERROR_PATH = re.compile(r"(\w+)(?:\[(\d+)\])?")


def _file_order(line: str) -> tuple[int, int]:
    """Sort key putting errors in the order of the file's sections, then of the meters."""
    match = _ERROR_PATH.match(line)
    if match is None or match.group(1) not in _SECTION_ORDER:
        return (-1, -1)
    return (_SECTION_ORDER.index(match.group(1)), int(match.group(2) or -1))


_TOML_POSITION = re.compile(r"^(.*) \(at line (\d+), column (\d+)\)$", re.DOTALL)


def _toml_error(exc: tomllib.TOMLDecodeError) -> str:
    match = _TOML_POSITION.match(str(exc))
    if match is None:
        return f"TOML syntax error: {exc}"
    message, line, column = match.groups()
    return f"line {line}, column {column}: TOML syntax error: {message}"


def masked(value: M) -> M:
    """A copy of an attrs model (recursively) with every non-empty secret replaced by ``***``."""
    if isinstance(value, tuple):
        return cast(M, tuple(masked(v) for v in value))
    cls: Any = type(value)
    if not attrs.has(cls):
        return value
    changes: dict[str, Any] = {}
    for field in attrs.fields(cls):
        current = getattr(value, field.name)
        if field.metadata.get("secret"):
            if current is not None:
                changes[field.name] = MASK
        elif attrs.has(type(current)) or isinstance(current, tuple):
            changes[field.name] = masked(current)
    return cast(M, attrs.evolve(cast(Any, value), **changes))


def config_to_dict(config: BridgeConfig, *, mask_secrets: bool = True) -> dict[str, Any]:
    """The resolved config as plain data (JSON-ready), secrets masked unless told otherwise."""
    result = converter.unstructure(masked(config) if mask_secrets else config)
    assert isinstance(result, dict)
    return result


def diff_meters(
    old: Iterable[MeterConfig], new: Iterable[MeterConfig]
) -> tuple[list[MeterConfig], list[MeterConfig], list[MeterConfig]]:
    """Compare two meter lists by name: ``(added, removed, changed)``.

    ``added`` and ``changed`` hold meters from ``new`` (in its order), ``removed`` from ``old``.
    A meter whose resolved settings differ in any way, its secrets included, is changed.
    """
    old_by_name = {m.name: m for m in old}
    new_list = list(new)
    new_names = {m.name for m in new_list}
    added = [m for m in new_list if m.name not in old_by_name]
    changed = [m for m in new_list if m.name in old_by_name and old_by_name[m.name] != m]
    removed = [m for m in old_by_name.values() if m.name not in new_names]
    return added, removed, changed
