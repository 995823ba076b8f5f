"""A session in a real ``lightning.pytorch.Trainer``: closures, gradient accumulation with a
shorter last accumulation, Lightning checkpoints, a modifier that changes the loss; the same
windows, steps and weights as a loop written by hand."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("lightning")

import lightning.pytorch as pl

from modfsm.engine import ConfigError, Modifier
from modfsm.engine.integrations.lightning import (
    LightningIntegrationError,
    SessionCallback,
    modified_loss,
)
from modfsm.engine.loop.session import Session
from modfsm.engine.tools.replay import verify
from tests.doubles import WindowLog

# Lightning's LeafSpec FutureWarning (every fit) is ignored in pyproject.toml.

BATCHES = 10  # per epoch: with 3 batches a step, the last accumulation has 1 batch
ACCUMULATION = 3
STEPS_PER_EPOCH = 4  # after batches 3, 6, 9 and the partial step after batch 10
Log = list[tuple[str, int, int]]


def _loss(model: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    inputs, targets = batch
    return torch.nn.functional.mse_loss(model(inputs), targets)


class Net(pl.LightningModule):
    """A small MLP that trains on :func:`modified_loss` and records the gradients it steps."""

    def __init__(self, *, use_modified_loss: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
        )
        self.use_modified_loss = use_modified_loss
        self.stepped_grads: list[torch.Tensor] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        output: torch.Tensor = self.net(inputs)
        return output

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = _loss(self, batch)
        return modified_loss(self, loss) if self.use_modified_loss else loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grad = next(self.parameters()).grad  # the first layer's weight
        assert grad is not None
        self.stepped_grads.append(grad.clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class ManualNet(Net):
    """Steps its optimizer itself: the callback cannot see those steps."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False


class LBFGSNet(Net):
    """Its optimizer evaluates the closure (``training_step`` and ``backward``) several times
    in one step."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.LBFGS(self.parameters(), lr=0.1, max_iter=3)


class OverflowNet(Net):
    """Its loss is infinite in batch 5 of epoch 0 (a step batch): a GradScaler skips that step."""

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * float("inf") if (self.current_epoch, batch_idx) == (0, 5) else loss


class Crash(pl.Callback):
    """Fails the run at the start of global batch ``at`` (counted from the run's start)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch * BATCHES + batch_idx == self.at:
            raise RuntimeError("simulated crash")


class SaveInBatchEnd(pl.Callback):
    """Saves a checkpoint in ``on_train_batch_end`` of the last batch of the first epoch, before
    the SessionCallback's own ``on_train_batch_end`` (it comes first in the list)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == 0 and batch_idx == BATCHES - 1:
            trainer.save_checkpoint(self.path)


@pytest.fixture(autouse=True)
def deterministic_flag() -> Iterator[None]:
    """``Trainer(deterministic=True)`` switches torch's deterministic algorithms on for the
    whole process: put the setting back for the tests that run after these."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def _data() -> torch.utils.data.DataLoader[tuple[torch.Tensor, ...]]:
    """``BATCHES`` batches of 4, in a fixed order."""
    inputs = torch.randn(BATCHES * 4, 5, generator=torch.Generator().manual_seed(1))
    pairs = torch.utils.data.TensorDataset(inputs, inputs.sum(1, keepdim=True))
    return torch.utils.data.DataLoader(pairs, batch_size=4, shuffle=False)


def _trainer(root: Path, epochs: int, callbacks: list[Any], **options: Any) -> Any:
    pl.seed_everything(0, verbose=False)
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": epochs,
        "accumulate_grad_batches": ACCUMULATION,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "default_root_dir": root,
        "deterministic": True,
        "callbacks": callbacks,
    }
    settings.update(options)
    return pl.Trainer(**settings)


def _hand_written(recipe: list[Modifier], epochs: int) -> tuple[Net, Session]:
    """The same training as the Trainer's, in a loop written by hand: the loss divided by
    the accumulation, a step every ``ACCUMULATION`` batches and one, partial, at the end of
    each epoch."""
    model = Net()
    optimizer = model.configure_optimizers()
    session = Session()
    session.initialize(
        model=model, optimizer=optimizer, recipe=recipe, batches_per_step=ACCUMULATION, trace=True
    )
    for _ in range(epochs):
        for index, batch in enumerate(_data()):
            session.batch_start(batch)
            loss = session.loss_calculated(_loss(model, batch)).loss
            (loss / ACCUMULATION).backward()
            completes = (index + 1) % ACCUMULATION == 0
            if completes or index == BATCHES - 1:
                session.optim_pre_step(partial=not completes)
                optimizer.step()
                session.optim_post_step()
                optimizer.zero_grad()
            session.batch_end()
    session.finalize()
    return model, session


def _fit(
    root: Path,
    recipe: list[Modifier],
    epochs: int,
    *,
    model: Net | None = None,
    before: list[Any] | None = None,
    after: list[Any] | None = None,
    ckpt_path: Path | None = None,
    **options: Any,
) -> tuple[Net, SessionCallback, Any]:
    model = model if model is not None else Net()
    callback = SessionCallback(recipe, trace=True)
    trainer = _trainer(root, epochs, [*(before or []), callback, *(after or [])], **options)
    trainer.fit(model, _data(), ckpt_path=ckpt_path)
    return model, callback, trainer


def _model_checkpoint(folder: Path) -> Any:
    """Saves ``epoch0.ckpt`` at the end of the first epoch, and each epoch after it."""
    return pl.callbacks.ModelCheckpoint(
        dirpath=folder,
        filename="epoch{epoch}",
        auto_insert_metric_name=False,
        save_top_k=-1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
    )


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in model.parameters()]


def _bitwise_equal(first: list[torch.Tensor], second: list[torch.Tensor]) -> bool:
    return len(first) == len(second) and all(map(torch.equal, first, second))


def test_windows_open_and_close_at_the_steps_of_a_hand_written_loop(tmp_path: Path) -> None:
    # start 2: batch 6 of epoch 0; end 7: the step after batch 8 of epoch 1 (the 4 steps of
    # epoch 0 include the partial one after its last batch, 10 % 3 == 1), global batch 19.
    ours, hands = WindowLog(start=2, end=7), WindowLog(start=2, end=7)
    model, callback, trainer = _fit(tmp_path, [ours], epochs=2)
    hand_model, hand_session = _hand_written([hands], epochs=2)

    assert ours.log == hands.log
    assert ours.log[0] == ("start", 2, 6)
    assert ("end", 7, 19) in ours.log
    session = callback.session
    assert session is not None
    assert session.global_step == trainer.global_step == 2 * STEPS_PER_EPOCH
    assert session.global_batch == hand_session.global_batch == 2 * BATCHES
    assert _bitwise_equal(_weights(model), _weights(hand_model))


def test_the_trace_of_a_lightning_run_verifies(tmp_path: Path) -> None:
    _, callback, _ = _fit(tmp_path, [WindowLog(start=1, end=5)], epochs=2)
    session = callback.session
    assert session is not None
    assert session.trace is not None
    result = verify(session.trace.records)
    assert result.ok, result.divergence
    assert result.final_position == "finalized"


@pytest.mark.parametrize("where", ["model_checkpoint", "before_the_callbacks_batch_end"])
def test_resuming_from_a_lightning_checkpoint_equals_an_uninterrupted_run(
    tmp_path: Path, where: str
) -> None:
    """Saved at the end of epoch 0 (while the window is open), crashed in epoch 1, resumed
    with ``fit(ckpt_path=...)``: the modifier's hooks and the final weights are those of a
    run that never stopped."""
    epochs = 3
    uninterrupted = WindowLog(start=2, end=6)
    whole_model, _, _ = _fit(tmp_path / "whole", [uninterrupted], epochs)

    interrupted = WindowLog(start=2, end=6)
    saves = tmp_path / "saves"
    if where == "model_checkpoint":
        checkpoint = saves / "epoch0.ckpt"
        before, after = [], [_model_checkpoint(saves)]
        options: dict[str, Any] = {"enable_checkpointing": True}
    else:
        checkpoint = saves / "in_batch_end.ckpt"
        before, after, options = [SaveInBatchEnd(checkpoint)], [], {}
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(
            tmp_path / "crashed",
            [interrupted],
            epochs,
            before=before,
            after=[*after, Crash(at=BATCHES + 5)],
            **options,
        )
    # Out of the ModelCheckpoint's folder: the resumed one, saving there again, would warn
    # that the folder is not empty.
    checkpoint = checkpoint.rename(tmp_path / checkpoint.name)
    saved = torch.load(checkpoint, weights_only=True)["callbacks"]["SessionCallback"]["session"]
    # ModelCheckpoint runs after every other callback; SaveInBatchEnd before the batch ended.
    assert saved["position"] == ("idle" if where == "model_checkpoint" else "stepped")

    resumed = WindowLog(start=2, end=6)
    model, callback, trainer = _fit(
        tmp_path / "resumed",
        [resumed],
        epochs,
        ckpt_path=checkpoint,
        after=after and [_model_checkpoint(saves)],
        **options,
    )

    done = len(uninterrupted.log) - len(resumed.log)
    assert interrupted.log[:done] == uninterrupted.log[:done]
    assert resumed.log == uninterrupted.log[done:]
    assert resumed.log[0][2] == BATCHES  # from the first batch after the checkpoint
    assert ("end", 6, 16) in resumed.log
    assert _bitwise_equal(_weights(model), _weights(whole_model))
    session = callback.session
    assert session is not None
    assert session.trace is not None
    assert session.global_step == trainer.global_step == epochs * STEPS_PER_EPOCH
    assert verify(session.trace.records).ok


def test_a_closure_evaluated_several_times_reports_one_loss_and_one_step(tmp_path: Path) -> None:
    ours, hands = WindowLog(start=2, end=7), WindowLog(start=2, end=7)
    model, callback, trainer = _fit(tmp_path, [ours], epochs=2, model=LBFGSNet())
    _hand_written([hands], epochs=2)

    assert len(model.stepped_grads) > trainer.global_step  # LBFGS evaluated more than once
    assert ours.log == hands.log
    session = callback.session
    assert session is not None
    assert session.trace is not None
    assert session.global_step == trainer.global_step
    assert verify(session.trace.records).ok


def test_a_closure_evaluated_again_after_its_loss_was_replaced_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LightningIntegrationError, match=r"evaluates the closure again.*To fix"):
        _fit(tmp_path, [WindowLog(start=0, loss_factor=2.0)], epochs=1, model=LBFGSNet())


def test_a_step_a_grad_scaler_skips_is_not_reported(tmp_path: Path) -> None:
    from lightning.pytorch.plugins.precision import MixedPrecision

    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    recording = WindowLog(start=2, end=7)
    _, callback, trainer = _fit(
        tmp_path,
        [recording],
        epochs=2,
        model=OverflowNet(),
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
    )

    session = callback.session
    assert session is not None
    assert session.trace is not None
    # Lightning counts the skipped step; the session counts the steps taken.
    assert session.global_step == trainer.global_step - 1 == 2 * STEPS_PER_EPOCH - 1
    assert recording.log[0] == ("start", 2, 9)  # steps after batches 3 and 9, not 6
    assert verify(session.trace.records).ok


def test_a_modifier_that_replaces_the_loss_changes_the_gradients_stepped(
    tmp_path: Path,
) -> None:
    plain, _, _ = _fit(tmp_path / "plain", [WindowLog(start=2, end=4)], epochs=1)
    doubled, _, _ = _fit(tmp_path / "doubled", [WindowLog(start=2, end=4, loss_factor=2.0)], 1)

    assert len(plain.stepped_grads) == len(doubled.stepped_grads) == STEPS_PER_EPOCH
    for before in range(2):  # before the window: the same training
        assert torch.equal(plain.stepped_grads[before], doubled.stepped_grads[before])
    # The window opens at step 2: its gradients are the doubled loss's (exactly: times 2).
    assert torch.equal(doubled.stepped_grads[2], 2 * plain.stepped_grads[2])
    assert not _bitwise_equal(_weights(plain), _weights(doubled))


def test_a_replaced_loss_the_module_does_not_train_on_is_refused_naming_the_fix(
    tmp_path: Path,
) -> None:
    with pytest.raises(LightningIntegrationError, match=r"return modified_loss\(self, loss\)"):
        _fit(
            tmp_path,
            [WindowLog(start=0, end=2, loss_factor=2.0)],
            epochs=1,
            model=Net(use_modified_loss=False),
        )


def test_a_module_without_modified_loss_still_runs_the_recipe(tmp_path: Path) -> None:
    ours, hands = WindowLog(start=2, end=7), WindowLog(start=2, end=7)
    _fit(tmp_path, [ours], epochs=2, model=Net(use_modified_loss=False))
    _hand_written([hands], epochs=2)
    assert ours.log == hands.log


def test_manual_optimization_is_refused_before_training_naming_the_fix(tmp_path: Path) -> None:
    recording = WindowLog(start=0, end=2)
    with pytest.raises(ConfigError, match=r"automatic_optimization is False.*To fix, use") as error:
        # (Lightning itself refuses accumulate_grad_batches > 1 with manual optimization.)
        _fit(tmp_path, [recording], epochs=1, model=ManualNet(), accumulate_grad_batches=1)
    assert error.value.field == "automatic_optimization"
    assert recording.log == []


def test_arguments_the_callback_sets_itself_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"batches_per_step=2 is set by the callback.*drop"):
        SessionCallback([WindowLog()], batches_per_step=2)


def test_two_callbacks_in_one_trainer_are_refused_by_lightning(tmp_path: Path) -> None:
    callbacks = [SessionCallback([WindowLog()]), SessionCallback([WindowLog()])]
    with pytest.raises(RuntimeError, match="more than one stateful callback"):
        _trainer(tmp_path, 1, callbacks)


def test_modified_loss_without_the_callback_is_refused_naming_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"has no SessionCallback.*To fix, pass Trainer"):
        _trainer(tmp_path, 1, []).fit(Net(), _data())


class EndsEpochEarly(Net):
    """Ends its first epoch after 2 batches the Lightning way: ``on_train_batch_start``
    returns -1, and the batch never reaches ``on_train_batch_end``."""

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        return -1 if (self.current_epoch, batch_idx) == (0, 2) else None


def test_a_batch_lightning_skips_after_it_started_is_refused_naming_the_fix(
    tmp_path: Path,
) -> None:
    with pytest.raises(LightningIntegrationError, match=r"returns -1.*trainer.should_stop"):
        _fit(tmp_path, [WindowLog(start=0, end=2)], epochs=2, model=EndsEpochEarly())
