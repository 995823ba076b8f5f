"""QuantizationModifier's options from the reference's recipes: presets, float8, token-wise
dynamic activations, output activations, one-shot calibration and what is refused."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modfsm.engine import CALIBRATION_LIFECYCLE, ConfigError, EventType
from modfsm.engine.config.factory import ModifierFactory
from modfsm.engine.config.recipe import Recipe, RecipeError
from modfsm.engine.loop.session import Session
from modfsm.modifiers.quantization import QuantizationModifier
from modfsm.modifiers.quantization.args import (
    FLOAT8_MAX,
    PRESETS,
    QuantizationArgs,
    parse_config_groups,
    preset,
)
from modfsm.modifiers.quantization.fake import (
    FLOAT8,
    dequantize,
    dynamic_qparams,
    fake_quantize,
    quantize,
    rows,
    weight_qparams,
)
from tests.training import batch, bounds, linear, mlp
from tests.unit.test_hooks import torch_hook_count

# --- presets against compressed-tensors -------------------------------------------------------

# compressed_tensors.quantization.quant_scheme.PRESET_SCHEMES, as shipped with llm-compressor
# 0.14 (compressed-tensors' own field names and values; observer None is the reference's
# default: weights use "memoryless_minmax", static activations "minmax", dynamic ones none).
REFERENCE: dict[str, dict[str, dict[str, Any] | None]] = {
    "W8A8": {
        "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel",
                    "group_size": None, "dynamic": False, "observer": None},
        "input_activations": {"num_bits": 8, "type": "int", "symmetric": True,
                              "strategy": "token", "group_size": None, "dynamic": True,
                              "observer": None},
    },
    "W8A16": {
        "weights": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "group",
                    "group_size": 128, "dynamic": False, "observer": None},
        "input_activations": None,
    },
    "W4A16": {
        "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
                    "group_size": 128, "dynamic": False, "observer": None},
        "input_activations": None,
    },
    "W4A16_ASYM": {
        "weights": {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group",
                    "group_size": 128, "dynamic": False, "observer": None},
        "input_activations": None,
    },
    "FP8": {
        "weights": {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "tensor",
                    "group_size": None, "dynamic": False, "observer": None},
        "input_activations": {"num_bits": 8, "type": "float", "symmetric": True,
                              "strategy": "tensor", "group_size": None, "dynamic": False,
                              "observer": "static_minmax"},
    },
    "FP8_DYNAMIC": {
        "weights": {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "channel",
                    "group_size": None, "dynamic": False, "observer": None},
        "input_activations": {"num_bits": 8, "type": "float", "symmetric": True,
                              "strategy": "token", "group_size": None, "dynamic": True,
                              "observer": None},
    },
    "NVFP4A16": {
        "weights": {"num_bits": 4, "type": "float", "symmetric": True,
                    "strategy": "tensor_group", "group_size": 16, "dynamic": False,
                    "observer": None},
        "input_activations": None,
    },
    "NVFP4": {
        "weights": {"num_bits": 4, "type": "float", "symmetric": True,
                    "strategy": "tensor_group", "group_size": 16, "dynamic": False,
                    "observer": None},
        "input_activations": {"num_bits": 4, "type": "float", "symmetric": True,
                              "strategy": "tensor_group", "group_size": 16,
                              "dynamic": "local", "observer": "static_minmax"},
    },
}  # fmt: skip

# Where modfsm's preset keeps its earlier definition (documented in args.py's table):
# (preset, tensor) -> the fields that differ, as modfsm has them.
DEPARTURES: dict[tuple[str, str], dict[str, Any]] = {
    # llm-compressor 0.14's W8A16 has groups of 128; earlier releases (and modfsm) per channel
    ("W8A16", "weights"): {"strategy": "channel", "group_size": None},
}

# modfsm's observer names -> the reference's observer of the same behaviour
REFERENCE_OBSERVER = {
    "minmax": "static_minmax",
    "moving_average": "minmax",  # the reference's minmax: a moving average (constant 0.01)
    "memoryless_minmax": "memoryless_minmax",
}


def as_reference(args: QuantizationArgs | None, *, weights: bool) -> dict[str, Any] | None:
    """modfsm's arguments in the reference's vocabulary, observer defaults made explicit."""
    if args is None:
        return None
    if weights or args.dynamic:
        observer = None  # weights: always their current range (memoryless); dynamic: none
    else:
        assert args.observer != "moving_average" or args.averaging_constant == 0.01
        observer = REFERENCE_OBSERVER[args.observer]
    return {
        "num_bits": args.num_bits,
        "type": args.type,
        "symmetric": args.symmetric,
        "strategy": args.strategy,
        "group_size": args.group_size,
        "dynamic": "local" if args.local else args.dynamic,
        "observer": observer,
    }


def reference_default(expected: dict[str, Any] | None, *, weights: bool) -> dict[str, Any] | None:
    """The reference's values with its observer default made explicit."""
    if expected is None:
        return None
    observer = expected["observer"]
    if observer is None and not weights and not expected["dynamic"]:
        observer = "minmax"  # initialize_observer's default for static activations
    return {**expected, "observer": observer}


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_each_preset_is_compressed_tensors_definition_but_for_the_declared_departures(
    name: str,
) -> None:
    scheme = preset(name, ("Linear",), None)
    assert scheme.output_activations is None
    for part in ("weights", "input_activations"):
        weights = part == "weights"
        ours = as_reference(getattr(scheme, part), weights=weights)
        expected = reference_default(REFERENCE[name][part], weights=weights)
        departure = DEPARTURES.get((name, part))
        if departure is None:
            assert ours == expected, part
        else:
            assert expected is not None
            assert ours == {**expected, **departure}, part
            assert all(expected[key] != value for key, value in departure.items()), (
                "a departure that no longer departs: remove it from DEPARTURES and args.py"
            )
    assert set(PRESETS) == set(REFERENCE)


def test_a_grouped_preset_takes_the_modifiers_group_size_and_others_refuse_it() -> None:
    weights = preset("w4a16_asym", ("Linear",), 32).weights
    assert weights is not None
    assert (weights.group_size, weights.symmetric) == (32, False)
    with pytest.raises(ConfigError, match=r"per tensor, not in groups.*W4A16, W4A16_ASYM"):
        preset("FP8", ("Linear",), 32)


def test_static_minmax_is_minmax_and_dynamic_arguments_ignore_their_observer() -> None:
    (scheme,) = parse_config_groups(
        {
            "g": {
                "targets": "Linear",
                "input_activations": {"observer": "Static_MinMax"},
                "output_activations": {"dynamic": True, "observer": "minmax",
                                       "strategy": "token", "type": "FLOAT"},
            }
        }
    )  # fmt: skip
    assert scheme.input_activations == QuantizationArgs(observer="minmax")
    assert scheme.output_activations == QuantizationArgs(
        type="float", strategy="token", dynamic=True
    )
    assert scheme.describe() == (
        "weights float; inputs int8 sym tensor; outputs fp8 sym token dynamic"
    )


def test_a_memoryless_observer_keeps_the_last_batch_range() -> None:
    from modfsm.modifiers.quantization.fake import Observer

    observer = Observer(QuantizationArgs(observer="memoryless_minmax"))
    observer.update(torch.tensor([-5.0, 9.0]))
    observer.update(torch.tensor([-1.0, 2.0]))
    assert bounds(observer) == (-1.0, 2.0)


# --- the float8 grid ---------------------------------------------------------------------------


def all_float8_values() -> torch.Tensor:
    """Every finite float8_e4m3fn value, ascending, -0 left out (float32)."""
    values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FLOAT8).float()
    finite = values[torch.isfinite(values)]
    unique: torch.Tensor = torch.unique(finite)  # sorted; -0.0 and 0.0 are one value
    return unique


def test_float8_max_is_e4m3fns_largest_magnitude() -> None:
    assert torch.finfo(FLOAT8).max == FLOAT8_MAX
    assert float(all_float8_values().max()) == FLOAT8_MAX


def test_torch_casts_to_float8_by_round_to_nearest_even_on_the_cpu() -> None:
    grid = all_float8_values().double()
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(4096, generator=generator, dtype=torch.float64) * 2 - 1) * FLOAT8_MAX
    x = torch.cat([x, x * 2.0**-8, x * 2.0**-14, (grid[1:] + grid[:-1]) / 2])  # and midpoints
    x = x.float().double()  # values float32 can hold
    cast = x.float().to(FLOAT8).double()
    distance = (x.unsqueeze(1) - grid.unsqueeze(0)).abs()
    nearest = distance.min(dim=1).values
    assert torch.equal((cast - x).abs(), nearest)  # the nearest grid value
    ties = (distance == nearest.unsqueeze(1)).sum(dim=1) > 1
    assert int(ties.sum()) >= 250  # every midpoint is a tie
    codes = cast[ties].float().to(FLOAT8).view(torch.uint8).to(torch.int32)
    assert bool((codes % 2 == 0).all())  # a tie goes to the even code (last mantissa bit 0)


float8_args = st.builds(
    lambda strategy: QuantizationArgs(
        type="float", strategy=strategy, group_size=4 if strategy == "group" else None
    ),
    st.sampled_from(["tensor", "channel", "group"]),
)


def weight(seed: int, magnitude: float, rows_: int = 6, cols: int = 12) -> torch.Tensor:
    spread = torch.logspace(-4, 0, cols)  # values across many binades, subnormals included
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows_, cols, generator=generator) * spread * magnitude


@given(float8_args, st.integers(0, 2**20), st.floats(1e-4, 1e4))
def test_float8_weights_on_the_grid_are_exact_after_dividing_by_their_scale(
    args: QuantizationArgs, seed: int, magnitude: float
) -> None:
    w = weight(seed, magnitude)
    scale, zero_point = weight_qparams(w, args)
    q = quantize(w, scale, zero_point, args)
    assert q.dtype == FLOAT8
    assert not bool(zero_point.any())
    on_grid = dequantize(q, scale, zero_point, args)
    per_row = scale.reshape(-1, 1)
    # (w / scale).to(float8_e4m3fn).to(float32) * scale == w, bit for bit
    again = (rows(on_grid, args) / per_row).to(FLOAT8).to(torch.float32) * per_row
    assert torch.equal(again.reshape(w.shape), on_grid)
    assert torch.equal(fake_quantize(on_grid, scale, zero_point, args), on_grid)
    assert torch.equal(fake_quantize(w, scale, zero_point, args), on_grid)


@given(float8_args, st.integers(0, 2**20), st.floats(1e-4, 1e4))
def test_the_float8_round_trip_error_is_within_half_a_float8_step(
    args: QuantizationArgs, seed: int, magnitude: float
) -> None:
    w = weight(seed, magnitude)
    scale, zero_point = weight_qparams(w, args)
    restored = dequantize(quantize(w, scale, zero_point, args), scale, zero_point, args)
    error = rows((w - restored).abs(), args)
    per_row = scale.reshape(-1, 1)
    # half a step: 2**-4 of the value among normals (3 mantissa bits), 2**-10 of the scale
    # among subnormals; plus float32's own rounding of the division and product
    bound = torch.maximum(rows(w.abs(), args) * 2.0**-4, per_row * 2.0**-10)
    slack = rows(w.abs(), args) * 4 * torch.finfo(torch.float32).eps
    assert bool((error <= bound + slack).all())
    assert torch.equal(scale, rows(w.abs(), args).amax(dim=1) / FLOAT8_MAX)


def test_values_beyond_a_static_float8_range_saturate_and_stop_the_gradient() -> None:
    args = QuantizationArgs(type="float")
    scale, zero_point = torch.tensor(0.01), torch.tensor(0, dtype=torch.int32)
    x = torch.tensor([-10.0, -0.5, 0.0, 0.3, 4.48, 7.0], requires_grad=True)
    out = fake_quantize(x, scale, zero_point, args)
    assert out.tolist()[0] == pytest.approx(-4.48)
    assert out.tolist()[-1] == pytest.approx(4.48)
    out.backward(torch.arange(1.0, 7.0))  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated
    assert x.grad is not None
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0]


# --- token-wise dynamic activations -------------------------------------------------------------


def activations(seed: int) -> torch.Tensor:
    """(batch, tokens, features), each token with its own magnitude."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 5, 16, generator=generator)
    return x * torch.logspace(-3, 3, 15).reshape(3, 5, 1)


@given(st.integers(0, 2**20), st.booleans())
def test_token_wise_dynamic_int8_is_within_half_a_step_of_each_tokens_scale(
    seed: int, symmetric: bool
) -> None:
    args = QuantizationArgs(strategy="token", dynamic=True, symmetric=symmetric)
    x = activations(seed)
    scale, zero_point = dynamic_qparams(x, args)
    assert scale.shape == (15,)  # one per token
    tokens = x.reshape(-1, 16)
    if symmetric:
        assert torch.equal(scale, tokens.abs().amax(dim=1) / 127)
    error = (x - fake_quantize(x, scale, zero_point, args)).reshape(-1, 16).abs()
    slack = tokens.abs() * 4 * torch.finfo(torch.float32).eps
    assert bool((error <= scale.reshape(-1, 1) / 2 + slack).all())


@given(st.integers(0, 2**20))
def test_token_wise_dynamic_float8_is_within_e4m3fns_relative_precision(seed: int) -> None:
    args = QuantizationArgs(type="float", strategy="token", dynamic=True)
    x = activations(seed)
    scale, zero_point = dynamic_qparams(x, args)
    tokens = x.reshape(-1, 16)
    assert torch.equal(scale, tokens.abs().amax(dim=1) / FLOAT8_MAX)
    out = fake_quantize(x, scale, zero_point, args).reshape(-1, 16)
    per_token = scale.reshape(-1, 1)
    bound = torch.maximum(tokens.abs() * 2.0**-4, per_token * 2.0**-10)
    slack = tokens.abs() * 4 * torch.finfo(torch.float32).eps
    assert bool(((tokens - out).abs() <= bound + slack).all())
    # every token's largest magnitude maps to 448, so it comes back (up to float32 rounding)
    largest = tokens.abs().amax(dim=1)
    eps = torch.finfo(torch.float32).eps
    assert bool(((out.abs().amax(dim=1) - largest).abs() <= 2 * eps * largest).all())


def test_fp8_dynamic_quantizes_each_token_of_the_input_and_each_output_channel() -> None:
    model = mlp()
    q = QuantizationModifier(scheme="FP8_DYNAMIC", start=0)
    session = Session()
    session.initialize(model=model, recipe=[q])
    scheme = q.plan["0"]
    weights, inputs = scheme.weights, scheme.input_activations
    assert weights is not None
    assert inputs is not None
    layer, x = linear(model, 0), batch(1).reshape(2, 3, 8)
    w = fake_quantize(layer.weight, *weight_qparams(layer.weight, weights), weights)
    by_hand = torch.nn.functional.linear(
        fake_quantize(x, *dynamic_qparams(x, inputs), inputs), w, layer.bias
    )
    assert torch.equal(layer(x), by_hand)
    session.finalize()
    assert not q._observers  # dynamic: nothing to calibrate


# --- output activations -----------------------------------------------------------------------

OUTPUTS: dict[str, Any] = {
    "g": {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "strategy": "channel"},
        "output_activations": {"num_bits": 8, "strategy": "tensor", "observer": "minmax"},
    }
}


def calibrate(model: torch.nn.Module, q: QuantizationModifier, data: list[torch.Tensor]) -> Session:
    """A one-shot session over ``data``: initialize, CALIBRATION_START, forwards, _END."""
    session = Session()
    session.initialize(model=model, recipe=[q])
    session.event(EventType.CALIBRATION_START)
    with torch.no_grad():
        for x in data:
            model(x)
    session.event(EventType.CALIBRATION_END)
    return session


def test_output_activations_are_fake_quantized_with_their_calibrated_scale() -> None:
    model = mlp()
    q = QuantizationModifier(config_groups=OUTPUTS)
    data = [batch(i) * (i + 1) for i in range(3)]
    session = calibrate(model, q, data)
    first = linear(model, 0)
    with torch.no_grad():
        raw = torch.cat([torch.nn.Linear.forward(first, x) for x in data])
    observer = q._output_observers["0"]
    assert bounds(observer) == tuple(float(v) for v in torch.aminmax(raw))
    args = q.plan["0"].output_activations
    assert args is not None
    x = batch(9)
    expected = fake_quantize(torch.nn.Linear.forward(first, x), *observer.qparams(), args)
    assert torch.equal(first(x), expected)
    exported = q.export()["0"]
    assert torch.equal(exported["output_scale"], observer.qparams()[0].reshape(1))
    assert exported["output_zero_point"].dtype == torch.int32
    assert "input_scale" not in exported
    assert q.state_dict()["output_observers"]["0"]["hi"] == observer.hi
    session.finalize()


def test_dynamic_output_activations_use_each_forwards_own_range() -> None:
    groups = {"g": {"targets": "Linear", "output_activations": {"dynamic": True}}}
    model = mlp()
    q = QuantizationModifier(config_groups=groups, start=0)
    session = Session()
    session.initialize(model=model, recipe=[q])
    args = q.plan["2"].output_activations
    assert args is not None
    layer, x = linear(model, 2), batch(3, width=16)
    raw = torch.nn.Linear.forward(layer, x)
    assert torch.equal(layer(x), fake_quantize(raw, *dynamic_qparams(raw, args), args))
    session.finalize()


# --- one-shot calibration -------------------------------------------------------------------


def test_the_modifier_runs_the_calibration_lifecycle() -> None:
    assert QuantizationModifier.__lifecycle__ is CALIBRATION_LIFECYCLE


@pytest.mark.parametrize(
    ("scheme", "kwargs"),
    [("W8A8", {}), ("FP8", {}), ("FP8_DYNAMIC", {}), ("W4A16_ASYM", {"group_size": 4})],
)
def test_a_one_shot_session_writes_weights_on_the_grid_and_exports_scales_and_zero_points(
    scheme: str, kwargs: dict[str, Any]
) -> None:
    model = mlp(widths=(8, 16, 4))
    q = QuantizationModifier(scheme=scheme, **kwargs)
    data = [batch(i) for i in range(4)]
    session = calibrate(model, q, data)
    assert (q.started, q.ended) == (True, True)
    exported = q.export()
    calibrated = [p.detach().clone() for p in model.parameters()]
    for name, entry in exported.items():
        args = q.plan[name].weights
        assert args is not None
        w = linear(model, int(name)).weight.detach()
        assert entry["weight"].dtype == (FLOAT8 if args.is_float else torch.int8)
        assert entry["weight_zero_point"].dtype == torch.int32
        scale, zero_point = entry["weight_scale"], entry["weight_zero_point"]
        assert torch.equal(dequantize(entry["weight"], scale, zero_point, args), w)
        inputs = q.plan[name].input_activations
        static = inputs is not None and not inputs.dynamic
        assert ("input_scale" in entry) == static
        if args.is_float:
            per_row = scale.reshape(-1, 1)
            again = (rows(w, args) / per_row).to(FLOAT8).to(torch.float32) * per_row
            assert torch.equal(again.reshape(w.shape), w)
    # after CALIBRATION_END the forward uses the grid weights as they are, with frozen scales
    layer, x = linear(model, 0), batch(7)
    inputs = q.plan["0"].input_activations
    if inputs is not None:
        observer = q._observers.get("0")
        frozen = dynamic_qparams(x, inputs) if observer is None else observer.qparams()
        x_q = fake_quantize(x, *frozen, inputs)
    with torch.no_grad():
        by_hand = torch.nn.functional.linear(x if inputs is None else x_q, layer.weight, layer.bias)
        assert torch.equal(layer(x), by_hand)
    session.finalize()
    assert torch_hook_count(model) == 0
    assert all(torch.equal(a, b) for a, b in zip(calibrated, model.parameters(), strict=True))
    for name, entry in q.export().items():  # finalize kept the calibrated grid
        assert torch.equal(entry["weight_scale"], exported[name]["weight_scale"])


def test_static_scales_are_observed_over_every_calibration_forward_in_eval_mode() -> None:
    model = mlp().eval()
    q = QuantizationModifier(scheme="FP8")
    data = [batch(i) * (i + 1) for i in range(3)]
    calibrate(model, q, data).finalize()
    lo, hi = torch.aminmax(torch.cat(data))
    assert bounds(q._observers["0"]) == (float(lo), float(hi))
    assert torch.equal(q.export()["0"]["input_scale"], torch.maximum(-lo, hi).reshape(1) / 448)


def test_a_sequential_one_shot_settles_each_layer_after_its_epoch() -> None:
    model = mlp(widths=(8, 16, 16, 4))
    groups = {"g": {**OUTPUTS["g"], "input_activations": {"num_bits": 8}}}
    q = QuantizationModifier(config_groups=groups)
    session = Session()
    session.initialize(model=model, recipe=[q])
    session.event(EventType.CALIBRATION_START)
    first, second = linear(model, 0), linear(model, 2)
    with torch.no_grad():
        hidden = [torch.relu(first(batch(i))) for i in range(2)]  # layer 0 calibrated
        unsettled = second.weight.detach().clone()
        session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[first])
        on_grid = first.weight.detach().clone()  # written on its grid at its epoch's end
        args = q.plan["0"].weights
        assert args is not None
        assert torch.equal(fake_quantize(on_grid, *q._weight_qparams["0"], args), on_grid)
        assert torch.equal(second.weight, unsettled)  # the next layer is not settled yet
        settled = (q._observers["0"].state_dict(), q._output_observers["0"].state_dict())
        first(batch(5) * 100)  # propagating through a settled layer observes nothing
        assert q._observers["0"].state_dict()["hi"] == settled[0]["hi"]
        assert q._output_observers["0"].state_dict()["hi"] == settled[1]["hi"]
        second(hidden[1])  # layer 2 calibrated on layer 0's outputs
        before = bounds(q._observers["2"])
        second(hidden[0] * 100)  # the next layer still observes
        assert bounds(q._observers["2"])[1] > before[1]
    session.event(EventType.CALIBRATION_END)
    session.finalize()
    assert sorted(q.export()) == ["0", "2", "4"]
    assert torch.equal(first.weight, on_grid)  # the end kept the grid of layer 0's epoch


@pytest.mark.parametrize("save_after", ["CALIBRATION_START", "CALIBRATION_END"])
def test_a_one_shot_run_resumed_from_a_checkpoint_exports_what_the_uninterrupted_one_does(
    save_after: str,
) -> None:
    def run(resume: bool) -> QuantizationModifier:
        model, q = mlp().eval(), QuantizationModifier(scheme="FP8")  # eval: only calibration
        session = Session()  # forwards observe
        session.initialize(model=model, recipe=[q])
        session.event(EventType.CALIBRATION_START)
        with torch.no_grad():
            model(batch(0))
        if save_after == "CALIBRATION_END":
            session.event(EventType.CALIBRATION_END)
        if resume:  # through torch.save/load, into a fresh model, session and modifier
            buffer = io.BytesIO()
            torch.save({"session": session.state_dict(), "model": model.state_dict()}, buffer)
            q.remove_hooks()
            buffer.seek(0)
            saved = torch.load(buffer, weights_only=True)
            model, q = mlp(seed=99).eval(), QuantizationModifier(scheme="FP8")
            model.load_state_dict(saved["model"])
            session = Session()
            session.load_state_dict(saved["session"])
            session.initialize(model=model, recipe=[q])
        with torch.no_grad():
            model(batch(1) * 3)
        if save_after == "CALIBRATION_START":
            session.event(EventType.CALIBRATION_END)
        session.finalize()
        return q

    straight, resumed = run(resume=False), run(resume=True)
    for name, entry in straight.export().items():
        again = resumed.export()[name]
        assert torch.equal(again["weight"].view(torch.uint8), entry["weight"].view(torch.uint8))
        for key in ("weight_scale", "weight_zero_point", "input_scale"):
            assert torch.equal(again[key], entry[key])


# --- refused options --------------------------------------------------------------------------


def group(**parts: Any) -> dict[str, Any]:
    return {"config_groups": {"g": {"targets": ["Linear"], **parts}}}


@pytest.mark.parametrize(
    ("kwargs", "field", "value", "says"),
    [
        (
            group(weights={"type": "float", "num_bits": 4}),
            "config_groups.g.weights.num_bits",
            4,
            "8-bit float8_e4m3fn only",
        ),
        (
            group(weights={"type": "float", "symmetric": False}),
            "config_groups.g.weights.symmetric",
            False,
            "symmetric only",
        ),
        (group(weights={"type": "fp8"}), "config_groups.g.weights.type", "fp8", "not one of"),
        (
            group(input_activations={"strategy": "token"}),
            "config_groups.g.input_activations.strategy",
            "token",
            "dynamic only",
        ),
        (
            group(weights={"strategy": "token"}),
            "config_groups.g.weights.strategy",
            "token",
            "applies to activations",
        ),
        (
            group(input_activations={"strategy": "group", "group_size": 128, "dynamic": True}),
            "config_groups.g.input_activations.strategy",
            "group",
            "per token or per tensor",
        ),
        (
            group(weights={"strategy": "block"}),
            "config_groups.g.weights.strategy",
            "block",
            "FP8_BLOCK and attention-head",
        ),
        (
            group(input_activations={"observer": "mse"}),
            "config_groups.g.input_activations.observer",
            "mse",
            "MSE observers",
        ),
        (
            group(output_activations={"dynamic": "local"}),
            "config_groups.g.output_activations.dynamic",
            "local",
            "must be true or false",
        ),
        (
            {"scheme": "FP8_DYNAMIC", "group_size": 64},
            "group_size",
            64,
            "per channel, not in groups",
        ),
    ],
)
def test_a_refused_option_raises_one_config_error_naming_the_field_the_value_and_the_fix(
    kwargs: dict[str, Any], field: str, value: Any, says: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        QuantizationModifier(**kwargs)
    error = caught.value
    assert (error.field, error.value) == (field, value)
    message = str(error)
    assert field.split(".")[-1] in message
    assert repr(value) in message or str(value) in message
    assert says in message
    assert "To fix, " in message


def test_float_arguments_built_directly_are_checked_too() -> None:
    with pytest.raises(ConfigError, match="8-bit float8_e4m3fn only, got num_bits 4"):
        QuantizationArgs(type="float", num_bits=4)
    with pytest.raises(ConfigError, match=r"'bf16' is not one of int, float"):
        QuantizationArgs(type="bf16")


# --- recipes in the reference's shape ------------------------------------------------------------


class TinyDecoder(torch.nn.Module):
    """Module names as in a Llama: model.layers.0.self_attn.q_proj, ..., lm_head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        attention = torch.nn.Module()
        attention.q_proj, attention.k_proj = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
        layer = torch.nn.Module()
        layer.self_attn, layer.mlp = attention, torch.nn.Linear(16, 16)
        self.model = torch.nn.Module()
        self.model.layers = torch.nn.ModuleList([layer])
        self.lm_head = torch.nn.Linear(16, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def run(name: str, value: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.get_submodule(name)(value)
            return out

        attention = "model.layers.0.self_attn"
        h = run(f"{attention}.q_proj", x) + run(f"{attention}.k_proj", x)
        return run("lm_head", run("model.layers.0.mlp", torch.relu(h)))


FP8_RECIPE = """
quant_stage:
  quant_modifiers:
    QuantizationModifier:
      ignore: ["lm_head"]
      config_groups:
        group_0:
          weights:
            num_bits: 8
            type: float
            strategy: channel
            dynamic: false
            symmetric: true
          input_activations:
            num_bits: 8
            type: float
            strategy: token
            dynamic: true
            symmetric: true
          targets: ["Linear"]
"""


def test_a_reference_shaped_recipe_with_float_config_groups_loads_builds_and_calibrates() -> None:
    ModifierFactory.refresh()
    (stage,) = Recipe.load(FP8_RECIPE).build()
    (q,) = stage.modifiers
    assert isinstance(q, QuantizationModifier)
    (scheme,) = q.schemes
    assert scheme.describe() == "weights fp8 sym channel; inputs fp8 sym token dynamic"
    model = TinyDecoder()
    session = calibrate(model, q, [torch.randn(2, 3, 16)])
    assert sorted(q.export()) == [
        "model.layers.0.mlp",
        "model.layers.0.self_attn.k_proj",
        "model.layers.0.self_attn.q_proj",
    ]
    session.finalize()


def test_a_recipe_with_a_kv_cache_scheme_builds_and_a_bad_one_is_refused_by_path() -> None:
    ModifierFactory.refresh()
    text = (
        "quant_stage:\n  quant_modifiers:\n    QuantizationModifier:\n"
        "      scheme: FP8\n      kv_cache_scheme: {num_bits: 8, type: float}\n"
    )
    (stage,) = Recipe.load(text).build()
    (modifier,) = stage.modifiers
    assert isinstance(modifier, QuantizationModifier)
    assert modifier.kv_cache_scheme == {"num_bits": 8, "type": "float"}
    with pytest.raises(RecipeError, match=r"kv_cache_scheme\.num_bits"):
        Recipe.load(text.replace("num_bits: 8", "num_bits: 1")).build()
