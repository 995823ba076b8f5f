"""Recipe timelines: windows and update points, states read from a trace, the PNG."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from modfsm.engine.config.factory import ModifierFactory
from modfsm.engine.config.recipe import Recipe
from modfsm.engine.loop.session import Session
from modfsm.engine.tools.diagrams import (
    DiagramError,
    StateSpan,
    Window,
    axis_end,
    draw_timeline,
    state_spans,
    windows,
)
from modfsm.engine.tools.replay import read_jsonl
from tests.diagram_support import png_size
from tests.recipes.doubles import DOUBLES

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "engine" / "app" / "data" / "default_recipe.yaml"
EPOCHS = ROOT / "tests" / "recipes" / "good" / "epoch_schedule.yaml"


def default_windows() -> tuple[Window, ...]:
    return windows(Recipe.load(DEFAULT))


def test_each_modifier_of_the_recipe_is_a_window_with_its_session_id() -> None:
    assert default_windows() == (
        Window("sparsity_stage.0", "sparsity_stage", "MagnitudePruningModifier", 150, 350, 10),
        Window("quantization_stage.0", "quantization_stage", "QuantizationModifier", 450, None,
               None),
    )  # fmt: skip


def test_update_points_are_the_multiples_of_update_inside_the_window() -> None:
    pruning, quantization = default_windows()
    assert pruning.update_points(600) == tuple(float(s) for s in range(150, 351, 10))
    assert pruning.update_points(200) == tuple(float(s) for s in range(150, 201, 10))
    assert quantization.update_points(600) == ()
    open_ended = Window("s.0", "s", "M", 3, None, 4)
    assert open_ended.update_points(17) == (4.0, 8.0, 12.0, 16.0)
    one_shot = Window("s.0", "s", "M", -1, 5, 2)
    assert one_shot.update_points(10) == (0.0, 2.0, 4.0)
    assert Window("s.0", "s", "M", None, 5, 2).update_points(10) == ()


def test_update_points_in_epochs_are_exact_multiples() -> None:
    (window,) = windows(Recipe.load(EPOCHS))
    assert (window.start, window.end, window.update) == (0.5, 2.25, 0.1)
    points = window.update_points(3.0)
    assert len(points) == 18  # 0.5, 0.6, ..., 2.2
    assert [Fraction(p).limit_denominator(100) for p in points] == [
        Fraction(n, 10) for n in range(5, 23)
    ]


def test_the_axis_ends_at_steps_else_the_trace_else_past_the_largest_bound() -> None:
    found = default_windows()
    assert axis_end(found, (), None) == 563.0  # ceil(450 * 1.25)
    assert axis_end(found, (), 1000) == 1000.0
    span = StateSpan("s.0", "M", "started", 0.0, 42.0)
    assert axis_end(found, (span,), None) == 42.0
    assert axis_end(windows(Recipe.load(EPOCHS)), (), None) == pytest.approx(2.8125)
    assert axis_end((Window("s.0", "s", "M", None, None, None),), (), None) == 10.0


def header(step: int = 0, per_epoch: int | None = None, **states: str) -> dict[str, Any]:
    return {
        "kind": "header",
        "steps_per_epoch": per_epoch,
        "counters": {"global_step": step},
        "modifiers": [{"id": m, "type": "M", "state": s} for m, s in states.items()],
    }


def moved(step: int, modifier: str, to: str) -> dict[str, Any]:
    return {"kind": "transition", "step": step, "modifier": modifier, "to": to}


def test_states_last_from_one_transition_to_the_next() -> None:
    records = [
        header(a="created", b="created"),
        moved(0, "a", "initialized"),
        moved(0, "b", "started"),
        moved(3, "a", "started"),
        moved(4, "a", "started"),  # an update: same state, merged
        {"kind": "call", "step": 6},
        moved(6, "a", "ended"),
        {"kind": "call", "step": 9},
        moved(9, "a", "finalized_ended"),
        moved(9, "b", "finalized_started"),
    ]
    assert state_spans(records) == (
        StateSpan("a", "M", "initialized", 0, 3),
        StateSpan("a", "M", "started", 3, 6),
        StateSpan("a", "M", "ended", 6, 9),
        StateSpan("a", "M", "finalized_ended", 9, 9),
        StateSpan("b", "M", "started", 0, 9),
        StateSpan("b", "M", "finalized_started", 9, 9),
    )


def test_a_resumed_segment_continues_the_state_and_epochs_divide_the_step() -> None:
    records = [
        header(per_epoch=4, a="initialized"),
        moved(2, "a", "started"),
        {"kind": "call", "step": 6},
        header(6, per_epoch=4, a="started"),
        moved(10, "a", "ended"),
    ]
    assert state_spans(records) == (
        StateSpan("a", "M", "initialized", 0, 0.5),
        StateSpan("a", "M", "started", 0.5, 2.5),
        StateSpan("a", "M", "ended", 2.5, 2.5),
    )


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "does not start with a header"),
        ([{"kind": "call", "step": 0}], "does not start with a header"),
        ([header(a="created"), {"kind": "transition", "step": 1, "to": "x"}], "no 'modifier'"),
        ([{"kind": "header", "modifiers": []}], "has no 'counters'"),
    ],
)
def test_a_trace_that_is_not_from_modfsm_is_refused(
    records: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(DiagramError, match=message):
        state_spans(records)


@pytest.fixture(scope="module")
def default_trace(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """A session over the default recipe's schedule (inert doubles of its modifiers)."""
    path = tmp_path_factory.mktemp("trace") / "run.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModifierFactory, "_registered_registry", {})
        for cls in DOUBLES:
            ModifierFactory.register(cls.__name__, cls)
        session = Session()
        session.initialize(recipe=Recipe.load(DEFAULT), trace=path)
        for _ in range(500):
            session.batch_start()
            session.optim_pre_step()
            session.optim_post_step()
            session.batch_end()
        session.finalize()
    return read_jsonl(path)


def test_the_trace_of_a_run_gives_each_modifier_its_states(
    default_trace: list[dict[str, Any]],
) -> None:
    assert [(s.modifier, s.state, s.start, s.end) for s in state_spans(default_trace)] == [
        ("sparsity_stage.0", "initialized", 0, 150),
        ("sparsity_stage.0", "started", 150, 350),
        ("sparsity_stage.0", "ended", 350, 500),
        ("sparsity_stage.0", "finalized_ended", 500, 500),
        ("quantization_stage.0", "initialized", 0, 450),
        ("quantization_stage.0", "started", 450, 500),
        ("quantization_stage.0", "finalized_started", 500, 500),
    ]


def test_the_timeline_is_a_stable_png_without_software_metadata() -> None:
    recipe = Recipe.load(DEFAULT)
    png = draw_timeline(recipe)
    assert draw_timeline(recipe) == png
    width, height = png_size(png)
    assert (width, height) == (1100, 320)
    assert len(png) > 10_000
    assert b"Software" not in png
    assert b"matplotlib" not in png


def test_with_a_trace_the_timeline_adds_a_panel_of_states(
    default_trace: list[dict[str, Any]],
) -> None:
    recipe = Recipe.load(DEFAULT)
    png = draw_timeline(recipe, trace=default_trace)
    assert draw_timeline(recipe, trace=default_trace) == png
    assert png != draw_timeline(recipe, trace=default_trace, steps=600)
    _, alone = png_size(draw_timeline(recipe))
    width, height = png_size(png)
    assert width == 1100
    assert height > alone + 100


def test_the_timeline_of_an_epoch_recipe_draws() -> None:
    png = draw_timeline(Recipe.load(EPOCHS), name="epochs")
    assert png_size(png)[0] == 1100


def test_a_recipe_that_does_not_build_is_refused_before_drawing() -> None:
    recipe = Recipe.load("s_stage:\n  m_modifiers:\n    NoSuchModifier: {start: 1}\n")
    with pytest.raises(ValueError, match="NoSuchModifier"):
        draw_timeline(recipe)


def test_a_trace_of_this_recipe_matches_and_of_another_says_the_first_difference(
    default_trace: list[dict[str, Any]],
) -> None:
    from modfsm.engine.tools.diagrams import trace_mismatch

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModifierFactory, "_registered_registry", {})
        for cls in DOUBLES:
            ModifierFactory.register(cls.__name__, cls)
        recipe = Recipe.load(DEFAULT)
        assert trace_mismatch(recipe, default_trace) is None
        moved = Recipe.load(DEFAULT.read_text().replace("start: 150", "start: 120"))
        assert trace_mismatch(moved, default_trace) == (
            "modifier sparsity_stage.0 has start=150 in the trace, 120 in the recipe"
        )
        modifiers = "    ConstantPruningModifier: {start: 1, targets: __ALL__}\n"
        other = Recipe.load("other_stage:\n  pruning_modifiers:\n" + modifiers)
        assert trace_mismatch(other, default_trace) == (
            "the trace has no modifier other_stage.0 (ConstantPruningModifier)"
        )


def test_a_recipe_given_as_text_is_titled_by_its_stages() -> None:
    from modfsm.engine.tools.diagrams import recipe_title

    assert recipe_title(Recipe.load(DEFAULT)) == "default_recipe.yaml"
    text = "a_stage:\n  m_modifiers:\n    ConstantPruningModifier: {start: 1, targets: __ALL__}\n"
    assert recipe_title(Recipe.load(text)) == "a recipe given as text (stages a_stage)"
