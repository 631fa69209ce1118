"""Pick each hot path: its Cython extension, or its pure-Python twin.

The extension is used when it was built and ``DLMS_BRIDGE_NO_EXTENSIONS`` is not set to a
true value; otherwise the twin. Both expose the same API and behave identically. ``impl`` is the
HDLC hot path (``_hdlc_c`` / ``_hdlc_py``); :func:`select` picks any other one (the steady-reply
decoder, ``_steady_c`` / ``_steady_py``, by :mod:`codec.steady`).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from codec import _hdlc_py


def _extensions_disabled() -> bool:
    return os.environ.get("DLMS_BRIDGE_NO_EXTENSIONS", "").strip().lower() not in ("", "0", "false")


def _load() -> tuple[ModuleType, str]:
    if _extensions_disabled():
        return _hdlc_py, "python"
    try:
        from codec import _hdlc_c  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        return _hdlc_py, "python"
    return _hdlc_c, "cython"


impl, IMPLEMENTATION = _load()


def available() -> dict[str, ModuleType]:
    """Every importable implementation by name: ``"python"`` always, ``"cython"`` if built."""
    found: dict[str, ModuleType] = {"python": _hdlc_py}
    try:
        from codec import _hdlc_c  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        pass
    else:
        found["cython"] = _hdlc_c
    return found


def select(twin: ModuleType, extension: str) -> tuple[ModuleType, str]:
    """The extension module ``codec.<extension>`` or its pure-Python ``twin``, by the same rule
    as the HDLC hot path; with the name of the one chosen (``"cython"`` or ``"python"``)."""
    found = available_of(twin, extension)
    if _extensions_disabled() or "cython" not in found:
        return twin, "python"
    return found["cython"], "cython"


def available_of(twin: ModuleType, extension: str) -> dict[str, ModuleType]:
    """Every importable implementation of one hot path: ``"python"`` (``twin``) always,
    ``"cython"`` (``codec.<extension>``) if built."""
    found: dict[str, ModuleType] = {"python": twin}
    try:
        found["cython"] = importlib.import_module(f"codec.{extension}")
    except ImportError:
        pass
    return found
