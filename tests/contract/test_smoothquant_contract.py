"""``SmoothQuantModifier`` runs the one-shot modifier contract (``modfsm.engine.tools.testing``).

Like the one-shot classes of ``test_shipped_modifiers.py``: ``CALIBRATION_START`` marks it
started and ``CALIBRATION_END`` ended, whatever ``start``/``end`` say, in both pipelines
and around training loops; a checkpoint taken anywhere resumes to the same model.
"""

from __future__ import annotations

from modfsm.engine import Modifier
from modfsm.modifiers.smoothing import SmoothQuantModifier
from tests.contract.test_shipped_modifiers import OneShotOnALlamaContract


class TestSmoothQuantOnATransformersModelContract(OneShotOnALlamaContract):
    """Both Llama-family mappings of a one-layer Llama, called with a padded batch."""

    def make_modifier(self, start: float | None, end: float | None) -> Modifier:
        return SmoothQuantModifier(smoothing_strength=0.5, start=start, end=end)
