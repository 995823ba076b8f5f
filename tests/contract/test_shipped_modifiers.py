"""Every modifier in ``modifiers/`` runs the modifier contract (``modfsm.engine.tools.testing``).

Each class below is the whole test: ``ModifierContract`` supplies the five checks
(lifecycle, illegal calls, torch hooks, outside the window, resume). The classes
say what each modifier does on purpose: pruning masks and fake quantization stay
in force after the window (``holds_after_end``) where the modifier keeps them.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from modfsm.engine import Modifier
from modfsm.engine.tools.testing import ModifierContract, strategies
from modfsm.engine.tools.testing._hypothesis import st
from modfsm.modifiers.distillation import OutputDistillationModifier
from modfsm.modifiers.pruning import (
    ConstantPruningModifier,
    MagnitudePruningModifier,
    SparseGPTModifier,
)
from modfsm.modifiers.quantization import GPTQModifier, QuantizationModifier
from tests.doubles import tiny_llama


def model_with_zeros() -> torch.nn.Module:
    """The contract's default model, with a third of the first layer's weights at zero."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    first = model[0]
    assert isinstance(first, torch.nn.Linear)
    with torch.no_grad():
        first.weight[:, ::3] = 0.0
    return model


class TestConstantPruningContract(ModifierContract):
    """Masks recorded at start, applied after each step in the window, dropped at its end."""

    def make_modifier(self, start: float | None, end: float | None) -> Modifier:
        return ConstantPruningModifier(start=start, end=end)

    def make_model(self) -> torch.nn.Module:
        return model_with_zeros()  # so the masks it records prune something


class TestMagnitudePruningContract(ModifierContract):
    """With ``leave_enabled`` (the default) the final masks stay applied until finalize."""

    holds_after_end = True

    def make_modifier(self, start: float | None, end: float | None) -> Modifier:
        return MagnitudePruningModifier(
            init_sparsity=0.1, final_sparsity=0.5, update=1, start=start, end=end
        )


class TestMagnitudePruningWithoutLeaveEnabledContract(ModifierContract):
    """Without ``leave_enabled`` the masks are dropped at the end: the model is left alone."""

    def make_modifier(self, start: float | None, end: float | None) -> Modifier:
        return MagnitudePruningModifier(
            final_sparsity=0.5, leave_enabled=False, start=start, end=end
        )


def test_magnitude_pruning_leaves_the_model_alone_when_its_window_never_opens() -> None:
    # Every window, not only the contract's mix of early-opening ones: on_end runs on a
    # modifier that never started when no step falls inside [start, end).
    contract = TestMagnitudePruningContract().contract()
    attrs.evolve(contract, schedules=strategies.schedules()).check_untouched_outside_window()


class TestQuantizationContract(ModifierContract):
    """int8 with static input scales; fake quantization stays on after the window until finalize.

    With calibration data, so that a one-shot window (``start: -1``) is accepted.
    """

    holds_after_end = True

    def make_modifier(self, start: float | None, end: float | None) -> Modifier:
        groups = {
            "int8": {
                "targets": ["Linear"],
                "weights": {"num_bits": 8, "strategy": "channel"},
                "input_activations": {"num_bits": 8, "observer": "moving_average"},
            }
        }
        return QuantizationModifier(config_groups=groups, start=start, end=end)

    def make_calib_data(self) -> Any:
        generator = torch.Generator().manual_seed(7)
        return [torch.randn(4, 8, generator=generator) for _ in range(2)]


def _teacher() -> torch.nn.Module:
    """A wider teacher for the contract's default model (8 inputs, 4 outputs)."""
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))


class TestOutputDistillationContract(ModifierContract):
    """Inside its window the loss the loop trains on is the modifier's; outside it the
    teacher is not even run."""

    def make_modifier(self, start: float | None, end: float | None) -> Modifier:
        return OutputDistillationModifier(
            targets="2", comparison_args={"temperature": 2.0}, start=start, end=end
        )

    def make_teacher_model(self) -> torch.nn.Module:
        return _teacher()


class TestPruningOnATransformersModelContract(ModifierContract):
    """A model called with keyword arguments (a dict batch) that returns an output object."""

    max_examples = 8

    def make_modifier(self, start: float | None, end: float | None) -> Modifier:
        return MagnitudePruningModifier(
            targets="re:.*proj", final_sparsity=0.5, update=1, start=start, end=end
        )

    def make_model(self) -> torch.nn.Module:
        model: torch.nn.Module = tiny_llama()
        return model

    def make_batch(self, index: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(index))
        return {"input_ids": ids, "attention_mask": torch.ones(2, 5, dtype=torch.long)}

    holds_after_end = True


# --- one-shot modifiers (CALIBRATION_LIFECYCLE) ---------------------------------------------

class _OneShotContract(ModifierContract):
    """A one-shot modifier compresses inside its calibration: ``CALIBRATION_START`` marks it
    started and ``CALIBRATION_END`` ended, whatever ``start``/``end`` say; a calibration
    after its training window closed still acts (the table runs its hook there), which the
    kit allows. Streams: the kit's one-shot scenarios (both pipelines) and training loops."""

    streams = st.one_of(strategies.calibration_streams(), strategies.event_streams())


class TestGPTQContract(_OneShotContract):
    """Int8 weights per channel (the default model's layers are 8 and 16 wide)."""

    def make_modifier(self, start: float | None, end: float | None) -> Modifier:
        return GPTQModifier(scheme="W8A16", start=start, end=end)


class TestSparseGPTContract(_OneShotContract):
    """Half of every Linear layer's weights pruned, unstructured."""

    def make_modifier(self, start: float | None, end: float | None) -> Modifier:
        return SparseGPTModifier(sparsity=0.5, start=start, end=end)


class OneShotOnALlamaContract(_OneShotContract):
    """The one-shot contract on a one-layer transformers Llama called with a padded batch
    (the base of the contracts of modifiers that need a Llama: mappings, decoder layers)."""

    max_examples = 8

    def make_model(self) -> torch.nn.Module:
        model: torch.nn.Module = tiny_llama()
        return model

    def make_batch(self, index: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(index))
        mask = torch.ones(2, 5, dtype=torch.long)
        mask[1, :2] = 0  # the second sequence is padded on the left
        return {"input_ids": ids, "attention_mask": mask}


class TestSparseGPTOnATransformersModelContract(OneShotOnALlamaContract):
    """2:4 inside the decoder layers of a Llama called with a padded batch."""

    def make_modifier(self, start: float | None, end: float | None) -> Modifier:
        return SparseGPTModifier(
            sparsity=0.5, mask_structure="2:4", targets="re:model.layers.\\d+$", start=start,
            end=end,
        )  # fmt: skip
