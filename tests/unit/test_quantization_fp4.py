"""NVFP4: the FP4 E2M1 grid (emulated in float32), its float8 group scales and global scale,
the presets against compressed-tensors, QuantizationModifier on them, and the written model."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modfsm.engine import ConfigError
from modfsm.engine.app.oneshot import _pack, _unpack, read_compressed, write_compressed
from modfsm.modifiers.quantization import QuantizationModifier
from modfsm.modifiers.quantization.args import (
    FLOAT4_MAX,
    PRESETS,
    QuantizationArgs,
    parse_args,
    preset,
)
from modfsm.modifiers.quantization.fake import (
    E2M1_VALUES,
    FLOAT8,
    dequantize,
    fake_quantize,
    global_scale,
    quantize,
    round_to_e2m1,
    rows,
    weight_qparams,
)
from tests.one_shot_support import batches, calibrate, linears, start, tiny_llama

NVFP4_WEIGHTS = QuantizationArgs(num_bits=4, type="float", strategy="tensor_group", group_size=16)
GRID = sorted({sign * value for value in E2M1_VALUES for sign in (1.0, -1.0)})


def nearest_even(x: float) -> float:
    """The E2M1 value nearest ``x`` (clamped to +-6); at a tie, the one with the even code."""
    magnitude = min(abs(x), 6.0)
    distances = [abs(magnitude - value) for value in E2M1_VALUES]
    best = min(distances)
    codes = [code for code, d in enumerate(distances) if d == best]
    code = next((c for c in codes if c % 2 == 0), codes[0])
    return -E2M1_VALUES[code] if x < 0 else E2M1_VALUES[code]


# --- the grid ----------------------------------------------------------------------------------


def test_e2m1_has_the_fifteen_values_of_one_sign_two_exponent_and_one_mantissa_bit() -> None:
    # 2 exponent bits (bias 1) and 1 mantissa bit: subnormal 0 and 0.5, then (1 + m/2) * 2**e
    normal = {(1 + m / 2) * 2.0**e for e in range(3) for m in range(2)}
    assert set(E2M1_VALUES) == {0.0, 0.5} | normal
    assert max(E2M1_VALUES) == FLOAT4_MAX == 6
    assert len(GRID) == 15


def test_e2m1_rounds_to_the_nearest_value_and_ties_to_the_even_code() -> None:
    midpoints = [(a + b) / 2 for a, b in itertools.pairwise(E2M1_VALUES)]
    assert midpoints == [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0]
    near = [m + d for m in midpoints for d in (-1e-6, 0.0, 1e-6)]
    points = torch.tensor([*near, *[-p for p in near], 0.0, 6.0, 6.5, 100.0, -7.0])
    got = round_to_e2m1(points)
    expected = torch.tensor([nearest_even(float(p)) for p in points])
    assert torch.equal(got, expected)
    # the ties themselves, one by one (even codes 0, 2, 4, 6 are 0, 1, 2, 4)
    ties = round_to_e2m1(torch.tensor(midpoints)).tolist()
    assert ties == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]


@given(st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=1, max_size=64))
def test_e2m1_rounding_agrees_with_a_brute_force_nearest_search(values: list[float]) -> None:
    got = round_to_e2m1(torch.tensor(values, dtype=torch.float32))
    assert got.tolist() == [nearest_even(v) for v in torch.tensor(values).tolist()]


# --- scales and the weight grid -----------------------------------------------------------------


def weight(seed: int, rows_: int = 8, cols: int = 64, magnitude: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    w = torch.randn(rows_, cols, generator=generator) * magnitude
    return w * torch.rand(rows_, 1, generator=generator) * 3  # rows of different ranges


def test_the_global_scale_maps_the_tensors_largest_magnitude_to_fp8_max_times_fp4_max() -> None:
    w = weight(0)
    amax = float(w.abs().max())
    g = global_scale(*torch.aminmax(w))
    assert g.dtype == torch.float32
    assert g.shape == (1,)
    assert float(g) == pytest.approx(448 * 6 / amax, rel=1e-6)
    assert float(global_scale(torch.tensor(0.0), torch.tensor(0.0))) == 1.0  # all zeros


@given(st.integers(0, 2**20), st.floats(1e-3, 1e3))
@settings(max_examples=40)
def test_group_scales_are_float8_values_of_the_groups_range_under_the_global_scale(
    seed: int, magnitude: float
) -> None:
    w = weight(seed, magnitude=magnitude)
    scale, g = weight_qparams(w, NVFP4_WEIGHTS)
    assert scale.shape == (8 * 64 // 16,)
    # each group scale is a float8_e4m3fn value: casting it again changes nothing
    assert torch.equal(scale.to(FLOAT8).float(), scale)
    groups = w.reshape(-1, 16).abs().amax(dim=1)
    recomputed = (groups / 6 * g).clamp(max=448).to(FLOAT8).float()
    assert torch.equal(
        scale, torch.where(recomputed == 0, torch.full_like(scale, 0.125), recomputed)
    )
    assert float(scale.max()) == 448  # the largest group uses float8's whole range


@given(st.integers(0, 2**20), st.floats(1e-3, 1e3))
@settings(max_examples=40)
def test_a_weight_comes_back_within_one_unit_of_its_groups_scale(
    seed: int, magnitude: float
) -> None:
    w = weight(seed, magnitude=magnitude)
    scale, g = weight_qparams(w, NVFP4_WEIGHTS)
    q = quantize(w, scale, g, NVFP4_WEIGHTS)
    assert set(q.flatten().tolist()) <= set(GRID)
    restored = dequantize(q, scale, g, NVFP4_WEIGHTS)
    unit = (scale / g).reshape(-1, 1)
    error = rows((w - restored).abs(), NVFP4_WEIGHTS)
    normal = scale >= 2**-6  # float8 normals: the scale is within 1/16 of the group's range
    slack = 1 + 8 * torch.finfo(torch.float32).eps
    assert bool((error[normal] <= unit[normal] * slack).all())
    # so the format's error is at most (1 + 1/16) / 6 of the group's largest magnitude
    group_max = rows(w.abs(), NVFP4_WEIGHTS).amax(dim=1, keepdim=True)
    assert bool((error[normal] <= group_max[normal] * (17 / 16 / 6) * slack).all())


@given(st.integers(0, 2**20), st.floats(1e-4, 1e4))
@settings(max_examples=40)
def test_a_weight_on_its_grid_quantizes_back_to_itself_bit_for_bit(
    seed: int, magnitude: float
) -> None:
    w = weight(seed, magnitude=magnitude)
    scale, g = weight_qparams(w, NVFP4_WEIGHTS)
    q = quantize(w, scale, g, NVFP4_WEIGHTS)
    snapped = dequantize(q, scale, g, NVFP4_WEIGHTS)
    assert torch.equal(quantize(snapped, scale, g, NVFP4_WEIGHTS), q)
    assert torch.equal(fake_quantize(snapped, scale, g, NVFP4_WEIGHTS), snapped)
    assert torch.equal(fake_quantize(w, scale, g, NVFP4_WEIGHTS), snapped)


def test_fake_quantization_passes_the_gradient_inside_the_range_only() -> None:
    x = torch.tensor([[0.3, -1.2, 5.9, 7.0] * 4], requires_grad=True)
    scale, g = torch.tensor([448.0]), torch.tensor([448.0])  # s / g = 1: the grid itself
    out = fake_quantize(x, scale, g, NVFP4_WEIGHTS)
    assert out.detach().tolist() == [[0.5, -1.0, 6.0, 6.0] * 4]
    (gradient,) = torch.autograd.grad(out.sum(), x)
    assert gradient.tolist() == [[1.0, 1.0, 1.0, 0.0] * 4]


# --- presets and arguments ----------------------------------------------------------------------

# compressed_tensors.quantization.quant_scheme.NVFP4 / NVFP4A16 (compressed-tensors 0.14), read
# from its source: scale_dtype and zp_dtype float8_e4m3fn, observer None = the weights' default
# (memoryless), "static_minmax" for the inputs (modfsm's minmax), dynamic "local" for them.
REFERENCE: dict[str, dict[str, dict[str, Any] | None]] = {
    "NVFP4A16": {
        "weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group",
                    "symmetric": True, "dynamic": False, "group_size": 16},
        "input_activations": None,
    },
    "NVFP4": {
        "weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group",
                    "symmetric": True, "dynamic": False, "group_size": 16},
        "input_activations": {"num_bits": 4, "type": "float", "strategy": "tensor_group",
                              "symmetric": True, "dynamic": "local", "group_size": 16,
                              "observer": "minmax"},
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_the_nvfp4_presets_are_compressed_tensors_definitions_field_by_field(name: str) -> None:
    scheme = preset(name.lower(), ("Linear",), None)
    assert scheme.output_activations is None
    for part, expected in REFERENCE[name].items():
        args = getattr(scheme, part)
        if expected is None:
            assert args is None
            continue
        assert args is not None
        dynamic = "local" if args.local else args.dynamic
        ours = {
            "num_bits": args.num_bits,
            "type": args.type,
            "strategy": args.strategy,
            "symmetric": args.symmetric,
            "dynamic": dynamic,
            "group_size": args.group_size,
        }
        if "observer" in expected:
            ours["observer"] = args.observer
        assert ours == expected, part  # fmt: skip
        assert parse_args(part, args.to_dict(), activations=part != "weights") == args
    assert {"NVFP4", "NVFP4A16"} <= set(PRESETS)


def test_nvfp4_describes_itself_and_its_recipe_form_reads_back() -> None:
    scheme = preset("NVFP4", ("Linear",), None)
    assert scheme.describe() == (
        "weights fp4 sym tensor_group(16); inputs fp4 sym tensor_group(16) dynamic local"
    )
    assert scheme.input_activations is not None
    assert scheme.input_activations.to_dict()["dynamic"] == "local"
    dynamic = parse_args("x", {"num_bits": 4, "type": "float", "strategy": "tensor_group",
                               "group_size": 32, "dynamic": True}, activations=True)  # fmt: skip
    assert (dynamic.dynamic, dynamic.local, dynamic.qmin, dynamic.qmax) == (True, False, -6, 6)


def fp4(**changes: Any) -> dict[str, Any]:
    return {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16,
            **changes}  # fmt: skip


def group(**parts: Any) -> dict[str, Any]:
    return {"config_groups": {"g": {"targets": ["Linear"], **parts}}}


@pytest.mark.parametrize(
    ("kwargs", "field", "value", "says"),
    [
        (group(weights={"num_bits": 4, "strategy": "tensor_group", "group_size": 16}),
         "config_groups.g.weights.strategy", "tensor_group", "got type 'int'"),
        (group(weights=fp4(group_size=None)), "config_groups.g.weights.group_size", None,
         "needs a group_size"),
        (group(weights=fp4(dynamic="local")), "config_groups.g.weights.dynamic", "local",
         "weights are always quantized"),
        (group(input_activations={"num_bits": 8, "dynamic": "LOCAL"}),
         "config_groups.g.input_activations.dynamic", "LOCAL", "with strategy: tensor_group"),
        (group(input_activations=fp4()), "config_groups.g.input_activations.dynamic", False,
         "static group scales are not supported"),
        (group(weights=fp4(num_bits=8)), "config_groups.g.weights.strategy", "tensor_group",
         "got num_bits 8"),
        (group(weights=fp4(strategy="group")), "config_groups.g.weights.num_bits", 4,
         "8-bit float8_e4m3fn only, got num_bits 4"),
        (group(weights=fp4(symmetric=False)), "config_groups.g.weights.symmetric", False,
         "symmetric only"),
        (group(weights=fp4(num_bits=6)), "config_groups.g.weights.num_bits", 6,
         "float8_e4m3fn only"),
        ({"scheme": "NVFP4", "group_size": 32}, "group_size", 32, "the NVFP4 format's"),
    ],
)  # fmt: skip
def test_a_bad_fp4_option_raises_one_config_error_naming_the_field_the_value_and_the_fix(
    kwargs: dict[str, Any], field: str, value: Any, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        QuantizationModifier(**kwargs)
    error = caught.value
    assert (error.field, error.value) == (field, value)
    message = str(error)
    assert field.split(".")[-1] in message
    assert says in message
    assert "To fix, " in message


def test_fp4_arguments_built_directly_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="needs a group_size"):
        QuantizationArgs(num_bits=4, type="float", strategy="tensor_group")
    with pytest.raises(ConfigError, match=r"local .* needs strategy 'tensor_group'"):
        QuantizationArgs(num_bits=8, local=True)
    with pytest.raises(ConfigError, match="got type 'int'"):
        QuantizationArgs(num_bits=4, strategy="tensor_group", group_size=16)


# --- QuantizationModifier -----------------------------------------------------------------------


def calibrated(scheme: str) -> tuple[Any, QuantizationModifier, dict[str, torch.Tensor]]:
    """The tiny Llama calibrated with ``scheme`` (sequential), and its weights before."""
    model = tiny_llama()
    before = {name: layer.weight.detach().clone() for name, layer in linears(model).items()}
    modifier = QuantizationModifier(scheme=scheme, ignore=["lm_head"])
    calibrate(start(model, modifier), model, batches(2), "sequential")
    return model, modifier, before


def test_every_nvfp4_weight_lies_on_its_grid_and_exports_fp8_scales_and_a_global_scale() -> None:
    model, modifier, before = calibrated("NVFP4A16")
    exported = modifier.export()
    assert set(exported) == set(before) - {"lm_head"}
    for name, entry in exported.items():
        w = linears(model)[name].weight.detach()
        q, scale, g = entry["weight"], entry["weight_scale"], entry["weight_global_scale"]
        assert set(q.flatten().tolist()) <= set(GRID)
        assert scale.dtype == FLOAT8
        assert scale.shape == (w.shape[0], w.shape[1] // 16)
        assert g.dtype == torch.float32
        assert g.shape == (1,)
        assert float(g) == pytest.approx(448 * 6 / float(before[name].abs().max()), rel=1e-6)
        # the weight is q * (s / g), bit for bit (the reference's arithmetic)
        effective = (scale.float() / g).repeat_interleave(16, dim=1)
        assert torch.equal(w, q * effective), name
        assert not bool(entry["weight_zero_point"].any())
        report = modifier.report[name]
        assert report["max_error"] <= report["bound"]
        assert report["max_error"] == pytest.approx(float((before[name] - w).abs().max()))


def test_nvfp4_inputs_use_groups_of_16_from_each_forward_under_a_calibrated_global_scale() -> None:
    model = tiny_llama()
    seen: dict[str, torch.Tensor] = {}
    layer = linears(model)["model.layers.0.mlp.down_proj"]

    def keep(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        amax = args[0].detach().abs().max()
        seen["amax"] = torch.maximum(seen.get("amax", amax), amax)

    handle = layer.register_forward_pre_hook(keep)  # outside the modifier: the float inputs
    modifier = QuantizationModifier(scheme="NVFP4", ignore=["lm_head"])
    calibrate(start(model, modifier), model, batches(2), "basic")
    handle.remove()
    entry = modifier.export()["model.layers.0.mlp.down_proj"]
    g = entry["input_global_scale"]
    assert "input_scale" not in entry
    assert float(g) == pytest.approx(448 * 6 / float(seen["amax"]), rel=1e-6)
    # the layer's forward: its input quantized in groups of 16 of its own values under g
    x = torch.randn(3, 5, layer.in_features, generator=torch.Generator().manual_seed(1))
    inputs = PRESETS["NVFP4"][1]
    assert inputs is not None
    groups = x.reshape(-1, 16).abs().amax(dim=1)
    scale = (groups / 6 * g).clamp(max=448).to(FLOAT8).float()
    quantized_x = (round_to_e2m1((x.reshape(-1, 16) / (scale / g).reshape(-1, 1)).clamp(-6, 6))
                   * (scale / g).reshape(-1, 1)).reshape(x.shape)  # fmt: skip
    expected = torch.nn.functional.linear(quantized_x, layer.weight)
    with torch.no_grad():
        assert torch.equal(layer(x), expected)


# --- the written model --------------------------------------------------------------------------


def test_fp4_codes_pack_two_a_byte_low_nibble_first_and_unpack_exactly() -> None:
    values = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0,
                           -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0, 3.0])  # fmt: skip
    packed, offset = _pack(values, 4, "fp4")
    assert (packed.dtype, packed.numel(), offset) == (torch.uint8, 9, 0)
    assert packed.tolist()[:8] == [0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE]
    assert packed.tolist()[8] == 0x05  # the odd last value, padded with a zero code
    back = _unpack(packed, 4, offset, (17,), "fp4")
    assert torch.equal(back, values)
    assert torch.equal(torch.signbit(back), torch.signbit(values))  # -0.0 kept
    with pytest.raises(ValueError, match="off the E2M1 grid"):
        _pack(torch.tensor([0.75]), 4, "fp4")


def test_an_nvfp4_model_written_reads_back_to_exactly_its_weights(tmp_path: Path) -> None:
    from safetensors import safe_open

    model, modifier, _ = calibrated("NVFP4")
    exported = modifier.export()
    written = write_compressed(model, exported, "recipe: text\n", tmp_path / "out")
    assert [p.name for p in written] == ["config.json", "model.safetensors", "recipe.yaml"]
    weights = read_compressed(tmp_path / "out")
    state = model.state_dict()
    assert set(weights) == set(state)
    for name, value in state.items():
        assert torch.equal(weights[name], value), name
    name = "model.layers.1.mlp.up_proj"
    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as handle:
        keys = {key for key in handle.keys() if key.startswith(name + ".")}  # noqa: SIM118
        assert keys == {
            f"{name}.{k}"
            for k in ("weight_packed", "weight_scale", "weight_global_scale", "input_global_scale")
        }
        assert handle.get_tensor(f"{name}.weight_packed").dtype == torch.uint8
        assert handle.get_tensor(f"{name}.weight_packed").numel() == 128 * 64 // 2
        assert handle.get_tensor(f"{name}.weight_scale").dtype == FLOAT8  # fmt: skip


def test_a_float8_model_written_reads_back_exactly_too(tmp_path: Path) -> None:
    model, modifier, _ = calibrated("FP8_DYNAMIC")
    write_compressed(model, modifier.export(), "recipe: text\n", tmp_path / "out")
    weights = read_compressed(tmp_path / "out")
    for name, value in model.state_dict().items():
        assert torch.equal(weights[name], value), name


def test_fp4_groups_never_straddle_two_rows() -> None:
    with pytest.raises(ValueError, match="not a multiple of group_size 16"):
        weight_qparams(torch.ones(4, 20), NVFP4_WEIGHTS)  # 80 values, but rows of 20
