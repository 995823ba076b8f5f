"""Lockstep across real ranks: two and three processes on CPU with gloo.

Each test spawns its ranks (tests/distributed/harness.py), bounded by a deadline,
and reads back what every rank saw. See specs/distributed.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.distributed.harness import run_ranks

pytestmark = pytest.mark.distributed


def errors(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    assert [r["outcome"] for r in results] == ["error"] * len(results), results
    return [r["error"] for r in results]


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_run_a_pruning_recipe_in_lockstep_and_agree_every_k_steps(
    world: int, tmp_path: Path
) -> None:
    results = run_ranks("lockstep", world, tmp_path, ddp=True)
    assert [r["outcome"] for r in results] == ["ok"] * world, results
    for rank, result in enumerate(results):
        hardware = result["hardware"]
        assert (hardware["rank"], hardware["world_size"]) == (rank, world)
        assert hardware["distributed"] is True
        assert hardware["distributed_strategy"] == "ddp"
        assert result["state_model_is_underlying"] is True
        assert result["states"] == {"default_stage.0": "finalized_ended"}
        assert result["sparsity"] == [0.5, 0.5]
    # DDP keeps the weights equal, and the masks were applied identically on every rank.
    assert len({r["digest"] for r in results}) == 1
    expected = [
        "initialize",
        "initialize of stage 'default_stage'",
        *(f"the end of batch {s} (step {s})" for s in (2, 4, 6, 8, 10)),
        "finalize of stage 'default_stage'",
    ]
    assert all(r["agreements"] == expected for r in results)


def test_a_modifier_that_decides_alone_is_caught_on_every_rank(tmp_path: Path) -> None:
    found = errors(run_ranks("diverge", 3, tmp_path))
    for rank, error in enumerate(found):
        assert error["type"] == "RankDivergenceError"
        assert error["rank"] == rank
        assert error["where"] == "the end of batch 4 (step 4)"
        assert error["ranks"] == [1]
        assert error["differences"] == [
            "modifier default_stage.0 (RankDecider): "
            "'initialized' on ranks 0, 2, 'started' on rank 1"
        ]
        assert error["message"].startswith(
            f"rank {rank}: the ranks are out of lockstep at the end of batch 4 (step 4): "
            "rank 1 differs from rank 0 (modifier default_stage.0"
        )


def test_ranks_that_built_different_recipes_are_stopped_at_initialize(tmp_path: Path) -> None:
    found = errors(run_ranks("other_recipe", 2, tmp_path))
    for error in found:
        assert error["type"] == "RankDivergenceError"
        assert error["where"] == "initialize"
        assert error["ranks"] == [1]
        (difference,) = error["differences"]
        assert difference.startswith("arguments of default_stage.0: ")
        assert "'final_sparsity': 0.5" in difference
        assert "'final_sparsity': 0.75" in difference


@pytest.mark.parametrize(("world", "failing_rank"), [(2, 1), (3, 0)])
def test_one_rank_failing_in_initialize_makes_every_rank_raise_and_a_retry_works(
    world: int, failing_rank: int, tmp_path: Path
) -> None:
    results = run_ranks("fail_initialize", world, tmp_path, failing_rank=failing_rank)
    message = f"ValueError: disk full on rank {failing_rank} during initialize"
    for rank, result in enumerate(results):
        assert result["outcome"] == "ok", result
        first = result["first"]
        # A RankFailureError, not a CollectiveError: nobody waited out the timeout.
        assert first["type"] == "RankFailureError"
        assert first["failures"] == {str(failing_rank): message}
        assert first["where"] == "initialize of stage 'default_stage'"
        assert first["cause"] == ("ValueError" if rank == failing_rank else None)
        assert f"failed on rank {failing_rank} of {world}" in first["message"]
        assert result["first_position"] == "created"  # the failed initialize changed nothing
        # Pruning started at step 2 (3 steps ran); FailsOn has no window.
        assert result["states"] == {
            "default_stage.0": "finalized_started",
            "default_stage.1": "finalized_initialized",
        }


def test_one_rank_failing_in_finalize_makes_every_rank_raise_and_a_retry_works(
    tmp_path: Path,
) -> None:
    results = run_ranks("fail_finalize", 2, tmp_path)
    for result in results:
        assert result["outcome"] == "ok", result
        assert result["first"]["type"] == "RankFailureError"
        assert result["first"]["failures"] == {
            "0": "ValueError: disk full on rank 0 during finalize"
        }
        assert result["first_position"] == "idle"
        assert result["position"] == "finalized"
        assert result["states"] == {"default_stage.0": "finalized_initialized"}


def test_a_rank_that_dies_makes_the_others_raise_instead_of_hanging(tmp_path: Path) -> None:
    results = run_ranks("crash", 3, tmp_path)
    assert results[2]["outcome"] == "crashed"
    for rank in (0, 1):
        error = results[rank]["error"]
        assert error["type"] == "CollectiveError"
        assert error["where"] == "the end of batch 4 (step 4)"
        assert error["message"].startswith(
            f"rank {rank}: the agreement at the end of batch 4 (step 4) did not complete "
            "within 60 s: "
        )


def test_a_state_saved_on_rank_0_resumes_every_rank_to_the_same_weights(tmp_path: Path) -> None:
    results = run_ranks("resume", 2, tmp_path, steps=9, save_at=3)
    assert [r["outcome"] for r in results] == ["ok", "ok"], results
    for result in results:
        assert result["resumed"] == result["straight"]
        assert result["states"] == {"default_stage.0": "finalized_ended"}
        assert result["agreements"] == [
            "initialize",
            "resume",
            *(f"the end of batch {s} (step {s})" for s in (4, 6, 8)),
            "finalize of stage 'default_stage'",
        ]
    assert results[0]["resumed"] == results[1]["resumed"]


def test_ranks_resuming_from_different_checkpoints_are_stopped(tmp_path: Path) -> None:
    for error in errors(run_ranks("resume_other", 2, tmp_path)):
        assert error["type"] == "RankDivergenceError"
        assert error["where"] == "resume"
        assert error["ranks"] == [1]
        assert "global_step: 2 on rank 0, 4 on rank 1" in error["differences"]
