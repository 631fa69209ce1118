"""The steady-state reply decoder (:mod:`codec.fast_decode`) is a pure shortcut: on any bytes it
returns exactly what the general decoder returns, or None (and the general decoder runs)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from codec import apdu
from codec.apdu import DataAccessResult, GetResponseWithList, InvokeId, decode_apdu, encode_apdu
from codec.axdr import Data, DataType
from codec.errors import DecodeError
from codec.fast_decode import decode_get_with_list
from tests.codec.strategies import data_values, simple_data_values

#: The simulator's steady-state reply to the field-meter poll (the APDU of an HDLC I-frame).
STEADY = bytes.fromhex("c403c205001230280012033600121770001742bec9ca00060039ca32")


def general(buf: bytes) -> apdu.XdlmsApdu | None:
    """The general decoder, bypassing the shortcut; None where it raises."""
    r = apdu.Reader(buf)
    try:
        decoded = apdu.decode_xdlms(r)
    except DecodeError:
        return None
    return decoded if r.pos == len(buf) else None


def same(a: object, b: object) -> bool:
    """Equality that counts NaN equal to NaN (a float32 NaN decodes to a NaN)."""
    if isinstance(a, Data) and isinstance(b, Data):
        if isinstance(a.value, float) and isinstance(b.value, float):
            both_nan = math.isnan(a.value) and math.isnan(b.value)
            return a.type is b.type and (both_nan or a.value == b.value)
        if isinstance(a.value, tuple) and isinstance(b.value, tuple):
            return (
                a.type is b.type
                and len(a.value) == len(b.value)
                and all(same(x, y) for x, y in zip(a.value, b.value, strict=True))
            )
        return a == b
    return a == b


def check(buf: bytes) -> tuple[int, tuple[Data, ...]] | None:
    fast = decode_get_with_list(buf)
    if fast is not None:
        expected = general(buf)
        assert isinstance(expected, GetResponseWithList), buf.hex()
        assert expected.invoke == InvokeId.from_byte(fast[0])
        assert len(expected.results) == len(fast[1])
        assert all(same(a, b) for a, b in zip(expected.results, fast[1], strict=True)), buf.hex()
        # And the public entry points take the shortcut with the same result.
        assert decode_apdu(buf) == GetResponseWithList(expected.invoke, fast[1]) or any(
            isinstance(d.value, float) and math.isnan(d.value) for d in fast[1]
        )
    return fast


def test_the_steady_reply_takes_the_shortcut() -> None:
    fast = check(STEADY)
    assert fast is not None
    assert [d.type for d in fast[1]] == [
        DataType.LONG_UNSIGNED,
        DataType.LONG_UNSIGNED,
        DataType.LONG_UNSIGNED,
        DataType.FLOAT32,
        DataType.DOUBLE_LONG_UNSIGNED,
    ]
    assert fast[1][0] == Data(DataType.LONG_UNSIGNED, 0x3028)


@given(
    st.lists(simple_data_values(), max_size=12),
    st.integers(0, 255),
)
def test_simple_lists_equal_the_general_decoder(values: list[Data], invoke: int) -> None:
    buf = encode_apdu(GetResponseWithList(InvokeId.from_byte(invoke), tuple(values)))
    buf = buf[:2] + bytes((invoke,)) + buf[3:]  # reserved bits too: both decoders ignore them
    check(buf)


@given(st.lists(data_values(max_leaves=4) | st.sampled_from(list(DataAccessResult)), max_size=6))
def test_any_list_is_equal_or_left_to_the_general_decoder(
    results: list[Data | DataAccessResult],
) -> None:
    buf = encode_apdu(GetResponseWithList(InvokeId(), tuple(results)))
    fast = check(buf)
    if any(isinstance(r, DataAccessResult) for r in results):
        assert fast is None


@given(st.binary(max_size=40), st.integers(0, 40), st.binary(max_size=3))
def test_mangled_replies_are_equal_or_left_to_the_general_decoder(
    noise: bytes, cut: int, patch: bytes
) -> None:
    check(STEADY[:cut] + patch + STEADY[cut + len(patch) :])
    check(STEADY[:cut])
    check(STEADY + noise[:1])
    check(b"\xc4\x03" + noise)


def test_anything_outside_the_shape_is_left_to_the_general_decoder() -> None:
    assert decode_get_with_list(STEADY + b"\x00") is None  # trailing byte
    assert decode_get_with_list(STEADY[:-1]) is None  # truncated value
    assert decode_get_with_list(b"\xc4\x03\xc1\x01\x01\x04") is None  # data-access-result
    assert decode_get_with_list(b"\xc4\x01\xc1\x00\x12\x00\x01") is None  # get-response-normal
    assert decode_get_with_list(b"\xc4\x03\xc1\x81\x01\x00\x12\x00\x01") is None  # long length
    # A structure (scaler_unit): the general decoder's job.
    assert decode_get_with_list(b"\xc4\x03\xc1\x01\x00\x02\x02\x0f\xfe\x16\x23") is None
