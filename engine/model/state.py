"""What a modifier sees of the training run: model, optimizer, data, hardware, loggers.

The session owns one :class:`State` and passes it to every lifecycle call.
Modifiers read and write its fields (a pruning modifier reads ``state.model``).
"""

from __future__ import annotations

import logging
from typing import Any

import attrs

from modfsm.engine.model.events import Event

__all__ = ["Data", "Hardware", "LoggerManager", "ModifiedState", "State", "SystemLogger"]


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
        modifier_data: what the modifiers returned for the latest event (see
            :class:`ModifiedState`); the session starts a new list for each event. Not
            an argument of ``State()`` (whose arguments are the reference's).
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
    last_event: Event | None = None
    modifier_data: list[Any] = attrs.field(factory=list, init=False)  # not the reference's


@attrs.define
class ModifiedState:
    """What a session call returns: the model, optimizer and loss as the modifiers left
    them (the reference's ``ModifiedState``).

    A modifier that changes the loss (distillation, a regularizer) replaces
    ``state.loss`` in its hook; the loop then trains on the returned ``loss``::

        loss = session.loss_calculated(loss).loss
        loss.backward()

    Attributes:
        model: ``state.model`` after the call.
        optimizer: ``state.optimizer`` after the call.
        loss: ``state.loss`` after the call (the loss given, unless a modifier replaced it).
        modifier_data: the values, other than ``None``, that modifiers overriding
            ``update_event`` returned for this event, in order (empty for every other
            modifier, as in the reference, whose base ``update_event`` returns nothing).
    """

    model: Any = None
    optimizer: Any = None
    loss: Any = None
    modifier_data: list[Any] = attrs.field(factory=list)
