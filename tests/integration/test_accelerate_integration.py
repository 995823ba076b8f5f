"""A session in a real ``accelerate`` loop: ``AcceleratedOptimizer``, ``accumulate()``, a
shorter last accumulation, ``save_state``/``load_state``; the same windows as a loop
written by hand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

accelerate = pytest.importorskip("accelerate")

from modfsm.engine import ConfigError  # noqa: E402
from modfsm.engine.integrations.accelerate import initialize, new_session  # noqa: E402
from modfsm.engine.loop.session import Session  # noqa: E402
from modfsm.engine.tools.replay import verify  # noqa: E402
from tests.doubles import WindowLog  # noqa: E402

BATCHES = 10  # per epoch: with 3 batches a step, the last accumulation has 1 batch
ACCUMULATION = 3


@pytest.fixture(autouse=True)
def fresh_accelerate() -> Iterator[None]:
    """accelerate keeps its state per process: each test starts from none."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def _data() -> torch.utils.data.DataLoader[tuple[torch.Tensor, ...]]:
    """``BATCHES`` batches of 4, in a fixed order."""
    inputs = torch.randn(BATCHES * 4, 5, generator=torch.Generator().manual_seed(1))
    pairs = torch.utils.data.TensorDataset(inputs, inputs.sum(1, keepdim=True))
    return torch.utils.data.DataLoader(pairs, batch_size=4, shuffle=False)


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _accelerated(
    epochs: int,
    *,
    stop_after: int | None = None,
    save: Path | None = None,
    resume: Path | None = None,
    skip: int = 0,
) -> tuple[torch.nn.Module, WindowLog, Session]:
    """Train for ``epochs`` with accelerate; save the state after batch ``stop_after`` of
    the first epoch and stop there, or resume from ``resume``, skipping the first ``skip``
    batches of the first epoch."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=ACCUMULATION)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model, optimizer, loader = accelerator.prepare(model, optimizer, _data())
    modifier = WindowLog(start=2, end=5, loss_factor=3)
    session = new_session(accelerator)
    if resume is not None:
        accelerator.load_state(str(resume))  # the session resumes at initialize
    initialize(session, accelerator, model=model, optimizer=optimizer, recipe=[modifier],
               trace=True)  # fmt: skip
    for epoch in range(epochs):
        batches = loader
        if skip and epoch == 0:
            batches = accelerator.skip_first_batches(loader, skip)
        for inputs, targets in batches:
            with accelerator.accumulate(model):
                session.batch_start((inputs, targets))
                loss = torch.nn.functional.mse_loss(model(inputs), targets)
                accelerator.backward(session.loss_calculated(loss).loss)
                optimizer.step()
                optimizer.zero_grad()
                session.batch_end()
            if stop_after is not None and session.global_batch == stop_after:
                assert save is not None
                accelerator.save_state(str(save))
                return model, modifier, session
    session.finalize()
    return model, modifier, session


def _by_hand(epochs: int) -> tuple[torch.nn.Module, WindowLog]:
    """The same training written by hand: the loop reports the steps itself."""
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    modifier = WindowLog(start=2, end=5, loss_factor=3)
    session = Session()
    session.initialize(model=model, optimizer=optimizer, recipe=[modifier],
                       batches_per_step=ACCUMULATION)  # fmt: skip
    for _ in range(epochs):
        for position, (inputs, targets) in enumerate(_data()):
            session.batch_start((inputs, targets))
            loss = torch.nn.functional.mse_loss(model(inputs), targets)
            (session.loss_calculated(loss).loss / ACCUMULATION).backward()
            last = position == BATCHES - 1
            if (position + 1) % ACCUMULATION == 0 or last:
                session.optim_pre_step(partial=(position + 1) % ACCUMULATION != 0)
                optimizer.step()
                session.optim_post_step()
                optimizer.zero_grad()
            session.batch_end()
    session.finalize()
    return model, modifier


def test_windows_open_and_close_at_the_steps_of_a_loop_written_by_hand() -> None:
    model, modifier, session = _accelerated(epochs=2)
    hand_model, hand_modifier = _by_hand(epochs=2)
    assert modifier.log == hand_modifier.log
    assert ("start", 2, 6) in modifier.log
    assert ("end", 5, 13) in modifier.log  # 4 steps an epoch (3, 3, 3, 1 batches)
    assert (session.global_step, session.global_batch) == (8, 20)
    for ours, theirs in zip(model.parameters(), hand_model.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)  # the tripled loss trained both alike
    assert session.trace is not None
    assert verify(session.trace.records).ok


def test_a_run_resumed_from_accelerates_checkpoint_equals_the_uninterrupted_one(
    tmp_path: Path,
) -> None:
    whole_model, whole_modifier, _ = _accelerated(epochs=2)
    # Saved after a step (gradients being accumulated are not part of a checkpoint).
    _, first, _ = _accelerated(epochs=2, stop_after=6, save=tmp_path / "state")
    assert (tmp_path / "state" / "custom_checkpoint_0.pkl").is_file()  # the session's
    resumed_model, second, session = _accelerated(epochs=2, resume=tmp_path / "state", skip=6)
    assert first.log + second.log == whole_modifier.log
    assert (session.global_step, session.global_batch) == (8, 20)
    for ours, theirs in zip(resumed_model.parameters(), whole_model.parameters(), strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize(("name", "value"), [("batches_per_step", 2), ("wrap_optimizer", False)])
def test_settings_that_contradict_the_accelerator_are_refused(name: str, value: Any) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=ACCUMULATION)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    session = new_session(accelerator)
    with pytest.raises(ConfigError, match=f"{name}={value!r} contradicts the accelerator"):
        initialize(session, accelerator, model=model, optimizer=optimizer, **{name: value})
    assert session.position == "created"
