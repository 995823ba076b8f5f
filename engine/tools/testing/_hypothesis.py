"""The one place the test kit imports hypothesis (from the ``modfsm[test]`` extra).

``import modfsm.engine`` never needs hypothesis. Every module of :mod:`modfsm.engine.tools.testing`
takes hypothesis' names from here, so a missing hypothesis fails with a message
that names the extra to install instead of a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

try:
    import hypothesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
except ModuleNotFoundError as error:  # tests/contract/test_kit.py runs this in a subprocess
    if error.name is None or error.name.partition(".")[0] != "hypothesis":
        raise
    raise ImportError(
        "modfsm.engine.tools.testing needs hypothesis, which is not installed. To fix, "
        "install the test extra: pip install 'modfsm[test]' (it brings hypothesis and pytest).",
        name="hypothesis",
    ) from error

__all__ = ["HealthCheck", "Phase", "given", "hypothesis", "settings", "st"]
