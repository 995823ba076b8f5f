"""``SmoothQuantModifier``: smoothing on the calibration lifecycle, driven through a ``Session``.

The events are sent as a one-shot pipeline sends them (``tests/one_shot_support.py``):
``CALIBRATION_START``, forward passes, ``SEQUENTIAL_EPOCH_END(modules=[layer])`` per
decoder layer (sequential) or none (basic), ``CALIBRATION_END``, ``finalize``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from modfsm.engine import ConfigError, EventType
from modfsm.engine.loop.session import Session
from modfsm.modifiers.quantization import GPTQModifier
from modfsm.modifiers.smoothing import SmoothQuantModifier
from modfsm.modifiers.solvers import CalibrationError
from tests.one_shot_support import Batch, Flow, batches, calibrate, start, tiny_llama, torch_hooks

transformers = pytest.importorskip("transformers")

SMOOTH = ("input_layernorm", "post_attention_layernorm")


def logits(model: Any, data: Sequence[Batch]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**batch).logits for batch in data])


def input_maxima(model: Any, data: Sequence[Batch], layer: str) -> torch.Tensor:
    """Per input channel, the largest |input| module ``layer`` sees over ``data``."""
    seen: list[torch.Tensor] = []
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].reshape(-1, args[0].shape[-1]).abs().amax(0))
    )
    try:
        logits(model, data)
    finally:
        handle.remove()
    return torch.stack(seen).amax(0)


def weights(model: Any) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


# --- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"smoothing_strength": 0}, "smoothing_strength"),
        ({"smoothing_strength": 1.5}, "smoothing_strength"),
        ({"smoothing_strength": True}, "smoothing_strength"),
        ({"smoothing_strength": "0.5"}, "smoothing_strength"),
        ({"mappings": [["re:.*q_proj"]]}, "mappings"),
        ({"num_calibration_steps": 0}, "num_calibration_steps"),
        ({"calibration_function": print}, "calibration_function"),
        ({"algorithm": "log_equalization"}, "algorithm"),
        ({"ignore": [3]}, "ignore"),
    ],
)
def test_bad_arguments_are_refused_at_construction(arguments: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SmoothQuantModifier(**arguments)
    assert caught.value.field == field


def test_a_recipe_names_it_and_its_mappings_in_the_reference_shape() -> None:
    recipe = """
    oneshot_stage:
      smoothing_modifiers:
        SmoothQuantModifier:
          smoothing_strength: 1.0
          num_calibration_steps: 2
          mappings:
            - balance_layers: ["re:.*gate_proj", "re:.*up_proj"]
              smooth_layers: "re:.*post_attention_layernorm"
    """
    model = tiny_llama()
    session = Session()
    session.initialize(model=model, recipe=recipe)
    (_, modifier), = session.modifiers  # fmt: skip
    assert isinstance(modifier, SmoothQuantModifier)
    assert [m.smooth_name for m in modifier.resolved] == [
        "model.layers.0.post_attention_layernorm",
        "model.layers.1.post_attention_layernorm",
    ]


# --- what smoothing does ---------------------------------------------------------------------


@pytest.mark.parametrize("flow", ["basic", "sequential"])
def test_smoothing_leaves_the_models_function_unchanged(flow: Flow) -> None:
    model, data = tiny_llama(), batches()
    before, norm = logits(model, data), model.model.layers[0].input_layernorm.weight.clone()
    modifier = SmoothQuantModifier()
    session = start(model, modifier)
    calibrate(session, model, data, flow)
    after = logits(model, data)
    assert modifier.smoothed == [f"model.layers.{i}.{n}" for i in range(2) for n in SMOOTH]
    assert not torch.equal(model.model.layers[0].input_layernorm.weight, norm)
    assert (after - before).abs().max() <= 1e-4 * before.abs().max()
    session.finalize()
    assert torch_hooks(model) == 0


def test_the_scales_are_the_papers_formula_and_are_folded_into_both_sides() -> None:
    model, data = tiny_llama(), batches()
    layer = model.model.layers[1]
    activations = input_maxima(model, data, "model.layers.1.mlp.gate_proj")
    gate, up, norm = (
        module.weight.detach().clone()
        for module in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.post_attention_layernorm)
    )
    alpha = 0.7
    expected = activations.pow(alpha) / torch.maximum(gate.abs().amax(0), up.abs().amax(0)).pow(
        1 - alpha
    )
    modifier = SmoothQuantModifier(smoothing_strength=alpha)
    calibrate(start(model, modifier), model, data)
    scales = modifier.scales["model.layers.1.post_attention_layernorm"]
    torch.testing.assert_close(scales, expected)
    torch.testing.assert_close(layer.post_attention_layernorm.weight, norm / expected)
    torch.testing.assert_close(layer.mlp.gate_proj.weight, gate * expected)
    torch.testing.assert_close(layer.mlp.up_proj.weight, up * expected)
    report = modifier.report()["model.layers.1.post_attention_layernorm"]
    assert report["balance"] == ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]
    assert report["scale_max"] == pytest.approx(float(expected.max()))


def test_an_outlier_channel_is_flattened_by_smoothing() -> None:
    model, data = tiny_llama(), batches()
    with torch.no_grad():
        model.model.layers[0].input_layernorm.weight[5] *= 50.0
    name = "model.layers.0.self_attn.q_proj"

    def spread() -> float:  # largest channel over the median channel of q_proj's inputs
        maxima = input_maxima(model, data, name)
        return float(maxima.max() / maxima.median())

    before = spread()
    assert before > 20  # the outlier is there
    calibrate(start(model, SmoothQuantModifier(smoothing_strength=0.5)), model, data)
    after = spread()
    assert after < before / 4


def test_both_pipelines_give_the_same_smoothed_weights() -> None:
    results = []
    for flow in ("basic", "sequential"):
        model = tiny_llama()
        calibrate(start(model, SmoothQuantModifier()), model, batches(), flow)
        results.append(weights(model))
    basic, sequential = results
    assert basic.keys() == sequential.keys()
    for name in basic:
        torch.testing.assert_close(sequential[name], basic[name], rtol=1e-4, atol=1e-6)


def test_a_sequential_epoch_end_smooths_only_the_mappings_inside_its_modules() -> None:
    model, data = tiny_llama(), batches()
    modifier = SmoothQuantModifier()
    session = start(model, modifier)
    with torch.no_grad():
        session.event(EventType.CALIBRATION_START)
        logits(model, data)
        session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[model.model.layers[0]])
        assert modifier.smoothed == [f"model.layers.0.{n}" for n in SMOOTH]
        assert modifier.calibrating
        session.event(EventType.CALIBRATION_END)
    assert len(modifier.smoothed) == 4
    assert not modifier.calibrating
    assert torch_hooks(model) == 0


def test_only_the_first_num_calibration_steps_batches_count() -> None:
    data = batches(3)

    def scales(modifier: SmoothQuantModifier, used: Sequence[Batch]) -> torch.Tensor:
        model = tiny_llama()
        calibrate(start(model, modifier), model, used)
        return modifier.scales["model.layers.0.input_layernorm"]

    limited = scales(SmoothQuantModifier(num_calibration_steps=1), data)
    torch.testing.assert_close(limited, scales(SmoothQuantModifier(), data[:1]))
    assert not torch.allclose(limited, scales(SmoothQuantModifier(), data))


def test_a_mapping_that_saw_no_activation_is_an_error_and_nothing_is_smoothed() -> None:
    model = tiny_llama()
    before = weights(model)
    modifier = SmoothQuantModifier()
    session = start(model, modifier)
    session.event(EventType.CALIBRATION_START)
    with pytest.raises(CalibrationError, match="4 smooth layer\\(s\\) produced no output"):
        session.event(EventType.CALIBRATION_END)
    assert modifier.smoothed == []
    assert all(torch.equal(before[n], v) for n, v in weights(model).items())


def test_a_second_calibration_smooths_nothing_again() -> None:
    model, data = tiny_llama(), batches()
    modifier = SmoothQuantModifier()
    session = start(model, modifier)
    calibrate(session, model, data)
    once = weights(model)
    calibrate(session, model, data)
    assert all(torch.equal(once[n], v) for n, v in weights(model).items())


# --- order in a stage ---------------------------------------------------------------------------


def test_smoothing_first_in_a_stage_lets_gptq_quantize_the_smoothed_weights() -> None:
    model, data = tiny_llama(), batches()
    smooth, gptq = SmoothQuantModifier(), GPTQModifier(scheme="W8A16", ignore=["lm_head"])
    session = start(model, smooth, gptq)
    calibrate(session, model, data, "sequential")
    assert len(smooth.smoothed) == 4
    gptq.export()  # every weight is still on the grid GPTQ put it on


def test_smoothing_after_gptq_in_a_stage_would_move_the_weights_off_their_grid() -> None:
    model, data = tiny_llama(), batches()
    gptq, smooth = GPTQModifier(scheme="W8A16", ignore=["lm_head"]), SmoothQuantModifier()
    session = start(model, gptq, smooth)
    calibrate(session, model, data, "sequential")
    with pytest.raises(ConfigError, match="no longer on the grid"):
        gptq.export()


# --- checkpoints ----------------------------------------------------------------------------------


def test_a_checkpoint_taken_mid_calibration_resumes_to_the_same_scales() -> None:
    data = batches(3)
    whole, model = SmoothQuantModifier(), tiny_llama()
    calibrate(start(model, whole), model, data)

    first, model_a = SmoothQuantModifier(), tiny_llama()
    session = start(model_a, first)
    with torch.no_grad():
        session.event(EventType.CALIBRATION_START)
        logits(model_a, data[:2])
    saved = first.state_dict()
    assert saved["calibrating"] is True
    assert set(saved["steps"].values()) == {2}

    second, model_b = SmoothQuantModifier(), tiny_llama()
    resumed = start(model_b, second)
    second.load_state_dict(saved, resumed.state)
    assert torch_hooks(model_b) == 4  # re-attached: one per smooth layer
    with torch.no_grad():
        resumed.event(EventType.CALIBRATION_START)  # the resumed run's pipeline starts again
        assert torch_hooks(model_b) == 4
        logits(model_b, data[2:])
        resumed.event(EventType.CALIBRATION_END)
    for name, scale in whole.scales.items():
        torch.testing.assert_close(second.scales[name], scale)


def test_a_foreign_checkpoint_is_refused() -> None:
    modifier = SmoothQuantModifier()
    session = start(tiny_llama(), modifier)
    with pytest.raises(ConfigError, match="keys"):
        modifier.load_state_dict({"calibrating": False}, session.state)
    stranger = {"calibrating": False, "maxima": {}, "steps": {}, "scales": {"x": torch.ones(2)}}
    with pytest.raises(ConfigError, match="not smooth layers"):
        modifier.load_state_dict(stranger, session.state)
