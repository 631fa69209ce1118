"""Fault injection: the ``--faults`` spec, and what each fault does to a meter's replies.

Spec grammar: groups joined by ``;``, each ``[METERS:]FAULT[,FAULT...]`` where METERS is
``all`` (the default), ``N`` or ``N-M`` (meter indices from 0). A later group adds to or
overrides an earlier one for the meters they share: ``all:delay=0.2;3:fcs=0.5``.

=================  ================================================================================
``garbage[=P]``    random bytes, rich in 0x7E and 0x7D, before a reply (probability P, default 1)
``residual``       on connect, the truncated tail of a "previous session's" frame
``chunks[=P]``     a reply split into random TCP chunks (probability P, default 1)
``drip[=S]``       every reply sent byte by byte, S seconds apart (default 0.01)
``flags``          0x7E/0x7D inside frames: energy values 0x7E7Dxxxx, a logical device name with
                   7E 7D, and the server address alias logical 63 (byte 0x7E in 2-byte addressing)
``fcs[=P]``        a reply's FCS corrupted (wrapper: its version field, it has no checksum)
``delay=S``        every reply delayed S seconds
``silence=S[@P]``  stop answering for S seconds: from when the fault is set, or with ``@P``
                   starting at any reply with probability P
``reset[=P]``      the connection reset (RST) in the middle of a reply frame
``refuse[=P]``     associations refused (AARE rejected-transient)
=================  ================================================================================

:class:`FaultState` is sans-IO: :meth:`FaultState.plan` turns one reply into a list of wire
operations (:class:`Send`, :class:`Sleep`, :class:`Reset`) that the Trio shell carries out. Its
random choices come from a per-meter RNG, so a run with the same seed and the same traffic injects
the same faults.
"""

from __future__ import annotations

import math
import random
from typing import Any

import attrs

__all__ = [
    "FAULT_NAMES",
    "FaultGroup",
    "FaultSpec",
    "FaultSpecError",
    "FaultState",
    "Faults",
    "MeterRange",
    "Op",
    "Reset",
    "Send",
    "Sleep",
    "parse_fault_spec",
    "parse_meter_range",
]


class FaultSpecError(ValueError):
    """A ``--faults`` spec that cannot be used; the message names the bad part."""


@attrs.frozen
class Faults:
    """The faults active at one meter (``None``/``False``: not active)."""

    garbage: float | None = None
    residual: bool = False
    chunks: float | None = None
    drip: float | None = None
    flags: bool = False
    fcs: float | None = None
    delay: float | None = None
    #: (seconds, probability per reply or ``None`` for once, from when the fault is set)
    silence: tuple[float, float | None] | None = None
    reset: float | None = None
    refuse: float | None = None

    @property
    def active(self) -> bool:
        """Whether any fault is set."""
        return self != _NO_FAULTS

    def merged(self, other: Faults) -> Faults:
        """These faults with every fault set in ``other`` added or overriding."""
        changes = {
            name: value
            for name, value in attrs.asdict(other, recurse=False).items()
            if value is not None and value is not False
        }
        return attrs.evolve(self, **changes)

    def spec(self) -> str:
        """The faults in spec syntax (``""`` for none)."""
        parts = []
        for name, value in attrs.asdict(self, recurse=False).items():
            if value is None or value is False:
                continue
            if value is True:
                parts.append(name)
            elif name == "silence":
                seconds, probability = value
                suffix = "" if probability is None else f"@{probability:g}"
                parts.append(f"silence={seconds:g}{suffix}")
            else:
                parts.append(f"{name}={value:g}")
        return ",".join(parts)


_NO_FAULTS = Faults()
FAULT_NAMES = tuple(f.name for f in attrs.fields(Faults))
_PROBABILITY = frozenset({"garbage", "chunks", "fcs", "reset", "refuse"})
_FLAGS = frozenset({"residual", "flags"})


@attrs.frozen
class MeterRange:
    """Meters ``first``..``last`` (inclusive); ``last`` None means every meter from ``first``."""

    first: int = 0
    last: int | None = None

    def __contains__(self, index: object) -> bool:
        return (
            isinstance(index, int)
            and self.first <= index
            and (self.last is None or index <= self.last)
        )

    def indices(self, count: int) -> range:
        """The indices selected among ``count`` meters."""
        last = count - 1 if self.last is None else min(self.last, count - 1)
        return range(self.first, last + 1)

    def __str__(self) -> str:
        if self.last is None and self.first == 0:
            return "all"
        if self.last == self.first:
            return str(self.first)
        return f"{self.first}-{'' if self.last is None else self.last}"


@attrs.frozen
class FaultGroup:
    """One ``METERS:FAULTS`` group of a spec."""

    meters: MeterRange
    faults: Faults


@attrs.frozen
class FaultSpec:
    """A parsed ``--faults`` spec."""

    groups: tuple[FaultGroup, ...] = ()

    def for_meter(self, index: int) -> Faults:
        """The faults of meter ``index``: every group that selects it, in order."""
        faults = _NO_FAULTS
        for group in self.groups:
            if index in group.meters:
                faults = faults.merged(group.faults)
        return faults

    def __str__(self) -> str:
        return ";".join(f"{g.meters}:{g.faults.spec()}" for g in self.groups)


def parse_fault_spec(text: str, meter_count: int | None = None) -> FaultSpec:
    """Parse a spec; raises :class:`FaultSpecError` naming the bad part.

    With ``meter_count``, meter indices beyond the last meter are errors too.
    """
    groups = []
    for raw_group in text.split(";"):
        group = raw_group.strip()
        if not group:
            continue
        head, sep, tail = group.partition(":")
        if sep:
            try:
                meters = parse_meter_range(head, meter_count)
            except FaultSpecError as exc:
                raise FaultSpecError(f"fault spec part {group!r}: {exc}") from None
            body = tail
        else:
            meters, body = MeterRange(), group
        faults = _NO_FAULTS
        items = [item.strip() for item in body.split(",")]
        if not any(items):
            raise FaultSpecError(f"fault spec part {group!r}: no fault named")
        for item in items:
            if not item:
                raise FaultSpecError(f"fault spec part {group!r}: empty fault (stray comma)")
            faults = faults.merged(_parse_fault(item, group))
        groups.append(FaultGroup(meters, faults))
    return FaultSpec(tuple(groups))


def parse_meter_range(text: str, meter_count: int | None = None) -> MeterRange:
    """Parse ``all``, ``N`` or ``N-M``; with ``meter_count``, indices must exist."""
    text = text.strip()
    if text == "all":
        return MeterRange()
    first_text, dash, last_text = text.partition("-")
    try:
        first = int(first_text)
        last = int(last_text) if dash else first
    except ValueError:
        raise FaultSpecError(f"meters {text!r} must be all, N or N-M") from None
    if first < 0 or last < first:
        raise FaultSpecError(f"meter range {text!r} is empty or negative")
    if meter_count is not None and last >= meter_count:
        raise FaultSpecError(f"meter {last} does not exist (meters are 0..{meter_count - 1})")
    return MeterRange(first, last)


def _number(text: str, item: str, group: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FaultSpecError(
            f"fault spec part {group!r}: {item!r} needs a number for {what}, got {text!r}"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise FaultSpecError(f"fault spec part {group!r}: {item!r}: {what} must be >= 0")
    return value


def _probability(text: str, item: str, group: str) -> float:
    value = _number(text, item, group, "the probability")
    if value > 1:
        raise FaultSpecError(
            f"fault spec part {group!r}: {item!r}: a probability must be between 0 and 1"
        )
    return value


def _parse_fault(item: str, group: str) -> Faults:
    name, eq, value = (part.strip() for part in item.partition("="))
    if name not in FAULT_NAMES:
        raise FaultSpecError(
            f"fault spec part {group!r}: unknown fault {name!r} (known: {', '.join(FAULT_NAMES)})"
        )
    if name in _FLAGS:
        if eq:
            raise FaultSpecError(f"fault spec part {group!r}: {name!r} takes no value")
        changes: dict[str, Any] = {name: True}
        return attrs.evolve(_NO_FAULTS, **changes)
    if name in _PROBABILITY:
        changes = {name: _probability(value, item, group) if eq else 1.0}
        return attrs.evolve(_NO_FAULTS, **changes)
    if name == "drip":
        return Faults(drip=_number(value, item, group, "the seconds") if eq else 0.01)
    if not eq or not value:
        raise FaultSpecError(f"fault spec part {group!r}: {name!r} needs a value ({name}=S)")
    if name == "delay":
        return Faults(delay=_number(value, item, group, "the seconds"))
    seconds_text, at, probability_text = value.partition("@")
    seconds = _number(seconds_text, item, group, "the seconds")
    probability = _probability(probability_text, item, group) if at else None
    return Faults(silence=(seconds, probability))


# -- wire operations ------------------------------------------------------------------------------


@attrs.frozen
class Send:
    """Send these bytes."""

    data: bytes


@attrs.frozen
class Sleep:
    """Wait this many seconds."""

    seconds: float


@attrs.frozen
class Reset:
    """Abort the connection with a TCP reset."""


Op = Send | Sleep | Reset

# Garbage is drawn mostly from the bytes that confuse a framer: flag, escape, format type 3.
_GARBAGE_BYTES = bytes([0x7E] * 8 + [0x7D] * 4 + [0xA0, 0xA8, 0x00, 0x01, 0x03, 0x10, 0x93])


@attrs.define(eq=False)
class FaultState:
    """The faults of one meter and their random choices; times are on the caller's clock."""

    rng: random.Random
    faults: Faults = _NO_FAULTS
    silent_until: float = -math.inf
    #: Faults injected so far, by name.
    injected: dict[str, int] = attrs.field(factory=dict)
    #: Whether any fault is set (``faults.active``, kept up to date by :meth:`apply`).
    active: bool = False

    def __attrs_post_init__(self) -> None:
        self.active = self.faults.active

    def apply(self, faults: Faults, now: float) -> None:
        """Replace the faults; a ``silence`` without probability starts now."""
        self.faults = faults
        self.active = faults.active
        self.silent_until = -math.inf
        if faults.silence is not None and faults.silence[1] is None:
            self.silent_until = now + faults.silence[0]

    @property
    def flags(self) -> bool:
        """Whether the ``flags`` fault is on."""
        return self.faults.flags

    def _count(self, name: str) -> None:
        self.injected[name] = self.injected.get(name, 0) + 1

    def _chance(self, probability: float | None) -> bool:
        return probability is not None and (probability >= 1.0 or self.rng.random() < probability)

    def silenced(self, now: float) -> bool:
        """Whether the meter ignores what it receives at ``now`` (counted as ``silence``)."""
        if now < self.silent_until:
            self._count("silence")
            return True
        return False

    def refuse_association(self) -> bool:
        """Whether to refuse this association (the ``refuse`` fault)."""
        if self._chance(self.faults.refuse):
            self._count("refuse")
            return True
        return False

    def on_connect(self, sample: bytes) -> list[Op]:
        """What to send when a client connects: the ``residual`` fault sends a cut ``sample``."""
        if not self.faults.residual or len(sample) < 4:
            return []
        self._count("residual")
        return [Send(sample[: self.rng.randint(len(sample) // 3, len(sample) - 2)])]

    def plan(self, data: bytes, now: float, *, hdlc: bool) -> list[Op]:
        """The wire operations that deliver (or mangle, or withhold) one reply frame."""
        f = self.faults
        if f is _NO_FAULTS or not f.active:
            return [Send(data)]
        if now < self.silent_until:
            self._count("silence")
            return []
        if f.silence is not None and f.silence[1] is not None and self._chance(f.silence[1]):
            self.silent_until = now + f.silence[0]
            self._count("silence")
            return []
        ops: list[Op] = []
        if f.delay:
            self._count("delay")
            ops.append(Sleep(f.delay))
        if self._chance(f.garbage):
            self._count("garbage")
            ops.append(Send(self._garbage()))
        if self._chance(f.fcs):
            self._count("fcs")
            data = _corrupt(data, hdlc=hdlc)
        if self._chance(f.reset) and len(data) >= 2:
            self._count("reset")
            ops.append(Send(data[: self.rng.randint(1, len(data) - 1)]))
            ops.append(Reset())
            return ops
        if f.drip is not None:
            self._count("drip")
            for i in range(len(data)):
                if i:
                    ops.append(Sleep(f.drip))
                ops.append(Send(data[i : i + 1]))
        elif self._chance(f.chunks) and len(data) >= 2:
            self._count("chunks")
            cuts = sorted(
                self.rng.sample(range(1, len(data)), min(len(data) - 1, self.rng.randint(1, 5)))
            )
            start = 0
            for cut in [*cuts, len(data)]:
                if start:
                    # A pause so the pieces leave as separate TCP segments.
                    ops.append(Sleep(0.002))
                ops.append(Send(data[start:cut]))
                start = cut
        else:
            ops.append(Send(data))
        return ops

    def _garbage(self) -> bytes:
        rng = self.rng
        return bytes(
            rng.choice(_GARBAGE_BYTES) if rng.random() < 0.6 else rng.randrange(256)
            for _ in range(rng.randint(4, 48))
        )


def _corrupt(data: bytes, *, hdlc: bool) -> bytes:
    """The reply with a bad check: the FCS of an HDLC frame, the version of a wrapper PDU."""
    raw = bytearray(data)
    if hdlc and len(raw) >= 4:
        raw[-2] ^= 0x5A  # the FCS's second byte, just before the closing flag
    elif len(raw) >= 2:
        raw[0] ^= 0xA5
        raw[1] ^= 0x5A
    return bytes(raw)
