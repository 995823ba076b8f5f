"""The bounds the commands check their options against (no torch import: the CLI checks
them while parsing)."""

from __future__ import annotations

from typing import Final

__all__ = ["DEMO_STEPS", "MAX_LR", "MAX_SEED", "MAX_STEPS"]

MAX_SEED: Final = 2**32 - 1
"""The largest ``--seed`` (``modfsm run``'s batch order draws from seed * 1,000,003 + epoch)."""

MAX_LR: Final = 1.0
"""The largest ``modfsm run --lr`` (Adam diverges far below it)."""

DEMO_STEPS: Final = 1000
"""The most ``modfsm demo --steps`` (it prints a line a step)."""

MAX_STEPS: Final = 10**7
"""The most ``modfsm run --steps`` (ten million steps of the digits MLP: hours of work)."""
