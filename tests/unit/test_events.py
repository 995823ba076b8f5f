"""Events: types, counters, epoch arithmetic, exact update intervals."""

from __future__ import annotations

from fractions import Fraction

import attrs
import pytest

from modfsm.engine import ConfigError, ConfigTypeError, Event, EventType
from modfsm.engine.model.events import simplest_fraction

REFERENCE_ORDER = [
    "INITIALIZE",
    "FINALIZE",
    "BATCH_START",
    "LOSS_CALCULATED",
    "BATCH_END",
    "CALIBRATION_EPOCH_START",
    "SEQUENTIAL_EPOCH_END",
    "CALIBRATION_EPOCH_END",
    "OPTIM_PRE_STEP",
    "OPTIM_POST_STEP",
]


def test_event_types_follow_the_reference_order_with_lowercase_values() -> None:
    assert [member.name for member in EventType] == REFERENCE_ORDER
    assert all(member.value == member.name.lower() for member in EventType)
    assert EventType("batch_end") is EventType.BATCH_END


def test_event_accepts_the_type_by_name() -> None:
    assert Event("loss_calculated").type_ is EventType.LOSS_CALCULATED
    assert Event("BATCH_END").type_ is EventType.BATCH_END


def test_unknown_event_type_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"'batch_begin' is not an event type.*batch_start"):
        Event("batch_begin")


def test_event_type_of_wrong_kind_is_a_type_error() -> None:
    with pytest.raises(ConfigTypeError, match=r"Event.type_ must be an EventType"):
        Event(3)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("global_step", -1, r"Event.global_step must be >= 0, got -1"),
        ("global_batch", -2, r"Event.global_batch must be >= 0"),
        ("steps_per_epoch", 0, r"Event.steps_per_epoch must be >= 1"),
        ("batches_per_step", 0, r"Event.batches_per_step must be >= 1"),
        ("invocations_per_step", 0, r"Event.invocations_per_step must be >= 1"),
    ],
)
def test_event_counters_out_of_range_are_rejected(field: str, value: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Event(EventType.BATCH_START, **{field: value})


@pytest.mark.parametrize("value", [1.5, "3", True])
def test_event_counters_must_be_ints(value: object) -> None:
    with pytest.raises(ConfigTypeError, match=r"Event.global_step must be an int"):
        Event(EventType.BATCH_START, global_step=value)  # type: ignore[arg-type]  # on purpose


def test_events_are_frozen() -> None:
    event = Event(EventType.BATCH_START, global_step=3)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.global_step = 4  # type: ignore[misc]  # assigning a frozen field on purpose


def test_current_index_is_the_step_without_epochs_and_fractional_epochs_with() -> None:
    assert Event(EventType.BATCH_START, global_step=7).current_index == 7
    assert Event(EventType.BATCH_START, global_step=7, steps_per_epoch=4).current_index == 1.75


def test_epoch_fields_follow_the_step_and_batch_counters() -> None:
    event = Event(
        EventType.BATCH_END, global_step=11, global_batch=45, steps_per_epoch=4, batches_per_step=4
    )
    assert event.epoch_based
    assert (event.epoch, event.epoch_full, event.epoch_step) == (2, 2.75, 3)
    assert event.epoch_batch == 45 % 16


def test_epoch_batch_without_accumulation_counts_one_batch_per_step() -> None:
    assert Event(EventType.BATCH_END, global_batch=9, steps_per_epoch=4).epoch_batch == 1


@pytest.mark.parametrize("name", ["epoch", "epoch_full", "epoch_step", "epoch_batch"])
def test_epoch_fields_need_steps_per_epoch(name: str) -> None:
    event = Event(EventType.BATCH_START, global_step=3)
    assert not event.epoch_based
    with pytest.raises(ConfigError, match=rf"Event.{name} needs steps_per_epoch"):
        getattr(event, name)


def test_new_instance_applies_changes_and_keeps_the_original() -> None:
    event = Event(EventType.BATCH_START, global_step=3, steps_per_epoch=10)
    moved = event.new_instance(type_=EventType.BATCH_END, global_step=4)
    assert (moved.type_, moved.global_step, moved.steps_per_epoch) == (EventType.BATCH_END, 4, 10)
    assert (event.type_, event.global_step) == (EventType.BATCH_START, 3)


def test_new_instance_rejects_unknown_fields_and_bad_values() -> None:
    event = Event(EventType.BATCH_START)
    with pytest.raises(ConfigTypeError, match=r"unknown field\(s\) \['globalstep'\]"):
        event.new_instance(globalstep=3)
    with pytest.raises(ConfigError, match=r"global_step must be >= 0"):
        event.new_instance(global_step=-1)


def test_should_update_is_inclusive_at_both_bounds() -> None:
    def at(step: int) -> Event:
        return Event(EventType.BATCH_START, global_step=step)

    assert [at(s).should_update(start=2, end=4) for s in range(6)] == [
        False, False, True, True, True, False,
    ]  # fmt: skip


@pytest.mark.parametrize("update", [None, 0, 0.0])
def test_should_update_without_an_interval_is_every_event(update: float | None) -> None:
    assert all(Event(EventType.BATCH_START, global_step=s).should_update(update=update)
               for s in range(5))  # fmt: skip


def test_should_update_counts_multiples_of_the_interval_from_zero() -> None:
    steps = [s for s in range(10) if Event(EventType.BATCH_START, global_step=s).should_update(
        start=1, update=3)]  # fmt: skip
    assert steps == [3, 6, 9]


def test_should_update_is_exact_where_float_modulo_is_not() -> None:
    # The reference's test `index % update < 1e-10` says 0.3 epochs is not a
    # multiple of 0.1 epochs, because 0.3 % 0.1 == 0.09999999999999998.
    assert not (0.3 % 0.1 < 1e-10)
    event = Event(EventType.BATCH_START, global_step=3, steps_per_epoch=10)
    assert event.current_index == 0.3
    assert event.should_update(update=0.1)
    assert not Event(EventType.BATCH_START, global_step=3, steps_per_epoch=20).should_update(
        update=0.1
    )


def test_should_update_with_thirds_of_an_epoch() -> None:
    hits = [s for s in range(10) if Event(EventType.BATCH_START, global_step=s,
            steps_per_epoch=3).should_update(update=1 / 3)]  # fmt: skip
    assert hits == list(range(10))
    hits = [s for s in range(10) if Event(EventType.BATCH_START, global_step=s,
            steps_per_epoch=6).should_update(update=1 / 3)]  # fmt: skip
    assert hits == [0, 2, 4, 6, 8]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.1, Fraction(1, 10)),
        (0.3, Fraction(3, 10)),
        (1 / 3, Fraction(1, 3)),
        (0.125, Fraction(1, 8)),
        (2.5, Fraction(5, 2)),
        (-0.2, Fraction(-1, 5)),
        (7, Fraction(7)),
        (7.0, Fraction(7)),
        (1e-10, Fraction(1, 10**10)),
    ],
)
def test_simplest_fraction_reads_the_number_its_author_meant(
    value: float, expected: Fraction
) -> None:
    assert simplest_fraction(value) == expected
    assert float(simplest_fraction(value)) == value


def test_simplest_fraction_rejects_non_finite_values() -> None:
    with pytest.raises(ConfigError, match="non-finite"):
        simplest_fraction(float("inf"))
