"""The registry of declared machines: every machine the engine declares, by name.

Tools that work on "a declared machine" (``modfsm verify``, ``modfsm diagram``,
the Promela export) look machines up here, so a new declaration is added to
this one mapping and every tool sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from modfsm.engine.kernel.declaration import Declaration
from modfsm.engine.model.calibration_lifecycle import CALIBRATION_LIFECYCLE
from modfsm.engine.model.lifecycle import LIFECYCLE
from modfsm.engine.model.session_grammar import SESSION_GRAMMAR
from modfsm.engine.model.stage_lifecycle import STAGE_LIFECYCLE

__all__ = ["DECLARED_MACHINES", "declared_machine"]

DECLARED_MACHINES: Final[Mapping[str, Declaration]] = MappingProxyType(
    {
        "lifecycle": LIFECYCLE,
        "calibration": CALIBRATION_LIFECYCLE,
        "stage": STAGE_LIFECYCLE,
        "session": SESSION_GRAMMAR,
    }
)
"""Short name (as the CLI and reports spell it) -> declaration, in report order."""


def declared_machine(name: str) -> Declaration:
    """The declaration registered as ``name``.

    Raises:
        KeyError: no such machine; the message lists the names.
    """
    try:
        return DECLARED_MACHINES[name]
    except KeyError:
        known = ", ".join(DECLARED_MACHINES)
        raise KeyError(f"no declared machine is called {name!r}; known: {known}") from None
