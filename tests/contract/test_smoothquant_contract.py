"""``SmoothQuantModifier`` runs the one-shot modifier contract (``modfsm.engine.tools.testing``).

Like the one-shot classes of ``test_shipped_modifiers.py``: ``CALIBRATION_START`` marks it
started and ``CALIBRATION_END`` ended, whatever ``start``/``end`` say, in both pipelines
and around training loops; a checkpoint taken anywhere resumes to the same model.
"""

from __future__ import annotations

import torch

from modfsm.engine import Modifier
from modfsm.modifiers.smoothing import SmoothQuantModifier
from tests.contract.test_shipped_modifiers import _OneShotContract
from tests.doubles import tiny_llama


class TestSmoothQuantOnATransformersModelContract(_OneShotContract):
    """Both Llama-family mappings of a one-layer Llama, called with a padded batch."""

    max_examples = 8

    def make_modifier(self, start: float | None, end: float | None) -> Modifier:
        return SmoothQuantModifier(smoothing_strength=0.5, start=start, end=end)

    def make_model(self) -> torch.nn.Module:
        model: torch.nn.Module = tiny_llama()
        return model

    def make_batch(self, index: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(index))
        mask = torch.ones(2, 5, dtype=torch.long)
        mask[1, :2] = 0  # the second sequence is padded on the left
        return {"input_ids": ids, "attention_mask": mask}
