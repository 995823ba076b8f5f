"""Shared pytest configuration: hypothesis profiles.

``dev`` (default) keeps the suite quick; ``ci`` (``HYPOTHESIS_PROFILE=ci``, set by
``.ci/run``) explores more examples. Neither has a deadline: timing belongs in
``benchmarks/``.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=150, deadline=None)
settings.register_profile(
    "ci",
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
