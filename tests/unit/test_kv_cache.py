"""KV-cache quantization (``kv_cache_scheme``): what attention sees, the calibrated scales,
their export and checkpoint, the refused arguments, and the hooks' removal, on a tiny Llama."""

from __future__ import annotations

import io
import math
from typing import Any

import attrs
import pytest
import torch
import transformers
from transformers.models.llama import modeling_llama

from modfsm.engine import ConfigError, EventType
from modfsm.engine.app.pipeline import run_pipeline
from modfsm.engine.config.factory import ModifierFactory
from modfsm.engine.config.recipe import Recipe
from modfsm.engine.loop.session import Session
from modfsm.modifiers.quantization import QuantizationModifier
from modfsm.modifiers.quantization.args import FLOAT8_MAX
from modfsm.modifiers.quantization.fake import dequantize, fake_quantize, quantize
from modfsm.modifiers.quantization.kv_cache import (
    KVCacheQuantizer,
    attention_layers,
    parse_kv_cache_scheme,
)
from tests.one_shot_support import batches, calibrate, start, tiny_llama, torch_hooks

FP8 = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}
INT8 = {"num_bits": 8, "type": "int", "strategy": "tensor", "symmetric": True}
FP8_HEADS = {**FP8, "strategy": "attn_head"}
ATTENTION = ("model.layers.0.self_attn", "model.layers.1.self_attn")

Capture = list[dict[str, Any]]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Capture:
    """Every eager attention call's layer, query, key, value and output (the model must
    use ``eager`` attention: :func:`eager_llama`)."""
    calls: Capture = []
    original = modeling_llama.eager_attention_forward

    def recording(module: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        out = original(module, query, key, value, *args, **kwargs)
        calls.append({"layer": module.layer_idx, "q": query, "k": key, "v": value, "o": out[0]})
        return out

    monkeypatch.setattr(modeling_llama, "eager_attention_forward", recording)
    return calls


def eager_llama() -> Any:
    model = tiny_llama()
    model.set_attn_implementation("eager")
    return model


def run_float(model: Any, data: list[dict[str, torch.Tensor]], calls: Capture) -> Capture:
    """What attention sees in the float model, per forward of ``data``."""
    calls.clear()
    with torch.no_grad():
        for batch in data:
            model(**batch)
    seen = list(calls)
    calls.clear()
    return seen


def one_shot(model: Any, scheme: dict[str, Any], **kwargs: Any) -> Any:
    q = QuantizationModifier(kv_cache_scheme=scheme, **kwargs)
    session = start(model, q)
    calibrate(session, model, batches())
    return q, session


def element_bound(x: torch.Tensor, scale: torch.Tensor, scheme: dict[str, Any]) -> torch.Tensor:
    """How far each element may move on the grid: float8 e4m3 (3 mantissa bits) rounds to
    within 2**-4 of the value (2**-10 scale below its smallest normal, 2**-6 scale);
    integers to within half a step."""
    if scheme["type"] == "float":
        return torch.maximum(x.abs() * 2.0**-4, scale * 2.0**-10) * (1 + 1e-6)
    return (scale / 2).expand_as(x) * (1 + 1e-6)


def broadcast(scale: torch.Tensor) -> torch.Tensor:
    """A (1,) or (heads, 1, 1) scale, shaped to broadcast over (batch, heads, tokens, dim)."""
    return scale.reshape(1, -1, 1, 1) if scale.numel() > 1 else scale.reshape(1, 1, 1, 1)


# --- what attention sees ----------------------------------------------------------------------


@pytest.mark.parametrize("scheme", [FP8, INT8, FP8_HEADS], ids=["fp8", "int8", "fp8_heads"])
def test_keys_and_values_seen_by_attention_lie_on_the_grid_of_the_stored_scales(
    captured: Capture, scheme: dict[str, Any]
) -> None:
    model = eager_llama()
    data = batches()
    floats = run_float(model, data, captured)
    q, session = one_shot(model, scheme)
    exported = q.export()
    args = parse_kv_cache_scheme("test", scheme)
    captured.clear()
    with torch.no_grad():
        model(**data[0])
    for call in captured:
        entry = exported[ATTENTION[call["layer"]]]
        for part in ("k", "v"):
            seen, scale = call[part], entry[f"{part}_scale"]
            flat = scale.reshape(-1)
            zero = torch.zeros_like(flat, dtype=torch.int32)
            grid = args.args if not args.per_head else None
            if grid is not None:
                back = dequantize(quantize(seen, flat, zero, grid), flat, zero, grid)
            else:  # per head: each head on its own grid
                by_head = attrs.evolve(args.args, strategy="channel")
                heads = seen.transpose(0, 1)
                back = dequantize(quantize(heads, flat, zero, by_head), flat, zero, by_head)
                back = back.transpose(0, 1)
            assert torch.equal(back, seen)
    first = next(call for call in captured if call["layer"] == 0)
    for part in ("k", "v"):  # layer 0's inputs are the float model's: the same keys, rounded
        float_seen = floats[0][part]
        assert not torch.equal(first[part], float_seen)
        scale = exported[ATTENTION[0]][f"{part}_scale"]
        if not args.per_head:
            expected = fake_quantize(
                float_seen, scale, torch.zeros(1, dtype=torch.int32), args.args
            )
            assert torch.equal(first[part], expected)
        bound = element_bound(float_seen, broadcast(scale), scheme)
        assert bool(((first[part] - float_seen).abs() <= bound).all())
    session.finalize()


@pytest.mark.parametrize("scheme", [FP8, INT8, FP8_HEADS], ids=["fp8", "int8", "fp8_heads"])
def test_attention_outputs_differ_from_float_by_no_more_than_the_formats_precision_allows(
    captured: Capture, scheme: dict[str, Any]
) -> None:
    # Keys within e_K of the float ones move each logit c * q . k by at most
    # delta = c * sum |q| e_K, so each attention weight by at most p (e^(2 delta) - 1);
    # values within e_V then bound the output's change by
    # (e^(2 delta) - 1) max |V'| + max e_V, per query and channel.
    model = eager_llama()
    data = batches()
    floats = run_float(model, data, captured)
    q, session = one_shot(model, scheme)
    exported = q.export()[ATTENTION[0]]
    captured.clear()
    with torch.no_grad():
        model(**data[0])
    quantized = next(call for call in captured if call["layer"] == 0)
    exact = floats[0]
    scaling = exact["q"].shape[-1] ** -0.5
    e_k = element_bound(exact["k"], broadcast(exported["k_scale"]), scheme)
    e_v = element_bound(exact["v"], broadcast(exported["v_scale"]), scheme)
    # (batch, heads, queries): the largest logit change over the keys
    delta = scaling * torch.einsum("bhqd,bhkd->bhqk", exact["q"].abs(), e_k).amax(-1)
    growth = torch.expm1(2 * delta)  # (batch, heads, queries)
    v_max = quantized["v"].abs().amax(2, keepdim=True)  # (batch, heads, 1, dim)
    bound = growth.unsqueeze(-1) * v_max + e_v.amax(2, keepdim=True)
    bound = bound.transpose(1, 2) + 1e-6  # the output is (batch, queries, heads, dim)
    error = (quantized["o"] - exact["o"]).abs()
    assert float(error.max()) > 0
    assert bool((error <= bound).all()), float((error - bound).max())
    session.finalize()


def test_the_fp8_bound_is_tight_enough_to_catch_a_coarser_grid(captured: Capture) -> None:
    # the element bound of float8 refuses int4 keys: the test above can fail
    model = eager_llama()
    floats = run_float(model, batches(1), captured)[0]
    int4 = parse_kv_cache_scheme("test", {"num_bits": 4}).args
    scale = floats["k"].abs().max().reshape(1) / int4.qmax
    coarse = fake_quantize(floats["k"], scale, torch.zeros(1, dtype=torch.int32), int4)
    fp8_scale = floats["k"].abs().max().reshape(1) / FLOAT8_MAX
    bound = element_bound(floats["k"], broadcast(fp8_scale), FP8)
    assert not bool(((coarse - floats["k"]).abs() <= bound).all())


# --- scales -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("scheme", "qmax"), [(FP8, 448), (INT8, 127)], ids=["fp8", "int8"])
def test_a_scale_is_the_largest_magnitude_over_every_calibration_batch_over_qmax(
    captured: Capture, scheme: dict[str, Any], qmax: int
) -> None:
    model = eager_llama()
    floats = [call for call in run_float(model, batches(), captured) if call["layer"] == 0]
    q, session = one_shot(model, scheme)
    entry = q.export()[ATTENTION[0]]
    # the range is the widest over all batches, not the last batch's (memoryless)
    assert any(
        torch.stack([call[part].abs().max() for call in floats]).max()
        > floats[-1][part].abs().max()
        for part in ("k", "v")
    )
    for part in ("k", "v"):
        largest = torch.stack([call[part].abs().max() for call in floats]).max()
        assert entry[f"{part}_scale"].shape == (1,)
        assert entry[f"{part}_scale"].dtype == torch.float32
        assert torch.equal(entry[f"{part}_scale"], (largest / qmax).reshape(1))
    assert "k_zero_point" not in entry
    session.finalize()


def test_attn_head_keeps_one_scale_per_key_value_head(captured: Capture) -> None:
    model = eager_llama()
    floats = [call for call in run_float(model, batches(), captured) if call["layer"] == 0]
    q, session = one_shot(model, FP8_HEADS)
    entry = q.export()[ATTENTION[0]]
    heads = model.config.num_key_value_heads
    for part in ("k", "v"):
        per_head = torch.stack([call[part].abs().amax(dim=(0, 2, 3)) for call in floats]).amax(0)
        assert entry[f"{part}_scale"].shape == (heads, 1, 1)
        assert torch.equal(entry[f"{part}_scale"], (per_head / FLOAT8_MAX).reshape(heads, 1, 1))
        assert len(set(entry[f"{part}_scale"].flatten().tolist())) == heads
    assert entry["scheme"] == {"kv_cache": parse_kv_cache_scheme("t", FP8_HEADS).to_dict()}
    session.finalize()


def test_an_asymmetric_int8_kv_cache_exports_zero_points() -> None:
    model = tiny_llama()
    q, session = one_shot(model, {**INT8, "symmetric": False})
    entry = q.export()[ATTENTION[1]]
    assert entry["k_zero_point"].dtype == torch.int32
    assert entry["k_zero_point"].shape == entry["k_scale"].shape == (1,)
    session.finalize()


# --- pipelines, caches and hooks -------------------------------------------------------------


def test_the_sequential_pipeline_calibrates_the_attention_of_layers_called_directly(
    captured: Capture,
) -> None:
    scales = {}
    for pipeline in ("basic", "sequential"):
        model = eager_llama()
        q = QuantizationModifier(kv_cache_scheme=FP8)
        session = start(model, q)
        run_pipeline(session, model, batches(), pipeline)
        exported = q.export()
        assert sorted(exported) == list(ATTENTION)
        assert q.kv_cache is not None
        assert q.kv_cache.frozen == set(ATTENTION)
        scales[pipeline] = exported
        session.finalize()
    # the first layer sees the float model's inputs in both pipelines
    for part in ("k_scale", "v_scale"):
        assert torch.equal(
            scales["basic"][ATTENTION[0]][part], scales["sequential"][ATTENTION[0]][part]
        )


def test_a_sequential_epoch_end_freezes_the_attention_inside_the_layer() -> None:
    model = tiny_llama()
    q = QuantizationModifier(kv_cache_scheme=FP8)
    session = start(model, q)
    session.event(EventType.CALIBRATION_START)
    with torch.no_grad():
        model(**batches(1)[0])
        session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[model.model.layers[0]])
        kv = q.kv_cache
        assert kv is not None
        before = kv.state_dict()["ranges"]
        for batch in batches()[1:]:  # other tokens
            model(**batch)
    after = kv.state_dict()["ranges"]
    assert after[ATTENTION[0]] == before[ATTENTION[0]]  # settled: its range stays
    assert after[ATTENTION[1]] != before[ATTENTION[1]]  # still observing
    session.event(EventType.CALIBRATION_END)
    session.finalize()


def test_a_real_cache_holds_the_quantized_keys_and_decoding_with_it_matches_one_pass() -> None:
    model = tiny_llama()
    q, session = one_shot(model, FP8)
    data = batches(1)[0]["input_ids"]
    scale = q.export()[ATTENTION[0]]["k_scale"]
    args = parse_kv_cache_scheme("t", FP8).args
    zero = torch.zeros(1, dtype=torch.int32)
    with torch.no_grad():
        whole = model(input_ids=data, use_cache=False).logits[:, -1]
        cache = transformers.DynamicCache(config=model.config)
        model(input_ids=data[:, :-1], cache=cache, use_cache=True)
        step = model(input_ids=data[:, -1:], cache=cache, use_cache=True).logits[:, -1]
    keys: Any = cache.layers[0].keys  # type: ignore[union-attr]  # a DynamicLayer here
    assert torch.equal(dequantize(quantize(keys, scale, zero, args), scale, zero, args), keys)
    torch.testing.assert_close(step, whole, rtol=1e-5, atol=1e-5)
    session.finalize()


def test_finalize_removes_the_hooks_and_the_model_computes_in_float_again() -> None:
    model = tiny_llama()
    data = batches(1)[0]
    hooks_before = torch_hooks(model)
    with torch.no_grad():
        reference = model(**data).logits
    q, session = one_shot(model, FP8)
    with torch.no_grad():
        quantized = model(**data).logits
    assert not torch.equal(quantized, reference)
    assert all("forward" in model.get_submodule(name).__dict__ for name in ATTENTION)
    session.finalize()
    assert all("forward" not in model.get_submodule(name).__dict__ for name in ATTENTION)
    assert torch_hooks(model) == hooks_before
    with torch.no_grad():
        assert torch.equal(model(**data).logits, reference)
    assert sorted(q.export()) == list(ATTENTION)  # the export outlives the hooks


def test_a_kv_cache_scheme_alone_quantizes_no_weight() -> None:
    model = tiny_llama()
    weights = {name: p.clone() for name, p in model.named_parameters()}
    q, session = one_shot(model, INT8)
    assert q.schemes == ()
    assert q.plan == {}
    session.finalize()
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
    assert sorted(q.export()) == list(ATTENTION)


def test_a_kv_cache_scheme_adds_to_a_weight_scheme_in_a_recipe() -> None:
    ModifierFactory.refresh()
    text = (
        "kv_stage:\n  modifiers:\n    QuantizationModifier:\n      scheme: FP8_DYNAMIC\n"
        "      targets: Linear\n      ignore: [lm_head]\n"
        "      kv_cache_scheme: {num_bits: 8, type: float, strategy: tensor, dynamic: false,\n"
        "                        symmetric: true}\n"
    )
    (stage,) = Recipe.load(text).build()
    (q,) = stage.modifiers
    assert isinstance(q, QuantizationModifier)
    model = tiny_llama()
    session = start(model, q)
    calibrate(session, model, batches())
    exported = q.export()
    assert set(ATTENTION) <= set(exported)
    assert "weight" in exported["model.layers.0.self_attn.q_proj"]
    assert "k_scale" not in exported["model.layers.0.self_attn.q_proj"]
    session.finalize()


# --- checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("save_after", ["CALIBRATION_START", "CALIBRATION_END"])
@pytest.mark.parametrize("scheme", [FP8, FP8_HEADS], ids=["tensor", "attn_head"])
def test_a_resumed_one_shot_run_exports_the_scales_the_uninterrupted_one_does(
    save_after: str, scheme: dict[str, Any]
) -> None:
    data = batches()

    def run(resume: bool) -> QuantizationModifier:
        model, q = tiny_llama(), QuantizationModifier(kv_cache_scheme=scheme)
        session = start(model, q)
        session.event(EventType.CALIBRATION_START)
        with torch.no_grad():
            model(**data[0])
        if save_after == "CALIBRATION_END":
            session.event(EventType.CALIBRATION_END)
        if resume:  # through torch.save/load, into a fresh model, session and modifier
            buffer = io.BytesIO()
            torch.save({"session": session.state_dict(), "model": model.state_dict()}, buffer)
            q.remove_hooks()
            buffer.seek(0)
            saved = torch.load(buffer, weights_only=True)
            model, q = tiny_llama(seed=3), QuantizationModifier(kv_cache_scheme=scheme)
            model.load_state_dict(saved["model"])
            session = Session()
            session.load_state_dict(saved["session"])
            session.initialize(model=model, recipe=[q])
        with torch.no_grad():
            model(**data[1])
        if save_after == "CALIBRATION_START":
            session.event(EventType.CALIBRATION_END)
        session.finalize()
        return q

    straight, resumed = run(resume=False), run(resume=True)
    expected, got = straight.export(), resumed.export()
    assert sorted(got) == sorted(expected) == list(ATTENTION)
    for name in ATTENTION:
        for key in ("k_scale", "v_scale"):
            assert torch.equal(got[name][key], expected[name][key])


def test_a_checkpoint_with_bad_kv_cache_ranges_is_refused_naming_the_problem() -> None:
    model = tiny_llama()
    q, session = one_shot(model, FP8)
    saved = q.state_dict()
    saved["kv_cache"]["ranges"].pop(ATTENTION[1])
    fresh = QuantizationModifier(kv_cache_scheme=FP8)
    other = start(tiny_llama(), fresh)
    with pytest.raises(ConfigError, match=r"kv_cache\.ranges names .*To fix"):
        fresh.load_state_dict(saved, other.state)
    wrong = q.state_dict()
    wrong["kv_cache"]["scheme"] = INT8
    with pytest.raises(ConfigError, match=r"kv_cache\.scheme"):
        fresh.load_state_dict(wrong, other.state)
    session.finalize()
    other.finalize()


# --- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "field", "says"),
    [
        ({**FP8, "strategy": "channel"}, "kv_cache_scheme.strategy", "attn_head"),
        ({**FP8, "strategy": "token", "dynamic": True}, "kv_cache_scheme.strategy", "tensor"),
        ({**FP8, "dynamic": True}, "kv_cache_scheme.dynamic", "static scales"),
        ({**FP8, "num_bits": 4}, "kv_cache_scheme.num_bits", "num_bits"),
        ({**FP8, "symmetric": False}, "kv_cache_scheme.symmetric", "symmetric"),
        ({**INT8, "num_bits": 12}, "kv_cache_scheme.num_bits", "between 2 and 8"),
        ({**INT8, "observer": "mse"}, "kv_cache_scheme.observer", "mse"),
        ({**INT8, "nmu_bits": 8}, "kv_cache_scheme", "nmu_bits"),
        ("fp8", "kv_cache_scheme", "mapping"),
    ],
)
def test_a_bad_kv_cache_scheme_is_one_config_error_naming_the_key(
    scheme: Any, field: str, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        QuantizationModifier(scheme="FP8", kv_cache_scheme=scheme)
    assert caught.value.field == field
    message = str(caught.value)
    assert field in message
    assert says in message
    assert "To fix" in message


def test_a_model_without_cached_attention_is_refused_at_initialize() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ConfigError, match=r"kv_cache_scheme: the model has no attention layer"):
        start(model, QuantizationModifier(kv_cache_scheme=FP8))


# --- the quantizer on its own (the API another modifier uses) --------------------------------


def test_the_quantizer_alone_observes_when_told_and_detaches_cleanly() -> None:
    model = tiny_llama()
    data = batches(2)
    with torch.no_grad():
        reference = model(**data[0]).logits
    calibrating = [True]
    kv = KVCacheQuantizer(
        parse_kv_cache_scheme("test", FP8), observe=lambda attention: calibrating[0]
    )
    kv.bind(model)
    assert sorted(kv.layers) == sorted(attention_layers(model)) == list(ATTENTION)
    kv.attach()
    kv.attach()  # idempotent
    with torch.no_grad():
        model(**data[0])
        first = kv.qparams(ATTENTION[0])["k"][0].clone()
        calibrating[0] = False
        model(**{k: v * 0 + 9 for k, v in data[1].items()})
        assert torch.equal(kv.qparams(ATTENTION[0])["k"][0], first)  # not observing
        calibrating[0] = True
        model(**data[1])
        kv.freeze()
        frozen = kv.export()
        model(**{k: v * 0 + 3 for k, v in data[1].items()})
    assert kv.export()[ATTENTION[0]]["k_scale"] == frozen[ATTENTION[0]]["k_scale"]
    assert math.isclose(float(frozen[ATTENTION[0]]["k_scale"]), float(first.max()), rel_tol=1.0)
    kv.detach()
    assert all("forward" not in model.get_submodule(name).__dict__ for name in ATTENTION)
    with torch.no_grad():
        assert torch.equal(model(**data[0]).logits, reference)


def test_in_training_gradients_reach_the_key_and_value_projections_through_the_rounding() -> None:
    model = tiny_llama().train()
    data = batches(2)
    kv = KVCacheQuantizer(
        parse_kv_cache_scheme("test", FP8), observe=lambda attention: attention.training
    )
    kv.bind(model)
    kv.attach()
    loss = model(**data[0], labels=data[0]["input_ids"]).loss
    loss.backward()
    k_proj = model.get_submodule(f"{ATTENTION[0]}.k_proj")
    v_proj = model.get_submodule(f"{ATTENTION[0]}.v_proj")
    assert k_proj.weight.grad is not None
    assert float(k_proj.weight.grad.abs().sum()) > 0
    assert v_proj.weight.grad is not None
    assert float(v_proj.weight.grad.abs().sum()) > 0
    trained = kv.state_dict()["ranges"]
    model.eval()
    with torch.no_grad():
        model(**data[1])
    assert kv.state_dict()["ranges"] == trained  # evaluation uses the scales, observes nothing
    kv.detach()
