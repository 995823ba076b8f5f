"""Training-loop events and the step arithmetic modifiers schedule against.

Where each event fires in a training loop::

    session.initialize(...)                    # EventType.INITIALIZE
    for epoch in range(epochs):
        for batch in loader:
            session.batch_start(batch)         # EventType.BATCH_START
            loss = loss_fn(model(batch))
            session.loss_calculated(loss)      # EventType.LOSS_CALCULATED
            loss.backward()
            session.optim_pre_step()           # EventType.OPTIM_PRE_STEP
            optimizer.step()
            session.optim_post_step()          # EventType.OPTIM_POST_STEP
            session.batch_end()                # EventType.BATCH_END
    session.finalize()                         # EventType.FINALIZE

    # one-shot calibration instead of training:
    session.event(EventType.CALIBRATION_EPOCH_START)
    ...                                        # forward passes over calibration data
    session.event(EventType.SEQUENTIAL_EPOCH_END)   # after each sequential layer group
    session.event(EventType.CALIBRATION_EPOCH_END)

Schedules are read against :attr:`Event.current_index`: the optimizer step
count, or a float number of epochs when ``steps_per_epoch`` is set.
"""

from __future__ import annotations

import enum
import functools
import math
from fractions import Fraction
from typing import Any

import attrs

from modfsm.engine.kernel.errors import ConfigError, ConfigTypeError
from modfsm.engine.kernel.validate import check_int, check_optional_int

__all__ = [
    "TRAINING_STEP_EVENTS",
    "Event",
    "EventType",
    "not_an_event",
    "simplest_fraction",
    "to_event_type",
]


class EventType(enum.StrEnum):
    """The events of a training or calibration loop, in the reference's order.

    Each member's value is its lower-cased name, so ``EventType("batch_end")``
    and YAML/JSON round trips work on the plain string.

    llm-compressor 0.13 renamed the calibration epoch's events
    ``CALIBRATION_START`` and ``CALIBRATION_END``: here those names are aliases of
    ``CALIBRATION_EPOCH_START`` and ``CALIBRATION_EPOCH_END`` (the same members,
    so ``EventType.CALIBRATION_START is EventType.CALIBRATION_EPOCH_START``), and
    the values ``"calibration_start"``/``"calibration_end"`` are read as them.
    """

    INITIALIZE = "initialize"
    FINALIZE = "finalize"
    BATCH_START = "batch_start"
    LOSS_CALCULATED = "loss_calculated"
    BATCH_END = "batch_end"
    CALIBRATION_EPOCH_START = "calibration_epoch_start"
    SEQUENTIAL_EPOCH_END = "sequential_epoch_end"
    CALIBRATION_EPOCH_END = "calibration_epoch_end"
    OPTIM_PRE_STEP = "optim_pre_step"
    OPTIM_POST_STEP = "optim_post_step"
    # the names of llm-compressor 0.13+ (aliases: the same members)
    CALIBRATION_START = "calibration_epoch_start"
    CALIBRATION_END = "calibration_epoch_end"

    @classmethod
    def _missing_(cls, value: object) -> EventType | None:
        """The values of the 0.13+ names, ``calibration_start`` and ``calibration_end``."""
        return _RENAMED.get(str(value)) if isinstance(value, str) else None


_RENAMED: dict[str, EventType] = {
    "calibration_start": EventType.CALIBRATION_EPOCH_START,
    "calibration_end": EventType.CALIBRATION_EPOCH_END,
}


TRAINING_STEP_EVENTS = (
    EventType.BATCH_START,
    EventType.LOSS_CALCULATED,
    EventType.OPTIM_PRE_STEP,
    EventType.OPTIM_POST_STEP,
    EventType.BATCH_END,
)
"""The events of one training step, in the order the loop fires them."""


def to_event_type(value: Any) -> EventType:
    """``value`` as an :class:`EventType` (a member, or its name in any case), or a clear error."""
    if type(value) is EventType:
        return value
    if isinstance(value, str):
        try:
            return EventType(value.lower())
        except ValueError:
            pass
        known = ", ".join(member.value for member in EventType)
        raise ConfigError(
            f"Event.type_ {value!r} is not an event type. Known types: {known}. "
            "To fix, pass an EventType member or one of those names.",
            owner="Event",
            field="type_",
            value=value,
        )
    raise ConfigTypeError(
        f"Event.type_ must be an EventType, got {value!r} ({type(value).__name__}). "
        "To fix, pass e.g. EventType.BATCH_START.",
        owner="Event",
        field="type_",
        value=value,
    )


# Validators return at once for the common valid values (events are built on every
# loop call) and leave the message to the shared checks in modfsm.engine.kernel.validate.


def _positive_optional_int(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or (type(value) is int and value >= 1):
        return
    check_optional_int("Event", attribute.name, value, minimum=1)


def _positive_int(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is int and value >= 1:
        return
    check_int("Event", attribute.name, value, minimum=1)


def _counter(_: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is int and value >= 0:
        return
    check_int("Event", attribute.name, value, minimum=0)


@functools.lru_cache(maxsize=1024)
def simplest_fraction(value: float) -> Fraction:
    """The fraction with the smallest denominator that rounds to ``value``.

    This reads a float schedule value as the number its author meant:
    ``0.1`` is 1/10, ``0.3`` is 3/10, ``1/3`` is 1/3, ``0.125`` is 1/8, while
    the float itself is only the nearest binary fraction. Ints are exact.

    >>> simplest_fraction(0.1), simplest_fraction(1 / 3), simplest_fraction(4)
    (Fraction(1, 10), Fraction(1, 3), Fraction(4, 1))
    """
    if isinstance(value, int):
        return Fraction(value)
    if not math.isfinite(value):
        raise ConfigError(
            f"cannot read the non-finite number {value!r} as a schedule value. "
            "To fix, use a finite number.",
            owner="schedule",
            field="value",
            value=value,
        )
    if value < 0:
        return -simplest_fraction(-value)
    if value.is_integer():
        return Fraction(int(value))
    half_ulp = Fraction(math.ulp(value)) / 2
    exact = Fraction(value)
    # Every number strictly inside (exact - half_ulp, exact + half_ulp) rounds to value.
    return _simplest_between(exact - half_ulp, exact + half_ulp)


def _simplest_between(low: Fraction, high: Fraction) -> Fraction:
    """Smallest-denominator fraction strictly between ``0 <= low < high``."""
    whole = math.floor(low)
    if whole + 1 < high:
        return Fraction(whole + 1)
    # No integer inside, so (low, high) lies within [whole, whole + 1]: continue
    # with the continued-fraction expansion of the remainders.
    if low == whole:
        return whole + Fraction(1, math.floor(1 / (high - whole)) + 1)
    return whole + 1 / _simplest_between(1 / (high - whole), 1 / (low - whole))


@attrs.frozen(slots=True)
class Event:
    """One event of the training loop, with the step counters at that moment.

    Attributes:
        type_: what happened.
        steps_per_epoch: optimizer steps in an epoch; set it to schedule in epochs.
        batches_per_step: batches per optimizer step (gradient accumulation).
        invocations_per_step: how many times the loop calls per step (kept for
            compatibility with the reference; modfsm does not use it).
        global_step: optimizer steps taken so far.
        global_batch: batches seen so far.
    """

    type_: EventType = attrs.field(converter=to_event_type)
    steps_per_epoch: int | None = attrs.field(default=None, validator=_positive_optional_int)
    batches_per_step: int | None = attrs.field(default=None, validator=_positive_optional_int)
    invocations_per_step: int = attrs.field(default=1, validator=_positive_int)
    global_step: int = attrs.field(default=0, validator=_counter)
    global_batch: int = attrs.field(default=0, validator=_counter)

    @property
    def epoch_based(self) -> bool:
        """True when schedules are read in epochs (``steps_per_epoch`` is set)."""
        return self.steps_per_epoch is not None

    @property
    def current_index(self) -> int | float:
        """The schedule position: ``global_step``, or epochs as a float when epoch-based."""
        steps_per_epoch = self.steps_per_epoch
        if steps_per_epoch is None:
            return self.global_step
        return self.global_step / steps_per_epoch

    def _epoch_size(self, what: str) -> int:
        if self.steps_per_epoch is None:
            raise ConfigError(
                f"Event.{what} needs steps_per_epoch, which is None for this event. "
                "To fix, build the event with steps_per_epoch=<optimizer steps per epoch>.",
                owner="Event",
                field="steps_per_epoch",
                value=None,
            )
        return self.steps_per_epoch

    @property
    def epoch(self) -> int:
        """The whole epochs completed (``global_step // steps_per_epoch``)."""
        return self.global_step // self._epoch_size("epoch")

    @property
    def epoch_full(self) -> float:
        """Epochs as a float (``global_step / steps_per_epoch``)."""
        return self.global_step / self._epoch_size("epoch_full")

    @property
    def epoch_step(self) -> int:
        """The optimizer step within the current epoch."""
        return self.global_step % self._epoch_size("epoch_step")

    @property
    def epoch_batch(self) -> int:
        """The batch within the current epoch."""
        per_epoch = self._epoch_size("epoch_batch") * (self.batches_per_step or 1)
        return self.global_batch % per_epoch

    def should_update(
        self,
        start: float | None = None,
        end: float | None = None,
        update: float | None = None,
    ) -> bool:
        """Whether a modifier with this window and update interval updates now.

        True when ``start <= current_index <= end`` (a ``None`` bound is open) and
        ``current_index`` is a whole multiple of ``update`` (``None`` or ``<= 0``:
        every event). The multiple test is exact: float values are read with
        :func:`simplest_fraction` and the index as the fraction
        ``global_step / steps_per_epoch``, so 0.3 epochs is a multiple of 0.1.
        """
        current = self.current_index
        if start is not None and current < start:
            return False
        if end is not None and current > end:
            return False
        if update is None or update <= 0:
            return True
        steps_per_epoch = self.steps_per_epoch
        if steps_per_epoch is None and isinstance(update, int):
            return self.global_step % update == 0
        index = Fraction(self.global_step, steps_per_epoch or 1)
        return index % simplest_fraction(update) == 0

    def new_instance(self, **changes: Any) -> Event:
        """A copy of this event with ``changes`` applied (validated like the constructor)."""
        known = {a.name for a in attrs.fields(Event)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigTypeError(
                f"Event.new_instance got unknown field(s) {unknown}; Event fields are "
                f"{sorted(known)}. To fix, pass only those names.",
                owner="Event",
                field=unknown[0],
                value=changes[unknown[0]],
            )
        return attrs.evolve(self, **changes)


def not_an_event(owner: Any, event: Any) -> ConfigTypeError:
    """The error for ``owner.update_event`` given something that is not an :class:`Event`."""
    label = getattr(owner, "lifecycle_label", type(owner).__name__)
    known = ", ".join(member.name for member in EventType)
    return ConfigTypeError(
        f"{label}.update_event needs an Event with an EventType type_, got {event!r}. "
        f"Known types: {known}. To fix, pass e.g. Event(EventType.BATCH_START, global_step=...).",
        owner=type(owner).__name__,
        field="event",
        value=event,
    )


_SLOTS = {name: Event.__dict__[name].__set__ for name in (a.name for a in attrs.fields(Event))}
_SET_TYPE, _SET_SPE, _SET_BPS, _SET_IPS, _SET_STEP, _SET_BATCH = (
    _SLOTS["type_"],
    _SLOTS["steps_per_epoch"],
    _SLOTS["batches_per_step"],
    _SLOTS["invocations_per_step"],
    _SLOTS["global_step"],
    _SLOTS["global_batch"],
)


def trusted_event(
    type_: EventType,
    steps_per_epoch: int | None,
    batches_per_step: int | None,
    global_step: int,
    global_batch: int,
) -> Event:
    """An :class:`Event` built without validation, for callers whose values are valid by
    construction (the session's own counters). Everyone else: use ``Event(...)``."""
    event: Event = object.__new__(Event)
    _SET_TYPE(event, type_)
    _SET_SPE(event, steps_per_epoch)
    _SET_BPS(event, batches_per_step)
    _SET_IPS(event, 1)
    _SET_STEP(event, global_step)
    _SET_BATCH(event, global_batch)
    return event
