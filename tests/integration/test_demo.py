"""The demo: a real torch loop where the modifiers' windows show in the numbers."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from modfsm.engine.app.demo import run_demo

WARMUP, FREEZE = "warmup [0, 4)", "freeze layer 0 [6, 9)"


class DemoRun(NamedTuple):
    rows: list[dict[str, Any]]
    out: Path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    out = tmp_path_factory.mktemp("demo")
    return DemoRun(run_demo(steps=12, seed=0, out=out, stream=io.StringIO()), out)


def by_step(run: DemoRun) -> dict[str, dict[str, Any]]:
    return {row["step"]: row for row in run.rows}


def test_each_modifier_opens_and_closes_its_window_at_the_declared_steps(
    run: DemoRun,
) -> None:
    table = by_step(run)
    assert table["init"][WARMUP] == ("on_initialize, on_start", "started")
    assert table["init"][FREEZE] == ("on_initialize", "initialized")
    assert table["3"][WARMUP] == ("on_update x4, on_end, on_update", "ended")
    assert table["6"][FREEZE] == ("on_start, on_update x5", "started")
    assert table["8"][FREEZE] == ("on_update x4, on_end, on_update", "ended")
    assert table["final"][WARMUP] == ("on_finalize", "finalized_ended")


def test_the_frozen_layer_does_not_move_inside_the_window_and_moves_outside(
    run: DemoRun,
) -> None:
    table = by_step(run)
    moved = {int(step): row["moved"] for step, row in table.items() if step.isdigit()}
    assert [s for s, m in moved.items() if m == 0.0] == [6, 7, 8]


def test_warmup_ramps_the_learning_rate_then_holds_it(run: DemoRun) -> None:
    table = by_step(run)
    rates = [table[str(s)]["lr"] for s in range(6)]
    assert rates == pytest.approx([0.125, 0.25, 0.375, 0.5, 0.5, 0.5])


def test_the_demo_writes_the_lifecycle_diagram(run: DemoRun) -> None:
    text = (run.out / "lifecycle.mmd").read_text(encoding="utf-8")
    assert "stateDiagram-v2" in text
    assert "initialized --> started: batch_start [should_start]" in text


def test_the_demo_is_deterministic_for_a_seed() -> None:
    first = run_demo(steps=3, seed=7, stream=io.StringIO())
    second = run_demo(steps=3, seed=7, stream=io.StringIO())
    assert first == second
    assert run_demo(steps=3, seed=8, stream=io.StringIO()) != first
