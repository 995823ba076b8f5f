"""Shared pytest configuration: hypothesis profiles.

``dev`` (default) keeps the suite quick; ``ci`` (``HYPOTHESIS_PROFILE=ci``, set by
``.ci/run``) explores more examples; ``mutation`` (``make mutation``) is
derandomized. None has a deadline: timing belongs in
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
# `make mutation`: fewer examples (each mutant runs its tests afresh), the same
# ones for every mutant (a kill or a survival is reproducible), no database.
settings.register_profile(
    "mutation", max_examples=30, deadline=None, derandomize=True, database=None
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
