"""Codec fixtures: every hot-path test runs against each implementation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from codec import steady
from codec._speedups import available

IMPLEMENTATIONS = available()

if os.environ.get("DLMS_BRIDGE_REQUIRE_EXTENSION"):
    for _name, _built in (
        ("codec._hdlc_c", "cython" in IMPLEMENTATIONS),
        ("codec._steady_c", "cython" in steady.implementations()),
    ):
        if not _built:
            raise pytest.UsageError(
                f"DLMS_BRIDGE_REQUIRE_EXTENSION is set but the Cython extension {_name} is not "
                "built: run `pip install -e .` (or `python setup.py build_ext --inplace`)"
            )

#: The project's shared vectors (../shared from the project root), and the copy kept in tests/data
#: so that a checkout without ../shared still runs every vector test.
SHARED_VECTORS = (
    Path(__file__).resolve().parents[3] / "shared" / "vectors" / "real-meter-frames.json"
)
LOCAL_VECTORS = Path(__file__).resolve().parents[1] / "data" / "real-meter-frames.json"


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def hdlc_impl(request: pytest.FixtureRequest) -> ModuleType:
    """The HDLC hot-path module under test: ``codec._hdlc_py`` or ``codec._hdlc_c``."""
    return IMPLEMENTATIONS[request.param]


def load_vectors() -> dict[str, Any]:
    """The real meter frames and field-meter facts shared with the project."""
    path = SHARED_VECTORS if SHARED_VECTORS.exists() else LOCAL_VECTORS
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    """The parsed real-meter-frames.json."""
    return load_vectors()
