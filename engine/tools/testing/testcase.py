"""``ModifierContract``: the base test class that runs the contract under pytest."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from modfsm.engine.runtime.modifier import Modifier
from modfsm.engine.tools.testing import strategies
from modfsm.engine.tools.testing._hypothesis import st
from modfsm.engine.tools.testing.contract import Contract
from modfsm.engine.tools.testing.defaults import (
    default_loss,
    default_model,
    default_optimizer,
    input_width,
    random_batch,
)
from modfsm.engine.tools.testing.scenario import Schedule, Stream

__all__ = ["ModifierContract"]


class ModifierContract:
    """Base test class: subclass it, implement :meth:`make_modifier`, and pytest runs the contract.

    Override ``make_model``, ``make_batch``, ``loss``, ``make_optimizer``,
    ``make_calib_data`` or ``make_teacher_model`` where the defaults (a small MLP,
    random batches) do not fit, and set the class attributes to declare what the
    modifier does.

    Class attributes:
        changes_model_before_start: the modifier changes the model before its window
            opens (on purpose); default False.
        holds_after_end: its effect stays in force after the window closes, until
            finalize (pruning masks kept, fake quantization left on); default False.
        schedules: the windows to try (default :func:`strategies.contract_schedules`).
        streams: the training loops to try (default :func:`strategies.event_streams`).
        max_examples: runs per check (default: a tenth of the hypothesis profile's, at
            least 20).
    """

    changes_model_before_start: ClassVar[bool] = False
    holds_after_end: ClassVar[bool] = False
    schedules: ClassVar[st.SearchStrategy[Schedule]] = strategies.contract_schedules()
    streams: ClassVar[st.SearchStrategy[Stream]] = strategies.event_streams()
    max_examples: ClassVar[int | None] = None

    def make_modifier(self, start: float | None, end: float | None) -> Modifier:
        """A new modifier with the window ``[start, end)``."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement make_modifier(self, start, end) and return "
            "a new modifier with that window."
        )

    def make_model(self) -> torch.nn.Module:
        """A new model (default :func:`default_model`)."""
        return default_model()

    def make_batch(self, index: int) -> Any:
        """The inputs of batch ``index``: a tensor, or a dict of keyword arguments for
        ``model(**batch)`` (default: 4 random rows, as wide as the model's input)."""
        return random_batch(index, input_width(self.make_model()))

    def loss(self, output: Any) -> torch.Tensor:
        """The loss of an output (default: a smooth function of every output value; of an
        output object's ``logits``)."""
        return default_loss(output)

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        """A new optimizer for ``model`` (default SGD with momentum)."""
        return default_optimizer(model)

    def make_calib_data(self) -> Any:
        """Calibration data for ``Session.initialize(calib_data=...)`` (default None)."""
        return None

    def make_teacher_model(self) -> torch.nn.Module | None:
        """A teacher for ``Session.initialize(teacher_model=...)`` (default None)."""
        return None

    def contract(self) -> Contract:
        """The :class:`Contract` these methods and attributes describe."""
        overridden = type(self).make_batch is not ModifierContract.make_batch
        return Contract(
            make_modifier=self.make_modifier,
            make_model=self.make_model,
            make_batch=self.make_batch if overridden else None,
            loss=self.loss,
            make_optimizer=self.make_optimizer,
            make_calib_data=self.make_calib_data,
            make_teacher_model=self.make_teacher_model,
            schedules=self.schedules,
            streams=self.streams,
            changes_model_before_start=self.changes_model_before_start,
            holds_after_end=self.holds_after_end,
            max_examples=self.max_examples,
        )

    def test_lifecycle_follows_the_specification(self) -> None:
        self.contract().check_lifecycle()

    def test_illegal_calls_raise_and_change_nothing(self) -> None:
        self.contract().check_illegal_calls()

    def test_no_torch_hook_survives_finalize(self) -> None:
        self.contract().check_hooks_released()

    def test_the_model_is_untouched_outside_the_window(self) -> None:
        self.contract().check_untouched_outside_window()

    def test_a_resumed_run_equals_an_uninterrupted_one(self) -> None:
        self.contract().check_resume()
