"""Type stub of the Cython steady-reply decoder (same API as codec._steady_py)."""

from collections.abc import Sequence

from codec.client import RegisterReading, RegisterSpec
from codec.values import JsonValue

_BytesLike = bytes | bytearray | memoryview

class SteadyReading:
    invoke: int
    values: dict[str, JsonValue]
    quality: dict[str, str]
    errors: dict[str, tuple[str, str]]
    labels: dict[str, str]
    values_json: bytes | None
    def __init__(
        self,
        invoke: int,
        values: dict[str, JsonValue],
        quality: dict[str, str],
        errors: dict[str, tuple[str, str]],
        labels: dict[str, str],
        values_json: bytes | None = None,
    ) -> None: ...
    def as_tuple(
        self,
    ) -> tuple[
        int,
        dict[str, JsonValue],
        dict[str, str],
        dict[str, tuple[str, str]],
        dict[str, str],
        bytes | None,
    ]: ...

class SteadyDecoder:
    specs: tuple[RegisterSpec, ...]
    keys: tuple[str, ...]
    units: dict[str, str | None]
    def __init__(
        self, specs: Sequence[RegisterSpec], readings: Sequence[RegisterReading]
    ) -> None: ...
    def decode_info(self, info: _BytesLike, invoke_id: int = -1) -> SteadyReading | None: ...
    def decode(
        self, buf: _BytesLike, start: int = 0, invoke_id: int = -1
    ) -> SteadyReading | None: ...
