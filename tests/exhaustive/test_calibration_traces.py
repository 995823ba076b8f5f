"""Every trace up to a fixed length on the calibration lifecycle of llm-compressor 0.13+.

The engine running ``CALIBRATION_LIFECYCLE`` is walked side by side with the
independent flag models of ``specs/reference.py`` (``CalibrationReferenceModifier``:
the reference as 0.14 writes it; ``CalibrationSpecModifier``: with modfsm's
deviations) and with ``transitions``' own dispatch of the same table, over an
alphabet that adds the three calibration events to the first table's.
"""

from __future__ import annotations

import itertools

import pytest

from modfsm.engine import CALIBRATION_LIFECYCLE, LIFECYCLE, EventType
from specs.reference import CalibrationReferenceModifier, CalibrationSpecModifier, ReferenceModifier
from tests.doubles import CalibrationRecordingModifier
from tests.exhaustive.sides import (
    ABSTRACT,
    DriverSide,
    EngineSide,
    ModelSide,
    Side,
    call_letter,
    update_letter,
    walk,
)
from tests.exhaustive.test_traces import CONCRETE, ENDS, STARTS, WITH_GATES, prefixes

CALIBRATION = [
    update_letter(EventType.CALIBRATION_START),
    update_letter(EventType.SEQUENTIAL_EPOCH_END),
    update_letter(EventType.CALIBRATION_END),
]
ABSTRACT_CALIBRATION = [*ABSTRACT, *CALIBRATION]
WITH_GATES_CALIBRATION = [*WITH_GATES, *CALIBRATION]


def engine() -> EngineSide:
    return EngineSide(kind=CalibrationRecordingModifier)


def test_every_abstract_trace_up_to_5_matches_the_reference_of_0_13() -> None:
    sides: list[Side] = [
        engine(),
        ModelSide(CalibrationReferenceModifier()),
        ModelSide(CalibrationSpecModifier()),
    ]
    letters = ABSTRACT_CALIBRATION
    assert walk(sides, letters, depth=5) == prefixes(len(letters), 5)


def test_every_trace_with_gate_results_up_to_4_matches_the_specification() -> None:
    sides: list[Side] = [engine(), ModelSide(CalibrationSpecModifier())]
    letters = WITH_GATES_CALIBRATION
    assert walk(sides, letters, depth=4) == prefixes(len(letters), 4)


def test_every_trace_up_to_4_matches_transitions_dispatch_of_the_same_table() -> None:
    sides: list[Side] = [engine(), DriverSide(declaration=CALIBRATION_LIFECYCLE)]
    letters = WITH_GATES_CALIBRATION
    assert walk(sides, letters, depth=4) == prefixes(len(letters), 4)


@pytest.mark.parametrize(("start", "end"), list(itertools.product(STARTS, ENDS)))
def test_every_concrete_trace_up_to_3_matches_the_reference_of_0_13(
    start: float | None, end: float | None
) -> None:
    sides: list[Side] = [
        EngineSide(start, end, kind=CalibrationRecordingModifier),
        ModelSide(CalibrationReferenceModifier(start, end)),
    ]
    letters = [*CONCRETE, *CALIBRATION]
    assert walk(sides, letters, depth=3) == prefixes(len(letters), 3)


def test_the_two_tables_differ_exactly_on_the_calibration_events() -> None:
    # the first table follows 0.6.0-0.12: a calibration event is an ordinary event
    with pytest.raises(AssertionError, match="CALIBRATION_EPOCH_START"):
        walk([engine(), ModelSide(ReferenceModifier())], ABSTRACT_CALIBRATION, depth=3)
    without = [EngineSide(kind=CalibrationRecordingModifier), EngineSide()]
    assert walk(without, WITH_GATES, depth=4) == prefixes(len(WITH_GATES), 4)
    assert set(CALIBRATION_LIFECYCLE.state_names()) == set(LIFECYCLE.state_names())
    assert call_letter("initialize").call == ("initialize", None)
