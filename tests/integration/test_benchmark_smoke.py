"""The dispatch benchmark runs and reports every figure (values are not asserted here)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from benchmarks import compression, distributed, session_overhead
from benchmarks.dispatch import main


def test_quick_benchmark_reports_all_phases(tmp_path: Path) -> None:
    target = tmp_path / "figures.json"
    assert main(["--quick", "--json", str(target)]) == 0
    figures = json.loads(target.read_text(encoding="utf-8"))
    assert [(p["kind"], p["phase"]) for p in figures["phases"]] == [
        (kind, phase) for kind in ("hooked", "undecorated", "no-op")
        for phase in ("waiting", "active", "ended")
    ]  # fmt: skip
    for phase in figures["phases"]:
        assert phase["baseline_ns"] > 0
        assert phase["modfsm_ns"] > 0
        assert phase["ratio_q1"] <= phase["ratio_median"] <= phase["ratio_q3"]
    assert figures["memory"]["modfsm_bytes"] > 0
    assert figures["construction"]["compile_us"] > 0


def test_quick_session_overhead_reports_every_model(tmp_path: Path) -> None:
    target = tmp_path / "overhead.json"
    assert session_overhead.main(["--quick", "--json", str(target)]) == 0
    rows = json.loads(target.read_text(encoding="utf-8"))
    assert [(row["modifiers"], row["model"]) for row in rows] == [
        (kind, model) for kind in ("no-op", "on_update") for model in session_overhead.MODELS
    ]
    for row in rows:
        assert row["torch_step_us"] > 0
        assert row["engine_us"] > 0
        assert row["overhead"] == row["engine_us"] / row["torch_step_us"]
        low, high = row["floor_ci_us"]
        assert low <= row["floor_us"] <= high
        assert row["floor_overhead"] == row["floor_us"] / row["torch_step_us"]


def test_session_overhead_measures_only_the_models_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "overhead.json"
    assert session_overhead.main(["--quick", "--model", "784-512", "--json", str(target)]) == 0
    rows = json.loads(target.read_text(encoding="utf-8"))
    assert [row["model"] for row in rows] == ["small 784-512-512-10, batch 128"] * 2
    assert session_overhead.chosen_models(["tiny", "1024"]) == [
        "tiny 64-128-10, batch 32",
        "small 784-1024-1024-10, batch 128",
    ]
    assert session_overhead.chosen_models(None) == list(session_overhead.MODELS)


def test_session_overhead_refuses_a_model_it_does_not_have(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        session_overhead.main(["--quick", "--model", "resnet"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "--model ['resnet'] matches none of the models" in error
    assert "To fix, give part of one of those names" in error


def test_the_minimal_loop_of_the_floor_checks_the_order_and_counts() -> None:
    loop = session_overhead.MinimalLoop()
    for call in ("batch_start", "loss_calculated", "optim_pre_step", "optim_post_step"):
        getattr(loop, call)()
    loop.batch_end()
    assert (loop.step, loop.batch, loop.position) == (1, 1, "idle")
    with pytest.raises(RuntimeError, match="out of order"):
        loop.batch_end()
    assert (loop.step, loop.batch, loop.position) == (1, 1, "idle")


def test_quick_compression_benchmark_reports_every_phase_with_identical_weights(
    tmp_path: Path,
) -> None:
    target = tmp_path / "compression.json"
    assert compression.main(["--quick", "--json", str(target)]) == 0
    figures = json.loads(target.read_text(encoding="utf-8"))
    assert figures["weights_identical"] is True  # measure() raises otherwise
    assert [p["phase"] for p in figures["phases"]] == list(compression.PHASES)
    assert figures["modfsm_steps_per_s"] > 0
    assert figures["hand_steps_per_s"] > 0


def _variant(digests: list[str]) -> Callable[[int, int, list[float]], str]:
    """A stand-in training run: the next of ``digests`` (the last one repeats)."""
    calls = iter(digests)

    def run(steps: int, seed: int, clock: list[float]) -> str:
        clock[:] = [1.0] * len(clock)
        return next(calls, digests[-1])

    return run


@pytest.mark.parametrize(
    ("modfsm", "hand", "reruns"),
    [
        (["a"], ["a"], 0),
        (["b", "a"], ["a"], 1),  # one mismatch: the round runs again and agrees
        (["a", "a", "b", "a"], ["a"], 1),  # the last round disagrees once
    ],
)
def test_a_round_whose_weights_differ_is_run_again_once(
    monkeypatch: pytest.MonkeyPatch, modfsm: list[str], hand: list[str], reruns: int
) -> None:
    monkeypatch.setattr(compression, "run_modfsm", _variant(modfsm))
    monkeypatch.setattr(compression, "run_by_hand", _variant(hand))
    assert compression.measure(steps=4, rounds=3)["reruns"] == reruns


@pytest.mark.parametrize(
    ("modfsm", "hand"),
    [
        (["b"], ["a"]),  # the engine changes the arithmetic: every round differs
        (["b", "b"], ["a"]),  # twice in the same round
        (["a", "c"], ["a", "c"]),  # round 1 agrees with itself, not with round 0
    ],
)
def test_weights_that_differ_twice_in_a_round_fail_the_benchmark(
    monkeypatch: pytest.MonkeyPatch, modfsm: list[str], hand: list[str]
) -> None:
    monkeypatch.setattr(compression, "run_modfsm", _variant(modfsm))
    monkeypatch.setattr(compression, "run_by_hand", _variant(hand))
    with pytest.raises(AssertionError, match="different weights in round"):
        compression.measure(steps=4, rounds=3)


@pytest.mark.distributed
def test_quick_distributed_benchmark_reports_the_agreement_cost(tmp_path: Path) -> None:
    target = tmp_path / "distributed.json"
    assert distributed.main(["--quick", "--json", str(target)]) == 0
    figures = json.loads(target.read_text(encoding="utf-8"))
    assert [report["rank"] for report in figures["ranks"]] == [0, 1]
    assert figures["step_us"] > 0
    assert figures["agreement_us"] > 0
    assert figures["amortized"]["100"] == figures["agreement_us"] / 100 / figures["step_us"]


def test_the_anchor_says_how_to_install_llm_compressor_when_it_is_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import importlib.util

    from benchmarks import llmc_anchor

    if importlib.util.find_spec("llmcompressor") is not None:
        pytest.skip("llmcompressor is installed here: the anchor would run")
    assert llmc_anchor.main(["--repeats", "1", "--steps", "1"]) == 2
    assert "make bench-llmc" in capsys.readouterr().err


def test_quick_one_shot_benchmark_reports_every_method_and_layer(tmp_path: Path) -> None:
    from benchmarks import oneshot

    target = tmp_path / "oneshot.json"
    assert oneshot.main(["--quick", "--json", str(target), "--cache-dir", str(tmp_path)]) == 0
    figures = json.loads(target.read_text(encoding="utf-8"))
    assert set(figures["quality"]) >= {
        "float", "gptq_w4a16_g128", "rtn_w4a16_g128", "gptq_w4_channel", "rtn_w4_channel",
        "sparsegpt_50", "magnitude_50", "sparsegpt_2of4", "magnitude_2of4",
    }  # fmt: skip
    assert figures["quality"]["sparsegpt_2of4_sparsity"] == 0.5
    assert all(row["modfsm_s"] > 0 and row["plain_s"] > 0 for row in figures["cost"])
