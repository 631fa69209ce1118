"""The codec's public boundary is typed: what the association and the links hand over is a
union of event classes (and NEED_DATA), never ``Any``, so mypy --strict checks the callers."""

from __future__ import annotations

import typing

import pytest

from codec import association, client, link
from codec.hdlc import NEED_DATA, NeedData


def _mentions_any(hint: object) -> bool:
    if hint is typing.Any:
        return True
    return any(_mentions_any(arg) for arg in typing.get_args(hint))


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (association.ClientAssociation, "next_event"),
        (association.ClientAssociation, "request"),
        (link.HdlcClientLink, "next_event"),
        (link.WrapperClientLink, "next_event"),
        (link.Link, "next_event"),
    ],
)
def test_boundary_methods_have_no_any(owner: type, name: str) -> None:
    # The annotations as written (the modules use postponed evaluation).
    hints = getattr(owner, name).__annotations__
    assert hints, f"{owner.__name__}.{name} is not annotated"
    for what, hint in hints.items():
        assert "Any" not in str(hint), f"{owner.__name__}.{name} {what}: {hint}"


@pytest.mark.parametrize("event", [association.Response, association.Notification])
def test_event_payloads_are_typed(event: type) -> None:
    hint = event.__annotations__["apdu"]
    assert "Any" not in hint and "Apdu" in hint, hint


def test_association_events_are_a_closed_union() -> None:
    names = {t.__name__ for t in typing.get_args(association.Event)}
    assert names == {
        "Associated",
        "Response",
        "SteadyResponse",
        "Notification",
        "Released",
        "Closed",
        "Lenient",
    }
    assert association.ClientAssociation.next_event.__annotations__["return"] == (
        "Event | NeedData"
    )
    assert isinstance(NEED_DATA, NeedData)


def test_procedures_are_typed() -> None:
    args = typing.get_args(client.Procedure)
    assert not any(_mentions_any(a) for a in args[:2]), args
