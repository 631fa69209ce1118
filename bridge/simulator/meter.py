"""One simulated meter: its settings, physical model, clock, writable values and counters.

A :class:`Meter` is shared by every connection to it: the clock offset set by one client is the
time every client sees, and the counters add up over all connections.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import TYPE_CHECKING

import attrs

from bridge.simulator.faults import FaultState
from bridge.simulator.physics import Physics
from codec.acse import AuthenticationMechanism, Conformance
from codec.hdlc_params import LinkParameters
from codec.security import SecurityKeys, SecurityPolicy

if TYPE_CHECKING:
    from bridge.simulator.models import MeterModel

__all__ = [
    "FLAGS_ENERGY_BASE",
    "FLAGS_LOGICAL",
    "METER_CONFORMANCE",
    "Counters",
    "Meter",
    "MeterSecurity",
    "MeterSettings",
]

#: What the meter offers in the AARE (ANDed with the client's proposal).
METER_CONFORMANCE = (
    Conformance.GET
    | Conformance.SET
    | Conformance.ACTION
    | Conformance.SELECTIVE_ACCESS
    | Conformance.MULTIPLE_REFERENCES
    | Conformance.BLOCK_TRANSFER_WITH_GET_OR_READ
)

#: Under the ``flags`` fault the meter also answers to this logical address: in 2-byte HDLC
#: addressing its address byte is 0x7E, the flag.
FLAGS_LOGICAL = 63
#: Under the ``flags`` fault the energy register reads 0x7E7Dxxxx: its top bytes are the HDLC
#: flag and escape bytes, so every energy value puts 7E 7D inside the frame.
FLAGS_ENERGY_BASE = 0x7E7D_0000


@attrs.frozen(repr=False)
class MeterSecurity:
    """What the management client (SAP 1) must use: mechanism, policy, keys; the meter's title.

    ``policy`` None: no ciphering (HLS-MD5/SHA1/SHA256 over a plain association). ``secret`` is
    the HLS secret of MD5/SHA1/SHA256.
    """

    mechanism: AuthenticationMechanism = AuthenticationMechanism.HIGH_GMAC
    policy: SecurityPolicy | None = SecurityPolicy.AUTHENTICATED_ENCRYPTED
    system_title: bytes = b"DBS\x00\x00\x00\x00\x01"
    keys: SecurityKeys | None = None
    secret: bytes | None = None
    #: Refuse a client counter not above the last one seen in any association (a real meter
    #: does); otherwise only within one association.
    strict_counters: bool = True

    def __repr__(self) -> str:
        return f"MeterSecurity({self.mechanism.name}, <keys hidden>)"


@attrs.frozen
class MeterSettings:
    """What every simulated meter of a run shares (the defaults are the field meter's)."""

    model: str = "single-phase"
    #: The LLS password of the management client (SAP 1); ``None``: no authentication needed.
    password: bytes | None = b"00000000"
    server_logical: int = 0
    server_physical: int = 1
    #: The server wPort of the wrapper transport.
    server_wport: int = 1
    #: The meter's own HDLC limits, from its point of view.
    hdlc: LinkParameters = attrs.field(factory=lambda: LinkParameters(128, 128, 1, 1))
    #: The server-max-receive-pdu-size announced in the AARE.
    max_pdu: int = 1024
    #: The services the meter offers.
    conformance: Conformance = METER_CONFORMANCE
    #: Seconds without a frame after which the meter drops the link (0: never).
    inactivity_timeout: float = 180.0
    #: Days of 15-minute entries in the load profile buffer (its capacity in entries).
    profile_days: int = 10
    #: High-level security and ciphering required from SAP 1 (``None``: LLS with ``password``).
    security: MeterSecurity | None = None
    #: Seconds between load profile entries (the profile's capture_period).
    profile_period: int = 900
    #: Whether the load profile answers range access (selector 1); some meters offer only
    #: entry access.
    profile_range_access: bool = True


@attrs.define(eq=False)
class Counters:
    """What happened at one meter, over all its connections."""

    connections: int = 0
    requests: int = 0
    replies: int = 0
    associations: int = 0
    refusals: int = 0
    auth_failures: int = 0
    releases: int = 0
    #: GET-response-with-datablock blocks sent (long GETs).
    blocks: int = 0
    ignored_frames: int = 0
    link_errors: int = 0
    inactivity_closes: int = 0
    bytes_in: int = 0
    bytes_out: int = 0

    def as_dict(self) -> dict[str, int]:
        """JSON-safe snapshot."""
        return attrs.asdict(self)


@attrs.define(eq=False)
class Meter:
    """One simulated meter."""

    index: int
    serial: str
    settings: MeterSettings
    model: MeterModel
    physics: Physics
    faults: FaultState
    counters: Counters = attrs.field(factory=Counters)
    #: Seconds added to the wall clock to get the meter's clock (changed by SET and ACTION).
    clock_offset: float = 0.0
    #: The writable consumer message (a Data object).
    message: bytes = b""
    #: The supply relay of the disconnect control (0-0:96.3.10): closed unless disconnected.
    supply_connected: bool = True
    #: The standard event log: (meter time in whole seconds, event code), oldest first.
    events: deque[tuple[int, int]] = attrs.field(factory=lambda: deque(maxlen=100))
    #: Encoded load profile rows by their clock time, and the flags fault they were made under.
    profile_rows: dict[int, tuple[bytes, ...]] = attrs.field(factory=dict)
    profile_flags: bool = False
    #: The meter's own invocation counter (the next one it uses).
    invocation_counter: int = 1
    #: The last invocation counter seen from each client system title (replay protection).
    client_counters: dict[bytes, int] = attrs.field(factory=dict)

    def next_invocation_counter(self) -> int:
        """The meter's next invocation counter."""
        value = self.invocation_counter
        self.invocation_counter += 1
        return value

    @classmethod
    def create(cls, index: int, seed: int, settings: MeterSettings, model: MeterModel) -> Meter:
        """A meter whose values and faults are drawn from ``seed`` and ``index``."""
        physics = Physics.generate(random.Random(f"physics:{seed}:{index}"), model.phase_count)
        serial = f"{(seed * 7919) % 100:02d}{index:06d}"
        faults = FaultState(random.Random(f"faults:{seed}:{index}"))
        return cls(index, serial, settings, model, physics, faults)

    def record_event(self, now: float, code: int) -> None:
        """Add an event to the standard event log at meter time ``now``."""
        self.events.append((math.floor(now), code))

    def time(self, wall: float) -> float:
        """The meter's clock (unix seconds) when the wall clock reads ``wall``."""
        return wall + self.clock_offset

    def energy_wh(self, t: float) -> int:
        """The active energy register (Wh) at meter time ``t``."""
        energy = math.floor(self.physics.energy(t))
        if self.faults.flags:
            return FLAGS_ENERGY_BASE + (energy & 0xFFFF)
        return energy

    def snapshot(self) -> dict[str, object]:
        """The counters and the faults injected so far, JSON-safe."""
        return {**self.counters.as_dict(), "faults": dict(self.faults.injected)}

    @property
    def logical_device_name(self) -> bytes:
        """The logical device name; under ``flags`` it holds the bytes 7E 7D ("~}")."""
        middle = b"~}" if self.faults.flags else b"SM"
        return b"DBS" + middle + self.serial.encode("ascii")
