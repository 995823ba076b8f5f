"""What a modifier sees of the training run: model, optimizer, data, hardware, loggers.

The session owns one :class:`State` and passes it to every lifecycle call.
Modifiers read and write its fields (a pruning modifier reads ``state.model``).
"""

from __future__ import annotations

import logging
from typing import Any, TypeAlias

import attrs

from modfsm.engine.model.events import Event, EventType, trusted_event

__all__ = ["Data", "Hardware", "LoggerManager", "State", "SystemLogger"]


@attrs.define
class Data:
    """The data sets of the run; any iterable (a ``DataLoader``, a list) or ``None``."""

    train: Any = None
    val: Any = None
    test: Any = None
    calib: Any = None


@attrs.define
class Hardware:
    """Where the run executes (filled by the session; ``None`` where unknown)."""

    device: str | None = None
    devices: list[str] | None = None
    rank: int | None = None
    world_size: int | None = None
    local_rank: int | None = None
    local_world_size: int | None = None
    distributed: bool | None = None
    distributed_strategy: str | None = None


@attrs.define
class SystemLogger:
    """Tagged log lines on a stdlib :mod:`logging` logger (``modfsm.system`` by default).

    >>> SystemLogger().info(tag="stage", string="Modifiers initialized")
    """

    logger: logging.Logger = attrs.field(factory=lambda: logging.getLogger("modfsm.system"))

    def log(self, level: int, *, tag: str, string: str) -> None:
        """Log ``string`` under ``tag`` at ``level``."""
        self.logger.log(level, "[%s] %s", tag, string)

    def debug(self, *, tag: str, string: str) -> None:
        """Log at DEBUG."""
        self.log(logging.DEBUG, tag=tag, string=string)

    def info(self, *, tag: str, string: str) -> None:
        """Log at INFO."""
        self.log(logging.INFO, tag=tag, string=string)

    def warning(self, *, tag: str, string: str) -> None:
        """Log at WARNING."""
        self.log(logging.WARNING, tag=tag, string=string)

    def error(self, *, tag: str, string: str) -> None:
        """Log at ERROR."""
        self.log(logging.ERROR, tag=tag, string=string)


@attrs.define
class LoggerManager:
    """The loggers a :class:`State` carries; ``state.loggers.system.info(tag=..., string=...)``."""

    system: SystemLogger = attrs.field(factory=SystemLogger)


_Deferred: TypeAlias = tuple[EventType, int | None, int | None, int, int]
"""The arguments of :func:`~modfsm.engine.model.events.trusted_event` for an event not built yet."""


def _built(value: Event | _Deferred | None) -> Event | None:
    return trusted_event(*value) if type(value) is tuple else value  # type: ignore[return-value]


@attrs.define
class State:
    """The mutable context shared by the session and its modifiers.

    Attributes:
        model: the model being trained or compressed (a ``torch.nn.Module``).
        teacher_model: an optional teacher for distillation.
        optimizer: the optimizer, if training.
        optim_wrapped: whether the session wrapped ``optimizer.step``.
        loss: the latest loss reported by the loop.
        batch_data: the latest batch reported by the loop.
        data: the run's data sets.
        hardware: where the run executes.
        loggers: where modifiers log.
        start_event: the event the run started at.
        last_event: the latest event of the loop (the session sets it for every
            event, whether or not a modifier receives it).
    """

    model: Any = None
    teacher_model: Any = None
    optimizer: Any = None
    optim_wrapped: bool | None = None
    loss: Any = None
    batch_data: Any = None
    data: Data = attrs.field(factory=Data)
    hardware: Hardware = attrs.field(factory=Hardware)
    loggers: LoggerManager = attrs.field(factory=LoggerManager)
    start_event: Event | None = None
    _last_event: Event | _Deferred | None = attrs.field(
        default=None, alias="last_event", eq=_built, repr=lambda value: repr(_built(value))
    )

    @property
    def last_event(self) -> Event | None:
        """The latest event (see the class docstring); built on first read if deferred."""
        value = self._last_event
        if type(value) is tuple:
            value = self._last_event = trusted_event(*value)
        return value  # type: ignore[return-value]  # a tuple was replaced above

    @last_event.setter
    def last_event(self, value: Event | None) -> None:
        self._last_event = value

    def defer_last_event(
        self,
        type_: EventType,
        steps_per_epoch: int | None,
        batches_per_step: int | None,
        global_step: int,
        global_batch: int,
    ) -> None:
        """Set :attr:`last_event` to this event, built only if something reads it.

        For the session's loop events that no modifier receives: building an
        :class:`Event` costs more than the rest of such an event. Equality and
        ``repr`` see the built event.
        """
        self._last_event = (type_, steps_per_epoch, batches_per_step, global_step, global_batch)
