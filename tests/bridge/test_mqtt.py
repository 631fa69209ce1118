"""MqttClient against a real Mosquitto on loopback."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import attrs
import paho.mqtt.client as paho
import pytest
import trio
from paho.mqtt.enums import CallbackAPIVersion

from bridge.mqtt import (
    ALARM_AUTH_REFUSED,
    ALARM_SESSION_TAKEOVER,
    MqttClient,
    MqttSettings,
    PublishError,
    TlsSettings,
)
from tests.bridge.conftest import GATEWAY_TOKEN
from tests.bridge.mosquitto import (
    TOKEN_PASSWORD,
    Collector,
    Mosquitto,
    free_port,
    make_tls_files,
)


def settings_for(broker: Mosquitto, **overrides: object) -> MqttSettings:
    values: dict[str, object] = {
        "host": broker.host,
        "port": broker.port,
        "client_id": "bridge-test",
        "username": GATEWAY_TOKEN,
        "password": TOKEN_PASSWORD,
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
        "connect_timeout": 2.0,
    }
    values.update(overrides)
    return MqttSettings(**values)  # type: ignore[arg-type]


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def test_publish_returns_after_puback(
    mosquitto: Mosquitto, collector: Callable[[list[str]], Collector]
) -> None:
    sub = collector(["t/#"])
    client = MqttClient(settings_for(mosquitto))
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await client.wait_connected()
            assert client.connected

            # Many publishes in flight at once, each returning after its own PUBACK.
            async with trio.open_nursery() as inner:
                for i in range(50):
                    inner.start_soon(client.publish, f"t/{i}", f"m{i}".encode())
            assert client.stats.acked == 50
            assert client.pending_publishes == 0
            msgs = await sub.wait_for(lambda m: len(m) >= 50)
            assert sorted(m.payload for m in msgs) == sorted(f"m{i}".encode() for i in range(50))

            # With the broker frozen there is no PUBACK, so publish must not return.
            mosquitto.pause()
            done = trio.Event()

            async def one() -> None:
                await client.publish("t/frozen", b"x")
                done.set()

            nursery.start_soon(one)
            await wait_until(lambda: client.pending_publishes == 1, 5)
            assert not done.is_set()
            mosquitto.resume()
            with trio.fail_after(5):
                await done.wait()
            await client.disconnect()
    assert client.stats.acked == 51


async def test_broker_loss_fails_pending_and_reconnects(mosquitto: Mosquitto) -> None:
    client = MqttClient(settings_for(mosquitto))
    errors: list[PublishError] = []

    async def publish_expecting_failure(i: int) -> None:
        try:
            await client.publish(f"t/{i}", b"lost?")
        except PublishError as exc:
            errors.append(exc)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await client.wait_connected()
            mosquitto.pause()
            for i in range(3):
                nursery.start_soon(publish_expecting_failure, i)
            await wait_until(lambda: client.pending_publishes == 3)
            mosquitto.kill()
            await wait_until(lambda: len(errors) == 3)
            assert all("connection lost" in str(e) for e in errors)
            assert not client.connected
            assert client.stats.failed == 3
            # Not connected: fails at once instead of queueing in memory.
            with pytest.raises(PublishError, match="not connected"):
                await client.publish("t/x", b"y")

            mosquitto.start()
            await client.wait_connected()
            await client.publish("t/after", b"ok")
            assert client.stats.connects == 2
            assert client.stats.disconnects == 1
            await client.disconnect()


async def test_run_starts_at_once_and_retries_without_broker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.mqtt")
    port = free_port()  # nothing listens here
    client = MqttClient(
        MqttSettings(
            host="127.0.0.1", port=port, client_id="x", backoff_initial=0.02, backoff_max=0.05
        )
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            assert not client.connected
            await wait_until(lambda: client.stats.connect_failures >= 5)
            assert client.last_error is not None
            assert "cannot connect" in client.last_error
            nursery.cancel_scope.cancel()
    # The same failure is logged once, not once per retry.
    lines = [r for r in caplog.records if "cannot connect" in r.getMessage()]
    assert len(lines) == 1


async def test_wrong_token_logs_one_line_and_raises_alarm(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.mqtt")
    settings = settings_for(mosquitto, username="wrong-token", password="nope")
    source = "the token from environment variable TB_TOKEN (mqtt.token_env)"
    client = MqttClient(attrs.evolve(settings, credential_source=source))
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await wait_until(lambda: client.stats.connack_refusals >= 4, timeout=10)
            assert ALARM_AUTH_REFUSED in client.alarms
            assert not client.connected
            nursery.cancel_scope.cancel()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    text = errors[0].getMessage()
    assert f"MQTT broker refused the connection: not authorized for {source}" in text
    # The username is the access token: the log line names its source, none of its characters.
    assert "wron" not in text
    assert "check the ThingsBoard access token" in text
    assert errors[0].name == "bridge.mqtt"


def kick(broker: Mosquitto, client_id: str) -> None:
    """Connect a second client with the same client id (Mosquitto drops the first), then leave."""
    other = paho.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id)
    other.username_pw_set(GATEWAY_TOKEN, TOKEN_PASSWORD)
    acked: list[object] = []
    other.on_connect = lambda *args: acked.append(args)
    other.connect(broker.host, broker.port)
    deadline = time.monotonic() + 5
    while not acked and time.monotonic() < deadline:
        other.loop(0.05)
    assert acked, "the second client got no CONNACK"
    other.disconnect()
    other.loop(0.05)


async def test_session_takeover_is_reported_once(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge.mqtt")
    client = MqttClient(settings_for(mosquitto, client_id="shared-id"))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            for round_ in range(4):
                await client.wait_connected()
                generation = client.generation
                if round_ < 2:
                    assert ALARM_SESSION_TAKEOVER not in client.alarms
                await trio.to_thread.run_sync(kick, mosquitto, "shared-id")
                await wait_until(lambda g=generation: client.generation > g and client.connected)
            assert ALARM_SESSION_TAKEOVER in client.alarms
            nursery.cancel_scope.cancel()
    takeover = [r for r in caplog.records if "keeps closing the connection" in r.getMessage()]
    assert len(takeover) == 1
    assert "another client is probably using this token or client id" in takeover[0].getMessage()
    assert client.stats.disconnects >= 4


async def test_username_only_login(make_broker: Callable[..., Mosquitto]) -> None:
    broker = make_broker("anon", anonymous=True)
    client = MqttClient(settings_for(broker, username="tb-access-token", password=None))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await client.wait_connected()
            await client.publish("v1/devices/me/telemetry", b'{"v":1}')
            await client.disconnect()
    # A clean shutdown sends DISCONNECT instead of dropping the socket.
    log = await broker.wait_for_log("Received DISCONNECT from bridge-test")
    assert "u'tb-access-token'" in log  # the broker saw the token as the username


async def test_subscribe_and_will(make_broker: Callable[..., Mosquitto]) -> None:
    from bridge.mqtt import WillSettings

    broker = make_broker("anon2", anonymous=True)
    received: list[tuple[str, bytes]] = []
    listener = MqttClient(
        settings_for(broker, client_id="listener", username=None, password=None),
        on_message=lambda topic, payload: received.append((topic, payload)),
    )
    listener.subscribe("cmd/#")
    listener.subscribe("status/#")
    talker = MqttClient(
        settings_for(
            broker,
            client_id="talker",
            username=None,
            password=None,
            will=WillSettings(topic="status/talker", payload=b"offline"),
        )
    )
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(listener.run)
            await nursery.start(talker.run)
            await listener.wait_connected()
            await talker.wait_connected()
            await trio.sleep(0.2)  # the SUBSCRIBE is not acknowledged to the caller
            await talker.publish("cmd/1", b"hello")
            await wait_until(lambda: ("cmd/1", b"hello") in received)
            # Dropping the socket without DISCONNECT makes the broker publish the will.
            assert talker._conn is not None
            talker._force_close(talker._conn, "test drops the socket")
            await wait_until(lambda: ("status/talker", b"offline") in received)
            await talker.disconnect()
            await listener.disconnect()


async def test_tls_connection(make_broker: Callable[..., Mosquitto], tmp_path: object) -> None:
    from pathlib import Path

    files = make_tls_files(Path(str(tmp_path)) / "tls")
    broker = make_broker("tls", tls=files, users={GATEWAY_TOKEN: TOKEN_PASSWORD})
    assert broker.tls_port is not None
    good = MqttClient(
        settings_for(broker, port=broker.tls_port, tls=TlsSettings(ca_file=str(files.ca_file)))
    )
    # Trusting only the system CAs, the self-signed chain must be refused.
    bad = MqttClient(settings_for(broker, port=broker.tls_port, client_id="bad", tls=TlsSettings()))
    # Verification off: connects without knowing the CA (for test setups only).
    insecure = MqttClient(
        settings_for(
            broker, port=broker.tls_port, client_id="insecure", tls=TlsSettings(insecure=True)
        )
    )
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(good.run)
            await nursery.start(bad.run)
            await nursery.start(insecure.run)
            await good.wait_connected()
            await good.publish("t/tls", b"secret")
            await insecure.wait_connected()
            await insecure.publish("t/tls", b"unverified")
            await wait_until(lambda: bad.stats.connect_failures >= 1)
            assert bad.last_error is not None
            assert "CERTIFICATE_VERIFY_FAILED" in bad.last_error
            assert not bad.connected
            await good.disconnect()
            nursery.cancel_scope.cancel()
    assert good.stats.acked == 1


def test_bad_tls_files_fail_early(tmp_path: object) -> None:
    with pytest.raises(ValueError, match="cannot load certificates"):
        MqttClient(
            MqttSettings(
                host="localhost",
                client_id="x",
                tls=TlsSettings(ca_file=f"{tmp_path}/missing-ca.pem"),
            )
        )


async def test_missing_connack_times_out(mosquitto: Mosquitto) -> None:
    mosquitto.pause()  # the kernel still accepts TCP, but no CONNACK comes
    client = MqttClient(settings_for(mosquitto, connect_timeout=0.3))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await wait_until(lambda: client.stats.connect_failures >= 2)
            assert client.last_error is not None
            assert "no CONNACK within 0.3 s" in client.last_error
            assert not client.connected
            mosquitto.resume()
            await client.wait_connected()
            nursery.cancel_scope.cancel()


async def test_keepalive_detects_a_silent_broker(mosquitto: Mosquitto) -> None:
    client = MqttClient(settings_for(mosquitto, keepalive=1))
    errors: list[PublishError] = []

    async def publish() -> None:
        try:
            await client.publish("t/silent", b"x")
        except PublishError as exc:
            errors.append(exc)

    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            await client.wait_connected()
            mosquitto.pause()  # the socket stays open: only keepalive can notice
            nursery.start_soon(publish)
            start = trio.current_time()
            await wait_until(lambda: bool(errors), timeout=10)
            assert trio.current_time() - start < 5
            assert "keepalive" in str(errors[0])
            assert not client.connected
            mosquitto.resume()
            await client.wait_connected()
            nursery.cancel_scope.cancel()


async def test_cancel_does_not_wait_for_a_hanging_connect() -> None:
    import socket

    # A listener that never accepts: TCP connects, the TLS handshake then hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        client = MqttClient(
            MqttSettings(
                host="127.0.0.1", port=port, client_id="x", tls=TlsSettings(), connect_timeout=60
            )
        )
        # Waiting for the connect's own deadline would take a minute; a cancel must not.
        with trio.fail_after(90):
            async with trio.open_nursery() as nursery:
                await nursery.start(client.run)
                await trio.sleep(0.3)
                start = time.monotonic()
                nursery.cancel_scope.cancel()
        assert time.monotonic() - start < 10
        assert client.stats.connects == 0
