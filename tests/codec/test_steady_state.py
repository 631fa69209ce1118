"""The steady-state poll (a register list read again and again on one association) reuses its
plan, its request and the request's encoding. Whatever the meter answers, it must yield the
same requests and return the same readings as the general path of a client that knows the same
scalers."""

from __future__ import annotations

from collections.abc import Callable

import attrs
from hypothesis import given
from hypothesis import strategies as st

from codec.acse import Conformance
from codec.apdu import (
    AttributeDescriptor,
    DataAccessResult,
    ExceptionResponse,
    GetRequestNormal,
    GetRequestWithList,
    GetResponseNormal,
    GetResponseWithList,
    InvokeId,
    MalformedResult,
    Request,
    SelectiveAccess,
    XdlmsApdu,
    encode_apdu,
)
from codec.association import Negotiated
from codec.axdr import Data
from codec.client import DlmsClient, Procedure, RegisterReading, RegisterSpec
from codec.errors import ProtocolError
from codec.obis import Obis
from tests.codec.strategies import data_values, simple_data_values

SPECS = (
    RegisterSpec("1-1:32.7.0", key="voltage_l1"),
    RegisterSpec("1-1:1.8.0", key="active_energy"),
    RegisterSpec("1-1:1.7.0", key="active_power"),
    RegisterSpec("1-1:99.7.0", key="broken_scaler"),
    RegisterSpec("0-0:96.1.0", class_id=1, key="serial"),  # Data: no scaler
    RegisterSpec("0-0:1.0.0", class_id=8, key="clock"),  # a date-time
)
SCALERS = (
    Data.structure([Data.integer(-2), Data.enum(35)]),
    Data.structure([Data.integer(0), Data.enum(30)]),
    Data.structure([Data.integer(3), Data.enum(27)]),
    DataAccessResult.OBJECT_UNDEFINED,
)
LIST = Negotiated(Conformance.GET | Conformance.MULTIPLE_REFERENCES, 1024, 6)

Result = Data | DataAccessResult | MalformedResult
results = st.one_of(
    simple_data_values(),
    data_values(max_leaves=3),
    st.sampled_from(list(DataAccessResult)),
    st.builds(MalformedResult, st.just("decode.truncated"), st.text(max_size=5)),
)
#: What the meter may answer to a request: a list (of any length), one result, a refusal.
answers = st.one_of(
    st.lists(results, max_size=8).map(lambda rs: GetResponseWithList(InvokeId(), tuple(rs))),
    results.map(lambda r: GetResponseNormal(InvokeId(), r)),
    st.just(ExceptionResponse(1, 2)),
)


def drive(procedure: Procedure[list[RegisterReading]], answer: Callable[[Request], XdlmsApdu]
          ) -> tuple[list[Request], list[RegisterReading]]:  # fmt: skip
    """Run a procedure; a protocol error ends it (its type and text are the result)."""
    sent: list[Request] = []
    request = next(procedure)
    while True:
        sent.append(request)
        try:
            request = procedure.send(answer(request))
        except StopIteration as done:
            return sent, done.value
        except ProtocolError as exc:
            return sent, [RegisterReading(SPECS[0], error=f"{type(exc).__name__}: {exc}")]


def first_read(client: DlmsClient) -> None:
    """The association's first read: the scalers (one unreadable) and the values."""

    def answer(request: Request) -> XdlmsApdu:
        assert isinstance(request, GetRequestWithList)
        values = [Data.long_unsigned(1)] * (len(request.items) - len(SCALERS))
        return GetResponseWithList(InvokeId(), (*SCALERS, *values))

    drive(client.read_registers(SPECS), answer)


@given(st.lists(answers, min_size=1, max_size=len(SPECS) + 1))
def test_steady_poll_equals_the_general_path(replies: list[XdlmsApdu]) -> None:
    steady, general = DlmsClient(LIST), DlmsClient(LIST)
    first_read(steady)
    first_read(general)
    assert steady.scalers == general.scalers

    def answer_from(replies: list[XdlmsApdu]) -> Callable[[Request], XdlmsApdu]:
        queue = list(replies)
        return lambda _request: (
            queue.pop(0) if queue else GetResponseNormal(InvokeId(), Data.long_unsigned(7))
        )

    plan = steady._plan
    assert plan is not None and plan.specs == SPECS
    general._plan = None  # the general path, on the same knowledge
    sent_steady, got_steady = drive(steady.read_registers(list(SPECS)), answer_from(replies))
    sent_general, got_general = drive(general.read_registers(SPECS), answer_from(replies))
    assert sent_steady == sent_general
    assert [r.to_json() for r in got_steady] == [r.to_json() for r in got_general]
    assert got_steady == got_general or any(
        r.raw is not None and r.raw != r.raw
        for r in got_general  # NaN inside
    )


def test_the_steady_poll_reuses_its_request() -> None:
    client = DlmsClient(LIST)
    first_read(client)
    sent_a, _ = drive(
        client.read_registers(SPECS),
        lambda r: GetResponseWithList(InvokeId(), (Data.long_unsigned(1),) * len(SPECS)),
    )
    sent_b, readings = drive(
        client.read_registers(SPECS),
        lambda r: GetResponseWithList(InvokeId(), (Data.long_unsigned(2),) * len(SPECS)),
    )
    assert sent_a[0] is sent_b[0]
    assert readings[0].value == 0.02 and readings[0].unit is not None
    assert readings[3].error_code == "register.scaler_unit"
    # Another list is a new request.
    sent_c, _ = drive(
        client.read_registers(SPECS[:2]),
        lambda r: GetResponseWithList(InvokeId(), (Data.long_unsigned(2),) * 2),
    )
    assert sent_c[0] is not sent_b[0] and len(sent_c[0].items) == 2


descriptors = st.builds(
    AttributeDescriptor,
    st.integers(0, 0xFFFF),
    st.tuples(*[st.integers(0, 255)] * 6).map(lambda t: Obis(*t)),
    st.integers(-128, 127),
)


@given(
    st.lists(
        st.tuples(descriptors, st.none() | st.builds(SelectiveAccess, st.integers(0, 255),
                                                        simple_data_values())),
        min_size=1, max_size=5,
    ),
    st.lists(st.integers(0, 15), min_size=1, max_size=4),
)  # fmt: skip
def test_a_repeated_list_request_encodes_as_a_new_one(
    items: list[tuple[AttributeDescriptor, SelectiveAccess | None]], invokes: list[int]
) -> None:
    shared = tuple(items)
    for invoke in invokes:
        reused = encode_apdu(GetRequestWithList(InvokeId(invoke), shared))
        fresh = encode_apdu(GetRequestWithList(InvokeId(invoke), tuple(list(items))))
        assert reused == fresh
        assert fresh == encode_apdu(
            GetRequestWithList(InvokeId(invoke), tuple((a, s) for a, s in items))
        )


def test_get_normal_requests_are_not_affected() -> None:
    attribute = AttributeDescriptor(3, Obis(1, 1, 1, 8, 0, 255), 2)
    assert encode_apdu(GetRequestNormal(InvokeId(3), attribute, None)).hex() == (
        "c001c3000301010108 00ff0200".replace(" ", "")
    )


def test_a_repeated_request_goes_out_as_its_fresh_encoding_with_the_next_invoke_id() -> None:
    """The association encodes a request once and then only changes its invoke-id byte: what
    goes on the wire must be exactly the fresh encoding with the invoke-id of each request,
    and each reply must still be matched to its own request."""
    from codec.apdu import decode_apdu
    from codec.link import WrapperClientLink
    from tests.codec.test_association import Wire

    wire = Wire(transport="wrapper")
    wire.open()
    attribute = AttributeDescriptor(3, Obis(1, 1, 32, 7, 0, 255), 2)
    other = AttributeDescriptor(3, Obis(1, 1, 1, 8, 0, 255), 2)
    same = GetRequestWithList(InvokeId(), ((attribute, None), (other, None)))
    single = GetRequestNormal(InvokeId(), attribute, None)
    link = wire.assoc.link
    assert isinstance(link, WrapperClientLink)
    # Twenty requests: the invoke-id wraps from 15 to 1; another request in between is encoded
    # afresh and the repeated one goes on right after it.
    for n in range(20):
        request = single if n == 7 else same
        invoke = wire.assoc.request(request, wire.now)
        out = wire.assoc.data_to_send()
        apdu_bytes = out[8:]  # the wrapper header
        assert apdu_bytes == encode_apdu(attrs.evolve(request, invoke=invoke))
        assert invoke.invoke_id == n % 15 + 1
        assert decode_apdu(apdu_bytes) == attrs.evolve(request, invoke=invoke)
        replies = wire.server.receive_data(out, 0.0)
        wire.assoc.receive_data(b"".join(replies), wire.now)
        event = wire.next_event()
        assert event.apdu.invoke == invoke
        assert isinstance(event.apdu, GetResponseWithList if request is same else GetResponseNormal)
