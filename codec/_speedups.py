"""Pick the HDLC hot path: the Cython extension, or its pure-Python twin.

The extension is used when it was built and ``DLMS_BRIDGE_NO_EXTENSIONS`` is not set to a
true value; otherwise the twin. Both expose the same API and behave identically.
"""

from __future__ import annotations

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
