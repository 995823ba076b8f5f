"""modfsm.modifiers.quantization.args: presets and config_groups in the reference's recipe shape."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modfsm.engine import ConfigError
from modfsm.modifiers.quantization.args import (
    PRESETS,
    QuantizationArgs,
    parse_args,
    parse_config_groups,
    preset,
)


def test_w8a8_quantizes_weights_per_channel_and_inputs_per_token_dynamically() -> None:
    scheme = preset("W8A8", ("Linear",), None)
    assert scheme.weights == QuantizationArgs(num_bits=8, symmetric=True, strategy="channel")
    assert scheme.input_activations is not None
    assert scheme.input_activations.strategy == "token"
    assert scheme.input_activations.dynamic
    assert scheme.describe() == "weights int8 sym channel; inputs int8 sym token dynamic"


def test_weight_only_presets_leave_inputs_in_float() -> None:
    assert preset("W8A16", ("Linear",), None).input_activations is None
    w4 = preset("w4a16", ("Linear",), None)  # preset names are case-insensitive
    assert w4.weights is not None
    assert (w4.weights.num_bits, w4.weights.strategy, w4.weights.group_size) == (4, "group", 128)


def test_group_size_changes_a_grouped_preset_only() -> None:
    weights = preset("W4A16", ("Linear",), 32).weights
    assert weights is not None
    assert weights.group_size == 32
    with pytest.raises(ConfigError, match="quantizes weights per channel, not in groups"):
        preset("W8A8", ("Linear",), 32)


def test_an_unknown_preset_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"'w8a9' is not a preset\. Did you mean 'W8A8'"):
        preset("w8a9", ("Linear",), None)


def test_config_groups_read_the_reference_shape() -> None:
    (scheme,) = parse_config_groups(
        {
            "group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 4, "type": "int", "symmetric": False,
                            "strategy": "group", "group_size": 16},
                "input_activations": {"num_bits": 8, "observer": "moving_average",
                                      "observer_kwargs": {"averaging_constant": 0.1}},
            }
        }
    )  # fmt: skip
    assert scheme.targets == ("Linear",)
    assert scheme.weights == QuantizationArgs(
        num_bits=4, symmetric=False, strategy="group", group_size=16
    )
    assert scheme.input_activations is not None
    assert scheme.input_activations.averaging_constant == 0.1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "must be a non-empty mapping"),
        ({"g": {"targets": ["Linear"]}}, "quantizes nothing"),
        ({"g": {"weights": {"num_bits": 8}}}, "targets: must be a non-empty list"),
        ({"g": {"targets": "Linear", "weigths": {}}}, r"'weigths' -> 'weights'"),
        ({"g": {"targets": "Linear", "weights": {"num_bits": 9}}}, "between 2 and 8, got 9"),
        ({"g": {"targets": "Linear", "weights": {"num_bits": 8.0}}}, "must be a whole number"),
        # type: float is float8_e4m3fn since issue 21 (it was refused before): other widths are
        (
            {"g": {"targets": "Linear", "weights": {"type": "float", "num_bits": 4}}},
            "8-bit float8_e4m3fn only, got num_bits 4",
        ),
        ({"g": {"targets": "Linear", "weights": {"strategy": "block"}}}, "not one of tensor"),
        ({"g": {"targets": "Linear", "weights": {"strategy": "group"}}}, "needs a group_size"),
        ({"g": {"targets": "Linear", "weights": {"group_size": 8}}}, "applies to strategy"),
        ({"g": {"targets": "Linear", "weights": {"dynamic": True}}}, "dynamic applies to"),
        ({"g": {"targets": "Linear", "weights": {"symmetric": "yes"}}}, "must be true or false"),
        (
            {"g": {"targets": "Linear", "input_activations": {"strategy": "channel"}}},
            "per tensor, not per 'channel'",
        ),
        ({"g": {"targets": "Linear", "input_activations": {"observer": "mse"}}}, "not one of"),
        (
            {
                "g": {
                    "targets": "Linear",
                    "input_activations": {"observer_kwargs": {"averaging_constant": 0}},
                }
            },
            r"in \(0, 1\]",
        ),
    ],
)
def test_bad_config_groups_name_the_key(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config_groups(raw)


def test_every_preset_round_trips_through_its_recipe_form() -> None:
    for name, (weights, inputs) in PRESETS.items():
        assert parse_args(name, weights.to_dict(), activations=False) == weights
        if inputs is not None:
            assert parse_args(name, inputs.to_dict(), activations=True) == inputs


@given(
    st.integers(2, 8),
    st.booleans(),
    st.sampled_from(["tensor", "channel", "group"]),
    st.sampled_from(["minmax", "moving_average"]),
    st.floats(0.001, 1.0),
)
def test_weight_arguments_round_trip_through_their_recipe_form(
    bits: int, symmetric: bool, strategy: str, observer: str, constant: float
) -> None:
    args = QuantizationArgs(
        num_bits=bits,
        symmetric=symmetric,
        strategy=strategy,
        group_size=8 if strategy == "group" else None,
        observer=observer,
        averaging_constant=constant if observer == "moving_average" else 0.01,
    )
    assert parse_args("w", args.to_dict(), activations=False) == args
