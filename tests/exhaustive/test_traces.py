"""Every trace up to a fixed length, over alphabets that cover each guard region.

*Abstract* letters force the guards (``should_start``/``should_end`` True or
False), so every guard region of every cell is reachable from every state the
prefix leads to. *Concrete* letters use real events against a grid of
schedules, so the real ``should_start``/``should_end`` are exercised: indices
before the start, inside the window, at the end and after it.
"""

from __future__ import annotations

import itertools

import pytest

from modfsm.engine import EventType
from specs.reference import ReferenceModifier, SpecModifier
from tests.exhaustive.sides import (
    ABSTRACT,
    DriverSide,
    EngineSide,
    Letter,
    ModelSide,
    Side,
    call_letter,
    update_letter,
    walk,
)

BS, BE, LOSS = EventType.BATCH_START, EventType.BATCH_END, EventType.LOSS_CALCULATED

#: the abstract alphabet plus gate hooks returning False or a forgotten None.
WITH_GATES = [
    *ABSTRACT,
    call_letter("initialize", {"should_start": True}, on_initialize=False),
    call_letter("initialize", {"should_start": True}, on_initialize=None),
    call_letter("finalize", on_finalize=False),
    call_letter("finalize", on_finalize=None),
]


def prefixes(letters: int, depth: int) -> int:
    return sum(letters**k for k in range(1, depth + 1))


def test_every_abstract_trace_up_to_6_matches_the_reference() -> None:
    sides: list[Side] = [EngineSide(), ModelSide(ReferenceModifier()), ModelSide(SpecModifier())]
    assert walk(sides, ABSTRACT, depth=6) == prefixes(len(ABSTRACT), 6)


def test_every_trace_with_gate_results_up_to_5_matches_the_specification() -> None:
    sides: list[Side] = [EngineSide(), ModelSide(SpecModifier())]
    assert walk(sides, WITH_GATES, depth=5) == prefixes(len(WITH_GATES), 5)


def test_every_abstract_trace_up_to_4_matches_transitions_dispatch() -> None:
    sides: list[Side] = [EngineSide(), DriverSide()]
    assert walk(sides, WITH_GATES, depth=4) == prefixes(len(WITH_GATES), 4)


STARTS = [None, -1, 0, 1, 2.5]
ENDS = [None, 0, 1, 3]
CONCRETE = [
    call_letter("initialize"),
    call_letter("finalize"),
    *(update_letter(t, step) for t in (BS, BE) for step in (0, 1, 2, 3)),
    update_letter(LOSS, 1),
]


@pytest.mark.parametrize(("start", "end"), list(itertools.product(STARTS, ENDS)))
def test_every_concrete_trace_up_to_4_matches_the_reference(
    start: float | None, end: float | None
) -> None:
    sides: list[Side] = [EngineSide(start, end), ModelSide(ReferenceModifier(start, end))]
    assert walk(sides, CONCRETE, depth=4) == prefixes(len(CONCRETE), 4)


def test_walk_reports_the_first_diverging_trace() -> None:
    class Liar(ModelSide):
        def apply(self, letter: Letter):  # type: ignore[no-untyped-def]  # test double
            outcome = super().apply(letter)
            if letter.call[0] == "finalize" and outcome.error is None:
                return outcome._replace(error="illegal")
            return outcome

    with pytest.raises(AssertionError, match=r"after initialize\[should_start=True\] -> finalize"):
        walk([EngineSide(), Liar(ReferenceModifier())], ABSTRACT, depth=2)
