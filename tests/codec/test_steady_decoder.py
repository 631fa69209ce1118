"""The steady-reply decoder (:mod:`codec.steady`) is a pure shortcut of the general path: for
any reply it gives exactly the per-key values, quality flags, labels and errors that the client
(:meth:`DlmsClient.read_registers` on the decoded APDU) gives, or None; and the Cython
extension and the pure-Python twin give the same on every input."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from codec import IMPLEMENTATION as HDLC_IMPLEMENTATION
from codec import steady
from codec.acse import Conformance
from codec.apdu import (
    DataAccessResult,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithList,
    InvokeId,
    MalformedResult,
    Request,
    XdlmsApdu,
    decode_apdu_lenient,
    encode_data,
)
from codec.association import Negotiated
from codec.axdr import Data, DataType
from codec.client import DlmsClient, RegisterReading, RegisterSpec
from codec.cosem import scaler_unit_attribute
from codec.errors import DecodeError, ProtocolError
from codec.hdlc import NEED_DATA, FrameScanner
from tests.codec.strategies import cosem_date_times, data_values, simple_data_values

IMPLEMENTATIONS = steady.implementations()
LIST = Negotiated(Conformance.GET | Conformance.MULTIPLE_REFERENCES, 1024, 6)

#: The simulator's steady reply to the field-meter poll, an HDLC I-frame, and its registers.
FRAME = bytes.fromhex(
    "7ea02803037497bfe6e700c403c205001230280012033600121770001742bec9ca00060039ca3217f87e"
)
APDU = bytes.fromhex("c403c205001230280012033600121770001742bec9ca00060039ca32")
FIELD_SPECS = tuple(
    RegisterSpec(ln, key=key)
    for ln, key in (
        ("1.1.32.7.0.255", "voltage"),
        ("1.1.31.7.0.255", "current"),
        ("1.1.14.7.0.255", "frequency"),
        ("1.1.1.7.0.255", "power"),
        ("1.1.1.8.0.255", "energy"),
    )
)
FIELD_SCALERS = tuple(
    Data.structure([Data.integer(s), Data.enum(u)])
    for s, u in ((-2, 35), (-3, 33), (-2, 44), (0, 27), (0, 30))
)

# -- the general path -----------------------------------------------------------------------------

Result = Data | DataAccessResult | MalformedResult


def _answer(request: Request, table: dict[Any, Result]) -> XdlmsApdu:
    if isinstance(request, GetRequestWithList):
        return GetResponseWithList(
            InvokeId(), tuple(table[attribute] for attribute, _ in request.items)
        )
    assert isinstance(request, GetRequestNormal)
    return GetResponseNormal(InvokeId(), table[request.attribute])


def first_read(
    specs: Sequence[RegisterSpec], scalers: Sequence[Result | None], first: Sequence[Result]
) -> tuple[DlmsClient, list[RegisterReading]]:
    """A client after its first read of ``specs`` (the meter answering ``scalers`` and
    ``first``), and that read's readings."""
    table: dict[Any, Result] = {}
    for spec, scaler, value in zip(specs, scalers, first, strict=True):
        attribute = scaler_unit_attribute(spec.class_id, spec.obis)
        if attribute is not None:
            assert scaler is not None
            table[attribute] = scaler
        table[spec.descriptor] = value
    client = DlmsClient(LIST, max_list_items=64)
    procedure = client.read_registers(specs)
    request = next(procedure)
    while True:
        try:
            request = procedure.send(_answer(request, table))
        except StopIteration as done:
            return client, done.value


def general(
    client: DlmsClient, specs: Sequence[RegisterSpec], apdu: bytes
) -> list[RegisterReading] | None:
    """The client's readings when the meter answers the steady request with ``apdu`` (decoded
    as the association decodes it); None when that reply alone does not give them (it does not
    decode, or the client asks again)."""
    try:
        decoded, _trailing = decode_apdu_lenient(apdu)
    except DecodeError:
        return None
    procedure = client.read_registers(specs)
    request = next(procedure)
    expected = GetRequestNormal if len(specs) == 1 else GetRequestWithList
    assert isinstance(request, expected)
    try:
        procedure.send(decoded)  # type: ignore[arg-type]
    except StopIteration as done:
        readings: list[RegisterReading] = done.value
        return readings
    except ProtocolError:
        return None
    procedure.close()  # it asked for more: not the steady shape
    return None


def strict(reading: Any) -> tuple[Any, ...]:
    """Everything of a reading, types, float signs and dict order included."""
    return (
        reading.invoke,
        [(k, type(v).__name__, repr(v)) for k, v in reading.values.items()],
        list(reading.quality.items()),
        list(reading.errors.items()),
        list(reading.labels.items()),
    )


def check(
    client: DlmsClient,
    specs: Sequence[RegisterSpec],
    readings: Sequence[RegisterReading],
    apdu: bytes,
) -> Any:
    """Each implementation's decode of ``apdu``, checked against the general path and each
    other; returns the reading (or None)."""
    got = [cls(specs, readings).decode(apdu) for cls in IMPLEMENTATIONS.values()]
    canon = [None if g is None else strict(g) for g in got]
    assert all(c == canon[0] for c in canon), (apdu.hex(), canon)
    if got[0] is not None:
        expected = general(client, specs, apdu)
        assert expected is not None, apdu.hex()
        assert strict(steady.reading_of(expected, apdu[2])) == canon[0], apdu.hex()
        check_values_json(got, len({s.name for s in specs}) == len(specs))
    return got[0]


def check_values_json(got: list[Any], distinct_keys: bool) -> None:
    """Each implementation's values_json is the values' compact JSON with sorted keys
    exactly when there is nothing but finite numbers (and no flag, no error), else None."""
    reading = got[0]
    numbers = all(
        type(v) is int or (type(v) is float and math.isfinite(v)) for v in reading.values.values()
    )
    if numbers and distinct_keys and not reading.quality and not reading.errors:
        expected = json.dumps(
            reading.values, separators=(",", ":"), sort_keys=True, ensure_ascii=False
        ).encode()
    else:
        expected = None
    assert [g.values_json for g in got] == [expected] * len(got)


# -- the reply, as bytes --------------------------------------------------------------------------

_WIDTHS = {0: 0, 3: 1, 5: 4, 6: 4, 13: 1, 15: 1, 16: 2, 17: 1, 18: 2, 20: 8, 21: 8, 22: 1}
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")


@st.composite
def fast_results(draw: st.DrawFn, context_octets: bool = False) -> bytes:
    """One Get-Data-Result of a type the steady decoder handles, as bytes."""
    kind = draw(st.sampled_from(("access", "fixed", "float32", "float64", "string")))
    if kind == "access":
        return bytes((1, int(draw(st.sampled_from(list(DataAccessResult))))))
    if kind == "fixed":
        tag = draw(st.sampled_from(sorted(_WIDTHS)))
        width = _WIDTHS[tag]
        return bytes((0, tag)) + draw(st.binary(min_size=width, max_size=width))
    if kind == "float32":
        raw = draw(
            st.binary(min_size=4, max_size=4)
            | st.floats(width=32).map(_F32.pack)
            | st.sampled_from([b"\x7f\xc0\x00\x00", b"\x7f\x80\x00\x00", b"\xff\x80\x00\x00"])
        )
        return b"\x00\x17" + raw
    if kind == "float64":
        raw = draw(st.binary(min_size=8, max_size=8) | st.floats().map(_F64.pack))
        return b"\x00\x18" + raw
    tag = draw(st.sampled_from((9, 10)))
    content = draw(
        st.binary(max_size=20)
        | st.text(max_size=12).map(lambda s: s.encode()[:100])
        | cosem_date_times().map(lambda d: d.to_bytes())
    )
    return bytes((0, tag, len(content))) + content


@st.composite
def other_results(draw: st.DrawFn) -> bytes:
    """A Get-Data-Result the steady decoder leaves to the general path (or garbage)."""
    kind = draw(st.sampled_from(("data", "long", "access", "garbage")))
    if kind == "data":
        return b"\x00" + encode_data(draw(data_values(max_leaves=3)))
    if kind == "long":
        size = draw(st.integers(0x80, 0x90))
        return bytes((0, draw(st.sampled_from((9, 10))), 0x81, size)) + b"a" * size
    if kind == "access":
        return bytes((1, draw(st.integers(0, 255))))
    return draw(st.binary(max_size=6))


def reply(invoke: int, results: Sequence[bytes]) -> bytes:
    """A GET.response of these results: normal for one, with-list for more."""
    if len(results) == 1:
        return bytes((0xC4, 1, invoke)) + results[0]
    return bytes((0xC4, 3, invoke, len(results))) + b"".join(results)


# -- the registers --------------------------------------------------------------------------------

SCALERS = st.one_of(
    st.builds(
        lambda s, u: Data.structure([Data.integer(s), Data.enum(u)]),
        st.integers(-6, 6) | st.integers(-128, 127),
        st.integers(0, 255),
    ),
    st.sampled_from(list(DataAccessResult)),
    st.just(Data.integer(5)),  # not a scaler_unit: unreadable
)
#: (class id, attribute, OBIS prefix) of the kinds of value a poll reads.
KINDS = (
    (3, 2, "1-0:1.8"),  # register: scaled
    (4, 2, "1-0:2.8"),  # extended register: scaled
    (1, 2, "0-0:96.1"),  # data: no scaler
    (1, 2, "0-0:96.2"),  # data holding a time stamp (date-time context)
    (70, 3, "0-0:96.3"),  # disconnect control state: named enum values
    (8, 2, "0-0:1.0"),  # clock time: date-time context
)


@st.composite
def registers(
    draw: st.DrawFn, max_size: int = 8
) -> tuple[list[RegisterSpec], list[Result | None], list[Result]]:
    """Registers, what the meter answers for their scalers, and their first values."""
    n = draw(st.integers(1, max_size))
    specs, scalers, first = [], [], []
    for i in range(n):
        class_id, attribute, prefix = draw(st.sampled_from(KINDS))
        key = draw(st.none() | st.sampled_from(("a", "b")))  # same keys now and then
        spec = RegisterSpec(f"{prefix}.{i}", class_id=class_id, attribute=attribute, key=key)
        specs.append(spec)
        has_scaler = scaler_unit_attribute(class_id, spec.obis) is not None
        scalers.append(draw(SCALERS) if has_scaler else None)
        first.append(draw(simple_data_values() | st.sampled_from(list(DataAccessResult))))
    return specs, scalers, first


# -- properties -----------------------------------------------------------------------------------


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(registers(), st.data(), st.integers(0, 255))
def test_steady_replies_decode_as_the_general_path(
    regs: tuple[list[RegisterSpec], list[Result | None], list[Result]],
    data: st.DataObject,
    invoke: int,
) -> None:
    specs, scalers, first = regs
    client, readings = first_read(specs, scalers, first)
    results = [data.draw(fast_results()) for _ in specs]
    got = check(client, specs, readings, reply(invoke, results))
    # Taken by the shortcut unless a register whose first read failed now has a value.
    unknown = [not r.ok and r.error_code != "register.scaler_unit" for r in readings]
    shortcut = all(not u or res[0] == 1 for u, res in zip(unknown, results, strict=True))
    assert (got is not None) == shortcut


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(registers(max_size=5), st.data(), st.integers(0, 255))
def test_other_replies_are_equal_or_left_to_the_general_path(
    regs: tuple[list[RegisterSpec], list[Result | None], list[Result]],
    data: st.DataObject,
    invoke: int,
) -> None:
    specs, scalers, first = regs
    client, readings = first_read(specs, scalers, first)
    results = [data.draw(fast_results() | other_results()) for _ in specs]
    if data.draw(st.booleans()):
        results.insert(data.draw(st.integers(0, len(results))), data.draw(other_results()))
    buf = reply(invoke, results)
    check(client, specs, readings, buf)
    cut = data.draw(st.integers(0, len(buf)))
    check(client, specs, readings, buf[:cut])
    check(client, specs, readings, buf + data.draw(st.binary(min_size=1, max_size=3)))
    patch = data.draw(st.binary(min_size=1, max_size=3))
    check(client, specs, readings, buf[:cut] + patch + buf[cut + len(patch) :])


@settings(max_examples=300)
@given(
    st.binary(min_size=4, max_size=4) | st.floats(width=32).map(_F32.pack),
    st.integers(-30, 30) | st.integers(-128, 127),
    st.binary(min_size=8, max_size=8) | st.floats().map(_F64.pack),
)
def test_floats_scaled_as_the_general_path(f32: bytes, scaler: int, f64: bytes) -> None:
    specs = [RegisterSpec("1-0:1.7.0"), RegisterSpec("1-0:2.7.0")]
    sc = Data.structure([Data.integer(scaler), Data.enum(27)])
    client, readings = first_read(specs, [sc, sc], [Data.float32(1.0), Data.float64(1.0)])
    got = check(client, specs, readings, reply(0xC1, [b"\x00\x17" + f32, b"\x00\x18" + f64]))
    assert got is not None


_EDGE_INTEGERS = [0, 1, -1, 2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63), 10**18 + 1]


@settings(max_examples=300)
@given(
    st.sampled_from(_EDGE_INTEGERS) | st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**64 - 1),
    st.sampled_from([-23, -22, -21, -1, 0, 1, 22, 23, -128, 127]) | st.integers(-128, 127),
)
@example(2**53 + 1, 2**64 - 1, -1)
def test_integers_scaled_as_the_general_path(signed: int, unsigned: int, scaler: int) -> None:
    specs = [RegisterSpec("1-0:1.8.0"), RegisterSpec("1-0:2.8.0")]
    sc = Data.structure([Data.integer(scaler), Data.enum(30)])
    client, readings = first_read(specs, [sc, sc], [Data.long64(0), Data.long64_unsigned(0)])
    buf = reply(0xC1, [b"\x00\x14" + signed.to_bytes(8, "big", signed=True),
                       b"\x00\x15" + unsigned.to_bytes(8, "big")])  # fmt: skip
    got = check(client, specs, readings, buf)
    assert got is not None
    value = got.values["1-0:1.8.0"]
    assert type(value) is (float if scaler < 0 else int)


@given(st.binary(max_size=40), st.integers(0, 40), st.binary(max_size=3))
def test_garbage_is_equal_or_left_to_the_general_path(noise: bytes, cut: int, patch: bytes) -> None:
    client, readings = field_client()
    for buf in (
        noise,
        APDU[:cut] + patch + APDU[cut + len(patch) :],
        b"\xc4\x03\xc2\x05" + noise,
        APDU[:cut],
    ):
        check(client, FIELD_SPECS, readings, buf)


# -- the API ---------------------------------------------------------------------------------------


def field_client() -> tuple[DlmsClient, list[RegisterReading]]:
    first, _ = decode_apdu_lenient(APDU)
    assert isinstance(first, GetResponseWithList)
    return first_read(FIELD_SPECS, FIELD_SCALERS, first.results)


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def decoder_class(request: pytest.FixtureRequest) -> Any:
    """The :class:`SteadyDecoder` of each built implementation."""
    return IMPLEMENTATIONS[request.param]


def test_the_field_meter_reply_from_its_frame(decoder_class: Any) -> None:
    _, readings = field_client()
    decoder = decoder_class(FIELD_SPECS, readings)
    assert decoder.keys == ("voltage", "current", "frequency", "power", "energy")
    assert decoder.units == {
        "voltage": "V", "current": "A", "frequency": "Hz", "power": "W", "energy": "Wh"
    }  # fmt: skip
    assert decoder.specs == FIELD_SPECS
    scanner = FrameScanner()
    scanner.receive_data(FRAME)
    frame = scanner.next_frame()
    assert frame is not NEED_DATA
    reading = decoder.decode_info(frame.info, 2)
    assert reading is not None
    assert reading.invoke == 0xC2
    assert reading.values == {
        "voltage": 123.28, "current": 0.822, "frequency": 60.0, "power": 95.39412,
        "energy": 3787314,
    }  # fmt: skip
    assert [type(v) for v in reading.values.values()] == [float, float, float, float, int]
    assert reading.quality == reading.errors == reading.labels == {}
    # The same from the APDU, from an offset, from a bytearray or a memoryview.
    assert decoder.decode(APDU) == reading
    assert decoder.decode(b"xyz" + APDU, 3) == reading
    assert decoder.decode(bytearray(APDU)) == reading
    assert decoder.decode_info(memoryview(b"\xe6\xe6\x00" + APDU)) == reading
    assert decoder.decode_info(APDU) == reading  # no LLC header: the field is the APDU
    # Another invoke-id is someone else's reply.
    assert decoder.decode_info(frame.info, 3) is None
    assert decoder.decode(APDU, -1) is None
    assert decoder.decode(APDU, len(APDU)) is None


def test_flags_labels_and_errors(decoder_class: Any) -> None:
    specs = [
        RegisterSpec("1-0:1.7.0", key="power"),
        RegisterSpec("1-0:2.7.0", key="broken_scaler"),
        RegisterSpec("0-0:96.3.10", class_id=70, attribute=3, key="relay"),
        RegisterSpec("0-0:96.1.0", class_id=1, key="bcd"),
        RegisterSpec("0-0:96.1.1", class_id=1, key="missing"),
        RegisterSpec("0-0:96.2.1", class_id=1, key="changed"),
        RegisterSpec("0-0:96.1.2", class_id=1, key="name"),
    ]
    scalers = [
        Data.structure([Data.integer(-1), Data.enum(27)]),
        DataAccessResult.OBJECT_UNDEFINED,
        None,
        None,
        None,
        None,
        None,
    ]
    first = [Data.float32(1.0), Data.long_unsigned(1), Data.enum(1), Data(DataType.BCD, 0x12),
             DataAccessResult.OBJECT_UNAVAILABLE, Data.octet_string(b""),
             Data.octet_string(b"x")]  # fmt: skip
    client, readings = first_read(specs, scalers, first)
    decoder = decoder_class(specs, readings)
    buf = reply(
        0xC1,
        [
            b"\x00\x17\xff\x80\x00\x00",  # -inf
            b"\x00\x12\x00\x07",
            b"\x00\x16\x02",
            b"\x00\x0d\x1a",  # a nibble above 9
            b"\x01\x04",
            b"\x00\x09\x0c" + bytes.fromhex("07e80301ff0c0000ff800001"),
            b"\x00\x09\x05ABC\x00\x00",
        ],
    )
    reading = decoder.decode(buf)
    assert reading is not None
    assert reading.values == {
        "power": None, "relay": 2, "bcd": None, "changed": "2024-03-01T12:00:00",
        "name": "ABC",
    }  # fmt: skip
    assert reading.quality == {"power": "-inf", "bcd": "invalid-bcd", "changed": "clock-invalid"}
    assert reading.labels == {"relay": "ready-for-reconnection", "changed": "invalid"}
    assert reading.errors == {
        "broken_scaler": ("register.scaler_unit", "scaler_unit unreadable: object-undefined"),
        "missing": ("data-access.object-undefined", "object-undefined"),
    }
    assert strict(reading) == strict(steady.reading_of(general(client, specs, buf) or [], 0xC1))
    # The register whose first read failed: its scaler is unknown here, a value is not decoded;
    # a decoder built from a later general read of the same association knows it.
    back = buf.replace(b"\x01\x04", b"\x00\x00")
    assert decoder.decode(back) is None
    later = general(client, specs, back)
    assert later is not None
    rebuilt = decoder_class(specs, later).decode(back)
    assert rebuilt is not None
    assert rebuilt.values["missing"] is None
    assert "missing" not in rebuilt.errors
    assert strict(rebuilt) == strict(steady.reading_of(later, 0xC1))


def test_one_register_is_a_get_response_normal(decoder_class: Any) -> None:
    specs = [RegisterSpec("1-0:1.8.0", key="energy")]
    scaler = [Data.structure([Data.integer(3), Data.enum(30)])]
    client, readings = first_read(specs, scaler, [Data.double_long_unsigned(1)])
    decoder = decoder_class(specs, readings)
    normal = bytes.fromhex("c401c1000600000102")
    reading = decoder.decode(normal)
    assert reading is not None
    assert strict(reading) == strict(steady.reading_of(general(client, specs, normal) or [], 0xC1))
    assert reading.values == {"energy": 258000}
    assert decoder.decode(bytes.fromhex("c403c101000600000102")) is None  # a list of one


def test_readings_must_match_the_registers(decoder_class: Any) -> None:
    _, readings = field_client()
    with pytest.raises(ValueError, match="5 readings for 4 registers"):
        decoder_class(FIELD_SPECS[:4], readings)
    with pytest.raises(ValueError, match="reading 1 is of voltage, not current"):
        decoder_class(FIELD_SPECS[1:2], readings[:1])
    with pytest.raises(ValueError, match="at least one register"):
        decoder_class([], [])


def test_the_implementation_follows_the_hdlc_hot_path() -> None:
    assert steady.SteadyDecoder is IMPLEMENTATIONS[steady.IMPLEMENTATION]
    if "cython" not in IMPLEMENTATIONS:
        pytest.skip("the extension codec._steady_c is not built")
    # One switch (DLMS_BRIDGE_NO_EXTENSIONS) for every hot path.
    assert steady.IMPLEMENTATION == HDLC_IMPLEMENTATION


@settings(max_examples=1000)
@given(
    st.integers(-(10**15) + 1, 10**15 - 1)
    | st.sampled_from([0, 1, -1, 10, 100, 1230, 10**15 - 1, -(10**15) + 1, 10**14])
    | st.integers(-(2**63), 2**63 - 1),
    st.integers(1, 25),
)
def test_a_scaled_integer_is_written_as_its_repr(whole: int, places: int) -> None:
    """The values' JSON writes an integer over a power of ten as repr() of the quotient
    (the extension writes the decimal itself when it can, without the float's digit search):
    trailing zeros, "x.0", "0.000d", exponents below 1e-4, 15 digits and more."""
    kinds = [(20, whole)] if -(2**63) <= whole < 2**63 else []
    if -(2**31) <= whole < 2**31:
        kinds.append((5, whole))
    for tag, value in kinds:
        specs = [RegisterSpec("1-0:1.7.0"), RegisterSpec("1-0:2.7.0")]
        sc = Data.structure([Data.integer(-places), Data.enum(27)])
        first = [Data.long64(0), Data.long_unsigned(0)]
        client, readings = first_read(specs, [sc, sc], first)
        width = 8 if tag == 20 else 4
        raw = bytes((0, tag)) + value.to_bytes(width, "big", signed=True)
        got = check(client, specs, readings, reply(0xC1, [raw, b"\x00\x12\x00\x07"]))
        assert got is not None
        assert got.values_json is not None
        assert json.loads(got.values_json) == got.values
        text = got.values_json.decode()
        first = got.values["1-0:1.7.0"]
        assert text.startswith(f'{{"1-0:1.7.0":{first!r},'), text
