"""A simulator meter that also serves Data objects whose encoded values a test sets at will.

The meter is the real simulator (real TCP, HDLC, association, GET-with-list); the extra objects
answer attribute 2 with whatever bytes the test put in :attr:`ValueMeter.raw`, valid A-XDR or
not. Used to push every kind of value a meter can send through the bridge.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from bridge.config import RegisterConfig
from bridge.simulator import SimulatorConfig
from bridge.simulator.objects import Attribute, CosemObject, constant
from bridge.simulator.server import Simulator
from codec.axdr import Data, encode_data
from codec.cosem import InterfaceClass
from codec.obis import Obis


def extra_obis(index: int) -> Obis:
    """The logical name of extra object ``index`` (manufacturer-specific range 0-0:96.99.x)."""
    return Obis(0, 0, 96, 99, index, 255)


@attrs.define(eq=False)
class ValueMeter:
    """The simulator and the bytes each extra object answers."""

    sim: Simulator
    port: int
    raw: dict[int, bytes]

    def set(self, index: int, value: Data | bytes) -> None:
        """Serve ``value`` (encoded, or raw bytes as they are) from extra object ``index``."""
        self.raw[index] = value if isinstance(value, bytes) else encode_data(value)

    @staticmethod
    def register(index: int, key: str | None = None) -> RegisterConfig:
        """The register entry of extra object ``index`` (class 1, attribute 2)."""
        return RegisterConfig(key=key or f"x{index}", obis=extra_obis(index), class_id=1)


@asynccontextmanager
async def value_meter(count: int, **config: Any) -> AsyncIterator[ValueMeter]:
    """A one-meter simulator with ``count`` extra Data objects (all null-data at first)."""
    sim = Simulator(SimulatorConfig(port=0, **config))
    raw: dict[int, bytes] = {i: encode_data(Data.null()) for i in range(count)}
    meter = sim.meters[0]
    model = attrs.evolve(meter.model, objects=dict(meter.model.objects))
    model.by_obis = dict(meter.model.by_obis)
    for index in range(count):

        def get(ctx: object, access: object, index: int = index) -> bytes:
            return raw[index]

        obis = extra_obis(index)
        logical_name = Attribute(1, constant(Data.octet_string(obis.to_bytes())))
        obj = CosemObject(InterfaceClass.DATA, 0, obis, 2, {1: logical_name, 2: Attribute(2, get)})
        model.objects[(obj.class_id, obis)] = obj
        model.by_obis[obis] = obj
    meter.model = model
    async with trio.open_nursery() as nursery:
        ports = await nursery.start(sim.serve)
        try:
            yield ValueMeter(sim, ports.meters[0], raw)
        finally:
            nursery.cancel_scope.cancel()
