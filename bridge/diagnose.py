"""The chain from the box to one meter and to the broker, checked step by step (``diagnose``).

Meter side, in order, stopping at the first failure:

``dns``          the host name resolves (an address literal passes at once)
``tcp``          the TCP connection opens: refused, timed out, unreachable or reset are told apart
``link``         HDLC: SNRM answered by UA (with the negotiated parameters); DM, FRMR or silence
                 fail, and then the usual server addresses are tried and the one that answers is
                 named. Wrapper: no link set-up; the step records the wPorts.
``association``  the AARE: accepted (conformance, PDU size, DLMS version) or the diagnostic
                 explained (wrong password, authentication required, ...); when refused, the
                 public client is tried to show whether the meter itself is fine. A wrapper meter
                 that stays silent is asked at the usual wPorts.
``register ...`` one step per register: its value and unit, or the object error
``idle``         (if asked) the association is left idle that long and then used again

The broker side (``mqtt.connect``, ``mqtt.publish``, ``mqtt.takeover``) is in
:mod:`bridge.diagnose_mqtt`.

Every step is a :class:`Step`; the report is JSON-safe (:meth:`DiagnoseReport.to_json`).
"""

from __future__ import annotations

import errno
import ipaddress
import socket as _stdsocket
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from bridge.probe import (
    HDLC_ADDRESSES,
    PUBLIC_CLIENT_SAP,
    WRAPPER_WPORTS,
    connect_errno,
    connect_reason,
    probe_hdlc,
    probe_wrapper,
)
from bridge.session import MeterEndpoint, MeterIOError, MeterSession
from codec.client import RegisterSpec
from codec.errors import AssociationError, LinkError, ProtocolError, ResponseTimeout
from codec.link import HdlcClientLink

__all__ = ["DiagnoseReport", "Step", "diagnose_meter"]

#: A probe of an alternative address waits at most this long.
_ALTERNATIVE_TIMEOUT_S = 2.0


@attrs.define
class Step:
    """One step of the chain and its verdict."""

    step: str
    ok: bool
    detail: str
    hint: str | None = None
    data: dict[str, Any] = attrs.Factory(dict)

    def to_json(self) -> dict[str, Any]:
        """``{"step", "ok", "detail", "hint", "data"}``."""
        return {
            "step": self.step,
            "ok": self.ok,
            "detail": self.detail,
            "hint": self.hint,
            "data": self.data,
        }


@attrs.define
class DiagnoseReport:
    """Every step run, in order."""

    target: str
    steps: list[Step] = attrs.Factory(list)

    @property
    def failed(self) -> Step | None:
        """The first failed step."""
        return next((s for s in self.steps if not s.ok), None)

    @property
    def ok(self) -> bool:
        """True when every step passed."""
        return self.failed is None

    def to_json(self) -> dict[str, Any]:
        """The documented ``--json`` report."""
        failed = self.failed
        return {
            "target": self.target,
            "ok": self.ok,
            "failed_step": failed.step if failed else None,
            "verdict": failed.detail if failed else "every step passed",
            "hint": failed.hint if failed else None,
            "steps": [s.to_json() for s in self.steps],
        }


# -- the meter ---------------------------------------------------------------------------------


def _link_answered(session: MeterSession) -> bool:
    """Whether the meter sent any valid frame on this link (a UA, on the way to the AARQ)."""
    association = session.association
    return association is not None and association.link.stats().get("frames", 0) > 0


async def _resolve(host: str, port: int, timeout: float) -> Step:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return Step("dns", True, f"{host} is an address: nothing to resolve")
    try:
        with trio.fail_after(timeout):
            infos = await trio.socket.getaddrinfo(host, port, type=_stdsocket.SOCK_STREAM)
    except trio.TooSlowError:
        return Step(
            "dns",
            False,
            f"no answer from the name server for {host!r} within {timeout:g} s",
            hint="check the box's DNS servers (/etc/resolv.conf) or use the meter's IP address",
        )
    except OSError as exc:
        return Step(
            "dns",
            False,
            f"cannot resolve {host!r}: {exc.strerror or exc}",
            hint="check the host name in the config, or use the meter's IP address",
        )
    addresses = sorted({str(info[4][0]) for info in infos})
    return Step("dns", True, f"{host} is {', '.join(addresses)}", data={"addresses": addresses})


async def _connect(endpoint: MeterEndpoint) -> tuple[Step, trio.SocketStream | None]:
    label = endpoint.label
    timeout = endpoint.connect_timeout
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
    except trio.TooSlowError:
        return Step(
            "tcp",
            False,
            f"connect to {label} timed out after {timeout:g} s",
            hint="nothing answers at that address: check the address, the route and any "
            "firewall between the box and the meter or its modem",
        ), None
    except OSError as exc:
        code = connect_errno(exc)
        reason = connect_reason(exc)
        if code == errno.ECONNREFUSED:
            return Step(
                "tcp",
                False,
                f"connect to {label} refused ({reason})",
                hint=f"the host is up but nothing listens on port {endpoint.port}: check the "
                "port (4059 is the usual wrapper port) and that the meter's TCP server is on",
                data={"errno": "ECONNREFUSED"},
            ), None
        if code in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN):
            return Step(
                "tcp",
                False,
                f"no route to {label} ({reason})",
                hint="check the box's network (address, gateway, VPN) and the meter's address",
                data={"errno": errno.errorcode.get(code or 0, str(code))},
            ), None
        if code == errno.ECONNRESET:
            return Step(
                "tcp",
                False,
                f"connect to {label} reset ({reason})",
                hint="the peer reset the connection: another client may hold the meter's only "
                "connection, or a firewall rejects it",
                data={"errno": "ECONNRESET"},
            ), None
        return Step("tcp", False, f"cannot connect to {label}: {reason}"), None
    return Step("tcp", True, f"connected to {label}"), stream


def _link_data(session: MeterSession) -> dict[str, Any]:
    association = session.association
    link = association.link if association is not None else None
    if isinstance(link, HdlcClientLink):
        n = link.negotiated
        return {
            "max_info_tx": n.max_info_tx,
            "max_info_rx": n.max_info_rx,
            "window_tx": n.window_tx,
            "window_rx": n.window_rx,
        }
    return {}


_ASSOCIATION_HINTS = {
    "association.authentication_failure": (
        "wrong password: the meter refused the LLS password; check the meter's password "
        "(and that the client SAP is the one the password belongs to)"
    ),
    "association.authentication_required": (
        "the meter wants a password for this client SAP: set the meter's password"
    ),
    "association.mechanism_not_supported": (
        "the meter does not accept this authentication level for this client SAP: try the "
        "client SAP the meter's documentation gives for low-level security"
    ),
    "association.context_not_supported": (
        "the meter refuses logical-name referencing or ciphering: check its security setup"
    ),
    "association.initiate_error": (
        "the meter refused the proposed DLMS parameters (version, conformance, PDU size)"
    ),
    "association.wrong_authentication_key": (
        "wrong authentication key: check authentication_key against the meter's security setup"
    ),
    "association.wrong_block_cipher_key": (
        "wrong block cipher key: check block_cipher_key (the global unicast encryption key)"
    ),
    "association.wrong_secret": (
        "wrong HLS secret: check the password against the meter's HLS secret"
    ),
    "association.wrong_system_title": (
        "wrong system title: check system_title (ours) and meter_system_title (the meter's)"
    ),
    "association.policy_mismatch": (
        "the meter protects its APDUs otherwise: set security_policy to the meter's policy"
    ),
    "association.counter_rejected": (
        'the meter refused our invocation counter: set frame_counter (e.g. "0-0:43.1.0") so '
        "that it is read first, or raise the counter in the data directory's counters/ file"
    ),
    "association.deciphering_error": (
        "the meter could not decipher our request: check the keys and system_title"
    ),
    "association.hls_failed": "the HLS authentication did not complete: check the mechanism",
    "association.security": (
        "a security check of the meter's reply failed; if its invocation counter went back "
        "because the meter was reset or replaced, remove its .peer file in the data "
        "directory's counters/"
    ),
}


async def _alternatives(endpoint: MeterEndpoint) -> tuple[list[str], dict[str, Any] | None]:
    """Ask the usual server addresses (with our client SAP, then as the public client, which
    every meter must answer); returns what was tried and the first that answered."""
    timeout = min(endpoint.timeout, _ALTERNATIVE_TIMEOUT_S)
    tried: list[str] = []
    if endpoint.transport == "hdlc":
        configured = (endpoint.server_logical, endpoint.server_physical)
        rounds = [(endpoint.client_sap, [a for a in HDLC_ADDRESSES if a != configured])]
        if endpoint.client_sap != PUBLIC_CLIENT_SAP:
            rounds.append((PUBLIC_CLIENT_SAP, [configured, *rounds[0][1]]))
        for client_sap, candidates in rounds:
            result = await probe_hdlc(
                endpoint.host,
                endpoint.port,
                timeout=timeout,
                client_sap=client_sap,
                addresses=candidates,
            )
            tried += [f"client SAP {client_sap}, {a.address()}: {a.reply}" for a in result.answers]
            found = result.opened or (result.answers[0] if result.answers else None)
            if found is not None:
                return tried, {
                    "server_logical": found.logical,
                    "server_physical": found.physical,
                    "client_sap": client_sap,
                    "reply": found.reply,
                }
            tried.append(
                f"client SAP {client_sap}: none of {len(candidates)} usual addresses answered"
            )
        return tried, None
    configured_wport = endpoint.server_logical or 1
    wports = [configured_wport, *(w for w in WRAPPER_WPORTS if w != configured_wport)]
    # As the public client: every meter answers it, whatever its passwords.
    result = await probe_wrapper(endpoint.host, endpoint.port, timeout=timeout, wports=wports)
    tried += [f"client wPort 16, {a.address()}: AARE {a.reply}" for a in result.answers]
    if not result.answers:
        return [f"none of the wPorts {', '.join(map(str, wports))} answered"], None
    found = result.answers[0]
    return tried, {
        "server_logical": found.logical,
        "client_sap": PUBLIC_CLIENT_SAP,
        "reply": found.reply,
    }


async def _other_transport(endpoint: MeterEndpoint) -> dict[str, Any] | None:
    """Whether the meter answers the other transport (a wrapper meter configured as HDLC...)."""
    timeout = min(endpoint.timeout, _ALTERNATIVE_TIMEOUT_S)
    if endpoint.transport == "hdlc":
        result = await probe_wrapper(endpoint.host, endpoint.port, timeout=timeout)
    else:
        result = await probe_hdlc(endpoint.host, endpoint.port, timeout=timeout)
    if not result.answers:
        return None
    answer = result.opened or result.answers[0]
    return {
        "transport": result.transport,
        "answer": f"{answer.reply} from {answer.address()}",
        "server_logical": answer.logical,
        "server_physical": answer.physical,
    }


async def _silent_link(endpoint: MeterEndpoint, what: str, step: str) -> Step:
    tried, found = await _alternatives(endpoint)
    hdlc = endpoint.transport == "hdlc"
    address = (
        f"logical {endpoint.server_logical}, physical {endpoint.server_physical}"
        if hdlc
        else f"wPort {endpoint.server_logical or 1}"
    )
    detail = f"{what} at server address {address} from client SAP {endpoint.client_sap}"
    data: dict[str, Any] = {"tried": tried}
    if found is None:
        other = await _other_transport(endpoint)
        if other is not None:
            data["other_transport"] = other
            hint = (
                f"this port speaks the {other['transport']} transport, not "
                f'{endpoint.transport}: set transport = "{other["transport"]}" '
                f"({other['answer']})"
            )
            return Step(step, False, detail, hint=hint, data=data)
        hint = (
            "no usual server address answered either: check that this is a DLMS meter speaking "
            f"{endpoint.transport.upper()} on this port (try 'dlms-bridge scan'), the byte "
            "stuffing setting, and that no other client holds it"
        )
        return Step(step, False, detail, hint=hint, data=data)
    data["answered"] = found
    same_address = found["server_logical"] == (endpoint.server_logical or (0 if hdlc else 1)) and (
        not hdlc or found["server_physical"] == endpoint.server_physical
    )
    if same_address and found["client_sap"] != endpoint.client_sap:
        hint = (
            f"wrong client SAP: the meter answers the public client (SAP {found['client_sap']}) "
            f"at this address but not client SAP {endpoint.client_sap}; check client_sap"
        )
    else:
        where = (
            f"server_logical = {found['server_logical']}, "
            f"server_physical = {found['server_physical']}"
            if hdlc
            else f"server_logical = {found['server_logical']} (the wPort)"
        )
        hint = f"wrong server address: the meter answers at {where}; set that in the config"
    return Step(step, False, detail, hint=hint, data=data)


async def _public_check(endpoint: MeterEndpoint) -> str:
    """Whether the public client associates (tells a bad password from a sick meter)."""
    if (
        endpoint.client_sap == PUBLIC_CLIENT_SAP
        and endpoint.password is None
        and endpoint.security is None
    ):
        return ""
    public = attrs.evolve(
        endpoint,
        client_sap=PUBLIC_CLIENT_SAP,
        password=None,
        security=None,
        frame_counter=None,
        timeout=min(endpoint.timeout, _ALTERNATIVE_TIMEOUT_S),
        retries=0,
    )
    session = MeterSession(public)
    try:
        with trio.fail_after(4 * public.timeout + public.connect_timeout):
            await session.open()
    except (ProtocolError, MeterIOError, trio.TooSlowError) as exc:
        return f"the public client (SAP 16) is refused too ({exc})"
    finally:
        await session.release()
    return "the public client (SAP 16, no password) associates: the meter itself is fine"


async def diagnose_meter(
    endpoint: MeterEndpoint,
    registers: Sequence[RegisterSpec],
    *,
    idle_s: float | None = None,
) -> list[Step]:
    """Run the meter side of the chain; the steps up to and including the first failure."""
    steps = [await _resolve(endpoint.host, endpoint.port, endpoint.connect_timeout)]
    if not steps[-1].ok:
        return steps
    step, stream = await _connect(endpoint)
    steps.append(step)
    if stream is None:
        return steps
    session = MeterSession(endpoint)
    session.stream = stream
    hdlc = endpoint.transport == "hdlc"
    try:
        # One overall deadline: the link and the association each get their retries.
        budget = 2 * (endpoint.retries + 1) * endpoint.timeout + 1
        with trio.fail_after(budget):
            negotiated = await session.associate()
    except (ResponseTimeout, trio.TooSlowError):
        await session.aclose()
        if hdlc and not _link_answered(session):
            steps.append(await _silent_link(endpoint, "no answer to SNRM", "link"))
            return steps
        steps.append(_link_ok(session))
        if not hdlc:
            steps.append(await _silent_link(endpoint, "no answer to the AARQ", "association"))
            return steps
        steps.append(
            Step(
                "association",
                False,
                "the link is up but the meter does not answer the AARQ",
                hint="check the client SAP and the maximum PDU size; some meters ignore an "
                "AARQ from a client SAP they do not know",
            )
        )
        return steps
    except LinkError as exc:
        await session.aclose()
        if exc.code == "link.refused":
            steps.append(await _silent_link(endpoint, "the meter refused the link (DM)", "link"))
        else:
            steps.append(
                Step(
                    "link",
                    False,
                    f"{exc} [{exc.code}]",
                    hint="the meter rejected our frames: try a smaller --max-info, byte "
                    "stuffing on or off, or the meter's documented HDLC settings",
                )
            )
        return steps
    except AssociationError as exc:
        await session.aclose()
        steps.append(_link_ok(session))
        hint = _ASSOCIATION_HINTS.get(exc.code, "the meter refused the association")
        public = await _public_check(endpoint)
        steps.append(
            Step(
                "association",
                False,
                f"{exc} [{exc.code}]",
                hint=f"{hint}. {public}" if public else hint,
                data={"code": exc.code},
            )
        )
        return steps
    except (MeterIOError, ProtocolError) as exc:
        await session.aclose()
        detail = f"{exc} [{exc.code}]" if isinstance(exc, ProtocolError) else str(exc)
        hint = (
            "the meter (or its modem) closed the connection: it may allow only one client at "
            "a time, or expect the other transport (HDLC or wrapper)"
            if isinstance(exc, MeterIOError)
            else "the meter sent something we cannot use: capture it with 'dlms-bridge "
            "capture' and decode it with 'dlms-bridge decode --pcap'"
        )
        if hdlc and not _link_answered(session):
            steps.append(Step("link", False, detail, hint=hint))
        else:
            steps.append(_link_ok(session))
            steps.append(Step("association", False, detail, hint=hint))
        return steps
    steps.append(_link_ok(session))
    steps.append(
        Step(
            "association",
            True,
            f"accepted: DLMS {negotiated.dlms_version}, server max PDU "
            f"{negotiated.server_max_pdu_size}",
            data={
                "conformance": negotiated.conformance.names(),
                "server_max_pdu_size": negotiated.server_max_pdu_size,
                "dlms_version": negotiated.dlms_version,
                "client_sap": endpoint.client_sap,
            },
        )
    )
    try:
        await _registers(session, registers, steps)
        if idle_s is not None and all(s.ok for s in steps):
            steps.append(await _idle(session, registers, idle_s))
    finally:
        await session.release()
    return steps


def _link_ok(session: MeterSession) -> Step:
    ep = session.endpoint
    if ep.transport == "wrapper":
        return Step(
            "link",
            True,
            f"wrapper: client wPort {ep.client_sap} -> server wPort "
            f"{ep.server_logical or 1} (no link set-up)",
        )
    data = _link_data(session)
    return Step(
        "link",
        True,
        f"UA from logical {ep.server_logical}, physical {ep.server_physical}: max info "
        f"{data.get('max_info_tx')}/{data.get('max_info_rx')}, window "
        f"{data.get('window_tx')}/{data.get('window_rx')}",
        data=data,
    )


async def _registers(
    session: MeterSession, registers: Sequence[RegisterSpec], steps: list[Step]
) -> None:
    if not registers:
        return
    timeout = session.endpoint.timeout * (session.endpoint.retries + 1) * 2 * len(registers) + 1
    try:
        with trio.fail_after(timeout):
            readings = await session.read_registers(registers)
    except (ProtocolError, MeterIOError, trio.TooSlowError) as exc:
        steps.append(
            Step(
                "registers",
                False,
                f"the read failed: {exc}",
                hint="the association broke while reading: see the link and PDU settings",
            )
        )
        return
    for spec, reading in zip(registers, readings, strict=True):
        name = f"register {spec.obis}" + (f" ({spec.key})" if spec.key else "")
        doc = reading.to_json()
        if reading.error is not None:
            steps.append(
                Step(
                    name,
                    False,
                    f"{reading.error}",
                    hint=f"the meter has no object {spec.obis} (class {spec.class_id}, "
                    f"attribute {spec.attribute}) for this client, or refuses it: remove it "
                    "from the config or fix its OBIS code ('dlms-bridge read --list-objects')",
                    data=doc,
                )
            )
        else:
            unit = f" {doc['unit']}" if doc.get("unit") else ""
            steps.append(Step(name, True, f"{doc['value']}{unit}", data=doc))


async def _idle(session: MeterSession, registers: Sequence[RegisterSpec], idle_s: float) -> Step:
    await trio.sleep(idle_s)
    probe = list(registers[:1]) or []
    try:
        with trio.fail_after(session.endpoint.timeout * (session.endpoint.retries + 1) * 2 + 1):
            if probe:
                await session.read_registers(probe)
            else:
                from bridge.poller import CLOCK_TIME

                await session.get(CLOCK_TIME)
    except (ProtocolError, MeterIOError, trio.TooSlowError) as exc:
        return Step(
            "idle",
            False,
            f"after {idle_s:g} s idle the association is gone ({exc})",
            hint=f"the meter drops an idle association within {idle_s:g} s: set the meter's "
            f"inactivity_timeout_s below {idle_s:g} so that the bridge keeps it alive",
            data={"idle_s": idle_s},
        )
    return Step(
        "idle", True, f"the association survived {idle_s:g} s idle", data={"idle_s": idle_s}
    )
