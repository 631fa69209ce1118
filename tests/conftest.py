"""Test-wide settings: Hypothesis profiles.

``DLMS_BRIDGE_HYPOTHESIS=deep`` selects the long-running profile; the default is quick
enough for CI.
"""

from __future__ import annotations

import os

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
