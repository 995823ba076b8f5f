"""AWQModifier runs the modifier contract (``modfsm.engine.tools.testing``), as one-shot."""

from __future__ import annotations

from modfsm.engine import Modifier
from modfsm.modifiers.awq import AWQModifier
from tests.contract.test_shipped_modifiers import OneShotOnALlamaContract


class TestAWQContract(OneShotOnALlamaContract):
    """4-bit asymmetric groups of 8 (the one-layer Llama is 16 wide), every default mapping
    (``v_proj -> o_proj`` too: no grouped-query attention), ``lm_head`` by round-to-nearest;
    a padded batch."""

    def make_modifier(self, start: float | None, end: float | None) -> Modifier:
        return AWQModifier(
            config_groups={"group_0": {"targets": ["Linear"], "weights": {
                "num_bits": 4, "symmetric": False, "strategy": "group", "group_size": 8}}},
            n_grid=5, start=start, end=end,
        )  # fmt: skip
