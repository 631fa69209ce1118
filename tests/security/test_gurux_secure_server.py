"""Interoperability: our client against gurux_dlms's secure server, an independent meter that
requires HLS and (when asked) suite 0 ciphering, over TCP with the wrapper. The bugs of that
peer worked around on the test side are listed in tests/security/gurux_secure_meter.py.

gurux_dlms is GPL and is used here only as a test peer.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import attrs
import pytest
import trio

from bridge.session import MeterEndpoint, MeterSession
from codec.acse import AuthenticationMechanism as M
from codec.apdu import (
    AttributeDescriptor,
    GetRequestWithList,
    GetResponseWithList,
    InvokeId,
    MethodDescriptor,
)
from codec.association import SecuritySettings
from codec.axdr import Data, DataType
from codec.client import RegisterSpec
from codec.errors import AssociationError, DecodeError, ResponseTimeout
from codec.obis import Obis
from codec.security import MemoryCounter, SecurityKeys
from codec.security import SecurityPolicy as P
from tests.bridge.test_cli_read_decode import cli
from tests.security.gurux_secure_meter import (
    AK,
    BIG,
    BIG_VALUE,
    CURRENT,
    EK,
    FREQUENCY,
    MESSAGE,
    METER_TITLE,
    PASSWORD,
    POLICIES,
    PROFILE,
    PROFILE_ROWS,
    PROFILE_START,
    SECRET,
    VOLTAGE,
    SecurePeer,
    gurux_secure_meter,
)

pytestmark = pytest.mark.interop
TIMEOUT = 30
CLIENT_TITLE = b"DLMSBRDG"
VOLTS = AttributeDescriptor(3, Obis.parse(VOLTAGE), 2)


def security(mechanism: M, policy: P | None, **changes: object) -> SecuritySettings:
    settings = SecuritySettings(
        mechanism=mechanism,
        policy=policy,
        system_title=CLIENT_TITLE,
        keys=SecurityKeys(EK, AK),
        secret=SECRET,
        counter=MemoryCounter(100),
    )
    return attrs.evolve(settings, **changes)  # type: ignore[misc]


def endpoint(port: int, sec: SecuritySettings, timeout: float = 2.0) -> MeterEndpoint:
    return MeterEndpoint(
        "127.0.0.1",
        port,
        transport="wrapper",
        client_sap=1,
        server_logical=1,
        password=PASSWORD,
        security=sec,
        max_pdu_size=256,  # the big octet string then needs block transfer
        timeout=timeout,
    )


CASES = [
    (M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED),
    (M.HIGH_GMAC, P.AUTHENTICATED),
    (M.HIGH_GMAC, P.ENCRYPTED),
    (M.HIGH_GMAC, None),
    (M.HIGH_MD5, None),
    (M.HIGH_MD5, P.AUTHENTICATED_ENCRYPTED),
    (M.HIGH_SHA1, None),
    (M.HIGH_SHA1, P.AUTHENTICATED_ENCRYPTED),
    (M.HIGH_SHA256, None),
    (M.HIGH_SHA256, P.AUTHENTICATED_ENCRYPTED),
    (M.LOW, P.AUTHENTICATED_ENCRYPTED),
]


@pytest.mark.parametrize(
    ("mechanism", "policy"), CASES, ids=lambda v: getattr(v, "label", getattr(v, "name", v))
)
async def test_our_client_reads_writes_and_acts_on_gurux_secure_meter(
    monkeypatch: pytest.MonkeyPatch, mechanism: M, policy: P | None
) -> None:
    # Without ciphering gurux names no system title in its AARE for HLS-SHA256, which needs
    # it: the installer configures it (as --meter-system-title).
    configured = (mechanism, policy) == (M.HIGH_SHA256, None)
    sec = security(mechanism, policy, server_system_title=METER_TITLE if configured else None)
    with gurux_secure_meter(monkeypatch, mechanism, policy) as (port, peer):
        with trio.fail_after(TIMEOUT):
            session = MeterSession(endpoint(port, sec))
            negotiated = await session.open()
            # GET normal
            (volts,) = await session.read_registers([RegisterSpec(Obis.parse(VOLTAGE))])
            # GET-with-list
            assert negotiated.multiple_references
            listed = await session.request(
                GetRequestWithList(
                    InvokeId(),
                    tuple(
                        (AttributeDescriptor(3, Obis.parse(obis), 2), None)
                        for obis in (VOLTAGE, CURRENT, FREQUENCY)
                    ),
                )
            )
            # GET with blocks
            big = await session.get(AttributeDescriptor(1, Obis.parse(BIG), 2))
            blocks = session.stats()["blocks_received"]
            # SET
            message = AttributeDescriptor(1, Obis.parse(MESSAGE), 2)
            await session.run(session._client().set(message, Data.octet_string(b"secured")))
            written = await session.get(message)
            # ACTION: register reset (method 1)
            reset = MethodDescriptor(3, Obis.parse(VOLTAGE), 1)
            await session.run(session._client().action(reset, Data.integer(0)))
            after = await session.get(VOLTS)
            await session.release()
            await session.aclose()
    assert volts.value == pytest.approx(230.12) and volts.unit is not None
    assert isinstance(listed, GetResponseWithList)
    assert [r.value for r in listed.results if isinstance(r, Data)] == [23012, 512, 4999]
    assert big.value == BIG_VALUE
    assert blocks >= len(BIG_VALUE) // 256
    assert written.value == b"secured"
    assert after.type == DataType.NULL_DATA
    association = session.association
    assert association is not None
    (meter,) = peer.meters
    (released,) = meter.released
    if policy is None:
        assert association.client_counter is None or mechanism == M.HIGH_GMAC
        assert released.user_information_tag is None  # a plain RLRQ, as before
    else:
        assert association.server_system_title == METER_TITLE
        # gurux's own parser deciphered the InitiateRequest of our RLRQ with the policy used.
        assert released.error is None
        assert released.user_information_tag == 0x21  # glo-initiate-request
        assert released.security == POLICIES[policy]
        # Every ciphered response came with a counter above the last (checked), up to the
        # RLRE's, which is the last the meter used.
        assert association.server_counter == meter.invocation_counter - 1


@pytest.mark.parametrize(
    ("changes", "tags"),
    [
        ({"dedicated_key": True}, {0xCB, 0xD0}),  # HLS action glo-, then ded-get
        ({"general_ciphering": True}, {0xDB}),
        ({"dedicated_key": True, "general_ciphering": True}, {0xDB, 0xDC}),
    ],
    ids=["ded", "general-glo", "general-ded"],
)
async def test_dedicated_key_and_general_ciphering(
    monkeypatch: pytest.MonkeyPatch, changes: dict[str, object], tags: set[int]
) -> None:
    mechanism, policy = GMAC_AE
    sec = attrs.evolve(security(mechanism, policy), **changes)  # type: ignore[misc]
    with gurux_secure_meter(monkeypatch, mechanism, policy) as (port, peer):
        with trio.fail_after(TIMEOUT):
            session = MeterSession(endpoint(port, sec))
            await session.open()
            (volts,) = await session.read_registers([RegisterSpec(Obis.parse(VOLTAGE))])
            big = await session.get(AttributeDescriptor(1, Obis.parse(BIG), 2))
            await session.release()
            await session.aclose()
    assert volts.value == pytest.approx(230.12)
    assert big.value == BIG_VALUE
    (meter,) = peer.meters
    # AARQ, the ciphered requests, RLRQ.
    assert meter.request_tags[0] == 0x60 and meter.request_tags[-1] == 0x62
    assert set(meter.request_tags[1:-1]) == tags
    assert meter.released[0].user_information_tag == 0x21


GMAC_AE = (M.HIGH_GMAC, P.AUTHENTICATED_ENCRYPTED)


async def test_profile_read_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    mechanism, policy = GMAC_AE
    with gurux_secure_meter(monkeypatch, mechanism, policy) as (port, _):
        with trio.fail_after(TIMEOUT):
            session = MeterSession(endpoint(port, security(mechanism, policy)))
            await session.open()
            profile = await session.read_profile(Obis.parse(PROFILE))
            blocks = session.stats()["blocks_received"]
            await session.release()
            await session.aclose()
    assert len(profile.rows) == PROFILE_ROWS
    assert profile.rows[0] == (PROFILE_START, pytest.approx(230.00))
    assert profile.rows[-1] == (
        PROFILE_START + dt.timedelta(minutes=15 * (PROFILE_ROWS - 1)),
        pytest.approx(230.00 + (PROFILE_ROWS - 1) / 100),
    )
    assert blocks >= 2


_RANGE_BUG = (
    "gurux_dlms 1.0.203 GXDLMSProfileGeneric.__getProfileGenericData filters a range with"
    " `tm >= start >= 0` (a datetime against an int: TypeError); the server then answers only"
    " a reply to another request"
)
_ENTRIES_BUG = (
    "gurux_dlms 1.0.203 GXDLMSProfileGeneric.getSelectedColumns returns all the columns wrapped"
    " in one more list: every row is a structure that claims 1 element and holds none"
)
_HOUR = dt.timedelta(hours=1)


@pytest.mark.parametrize(
    ("selection", "rows", "error", "bug"),
    [
        (
            {"start": PROFILE_START + _HOUR, "end": PROFILE_START + 2 * _HOUR},
            5,
            ResponseTimeout,
            _RANGE_BUG,
        ),
        ({"from_entry": 3, "to_entry": 5}, 3, DecodeError, _ENTRIES_BUG),
    ],
    ids=["range-gurux-compares-a-datetime-with-0", "entries-gurux-wraps-the-columns-in-a-list"],
)
async def test_profile_read_with_selective_access(
    monkeypatch: pytest.MonkeyPatch,
    selection: dict[str, object],
    rows: int,
    error: type[Exception],
    bug: str,
) -> None:
    """Expected to fail by the peer's bug named (only in that precise way: the client gives up
    cleanly within its deadline); passes as soon as the peer answers."""
    mechanism, policy = GMAC_AE
    with gurux_secure_meter(monkeypatch, mechanism, policy) as (port, _):
        with trio.fail_after(TIMEOUT):
            session = MeterSession(endpoint(port, security(mechanism, policy), timeout=1.0))
            await session.open()
            try:
                profile = await session.read_profile(Obis.parse(PROFILE), **selection)
            except error:
                pytest.xfail(bug)
            finally:
                await session.aclose()
    assert len(profile.rows) == rows


#: What the peer's own mechanism and policy checks answer (gurux's SourceDiagnostic).
REFUSED_BY_CHECKS = {
    "association.policy_mismatch": [2],  # application-context-name-not-supported
    "association.mechanism_not_supported": [11],  # authentication-mechanism-name-not-recognised
}


async def _refusal(
    monkeypatch: pytest.MonkeyPatch,
    mechanism: M,
    policy: P | None,
    sec: SecuritySettings,
) -> tuple[AssociationError, SecurePeer]:
    with gurux_secure_meter(monkeypatch, mechanism, policy) as (port, peer):
        with trio.fail_after(TIMEOUT):
            session = MeterSession(endpoint(port, sec))
            with pytest.raises(AssociationError) as info:
                await session.open()
            await session.aclose()
    return info.value, peer


@pytest.mark.parametrize(
    ("meter", "client", "code", "words"),
    [
        # gurux does not check the tag of the AARQ's InitiateRequest: it answers, and its
        # AARE fails our GCM check.
        (
            GMAC_AE,
            {"keys": SecurityKeys(EK, bytes(16))},
            "association.wrong_authentication_key",
            "wrong authentication key",
        ),
        (
            GMAC_AE,
            {"keys": SecurityKeys(bytes(16), AK)},
            "association.authentication_failure",
            "could not decipher it",
        ),
        (
            (M.HIGH_GMAC, P.ENCRYPTED),
            {"keys": SecurityKeys(EK, bytes(16))},
            "association.wrong_authentication_key",
            "f(CtoS) does not verify",
        ),
        (
            (M.HIGH_SHA256, None),
            {"secret": b"not the secret", "server_system_title": METER_TITLE},
            "association.wrong_secret",
            "wrong HLS secret",
        ),
        (
            (M.HIGH_SHA256, None),
            {},
            "association.wrong_system_title",
            "needs the meter's system title",
        ),
        (
            GMAC_AE,
            {"policy": P.AUTHENTICATED},
            "association.policy_mismatch",
            "policy mismatch",
        ),
        (
            GMAC_AE,
            {"mechanism": M.HIGH_SHA1},
            "association.mechanism_not_supported",
            "does not support HIGH_SHA1",
        ),
        (
            GMAC_AE,
            {"server_system_title": b"OTHERMTR"},
            "association.wrong_system_title",
            METER_TITLE.hex().upper(),
        ),
    ],
    ids=[
        "wrong-ak",
        "wrong-ek",
        "wrong-ak-encrypted-only",
        "wrong-secret",
        "sha256-no-title",
        "policy",
        "mechanism",
        "meter-title",
    ],
)
async def test_refusals_are_named(
    monkeypatch: pytest.MonkeyPatch,
    meter: tuple[M, P | None],
    client: dict[str, object],
    code: str,
    words: str,
) -> None:
    sec = attrs.evolve(security(*meter), **client)  # type: ignore[misc]
    error, peer = await _refusal(monkeypatch, *meter, sec)
    assert error.code == code
    # The peer refused in its own checks only where it says so in its AARE.
    (gurux,) = peer.meters
    assert gurux.refused == REFUSED_BY_CHECKS.get(code, [])
    assert words in str(error)
    assert AK.hex() not in str(error).lower() and EK.hex() not in str(error).lower()


def _read_args(port: int, counter_dir: Path) -> list[str]:
    return [
        "--host", "127.0.0.1", "--port", str(port), "--transport", "wrapper",
        "--client-sap", "1", "--server-logical", "1", "--counter-dir", str(counter_dir),
        "--security", "hls-gmac", "--system-title", CLIENT_TITLE.hex(),
        "--block-cipher-key", EK.hex(),
    ]  # fmt: skip


async def test_read_cli_against_gurux_secure_meter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``read --security hls-gmac`` twice (the counters kept on disk on both sides go on),
    ciphered requests in the trace, then a wrong key: exit 4 and one line naming it."""
    mechanism, policy = GMAC_AE
    with gurux_secure_meter(monkeypatch, mechanism, policy) as (port, peer):
        args = [*_read_args(port, tmp_path), "--authentication-key", AK.hex(), "--trace"]
        runs = [await cli("read", *args, VOLTAGE, CURRENT, FREQUENCY) for _ in range(2)]
        wrong = await cli(
            "read", *_read_args(port, tmp_path), "--authentication-key", "00" * 16, VOLTAGE
        )
    for done in runs:
        assert done.returncode == 0, done.stderr.decode()
        result = json.loads(done.stdout)
        values = [r["value"] for r in result["registers"]]
        assert values == [pytest.approx(230.12), pytest.approx(5.12), pytest.approx(49.99)]
        assert result["security"]["meter_system_title"] == METER_TITLE.hex().upper()
        trace = [json.loads(line) for line in done.stderr.decode().splitlines()]
        kinds = [item["apdu"]["kind"] for item in trace if "apdu" in item]
        assert kinds[:2] == ["aarq", "aare"] and kinds[-2:] == ["rlrq", "rlre"]
        assert "glo-get-request" in kinds and "glo-get-response" in kinds
        assert not {"get-request-normal", "get-request-with-list"} & set(kinds)
        # The release, ciphered both ways, deciphered in the trace.
        rlrq, rlre = [i["apdu"] for i in trace if i.get("apdu", {}).get("kind") in ("rlrq", "rlre")]
        assert rlrq["ciphered_user_information"]["content"]["kind"] == "initiate-request"
        assert rlre["ciphered_user_information"]["kind"] == "glo-initiate-response"
        assert rlre["ciphered_user_information"]["content"]["kind"] == "initiate-response"
        text = done.stderr.decode().lower() + done.stdout.decode().lower()
        assert AK.hex() not in text and EK.hex() not in text
    assert len(peer.meters) == 3
    assert [m.released[0].user_information_tag for m in peer.meters[:2]] == [0x21, 0x21]
    assert wrong.returncode == 4, wrong.stderr.decode()
    lines = wrong.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "[association.wrong_authentication_key]" in lines[0]
    assert "wrong authentication key" in lines[0] and "Traceback" not in lines[0]
