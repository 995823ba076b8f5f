"""modfsm.modifiers.pruning.masks: the cubic schedule and exact masks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from modfsm.engine import ConfigError
from modfsm.modifiers.pruning.masks import (
    cubic_sparsity,
    global_masks,
    nm_mask,
    parse_structure,
    unstructured_mask,
)


def test_the_cubic_schedule_runs_from_initial_to_final() -> None:
    assert cubic_sparsity(10, 10, 20, 0.1, 0.9) == pytest.approx(0.1)
    assert cubic_sparsity(20, 10, 20, 0.1, 0.9) == pytest.approx(0.9)
    # Zhu & Gupta: s_f + (s_i - s_f)(1 - p)^3 at p = 0.5
    assert cubic_sparsity(15, 10, 20, 0.1, 0.9) == pytest.approx(0.9 - 0.8 * 0.125)
    assert cubic_sparsity(5, 10, 20, 0.1, 0.9) == pytest.approx(0.1)  # clamped before start
    assert cubic_sparsity(25, 10, 20, 0.1, 0.9) == pytest.approx(0.9)  # and after end


def test_without_an_end_the_schedule_is_final_at_once() -> None:
    assert cubic_sparsity(0, 0, None, 0.1, 0.7) == 0.7


@given(st.floats(0, 1), st.floats(0, 1), st.floats(0, 0.95), st.floats(0, 0.95))
def test_the_schedule_never_decreases(a: float, b: float, lo: float, hi: float) -> None:
    initial, final = min(lo, hi), max(lo, hi)
    first, second = sorted((a, b))
    assert (
        cubic_sparsity(first, 0, 1, initial, final)
        <= cubic_sparsity(second, 0, 1, initial, final) + 1e-12
    )


@given(st.integers(1, 40), st.integers(1, 40), st.floats(0, 0.99), st.integers(0, 2**16))
def test_an_unstructured_mask_prunes_exactly_round_sparsity_times_size(
    rows: int, cols: int, sparsity: float, seed: int
) -> None:
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    mask = unstructured_mask(weight, sparsity)
    assert int((~mask).sum()) == round(sparsity * weight.numel())
    if (~mask).any() and mask.any():  # the pruned are the smallest
        assert weight.abs()[~mask].max() <= weight.abs()[mask].min()


def test_ties_are_broken_by_position() -> None:
    weight = torch.ones(2, 2)
    assert unstructured_mask(weight, 0.5).tolist() == [[False, False], [True, True]]


def test_masks_only_grow_when_pruned_weights_stay_zero() -> None:
    weight = torch.randn(16, 16, generator=torch.Generator().manual_seed(3))
    previous = torch.ones_like(weight, dtype=torch.bool)
    for sparsity in (0.1, 0.3, 0.5, 0.7):
        mask = unstructured_mask(weight * previous, sparsity)
        assert not (mask & ~previous).any()
        previous = mask


@pytest.mark.parametrize(("keep", "group"), [(2, 4), (1, 4), (4, 8), (1, 2)])
def test_an_nm_mask_keeps_exactly_n_of_every_m(keep: int, group: int) -> None:
    weight = torch.randn(6, 4 * group, generator=torch.Generator().manual_seed(1))
    mask = nm_mask(weight, keep, group, (group - keep) / group)
    per_group = mask.reshape(6, -1, group).sum(dim=-1)
    assert bool((per_group == keep).all())
    # within each group, every pruned weight is no larger than every kept one
    magnitude = weight.abs().reshape(6, -1, group)
    grouped = mask.reshape(6, -1, group)
    smallest_kept = magnitude.masked_fill(~grouped, float("inf")).min(dim=-1).values
    largest_pruned = magnitude.masked_fill(grouped, -1.0).max(dim=-1).values
    assert bool((largest_pruned <= smallest_kept).all())


def test_an_nm_mask_needs_inputs_divisible_by_m() -> None:
    with pytest.raises(ConfigError, match="multiple of 4; this layer has 6"):
        nm_mask(torch.randn(3, 6), 2, 4, 0.5)


def test_a_global_mask_prunes_the_smallest_across_layers() -> None:
    weights = {"a": torch.tensor([[1.0, 2.0]]), "b": torch.tensor([[0.5, 3.0, 0.1]])}
    masks = global_masks(weights, 0.6)
    assert masks["a"].tolist() == [[False, True]]
    assert masks["b"].tolist() == [[False, True, False]]


@pytest.mark.parametrize("text", ["2:2", "0:4", "4:2", "2-4", "dense", ""])
def test_structures_other_than_unstructured_or_n_m_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match="not 'unstructured' or 'N:M'"):
        parse_structure(text)


def test_structures_are_parsed() -> None:
    assert parse_structure("unstructured") is None
    assert parse_structure("2:4") == (2, 4)
