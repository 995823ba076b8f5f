"""Exact schedule arithmetic: simplest_fraction and Event.should_update."""

from __future__ import annotations

import math
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from modfsm.engine import Event, EventType
from modfsm.engine.model.events import simplest_fraction

finite = st.floats(allow_nan=False, allow_infinity=False)


@given(finite)
def test_simplest_fraction_rounds_back_to_the_same_float(value: float) -> None:
    assert float(simplest_fraction(value)) == value


@given(finite)
def test_no_fraction_with_a_smaller_denominator_rounds_to_the_float(value: float) -> None:
    found = simplest_fraction(value)
    if found.denominator <= 1 or found.denominator > 10**4:
        return  # integers are trivially simplest; large denominators take too long to scan
    for denominator in range(1, found.denominator):
        near = math.floor(value * denominator)
        for numerator in (near - 1, near, near + 1, near + 2):
            assert float(Fraction(numerator, denominator)) != value


@given(st.integers(-(10**6), 10**6), st.integers(1, 1000))
def test_simplest_fraction_recovers_small_fractions(numerator: int, denominator: int) -> None:
    assert simplest_fraction(numerator / denominator) == Fraction(numerator, denominator)


@given(st.integers(-(10**9), 10**9), st.integers(0, 6))
def test_simplest_fraction_recovers_short_decimals(digits: int, places: int) -> None:
    text = f"{digits / 10**places:.{places}f}"
    assert simplest_fraction(float(text)) == Fraction(text)


@given(
    step=st.integers(0, 500),
    steps_per_epoch=st.one_of(st.none(), st.integers(1, 50)),
    numerator=st.integers(1, 20),
    denominator=st.integers(1, 20),
)
def test_should_update_is_the_exact_multiple_rule(
    step: int, steps_per_epoch: int | None, numerator: int, denominator: int
) -> None:
    update = numerator / denominator
    index = Fraction(step, steps_per_epoch or 1)
    expected = (index / Fraction(numerator, denominator)).denominator == 1
    event = Event(EventType.BATCH_START, global_step=step, steps_per_epoch=steps_per_epoch)
    assert event.should_update(update=update) is expected


@given(step=st.integers(0, 50), start=st.integers(0, 50), end=st.integers(0, 50))
def test_should_update_respects_the_closed_window(step: int, start: int, end: int) -> None:
    event = Event(EventType.BATCH_START, global_step=step)
    assert event.should_update(start=start, end=end) is (start <= step <= end)
    assert math.isclose(event.current_index, step)
