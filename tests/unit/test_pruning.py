"""ConstantPruningModifier and MagnitudePruningModifier on small layers, through a Session."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from modfsm.engine import ConfigError, Event, EventType, Modifier, State
from modfsm.engine.config.factory import ModifierFactory
from modfsm.engine.loop.session import Session
from modfsm.modifiers.pruning import ConstantPruningModifier, MagnitudePruningModifier
from tests.training import linear, mlp, resume_run, straight_run, train_steps
from tests.unit.test_hooks import torch_hook_count


def session_for(
    model: torch.nn.Module, modifiers: list[Modifier]
) -> tuple[Session, torch.optim.Optimizer]:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    session = Session()
    session.initialize(model=model, optimizer=optimizer, recipe=modifiers, wrap_optimizer=True)
    return session, optimizer


def zeros(layer: torch.nn.Linear) -> torch.Tensor:
    return layer.weight.detach() == 0


# --- ConstantPruningModifier ----------------------------------------------------------------


def test_constant_pruning_keeps_the_zeros_it_found_at_start_through_every_step() -> None:
    model = mlp()
    with torch.no_grad():
        linear(model, 0).weight[:, :3] = 0  # a pruned pattern from an earlier stage
    pattern = zeros(linear(model, 0)).clone()
    session, optimizer = session_for(model, [ConstantPruningModifier(start=0, end=5)])
    seen: list[bool] = []
    train_steps(
        session, model, optimizer, 8,
        after_step=lambda step: seen.append(bool(zeros(linear(model, 0))[pattern].all())),
    )  # fmt: skip
    # steps 0..4 inside the window: the zeros stay; after it, Adam moves them again
    assert seen == [True] * 5 + [False] * 3


def test_constant_pruning_leaves_the_weights_alone_outside_its_window() -> None:
    model, reference = mlp(), mlp()
    with torch.no_grad():
        for net in (model, reference):
            linear(net, 0).weight[:, :3] = 0
    session, optimizer = session_for(model, [ConstantPruningModifier(start=50)])
    bare, bare_optimizer = session_for(reference, [])
    train_steps(session, model, optimizer, 5)
    train_steps(bare, reference, bare_optimizer, 5)
    assert torch.equal(linear(model, 0).weight, linear(reference, 0).weight)


def test_constant_pruning_drops_its_masks_at_end_and_leaves_no_hook() -> None:
    model = mlp()
    hooks_before = torch_hook_count(model)
    modifier = ConstantPruningModifier(start=0, end=2)
    session, optimizer = session_for(model, [modifier])
    train_steps(session, model, optimizer, 1)
    assert modifier.masks
    train_steps(session, model, optimizer, 2)
    assert modifier.masks == {}
    session.finalize()
    assert torch_hook_count(model) == hooks_before


# --- MagnitudePruningModifier ---------------------------------------------------------------


@pytest.mark.parametrize("final", [0.5, 0.75, 0.9, 0.33])
def test_at_its_end_every_layer_has_exactly_the_final_sparsity(final: float) -> None:
    model = mlp(widths=(16, 24, 8))
    modifier = MagnitudePruningModifier(
        final_sparsity=final, init_sparsity=0.05, start=1, end=7, update=2
    )
    session, optimizer = session_for(model, [modifier])
    train_steps(session, model, optimizer, 7)
    assert modifier.ended
    for layer in (linear(model, 0), linear(model, 2)):
        assert int(zeros(layer).sum()) == pytest.approx(final * layer.weight.numel(), abs=1)
    train_steps(session, model, optimizer, 3)  # held after the end (leave_enabled)
    for layer in (linear(model, 0), linear(model, 2)):
        assert int(zeros(layer).sum()) == pytest.approx(final * layer.weight.numel(), abs=1)


def test_sparsity_follows_the_cubic_schedule_at_each_update() -> None:
    model = mlp(widths=(16, 32, 8))
    modifier = MagnitudePruningModifier(final_sparsity=0.8, start=0, end=8, update=2)
    session, optimizer = session_for(model, [modifier])
    observed: dict[int, float] = {}
    train_steps(
        session, model, optimizer, 8,
        after_step=lambda step: observed.__setitem__(step + 1, modifier.current_sparsity),
    )  # fmt: skip
    for step in (2, 4, 6):
        expected = 0.8 + (0.0 - 0.8) * (1 - step / 8) ** 3
        assert observed[step] == pytest.approx(expected)
        assert observed[step + 1] == observed[step]  # no update between update points
    assert observed[8] == 0.8


def test_an_nm_structure_holds_exactly_at_the_end() -> None:
    model = mlp(widths=(16, 24, 8))
    modifier = MagnitudePruningModifier(
        final_sparsity=0.5, mask_structure="2:4", start=0, end=4, update=1
    )
    session, optimizer = session_for(model, [modifier])
    train_steps(session, model, optimizer, 6)
    for layer in (linear(model, 0), linear(model, 2)):
        kept = (~zeros(layer)).reshape(layer.weight.shape[0], -1, 4).sum(dim=-1)
        assert bool((kept <= 2).all())
        assert int(kept.sum()) >= layer.weight.numel() // 2 - 1  # exactly 2 unless a weight is 0
    masks = modifier.masks
    for mask in masks.values():
        assert bool((mask.reshape(mask.shape[0], -1, 4).sum(dim=-1) == 2).all())


def test_global_sparsity_prunes_the_final_fraction_over_all_layers_together() -> None:
    model = mlp(widths=(16, 24, 8))
    modifier = MagnitudePruningModifier(final_sparsity=0.6, global_sparsity=True, start=0, end=2)
    session, optimizer = session_for(model, [modifier])
    train_steps(session, model, optimizer, 3)
    total = linear(model, 0).weight.numel() + linear(model, 2).weight.numel()
    pruned = int(zeros(linear(model, 0)).sum() + zeros(linear(model, 2)).sum())
    assert pruned == pytest.approx(0.6 * total, abs=1)
    first = linear(model, 0)
    assert int(zeros(first).sum()) != round(0.6 * first.weight.numel())  # not per layer


def test_without_leave_enabled_the_masks_are_dropped_at_the_end() -> None:
    model = mlp()
    modifier = MagnitudePruningModifier(final_sparsity=0.5, start=0, end=2, leave_enabled=False)
    session, optimizer = session_for(model, [modifier])
    train_steps(session, model, optimizer, 2)
    assert modifier.masks == {}
    train_steps(session, model, optimizer, 2)
    first = linear(model, 0)
    assert int(zeros(first).sum()) < 0.5 * first.weight.numel() - 1  # Adam revived them


def test_ignored_layers_are_not_pruned() -> None:
    model = mlp()
    modifier = MagnitudePruningModifier(final_sparsity=0.5, start=0, ignore=["2"])
    session, _ = session_for(model, [modifier])
    assert modifier.layer_names == ["0"]
    assert int(zeros(linear(model, 2)).sum()) == 0
    session.finalize()


def test_a_one_shot_prune_happens_at_initialize() -> None:
    model = mlp()
    session, _ = session_for(model, [MagnitudePruningModifier(final_sparsity=0.5, start=-1)])
    assert int(zeros(linear(model, 0)).sum()) == 0.5 * linear(model, 0).weight.numel()
    session.finalize()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"final_sparsity": 1.0}, r"final_sparsity must be a fraction in \[0, 1\)"),
        ({"final_sparsity": -0.1}, "final_sparsity must be >= 0"),
        ({"final_sparsity": "half"}, "final_sparsity must be a number"),
        ({"init_sparsity": 0.6, "final_sparsity": 0.5}, "init_sparsity .* above final_sparsity"),
        ({"mask_structure": "2:4", "final_sparsity": 0.75}, "final_sparsity must be 0.5"),
        ({"mask_structure": "2:4", "final_sparsity": 0.5, "global_sparsity": True}, "N:M"),
        ({"mask_structure": "blocks"}, "not 'unstructured' or 'N:M'"),
        ({"mask_structure": 4}, "must be a string"),
        ({"global_sparsity": "yes"}, "must be true or false"),
        ({"targets": 3}, "must be a name or a list of names"),
        ({"ignore": ["re:("]}, "not a valid regular expression"),
    ],
)
def test_bad_arguments_are_rejected_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        MagnitudePruningModifier(**kwargs)


def test_an_nm_structure_that_does_not_fit_a_layer_fails_at_initialize() -> None:
    model = mlp(widths=(6, 8, 4))  # 6 inputs: not a multiple of 4
    modifier = MagnitudePruningModifier(final_sparsity=0.5, mask_structure="2:4", start=5)
    with pytest.raises(ConfigError, match="multiple of 4; this layer has 6"):
        modifier.initialize(State(model=model))
    assert modifier.lifecycle_state == "created"


def test_pruning_without_a_model_names_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"pass model=\.\.\. to Session\.initialize"):
        MagnitudePruningModifier(start=0).initialize(State())


def test_the_factory_finds_both_pruning_modifiers_by_name() -> None:
    ModifierFactory.refresh()
    made = ModifierFactory.create("MagnitudePruningModifier", final_sparsity=0.3)
    assert isinstance(made, MagnitudePruningModifier)
    assert isinstance(ModifierFactory.create("ConstantPruningModifier"), ConstantPruningModifier)


def _saved_state() -> dict[str, Any]:
    source = MagnitudePruningModifier(final_sparsity=0.5, start=0)
    source.initialize(State(model=mlp()))
    return source.state_dict()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            lambda s: s.pop("sparsity"),
            r"its keys are \['masks'\], expected \['masks', 'sparsity'\]",
        ),
        (lambda s: s.__setitem__("sparsity", 1.5), r"sparsity 1.5 is not a fraction in \[0, 1\)"),
        (lambda s: s.__setitem__("sparsity", True), r"sparsity True is not a fraction"),
        (lambda s: s.__setitem__("masks", [1]), r"masks is a list, not a dict of layer name"),
        (lambda s: s["masks"].popitem(), r"masks are saved for \['0'\], but the target layers"),
        (lambda s: s.__setitem__("masks", {}), r"no masks are saved, but the window is open"),
        (
            lambda s: s["masks"].__setitem__("0", s["masks"]["0"].float()),
            r"the mask of '0' is not a bool tensor",
        ),
        (
            lambda s: s["masks"].__setitem__("0", torch.ones(3, 3, dtype=torch.bool)),
            r"the mask of '0' has shape \(3, 3\), not \(16, 8\)",
        ),
    ],
)
def test_a_saved_state_that_does_not_fit_is_refused_naming_what(
    change: Callable[[dict[str, Any]], Any], problem: str
) -> None:
    saved = _saved_state()
    change(saved)
    modifier = MagnitudePruningModifier(final_sparsity=0.5, start=0)
    modifier.initialize(State(model=mlp()))
    expected = (
        rf"^MagnitudePruningModifier\(.*\)\.load_state_dict: {problem}.*\. To fix, resume with "
        "the state this modifier saved"
    )
    with pytest.raises(ConfigError, match=expected):
        modifier.load_state_dict(saved, State(model=mlp()))


def test_saved_masks_are_put_on_the_device_of_their_layers() -> None:
    # A checkpoint loaded with map_location="cpu" into a model elsewhere (a CUDA
    # model; here the meta device, which needs no GPU) must not keep CPU masks.
    source = MagnitudePruningModifier(final_sparsity=0.5, start=0)
    source.initialize(State(model=mlp()))
    saved = source.state_dict()
    assert {str(mask.device) for mask in saved["masks"].values()} == {"cpu"}
    model = mlp().to("meta")
    target = MagnitudePruningModifier(final_sparsity=0.5, start=0)
    target.initialize(State(model=model))
    target.load_state_dict(saved, State(model=model))
    assert list(target.masks) == list(saved["masks"])
    assert {str(mask.device) for mask in target.masks.values()} == {"meta"}
    assert {mask.dtype for mask in target.masks.values()} == {torch.bool}


def test_masks_are_applied_only_after_optimizer_steps() -> None:
    model = mlp()
    modifier = ConstantPruningModifier(start=0)
    with torch.no_grad():
        linear(model, 0).weight[0] = 0
    state = State(model=model)
    modifier.initialize(state)
    with torch.no_grad():
        linear(model, 0).weight[0] = 1.0
    modifier.update_event(state, Event(EventType.BATCH_START, global_step=0))
    assert bool((linear(model, 0).weight[0] == 1).all())  # not at batch start
    modifier.update_event(state, Event(EventType.OPTIM_POST_STEP, global_step=1))
    assert bool((linear(model, 0).weight[0] == 0).all())


# --- resume -------------------------------------------------------------------------------


def gradual() -> list[Modifier]:
    # updates at steps 3 and 6 only: a resumed run between them needs the saved masks
    return [MagnitudePruningModifier(final_sparsity=0.7, start=2, end=8, update=3)]


def constant() -> list[Modifier]:
    return [ConstantPruningModifier(start=0, end=9)]


def prepruned(model: torch.nn.Module) -> None:
    """Zero a pattern before the run, for ConstantPruningModifier to keep."""
    with torch.no_grad():
        linear(model, 0).weight[:, ::2] = 0


@pytest.mark.parametrize("save_at", [1, 2, 4, 5, 7, 9])
def test_a_resumed_magnitude_pruning_run_is_bitwise_the_uninterrupted_one(save_at: int) -> None:
    straight, _ = straight_run(gradual, 12)
    resumed, _ = resume_run(gradual, 12, save_at)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("save_at", [2, 5])
def test_a_resumed_constant_pruning_run_is_bitwise_the_uninterrupted_one(save_at: int) -> None:
    straight, _ = straight_run(constant, 10, prepare=prepruned)
    resumed, _ = resume_run(constant, 10, save_at, prepare=prepruned)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
