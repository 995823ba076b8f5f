"""``OutputDistillationModifier``: the loss it makes has the gradients of the loss computed
by hand; it acts only inside its window; it refuses what it cannot do, by name."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from modfsm.engine import ConfigError, ConfigTypeError
from modfsm.engine.config.recipe import Recipe
from modfsm.engine.loop.session import Session
from modfsm.modifiers.distillation import OutputDistillationModifier
from tests.doubles import tiny_llama


def _models() -> tuple[torch.nn.Sequential, torch.nn.Sequential]:
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    teacher = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    return student, teacher


def _kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at a temperature, written with torch's own kl_div."""
    log_student = torch.log_softmax(student / temperature, dim=-1)
    log_teacher = torch.log_softmax(teacher / temperature, dim=-1)
    divergence = torch.nn.functional.kl_div(
        log_student, log_teacher, log_target=True, reduction="sum"
    )
    return temperature**2 * divergence / student.shape[0]


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _session(modifier: OutputDistillationModifier, student: Any, teacher: Any) -> Session:
    session = Session()
    session.initialize(model=student, teacher_model=teacher, recipe=[modifier])
    return session


def test_its_gradients_equal_those_of_the_loss_computed_by_hand() -> None:
    student, teacher = _models()
    twin = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    twin.load_state_dict(student.state_dict())
    modifier = OutputDistillationModifier(
        targets="2", comparison_args={"temperature": 2.0}, orig_scale=0.5, distill_scale=3.0,
        start=0,
    )  # fmt: skip
    session = _session(modifier, student, teacher)
    inputs, labels = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    session.batch_start(inputs)
    task = torch.nn.functional.cross_entropy(student(inputs), labels)
    session.loss_calculated(task).loss.backward()
    with torch.no_grad():
        target = teacher(inputs)
    output = twin(inputs)
    by_hand = 0.5 * torch.nn.functional.cross_entropy(output, labels) + 3.0 * _kl(
        output, target, 2.0
    )
    by_hand.backward()  # type: ignore[no-untyped-call]  # torch's backward is untyped
    for ours, theirs in zip(_grads(student), _grads(twin), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is not trained


@pytest.mark.parametrize(
    ("comparison", "by_hand"),
    [
        ("mse", lambda s, t: (s - t).pow(2).mean()),
        ("square_head", lambda s, t: (s - t).pow(2).mean() / t.pow(2).mean()),
        ("cosine_similarity", lambda s, t: (1 - torch.cosine_similarity(s, t, dim=-1)).mean()),
        ("kl_divergence", lambda s, t: _kl(s, t, 1.0)),
    ],
)
def test_each_comparison_of_a_layer_pair_after_a_transform_is_its_formula(
    comparison: str, by_hand: Any
) -> None:
    student, teacher = _models()
    modifier = OutputDistillationModifier(
        targets=[["2", "2"]], transforms="softmax", transforms_args={"temperature": 1.5},
        comparison=comparison, orig_scale=0.0, distill_scale=2.0, start=0,
    )  # fmt: skip
    session = _session(modifier, student, teacher)
    inputs = torch.randn(6, 4)
    session.batch_start(inputs)
    output = student(inputs)
    loss = session.loss_calculated(output.sum()).loss
    with torch.no_grad():
        target = teacher(inputs)
    expected = 2.0 * by_hand(torch.softmax(output / 1.5, -1), torch.softmax(target / 1.5, -1))
    torch.testing.assert_close(loss, expected)


def test_outside_its_window_the_loss_is_the_loops_and_the_teacher_is_not_run() -> None:
    student, teacher = _models()
    calls: list[int] = []
    teacher.register_forward_hook(lambda module, args, output: calls.append(1))
    modifier = OutputDistillationModifier(targets="2", start=1, end=2)
    session = _session(modifier, student, teacher)
    losses = []
    for _ in range(3):
        inputs = torch.randn(2, 4)
        session.batch_start(inputs)
        loss = student(inputs).sum()
        losses.append((loss, session.loss_calculated(loss).loss))
        session.optim_pre_step()
        session.optim_post_step()
        session.batch_end()
    session.finalize()
    assert losses[0][1] is losses[0][0]
    assert losses[1][1] is not losses[1][0]  # step 1: inside the window
    assert losses[2][1] is losses[2][0]
    assert len(calls) == 1
    assert not modifier._hooks  # every hook removed at finalize


def test_a_pair_whose_layers_do_not_pair_one_to_one_is_refused_naming_both() -> None:
    student, teacher = _models()
    teacher.append(torch.nn.Linear(3, 3))
    modifier = OutputDistillationModifier(targets="Linear", start=0)
    with pytest.raises(Exception, match=r"target 'Linear' matches 2 module\(s\) of the model "
                                        r"\(0, 2\) but 3 of the teacher \(0, 2, 3\)"):  # fmt: skip
        _session(modifier, student, teacher)


def test_without_a_teacher_it_says_to_pass_one() -> None:
    student, _ = _models()
    message = r"needs state.teacher_model to be a torch module, got NoneType. To fix, pass "
    with pytest.raises(Exception, match=message + r"teacher_model=\.\.\."):
        _session(OutputDistillationModifier(targets="2", start=0), student, None)


def test_a_loss_reported_without_calling_the_model_names_the_fix() -> None:
    student, teacher = _models()
    session = _session(OutputDistillationModifier(targets="2", start=0), student, teacher)
    session.batch_start()
    with pytest.raises(ConfigError, match=r"no output of model layer '2' was captured in this "
                                          r"batch"):  # fmt: skip
        session.loss_calculated(torch.tensor(1.0))


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"comparison": "kl"}, ConfigError, r"comparison must be one of \['cosine_similarity'"),
        ({"transforms": ["softmax", "exp"]}, ConfigError, r"transforms must be one of"),
        ({"projection": "linear"}, ConfigError, r"projection='linear' is not supported"),
        ({"offload_layer_output": True}, ConfigError, r"offload_layer_output=True is not"),
        ({"distill_scale": -1}, ConfigError, r"distill_scale must be a finite number >= 0"),
        ({"comparison_args": {"temperature": 0}}, ConfigError, r"temperature must be a number"),
        ({"targets": []}, ConfigTypeError, r"targets must be a layer name"),
        ({"targets": ["re:("]}, ConfigError, r"not a valid regular expression"),
    ],
)
def test_recipe_arguments_it_cannot_honour_are_refused_at_construction(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        OutputDistillationModifier(**{"targets": "2", **arguments})


def test_a_recipe_in_the_references_shape_builds_it() -> None:
    recipe = Recipe.load(
        """
distill_stage:
  distillation_modifiers:
    OutputDistillationModifier:
      targets: ["re:2"]
      comparison: kl_divergence
      comparison_args: {temperature: 2.0}
      orig_scale: 0.5
      distill_scale: 1.0
      start: 0
"""
    )
    student, teacher = _models()
    session = Session()
    session.initialize(model=student, teacher_model=teacher, recipe=recipe)
    (modifier,) = [m for _, m in session.modifiers]
    assert isinstance(modifier, OutputDistillationModifier)
    assert (modifier.comparison_args, modifier.orig_scale) == ({"temperature": 2.0}, 0.5)


def test_a_transformers_model_is_compared_on_its_logits() -> None:
    student, teacher, twin = tiny_llama(), tiny_llama(seed=1), tiny_llama()
    twin.load_state_dict(student.state_dict())
    modifier = OutputDistillationModifier(targets="lm_head", distill_scale=2.0, start=0)
    session = _session(modifier, student, teacher)
    batch = {"input_ids": torch.randint(0, 32, (2, 6)), "attention_mask": torch.ones(2, 6)}
    session.batch_start(batch)
    output = student(**batch, labels=batch["input_ids"])
    session.loss_calculated(output.loss).loss.backward()
    with torch.no_grad():
        target = teacher(**batch).logits
    reference = twin(**batch, labels=batch["input_ids"])
    logits = reference.logits.reshape(-1, 32)
    (reference.loss + 2.0 * _kl(logits, target.reshape(-1, 32), 1.0)).backward()
    for ours, theirs in zip(_grads(student), _grads(twin), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
