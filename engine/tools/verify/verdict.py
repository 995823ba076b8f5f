"""The result of one check: a property's verdict, with its witness or counterexample."""

from __future__ import annotations

import enum

import attrs

__all__ = ["SpinStats", "Status", "Verdict"]


class Status(enum.StrEnum):
    """A property's verdict."""

    HOLDS = "holds"
    FAILS = "FAILS"
    NOT_CHECKED = "not checked"


@attrs.frozen
class SpinStats:
    """What Spin's verifier (``pan``) reported for one property.

    Attributes:
        states_stored: distinct states it stored (``N states, stored``).
        states_matched: states it reached again (``N states, matched``).
        transitions: ``stored + matched`` (``N transitions``).
        depth: the deepest point of its depth-first search (``depth reached N``).
        state_vector: bytes per state (``State-vector N byte``).
        errors: violations found (``errors: N``); 0 means the property holds.
    """

    states_stored: int
    states_matched: int
    transitions: int
    depth: int
    state_vector: int
    errors: int


@attrs.frozen
class Verdict:
    """One property of one machine, checked.

    Attributes:
        machine: the machine's short name (``lifecycle``).
        property_id: the property's catalog id (``V2``, ``LT1``).
        title: one line saying what the property is.
        status: holds, FAILS, or not checked.
        detail: one line: why it holds, the first counterexample, or why it was not checked.
        evidence: the structural counterexamples, one line each; for a temporal
            property that fails, the calls of the violating run, one line each.
        stats: Spin's figures, for a model-checked property that ran.
        formula: the LTL formula, for a temporal property.
    """

    machine: str
    property_id: str
    title: str
    status: Status
    detail: str
    evidence: tuple[str, ...] = ()
    stats: SpinStats | None = None
    formula: str | None = None

    @property
    def holds(self) -> bool:
        """Whether the property was checked and holds."""
        return self.status is Status.HOLDS
