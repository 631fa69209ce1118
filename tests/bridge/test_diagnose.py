"""``dlms-bridge diagnose`` names the failing step of each fault: simulated meters over real TCP
on 127.0.0.1 and a real Mosquitto."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion

from bridge import cli
from tests.bridge.conftest import GATEWAY_TOKEN
from tests.bridge.mosquitto import TOKEN_PASSWORD, Mosquitto, free_port

PASSWORD = "00000000"


async def diagnose(*argv: str) -> tuple[int, dict[str, Any]]:
    """``dlms-bridge diagnose --json ...`` (its own trio.run, in a thread)."""
    out = io.StringIO()

    def call() -> int:
        with contextlib.redirect_stdout(out):
            return cli.main(["diagnose", "--json", *argv])

    code = await trio.to_thread.run_sync(call)
    return code, json.loads(out.getvalue())


def steps(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["step"]: s for s in report["steps"]}


def meter_args(port: int, *extra: str) -> list[str]:
    return ["--host", "127.0.0.1", "--port", str(port), "--timeout", "1", *extra]


def write_config(
    path: Path,
    *,
    broker_port: int,
    meter_port: int,
    username: str = GATEWAY_TOKEN,
    meter_password: str = PASSWORD,
    client_id: str = "diag-test",
) -> Path:
    path.write_text(
        f'[bridge]\nname = "box"\ndata_dir = "{path.parent / "data"}"\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\nclient_id = "{client_id}"\n'
        f'username = "{username}"\npassword = "{TOKEN_PASSWORD}"\n'
        f'[[meters]]\nname = "m0"\nhost = "127.0.0.1"\nport = {meter_port}\n'
        f'password = "{meter_password}"\nregisters = "field-meter"\ntimeout_s = 1\n'
    )
    return path


# -- the meter side ----------------------------------------------------------------------------


async def test_closed_port_fails_at_tcp() -> None:
    code, report = await diagnose(*meter_args(free_port()))
    assert code == 1
    assert report["ok"] is False and report["failed_step"] == "tcp"
    tcp = steps(report)["tcp"]
    assert tcp["data"]["errno"] == "ECONNREFUSED"
    assert "nothing listens on port" in report["hint"]
    assert [s["step"] for s in report["steps"]] == ["dns", "tcp"]


async def test_unresolvable_host_fails_at_dns() -> None:
    code, report = await diagnose("--host", "no-such-meter.invalid", "--port", "4059")
    assert code == 1 and report["failed_step"] == "dns"
    assert "cannot resolve 'no-such-meter.invalid'" in report["verdict"]


async def test_silent_meter_fails_at_link_and_no_address_answers(simulator: Any) -> None:
    _sim, ports = await simulator(faults="silence=1000")
    code, report = await diagnose(*meter_args(ports[0], "--password", PASSWORD))
    assert code == 1 and report["failed_step"] == "link"
    link = steps(report)["link"]
    assert link["detail"] == (
        "no answer to SNRM at server address logical 0, physical 1 from client SAP 1"
    )
    assert "answered" not in link["data"]
    # The usual addresses were asked with our client SAP, then as the public client.
    assert link["data"]["tried"] == [
        "client SAP 1: none of 5 usual addresses answered",
        "client SAP 16: none of 6 usual addresses answered",
    ]
    assert "no usual server address answered" in link["hint"]


async def serve_ua_then_silence(
    *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """An HDLC peer that answers SNRM with UA and then nothing: the link comes up, the AARQ is
    never answered."""
    from codec.hdlc import NEED_DATA, FrameKind, FrameScanner, HdlcAddress, encode_frame
    from codec.hdlc_params import LinkParameters

    async def handler(stream: trio.SocketStream) -> None:
        scanner = FrameScanner()
        async with stream:
            while data := await stream.receive_some(4096):
                scanner.receive_data(data)
                while (frame := scanner.next_frame()) is not NEED_DATA:
                    if frame.kind is FrameKind.SNRM:
                        ua = encode_frame(
                            FrameKind.UA,
                            HdlcAddress(frame.src, frame.src_size),
                            HdlcAddress(frame.dst, frame.dst_size),
                            info=LinkParameters().encode(),
                        )
                        await stream.send_all(ua)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


async def test_link_up_but_no_aare_fails_at_association(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve_ua_then_silence)
    code, report = await diagnose(*meter_args(port, "--password", PASSWORD))
    assert code == 1 and report["failed_step"] == "association"
    by = steps(report)
    assert by["link"]["ok"] is True and by["link"]["data"]["max_info_rx"] == 128
    assert report["verdict"] == "the link is up but the meter does not answer the AARQ"


async def test_a_peer_that_closes_on_us_fails_at_link(nursery: trio.Nursery) -> None:
    from tests.bridge.test_scan import serve_banner

    port = await nursery.start(serve_banner)
    code, report = await diagnose(*meter_args(port))
    assert code == 1 and report["failed_step"] == "link"
    assert report["verdict"].endswith("closed the connection")
    assert report["hint"].startswith("the meter (or its modem) closed the connection")


async def test_wrong_password_fails_at_association_and_public_client_is_tried(
    simulator: Any,
) -> None:
    _sim, ports = await simulator()
    code, report = await diagnose(*meter_args(ports[0], "--password", "wrong"))
    assert code == 1 and report["failed_step"] == "association"
    by = steps(report)
    assert by["link"]["ok"] and by["link"]["data"]["max_info_tx"] == 128
    assert by["association"]["data"]["code"] == "association.authentication_failure"
    assert report["hint"].startswith("wrong password")
    assert "public client (SAP 16, no password) associates" in report["hint"]
    # The same meter with the right password passes every step.
    code, report = await diagnose(*meter_args(ports[0], "--password", PASSWORD))
    assert code == 0 and report["ok"] is True and report["failed_step"] is None
    assert steps(report)["register 0-0:1.0.0 (clock)"]["ok"]


async def test_wrong_server_address_names_the_one_that_answers(simulator: Any) -> None:
    _sim, ports = await simulator()
    args = meter_args(ports[0], "--password", PASSWORD, "--server-logical", "1")
    code, report = await diagnose(*args, "--server-physical", "17")
    assert code == 1 and report["failed_step"] == "link"
    link = steps(report)["link"]
    assert link["data"]["answered"] == {
        "server_logical": 0,
        "server_physical": 1,
        "client_sap": 1,
        "reply": "UA",
    }
    assert "server_logical = 0, server_physical = 1" in link["hint"]


async def test_wrapper_wrong_wport_names_the_one_that_answers(simulator: Any) -> None:
    _sim, ports = await simulator(transport="wrapper")
    args = meter_args(ports[0], "--transport", "wrapper", "--password", PASSWORD)
    code, report = await diagnose(*args, "--server-logical", "17")
    assert code == 1 and report["failed_step"] == "association"
    assoc = steps(report)["association"]
    assert assoc["data"]["answered"] == {
        "server_logical": 1,
        "client_sap": 16,
        "reply": "accepted",
    }
    assert "server_logical = 1 (the wPort)" in assoc["hint"]
    code, report = await diagnose(*args)
    assert code == 0, report


async def test_wrong_transport_is_named(simulator: Any) -> None:
    _sim, ports = await simulator(transport="wrapper")
    code, report = await diagnose(*meter_args(ports[0], "--password", PASSWORD))
    assert code == 1 and report["failed_step"] == "link"
    assert report["hint"].startswith("this port speaks the wrapper transport, not hdlc")
    assert steps(report)["link"]["data"]["other_transport"]["server_logical"] == 1


async def test_undefined_register_fails_at_that_register(simulator: Any) -> None:
    _sim, ports = await simulator()
    args = meter_args(ports[0], "--password", PASSWORD, "1-1:1.8.0", "1-0:99.99.0")
    code, report = await diagnose(*args)
    assert code == 1
    assert report["failed_step"] == "register 1-0:99.99.0"
    by = steps(report)
    assert by["register 1-1:1.8.0"]["ok"] is True
    assert by["register 1-1:1.8.0"]["data"]["unit"] == "Wh"
    assert by["register 1-0:99.99.0"]["data"]["error"] == "object-undefined"


async def test_idle_association_dropped_by_the_meter(simulator: Any) -> None:
    from bridge.simulator.meter import MeterSettings

    _sim, ports = await simulator(settings=MeterSettings(inactivity_timeout=0.3))
    code, report = await diagnose(*meter_args(ports[0], "--password", PASSWORD, "--idle", "1"))
    assert code == 1 and report["failed_step"] == "idle"
    assert "inactivity_timeout_s below 1" in report["hint"]


async def test_bad_input_is_exit_2_with_one_line(capsys: Any) -> None:
    assert cli.main(["diagnose", "--meter", "m0"]) == 2
    assert capsys.readouterr().err == "diagnose: --meter needs --config\n"
    assert cli.main(["diagnose"]) == 2
    assert "say which meter" in capsys.readouterr().err
    for timeout in ("inf", "nan", "0"):
        argv = ["diagnose", "--host", "127.0.0.1", "--port", "1", "--timeout", timeout]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "--timeout" in err and err.count("\n") == 1


# -- the broker side ---------------------------------------------------------------------------


async def test_config_meter_and_broker_all_pass(
    tmp_path: Path, mosquitto: Mosquitto, simulator: Any
) -> None:
    _sim, ports = await simulator()
    config = write_config(tmp_path / "b.toml", broker_port=mosquitto.port, meter_port=ports[0])
    code, report = await diagnose("--config", str(config), "--meter", "m0", "--takeover-wait", "1")
    assert code == 0, report
    names = [s["step"] for s in report["steps"]]
    assert names[:4] == ["dns", "tcp", "link", "association"]
    assert sum(n.startswith("register ") for n in names) == 5
    assert names[-3:] == ["mqtt.connect", "mqtt.publish", "mqtt.takeover"]
    assert steps(report)["mqtt.publish"]["data"]["topic"] == "v1/gateway/attributes/request"


async def test_broker_down_fails_at_mqtt_connect(tmp_path: Path, simulator: Any) -> None:
    _sim, ports = await simulator()
    config = write_config(tmp_path / "b.toml", broker_port=free_port(), meter_port=ports[0])
    code, report = await diagnose("--config", str(config), "--meter", "m0")
    assert code == 1 and report["failed_step"] == "mqtt.connect"
    connect = steps(report)["mqtt.connect"]
    assert connect["data"] == {"refused": False}
    assert "cannot be reached" in connect["hint"]


async def test_refused_token_fails_at_mqtt_connect_without_echoing_it(
    tmp_path: Path, mosquitto: Mosquitto, simulator: Any
) -> None:
    _sim, ports = await simulator()
    config = write_config(
        tmp_path / "b.toml",
        broker_port=mosquitto.port,
        meter_port=ports[0],
        username="not-a-known-token-123456",
    )
    code, report = await diagnose("--config", str(config), "--meter", "m0")
    assert code == 1 and report["failed_step"] == "mqtt.connect"
    connect = steps(report)["mqtt.connect"]
    assert connect["data"] == {"refused": True}
    assert "token" in connect["hint"]
    assert "not-a-known-token-123456" not in json.dumps(report)


async def test_another_client_with_our_client_id_is_detected(
    tmp_path: Path, mosquitto: Mosquitto, simulator: Any
) -> None:
    _sim, ports = await simulator()
    config = write_config(tmp_path / "b.toml", broker_port=mosquitto.port, meter_port=ports[0])
    # Another box with the same client id, reconnecting every 0.5 s when kicked off.
    stop = threading.Event()
    other = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="diag-test")
    other.username_pw_set(GATEWAY_TOKEN, TOKEN_PASSWORD)
    other.reconnect_delay_set(min_delay=1, max_delay=1)
    other.connect(mosquitto.host, mosquitto.port, keepalive=10)
    other.loop_start()
    try:
        code, report = await diagnose(
            "--config", str(config), "--meter", "m0", "--takeover-wait", "4"
        )
    finally:
        stop.set()
        other.disconnect()
        other.loop_stop()
    assert code == 1 and report["failed_step"] == "mqtt.takeover", report
    assert "another client uses the same token or client id" in report["hint"]


async def test_while_the_service_runs_diagnose_never_kicks_it_off(
    tmp_path: Path, mosquitto: Mosquitto, simulator: Any
) -> None:
    from bridge.config import load_config
    from tests.bridge.test_service import running

    _sim, ports = await simulator()
    path = write_config(tmp_path / "b.toml", broker_port=mosquitto.port, meter_port=ports[0])
    async with running(load_config(path)) as service:
        assert service.publisher is not None
        [client] = service.publisher.clients.values()
        with trio.fail_after(10):
            await client.wait_connected()
        code, report = await diagnose(
            "--config", str(path), "--meter", "m0", "--takeover-wait", "1"
        )
        assert code == 0, report
        assert "'diag-test-diagnose'" in steps(report)["mqtt.connect"]["detail"]
        # The service's own connection was never replaced.
        assert client.connected and client.stats.connects == 1
