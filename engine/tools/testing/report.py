"""How a broken contract is reported: the check, the problem and the run, one call a line.

A check builds a :class:`Report` for the run it draws, adds notes between calls
as it goes (``-- illegal: initialize()``, ``-- saved; ...``), and raises
:class:`CheckFailed` where the modifier breaks the contract; the contract turns
that into a :class:`ContractViolation` whose message is the report::

    Shrinks breaks the modifier contract (resume): parameter '0.weight' differs ...
    The smallest run found that shows it:
      schedule: start=0, end=None
      loop: batches_per_step=1, steps_per_epoch=None
        initialize
        ...
        optim_post_step step 2 batch 1   <- here
"""

from __future__ import annotations

import attrs

from modfsm.engine.tools.testing.scenario import Schedule, Stream

__all__ = ["CheckFailed", "ContractViolation", "Report"]


class ContractViolation(AssertionError):
    """A modifier broke the contract; the message shows the run that breaks it.

    Attributes:
        modifier: the modifier's class name.
        check: which check failed (``"lifecycle"``, ``"illegal calls"``, ...).
        problem: what went wrong, in one or more lines.
        scenario: the run, one line each (schedule, loop settings, the calls).
    """

    def __init__(self, modifier: str, check: str, problem: str, scenario: list[str]) -> None:
        self.modifier = modifier
        self.check = check
        self.problem = problem
        self.scenario = list(scenario)
        super().__init__(
            f"{modifier} breaks the modifier contract ({check}): {problem}\n"
            "The smallest run found that shows it:\n" + "\n".join(f"  {line}" for line in scenario)
        )


@attrs.define
class Report:
    """A run as a counterexample shows it: where each call is, and notes between calls.

    Positions: 0 is ``initialize``, ``1 .. n`` the stream's calls, ``n + 1`` ``finalize``;
    notes after position -1 come before ``initialize``.
    """

    schedule: Schedule
    stream: Stream
    notes: dict[int, list[str]] = attrs.field(factory=dict)  # lines after a position
    marks: dict[int, str] = attrs.field(factory=dict)

    def note(self, after: int, line: str) -> None:
        """Add ``line`` after the call at ``after`` (-1: before ``initialize``)."""
        self.notes.setdefault(after, []).append(line)

    def lines(self) -> list[str]:
        """The schedule, the loop's settings and the calls, one a line, marks and notes included."""
        stream = self.stream
        calls = ["initialize", *(stream.describe_call(i) for i in range(len(stream))), "finalize"]
        shown = [f"schedule: {self.schedule}", stream.lines()[0]]
        shown.extend(f"  -- {line}" for line in self.notes.get(-1, ()))
        for position, call in enumerate(calls):
            mark = self.marks.get(position)
            shown.append(f"  {call}" + (f"   <- {mark}" if mark else ""))
            shown.extend(f"  -- {line}" for line in self.notes.get(position, ()))
        return shown


class CheckFailed(Exception):
    """Raised by a check where the modifier breaks the contract; becomes a
    :class:`ContractViolation` with the report of the run."""

    def __init__(self, problem: str, position: int | None = None, mark: str = "here") -> None:
        super().__init__(problem)
        self.problem = problem
        self.position = position
        self.mark = mark
