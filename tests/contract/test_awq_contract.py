"""AWQModifier runs the modifier contract (``modfsm.engine.tools.testing``), as one-shot."""

from __future__ import annotations

import torch

from modfsm.engine import Modifier
from modfsm.modifiers.awq import AWQModifier
from tests.contract.test_shipped_modifiers import _OneShotContract
from tests.doubles import tiny_llama


class TestAWQContract(_OneShotContract):
    """4-bit asymmetric groups of 8 (the one-layer Llama is 16 wide), every default mapping
    (``v_proj -> o_proj`` too: no grouped-query attention), ``lm_head`` by round-to-nearest;
    a padded batch."""

    max_examples = 8

    def make_modifier(self, start: float | None, end: float | None) -> Modifier:
        return AWQModifier(
            config_groups={"group_0": {"targets": ["Linear"], "weights": {
                "num_bits": 4, "symmetric": False, "strategy": "group", "group_size": 8}}},
            n_grid=5, start=start, end=end,
        )  # fmt: skip

    def make_model(self) -> torch.nn.Module:
        model: torch.nn.Module = tiny_llama()
        return model

    def make_batch(self, index: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(index))
        mask = torch.ones(2, 5, dtype=torch.long)
        mask[1, :2] = 0  # the second sequence is padded on the left
        return {"input_ids": ids, "attention_mask": mask}
