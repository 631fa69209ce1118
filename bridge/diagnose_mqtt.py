"""The broker side of ``diagnose``: connect, publish, and watch for a session takeover.

``mqtt.connect``   connect with the configured credentials; a refusal's CONNACK code explained
``mqtt.publish``   a QoS 1 publish acknowledged by PUBACK (a harmless diagnostic message, or a
                   telemetry key with ``publish_telemetry``)
``mqtt.takeover``  nobody else uses the token or client id: the running service's alarm, and our
                   own connection staying up for ``takeover_wait_s``

While the service may be running (its status socket answers, or cannot be ruled out), the
connection uses the client id ``<client_id>-diagnose`` so that it never takes the service's
session over.
"""

from __future__ import annotations

import json
import time
from typing import Any

import attrs
import trio

from bridge.config import BridgeConfig, MeterConfig
from bridge.diagnose import Step
from bridge.mqtt import MqttClient, MqttSettings, PublishError
from bridge.status_socket import StatusUnavailable, query_status, socket_path

__all__ = ["TAKEOVER_WAIT_S", "diagnose_mqtt"]

#: Seconds our own MQTT connection must stay up to rule out another client with our identity.
TAKEOVER_WAIT_S = 3.0

_CONNACK_HINTS = {
    134: "bad user name or password: the broker does not know this token/username and password "
    "(check [mqtt] token against the gateway's or device's access token in ThingsBoard)",
    135: "not authorized: the broker knows the credentials but refuses them for this client "
    "(check the token, the device's credentials type, and the broker's ACL)",
    133: "client identifier not valid: choose another [mqtt] client_id",
    136: "server unavailable: the broker is up but not accepting clients now",
    132: "unsupported protocol version",
}


async def _service_status(config: BridgeConfig) -> tuple[dict[str, Any] | None, bool]:
    """(the running service's status if it answers, whether it may be running)."""
    try:
        return await query_status(socket_path(config.bridge.data_dir), timeout=2.0), True
    except StatusUnavailable as exc:
        # Unless it is certainly not running (say we may not read its socket), assume it is.
        return None, not exc.not_running


async def diagnose_mqtt(
    config: BridgeConfig,
    settings: MqttSettings,
    *,
    meter: MeterConfig | None,
    timeout: float,
    publish_telemetry: bool = False,
    takeover_wait_s: float = TAKEOVER_WAIT_S,
) -> list[Step]:
    """Connect, publish, watch for a takeover; the steps up to the first failure."""
    status, service_running = await _service_status(config)
    # The running service keeps its own client id; ours must not kick it off the broker.
    client_id = f"{settings.client_id}-diagnose" if service_running else settings.client_id
    settings = attrs.evolve(
        settings,
        client_id=client_id,
        connect_timeout=timeout,
        backoff_initial=timeout,
        backoff_max=timeout,
        takeover_count=1,
    )
    who = f"{settings.host}:{settings.port}"
    steps: list[Step] = []
    client = MqttClient(settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(client.run)
        try:
            with trio.move_on_after(timeout + 1):
                while not client.connected:
                    if client.stats.connack_refusals or client.stats.connect_failures:
                        break
                    await trio.sleep(0.05)
            if not client.connected:
                steps.append(_connect_failure(client, who, timeout))
                return steps
            steps.append(
                Step(
                    "mqtt.connect",
                    True,
                    f"connected to {who} as {client_id!r}"
                    + (
                        " (the service may be running: our own client id)"
                        if service_running
                        else ""
                    ),
                )
            )
            steps.append(await _publish(client, config, meter, timeout, publish_telemetry))
            if not steps[-1].ok:
                return steps
            steps.append(await _takeover(client, status, takeover_wait_s))
        finally:
            with trio.move_on_after(2):
                await client.disconnect()
            nursery.cancel_scope.cancel()
    return steps


def _connect_failure(client: MqttClient, who: str, timeout: float) -> Step:
    last = client.last_error or f"no CONNACK within {timeout:g} s"
    if client.stats.connack_refusals:
        code = next((c for c in _CONNACK_HINTS if _reason_matches(c, last)), None)
        hint = _CONNACK_HINTS.get(code or 0, "the broker refused the connection")
        return Step("mqtt.connect", False, last, hint=hint, data={"refused": True})
    hint = (
        f"the broker at {who} cannot be reached: is it running, is the port right, does a "
        "firewall or TLS setting stand between?"
    )
    return Step("mqtt.connect", False, last, hint=hint, data={"refused": False})


def _reason_matches(code: int, text: str) -> bool:
    words = {
        134: "bad credentials",
        135: "not authorized",
        133: "identifier",
        136: "unavailable",
        132: "protocol",
    }
    return words[code].lower() in text.lower()


async def _publish(
    client: MqttClient,
    config: BridgeConfig,
    meter: MeterConfig | None,
    timeout: float,
    telemetry: bool,
) -> Step:
    mode = config.publish.mode
    now_ms = int(time.time() * 1000)
    name = meter.name if meter is not None else config.bridge.name
    if telemetry:
        if mode == "gateway":
            topic = "v1/gateway/telemetry"
            body: Any = {name: [{"ts": now_ms, "values": {"diagnose": 1}}]}
        elif mode == "device":
            topic, body = "v1/devices/me/telemetry", {"ts": now_ms, "values": {"diagnose": 1}}
        else:
            template = config.publish.topic or "meters/{meter}/telemetry"
            topic, body = template.format(meter=name), {"ts": now_ms, "diagnose": 1}
    elif mode == "gateway" and config.publish.payload == "thingsboard":
        # A read of a client attribute: harmless, and a topic ThingsBoard accepts.
        topic = "v1/gateway/attributes/request"
        body = {"id": 1, "device": name, "client": True, "key": "dlms_bridge_diagnose"}
    elif mode == "device":
        topic, body = "v1/devices/me/attributes/request/1", {"clientKeys": "dlms_bridge_diagnose"}
    else:
        topic, body = f"dlms-bridge/diagnose/{config.bridge.name}", {"ts": now_ms}
    payload = json.dumps(body).encode()
    try:
        await client.publish(topic, payload, qos=1, timeout=timeout)
    except PublishError as exc:
        return Step(
            "mqtt.publish",
            False,
            f"publish to {topic} not acknowledged: {exc}",
            hint="the broker took the connection but not the message: check its ACL for this "
            "topic (ThingsBoard drops connections that publish to unknown topics)",
        )
    return Step("mqtt.publish", True, f"PUBACK for {topic}", data={"topic": topic})


async def _takeover(client: MqttClient, status: dict[str, Any] | None, wait_s: float) -> Step:
    if status is not None:
        running_alarms = set(status.get("alarms") or {})
        if "mqtt.session_takeover" in running_alarms:
            return Step(
                "mqtt.takeover",
                False,
                "the running service reports its broker connection being closed again and "
                "again right after it is accepted",
                hint="another client uses the same ThingsBoard token or client id: find it "
                "(an old gateway, a second box) and give each its own",
            )
    with trio.move_on_after(wait_s):
        await client.wait_disconnected()
    if not client.connected:
        return Step(
            "mqtt.takeover",
            False,
            f"the broker closed our connection within {wait_s:g} s of accepting it "
            f"({client.last_error})",
            hint="another client uses the same token or client id and took over the session: "
            "find it and give each client its own",
        )
    return Step("mqtt.takeover", True, f"our connection stayed up {wait_s:g} s")
