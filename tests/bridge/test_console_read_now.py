"""``POST /api/v1/meters/{name}/read`` against a meter that allows one association at a time,
as many real meters do: the read runs on the poller's association, not on a second one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from codec.acse import AuthenticationMechanism as M
from codec.security import SecurityPolicy as P
from tests.bridge.console_harness import console_config, start_console
from tests.bridge.mosquitto import Mosquitto
from tests.bridge.test_run_cli import bridge_process  # noqa: F401 (fixture)
from tests.security.test_secured_simulator import AK, EK, meter_settings


async def one_link_meter(nursery: trio.Nursery, sim: Any, index: int) -> tuple[int, list[int]]:
    """A TCP port serving simulated meter ``index`` to one connection at a time; a second
    connection while the first is open is closed at once. Returns the port and a list that
    counts the refused connections."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    busy = False
    refused: list[int] = []

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal busy
        if busy:
            refused.append(1)
            await stream.aclose()
            return
        busy = True
        try:
            await sim.serve_stream(index, stream)
        finally:
            busy = False

    nursery.start_soon(trio.serve_listeners, handle, listeners)
    return listeners[0].socket.getsockname()[1], refused


async def test_read_now_uses_the_pollers_association(
    tmp_path: Path,
    nursery: trio.Nursery,
    mosquitto: Mosquitto,
    simulator: Any,
    bridge_process: Any,  # noqa: F811
) -> None:
    sim, _ports = await simulator(meters=1)
    port, refused = await one_link_meter(nursery, sim, 0)
    config, web_port = console_config(
        tmp_path / "bridge.toml",
        mosquitto,
        {"m0": port},
        data_dir=tmp_path / "data",
        defaults={"interval_s": 1.0, "timeout_s": 0.5},
    )
    _process, api = await start_console(bridge_process, config, web_port)
    await api.wait_until(
        "/api/v1/meters/m0", lambda m: bool(m["values"]), 20, "the poller's first values"
    )
    for _ in range(3):
        read = await api.call("POST", "/api/v1/meters/m0/read")
        assert read.status == 200, read.text
        assert read.json["meter"] == "m0"
        assert read.json["values"]["voltage_l1"]["unit"] == "V"
        assert not read.json["errors"]
    assert not refused  # no second association was tried
    # The poller keeps polling: readings go on being taken.
    taken = (await api.get("/api/v1/status")).json["counters"]["readings_taken"]
    await api.wait_until(
        "/api/v1/status",
        lambda s: s["counters"]["readings_taken"] > taken,
        10,
        "a further poll",
    )


async def test_read_now_of_a_secured_meter_not_being_polled(
    tmp_path: Path,
    mosquitto: Mosquitto,
    simulator: Any,
    bridge_process: Any,  # noqa: F811
) -> None:
    """A disabled meter is read on an association of its own, with the meter's security
    (HLS-GMAC, ciphered) and its persisted invocation counter."""
    _sim, ports = await simulator(
        meters=1, settings=meter_settings(M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED)
    )
    config, web_port = console_config(
        tmp_path / "bridge.toml",
        mosquitto,
        {"s0": ports[0]},
        data_dir=tmp_path / "data",
        meter_extra={
            "s0": {
                "enabled": False,
                "security": "hls-gmac",
                "block_cipher_key": EK.hex(),
                "authentication_key": AK.hex(),
            }
        },
    )
    _process, api = await start_console(bridge_process, config, web_port)
    for _ in range(2):  # the second association must not reuse the first one's counters
        read = await api.call("POST", "/api/v1/meters/s0/read")
        assert read.status == 200, read.text
        assert read.json["values"]["voltage_l1"]["unit"] == "V"
    assert list((tmp_path / "data" / "counters").glob("s0-*.ic"))
