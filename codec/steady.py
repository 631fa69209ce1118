"""The steady-state reply decoded straight to register readings, in one pass.

Once an association has read its register list the first time (through
:meth:`codec.client.DlmsClient.read_registers`, which also reads the scalers), every later
reply to the same request has the same shape: a GET.response-with-list (or, for a single
register, a GET.response-normal) of simple values. :class:`SteadyDecoder` is built once from
the registers and their first readings; its :meth:`~SteadyDecoder.decode` then turns such a
reply's bytes into the final values the poller records, with no :class:`~codec.axdr.Data`,
APDU or :class:`~codec.client.RegisterReading` objects in between::

    decoder = SteadyDecoder(specs, first_readings)     # after the first general read
    ...
    reading = decoder.decode_info(frame.info, invoke_id)  # an HDLC I-frame's information field
    if reading is None:
        ...  # anything unexpected: decode the reply by the general path instead
    else:
        reading.values, reading.quality, reading.errors  # per telemetry key

The contract: for any bytes, :meth:`~SteadyDecoder.decode` returns exactly what the general
path gives for the same reply (``DlmsClient.read_registers`` converting the decoded APDU's
results, then taken per key as :func:`reading_of` does), or ``None``. It returns ``None`` for
anything outside the steady shape, so the general path can decode and report it: another APDU
or GET choice, another invoke-id (when ``invoke_id`` is given), another number of results, a
value type other than the simple ones (integers, enum, bcd, float32/64, boolean, null-data,
octet-string and visible-string of short length), a long-form length, a data-access-result code
the standard does not define, a truncated reply, trailing bytes, or a value of a register whose
first read failed (its scaler is unknown here). It never raises on what a meter sends.

What a value becomes is the value contract of :mod:`codec.values`: integers scaled by
``10**scaler`` (an int for a positive or zero scaler, a correctly rounded float for a negative
one), float32 as its shortest decimal, NaN and infinities as ``None`` with a quality flag
(``nan``, ``+inf``, ``-inf``), bcd with a nibble above 9 as ``None`` with ``invalid-bcd``, enum
names as labels, octet-strings as text or hex (or a COSEM date-time where the register's context
says so). A register's data-access-result is its error ``("data-access.<label>", "<label>")``;
a value of a register whose scaler_unit was unreadable is its error
``("register.scaler_unit", "scaler_unit unreadable: ...")``, as in the general path.

The decoder holds the scalers of one association: build a new one after re-associating (the
general path reads the scalers again then), and one per request when the list is split over
several requests (``max_list_items``). It may be built from the readings of any general read in
the association, not only the first: a register whose first read failed has no known scaler
here, so its value sends the reply to the general path, and a decoder rebuilt from that general
read then takes it. It takes the plain APDU: with a ciphered association, decipher first.

API (both implementations):

- ``SteadyDecoder(specs, readings)``; attributes ``specs``, ``keys`` (telemetry key per
  register), ``units`` (unit symbol or None by key);
- ``decoder.decode(buf, start=0, invoke_id=-1) -> SteadyReading | None``: the APDU in
  ``buf[start:]`` (bytes, bytearray or memoryview);
- ``decoder.decode_info(info, invoke_id=-1) -> SteadyReading | None``: an HDLC information
  field, its LLC header skipped as the link skips it;
- ``SteadyReading``: ``invoke`` (the reply's invoke-id byte), ``values``, ``quality``,
  ``labels``, ``errors`` (dicts by key; see the class), ``as_tuple()``, ``==``.

The Cython extension (``codec._steady_c``) is used when built, else the pure-Python twin
(``codec._steady_py``); both give identical results. ``DLMS_BRIDGE_NO_EXTENSIONS=1`` selects
the twin, as for the HDLC hot path.

A steady poll's exchange in one call each way, for a polling loop that does its own I/O:
``steady_send(association, request, now, decoder)`` is
:meth:`~codec.association.ClientAssociation.steady_request` and ``steady_receive(association,
data, now)`` is :meth:`~codec.association.ClientAssociation.receive_steady`, with the same
results and the same state. The HDLC hot path's extension (``codec._hdlc_c``) does both in C
for an association over an HDLC link (the request frame built in one buffer; a reply that is
exactly one frame taken from the bytes read, decoded by the decoder in place) and hands
anything else to the method before changing anything; its twin calls the methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from codec import _steady_py
from codec._speedups import available_of, select
from codec._speedups import impl as _hdlc_impl
from codec.client import RegisterReading, RegisterSpec
from codec.values import JsonValue

#: Which implementation is in use: ``"cython"`` or ``"python"``.
_impl, IMPLEMENTATION = select(_steady_py, "_steady_c")
if TYPE_CHECKING:
    from codec._hdlc_py import steady_receive, steady_send
    from codec._steady_py import SteadyDecoder, SteadyReading
else:
    SteadyDecoder = _impl.SteadyDecoder
    SteadyReading = _impl.SteadyReading
    steady_send = _hdlc_impl.steady_send
    steady_receive = _hdlc_impl.steady_receive

__all__ = [
    "IMPLEMENTATION",
    "SteadyDecoder",
    "SteadyReading",
    "implementations",
    "reading_of",
    "shared_decoder",
    "steady_receive",
    "steady_send",
]

#: Decoders by what they are built from (bounded: emptied when full).
_DECODERS: dict[tuple[object, ...], SteadyDecoder] = {}
_DECODERS_MAX = 1024


def shared_decoder(
    specs: Sequence[RegisterSpec], readings: Sequence[RegisterReading]
) -> SteadyDecoder:
    """``SteadyDecoder(specs, readings)``, one object for all the associations whose decoders
    would be equal (a decoder never changes once built: the same registers, and per register
    the same outcome, scaler, unit and error message of the first read).

    A fleet of meters of one model reading the same registers then holds one decoder instead
    of one per meter. Raises as :class:`SteadyDecoder` does."""
    # What build_plan takes from each reading, and nothing else.
    key = (
        tuple(specs),
        tuple(
            (
                r.spec,
                r.ok,
                r.scaler,
                r.unit.symbol if r.unit is not None else None,
                r.error if r.error_code == "register.scaler_unit" else None,
                r.error_code == "register.scaler_unit",
            )
            for r in readings
        ),
    )
    found = _DECODERS.get(key)
    if found is None:
        found = SteadyDecoder(specs, readings)
        if len(_DECODERS) >= _DECODERS_MAX:
            _DECODERS.clear()
        _DECODERS[key] = found
    return found


def implementations() -> dict[str, type[SteadyDecoder]]:
    """Each built implementation's :class:`SteadyDecoder` by name (``"python"``, ``"cython"``),
    for tests and benchmarks."""
    return {
        name: module.SteadyDecoder for name, module in available_of(_steady_py, "_steady_c").items()
    }


def reading_of(readings: Sequence[RegisterReading], invoke: int) -> SteadyReading:
    """The general path's readings taken per telemetry key, as the poller takes them, in the
    form :meth:`SteadyDecoder.decode` returns (``invoke``: the reply's invoke-id byte).

    ``values`` holds each register read with a value, ``quality`` its flag if any, ``labels``
    its enum name or clock status if any, ``errors`` the ``(code, message)`` of each register
    without a value (a later register with the same key adds to these dicts, in order)."""
    values: dict[str, JsonValue] = {}
    quality: dict[str, str] = {}
    errors: dict[str, tuple[str, str]] = {}
    labels: dict[str, str] = {}
    for r in readings:
        key = r.spec.name
        if not r.ok:
            errors[key] = (r.error_code or "register.error", r.error or "")
            continue
        values[key] = r.value
        if r.quality is not None:
            quality[key] = r.quality.value
        if r.label is not None:
            labels[key] = r.label
    return SteadyReading(invoke, values, quality, errors, labels)
