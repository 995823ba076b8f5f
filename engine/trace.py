"""Traces: a replayable record of what the session and its modifiers did, and its verifier.

A trace is a list of JSON records (one per line in a ``.jsonl`` file):

* ``header`` — format, the session's ``batches_per_step`` and ``steps_per_epoch``,
  the counters and position it starts from, and each modifier: ``id``, ``type``,
  ``start``, ``end``, whether it uses the default guards, and its lifecycle state;
* ``event`` — one per session call (``initialize``, each loop event, ``finalize``),
  with the event type, ``step`` and ``batch`` it carried and the session's
  position after it;
* ``transition`` — one per modifier the call moved or made run hooks beyond the
  prelude: ``from`` and ``to`` states, the ``hooks`` in order and the ``guards``
  consulted with their outcomes;
* ``failed`` — the call raised (the trace ends there).

The hooks and guards of a transition are read off the compiled plan of the cell
and the states before and after the call; :func:`check_traceable` makes sure
that is unambiguous for a lifecycle (each guard outcome leads to a different
state). :func:`verify` replays a trace against the declared tables — the step
grammar and the modifier lifecycle, read row by row, not through the compiled
dispatch — recomputing the default guards from each modifier's schedule, and
reports the first divergence.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Final

import attrs

from engine.errors import ConfigError, DeclarationError
from engine.events import Event, EventType
from engine.lifecycle import LIFECYCLE
from engine.machine import CompiledMachine, Declaration, Plan
from engine.session_grammar import COUNT_AFTER, SESSION_GRAMMAR

__all__ = ["FORMAT", "Divergence", "TraceRecorder", "check_traceable", "deduce", "verify"]

FORMAT: Final = "modfsm.trace/1"


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


# --- verification ----------------------------------------------------------------------------


@attrs.frozen
class Divergence:
    """The first place where a trace departs from the specification."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@attrs.frozen
class VerifyResult:
    """The outcome of :func:`verify`: ``divergence`` is None when the trace follows the spec."""

    records: int
    calls: int
    transitions: int
    divergence: Divergence | None = None
    ended_in_failure: bool = False

    @property
    def ok(self) -> bool:
        """True when no divergence was found."""
        return self.divergence is None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL trace file.

    Raises:
        ConfigError: a line is not a JSON object (the message names the line).
    """
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(
                    f"{path}, line {number}: not JSON ({error.msg}). To fix, pass a trace "
                    "written by modfsm (Session(trace=...)).",
                    owner="trace",
                    field="line",
                    value=number,
                ) from None
            if not isinstance(record, dict):
                raise ConfigError(
                    f"{path}, line {number}: expected a JSON object. To fix, pass a trace "
                    "written by modfsm.",
                    owner="trace",
                    field="line",
                    value=number,
                )
            records.append(record)
    return records


def _rows(decl: Declaration) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    table: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in decl.transitions:
        sources = row["source"]
        for source in [sources] if isinstance(sources, str) else sources:
            table.setdefault((source, row["trigger"]), []).append(row)
    return table


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _interpret(
    decl: Declaration,
    rows: Mapping[tuple[str, str], list[Mapping[str, Any]]],
    state: str,
    trigger: str,
    guard: Any,
) -> tuple[list[str], dict[str, bool], str] | None:
    """Read the declaration literally: (hooks, guards, next state), or None if rejected.

    ``guard(name)`` gives a guard's outcome. Gate preludes are taken to return True.
    """
    cell = rows.get((state, trigger))
    if not cell:
        return None
    prelude = next(t.prelude for t in decl.triggers if t.name == trigger)
    hooks = [prelude] if prelude else []
    consulted: dict[str, bool] = {}
    for row in cell:
        conditions, unless = _names(row.get("conditions")), _names(row.get("unless"))
        names = conditions + unless
        for name in names:
            if name not in consulted:
                consulted[name] = bool(guard(name))
        if all(consulted[g] for g in conditions) and not any(consulted[g] for g in unless):
            return hooks + _names(row.get("before")), consulted, row["dest"] or state
    return None


def verify(records: Sequence[Mapping[str, Any]]) -> VerifyResult:
    """Replay ``records`` against the declared grammar and lifecycle; report the first divergence.

    Checks, call by call: the call is allowed by the step grammar in the session's
    position; its step and batch follow the counting rules; the position after it
    is the grammar's; and each modifier moved exactly as the lifecycle table says
    (default guards recomputed from the modifier's schedule, custom guards taken
    from the record), with no transition missing or extra.
    """
    replay = _Replay(records)
    return replay.run()


@attrs.define
class _Replay:
    records: Sequence[Mapping[str, Any]]
    calls: int = 0
    transitions: int = 0

    def result(
        self, line: int | None = None, message: str = "", failed: bool = False
    ) -> VerifyResult:
        divergence = Divergence(line, message) if line is not None else None
        return VerifyResult(len(self.records), self.calls, self.transitions, divergence, failed)

    def run(self) -> VerifyResult:
        records = self.records
        if not records or records[0].get("kind") != "header" or records[0].get("format") != FORMAT:
            return self.result(1, f"the first record must be a {FORMAT!r} header")
        header = records[0]
        try:
            per_step = int(header.get("batches_per_step") or 1)
            steps_per_epoch = header.get("steps_per_epoch")
            counters = {k: int(header["counters"][k]) for k in _COUNTERS}
            position = str(header["position"])
            modifiers = {m["id"]: dict(m) for m in header["modifiers"]}
        except (KeyError, TypeError, ValueError) as error:
            return self.result(1, f"the header is incomplete ({error!r})")
        grammar_rows, lifecycle_rows = _rows(SESSION_GRAMMAR), _rows(LIFECYCLE)
        index = 1
        while index < len(records):
            record, line = records[index], index + 1
            if record.get("kind") == "failed":
                return self.result(failed=True)
            if record.get("kind") != "call":
                return self.result(line, f"expected a call record, found {record.get('kind')!r}")
            self.calls += 1
            trigger = str(record.get("trigger"))
            event_type = record.get("event")
            steps, batches = (
                COUNT_AFTER.get(EventType(event_type), (0, 0)) if event_type else (0, 0)
            )
            step, batch = counters["global_step"] + steps, counters["global_batch"] + batches
            if (record.get("step"), record.get("batch")) != (step, batch):
                return self.result(
                    line,
                    f"{trigger} carries step {record.get('step')}, batch "
                    f"{record.get('batch')}; counting says step {step}, batch {batch}",
                )
            grammar = _interpret(
                SESSION_GRAMMAR,
                grammar_rows,
                position,
                trigger,
                lambda _: counters["batches_since_step"] + 1 >= per_step,
            )
            if grammar is None:
                return self.result(
                    line, f"{trigger} is not allowed by the step grammar in position {position!r}"
                )
            hooks, _, position = grammar
            if record.get("position") != position:
                return self.result(
                    line,
                    f"after {trigger} the session is in {position!r}, the "
                    f"trace says {record.get('position')!r}",
                )
            _count(hooks, counters, step, batch)
            found: dict[str, tuple[int, Mapping[str, Any]]] = {}
            index += 1
            while index < len(records) and records[index].get("kind") == "transition":
                found[str(records[index].get("modifier"))] = (index + 1, records[index])
                self.transitions += 1
                index += 1
            if trigger in ("initialize", "finalize"):
                modifier_trigger = trigger
                probe = Event(EventType.BATCH_START, global_step=0)
            elif event_type is not None:
                modifier_trigger = LIFECYCLE.event_triggers[EventType(event_type)]
                probe = Event(
                    EventType.BATCH_START, global_step=step, steps_per_epoch=steps_per_epoch
                )
            else:
                return self.result(line, f"{trigger} has no event type")
            for modifier_id, modifier in modifiers.items():
                at, recorded = found.pop(modifier_id, (line, None))
                problem = _check_modifier(
                    lifecycle_rows, modifier, modifier_trigger, probe, recorded
                )
                if problem is not None:
                    return self.result(
                        at, f"{trigger} at step {step}: modifier {modifier_id}: {problem}"
                    )
            if found:
                at, _ = min(found.values(), key=lambda pair: pair[0])
                return self.result(at, f"a transition for an unknown modifier {sorted(found)}")
        return self.result()


_COUNTERS: Final = ("global_step", "global_batch", "batches_since_step")


def _count(hooks: Sequence[str], counters: dict[str, int], step: int, batch: int) -> None:
    """Apply the grammar's counting hooks (the same rules Session's hooks apply)."""
    if "count_step" in hooks:
        counters["global_step"] = step
        counters["batches_since_step"] = 0
    if "close_accumulating_batch" in hooks:
        counters["global_batch"] = batch
        counters["batches_since_step"] += 1
    if "close_step_batch" in hooks:
        counters["global_batch"] = batch


def _check_modifier(
    rows: Mapping[tuple[str, str], list[Mapping[str, Any]]],
    modifier: dict[str, Any],
    trigger: str,
    event: Event,
    recorded: Mapping[str, Any] | None,
) -> str | None:
    state = modifier["state"]
    recorded_guards = dict(recorded.get("guards", {})) if recorded else {}

    def guard(name: str) -> bool:
        if not modifier["default_guards"]:
            return bool(recorded_guards.get(name, False))
        start, end = modifier["start"], modifier["end"]
        index = event.current_index
        if name == "should_start":
            return start is not None and start <= index and (end is None or index < end)
        return end is not None and index >= end

    expected = _interpret(LIFECYCLE, rows, state, trigger, guard)
    if expected is None:
        return f"{trigger} is not allowed in state {state!r}"
    hooks, guards, to = expected
    quiet = to == state and len(hooks) <= 1 and trigger not in ("initialize", "finalize")
    if quiet:
        if recorded is not None:
            return f"the spec expects no transition, the trace has {_describe(recorded)}"
        return None
    if recorded is None:
        return f"the spec expects {state} -> {to} with hooks {hooks}; the trace has none"
    want = {"from": state, "to": to, "hooks": hooks, "guards": guards}
    got = {key: recorded.get(key) for key in want}
    if got != want:
        return f"the spec expects {_describe(want)}, the trace has {_describe(got)}"
    modifier["state"] = to
    return None


def _describe(record: Mapping[str, Any]) -> str:
    guards = record.get("guards") or {}
    shown = f", guards {dict(guards)}" if guards else ""
    return f"{record.get('from')} -> {record.get('to')} with hooks {record.get('hooks')}{shown}"


def transition_records(
    seq: int,
    modifiers: Iterable[tuple[str, Any]],
    before: Sequence[str],
    trigger: str,
) -> list[dict[str, Any]]:
    """The transition records for one call: modifiers as (id, modifier), states before it."""
    out = []
    for (modifier_id, modifier), previous in zip(modifiers, before, strict=True):
        compiled: CompiledMachine = type(modifier).__compiled_lifecycle__
        after = modifier._lc.name
        found = deduce(compiled.plans[(previous, trigger)], previous, after)
        if found is None:
            continue
        hooks, guards = found
        out.append(
            {
                "kind": "transition",
                "seq": seq,
                "modifier": modifier_id,
                "from": previous,
                "to": after,
                "hooks": hooks,
                "guards": guards,
            }
        )
    return out
