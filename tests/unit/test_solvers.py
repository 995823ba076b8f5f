"""modfsm.modifiers.solvers: the Hessian, GPTQ and SparseGPT on small layers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modfsm.engine import ConfigError, ConfigTypeError
from modfsm.modifiers.pruning.masks import nm_mask, unstructured_mask
from modfsm.modifiers.quantization.args import QuantizationArgs
from modfsm.modifiers.quantization.fake import dequantize, quantize, weight_qparams
from modfsm.modifiers.solvers import (
    CalibrationError,
    GPTQResult,
    HessianAccumulator,
    HessianNotPositiveDefiniteError,
    dampen,
    gptq_quantize,
    gptq_reference,
    inverse_cholesky,
    parse_mask_structure,
    reconstruction_error,
    round_to_nearest,
    sparsegpt_prune,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread while these tests run, restored after.

    The sweeps run thousands of tiny tensor operations; on a busy machine,
    torch's thread pool makes each of them wait for the other threads (10-15x
    slower on the shared 2-core box). Nothing here tests threading.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- layers ------------------------------------------------------------------------------


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def correlated_inputs(samples: int, columns: int, seed: int, rank: int = 6) -> torch.Tensor:
    """Inputs like an LLM's: a few shared directions, noise, and uneven channel scales."""
    g = generator(seed)
    directions = torch.randn(rank, columns, generator=g) * 3.0
    inputs = torch.randn(samples, rank, generator=g) @ directions
    inputs += 0.3 * torch.randn(samples, columns, generator=g)
    channel_scale = torch.rand(columns, generator=g) * 2.0
    channel_scale[torch.randperm(columns, generator=g)[:3]] *= 8.0  # outlier channels
    return inputs * channel_scale


def layer(
    rows: int = 32, columns: int = 128, seed: int = 0, samples: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random weight and the Hessian of correlated inputs."""
    accumulator = HessianAccumulator(columns)
    accumulator.update(correlated_inputs(samples, columns, seed))
    weight = torch.randn(rows, columns, generator=generator(seed + 1)) * 0.05
    return weight, accumulator.hessian()


def on_grid(result: GPTQResult, args: QuantizationArgs) -> bool:
    """Quantizing the result again with its own scale and zero point gives it back exactly."""
    weight = result.weight.reshape(result.weight.shape[0], -1)
    if result.g_idx is not None:
        assert result.perm is not None
        weight = weight[:, result.perm]  # groups are contiguous in processing order
    codes = quantize(weight, result.scale, result.zero_point, args)
    restored = dequantize(codes, result.scale, result.zero_point, args)
    return torch.equal(restored.to(weight.dtype), weight)


def sym(bits: int, strategy: str = "channel", group: int | None = None) -> QuantizationArgs:
    return QuantizationArgs(num_bits=bits, symmetric=True, strategy=strategy, group_size=group)


def asym(bits: int, strategy: str = "channel", group: int | None = None) -> QuantizationArgs:
    return QuantizationArgs(num_bits=bits, symmetric=False, strategy=strategy, group_size=group)


SCHEMES = [
    sym(4),
    asym(4),
    sym(4, "group", 32),
    asym(4, "group", 32),
    asym(3, "tensor"),
    sym(8, "group", 16),
]
ACTORDERS = [None, "static", "group"]


# --- the Hessian -------------------------------------------------------------------------


def test_the_hessian_is_the_mean_of_2_x_xT_however_the_batches_are_split() -> None:
    inputs = correlated_inputs(300, 24, seed=3)
    expected = 2.0 * inputs.double().T @ inputs.double() / 300
    for sizes in ([300], [1, 299], [7] * 42 + [6], [100, 0, 200]):
        accumulator = HessianAccumulator(24)
        for batch in torch.split(inputs, sizes):
            accumulator.update(batch)
        assert accumulator.count == 300
        hessian = accumulator.hessian()
        assert hessian.dtype == torch.float64
        assert torch.equal(hessian, hessian.T)
        torch.testing.assert_close(hessian, expected, rtol=1e-12, atol=1e-12)


def test_every_leading_dimension_counts_as_samples() -> None:
    inputs = correlated_inputs(60, 8, seed=4)
    flat, shaped = HessianAccumulator(8), HessianAccumulator(8)
    flat.update(inputs)
    shaped.update(inputs.reshape(3, 4, 5, 8).to(torch.bfloat16).float())
    shaped_direct = HessianAccumulator(8)
    shaped_direct.update(inputs.reshape(3, 4, 5, 8))
    assert shaped.count == shaped_direct.count == 60
    torch.testing.assert_close(shaped_direct.hessian(), flat.hessian(), rtol=1e-12, atol=0)


def test_a_float32_accumulator_keeps_float32() -> None:
    accumulator = HessianAccumulator(4, dtype=torch.float32)
    accumulator.update(torch.ones(3, 4, dtype=torch.float64))
    assert accumulator.hessian().dtype == torch.float32
    assert torch.equal(accumulator.hessian(), torch.full((4, 4), 2.0))


def test_without_samples_there_is_no_hessian() -> None:
    accumulator = HessianAccumulator(4)
    accumulator.update(torch.zeros(0, 4))
    with pytest.raises(CalibrationError) as caught:
        accumulator.hessian()
    assert str(caught.value) == (
        "HessianAccumulator: no calibration inputs were seen, so there is no Hessian. To fix, "
        "run calibration batches through the layer (update() each input) before compressing "
        "it, or leave the layer out."
    )
    assert caught.value.problem == "no samples"
    assert isinstance(caught.value, RuntimeError)


def test_non_finite_inputs_make_the_hessian_refuse() -> None:
    accumulator = HessianAccumulator(2)
    accumulator.update(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(CalibrationError, match="not finite") as caught:
        accumulator.hessian()
    assert caught.value.problem == "not finite"


@pytest.mark.parametrize(
    ("inputs", "shown"),
    [
        (torch.zeros(3, 5), "a torch.float32 tensor of shape (3, 5)"),
        (torch.zeros(3, 4, dtype=torch.int64), "a torch.int64 tensor of shape (3, 4)"),
        ([[1.0] * 4], "[[1.0, 1.0, 1.0, 1.0]]"),
    ],
)
def test_inputs_of_the_wrong_width_or_type_are_refused(inputs: Any, shown: str) -> None:
    accumulator = HessianAccumulator(4)
    with pytest.raises(ConfigTypeError) as caught:
        accumulator.update(inputs)
    assert str(caught.value) == (
        f"HessianAccumulator.update: inputs must be a floating tensor shaped (..., 4), got "
        f"{shown}. To fix, pass the layer's input (its last dimension is the layer's number "
        "of inputs)."
    )
    assert accumulator.count == 0


def test_an_accumulator_needs_columns_and_a_float_dtype() -> None:
    with pytest.raises(ConfigError, match="columns must be >= 1"):
        HessianAccumulator(0)
    with pytest.raises(ConfigError, match=r"dtype must be torch.float64 or torch.float32"):
        HessianAccumulator(4, dtype=torch.float16)


def test_the_state_round_trips_and_accumulation_continues() -> None:
    first, second = correlated_inputs(50, 6, seed=5), correlated_inputs(30, 6, seed=6)
    original = HessianAccumulator(6)
    original.update(first)
    saved = original.state_dict()
    saved["sum"].zero_()  # a copy: changing it changes nothing
    saved = original.state_dict()
    restored = HessianAccumulator(6)
    restored.load_state_dict(saved)
    assert restored.count == 50
    assert torch.equal(restored.hessian(), original.hessian())
    original.update(second)
    restored.update(second)
    assert torch.equal(restored.hessian(), original.hessian())
    smaller = HessianAccumulator(6, dtype=torch.float32)
    smaller.load_state_dict(saved)
    assert smaller.hessian().dtype == torch.float32


@pytest.mark.parametrize(
    "saved",
    [
        {},
        {"sum": torch.zeros(6, 6)},
        {"sum": torch.zeros(5, 5), "count": 1},
        {"sum": torch.zeros(6, 6), "count": -1},
        {"sum": torch.zeros(6, 6), "count": True},
        {"sum": torch.ones(6, 6), "count": 0},
        {"sum": torch.full((6, 6), float("nan")), "count": 3},
        {"sum": torch.zeros(6, 6, dtype=torch.int64), "count": 3},
        {"sum": torch.zeros(6, 6), "count": 3, "extra": 1},
    ],
)
def test_a_bad_state_is_refused_and_changes_nothing(saved: dict[str, Any]) -> None:
    accumulator = HessianAccumulator(6)
    accumulator.update(torch.ones(2, 6))
    before = accumulator.hessian()
    with pytest.raises(ConfigError, match="To fix, load the state_dict"):
        accumulator.load_state_dict(saved)
    assert accumulator.count == 2
    assert torch.equal(accumulator.hessian(), before)


def test_dampening_marks_dead_inputs_and_leaves_the_hessian_alone() -> None:
    hessian = torch.tensor([[4.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    dampened = dampen(hessian, 0.5)
    # dead input -> 1, then + 0.5 * mean(4, 2, 1)
    expected = torch.tensor([[4 + 7 / 6, 1.0, 0.0], [1.0, 2 + 7 / 6, 0.0], [0.0, 0.0, 1 + 7 / 6]])
    torch.testing.assert_close(dampened.hessian, expected)
    assert dampened.dead.tolist() == [False, False, True]
    assert hessian[2, 2] == 0.0
    with pytest.raises(ConfigError, match=r"dampen.dampening_frac must be a finite number >= 0"):
        dampen(hessian, -0.1)


def test_the_inverse_factor_is_the_upper_cholesky_factor_of_the_inverse() -> None:
    _, hessian = layer(columns=16)
    factor = inverse_cholesky(dampen(hessian, 0.01).hessian, dampening_frac=0.01)
    assert torch.equal(factor, factor.triu())
    torch.testing.assert_close(
        factor.T @ factor, torch.linalg.inv(dampen(hessian, 0.01).hessian), rtol=1e-9, atol=1e-9
    )


def test_the_reconstruction_error_is_the_mean_squared_output_error() -> None:
    inputs = correlated_inputs(40, 8, seed=7).double()
    accumulator = HessianAccumulator(8)
    accumulator.update(inputs)
    weight = torch.randn(3, 8, generator=generator(8), dtype=torch.float64)
    other = weight + 0.1 * torch.randn(3, 8, generator=generator(9), dtype=torch.float64)
    direct = 2.0 / 40 * float(((inputs @ (weight - other).T) ** 2).sum())
    assert reconstruction_error(weight, other, accumulator.hessian()) == pytest.approx(direct)


# --- GPTQ --------------------------------------------------------------------------------


@pytest.mark.parametrize("args", SCHEMES, ids=lambda a: a.describe())
@pytest.mark.parametrize("actorder", ACTORDERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gptq_weights_lie_exactly_on_their_grid(
    args: QuantizationArgs, actorder: str | None, dtype: torch.dtype
) -> None:
    weight, hessian = layer(rows=8, columns=64, seed=10)
    result = gptq_quantize(weight.to(dtype), hessian, args, block_size=24, actorder=actorder)
    assert result.weight.dtype == dtype
    assert result.weight.shape == weight.shape
    assert on_grid(result, args)


@given(
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    strategy=st.sampled_from(["tensor", "channel", "group"]),
    actorder=st.sampled_from(ACTORDERS),
    rows=st.integers(1, 5),
    groups=st.integers(1, 4),
    block_size=st.integers(1, 20),
    seed=st.integers(0, 2**16),
    magnitude=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_gptq_weights_lie_on_their_grid_for_any_scheme(
    bits: int,
    symmetric: bool,
    strategy: str,
    actorder: str | None,
    rows: int,
    groups: int,
    block_size: int,
    seed: int,
    magnitude: float,
) -> None:
    group = 4 if strategy == "group" else None
    args = QuantizationArgs(num_bits=bits, symmetric=symmetric, strategy=strategy, group_size=group)
    columns = 4 * groups
    inputs = correlated_inputs(3 * columns, columns, seed, rank=2)
    accumulator = HessianAccumulator(columns)
    accumulator.update(inputs)
    weight = torch.randn(rows, columns, generator=generator(seed)) * magnitude
    result = gptq_quantize(
        weight, accumulator.hessian(), args, block_size=block_size, actorder=actorder
    )
    assert on_grid(result, args)


@pytest.mark.parametrize(
    "args", [sym(4), asym(4), sym(4, "group", 32), asym(4, "group", 32)], ids=lambda a: a.describe()
)
@pytest.mark.parametrize("actorder", ACTORDERS)
def test_gptq_beats_round_to_nearest_on_correlated_inputs(
    args: QuantizationArgs, actorder: str | None
) -> None:
    weight, hessian = layer(seed=20)
    gptq = gptq_quantize(weight, hessian, args, actorder=actorder, block_size=32)
    rounded, _, _ = round_to_nearest(weight, args)
    gptq_error = reconstruction_error(weight, gptq.weight, hessian)
    rounded_error = reconstruction_error(weight, rounded, hessian)
    # GPTQ (Frantar et al., 2022): far below round-to-nearest; here 20-300x
    assert gptq_error < 0.2 * rounded_error


def test_activation_order_helps_gptq_on_uneven_inputs() -> None:
    weight, hessian = layer(seed=21)
    plain = gptq_quantize(weight, hessian, asym(4, "group", 32))
    ordered = gptq_quantize(weight, hessian, asym(4, "group", 32), actorder="group")
    assert reconstruction_error(weight, ordered.weight, hessian) < reconstruction_error(
        weight, plain.weight, hessian
    )


@pytest.mark.parametrize("args", SCHEMES, ids=lambda a: a.describe())
@pytest.mark.parametrize("actorder", ACTORDERS)
def test_the_loss_is_half_the_output_error_on_the_dampened_hessian(
    args: QuantizationArgs, actorder: str | None
) -> None:
    weight, hessian = layer(rows=16, columns=64, seed=30)
    result = gptq_quantize(weight, hessian, args, actorder=actorder, block_size=16)
    expected = reconstruction_error(weight, result.weight, dampen(hessian, 0.01).hessian) / 2
    assert result.loss == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("args", SCHEMES, ids=lambda a: a.describe())
@pytest.mark.parametrize("actorder", ACTORDERS)
def test_gptq_agrees_with_the_plain_reference(args: QuantizationArgs, actorder: str | None) -> None:
    weight, hessian = layer(rows=16, columns=64, seed=40)
    fast = gptq_quantize(weight, hessian, args, actorder=actorder, block_size=16)
    plain = gptq_reference(weight, hessian, args, actorder=actorder)
    assert fast.loss == pytest.approx(plain.loss, rel=1e-4)
    torch.testing.assert_close(fast.weight, plain.weight, rtol=0, atol=1e-5)
    for mine, theirs in ((fast.g_idx, plain.g_idx), (fast.perm, plain.perm)):
        if mine is None or theirs is None:
            assert mine is None
            assert theirs is None
        else:
            assert torch.equal(mine, theirs)
    torch.testing.assert_close(fast.scale, plain.scale, rtol=1e-5, atol=0)


@pytest.mark.parametrize("block_size", [1, 7, 32, 1000])
def test_the_block_size_changes_only_rounding(block_size: int) -> None:
    weight, hessian = layer(rows=16, columns=96, seed=50)
    args = asym(4, "group", 32)
    reference = gptq_quantize(weight, hessian, args, block_size=96)
    result = gptq_quantize(weight, hessian, args, block_size=block_size)
    assert result.loss == pytest.approx(reference.loss, rel=1e-5)
    torch.testing.assert_close(result.weight, reference.weight, rtol=0, atol=1e-5)


def test_scales_have_the_export_shapes_and_types() -> None:
    weight, hessian = layer(rows=8, columns=64, seed=60)
    expected = {"tensor": (1,), "channel": (8, 1), "group": (8, 2)}
    for args in (sym(4, "tensor"), asym(4), asym(4, "group", 32)):
        result = gptq_quantize(weight, hessian, args)
        assert result.scale.shape == expected[args.strategy]
        assert result.zero_point.shape == expected[args.strategy]
        assert result.scale.dtype == torch.float32
        assert result.zero_point.dtype == torch.int32
        assert result.g_idx is None
        assert result.perm is None


def test_without_actorder_each_group_takes_its_range_when_it_is_reached() -> None:
    weight, hessian = layer(rows=8, columns=128, seed=61)
    args = asym(4, "group", 32)
    result = gptq_quantize(weight, hessian, args)
    original_scale, _ = weight_qparams(weight, args)
    original_scale = original_scale.view(8, 4)
    # the first group has no error pushed into it yet; the later ones do
    assert torch.equal(result.scale[:, 0], original_scale[:, 0])
    assert not torch.equal(result.scale[:, 1:], original_scale[:, 1:])


def test_static_actorder_fixes_the_original_groups_ranges_first() -> None:
    weight, hessian = layer(rows=8, columns=128, seed=62)
    args = asym(4, "group", 32)
    for name in ("static", "weight"):
        result = gptq_quantize(weight, hessian, args, actorder=name)
        scale, zero_point = weight_qparams(weight, args)
        assert torch.equal(result.scale, scale.view(8, 4))
        assert torch.equal(result.zero_point, zero_point.view(8, 4))
        assert result.g_idx is None
        assert result.perm is not None
        assert on_grid(result, args)


def test_group_actorder_forms_groups_in_processing_order() -> None:
    weight, hessian = layer(rows=8, columns=128, seed=63)
    args = sym(4, "group", 32)
    for name in ("group", "dynamic"):
        result = gptq_quantize(weight, hessian, args, actorder=name)
        assert result.perm is not None
        assert result.g_idx is not None
        assert torch.equal(result.perm, torch.argsort(hessian.diagonal(), descending=True))
        assert result.g_idx.dtype == torch.int32
        assert result.g_idx[result.perm].tolist() == [p // 32 for p in range(128)]
        assert not bool((result.g_idx[1:] >= result.g_idx[:-1]).all())  # not monotone
        assert torch.bincount(result.g_idx).tolist() == [32] * 4


def test_dead_inputs_get_zero_weights() -> None:
    inputs = correlated_inputs(256, 32, seed=70)
    inputs[:, [3, 17]] = 0.0
    accumulator = HessianAccumulator(32)
    accumulator.update(inputs)
    hessian = accumulator.hessian()
    weight = torch.randn(8, 32, generator=generator(71))
    for dampening in (0.0, 0.01):
        result = gptq_quantize(weight, hessian, asym(4), dampening_frac=dampening)
        assert not bool(result.weight[:, [3, 17]].any())
        assert on_grid(result, asym(4))
        pruned = sparsegpt_prune(weight, hessian, sparsity=0.25, dampening_frac=dampening)
        assert not bool(pruned.weight[:, [3, 17]].any())
        assert int((~pruned.mask).sum()) == 64


def test_a_mask_keeps_pruned_weights_at_zero_through_gptq() -> None:
    weight, hessian = layer(rows=16, columns=64, seed=80)
    pruned = sparsegpt_prune(weight, hessian, sparsity=0.5, mask_structure="2:4")
    for args in (asym(4), asym(4, "group", 16)):
        result = gptq_quantize(pruned.weight, hessian, args, mask=pruned.mask, actorder="group")
        assert not bool(result.weight[~pruned.mask].any())
        assert on_grid(result, args)


def test_gptq_keeps_the_weights_shape_and_dtype() -> None:
    inputs = correlated_inputs(200, 18, seed=90)
    accumulator = HessianAccumulator(18)
    accumulator.update(inputs)
    weight = torch.randn(4, 2, 3, 3, generator=generator(91))  # a convolution's
    result = gptq_quantize(weight.to(torch.bfloat16), accumulator.hessian(), sym(4, "group", 9))
    assert result.weight.shape == (4, 2, 3, 3)
    assert result.weight.dtype == torch.bfloat16
    assert result.scale.shape == (4, 2)
    pruned = sparsegpt_prune(weight, accumulator.hessian(), sparsity=0.5)
    assert pruned.mask.shape == weight.shape


def test_a_singular_hessian_without_dampening_names_the_fix() -> None:
    inputs = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # the second pivot is exactly 0
    accumulator = HessianAccumulator(3)
    accumulator.update(inputs)
    weight = torch.ones(2, 3)
    with pytest.raises(HessianNotPositiveDefiniteError) as caught:
        gptq_quantize(weight, accumulator.hessian(), asym(4), dampening_frac=0.0)
    assert str(caught.value) == (
        "the dampened Hessian is not positive definite (its Cholesky factorization in "
        "torch.float64 broke down at column 1 of 3, with dampening_frac=0): the calibration "
        "inputs span too few directions, or are numerically degenerate. To fix, raise "
        "dampening_frac (e.g. to 0.1), or calibrate on more, and more varied, samples."
    )
    # torch ships no type stub for LinAlgError
    assert isinstance(caught.value, torch.linalg.LinAlgError)  # type: ignore[attr-defined]
    assert isinstance(caught.value, CalibrationError)
    assert caught.value.column == 1
    with pytest.raises(HessianNotPositiveDefiniteError):
        sparsegpt_prune(weight, accumulator.hessian(), sparsity=0.5, dampening_frac=0.0)
    assert on_grid(gptq_quantize(weight, accumulator.hessian(), asym(4)), asym(4))


def test_a_non_finite_hessian_is_a_calibration_error() -> None:
    hessian = torch.eye(4)
    hessian[1, 2] = float("nan")
    with pytest.raises(CalibrationError, match="non-finite values") as caught:
        gptq_quantize(torch.ones(2, 4), hessian, asym(4))
    assert caught.value.problem == "not finite"


# --- SparseGPT ---------------------------------------------------------------------------


@pytest.mark.parametrize(("structure", "keep"), [("0:0", None), ("2:4", (2, 4))])
def test_sparsegpt_beats_magnitude_pruning_on_correlated_inputs(
    structure: str, keep: tuple[int, int] | None
) -> None:
    weight, hessian = layer(seed=100)
    result = sparsegpt_prune(weight, hessian, sparsity=0.5, mask_structure=structure)
    magnitude = unstructured_mask(weight, 0.5) if keep is None else nm_mask(weight, *keep, 0.5)
    sparse_error = reconstruction_error(weight, result.weight, hessian)
    magnitude_error = reconstruction_error(weight, weight * magnitude, hessian)
    # SparseGPT (Frantar & Alistarh, 2023): well below magnitude pruning; here 30-70x
    assert sparse_error < 0.2 * magnitude_error


@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.7, 0.99])
@pytest.mark.parametrize("block_size", [1, 10, 32, 500])
def test_unstructured_sparsity_is_exact(sparsity: float, block_size: int) -> None:
    weight, hessian = layer(rows=9, columns=70, seed=110)
    result = sparsegpt_prune(weight, hessian, sparsity=sparsity, block_size=block_size)
    assert result.mask.dtype == torch.bool
    assert int((~result.mask).sum()) == round(sparsity * weight.numel())
    assert not bool(result.weight[~result.mask].any())
    for start in range(0, 70, block_size):
        stop = min(start + block_size, 70)
        pruned = int((~result.mask[:, start:stop]).sum())
        assert abs(pruned - sparsity * 9 * (stop - start)) <= 1


@given(
    sparsity=st.floats(0.0, 0.99),
    block_size=st.integers(1, 40),
    rows=st.integers(1, 6),
    columns=st.integers(1, 30),
    seed=st.integers(0, 2**16),
)
def test_unstructured_sparsity_is_exact_for_any_shape(
    sparsity: float, block_size: int, rows: int, columns: int, seed: int
) -> None:
    accumulator = HessianAccumulator(columns)
    accumulator.update(correlated_inputs(2 * columns + 2, columns, seed, rank=2))
    weight = torch.randn(rows, columns, generator=generator(seed))
    result = sparsegpt_prune(
        weight, accumulator.hessian(), sparsity=sparsity, block_size=block_size
    )
    assert int((~result.mask).sum()) == round(sparsity * rows * columns)
    assert not bool(result.weight[~result.mask].any())


@pytest.mark.parametrize(("structure", "sparsity"), [("2:4", 0.5), ("1:4", 0.25), ("5:8", 0.625)])
@pytest.mark.parametrize("block_size", [6, 16, 128])
def test_the_n_m_pattern_holds_in_every_row_and_group(
    structure: str, sparsity: float, block_size: int
) -> None:
    weight, hessian = layer(rows=12, columns=64, seed=120)
    number, group = map(int, structure.split(":"))
    result = sparsegpt_prune(
        weight, hessian, sparsity=sparsity, mask_structure=structure, block_size=block_size
    )
    pruned_per_group = (~result.mask).reshape(12, 64 // group, group).sum(dim=2)
    assert bool((pruned_per_group == number).all())
    assert not bool(result.weight[~result.mask].any())


def test_the_n_m_choice_does_not_depend_on_the_block_size() -> None:
    weight, hessian = layer(rows=12, columns=64, seed=121)
    masks = [
        sparsegpt_prune(weight, hessian, sparsity=0.5, mask_structure="2:4", block_size=size).mask
        for size in (6, 64)
    ]
    assert torch.equal(masks[0], masks[1])


@pytest.mark.parametrize("structure", ["0:0", "2:4"])
def test_the_pruning_loss_is_half_the_output_error_on_the_dampened_hessian(
    structure: str,
) -> None:
    weight, hessian = layer(rows=16, columns=64, seed=130)
    result = sparsegpt_prune(weight, hessian, sparsity=0.5, mask_structure=structure)
    expected = reconstruction_error(weight, result.weight, dampen(hessian, 0.01).hessian) / 2
    assert result.loss == pytest.approx(expected, rel=1e-4)


def test_zero_sparsity_prunes_nothing() -> None:
    weight, hessian = layer(rows=4, columns=16, seed=140)
    result = sparsegpt_prune(weight, hessian, sparsity=0.0)
    assert bool(result.mask.all())
    assert torch.equal(result.weight, weight)
    assert result.loss == 0.0


# --- invalid arguments -------------------------------------------------------------------

SPARSE = {"sparsity": 0.5}


@pytest.mark.parametrize(
    ("call", "kwargs", "field", "message"),
    [
        (
            "gptq",
            {"block_size": 0},
            "block_size",
            "gptq_quantize.block_size must be >= 1, got 0. To fix, pass a whole number >= 1.",
        ),
        ("gptq", {"block_size": 2.5}, "block_size", None),
        ("gptq", {"block_size": True}, "block_size", None),
        (
            "gptq",
            {"dampening_frac": -0.01},
            "dampening_frac",
            "gptq_quantize.dampening_frac must be a finite number >= 0.0, got -0.01. To fix, "
            "pass a fraction of the mean Hessian diagonal >= 0, e.g. 0.01.",
        ),
        ("gptq", {"dampening_frac": float("nan")}, "dampening_frac", None),
        ("gptq", {"dampening_frac": "0.01"}, "dampening_frac", None),
        (
            "gptq",
            {"actorder": "sideways"},
            "actorder",
            "gptq_quantize.actorder must be None, 'static', 'weight', 'group' or 'dynamic', got "
            "'sideways'. To fix, pass one of those.",
        ),
        ("gptq", {"actorder": True}, "actorder", None),
        ("gptq", {"mask": torch.ones(3, 3, dtype=torch.bool)}, "mask", None),
        ("gptq", {"mask": torch.ones(4, 8)}, "mask", None),
        (
            "sparse",
            {"sparsity": 1.0},
            "sparsity",
            "sparsegpt_prune.sparsity must be in [0.0, 1.0), got 1.0. To fix, pass the fraction "
            "of weights to prune, e.g. 0.5.",
        ),
        ("sparse", {"sparsity": -0.1}, "sparsity", None),
        ("sparse", {"sparsity": float("inf")}, "sparsity", None),
        ("sparse", {"sparsity": None}, "sparsity", None),
        (
            "sparse",
            {**SPARSE, "mask_structure": "3:2"},
            "mask_structure",
            "sparsegpt_prune.mask_structure '3:2' is not '0:0' (unstructured) or 'N:M' with "
            "0 < N < M (N pruned of every M inputs). To fix, write e.g. '0:0' or '2:4'.",
        ),
        ("sparse", {**SPARSE, "mask_structure": "a:b"}, "mask_structure", None),
        ("sparse", {**SPARSE, "mask_structure": "0:4"}, "mask_structure", None),
        ("sparse", {**SPARSE, "mask_structure": "2:4:8"}, "mask_structure", None),
        ("sparse", {**SPARSE, "mask_structure": 24}, "mask_structure", None),
        (
            "sparse",
            {"sparsity": 0.75, "mask_structure": "1:4"},
            "sparsity",
            "sparsegpt_prune: mask_structure '1:4' prunes 1 of every 4 weights (sparsity 0.25), "
            "but sparsity=0.75. To fix, pass sparsity=0.25, or mask_structure='0:0' for "
            "unstructured pruning.",
        ),
        ("sparse", {**SPARSE, "mask_structure": "3:6"}, "mask_structure", None),
        ("sparse", {**SPARSE, "block_size": -3}, "block_size", None),
        ("sparse", {**SPARSE, "dampening_frac": -1}, "dampening_frac", None),
    ],
)
def test_invalid_arguments_are_refused_with_the_fix(
    call: str, kwargs: dict[str, Any], field: str, message: str | None
) -> None:
    weight, hessian = torch.ones(4, 8), torch.eye(8)

    def run() -> object:
        if call == "gptq":
            return gptq_quantize(weight, hessian, sym(4), **kwargs)
        return sparsegpt_prune(weight, hessian, **kwargs)

    with pytest.raises(ConfigError) as caught:
        run()
    assert caught.value.field == field
    assert "To fix," in str(caught.value)
    if message is not None:
        assert str(caught.value) == message


@pytest.mark.parametrize(
    ("weight", "hessian", "args", "field"),
    [
        (torch.ones(8), torch.eye(8), sym(4), "weight"),
        (torch.ones(4, 8, dtype=torch.int32), torch.eye(8), sym(4), "weight"),
        (torch.full((4, 8), float("nan")), torch.eye(8), sym(4), "weight"),
        (torch.ones(4, 8), torch.eye(7), sym(4), "hessian"),
        (torch.ones(4, 8), "eye", sym(4), "hessian"),
        (torch.ones(4, 8), torch.eye(8), sym(4, "group", 3), "group_size"),
        (torch.ones(4, 8), torch.eye(8), {"num_bits": 4}, "args"),
        (torch.ones(4, 8), torch.eye(8), attrs.evolve(sym(4), strategy="token"), "args"),
    ],
)
def test_a_bad_weight_hessian_or_scheme_is_refused(
    weight: Any, hessian: Any, args: Any, field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        gptq_quantize(weight, hessian, args)
    assert caught.value.field == field
    assert "To fix," in str(caught.value)


def test_mask_structures_read_as_llm_compressor_reads_them() -> None:
    assert parse_mask_structure("0:0") is None
    assert parse_mask_structure("unstructured") is None
    assert parse_mask_structure("2:4") == (2, 4)
    assert parse_mask_structure("1:4") == (1, 4)  # one pruned of every four
