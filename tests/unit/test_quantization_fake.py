"""modfsm.modifiers.quantization.fake: the integer grid, the round-trip bound, STE, observers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modfsm.modifiers.quantization.args import QuantizationArgs
from modfsm.modifiers.quantization.fake import (
    Observer,
    dequantize,
    fake_quantize,
    qparams,
    quantize,
    rows,
    scale_shape,
    weight_qparams,
)
from tests.training import bounds

args_strategy = st.builds(
    lambda bits, symmetric, strategy: QuantizationArgs(
        num_bits=bits,
        symmetric=symmetric,
        strategy=strategy,
        group_size=4 if strategy == "group" else None,
    ),
    st.integers(2, 8),
    st.booleans(),
    st.sampled_from(["tensor", "channel", "group"]),
)


def weight(seed: int, rows_: int = 6, cols: int = 12, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(rows_, cols, generator=torch.Generator().manual_seed(seed)) * scale


@given(args_strategy, st.integers(0, 2**20), st.floats(1e-3, 1e3))
def test_the_round_trip_error_is_within_half_a_step(
    args: QuantizationArgs, seed: int, magnitude: float
) -> None:
    w = weight(seed, scale=magnitude)
    scale, zero_point = weight_qparams(w, args)
    restored = dequantize(quantize(w, scale, zero_point, args), scale, zero_point, args)
    error = rows((w - restored).abs(), args)
    bound = scale.reshape(-1, 1) / 2
    # float32 rounding of the products adds at most a few ulps of the value itself
    slack = rows(w.abs(), args) * 4 * torch.finfo(torch.float32).eps
    assert bool((error <= bound + slack).all())


@given(args_strategy, st.integers(0, 2**20))
def test_integers_lie_in_the_range_of_the_bit_width(args: QuantizationArgs, seed: int) -> None:
    w = weight(seed)
    scale, zero_point = weight_qparams(w, args)
    q = quantize(w, scale, zero_point, args)
    assert q.dtype == torch.int8
    assert int(q.min()) >= args.qmin
    assert int(q.max()) <= args.qmax
    assert bool(((zero_point >= args.qmin) & (zero_point <= args.qmax)).all())


@given(args_strategy, st.integers(0, 2**20))
def test_torch_fused_fake_quantization_equals_quantize_then_dequantize(
    args: QuantizationArgs, seed: int
) -> None:
    w = weight(seed)
    scale, zero_point = weight_qparams(w, args)
    fused = fake_quantize(w, scale, zero_point, args)
    assert torch.equal(
        fused, dequantize(quantize(w, scale, zero_point, args), scale, zero_point, args)
    )


@given(args_strategy, st.integers(0, 2**20))
def test_dequantized_values_lie_on_the_grid(args: QuantizationArgs, seed: int) -> None:
    w = weight(seed)
    scale, zero_point = weight_qparams(w, args)
    snapped = fake_quantize(w, scale, zero_point, args)
    # quantizing a value that is already on the grid gives it back exactly
    assert torch.equal(fake_quantize(snapped, scale, zero_point, args), snapped)
    steps = rows(snapped, args) / scale.reshape(-1, 1) + zero_point.reshape(-1, 1)
    assert torch.allclose(steps, steps.round(), atol=1e-3)


def test_zero_is_exactly_representable() -> None:
    for symmetric in (True, False):
        args = QuantizationArgs(num_bits=4, symmetric=symmetric, strategy="channel")
        w = torch.tensor([[0.0, 0.3, 0.9], [0.0, -2.0, 5.0], [0.1, 0.2, 0.3]])
        scale, zero_point = weight_qparams(w, args)
        assert fake_quantize(w, scale, zero_point, args)[:2, 0].tolist() == [0.0, 0.0]


def test_symmetric_scales_use_the_largest_magnitude_and_zero_point_zero() -> None:
    args = QuantizationArgs(num_bits=8, symmetric=True)
    scale, zero_point = qparams(torch.tensor(-2.54), torch.tensor(1.0), args)
    assert float(scale) == pytest.approx(2.54 / 127)
    assert int(zero_point) == 0


def test_asymmetric_ranges_map_their_ends_to_the_integer_ends() -> None:
    args = QuantizationArgs(num_bits=8, symmetric=False)
    scale, zero_point = qparams(torch.tensor(-1.0), torch.tensor(3.0), args)
    assert float(scale) == pytest.approx(4.0 / 255)
    lo_q = quantize(torch.tensor([[-1.0, 3.0]]), scale.reshape(1), zero_point.reshape(1), args)
    assert lo_q.tolist() == [[-128, 127]]


def test_an_all_zero_range_gets_a_finite_scale() -> None:
    args = QuantizationArgs(num_bits=8, strategy="channel")
    w = torch.zeros(3, 4)
    scale, zero_point = weight_qparams(w, args)
    assert bool(torch.isfinite(scale).all())
    assert torch.equal(fake_quantize(w, scale, zero_point, args), w)


def test_group_scales_are_one_per_group_of_inputs() -> None:
    args = QuantizationArgs(num_bits=4, strategy="group", group_size=4)
    w = weight(0, rows_=3, cols=8)
    scale, _ = weight_qparams(w, args)
    assert scale.shape == (6,)
    assert scale_shape(w, args) == (3, 2)
    w[0, :4] *= 100  # one group's range grows; only its scale changes
    bigger, _ = weight_qparams(w, args)
    assert (bigger != scale).tolist() == [True, False, False, False, False, False]


def test_gradients_pass_straight_through_inside_the_range_and_stop_outside() -> None:
    args = QuantizationArgs(num_bits=8)
    scale, zero_point = qparams(torch.tensor(-1.0), torch.tensor(1.0), args)
    x = torch.tensor([-0.5, 0.0, 0.33, 0.99, 3.0, -7.0], requires_grad=True)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    fake_quantize(x, scale, zero_point, args).backward(upstream)  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated
    assert x.grad is not None
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 4.0, 0.0, 0.0]


def test_per_channel_gradients_flow_to_every_element_in_range() -> None:
    args = QuantizationArgs(num_bits=4, strategy="channel")
    w = weight(1).requires_grad_()
    scale, zero_point = weight_qparams(w, args)
    fake_quantize(w, scale, zero_point, args).sum().backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated
    assert w.grad is not None
    assert torch.equal(w.grad, torch.ones_like(w))


def test_a_minmax_observer_keeps_the_widest_range() -> None:
    observer = Observer(QuantizationArgs(observer="minmax"))
    assert not observer.observed
    observer.update(torch.tensor([-1.0, 2.0]))
    observer.update(torch.tensor([-0.5, 4.0]))
    observer.update(torch.tensor([-3.0, 1.0]))
    assert bounds(observer) == (-3.0, 4.0)


def test_a_moving_average_observer_moves_by_its_constant() -> None:
    observer = Observer(QuantizationArgs(observer="moving_average", averaging_constant=0.25))
    observer.update(torch.tensor([-1.0, 1.0]))
    observer.update(torch.tensor([-5.0, 9.0]))
    assert bounds(observer) == pytest.approx((-1.0 + 0.25 * -4.0, 1.0 + 0.25 * 8.0))


def test_an_observer_state_round_trips_and_bad_states_are_refused() -> None:
    observer = Observer(QuantizationArgs())
    observer.update(torch.tensor([-1.0, 2.0]))
    copy = Observer(QuantizationArgs())
    copy.load_state_dict(observer.state_dict())
    assert torch.equal(copy.qparams()[0], observer.qparams()[0])
    with pytest.raises(ValueError, match="finite scalar float tensors lo <= hi"):
        copy.load_state_dict({"lo": torch.zeros(2), "hi": torch.zeros(2)})
