"""``GPTQModifier``: GPTQ on the calibration lifecycle, driven through a real ``Session``.

The events are sent as a one-shot pipeline sends them: ``CALIBRATION_START``, forward
passes, ``SEQUENTIAL_EPOCH_END(modules=[layer])`` per decoder layer (sequential) or
none (basic), ``CALIBRATION_END``, ``finalize``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from modfsm.engine import ConfigError, Event, EventType, IllegalTransitionError, State
from modfsm.engine.config.recipe import Recipe
from modfsm.engine.loop.session import Session
from modfsm.engine.tools.replay import verify
from modfsm.modifiers.pruning import SparseGPTModifier
from modfsm.modifiers.quantization import GPTQModifier
from modfsm.modifiers.quantization.args import QuantizationArgs
from modfsm.modifiers.quantization.fake import dequantize, quantize
from modfsm.modifiers.solvers import CalibrationError, round_to_nearest
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


# --- the calibration lifecycle --------------------------------------------------------------


@pytest.mark.parametrize("flow", ["basic", "sequential"])
def test_every_target_layer_is_quantized_onto_the_grid_of_its_recorded_scales(flow: Flow) -> None:
    model = tiny_llama()
    head = model.lm_head.weight.detach().clone()
    modifier = GPTQModifier(
        config_groups={
            "g": {
                "targets": ["Linear"],
                "weights": {"num_bits": 4, "strategy": "group", "group_size": 32},
            }
        },
        ignore=["lm_head"],
    )
    session = start(model, modifier)
    calibrate(session, model, batches(), flow)
    session.finalize()
    exported = modifier.export()
    targets = [n for n in linears(model) if n != "lm_head"]
    assert list(exported) == targets == modifier.compressed
    for name in targets:
        weight = linears(model)[name].weight.detach()
        entry = exported[name]
        args = QuantizationArgs(num_bits=4, strategy="group", group_size=32)
        scale, zero_point = entry["weight_scale"], entry["weight_zero_point"]
        assert scale.shape == (weight.shape[0], weight.shape[1] // 32)
        assert torch.equal(
            dequantize(quantize(weight, scale, zero_point, args), scale, zero_point, args), weight
        )
        assert torch.equal(dequantize(entry["weight"], scale, zero_point, args), weight)
        assert entry["weight"].dtype == torch.int8
        assert entry["scheme"]["weights"]["num_bits"] == 4
        assert int(entry["weight"].min()) >= -8
        assert int(entry["weight"].max()) <= 7
    assert torch.equal(model.lm_head.weight, head)  # ignored


def test_the_sequential_flow_quantizes_a_layer_when_its_block_ends_and_only_then() -> None:
    model = tiny_llama()
    modifier = GPTQModifier(scheme="W8A16", ignore=["lm_head"])
    session = start(model, modifier)
    first, second = model.model.layers
    with torch.no_grad():
        session.event(EventType.CALIBRATION_START)
        for batch in batches():
            model(**batch)
        before = second.mlp.down_proj.weight.detach().clone()
        session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[first])
        assert modifier.compressed == [n for n in linears(model) if n.startswith("model.layers.0")]
        assert torch.equal(second.mlp.down_proj.weight, before)
        session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[second])
    assert len(modifier.compressed) == 14
    session.event(EventType.CALIBRATION_END)
    session.finalize()


def test_a_compressed_layer_is_not_compressed_again() -> None:
    model = tiny_llama()
    modifier = GPTQModifier(scheme="W8A16", ignore=["lm_head"])
    session = start(model, modifier)
    calibrate(session, model, batches(), "sequential")
    weights = {n: m.weight.detach().clone() for n, m in linears(model).items()}
    report = modifier.report()
    with torch.no_grad():  # a second calibration, and a block end for a compressed layer
        session.event(EventType.CALIBRATION_START)
        assert torch_hooks(model) == 2  # the padding watch only: no layer is waiting
        for batch in batches(2):
            model(**batch)
        session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[model.model.layers[0]])
        session.event(EventType.CALIBRATION_END)
    session.finalize()
    assert all(torch.equal(m.weight, weights[n]) for n, m in linears(model).items())
    assert modifier.report() == report


def test_the_calibration_hooks_are_gone_after_calibration_end_and_after_finalize() -> None:
    model = tiny_llama()
    assert torch_hooks(model) == 0
    modifier = GPTQModifier(scheme="W8A16", ignore=["lm_head"])
    session = start(model, modifier)
    session.event(EventType.CALIBRATION_START)
    assert torch_hooks(model) == 14 + 2  # one per target layer, and the padding watch
    with torch.no_grad():
        model(**batches(1)[0])
    session.event(EventType.CALIBRATION_END)
    assert torch_hooks(model) == 0
    session.finalize()

    # A session refuses finalize while calibrating; the modifier alone accepts it.
    interrupted = tiny_llama()
    other = GPTQModifier(scheme="W8A16", ignore=["lm_head"])
    state = State(model=interrupted)
    other.initialize(state)
    other.update_event(state, Event(EventType.CALIBRATION_START))
    assert torch_hooks(interrupted) == 16
    other.finalize(state)  # without CALIBRATION_END
    assert torch_hooks(interrupted) == 0


def test_a_session_with_gptq_replays_against_the_declared_tables() -> None:
    for flow in ("basic", "sequential"):
        model = tiny_llama()
        session = start(model, GPTQModifier(scheme="W8A16", ignore=["lm_head"]), trace=True)
        calibrate(session, model, batches(2), flow)
        session.finalize()
        assert session.trace is not None
        result = verify(session.trace.records)
        assert result.ok, result.divergence
        assert result.complete


def test_padding_positions_add_no_input_to_the_hessians() -> None:
    model = tiny_llama()
    modifier = GPTQModifier(scheme="W8A16", ignore=["lm_head"])
    session = start(model, modifier)
    calibrate(session, model, batches(3, padded=5))
    session.finalize()
    samples = {entry["samples"] for entry in modifier.report().values()}
    assert samples == {3 * (4 * 12 - 5)}


def test_a_target_layer_that_never_ran_is_an_error_at_calibration_end() -> None:
    model = tiny_llama()
    model.model.unused = torch.nn.Linear(64, 64)
    modifier = GPTQModifier(scheme="W8A16", ignore=["lm_head"])
    session = start(model, modifier)
    with torch.no_grad():
        session.event(EventType.CALIBRATION_START)
        model(**batches(1)[0])
        weights = {n: m.weight.detach().clone() for n, m in linears(model).items()}
        with pytest.raises(CalibrationError, match=r"model\.unused.*To fix.*ignore"):
            session.event(EventType.CALIBRATION_END)
    assert modifier.compressed == []  # nothing was compressed
    assert all(torch.equal(m.weight, weights[n]) for n, m in linears(model).items())


# --- what GPTQ buys --------------------------------------------------------------------------


def correlated_inputs(rows: int, width: int, rank: int = 6) -> torch.Tensor:
    """Inputs that span few directions, as a model's activations do."""
    generator = torch.Generator().manual_seed(3)
    basis = torch.randn(rank, width, generator=generator)
    return torch.randn(rows, rank, generator=generator) @ basis + 0.05 * torch.randn(
        rows, width, generator=generator
    )


@pytest.mark.parametrize("scheme", ["W4A16", "W8A16", "FP8_DYNAMIC"])
def test_its_output_error_on_calibration_data_is_below_round_to_nearest(scheme: str) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(128, 32, bias=False)
    model = torch.nn.Sequential(layer)
    original = layer.weight.detach().clone()
    inputs = correlated_inputs(256, 128)
    modifier = GPTQModifier(scheme=scheme, actorder=None)
    session = start(model, modifier)
    with torch.no_grad():
        session.event(EventType.CALIBRATION_START)
        model(inputs)
        session.event(EventType.CALIBRATION_END)
    session.finalize()
    args = modifier.plan["0"]
    rounded, _, _ = round_to_nearest(original, args)
    gptq_error = (inputs @ (original - layer.weight.detach()).T).norm()
    rtn_error = (inputs @ (original - rounded).T).norm()
    assert gptq_error < 0.5 * rtn_error


def test_activation_order_group_exports_each_columns_group() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 16, bias=False)
    model = torch.nn.Sequential(layer)
    modifier = GPTQModifier(
        config_groups={
            "g": {
                "targets": "Linear",
                "weights": {"num_bits": 4, "strategy": "group", "group_size": 16},
            }
        },
        actorder="group",
    )
    session = start(model, modifier)
    with torch.no_grad():
        session.event(EventType.CALIBRATION_START)
        model(correlated_inputs(128, 64) * torch.linspace(0.1, 3.0, 64))
        session.event(EventType.CALIBRATION_END)
    session.finalize()
    entry = modifier.export()["0"]
    g_idx = entry["weight_g_idx"]
    assert sorted(torch.bincount(g_idx.long()).tolist()) == [16] * 4
    assert not torch.equal(g_idx, torch.arange(64) // 16)  # activation order moved columns
    scale = entry["weight_scale"][:, g_idx.long()]
    zero = entry["weight_zero_point"][:, g_idx.long()]
    weight = layer.weight.detach()
    assert torch.equal((entry["weight"].float() - zero.float()) * scale, weight)


def test_preserve_sparsity_mask_keeps_pruned_weights_at_zero(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def pruned_layer() -> torch.nn.Linear:
        torch.manual_seed(0)
        layer = torch.nn.Linear(64, 16, bias=False)
        with torch.no_grad():
            layer.weight[:, ::2] = 0.0
        return layer

    results = {}
    for preserve in (True, False):
        layer = pruned_layer()
        model = torch.nn.Sequential(layer)
        session = start(model, GPTQModifier(scheme="W8A16", preserve_sparsity_mask=preserve))
        with caplog.at_level(logging.WARNING, logger="modfsm"), torch.no_grad():
            caplog.clear()
            session.event(EventType.CALIBRATION_START)
            model(correlated_inputs(128, 64))
            session.event(EventType.CALIBRATION_END)
        session.finalize()
        results[preserve] = (layer.weight.detach(), caplog.text)
    kept, quiet = results[True]
    filled, warned = results[False]
    assert bool((kept[:, ::2] == 0).all())
    assert "preserve_sparsity_mask" not in quiet
    assert not bool((filled[:, ::2] == 0).all())  # GPTQ moved some of them
    assert "50% zeros" in warned
    assert "preserve_sparsity_mask: true" in warned


# --- arguments ----------------------------------------------------------------------------------


def test_the_default_activation_order_is_static_true_means_group() -> None:
    assert GPTQModifier(scheme="W8A16").order == "weight"
    assert GPTQModifier(scheme="W8A16", actorder=True).order == "group"
    assert GPTQModifier(scheme="W8A16", actorder="dynamic").order == "group"
    assert GPTQModifier(scheme="W8A16", actorder=False).order is None
    assert GPTQModifier(scheme="W8A16", actorder=None).order is None


def test_a_scheme_mapping_assigns_presets_to_targets() -> None:
    model = tiny_llama()
    modifier = GPTQModifier(scheme={"W8A16": ["re:.*self_attn.*"], "W4A16_ASYM": "re:.*down_proj"})
    start(model, modifier)
    plan = modifier.plan
    down = plan["model.layers.0.mlp.down_proj"]  # 128 inputs: one group
    assert (down.num_bits, down.symmetric, down.group_size) == (4, False, 128)
    assert plan["model.layers.1.self_attn.q_proj"].num_bits == 8
    assert len(plan) == 10
    assert list(plan) == [n for n in linears(model) if n in plan]  # model order
    plain = GPTQModifier(scheme="W8A16", targets=["re:.*self_attn.*"])
    start(tiny_llama(), plain)
    assert plain.plan == {n: a for n, a in plan.items() if "self_attn" in n}


Refused = tuple[dict[str, Any], str]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            {"config_groups": {"g": {"targets": "Linear", "input_activations": {"num_bits": 8}}}},
            r"quantizes no weights.*To fix.*QuantizationModifier",
        ),
        ({"scheme": "NVFP4A16"}, r"FP4.*not for FP4's group scales.*To fix"),
        ({"scheme": "W4A16", "config_groups": {}}, "exactly one of scheme and config_groups"),
        ({}, "exactly one of scheme and config_groups, got neither"),
        (
            {
                "config_groups": {"g": {"targets": "Linear", "weights": {"num_bits": 8}}},
                "targets": "Linear",
            },
            "each group names its targets",
        ),
        ({"scheme": {"W8A16": "Linear"}, "targets": "Linear"}, "names the targets"),
        ({"scheme": "W8A16", "offload_hessians": True}, r"offload_hessians=True.*To fix"),
        (
            {"scheme": "W8A16", "kv_cache_scheme": {"num_bits": 8, "dynamic": True}},
            r"kv_cache_scheme\.dynamic.*To fix",
        ),
        ({"scheme": "W8A16", "input_observer": "minmax"}, r"input_observer.*input_activations"),
        ({"scheme": "W8A16", "weight_observer": "mse"}, r"'mse' is not supported.*To fix"),
        ({"scheme": "W8A16", "observer": {"input": "mse"}}, "only a weights observer"),
        ({"scheme": "W8A16", "bypass_divisibility_checks": True}, "bypass_divisibility"),
        ({"scheme": "W8A16", "actorder": "sideways"}, r"actorder must be.*To fix"),
        ({"scheme": "W8A16", "block_size": 0}, "block_size"),
        ({"scheme": "W8A16", "dampening_frac": -0.1}, r"dampening_frac.*To fix"),
        ({"scheme": "W8A16", "batched_quantization": 0}, "batched_quantization"),
        ({"scheme": 8}, "scheme must be a preset name"),
    ],
)
def test_unsupported_or_bad_arguments_are_refused_at_construction(
    arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        GPTQModifier(**arguments)


def test_arguments_of_older_recipes_are_accepted_where_they_change_nothing() -> None:
    modifier = GPTQModifier(
        scheme="W4A16",
        sequential_update=True,
        sequential_targets=["LlamaDecoderLayer"],
        offload_hessians=False,
        batched_quantization=4,
        weight_observer="minmax",
    )
    assert modifier.sequential_targets == ["LlamaDecoderLayer"]
    GPTQModifier(scheme="W4A16", observer={"weights": "memoryless_minmax"})


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: (tiny_llama(), GPTQModifier(scheme="W4A16")),
            r"'model\.layers\.0\.self_attn\.q_proj' has 64 inputs, not a multiple of group_size "
            r"128.*To fix",
        ),
        (
            lambda: (
                torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1)),
                GPTQModifier(scheme="W8A16", targets="Conv2d"),
            ),
            r"Linear layers only.*0 \(Conv2d\).*To fix",
        ),
        (
            lambda: (tiny_llama(), GPTQModifier(scheme="W8A16", targets="nothing")),
            r"'nothing' matches no layer.*lm_head \(Linear\)",
        ),
    ],
)
def test_targets_that_do_not_fit_are_refused_at_initialize(
    build: Callable[[], tuple[torch.nn.Module, GPTQModifier]], message: str
) -> None:
    model, modifier = build()
    with pytest.raises(ConfigError, match=message):
        start(model, modifier)
    assert not modifier.initialized


def test_a_weight_tied_to_another_module_is_refused() -> None:
    embedding = torch.nn.Embedding(16, 8)
    head = torch.nn.Linear(8, 16, bias=False)
    head.weight = embedding.weight
    model = torch.nn.ModuleDict({"embed": embedding, "head": head})
    with pytest.raises(ConfigError, match=r"'head' shares its weight with 'embed'.*To fix"):
        start(model, GPTQModifier(scheme="W8A16"))


# --- export, checkpoints, recipes ---------------------------------------------------------


def test_export_refuses_until_every_layer_is_compressed_and_after_the_weights_change() -> None:
    model = tiny_llama()
    modifier = GPTQModifier(scheme="W8A16", ignore=["lm_head"])
    with pytest.raises(IllegalTransitionError, match="not initialized"):
        modifier.export()
    session = start(model, modifier)
    with pytest.raises(IllegalTransitionError, match=r"14 target layer\(s\) are not compressed"):
        modifier.export()
    calibrate(session, model, batches(1))
    modifier.export()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.mul_(1.001)
    with pytest.raises(ConfigError, match=r"'model\.layers\.1\.mlp\.up_proj' is no longer on"):
        modifier.export()


def test_a_run_resumed_mid_calibration_quantizes_as_the_uninterrupted_one() -> None:
    data = batches(2)
    straight_model = tiny_llama()
    straight = GPTQModifier(scheme="W8A16", ignore=["lm_head"])
    session = start(straight_model, straight)
    with torch.no_grad():
        session.event(EventType.CALIBRATION_START)
        straight_model(**data[0])
        session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[straight_model.model.layers[0]])
        saved = session.state_dict()
        model_state = {k: v.clone() for k, v in straight_model.state_dict().items()}
        straight_model(**data[1])
        session.event(EventType.CALIBRATION_END)
    session.finalize()

    resumed_model = tiny_llama(seed=1)
    resumed_model.load_state_dict(model_state)
    resumed = GPTQModifier(scheme="W8A16", ignore=["lm_head"])
    session = Session()
    session.load_state_dict(saved)
    session.initialize(model=resumed_model, recipe=[resumed])
    assert resumed.calibrating
    assert len(resumed.compressed) == 7
    with torch.no_grad():
        resumed_model(**data[1])
        session.event(EventType.CALIBRATION_END)
    session.finalize()
    for name, layer in linears(straight_model).items():
        assert torch.equal(layer.weight, linears(resumed_model)[name].weight), name
    assert resumed.export().keys() == straight.export().keys()


def test_the_sample_recipes_load_and_build_the_one_shot_modifiers() -> None:
    (stage,) = Recipe.load(RECIPES / "oneshot_gptq_w4a16.yaml").build()
    (gptq,) = stage.modifiers
    assert isinstance(gptq, GPTQModifier)
    assert (gptq.scheme, gptq.targets, gptq.ignore) == ("W4A16", "Linear", ["lm_head"])
    sparse, quantized = Recipe.load(RECIPES / "oneshot_sparse_then_gptq.yaml").build()
    assert isinstance(sparse.modifiers[0], SparseGPTModifier)
    assert sparse.modifiers[0].mask_structure == "2:4"
    assert isinstance(quantized.modifiers[0], GPTQModifier)
    assert quantized.modifiers[0].preserve_sparsity_mask


def test_a_recipe_in_the_reference_shape_reports_bad_gptq_arguments_by_path() -> None:
    text = (
        "oneshot_stage:\n  quantization_modifiers:\n    GPTQModifier:\n"
        "      scheme: W8A8\n      ignore: [lm_head]\n      dampening_frac: -1\n"
    )
    with pytest.raises(ValueError, match=r"GPTQModifier.*dampening_frac"):
        Recipe.load(text).build()
