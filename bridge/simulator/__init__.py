"""Simulated DLMS/COSEM meters over TCP, with fault injection.

N meters, each on its own port, speaking HDLC or the TCP wrapper:
SNRM/UA, AARQ/AARE with LLS, GET (normal, with-list, block transfer), SET and ACTION against a
single- or three-phase model whose values follow the real clock. Faults (garbage, residual bytes,
chunked and dripped replies, 0x7E/0x7D in frames, bad FCS, delays, silence, resets, refused
associations) are set per meter at start-up and changed while running.

Modules: :mod:`~bridge.simulator.physics` (the quantities over time), :mod:`.objects`,
:mod:`.models` and :mod:`.profile` (the COSEM objects), :mod:`.meter` (one meter's state),
:mod:`.cosem_server` (ACSE and services), :mod:`.server_link` (HDLC and wrapper, meter side),
:mod:`.faults` (spec and injection), :mod:`.server` (the Trio shell: listeners, a task per
connection for meters with faults), :mod:`.reactor` (one thread serving every fault-free
connection), :mod:`.workers` (the meters split over processes), :mod:`.control` (the runtime
control interface).
"""

from __future__ import annotations

from bridge.simulator.faults import Faults, FaultSpec, FaultSpecError, parse_fault_spec
from bridge.simulator.meter import Meter, MeterSettings
from bridge.simulator.models import MODELS, get_model
from bridge.simulator.server import (
    TRANSPORTS,
    Simulator,
    SimulatorConfig,
    SimulatorError,
    SimulatorPorts,
)

__all__ = [
    "MODELS",
    "TRANSPORTS",
    "FaultSpec",
    "FaultSpecError",
    "Faults",
    "Meter",
    "MeterSettings",
    "Simulator",
    "SimulatorConfig",
    "SimulatorError",
    "SimulatorPorts",
    "get_model",
    "parse_fault_spec",
]
