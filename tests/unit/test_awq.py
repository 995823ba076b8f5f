"""AWQModifier: the scale search, the grid, the pipelines, the arguments and the export."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from modfsm.engine import ConfigError, EventType
from modfsm.engine.app.pipeline import run_pipeline
from modfsm.modifiers.awq import AWQModifier
from modfsm.modifiers.awq.search import (
    InputStatistics,
    candidate_grid,
    candidate_scales,
    round_to_grid,
    search_scales,
    weight_means,
)
from modfsm.modifiers.quantization import QuantizationModifier
from modfsm.modifiers.quantization.args import QuantizationArgs
from modfsm.modifiers.quantization.fake import dequantize
from modfsm.modifiers.solvers import CalibrationError
from tests.one_shot_support import batches, calibrate, linears, start, tiny_llama

ASYM4_G32: dict[str, Any] = {
    "group_0": {
        "targets": ["Linear"],
        "weights": {"num_bits": 4, "symmetric": False, "strategy": "group", "group_size": 32},
    }
}
ARGS = QuantizationArgs(num_bits=4, symmetric=False, strategy="group", group_size=32)


def awq(**kwargs: Any) -> AWQModifier:
    """4-bit asymmetric weights in groups of 32 (the tiny Llama's layers are 64 or 128 wide)."""
    kwargs.setdefault("config_groups", ASYM4_G32)
    kwargs.setdefault("ignore", ["lm_head"])
    return AWQModifier(**kwargs)


def with_outliers(model: Any) -> Any:
    """A few input channels of every norm 20 times larger: the activations AWQ protects."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight[:3] *= 20
            layer.post_attention_layernorm.weight[5:8] *= 20
    return model


def direct_error(inputs: torch.Tensor, weights: list[torch.Tensor], scales: torch.Tensor) -> float:
    """The mean squared output error of ``Q(W s) / s`` against ``W`` on ``inputs``, directly."""
    total, count = 0.0, 0
    for weight in weights:
        restored, _, _ = round_to_grid(weight * scales, ARGS)
        error = inputs.double() @ (restored / scales - weight).double().T
        total += float((error**2).sum())
        count += error.numel()
    return total / count


def assert_on_grid(modifier: AWQModifier, model: Any) -> None:
    """Every target weight equals its exported integers dequantized with its exported scales."""
    layers = linears(model)
    for name, entry in modifier.export().items():
        scale, zero_point = entry["weight_scale"].flatten(), entry["weight_zero_point"].flatten()
        restored = dequantize(entry["weight"], scale, zero_point, ARGS)
        assert torch.equal(restored, layers[name].weight.detach()), name


# --- the search --------------------------------------------------------------------------------


def test_the_reported_losses_are_the_output_errors_measured_on_the_inputs() -> None:
    model = tiny_llama()
    seen: list[torch.Tensor] = []
    attention = model.model.layers[0].self_attn
    handle = attention.q_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    with torch.no_grad():
        for batch in batches():
            model(**batch)
    handle.remove()
    inputs = torch.cat(seen).reshape(-1, 64)
    statistics = InputStatistics.empty(64)
    for chunk in seen:
        statistics.update(chunk)
    weights = [attention.q_proj.weight.detach(), attention.k_proj.weight.detach(),
               attention.v_proj.weight.detach()]  # fmt: skip
    result = search_scales(statistics, weights, [ARGS] * 3, n_grid=10, duo_scaling=True)
    assert statistics.count == inputs.shape[0] == 144
    rtn = direct_error(inputs, weights, torch.ones(64))
    chosen = direct_error(inputs, weights, result.scales)
    assert result.identity_loss == pytest.approx(rtn, rel=1e-6)
    assert result.loss == pytest.approx(chosen, rel=1e-6)
    assert result.loss == min(result.losses) <= result.identity_loss


def test_the_search_beats_round_to_nearest_clearly_when_a_few_channels_dominate() -> None:
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(512, 64, generator=generator)
    inputs[:, :4] *= 30.0  # salient channels
    weight = torch.randn(48, 64, generator=generator)
    statistics = InputStatistics.empty(64)
    statistics.update(inputs)
    result = search_scales(statistics, [weight], [ARGS], n_grid=20, duo_scaling=True)
    assert result.ratio > 0
    assert result.loss < 0.8 * result.identity_loss
    assert bool((result.scales[:4] > result.scales[4:].max()).all())  # the salient grow


def test_the_grid_holds_the_identity_and_n_grid_ratios() -> None:
    for duo in (True, False, "both"):
        grid = candidate_grid(5, duo)
        scales = candidate_scales(torch.rand(8) + 0.1, torch.rand(8) + 0.1, grid[0])
        assert torch.equal(scales, torch.ones(8))
        assert sorted({c.ratio for c in grid}) == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert {c.duo for c in candidate_grid(5, False)} == {False}
    assert len(candidate_grid(5, True)) == 6
    assert len(candidate_grid(5, "both")) == 10


def test_scales_are_normalised_by_the_geometric_middle_of_their_range() -> None:
    x_mean = torch.tensor([1.0, 4.0, 16.0])
    scales = candidate_scales(x_mean, None, candidate_grid(2, False)[1])  # ratio 0.5
    assert torch.allclose(scales, torch.tensor([0.5, 1.0, 2.0]))


def test_weight_means_normalise_each_group_by_its_largest_magnitude() -> None:
    weight = torch.tensor([[1.0, -2.0, 3.0, 6.0], [4.0, 0.0, -8.0, 8.0]])
    args = QuantizationArgs(num_bits=4, strategy="group", group_size=2)
    means = weight_means([weight], [args])
    expected = torch.tensor([(0.5 + 1.0) / 2, (1.0 + 0.0) / 2, (0.5 + 1.0) / 2, (1.0 + 1.0) / 2])
    assert torch.allclose(means, expected, atol=1e-5)


# --- the modifier ------------------------------------------------------------------------------


@pytest.mark.parametrize("duo_scaling", [True, False, "both"])
def test_each_mapping_ends_no_worse_than_round_to_nearest(duo_scaling: bool | str) -> None:
    model = tiny_llama()
    modifier = awq(duo_scaling=duo_scaling, n_grid=8)
    session = start(model, modifier)
    calibrate(session, model, batches())
    report = modifier.report()
    assert list(report) == modifier.mapping_names
    assert len(report) == 8  # 4 mappings per block, v_proj -> o_proj included (no GQA)
    for entry in report.values():
        assert entry["loss"] <= entry["identity_loss"]
        assert entry["samples"] == 144
        if duo_scaling is False:
            assert entry["duo"] is False
    session.finalize()


def test_every_target_weight_lies_exactly_on_its_grid() -> None:
    model = tiny_llama()
    modifier = awq()
    session = start(model, modifier)
    calibrate(session, model, batches())
    exported = modifier.export()
    layers = linears(model)
    assert sorted(exported) == sorted(n for n in layers if n != "lm_head")
    for name, entry in exported.items():
        weight = layers[name].weight.detach()
        codes, scale = entry["weight"], entry["weight_scale"]
        zero_point = entry["weight_zero_point"]
        assert codes.dtype == torch.int8
        assert int(codes.min()) >= -8
        assert int(codes.max()) <= 7
        assert scale.shape == (weight.shape[0], weight.shape[1] // 32)
        restored = dequantize(codes, scale.flatten(), zero_point.flatten(), ARGS)
        assert torch.equal(restored, weight), name
        assert entry["scheme"]["weights"]["num_bits"] == 4
    session.finalize()


def test_awq_keeps_the_model_closer_to_float_than_round_to_nearest() -> None:
    model = with_outliers(tiny_llama())
    probe = batches(6)[4:]

    def logits(net: Any) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([net(**batch).logits for batch in probe])

    reference = logits(model)
    rtn = copy.deepcopy(model)
    with torch.no_grad():
        for name, layer in linears(rtn).items():
            if name != "lm_head":
                layer.weight.copy_(round_to_grid(layer.weight, ARGS)[0])
    modifier = awq()
    session = start(model, modifier)
    calibrate(session, model, batches(4))
    awq_error = float(((logits(model) - reference) ** 2).mean())
    rtn_error = float(((logits(rtn) - reference) ** 2).mean())
    assert awq_error < 0.9 * rtn_error
    session.finalize()


@pytest.mark.parametrize("pipeline", ["basic", "sequential"])
def test_both_pipelines_quantize_every_target(pipeline: Any) -> None:
    model = tiny_llama()
    modifier = awq(ignore=[])  # lm_head too: in no mapping, round-to-nearest only
    session = start(model, modifier)
    run_pipeline(session, model, batches(), pipeline)
    assert modifier.quantized == list(linears(model))
    assert modifier.smoothed == modifier.mapping_names
    assert_on_grid(modifier, model)
    session.finalize()


def test_a_sequential_epoch_quantizes_only_its_own_block() -> None:
    model = tiny_llama()
    modifier = awq()
    session = start(model, modifier)
    first = model.model.layers[0]
    with torch.no_grad():
        session.event(EventType.CALIBRATION_START)
        for batch in batches():
            model(**batch)
        session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[first])
    assert modifier.smoothed == [n for n in modifier.mapping_names if ".layers.0." in n]
    assert modifier.quantized == [n for n in linears(model) if ".layers.0." in n]
    with torch.no_grad():
        session.event(EventType.CALIBRATION_END)
    assert len(modifier.quantized) == 14
    session.finalize()


def test_o_proj_under_grouped_query_attention_is_rounded_without_a_mapping() -> None:
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()  # type: ignore[no-untyped-call]  # transformers leaves eval unannotated
    modifier = awq()
    session = start(model, modifier)
    calibrate(session, model, batches())
    assert "model.layers.0.self_attn.v_proj" not in modifier.mapping_names
    assert len(modifier.mapping_names) == 3
    assert "model.layers.0.self_attn.o_proj" in modifier.quantized
    assert_on_grid(modifier, model)
    session.finalize()


def test_padding_is_left_out_of_the_statistics() -> None:
    model = tiny_llama()
    modifier = awq()
    session = start(model, modifier)
    calibrate(session, model, batches(3, padded=5))
    assert {entry["samples"] for entry in modifier.report().values()} == {3 * (48 - 5)}
    session.finalize()


def test_a_mapping_without_inputs_at_calibration_end_raises_and_changes_nothing() -> None:
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    modifier = awq()
    session = start(model, modifier)
    session.event(EventType.CALIBRATION_START)
    with pytest.raises(CalibrationError, match="received no input") as caught:
        session.event(EventType.CALIBRATION_END)
    assert caught.value.problem == "no samples"
    assert "model.layers.0.input_layernorm" in str(caught.value)
    assert modifier.smoothed == []
    assert modifier.quantized == []
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]), name


def test_the_defaults_are_the_llama_mappings_and_the_papers_grid() -> None:
    modifier = AWQModifier(scheme="W4A16_ASYM")
    (scheme,) = modifier.schemes
    assert scheme.weights is not None
    assert (scheme.weights.num_bits, scheme.weights.symmetric, scheme.weights.group_size) == (
        4, False, 128)  # fmt: skip
    assert scheme.targets == ("Linear",)
    assert (modifier.duo_scaling, modifier.n_grid, modifier.offload_device) == (True, 20, None)
    assert not modifier.transform
    assert AWQModifier().transform  # no scheme: llm-compressor 0.14's transform


# --- the transform form (llm-compressor 0.14): AWQ smooths, a later modifier quantizes ------


def test_the_transform_smooths_for_the_grid_the_next_modifier_quantizes_to() -> None:
    model = with_outliers(tiny_llama())
    probe = batches(6)[4:]

    def logits(net: Any) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([net(**batch).logits for batch in probe])

    reference = logits(model)
    alone = copy.deepcopy(model)
    rtn = QuantizationModifier(config_groups=ASYM4_G32, ignore=["lm_head"])
    rtn_session = start(alone, rtn)
    calibrate(rtn_session, alone, batches(4), "sequential")
    transform = AWQModifier()
    quantizer = QuantizationModifier(config_groups=ASYM4_G32, ignore=["lm_head"])
    session = start(model, transform, quantizer)
    calibrate(session, model, batches(4), "sequential")
    assert transform.export() == {}  # the quantizing modifier exports
    assert transform.smoothed == transform.mapping_names
    assert set(quantizer.export()) == {n for n in linears(model) if n != "lm_head"}
    awq_error = float(((logits(model) - reference) ** 2).mean())
    rtn_error = float(((logits(alone) - reference) ** 2).mean())
    assert awq_error < 0.9 * rtn_error
    session.finalize()
    rtn_session.finalize()
    layer = linears(model)["model.layers.0.mlp.up_proj"]
    assert "quantization_scheme" not in layer.__dict__  # the record goes with finalize


def test_the_transform_refuses_a_float8_grid_and_skips_layers_left_in_float() -> None:
    model = tiny_llama()
    fp8 = QuantizationModifier(scheme="FP8_DYNAMIC", ignore=["lm_head"])
    session = start(model, AWQModifier(), fp8)
    with pytest.raises(ConfigError, match=r"AWQ searches scales for integer grids") as caught:
        session.event(EventType.CALIBRATION_START)  # checked before any work
    assert caught.value.field == "mappings"
    alone = AWQModifier()
    session = start(tiny_llama(), alone)  # nothing quantizes: every mapping left alone
    model = session.state.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calibrate(session, model, batches(2))
    report = alone.report()
    assert all(report[name].get("skipped") for name in alone.mapping_names)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    session.finalize()


def test_a_kv_cache_scheme_is_refused_with_the_shape_that_takes_it() -> None:
    with pytest.raises(ConfigError, match=r"kv_cache_scheme.*To fix, move it to a Quantiz"):
        AWQModifier(scheme="W4A16_ASYM", kv_cache_scheme={"num_bits": 8, "type": "float"})


def test_targets_without_a_scheme_are_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"transform.*To fix, move targets there") as caught:
        AWQModifier(targets="Linear")
    assert caught.value.field == "targets"


def test_a_checkpoint_mid_calibration_resumes_to_the_same_weights() -> None:
    straight_model, resumed_model = tiny_llama(), tiny_llama()
    straight = awq()
    session = start(straight_model, straight)
    data = batches()
    with torch.no_grad():
        session.event(EventType.CALIBRATION_START)
        for batch in data[:2]:
            straight_model(**batch)
    saved = copy.deepcopy(session.state_dict())
    resumed = awq()
    other = type(session)()
    other.load_state_dict(saved)
    other.initialize(model=resumed_model, recipe=[resumed])
    for net, sess in ((straight_model, session), (resumed_model, other)):
        with torch.no_grad():
            net(**data[2])
            sess.event(EventType.CALIBRATION_END)
    for (name, a), (_, b) in zip(straight_model.named_parameters(),
                                 resumed_model.named_parameters(), strict=True):  # fmt: skip
        assert torch.equal(a, b), name
    session.finalize()
    other.finalize()


# --- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "value"),
    [
        ({"n_grid": 0}, "n_grid", 0),
        ({"offload_device": "cpu"}, "offload_device", "cpu"),
        ({"duo_scaling": "yes"}, "duo_scaling", "yes"),
        ({"scheme": "W8A8"}, "scheme", "weights int8 sym channel; inputs int8 sym token dynamic"),
        ({"scheme": "FP8_DYNAMIC"}, "scheme", None),
        ({"mappings": "re:.*norm"}, "mappings", "re:.*norm"),
        (
            {"config_groups": {"g": {"targets": ["Linear"],
                                     "weights": {"num_bits": 4, "strategy": "tensor"}}}},
            "duo_scaling",
            True,
        ),
    ],
)  # fmt: skip
def test_bad_arguments_raise_one_config_error_naming_field_and_value(
    kwargs: dict[str, Any], field: str, value: Any
) -> None:
    with pytest.raises(ConfigError) as caught:
        AWQModifier(**kwargs)
    assert caught.value.field == field
    if value is not None:
        assert caught.value.value == value
    assert "To fix" in str(caught.value)


def test_an_unknown_mapping_pattern_is_refused_at_initialize() -> None:
    modifier = awq(mappings=[[["re:.*q_proj$"], "re:.*no_such_norm$"]])
    with pytest.raises(ConfigError, match="no_such_norm") as caught:
        start(tiny_llama(), modifier)
    assert (caught.value.field, caught.value.value) == ("mappings", "re:.*no_such_norm$")


def test_a_group_size_that_does_not_divide_a_layer_is_refused_at_initialize() -> None:
    groups = {"g": {"targets": ["Linear"], "weights": {"num_bits": 4, "strategy": "group",
                                                       "group_size": 48}}}  # fmt: skip
    with pytest.raises(ConfigError, match="group_size 48") as caught:
        start(tiny_llama(), awq(config_groups=groups))
    assert (caught.value.field, caught.value.value) == ("group_size", 48)


def test_export_before_calibration_is_refused() -> None:
    from modfsm.engine import IllegalTransitionError

    modifier = awq()
    start(tiny_llama(), modifier)
    with pytest.raises(IllegalTransitionError, match="not quantized yet"):
        modifier.export()
