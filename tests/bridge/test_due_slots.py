"""The engine's queue of due polls (bridge.due_slots) against a plain model: every entry due
is taken once, none early, in slot order and then in the order added."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.due_slots import DueSlots

SLOT = 0.005

# Times around slot edges too (multiples of the slot, and the floats next to them).
_edges = st.integers(-50, 400).flatmap(
    lambda k: st.sampled_from(
        [k * SLOT, math.nextafter(k * SLOT, -math.inf), math.nextafter(k * SLOT, math.inf)]
    )
)
_times = st.one_of(st.floats(-0.3, 2.0, allow_nan=False), _edges)
_ops = st.lists(
    st.one_of(st.tuples(st.just("add"), _times), st.tuples(st.just("take"), _times)),
    max_size=120,
)


@settings(max_examples=400, deadline=None)
@given(_ops)
def test_takes_what_is_due_once_in_slot_then_added_order(ops: list[tuple[str, float]]) -> None:
    slots: DueSlots[int] = DueSlots(SLOT)
    model: list[tuple[float, int]] = []  # (at, item), in the order added
    for n, (op, t) in enumerate(ops):
        if op == "add":
            slots.add(t, n)
            model.append((t, n))
        else:
            taken = slots.take(t)
            expected = [entry for entry in model if entry[0] <= t]
            # Slot order first (slot k holds the times t with floor(t / SLOT) == k, t / SLOT
            # computed as the queue does), then the order added.
            expected.sort(key=lambda entry: math.floor(entry[0] * (1.0 / SLOT)))
            assert [item for _at, item in taken] == [item for _at, item in expected]
            assert all(at <= t for at, _item in taken)
            model = [entry for entry in model if entry[0] > t]
        assert len(slots) == len(model)
        assert bool(slots) == bool(model)
        assert slots.first_at() == min((at for at, _ in model), default=math.inf)


def test_a_slot_begun_keeps_what_is_not_due_yet() -> None:
    slots: DueSlots[str] = DueSlots(1.0)
    for at, item in [(10.7, "c"), (10.2, "a"), (10.5, "b"), (11.0, "d")]:
        slots.add(at, item)
    assert slots.take(10.1) == []
    assert slots.take(10.5) == [(10.2, "a"), (10.5, "b")]
    assert slots.first_at() == 10.7
    assert slots.take(12.0) == [(10.7, "c"), (11.0, "d")]
    assert not slots
    assert slots.take(100.0) == []


def test_the_slot_width_must_be_positive() -> None:
    with pytest.raises(ValueError, match="slot_s"):
        DueSlots(0.0)
