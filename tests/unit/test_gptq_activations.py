"""``GPTQModifier`` with a scheme that quantizes activations (``W8A8``, static inputs).

GPTQ solves the weights; the scheme's activations are fake-quantized in the forward
pass (:mod:`modfsm.modifiers.quantization.activations`), as llm-compressor's
``GPTQModifier`` applies the whole scheme.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from modfsm.engine import ConfigError, EventType
from modfsm.engine.loop.session import Session
from modfsm.modifiers.quantization import GPTQModifier
from modfsm.modifiers.quantization.args import QuantizationArgs
from modfsm.modifiers.quantization.fake import dynamic_qparams, fake_quantize
from modfsm.modifiers.solvers import CalibrationError
from tests.one_shot_support import Flow, batches, calibrate, linears, start, tiny_llama

pytest.importorskip("transformers")

STATIC_INPUTS: dict[str, Any] = {
    "int8": {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "strategy": "channel"},
        "input_activations": {"num_bits": 8, "strategy": "tensor", "observer": "minmax"},
    }
}
TOKEN = QuantizationArgs(num_bits=8, strategy="token", dynamic=True)


def _inputs_of(model: torch.nn.Module, name: str, data: list[dict[str, torch.Tensor]]) -> Any:
    """Every input the layer ``name`` receives while ``data`` runs through ``model``."""
    seen: list[torch.Tensor] = []
    layer = linears(model)[name]
    handle = layer.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    with torch.no_grad():
        for batch in data:
            model(**batch)
    handle.remove()
    return seen


@pytest.mark.parametrize("flow", ["basic", "sequential"])
def test_w8a8_quantizes_each_layers_input_per_token_after_gptq(flow: Flow) -> None:
    model = tiny_llama()
    modifier = GPTQModifier(scheme="W8A8", ignore=["lm_head"])
    session = start(model, modifier)
    calibrate(session, model, batches(), flow)
    layer = linears(model)["model.layers.1.mlp.down_proj"]
    x = torch.randn(3, 5, layer.in_features)
    scale, zero_point = dynamic_qparams(x, TOKEN)
    expected = torch.nn.functional.linear(fake_quantize(x, scale, zero_point, TOKEN), layer.weight)
    with torch.no_grad():
        assert torch.equal(layer(x), expected)
        assert not torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight))
    entry = modifier.export()["model.layers.1.mlp.down_proj"]
    assert entry["scheme"]["input_activations"] == TOKEN.to_dict()
    assert "input_scale" not in entry  # dynamic: computed at run time
    session.finalize()
    with torch.no_grad():  # the engine took the activation quantization away
        assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight))


def test_static_input_scales_are_the_calibration_inputs_range() -> None:
    model = tiny_llama()
    data = batches()
    name = "model.layers.0.self_attn.q_proj"
    first = _inputs_of(tiny_llama(), name, data)[0]  # layer 0's first input: nothing before it
    modifier = GPTQModifier(config_groups=STATIC_INPUTS, ignore=["lm_head"])
    session = start(model, modifier)
    with torch.no_grad():
        session.event(EventType.CALIBRATION_START)
        model(**data[0])
        session.event(EventType.CALIBRATION_END)
    entry = modifier.export()[name]
    peak = float(first.abs().max())
    assert float(entry["input_scale"]) == pytest.approx(peak / 127, rel=1e-6)
    assert int(entry["input_zero_point"]) == 0
    assert entry["scheme"]["input_activations"]["strategy"] == "tensor"
    session.finalize()


def test_a_static_scale_is_fixed_when_its_block_ends() -> None:
    model = tiny_llama()
    data = batches(2)
    modifier = GPTQModifier(config_groups=STATIC_INPUTS, ignore=["lm_head"])
    session = start(model, modifier)
    activations = modifier.activations
    assert activations is not None
    name = "model.layers.0.mlp.up_proj"
    with torch.no_grad():
        session.event(EventType.CALIBRATION_START)
        model(**data[0])
        session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[model.model.layers[0]])
        settled = activations.export(name)["input_scale"].clone()
        model(**{k: v * 0 + 63 if k == "input_ids" else v for k, v in data[1].items()})
        assert torch.equal(activations.export(name)["input_scale"], settled)
        session.event(EventType.CALIBRATION_END)
    session.finalize()


def test_a_resumed_calibration_with_static_scales_exports_as_the_uninterrupted_one() -> None:
    data = batches(2)

    def run(resume: bool) -> dict[str, Any]:
        model = tiny_llama()
        modifier = GPTQModifier(config_groups=STATIC_INPUTS, ignore=["lm_head"])
        session = start(model, modifier)
        with torch.no_grad():
            session.event(EventType.CALIBRATION_START)
            model(**data[0])
            session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[model.model.layers[0]])
            if resume:
                saved = session.state_dict()
                weights = {k: v.clone() for k, v in model.state_dict().items()}
                model = tiny_llama(seed=3)
                model.load_state_dict(weights)
                modifier = GPTQModifier(config_groups=STATIC_INPUTS, ignore=["lm_head"])
                session = Session()
                session.load_state_dict(saved)
                session.initialize(model=model, recipe=[modifier])
            model(**data[1])
            session.event(EventType.CALIBRATION_END)
        exported = modifier.export()
        session.finalize()
        return exported

    straight, resumed = run(False), run(True)
    assert straight.keys() == resumed.keys()
    for name, entry in straight.items():
        for key in ("weight", "weight_scale", "input_scale"):
            assert torch.equal(entry[key], resumed[name][key]), (name, key)


def test_a_state_without_the_activation_part_is_refused_and_changes_nothing() -> None:
    model = tiny_llama()
    modifier = GPTQModifier(config_groups=STATIC_INPUTS, ignore=["lm_head"])
    session = start(model, modifier)
    with torch.no_grad():
        session.event(EventType.CALIBRATION_START)
        model(**batches(1)[0])
    saved = modifier.state_dict()
    before = {k: v for k, v in saved.items() if k != "activations"}
    state = session.state
    with pytest.raises(ConfigError, match="keeps activation scales, but the state holds none"):
        modifier.load_state_dict(before, state)
    broken = {**saved, "activations": {**saved["activations"], "observing": ["nowhere"]}}
    with pytest.raises(ConfigError, match=r"activations\.observing names layers"):
        modifier.load_state_dict(broken, state)
    assert modifier.calibrating
    assert modifier.state_dict()["activations"]["observing"] == saved["activations"]["observing"]
    weights_only = GPTQModifier(scheme="W8A16", ignore=["lm_head"])
    start(tiny_llama(), weights_only)
    with pytest.raises(ConfigError, match="holds activation scales, but this modifier has none"):
        weights_only.load_state_dict(saved, state)


def test_a_layer_whose_static_scale_saw_nothing_is_an_error() -> None:
    from modfsm.modifiers.quantization.activations import ActivationQuantizer

    quantizer = ActivationQuantizer(
        "m", {"a": (QuantizationArgs(num_bits=8), None), "b": (TOKEN, None)}
    )
    quantizer.check(["b"])  # dynamic: nothing to calibrate
    with pytest.raises(CalibrationError, match=r"a \(input\) saw no calibration batch"):
        quantizer.settle(["a", "b"])


def test_a_kv_cache_scheme_on_gptq_exports_key_and_value_scales_per_attention_layer() -> None:
    data = batches(2)

    def run(resume: bool) -> dict[str, Any]:
        model = tiny_llama()
        kv = {"num_bits": 8, "type": "float", "strategy": "tensor"}
        modifier = GPTQModifier(scheme="W8A16", ignore=["lm_head"], kv_cache_scheme=kv)
        session = start(model, modifier)
        with torch.no_grad():
            session.event(EventType.CALIBRATION_START)
            model(**data[0])
            if resume:
                saved = session.state_dict()
                weights = {k: v.clone() for k, v in model.state_dict().items()}
                model = tiny_llama(seed=3)
                model.load_state_dict(weights)
                modifier = GPTQModifier(scheme="W8A16", ignore=["lm_head"], kv_cache_scheme=kv)
                session = Session()
                session.load_state_dict(saved)
                session.initialize(model=model, recipe=[modifier])
            assert modifier.kv_cache is not None
            assert modifier.kv_cache.attached  # the resumed calibration observes batch 1 too
            model(**data[1])
            session.event(EventType.CALIBRATION_END)
        exported = modifier.export()
        session.finalize()
        assert modifier.kv_cache is not None
        assert not modifier.kv_cache.attached
        return exported

    straight, resumed = run(False), run(True)
    attention = ["model.layers.0.self_attn", "model.layers.1.self_attn"]
    for name in attention:
        assert straight[name]["k_scale"].shape == (1,)
        assert float(straight[name]["v_scale"]) > 0
        for key in ("k_scale", "v_scale"):
            assert torch.equal(straight[name][key], resumed[name][key]), (name, key)
    assert set(straight) == set(resumed)
