"""Errors of :mod:`modfsm.engine.tools.diagrams`; each says what to do instead."""

from __future__ import annotations

from modfsm.engine.kernel.errors import LifecycleError

__all__ = ["DiagramError", "GraphvizNotFoundError", "UnknownTargetError"]


class DiagramError(LifecycleError, ValueError):
    """A diagram that cannot be drawn as asked (a bad format, target or option)."""


class UnknownTargetError(DiagramError):
    """The diagram target names no declared machine and no known modifier class.

    Attributes:
        target: the name asked for.
        machines: the machine targets (``lifecycle``, ``stage``, ``session``).
        modifiers: the known modifier class names.
    """

    def __init__(
        self, message: str, *, target: str, machines: tuple[str, ...], modifiers: tuple[str, ...]
    ) -> None:
        super().__init__(message)
        self.target = target
        self.machines = machines
        self.modifiers = modifiers


class GraphvizNotFoundError(LifecycleError, FileNotFoundError):
    """Graphviz (the ``dot`` program, or the Python package ``graphviz``) is not installed.

    Attributes:
        format: the output format that needs it.
    """

    def __init__(self, message: str, *, format: str) -> None:
        super().__init__(message)
        self.format = format
