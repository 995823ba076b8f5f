"""The training loop the contract runs: a stream's calls on a model, optimizer and session.

Each call of a :class:`~modfsm.engine.tools.testing.scenario.Stream` becomes the session call
and the torch work a real loop does around it::

    batch_start           session.batch_start(inputs)
    loss_calculated       loss = loss(model(inputs)); session.loss_calculated(loss);
                          (loss / batches_per_step).backward()
    optim_pre_step        session.optim_pre_step(); optimizer.step()
    partial_step          session.optim_pre_step(partial=True); optimizer.step()
    optim_post_step       session.optim_post_step(); optimizer.zero_grad()
    batch_end             optimizer.zero_grad() if the due step was skipped; session.batch_end()
    sequential_epoch_end  a forward pass in eval mode without gradients; the event, with
                          ``modules=[model]`` (the whole model as the block that ended)
    calibration_epoch_end a forward pass in eval mode without gradients (the basic
                          pipeline's calibration data); the event
    other calls           the event

A run *without* a modifier (``session=None``) does the same torch work and no
session calls: the shadow the contract compares the model with. Inputs depend
on the batch index only, and torch's (CPU) random generator is reseeded before
each call from the call's index, so the model draws the same random numbers in
every run whatever a modifier draws.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable, Mapping
from typing import Any, Final

import torch

from modfsm.engine.loop.session import Session
from modfsm.engine.runtime.modifier import Modifier
from modfsm.engine.tools.testing.scenario import LOOP_CALLS, Stream
from modfsm.engine.tools.testing.spy import LifecycleSpy

__all__ = ["Checkpoint", "LoopParts", "Run", "reseed", "through_torch"]

_SEED: Final = 20_240_917
_CALIBRATION_BATCH: Final = 1_000_000
_STEP_DUE: Final = frozenset({"step_due", "step_due_loss"})

Checkpoint = dict[str, Any]
"""What a run saves: the session, the model, the optimizer and the gradients."""


def through_torch(checkpoint: Checkpoint) -> Checkpoint:
    """``checkpoint`` after ``torch.save`` and ``torch.load(weights_only=True)``, as a file would
    give it back."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    loaded: Checkpoint = torch.load(buffer, weights_only=True)
    return loaded


def reseed(seed: int) -> None:
    """Reseed torch's CPU generator (``torch.manual_seed`` also seeds every accelerator
    backend, which costs a hundred times more; the contract's runs are on the CPU)."""
    torch.default_generator.manual_seed(seed)


class LoopParts:
    """How to build one run's objects; the contract fills it from the author's factories."""

    def __init__(
        self,
        *,
        make_model: Callable[[], torch.nn.Module],
        make_optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
        make_batch: Callable[[int], Any],
        loss: Callable[[Any], torch.Tensor],
        make_calib_data: Callable[[], Any],
        make_teacher_model: Callable[[], torch.nn.Module | None],
    ) -> None:
        self.make_model = make_model
        self.make_optimizer = make_optimizer
        self.make_batch = make_batch
        self.loss = loss
        self.make_calib_data = make_calib_data
        self.make_teacher_model = make_teacher_model


def call_model(model: torch.nn.Module, batch: Any) -> Any:
    """The model on a batch: ``model(**batch)`` for a mapping of keyword arguments (as
    transformers models are called), else ``model(batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    return model(batch)


class Run:
    """One run of a stream: a fresh model and optimizer, and a spied modifier in a session.

    With ``modifier=None`` it is the shadow run: the same torch work, no session.
    """

    def __init__(self, parts: LoopParts, stream: Stream, modifier: Modifier | None) -> None:
        self.parts = parts
        self.stream = stream
        reseed(_SEED)
        self.model = parts.make_model()
        self.optimizer = parts.make_optimizer(self.model)
        self.modifier = modifier
        self.spy = LifecycleSpy(modifier) if modifier is not None else None
        self.session = Session() if modifier is not None else None
        self.teacher_model = parts.make_teacher_model()

    def initialize(self, checkpoint: Checkpoint | None = None) -> None:
        """Initialize the session, or resume it from ``checkpoint`` (see :meth:`save`)."""
        if self.session is None:
            return
        reseed(_SEED - 1)
        if checkpoint is not None:
            self.model.load_state_dict(checkpoint["model"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
            for parameter, grad in zip(self.model.parameters(), checkpoint["grads"], strict=True):
                parameter.grad = grad
            self.session.load_state_dict(checkpoint["session"])
        self.session.initialize(
            model=self.model,
            optimizer=self.optimizer,
            recipe=[self.modifier],
            batches_per_step=self.stream.batches_per_step,
            steps_per_epoch=self.stream.steps_per_epoch,
            calib_data=self.parts.make_calib_data(),
            teacher_model=self.teacher_model,
        )

    def call(self, index: int) -> None:
        """Make call ``index`` of the stream, with the torch work around it."""
        stream, session, model = self.stream, self.session, self.model
        name, event = stream.calls[index], stream.events[index]
        reseed(_SEED + index)
        if name == "batch_start":
            if session is not None:
                session.batch_start(self.parts.make_batch(event.global_batch))
        elif name == "loss_calculated":
            loss = self.parts.loss(call_model(model, self.parts.make_batch(event.global_batch)))
            if session is not None:
                loss = session.loss_calculated(loss).loss  # a modifier may have replaced it
            (loss / stream.batches_per_step).backward()  # type: ignore[no-untyped-call]  # torch's backward is untyped
        elif name in ("optim_pre_step", "partial_step"):
            if session is not None:
                session.optim_pre_step(partial=name == "partial_step")
            self.optimizer.step()
        elif name == "optim_post_step":
            if session is not None:
                session.optim_post_step()
            self.optimizer.zero_grad()
        elif name == "batch_end":
            if stream.positions[index] in _STEP_DUE:
                self.optimizer.zero_grad()  # the due step was skipped, as a GradScaler skips it
            if session is not None:
                session.batch_end()
        else:
            if name in ("sequential_epoch_end", "calibration_epoch_end"):
                was_training = model.training
                model.eval()
                with torch.no_grad():
                    call_model(
                        model, self.parts.make_batch(_CALIBRATION_BATCH + event.global_batch)
                    )
                model.train(was_training)
            if session is not None:
                # a one-block pipeline: the whole model is the block that ended
                extra: dict[str, Any] = {"modules": [model]} if (
                    name == "sequential_epoch_end") else {}  # fmt: skip
                session.event(LOOP_CALLS[name][0], **extra)

    def finalize(self) -> None:
        """Finalize the session."""
        if self.session is not None:
            reseed(_SEED + len(self.stream.calls))
            self.session.finalize()

    def save(self) -> Checkpoint:
        """What a loop saves to resume, copied (pass it through :func:`through_torch` to load)."""
        assert self.session is not None, "the shadow run has nothing to save"
        return copy.deepcopy(
            {
                "session": self.session.state_dict(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "grads": [parameter.grad for parameter in self.model.parameters()],
            }
        )

    def copy_training_state(self, other: Run) -> None:
        """Make this run's weights, gradients and optimizer state equal ``other``'s."""
        with torch.no_grad():
            self.model.load_state_dict(other.model.state_dict())
        for mine, theirs in zip(self.model.parameters(), other.model.parameters(), strict=True):
            mine.grad = None if theirs.grad is None else theirs.grad.detach().clone()
        self.optimizer.load_state_dict(copy.deepcopy(other.optimizer.state_dict()))

    def close(self) -> None:
        """Detach the spy and remove the modifier's torch hooks (the run is over)."""
        if self.spy is not None:
            self.spy.detach()
        if self.modifier is not None:
            self.modifier.remove_hooks()
