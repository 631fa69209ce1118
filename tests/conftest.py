"""Test-wide settings: Hypothesis profiles, the ``slow`` marker.

``DLMS_BRIDGE_HYPOTHESIS=deep`` selects the long-running profile; the default is quick
enough for CI. Tests marked ``slow`` (real-I/O scale tests) are skipped unless
``DLMS_BRIDGE_SLOW=1`` is set or ``-m`` selects them (``pytest -m slow``).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "deep",
    max_examples=20_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("DLMS_BRIDGE_HYPOTHESIS", "ci"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the ``slow`` tests in the default suite."""
    if os.environ.get("DLMS_BRIDGE_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: set DLMS_BRIDGE_SLOW=1 or run pytest -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
