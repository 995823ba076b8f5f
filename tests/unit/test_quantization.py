"""QuantizationModifier: fake-quantized training, calibration, freezing and export."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from modfsm.engine import ConfigError, Data, IllegalTransitionError, Modifier, State
from modfsm.engine.config.factory import ModifierFactory
from modfsm.engine.config.recipe import Recipe
from modfsm.engine.loop.session import Session
from modfsm.engine.runtime.hooks import HooksMixin
from modfsm.modifiers.quantization import QuantizationModifier
from modfsm.modifiers.quantization.fake import dequantize, fake_quantize, qparams, weight_qparams
from tests.training import batch, bounds, linear, mlp, resume_run, straight_run, train_steps
from tests.unit.test_hooks import torch_hook_count

STATIC_W8A8: dict[str, Any] = {
    "int8": {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "strategy": "channel"},
        "input_activations": {"num_bits": 8, "strategy": "tensor", "observer": "moving_average"},
    }
}
"""int8 weights per channel, int8 inputs with one static scale (``modfsm run``'s default)."""

MINMAX_W8A8: dict[str, Any] = {
    "group_0": {
        "targets": ["Linear"],
        "weights": {"num_bits": 8, "strategy": "channel"},
        "input_activations": {"num_bits": 8, "observer": "minmax"},
    }
}


def session_for(
    model: torch.nn.Module, modifiers: list[Modifier], **kwargs: Any
) -> tuple[Session, torch.optim.Optimizer]:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    session = Session()
    session.initialize(
        model=model, optimizer=optimizer, recipe=modifiers, wrap_optimizer=True, **kwargs
    )
    return session, optimizer


def expected_forward(model: torch.nn.Sequential, x: torch.Tensor, q: QuantizationModifier) -> Any:
    """The model's output computed by hand from the modifier's scales."""
    out = x
    for name, layer in model.named_children():
        if isinstance(layer, torch.nn.Linear):
            scheme = q.plan[name]
            w = layer.weight
            if scheme.weights is not None:
                w = fake_quantize(w, *weight_qparams(w, scheme.weights), scheme.weights)
            if scheme.input_activations is not None:
                observer = q._observers[name]
                out = fake_quantize(out, *observer.qparams(), scheme.input_activations)
            out = torch.nn.functional.linear(out, w, layer.bias)
        else:
            out = layer(out)
    return out


# --- inside the window ------------------------------------------------------------------------


def test_inside_the_window_the_forward_is_fake_quantized() -> None:
    model = mlp()
    q = QuantizationModifier(config_groups=MINMAX_W8A8, start=0)
    session, optimizer = session_for(model, [q])
    train_steps(session, model, optimizer, 3)
    model.eval()
    x = batch(50)
    assert torch.equal(model(x), expected_forward(model, x, q))
    with HooksMixin.disable_hooks():  # switched off: the float model
        plain = model(x)
    first, last = linear(model, 0), linear(model, 2)
    by_hand = torch.relu(x @ first.weight.T + first.bias) @ last.weight.T + last.bias
    assert torch.allclose(plain, by_hand)
    assert not torch.equal(plain, model(x))
    session.finalize()


def test_weight_only_schemes_leave_the_inputs_in_float() -> None:
    model = mlp()
    q = QuantizationModifier(scheme="W8A16", start=0)
    session, _ = session_for(model, [q])
    x, layer, args = batch(1), linear(model, 0), q.plan["0"].weights
    assert args is not None
    quantized = fake_quantize(layer.weight, *weight_qparams(layer.weight, args), args)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, quantized, layer.bias))
    session.finalize()


def test_dynamic_inputs_use_each_batch_range() -> None:
    groups = {"g": {"targets": "Linear", "input_activations": {"num_bits": 4, "dynamic": True}}}
    model = mlp()
    q = QuantizationModifier(config_groups=groups, start=0)
    session, _ = session_for(model, [q])
    args = q.plan["0"].input_activations
    assert args is not None
    x = batch(2)
    lo, hi = torch.aminmax(x)
    layer = linear(model, 0)
    hand = torch.nn.Linear.forward(layer, fake_quantize(x, *qparams(lo, hi, args), args))
    assert torch.equal(layer(x), hand)
    session.finalize()


def test_parameters_state_dict_keys_and_the_optimizer_stay_untouched() -> None:
    model = mlp()
    keys, params = list(model.state_dict()), list(model.parameters())
    q = QuantizationModifier(scheme="W8A8", start=0)
    session, optimizer = session_for(model, [q])
    train_steps(session, model, optimizer, 2)
    assert list(model.state_dict()) == keys
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert optimizer.param_groups[0]["params"][0] is params[0]
    assert isinstance(linear(model, 0).weight, torch.nn.Parameter)  # no stand-in after a forward
    session.finalize()


def test_the_weight_stand_in_is_removed_even_when_the_forward_raises() -> None:
    model = mlp()
    q = QuantizationModifier(scheme="W8A16", start=0)
    session, _ = session_for(model, [q])
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 5))  # wrong width: F.linear raises inside the forward
    assert "weight" not in linear(model, 0).__dict__
    assert isinstance(linear(model, 0).weight, torch.nn.Parameter)
    session.finalize()


def test_gradients_reach_the_float_weights_through_the_straight_through_estimator() -> None:
    model = mlp()
    q = QuantizationModifier(scheme="W8A16", start=0)
    session, _ = session_for(model, [q])
    x = batch(3)
    model(x).sum().backward()
    layer = linear(model, 2)
    hidden = torch.relu(linear(model, 0)(x)).detach()
    # d(sum(h @ Wq^T))/dWq = column sums of h, passed unchanged to W
    assert layer.weight.grad is not None
    expected = hidden.sum(dim=0).expand_as(layer.weight)
    assert torch.allclose(layer.weight.grad, expected)
    session.finalize()


def test_observers_follow_training_inputs_but_not_evaluation() -> None:
    model = mlp()
    q = QuantizationModifier(config_groups=MINMAX_W8A8, start=0)
    session, optimizer = session_for(model, [q])
    train_steps(session, model, optimizer, 1)
    before = q._observers["0"].state_dict()
    model.eval()
    model(batch(7) * 100)  # a huge batch, seen in eval mode only
    assert torch.equal(q._observers["0"].state_dict()["hi"], before["hi"])
    model.train()
    model(batch(7) * 100)
    assert q._observers["0"].state_dict()["hi"] > before["hi"]
    session.finalize()


def test_the_end_of_the_window_freezes_the_input_scales() -> None:
    model = mlp()
    q = QuantizationModifier(config_groups=MINMAX_W8A8, start=0, end=2)
    session, optimizer = session_for(model, [q])
    train_steps(session, model, optimizer, 2)
    assert q.ended
    frozen = q._observers["0"].state_dict()
    model(batch(9) * 100)  # training mode, after the end
    assert torch.equal(q._observers["0"].state_dict()["hi"], frozen["hi"])
    x = batch(10)
    assert torch.equal(model(x), expected_forward(model, x, q))  # still quantized
    session.finalize()


# --- calibration ------------------------------------------------------------------------------


def calibration_batches() -> list[torch.Tensor]:
    return [batch(100 + i) * (i + 1) for i in range(4)]


def test_a_one_shot_run_calibrates_over_calib_data_and_keeps_the_scales() -> None:
    model = mlp()
    q = QuantizationModifier(config_groups=MINMAX_W8A8, start=-1)
    data = calibration_batches()
    session, optimizer = session_for(model, [q], calib_data=data)
    lo, hi = torch.aminmax(torch.cat(data))
    observer = q._observers["0"]
    assert bounds(observer) == (float(lo), float(hi))
    scale_before = observer.qparams()[0]
    train_steps(session, model, optimizer, 2)
    assert torch.equal(observer.qparams()[0], scale_before)  # one-shot: frozen
    assert model.training  # calibration restored the mode
    session.finalize()


def test_start_zero_calibrates_then_keeps_observing() -> None:
    model = mlp()
    q = QuantizationModifier(config_groups=MINMAX_W8A8, start=0)
    session, _ = session_for(model, [q], calib_data=calibration_batches())
    calibrated = q._observers["0"].state_dict()["hi"]
    model(batch(1) * 1000)
    assert q._observers["0"].state_dict()["hi"] > calibrated
    session.finalize()


def test_calibration_accepts_tensors_tuples_and_mappings() -> None:
    model = mlp()
    q = QuantizationModifier(config_groups=MINMAX_W8A8, start=0)
    q.initialize(State(model=model))
    # model(x), model(x) of (x, y), and model(**batch) (Sequential's argument is "input")
    seen = q.calibrate(model, [(batch(1), 0), batch(2), {"input": batch(3) * 50}])
    assert seen == 3
    assert bounds(q._observers["0"])[1] == float(torch.aminmax(batch(3) * 50)[1])
    q.finalize(State(model=model))


def test_a_one_shot_run_without_calibration_data_is_refused_and_changes_nothing() -> None:
    model = mlp()
    q = QuantizationModifier(scheme="FP8", start=-1)  # static input scales: calibrated
    with pytest.raises(ConfigError, match="needs calibration data"):
        q.initialize(State(model=model))
    assert q.lifecycle_state == "created"
    assert torch_hook_count(model) == 0


# --- finalize and export --------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["W8A8", "W8A16", STATIC_W8A8])
def test_after_finalize_the_weights_are_exactly_their_exported_integers(scheme: Any) -> None:
    model = mlp(widths=(8, 16, 4))
    q = (
        QuantizationModifier(scheme=scheme, start=1)
        if isinstance(scheme, str)
        else QuantizationModifier(config_groups=scheme, start=1)
    )
    session, optimizer = session_for(model, [q])
    train_steps(session, model, optimizer, 4)
    session.finalize()
    exported = q.export()
    assert sorted(exported) == ["0", "2"]
    for name, entry in exported.items():
        args = q.plan[name].weights
        assert args is not None
        assert entry["weight"].dtype == torch.int8
        assert entry["weight_scale"].shape == (linear(model, int(name)).weight.shape[0], 1)
        restored = dequantize(
            entry["weight"], entry["weight_scale"], entry["weight_zero_point"], args
        )
        assert torch.equal(restored, linear(model, int(name)).weight.detach())
        # a static input scale is exported; a dynamic one (W8A8's) is computed at run time
        assert ("input_scale" in entry) == (scheme is STATIC_W8A8)
        report = q.report[name]
        assert report["max_error"] <= report["bound"] * (1 + 1e-5)
        assert 0 < report["relative_error"] < 0.02
    assert torch_hook_count(model) == 0


def test_group_quantization_exports_a_scale_per_group() -> None:
    model = mlp(widths=(8, 16, 4))
    q = QuantizationModifier(scheme="W4A16", group_size=4, start=0)
    session, _ = session_for(model, [q])
    session.finalize()
    entry = q.export()["2"]
    assert entry["weight_scale"].shape == (4, 4)  # 4 outputs x 16/4 groups
    assert int(entry["weight"].min()) >= -8
    assert int(entry["weight"].max()) <= 7


def test_conv_layers_are_quantized_per_output_channel() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3)
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Conv2d(3, 2, 1))
    q = QuantizationModifier(scheme="W8A8", targets="__ALL__", start=0)
    session, _ = session_for(model, [q])
    model(torch.randn(1, 2, 5, 5))
    session.finalize()
    entry = q.export()["0"]
    assert entry["weight"].shape == (3, 2, 3, 3)
    args = q.plan["0"].weights
    assert args is not None
    restored = dequantize(entry["weight"], entry["weight_scale"], entry["weight_zero_point"], args)
    assert torch.equal(restored, conv.weight.detach())


def test_export_before_finalize_or_without_a_window_is_refused() -> None:
    model = mlp()
    q = QuantizationModifier(scheme="W8A8", start=0)
    session, _ = session_for(model, [q])
    with pytest.raises(IllegalTransitionError, match="not finalized yet"):
        q.export()
    session.finalize()
    late = QuantizationModifier(scheme="W8A8", start=100)
    other, _ = session_for(mlp(), [late])
    other.finalize()
    with pytest.raises(IllegalTransitionError, match="window never opened"):
        late.export()


def test_a_modifier_whose_window_never_opened_leaves_the_weights_alone() -> None:
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    session, _ = session_for(model, [QuantizationModifier(scheme="W8A8", start=100)])
    session.finalize()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of scheme and config_groups, got neither"),
        ({"scheme": "W8A8", "config_groups": MINMAX_W8A8}, "got both"),
        ({"config_groups": MINMAX_W8A8, "targets": "Linear"}, "each group names its targets"),
        ({"config_groups": MINMAX_W8A8, "group_size": 8}, "group_size inside the weights"),
        ({"scheme": 8}, "must be a preset name"),
        ({"scheme": "W8A8", "group_size": 0}, "group_size must be a whole number >= 1"),
        ({"scheme": "W4A4"}, "not a preset"),
        ({"scheme": "W8A8", "targets": 5}, "must be a name or a list of names"),
    ],
)
def test_bad_arguments_are_rejected_at_construction(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        QuantizationModifier(**kwargs)


def test_a_group_size_that_does_not_divide_a_layer_fails_at_initialize() -> None:
    q = QuantizationModifier(scheme="W4A16", start=0)  # groups of 128; the layers have 8 and 16
    with pytest.raises(ConfigError, match="has 8 inputs, not a multiple of group_size 128"):
        q.initialize(State(model=mlp()))
    assert q.lifecycle_state == "created"


def test_a_layer_in_two_config_groups_is_an_error() -> None:
    groups = {
        "a": {"targets": "Linear", "weights": {"num_bits": 8}},
        "b": {"targets": "0", "weights": {"num_bits": 4}},
    }
    with pytest.raises(ConfigError, match="layer '0' is targeted by config groups 0 and 1"):
        QuantizationModifier(config_groups=groups, start=0).initialize(State(model=mlp()))


def test_a_recipe_in_the_reference_shape_builds_through_the_factory() -> None:
    ModifierFactory.refresh()
    recipe = Recipe.load(
        """
quant_stage:
  quant_modifiers:
    QuantizationModifier:
      ignore: ["2"]
      config_groups:
        group_0:
          targets: [Linear]
          weights: {num_bits: 4, type: int, symmetric: true, strategy: group, group_size: 4}
          input_activations: {num_bits: 8, type: int, symmetric: false, strategy: tensor,
                              dynamic: false, observer: moving_average,
                              observer_kwargs: {averaging_constant: 0.1}}
      start: 0
"""
    )
    (stage,) = recipe.build()
    (q,) = stage.modifiers
    assert isinstance(q, QuantizationModifier)
    q.initialize(State(model=mlp(), data=Data()))
    assert list(q.plan) == ["0"]
    q.finalize(State())


# --- resume ---------------------------------------------------------------------------------


def qat() -> list[Modifier]:
    return [QuantizationModifier(config_groups=MINMAX_W8A8, start=2, end=7)]


@pytest.mark.parametrize("save_at", [1, 3, 6, 8])
def test_a_resumed_quantization_run_is_bitwise_the_uninterrupted_one(save_at: int) -> None:
    straight, (q1,) = straight_run(qat, 10)
    resumed, (q2,) = resume_run(qat, 10, save_at)
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert isinstance(q1, QuantizationModifier)
    assert isinstance(q2, QuantizationModifier)
    for name, entry in q1.export().items():
        assert torch.equal(entry["input_scale"], q2.export()[name]["input_scale"])


def test_saved_observer_ranges_are_put_on_the_device_of_their_layers() -> None:
    # As for pruning masks: a checkpoint read to the CPU may resume a model elsewhere
    # (a CUDA model; here the meta device).
    source = QuantizationModifier(config_groups=MINMAX_W8A8, start=0)
    trained = mlp()
    session, optimizer = session_for(trained, [source])
    train_steps(session, trained, optimizer, 1)
    saved = source.state_dict()
    session.finalize()
    assert {str(t.device) for o in saved["observers"].values() for t in o.values()} == {"cpu"}
    model = mlp().to("meta")
    target = QuantizationModifier(config_groups=MINMAX_W8A8, start=0)
    target.initialize(State(model=model))
    target.load_state_dict(saved, State(model=model))
    ranges = [(o.lo, o.hi) for o in target._observers.values()]
    assert len(ranges) == len(saved["observers"]) == 2
    assert {str(t.device) for pair in ranges for t in pair if t is not None} == {"meta"}
    assert all(lo is not None for lo, _ in ranges)


def test_saved_observers_for_other_layers_are_refused() -> None:
    q = QuantizationModifier(config_groups=MINMAX_W8A8, start=0)
    q.initialize(State(model=mlp()))
    with pytest.raises(ConfigError, match=r"saved observers \['fc9'\] are not target layers"):
        q.load_state_dict({"observers": {"fc9": {}}, "observing": True}, State(model=mlp()))


@pytest.mark.parametrize(
    ("saved", "problem"),
    [
        ({"observers": {}}, r"its keys are \['observers'\], expected observers, observing"),
        ({"observers": {}, "observing": 1}, "observing is 1, not true or false"),
        (
            {"observers": {}, "observing": False},
            r"observing is False, but the modifier is 'started' \(it observes exactly while its "
            r"window is open, unless start is -1\)",
        ),
        (
            {"observers": {}, "observing": True},
            r"the observers of target layers \['0', '2'\] are not saved \(\['0', '2'\]\)",
        ),
        (
            {"observers": [], "observing": True},
            "observers is not a dict of layer name to observer state",
        ),
    ],
)
def test_a_saved_state_of_another_shape_is_refused(saved: dict[str, Any], problem: str) -> None:
    q = QuantizationModifier(config_groups=MINMAX_W8A8, start=0)
    q.initialize(State(model=mlp()))
    with pytest.raises(ConfigError, match=rf"\.load_state_dict: {problem}\. To fix, resume"):
        q.load_state_dict(saved, State(model=mlp()))


@pytest.mark.parametrize(
    "saved",
    [
        {"lo": torch.tensor(0.0)},
        {"lo": torch.tensor(1.0), "hi": torch.tensor(0.0)},
        {"lo": torch.tensor(float("nan")), "hi": torch.tensor(1.0)},
        {"lo": torch.tensor(0), "hi": torch.tensor(1)},
        {"lo": torch.zeros(2), "hi": torch.ones(2)},
        {"lo": torch.tensor(0.0), "hi": torch.tensor(1.0), "extra": 1},
    ],
)
def test_an_observer_refuses_a_range_that_is_not_finite_scalars_in_order(
    saved: dict[str, Any],
) -> None:
    q = QuantizationModifier(config_groups=MINMAX_W8A8, start=0)
    q.initialize(State(model=mlp()))
    observer = next(iter(q._observers.values()))
    with pytest.raises(ValueError, match=r"needs finite scalar float tensors lo <= hi"):
        observer.load_state_dict(saved)


def test_a_single_ignore_name_is_one_layer_not_its_letters() -> None:
    q = QuantizationModifier(scheme="W8A16", start=0, ignore="2")
    q.initialize(State(model=mlp()))
    assert list(q.plan) == ["0"]
    q.finalize(State())
