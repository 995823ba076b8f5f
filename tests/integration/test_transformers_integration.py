"""``modfsm.engine.integrations.transformers``: a recipe inside a real ``transformers.Trainer``.

Tiny Llama models built in code (no download), CPU only.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

import attrs
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from modfsm.engine import ConfigError, Event, EventType, Modifier, State
from modfsm.engine.integrations.transformers import (
    SESSION_FILE,
    SessionCallback,
    SessionFileError,
    SessionTrainer,
)
from modfsm.engine.loop.session import Session
from modfsm.engine.tools.replay import verify

LogEntry = tuple[str, str, int, int]


@attrs.define
class Recorder(Modifier):
    """Records ``(hook, event, global_step, global_batch)`` for each window hook."""

    log: list[LogEntry] = attrs.field(init=False, factory=list)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        self.log.append(("start", event.type_.value, event.global_step, event.global_batch))

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        self.log.append(("update", event.type_.value, event.global_step, event.global_batch))

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        self.log.append(("end", event.type_.value, event.global_step, event.global_batch))


@attrs.define
class DoubleLoss(Modifier):
    """Doubles the loss inside its window."""

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_update(self, state: State, event: Event, **kwargs: Any) -> None:
        if event.type_ is EventType.LOSS_CALCULATED:
            state.loss = state.loss * 2


class Tokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    """``count`` random sequences of 8 tokens, their own labels."""

    def __init__(self, count: int) -> None:
        generator = torch.Generator().manual_seed(1)
        self.rows = [torch.randint(0, 64, (8,), generator=generator) for _ in range(count)]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.rows[index], "labels": self.rows[index].clone()}


class MarkSave(TrainerCallback):
    """Remembers how long ``recorder.log`` was when the Trainer saved at ``step``."""

    def __init__(self, recorder: Recorder, step: int) -> None:
        self.recorder, self.step, self.mark = recorder, step, -1

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step == self.step:
            self.mark = len(self.recorder.log)


class DoubledByHand(Trainer):
    """The reference for a doubled loss: ``compute_loss`` doubles it itself."""

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor | Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        loss = super().compute_loss(model, inputs, False, num_items_in_batch)
        assert isinstance(loss, torch.Tensor)
        return loss * 2


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=16,
    )
    return LlamaForCausalLM(config)


def arguments(output_dir: Path, **overrides: Any) -> TrainingArguments:
    settings: dict[str, Any] = {
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": 3,
        "num_train_epochs": 2,
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": 0,
        "optim": "sgd",  # plain SGD and no clipping: a doubled loss doubles the update
        "learning_rate": 0.1,
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
        "logging_strategy": "no",
    }
    settings.update(overrides)
    return TrainingArguments(output_dir=str(output_dir), **settings)


def train(
    callback: SessionCallback | None,
    args: TrainingArguments,
    count: int,
    *,
    trainer_class: type[Trainer] = Trainer,
    resume: str | None = None,
    extra: list[TrainerCallback] | None = None,
) -> tuple[Trainer, LlamaForCausalLM]:
    model = tiny_llama()
    callbacks = ([] if callback is None else [callback]) + (extra or [])
    trainer = trainer_class(
        model=model, args=args, train_dataset=Tokens(count), callbacks=callbacks
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, model


def hand_written_log(
    recipe_start: float, recipe_end: float, batches: int, accumulation: int, epochs: int
) -> tuple[list[LogEntry], Session]:
    """The same recipe driven by a hand-written loop that steps as the Trainer does:
    after every ``accumulation`` batches and after the last batch of each epoch."""
    recorder = Recorder(start=recipe_start, end=recipe_end)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    session = Session()
    session.initialize(
        model=model,
        optimizer=optimizer,
        recipe=[recorder],
        batches_per_step=accumulation,
        wrap_optimizer=True,
    )
    for _ in range(epochs):
        for index in range(batches):
            inputs = torch.randn(4, 2)
            session.batch_start(inputs)
            loss = session.loss_calculated(model(inputs).pow(2).mean()).loss
            loss.backward()
            if (index + 1) % accumulation == 0 or index + 1 == batches:
                optimizer.step()
                optimizer.zero_grad()
            session.batch_end()
    session.finalize()
    return recorder.log, session


def assert_same_weights(left: torch.nn.Module, right: torch.nn.Module) -> None:
    right_state = right.state_dict()
    for name, tensor in left.state_dict().items():
        assert torch.equal(tensor, right_state[name]), name


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_windows_open_and_close_at_the_steps_of_a_hand_written_loop(
    tmp_path: Path, bf16: bool
) -> None:
    # 10 batches an epoch, 3 per step: steps after batches 3, 6, 9 and a shorter 10th.
    recorder = Recorder(start=1, end=6)
    callback = SessionCallback([recorder], trace=True)
    trainer, _ = train(callback, arguments(tmp_path, bf16=bf16), 10)

    expected, hand = hand_written_log(1, 6, batches=10, accumulation=3, epochs=2)
    assert recorder.log == expected
    assert ("start", "batch_start", 1, 3) in recorder.log
    assert ("end", "batch_end", 6, 16) in recorder.log  # step 6: 3 batches into epoch 2
    session = callback.session
    assert session is not None
    assert session.global_step == trainer.state.global_step == hand.global_step == 8
    assert session.global_batch == 20
    assert session.trace is not None
    assert verify(session.trace.records).ok


def test_the_trace_of_a_run_and_of_its_resumed_run_verify(tmp_path: Path) -> None:
    first = SessionCallback([Recorder(start=1, end=3)], trace=tmp_path / "run.jsonl")
    args = arguments(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    train(first, args, 5)
    resumed = SessionCallback([Recorder(start=1, end=3)], trace=True)
    train(resumed, args, 5, resume=str(tmp_path / "checkpoint-2"))

    for callback in (first, resumed):
        assert callback.session is not None
        assert callback.session.trace is not None
        result = verify(callback.session.trace.records)
        assert result.ok, result


@pytest.mark.parametrize("trainer_class", [Trainer, SessionTrainer])
def test_resuming_from_a_trainer_checkpoint_equals_an_uninterrupted_run(
    tmp_path: Path, trainer_class: type[Trainer]
) -> None:
    # 7 batches an epoch, 2 per step: 4 steps an epoch, the 4th after a single batch.
    args = arguments(
        tmp_path / "full",
        gradient_accumulation_steps=2,
        max_steps=7,
        save_strategy="steps",
        save_steps=3,
    )
    whole = Recorder(start=2, end=6)
    mark = MarkSave(whole, step=3)
    full_callback = SessionCallback([whole])
    _, full_model = train(full_callback, args, 7, trainer_class=trainer_class, extra=[mark])
    assert (tmp_path / "full" / "checkpoint-3" / SESSION_FILE).is_file()

    # The stock Trainer finds the session file in its own output_dir; SessionTrainer
    # is told the exact folder, wherever the new run writes.
    output = tmp_path / ("full" if trainer_class is Trainer else "resumed")
    resumed = Recorder(start=2, end=6)
    callback = SessionCallback([resumed])
    trainer, model = train(
        callback,
        arguments(
            output, gradient_accumulation_steps=2, max_steps=7, save_strategy="steps", save_steps=3
        ),
        7,
        trainer_class=trainer_class,
        resume=str(tmp_path / "full" / "checkpoint-3"),
    )

    assert 0 < mark.mark < len(whole.log)
    assert resumed.log == whole.log[mark.mark :]
    assert ("end", "batch_end", 6, 11) in resumed.log  # step 6 is the 2nd of epoch 2
    assert_same_weights(model, full_model)
    assert callback.session is not None
    assert full_callback.session is not None
    assert callback.session.global_step == trainer.state.global_step == 7
    assert (callback.session.global_batch, callback.session.batches_since_step) == (
        full_callback.session.global_batch,
        full_callback.session.batches_since_step,
    )


@pytest.mark.parametrize("trainer_class", [Trainer, SessionTrainer])
def test_a_modifier_that_doubles_the_loss_doubles_the_update_the_trainer_applies(
    tmp_path: Path, trainer_class: type[Trainer]
) -> None:
    def run(name: str, callback: SessionCallback | None, cls: type[Trainer]) -> LlamaForCausalLM:
        args = arguments(tmp_path / name, gradient_accumulation_steps=2, max_steps=1)
        return train(callback, args, 4, trainer_class=cls)[1]

    doubled = run("doubled", SessionCallback([DoubleLoss(start=0)]), trainer_class)
    by_hand = run("by_hand", None, DoubledByHand)
    plain = run("plain", SessionCallback([]), trainer_class)

    assert_same_weights(doubled, by_hand)
    assert not torch.equal(doubled.lm_head.weight, plain.lm_head.weight)
    start = tiny_llama().lm_head.weight
    torch.testing.assert_close(
        doubled.lm_head.weight - start, 2 * (plain.lm_head.weight - start), rtol=1e-4, atol=1e-6
    )


def test_session_trainer_reports_a_loss_computed_outside_the_model(tmp_path: Path) -> None:
    # Label smoothing: the Trainer pops the labels and computes the loss itself.
    def run(name: str, recipe: list[Modifier]) -> LlamaForCausalLM:
        args = arguments(tmp_path / name, max_steps=1, label_smoothing_factor=0.1)
        return train(SessionCallback(recipe), args, 3, trainer_class=SessionTrainer)[1]

    recorder = Recorder(start=0)
    run("recorded", [recorder])
    assert [entry[:2] for entry in recorder.log].count(("update", "loss_calculated")) == 3
    assert not torch.equal(
        run("doubled", [DoubleLoss(start=0)]).lm_head.weight,
        run("plain", []).lm_head.weight,
    )


def test_evaluation_during_training_opens_no_batch(tmp_path: Path) -> None:
    recorder = Recorder(start=0)
    args = arguments(tmp_path, max_steps=2, eval_strategy="steps", eval_steps=1)
    model = tiny_llama()
    trainer = SessionTrainer(
        model=model,
        args=args,
        train_dataset=Tokens(6),
        eval_dataset=Tokens(2),
        callbacks=[SessionCallback([recorder])],
    )
    trainer.train()
    assert recorder.log.count(("update", "batch_start", 0, 0)) == 1
    assert [entry[:2] for entry in recorder.log].count(("update", "batch_start")) == 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run that saved ``checkpoint-2`` with its session file."""
    output = tmp_path_factory.mktemp("saved")
    train(SessionCallback([Recorder(start=1)]), resume_arguments(output), 4)
    return output / "checkpoint-2"


def resume_arguments(output: Path) -> TrainingArguments:
    return arguments(output, max_steps=3, save_strategy="steps", save_steps=2)


def resume_copy(checkpoint: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "checkpoint-2"
    shutil.copytree(checkpoint, copy)
    return copy


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda path: path.unlink(), "not found"),
        (lambda path: path.write_bytes(b"not a torch file"), "is damaged"),
        (lambda path: torch.save({"format": "something else"}, path), "is damaged"),
    ],
    ids=["missing", "garbage", "not-a-session"],
)
def test_a_missing_or_damaged_session_file_is_refused_naming_the_file_and_the_fix(
    checkpoint: Path, tmp_path: Path, damage: Any, problem: str
) -> None:
    copy = resume_copy(checkpoint, tmp_path)
    damage(copy / SESSION_FILE)
    with pytest.raises(SessionFileError) as caught:
        train(SessionCallback([Recorder(start=1)]), resume_arguments(tmp_path), 4, resume=str(copy))
    message = str(caught.value)
    assert str(copy / SESSION_FILE) in message
    assert problem in message
    assert "weights_only=False" not in message
    assert "To fix, resume from a checkpoint folder holding the modfsm_session.pt" in message
    assert caught.value.path == copy / SESSION_FILE
    assert isinstance(caught.value, ValueError)


def test_a_session_file_from_another_step_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    copy = resume_copy(checkpoint, tmp_path)
    saved = torch.load(copy / SESSION_FILE, weights_only=True)
    saved["counters"]["global_step"] = 1
    torch.save(saved, copy / SESSION_FILE)
    with pytest.raises(
        SessionFileError, match="at optimizer step 1, but the Trainer resumes at step 2"
    ):
        train(SessionCallback([Recorder(start=1)]), resume_arguments(tmp_path), 4, resume=str(copy))


def test_the_session_file_is_written_atomically_and_loads_with_weights_only(
    checkpoint: Path,
) -> None:
    assert sorted(p.name for p in checkpoint.iterdir() if "modfsm" in p.name) == [SESSION_FILE]
    saved = torch.load(checkpoint / SESSION_FILE, weights_only=True)
    assert saved["counters"]["global_step"] == 2


def test_options_the_trainer_decides_are_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"batches_per_step given.*To fix, drop batches_per_step="
    ):
        SessionCallback([], batches_per_step=2)


def test_session_trainer_without_a_session_callback_is_refused(tmp_path: Path) -> None:
    trainer = SessionTrainer(model=tiny_llama(), args=arguments(tmp_path), train_dataset=Tokens(2))
    with pytest.raises(ConfigError, match="0 SessionCallback among its callbacks"):
        trainer.train()
