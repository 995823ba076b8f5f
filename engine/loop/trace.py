"""Traces: a replayable record of what the session, its stages and modifiers did.

A trace is a list of JSON records (one per line in a ``.jsonl`` file), in
*segments*, each opened by a header:

* ``header`` — format; ``resumed`` (False for a run from ``initialize``, True for
  a run resumed from a saved state); the session's ``batches_per_step`` and
  ``steps_per_epoch``; the counters and position it starts from; each stage (``id``,
  lifecycle ``state``, the ids of its ``modifiers``) and each modifier (``id``,
  ``type``, ``start``, ``end``, whether it uses the default guards, its lifecycle
  ``state``);
* ``call`` — one per accepted session call (``initialize``, each loop event,
  ``finalize``): ``seq`` (1, 2, ... in its segment), the grammar ``trigger``, the
  ``event`` type (null for initialize/finalize), the ``step`` and ``batch`` it
  carried and the session's ``position`` after it;
* ``failed`` — an accepted call that raised: the same fields (``position`` is
  unchanged), ``stopped_at`` (the stage and modifier where it stopped, or null)
  and ``error``;
* ``transition`` — after its call, one per modifier the call moved or made run hooks
  beyond the prelude: ``seq``, ``step``, ``batch``, ``event`` (as the call's),
  ``from`` and ``to`` states, the ``hooks`` in order and the ``guards`` consulted
  with their outcomes;
* ``stage`` — after its call, one per stage whose own lifecycle state the call
  changed: ``seq``, ``step``, ``batch``, ``event``, ``stage``, ``from``, ``to``.

The hooks and guards of a transition are read off the compiled plan of the cell
and the states before and after the call; :func:`check_traceable` makes sure
that is unambiguous for a lifecycle (each guard outcome leads to a different
state). This module writes traces; :mod:`modfsm.engine.tools.replay` reads them
back and replays them against the declared tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

import attrs

from modfsm.engine.kernel.compiler import CompiledMachine, Plan
from modfsm.engine.kernel.errors import DeclarationError

__all__ = [
    "FORMAT",
    "STAGE_TRIGGERS",
    "TraceRecorder",
    "check_traceable",
    "deduce",
    "stage_records",
    "transition_records",
]

FORMAT: Final = "modfsm.trace/1"

#: session trigger -> the stage triggers it fires, in order (every loop event: ``update``).
STAGE_TRIGGERS: Final[Mapping[str, tuple[str, ...]]] = {
    "initialize": ("initialize",),
    "finalize": ("begin_finalize", "finalize"),
    "update": ("update",),
}


def check_traceable(machine: CompiledMachine) -> None:
    """Refuse a lifecycle whose transitions cannot be read off its states.

    Raises:
        DeclarationError: a guarded cell whose two outcomes lead to the same state,
            or a gated cell that can stay where it is (then a declining gate and a
            completed transition look alike).
    """
    for (state, trigger), plan in machine.plans.items():
        if plan.rejection is not None or plan.ignored is not None:
            continue
        outcomes = [_dest(plan, True, state)]
        if plan.guard is not None:
            outcomes.append(_dest(plan, False, state))
        if len(set(outcomes)) != len(outcomes) or (plan.gate and state in outcomes):
            raise DeclarationError(
                f"declaration {machine.declaration.name!r}, cell ({state}, {trigger}): its "
                "outcomes cannot be told apart by the resulting state, so a trace cannot say "
                "which hooks ran. To fix, give each guard outcome its own next state.",
                declaration=machine.declaration.name,
                where=f"cell ({state}, {trigger})",
            )


def _dest(plan: Plan, outcome: bool, state: str) -> str:
    branch = plan.when_true if outcome else plan.when_false
    assert branch is not None
    return branch.dest or state


def deduce(plan: Plan, before: str, after: str) -> tuple[list[str], dict[str, bool]] | None:
    """The hooks that ran and the guards consulted, given the states around one call.

    Returns None when nothing beyond the prelude ran and the state stayed.
    """
    if plan.rejection is not None or plan.ignored is not None:
        return None
    hooks = [plan.prelude] if plan.prelude is not None else []
    branch_taken: bool | None
    if plan.guard is None:
        branch_taken = True if _dest(plan, True, before) == after else None
    elif _dest(plan, True, before) == after:
        branch_taken = True
    elif _dest(plan, False, before) == after:
        branch_taken = False
    else:
        branch_taken = None
    if branch_taken is None:  # the gate declined: only the prelude ran
        return (hooks, {}) if plan.gate else None
    branch = plan.when_true if branch_taken else plan.when_false
    assert branch is not None
    guards = {plan.guard: branch_taken} if plan.guard is not None else {}
    hooks.extend(branch.hooks)
    if before == after and len(hooks) <= (1 if plan.prelude else 0) and not plan.gate:
        return None
    return hooks, guards


@attrs.define
class TraceRecorder:
    """Keeps trace records in memory and, optionally, writes them to a JSONL file."""

    records: list[dict[str, Any]] = attrs.field(factory=list)
    path: Path | None = None
    _stream: IO[str] | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.path is not None:
            self._stream = self.path.open("a", encoding="utf-8")

    def add(self, record: dict[str, Any]) -> None:
        """Keep ``record`` and stream it."""
        self.records.append(record)
        if self._stream is not None:
            self._stream.write(json.dumps(record, sort_keys=True) + "\n")
            self._stream.flush()

    def close(self) -> None:
        """Close the file, if any."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def transition_records(
    common: Mapping[str, Any],
    modifiers: Iterable[tuple[str, Any]],
    before: Sequence[str],
    trigger: str,
    event: Any = None,
) -> list[dict[str, Any]]:
    """The transition records for one call: modifiers as (id, modifier), states before it.

    ``common`` holds the call's ``seq``, ``step``, ``batch`` and ``event``; ``trigger`` is
    the modifiers' trigger for ``initialize``/``finalize`` (``event`` None), else each
    modifier's own lifecycle routes ``event``'s type.
    """
    out = []
    for (modifier_id, modifier), previous in zip(modifiers, before, strict=True):
        compiled: CompiledMachine = type(modifier).__compiled_lifecycle__
        after = modifier._lc.name
        own = trigger if event is None else compiled.declaration.event_triggers[event.type_]
        found = deduce(compiled.plans[(previous, own)], previous, after)
        if found is None:
            continue
        hooks, guards = found
        out.append(
            {
                "kind": "transition",
                **common,
                "modifier": modifier_id,
                "from": previous,
                "to": after,
                "hooks": hooks,
                "guards": guards,
            }
        )
    return out


def stage_records(
    common: Mapping[str, Any], stages: Iterable[tuple[str, Any]], before: Sequence[str]
) -> list[dict[str, Any]]:
    """The stage records for one call: stages as (id, stage), their states before it."""
    return [
        {"kind": "stage", **common, "stage": stage_id, "from": previous, "to": stage._lc.name}
        for (stage_id, stage), previous in zip(stages, before, strict=True)
        if stage._lc.name != previous
    ]
