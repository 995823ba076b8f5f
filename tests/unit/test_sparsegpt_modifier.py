"""``SparseGPTModifier``: SparseGPT on the calibration lifecycle, driven through a ``Session``.

Targets name decoder layers (the reference's convention) or layers; the modifier prunes
the ``Linear`` layers inside them when their block ends (``SEQUENTIAL_EPOCH_END``) or at
``CALIBRATION_END``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from modfsm.engine import ConfigError, EventType
from modfsm.engine.config.recipe import Recipe
from modfsm.engine.tools.replay import verify
from modfsm.modifiers.pruning import MagnitudePruningModifier, SparseGPTModifier
from modfsm.modifiers.pruning.masks import unstructured_mask
from tests.one_shot_support import (
    Flow,
    batches,
    calibrate,
    linears,
    start,
    tiny_llama,
    torch_hooks,
)

transformers = pytest.importorskip("transformers")

RECIPES = Path(__file__).resolve().parents[2] / "docs" / "recipes"
DECODER_LAYERS = "re:model.layers.\\d+$"


# --- what it prunes ------------------------------------------------------------------------


@pytest.mark.parametrize("flow", ["basic", "sequential"])
def test_each_layer_inside_the_decoder_layers_loses_exactly_its_share(flow: Flow) -> None:
    model = tiny_llama()
    head = model.lm_head.weight.detach().clone()
    modifier = SparseGPTModifier(sparsity=0.3, targets=[DECODER_LAYERS])
    session = start(model, modifier)
    calibrate(session, model, batches(), flow)
    session.finalize()
    inside = [n for n in linears(model) if n.startswith("model.layers.")]
    assert modifier.compressed == inside
    for name, entry in modifier.report().items():
        weight = linears(model)[name].weight
        assert entry["pruned"] == round(0.3 * weight.numel())
        assert int((weight == 0).sum()) >= entry["pruned"]
        assert entry["sparsity"] == entry["pruned"] / weight.numel()
    assert torch.equal(model.lm_head.weight, head)  # outside the targets


def test_a_2_of_4_structure_prunes_two_of_every_four_consecutive_inputs() -> None:
    model = tiny_llama()
    modifier = SparseGPTModifier(sparsity=0.5, mask_structure="2:4", targets=[DECODER_LAYERS])
    session = start(model, modifier)
    calibrate(session, model, batches(), "sequential")
    session.finalize()
    for name in modifier.compressed:
        zeros = (linears(model)[name].weight == 0).reshape(-1, 4).sum(dim=1)
        assert bool((zeros >= 2).all()), name
        assert modifier.report()[name]["pruned"] * 2 == linears(model)[name].weight.numel()


def test_its_output_error_on_calibration_data_is_below_magnitude_pruning() -> None:
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(256, 6, generator=generator) @ torch.randn(6, 64, generator=generator)
    inputs += 0.05 * torch.randn(256, 64, generator=generator)
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 32, bias=False)
    model = torch.nn.Sequential(layer)
    original = layer.weight.detach().clone()
    session = start(model, SparseGPTModifier(sparsity=0.5))
    with torch.no_grad():
        session.event(EventType.CALIBRATION_START)
        model(inputs)
        session.event(EventType.CALIBRATION_END)
    session.finalize()
    magnitude = original * unstructured_mask(original, 0.5)
    sparsegpt_error = (inputs @ (original - layer.weight.detach()).T).norm()
    magnitude_error = (inputs @ (original - magnitude).T).norm()
    assert sparsegpt_error < 0.5 * magnitude_error


def test_the_sequential_flow_prunes_a_block_when_it_ends_and_never_twice() -> None:
    model = tiny_llama()
    modifier = SparseGPTModifier(sparsity=0.5, mask_structure="2:4", targets="LlamaDecoderLayer")
    session = start(model, modifier)
    first, second = model.model.layers
    with torch.no_grad():
        session.event(EventType.CALIBRATION_START)
        for batch in batches():
            model(**batch)
        session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[first])
        assert modifier.compressed == [n for n in linears(model) if n.startswith("model.layers.0")]
        pruned = {n: linears(model)[n].weight.detach().clone() for n in modifier.compressed}
        for batch in batches(2):
            model(**batch)
        session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[first])  # again: nothing
        session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[second])
        session.event(EventType.CALIBRATION_END)
    assert torch_hooks(model) == 0
    session.finalize()
    assert all(torch.equal(linears(model)[n].weight, w) for n, w in pruned.items())
    assert len(modifier.compressed) == 14


def test_hooks_are_attached_for_calibration_only() -> None:
    model = tiny_llama()
    session = start(model, SparseGPTModifier(sparsity=0.5, targets=[DECODER_LAYERS]))
    assert torch_hooks(model) == 0
    session.event(EventType.CALIBRATION_START)
    assert torch_hooks(model) == 14 + 2
    with torch.no_grad():
        model(**batches(1)[0])
    session.event(EventType.CALIBRATION_END)
    assert torch_hooks(model) == 0
    session.finalize()
    assert torch_hooks(model) == 0


def test_a_session_with_sparsegpt_replays_against_the_declared_tables() -> None:
    for flow in ("basic", "sequential"):
        model = tiny_llama()
        modifier = SparseGPTModifier(sparsity=0.5, targets=[DECODER_LAYERS])
        session = start(model, modifier, trace=True)
        calibrate(session, model, batches(2), flow)
        session.finalize()
        assert session.trace is not None
        result = verify(session.trace.records)
        assert result.ok, result.divergence
        assert result.complete


# --- targets -------------------------------------------------------------------------------


def test_decoder_layers_by_pattern_or_type_select_the_same_layers() -> None:
    chosen = []
    for targets in ([DECODER_LAYERS], "LlamaDecoderLayer", ["model.layers.0", "model.layers.1"]):
        modifier = SparseGPTModifier(sparsity=0.5, targets=targets)
        start(tiny_llama(), modifier)
        chosen.append(modifier.layer_names)
    assert chosen[0] == chosen[1] == chosen[2]
    assert len(chosen[0]) == 14
    assert "lm_head" not in chosen[0]


def test_all_prunable_selects_every_linear_and_warns_about_the_head(
    caplog: pytest.LogCaptureFixture,
) -> None:
    modifier = SparseGPTModifier(sparsity=0.5, targets="__ALL_PRUNABLE__")
    with caplog.at_level(logging.WARNING, logger="modfsm"):
        start(tiny_llama(), modifier)
    assert modifier.layer_names == list(linears(tiny_llama()))
    assert "lm_head is pruned" in caplog.text
    assert "re:.*lm_head" in caplog.text


def test_ignore_is_matched_against_the_full_names_inside_the_targets() -> None:
    modifier = SparseGPTModifier(sparsity=0.5, targets=[DECODER_LAYERS], ignore=["re:.*mlp.*"])
    start(tiny_llama(), modifier)
    assert modifier.layer_names == [
        f"model.layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qkvo"
    ]


def test_a_sparsity_list_gives_each_target_its_own_share() -> None:
    model = tiny_llama()
    modifier = SparseGPTModifier(sparsity=[0.25, 0.5], targets=[DECODER_LAYERS])
    session = start(model, modifier)
    assert set(modifier.sparsities.values()) == {0.25, 0.5}
    calibrate(session, model, batches(1))
    session.finalize()
    for name, entry in modifier.report().items():
        share = 0.25 if name.startswith("model.layers.0") else 0.5
        assert entry["target_sparsity"] == share
        assert entry["pruned"] == round(share * linears(model)[name].weight.numel())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"sparsity": [0.5], "targets": [DECODER_LAYERS]},
            r"sparsity lists 1 values, but the targets select 2 modules.*To fix",
        ),
        ({"sparsity": 0.5, "targets": "re:model\\.norm"}, r"select no prunable layer.*To fix"),
        ({"sparsity": 0.5, "targets": "Embedding"}, r"select no prunable layer"),
        ({"sparsity": 0.5, "targets": "nowhere"}, r"'nowhere' matches no module.*To fix"),
        (
            {"sparsity": 0.5, "targets": [DECODER_LAYERS], "ignore": "Linear"},
            r"select no prunable layer that ignore",
        ),
    ],
)
def test_targets_that_do_not_fit_the_model_are_refused_at_initialize(
    arguments: dict[str, Any], message: str
) -> None:
    modifier = SparseGPTModifier(**arguments)
    with pytest.raises(ConfigError, match=message):
        start(tiny_llama(), modifier)
    assert not modifier.initialized


def test_a_convolution_inside_a_target_and_an_nm_misfit_are_refused_at_initialize() -> None:
    block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Conv1d(1, 1, 3))
    with pytest.raises(ConfigError, match=r"Linear layers only.*block\.1 \(Conv1d\).*To fix"):
        start(
            torch.nn.ModuleDict({"block": block}), SparseGPTModifier(sparsity=0.5, targets="block")
        )
    narrow = torch.nn.Sequential(torch.nn.Linear(6, 4))
    with pytest.raises(ConfigError, match=r"'0' has 6 inputs, not a multiple of M=4.*To fix"):
        start(narrow, SparseGPTModifier(mask_structure="2:4"))


def test_all_prunable_works_for_the_magnitude_pruning_modifier_too() -> None:
    model = tiny_llama()
    modifier = MagnitudePruningModifier(targets="__ALL_PRUNABLE__", final_sparsity=0.5)
    start(model, modifier)
    assert modifier.layer_names == list(linears(model))


# --- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, r"sparsity is required for unstructured pruning.*To fix"),
        ({"sparsity": 1.0}, r"sparsity must be a fraction in \[0, 1\)"),
        ({"sparsity": []}, "non-empty list"),
        ({"sparsity": True}, "sparsity must be a fraction"),
        ({"sparsity": 0.6, "mask_structure": "2:4"}, r"prunes 2 of every 4.*To fix"),
        ({"sparsity": 0.5, "mask_structure": "4:2"}, r"mask_structure '4:2'.*To fix"),
        ({"sparsity": 0.5, "sparsity_profile": "owl"}, r"sparsity_profile.*To fix.*OWL"),
        ({"sparsity": 0.5, "owl_m": 5}, r"owl_m.*To fix"),
        ({"sparsity": 0.5, "owl_lmbda": 0.08}, r"owl_lmbda.*To fix"),
        ({"sparsity": 0.5, "preserve_sparsity_mask": True}, r"preserve_sparsity_mask.*To fix"),
        ({"sparsity": 0.5, "offload_hessians": True}, r"offload_hessians.*To fix"),
        ({"sparsity": 0.5, "block_size": 0}, "block_size"),
        ({"sparsity": 0.5, "dampening_frac": "x"}, "dampening_frac"),
        ({"sparsity": 0.5, "targets": "re:("}, "not a valid regular expression"),
    ],
)
def test_unsupported_or_bad_arguments_are_refused_at_construction(
    arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        SparseGPTModifier(**arguments)


def test_an_nm_structure_implies_its_sparsity_and_older_arguments_are_accepted() -> None:
    modifier = SparseGPTModifier(
        mask_structure="2:4", sequential_update=True, sequential_targets="LlamaDecoderLayer"
    )
    start(tiny_llama(), modifier)
    assert set(modifier.sparsities.values()) == {0.5}
    SparseGPTModifier(sparsity=0.5, sequential_update=False, mask_structure="unstructured")


def test_the_sample_recipe_loads_and_builds_the_modifier() -> None:
    (stage,) = Recipe.load(RECIPES / "oneshot_sparsegpt_2of4.yaml").build()
    (modifier,) = stage.modifiers
    assert isinstance(modifier, SparseGPTModifier)
    assert (modifier.sparsity, modifier.mask_structure) == (0.5, "2:4")
    assert modifier.targets == [DECODER_LAYERS]
    model = tiny_llama()
    start(model, modifier)
    assert len(modifier.layer_names) == 14
