"""Fixtures for the bridge tests: a real Mosquitto broker and message collectors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge.simulator.server import Simulator, SimulatorConfig
from tests.bridge.mosquitto import TOKEN_PASSWORD, Collector, Mosquitto, find_mosquitto

# Users the default broker knows: ThingsBoard-style tokens as usernames.
GATEWAY_TOKEN = "gateway-token"
METER_TOKENS = {"meter-a": "token-meter-a", "meter-b": "token-meter-b"}


def _require_mosquitto() -> str:
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto is not installed (no /usr/sbin/mosquitto, none on PATH)")
    return binary


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A running broker with password logins; stopped after the test."""
    binary = _require_mosquitto()
    users = {GATEWAY_TOKEN: TOKEN_PASSWORD}
    users.update({token: TOKEN_PASSWORD for token in METER_TOKENS.values()})
    broker = Mosquitto(tmp_path / "broker", users=users, binary=binary)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    """Factory for brokers with other settings (anonymous, TLS); all stopped afterwards."""
    binary = _require_mosquitto()
    brokers: list[Mosquitto] = []

    def make(name: str = "broker2", **kwargs: object) -> Mosquitto:
        broker = Mosquitto(tmp_path / name, binary=binary, **kwargs)  # type: ignore[arg-type]
        brokers.append(broker)
        broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.kill()


@pytest.fixture
def collector(mosquitto: Mosquitto) -> Iterator[Callable[[list[str]], Collector]]:
    """Factory: ``collector(["topic/#"])`` subscribes to the default broker."""
    started: list[Collector] = []

    def make(topics: list[str]) -> Collector:
        c = Collector(mosquitto, topics, client_id=f"test-collector-{len(started)}").start()
        started.append(c)
        return c

    yield make
    for c in started:
        c.stop()


@pytest.fixture
async def simulator(nursery: trio.Nursery) -> Callable[..., Any]:
    """Factory of in-process simulators serving until the test ends:
    ``sim, ports = await simulator(meters=3, faults="1:garbage=0.5", seed=7)``, one ephemeral
    loopback port per meter."""

    async def start(**kwargs: Any) -> tuple[Simulator, tuple[int, ...]]:
        sim = Simulator(SimulatorConfig(port=0, **kwargs))
        ports = await nursery.start(sim.serve)
        return sim, ports.meters

    return start
