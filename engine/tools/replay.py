"""Trace replay: check a recorded trace against the declared tables.

:func:`verify` replays each segment of a trace (the format is described in
:mod:`modfsm.engine.loop.trace`) from its header against the declared tables —
the step grammar, the stage lifecycle and the modifier lifecycle, read row by
row, not through the compiled dispatch — recomputing the default guards from
each modifier's schedule, and reports the first divergence.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from modfsm.engine.kernel.declaration import Declaration
from modfsm.engine.kernel.errors import ConfigError
from modfsm.engine.loop.trace import FORMAT, STAGE_TRIGGERS
from modfsm.engine.model.calibration_lifecycle import CALIBRATION_LIFECYCLE
from modfsm.engine.model.events import Event, EventType
from modfsm.engine.model.lifecycle import LIFECYCLE, default_should_end, default_should_start
from modfsm.engine.model.session_grammar import (
    COUNT_AFTER,
    COUNTER_HOOKS,
    SESSION_GRAMMAR,
    completes_accumulation,
)
from modfsm.engine.model.stage_lifecycle import STAGE_LIFECYCLE

__all__ = ["Divergence", "VerifyResult", "read_jsonl", "verify"]


@attrs.frozen
class Divergence:
    """The first place where a trace departs from the specification."""

    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@attrs.frozen
class VerifyResult:
    """The outcome of :func:`verify`: ``divergence`` is None when the trace follows the spec.

    Attributes:
        records: records read.
        calls: call and failed records checked.
        transitions: modifier transition records checked.
        divergence: the first place the trace departs from the specification, if any.
        ended_in_failure: the trace's last call failed (a failed call followed by more
            calls, a retry, is checked like any other and does not count).
        segments: segments (one per header: a run and each resumed continuation).
        stage_transitions: stage transition records checked.
        final_position: the session's position after the last record (``finalized``
            when the run ended; anything else: the trace stops before it did).
    """

    records: int
    calls: int
    transitions: int
    divergence: Divergence | None = None
    ended_in_failure: bool = False
    segments: int = 0
    stage_transitions: int = 0
    final_position: str | None = None

    @property
    def ok(self) -> bool:
        """True when no divergence was found."""
        return self.divergence is None

    @property
    def complete(self) -> bool:
        """True when the trace follows the specification and the run finalized in it."""
        return self.divergence is None and self.final_position == "finalized"


MAX_LINE_BYTES: Final = 1 << 20
"""The longest trace line read (1 MiB; a record of a run with 1,000 modifiers is about 200 KB)."""

MAX_RECORDS: Final = 10_000_000
"""The most records read from one trace."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL trace file, read line by line within bounds.

    Each line is read up to :data:`MAX_LINE_BYTES`, so a file without newlines
    (``/dev/zero``) or one huge line is refused without being held in memory.

    Raises:
        ConfigError: a line too long, not UTF-8, not JSON (or nested too deeply, or a
            number too large), or not a JSON object; too many records. The message
            names the line.
        OSError: the file cannot be opened.
    """

    def refuse(number: int, problem: str) -> ConfigError:
        return ConfigError(
            f"{path}, line {number}: {problem}. To fix, pass a trace written by modfsm "
            "(Session(trace=...), modfsm run --trace FILE).",
            owner="trace",
            field="line",
            value=number,
        )

    records = []
    with path.open("rb") as handle:
        number = 0
        while True:
            raw = handle.readline(MAX_LINE_BYTES + 1)
            if not raw:
                break
            number += 1
            if len(raw) > MAX_LINE_BYTES:
                raise refuse(number, f"longer than {MAX_LINE_BYTES:,} bytes")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise refuse(number, f"byte {raw[error.start]:#04x} is not UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise refuse(number, f"not JSON ({error.msg})") from None
            except RecursionError:
                raise refuse(number, "JSON nested too deeply") from None
            except ValueError as error:  # e.g. an integer beyond Python's 4,300 digits
                raise refuse(number, f"not a value a trace holds ({error})") from None
            if not isinstance(record, dict):
                raise refuse(number, "expected a JSON object")
            records.append(record)
            if len(records) > MAX_RECORDS:
                raise refuse(number, f"more than {MAX_RECORDS:,} records")
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
    """Replay ``records`` against the declared grammar and lifecycles; report the first divergence.

    Each segment is replayed from its own header. Checks, call by call: ``seq``
    follows the previous call's; the ``event`` is one the grammar routes to the
    ``trigger``; the call is allowed by the step grammar in the session's position;
    its step and batch follow the counting rules; the position after it is the
    grammar's (unchanged after a failed call); every stage moved exactly as the stage
    lifecycle says; and each modifier the call reached moved exactly as the modifier
    lifecycle says (default guards recomputed from the modifier's schedule, custom
    guards taken from the record), with no transition missing or extra, each carrying
    its call's ``seq``, ``step``, ``batch`` and ``event``. A failed call changes
    neither the position nor the counters; the modifiers and stages before the point
    where it stopped (``stopped_at``) completed it and are checked as above, the rest
    must be unchanged; replay then continues.
    """
    return _Replay(records).run()


_COUNTERS: Final = ("global_step", "global_batch", "batches_since_step")
_LIVE_POSITIONS: Final = frozenset(SESSION_GRAMMAR.state_names()) - {"created", "finalized"}
_STAGE_ROWS: Final = _rows(STAGE_LIFECYCLE)
_STAGE_IGNORED: Final = frozenset(
    (state, trigger)
    for rule in STAGE_LIFECYCLE.ignored
    for state in rule.states
    for trigger in rule.triggers
)
_GRAMMAR_ROWS: Final = _rows(SESSION_GRAMMAR)
_LIFECYCLES: Final = {decl.name: decl for decl in (LIFECYCLE, CALIBRATION_LIFECYCLE)}
"""The modifier lifecycles replay knows, by declaration name (a header's ``lifecycle``)."""
_LIFECYCLE_ROWS: Final = {name: _rows(decl) for name, decl in _LIFECYCLES.items()}
_LIFECYCLE_FLAGS: Final = {spec.name: spec.flags for spec in LIFECYCLE.states}  # same in both
_DONE_FLAG: Final = {"initialize": "initialized", "finalize": "finalized"}
_ATTACHED: Final = ("transition", "stage")


def _events_of(trigger: str) -> set[str | None]:
    """The event values a call record of ``trigger`` may carry."""
    if trigger in ("initialize", "finalize"):
        return {None}
    if trigger == "partial_step":
        return {EventType.OPTIM_PRE_STEP.value}
    return {
        event.value
        for event, routed in SESSION_GRAMMAR.event_triggers.items()
        if routed == trigger and isinstance(event, EventType)
    }


def _brief(error: BaseException) -> str:
    """``KeyError('seq')``, cut to 200 characters (a hostile field may be huge)."""
    text = repr(error)
    return text if len(text) <= 200 else f"{text[:197]}..."


class _Diverged(Exception):
    """Raised inside the replay to stop at the first divergence."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@attrs.define
class _Replay:
    records: Sequence[Mapping[str, Any]]
    calls: int = 0
    transitions: int = 0
    stage_transitions: int = 0
    segments: int = 0
    last_failed: bool = False
    line: int = 1  # the line of the call being checked
    segment: _Segment | None = None  # the one being replayed

    def run(self) -> VerifyResult:
        divergence = None
        try:
            self.replay()
        except _Diverged as diverged:
            divergence = Divergence(diverged.line, diverged.message)
        except (AttributeError, LookupError, TypeError, ValueError, ArithmeticError) as error:
            # A field of the wrong shape (hand-edited, truncated): a divergence, not a crash.
            divergence = Divergence(self.line, f"a malformed record ({_brief(error)})")
        return VerifyResult(
            len(self.records),
            self.calls,
            self.transitions,
            divergence,
            self.last_failed and divergence is None,
            self.segments,
            self.stage_transitions,
            self.segment.position if self.segment is not None else None,
        )

    def replay(self) -> None:
        records = self.records
        if not records or records[0].get("kind") != "header":
            raise _Diverged(1, f"the first record must be a {FORMAT!r} header")
        index = 0
        while index < len(records):
            self.segments += 1
            self.line = index + 1
            segment = self.segment = _Segment.load(records[index], index + 1)
            index += 1
            while index < len(records) and records[index].get("kind") != "header":
                index = self.call(segment, index)

    def call(self, segment: _Segment, index: int) -> int:
        """Check the call (or failed call) at ``index`` and its records; the next index."""
        records = self.records
        record, line = records[index], index + 1
        self.line = line
        kind = record.get("kind")
        if kind not in ("call", "failed"):
            raise _Diverged(line, f"expected a call record, found {kind!r}")
        self.calls += 1
        failed = kind == "failed"
        self.last_failed = failed
        attached: dict[tuple[str, str], tuple[int, Mapping[str, Any]]] = {}
        index += 1
        while index < len(records) and records[index].get("kind") in _ATTACHED:
            entry = records[index]
            key = (
                str(entry["kind"]),
                str(entry.get("modifier" if entry["kind"] == "transition" else "stage")),
            )
            if key in attached:
                raise _Diverged(index + 1, f"a second {key[0]} record for {key[1]} in one call")
            attached[key] = (index + 1, entry)
            if key[0] == "transition":
                self.transitions += 1
            else:
                self.stage_transitions += 1
            index += 1
        segment.call(record, line, failed, attached)
        return index


@attrs.define
class _Segment:
    """One segment's replay state: counters, position, stages and modifiers."""

    per_step: int
    steps_per_epoch: int | None
    counters: _Counters
    position: str
    stages: list[dict[str, Any]]
    modifiers: dict[str, dict[str, Any]]
    seq: int = 0

    @classmethod
    def load(cls, header: Mapping[str, Any], line: int) -> _Segment:
        if header.get("format") != FORMAT:
            raise _Diverged(line, f"a header must have format {FORMAT!r}")
        try:
            per_step = int(header.get("batches_per_step") or 1)
            steps_per_epoch = header.get("steps_per_epoch")
            counters = _Counters(*(int(header["counters"][k]) for k in _COUNTERS))
            position = str(header["position"])
            resumed = header["resumed"]
            modifiers = {str(m["id"]): dict(m) for m in header["modifiers"]}
            for entry in modifiers.values():
                entry.setdefault("lifecycle", LIFECYCLE.name)  # absent: the default table
            stages = [
                {
                    "id": str(st["id"]),
                    "state": str(st["state"]),
                    "modifiers": [str(mid) for mid in st["modifiers"]],
                }
                for st in header["stages"]
            ]
        except (LookupError, TypeError, ValueError, ArithmeticError) as error:
            raise _Diverged(line, f"the header is incomplete ({_brief(error)})") from None
        if steps_per_epoch is not None and (
            type(steps_per_epoch) is not int or steps_per_epoch < 1
        ):
            raise _Diverged(line, f"steps_per_epoch must be null or >= 1, not {steps_per_epoch!r}")
        listed = [mid for stage in stages for mid in stage["modifiers"]]
        if sorted(listed) != sorted(modifiers) or len(modifiers) != len(header["modifiers"]):
            raise _Diverged(line, "the header's stages must list each modifier exactly once")
        if len({stage["id"] for stage in stages}) != len(stages):
            raise _Diverged(line, "the header names a stage twice")
        for modifier_id, entry in modifiers.items():
            if entry["lifecycle"] not in _LIFECYCLES:
                raise _Diverged(
                    line,
                    f"modifier {modifier_id} runs the lifecycle {entry['lifecycle']!r}, which "
                    f"replay does not know (it knows {', '.join(_LIFECYCLES)})",
                )
        if resumed is True and position not in _LIVE_POSITIONS:
            raise _Diverged(line, f"a resumed segment cannot start in position {position!r}")
        if resumed is False and position != "created":
            raise _Diverged(line, f"a run starts in position 'created', not {position!r}")
        if resumed not in (True, False):
            raise _Diverged(line, f"'resumed' must be true or false, not {resumed!r}")
        return cls(per_step, steps_per_epoch, counters, position, stages, modifiers)

    def call(
        self,
        record: Mapping[str, Any],
        line: int,
        failed: bool,
        attached: dict[tuple[str, str], tuple[int, Mapping[str, Any]]],
    ) -> None:
        if record.get("seq") != self.seq + 1:
            raise _Diverged(line, f"seq is {record.get('seq')!r}, expected {self.seq + 1}")
        self.seq += 1
        trigger = str(record.get("trigger"))
        if trigger not in SESSION_GRAMMAR.trigger_names() or trigger == "lifecycle_event":
            raise _Diverged(line, f"{trigger!r} is not a session call")
        event_value = record.get("event")
        allowed_events = _events_of(trigger)
        if event_value not in allowed_events:
            raise _Diverged(
                line,
                f"{trigger} carries event {event_value!r}; the grammar routes "
                f"{sorted(map(str, allowed_events))} to it",
            )
        event_type = None if event_value is None else EventType(event_value)
        steps, batches = COUNT_AFTER.get(event_type, (0, 0)) if event_type else (0, 0)
        step, batch = self.counters.global_step + steps, self.counters.global_batch + batches
        if (record.get("step"), record.get("batch")) != (step, batch):
            raise _Diverged(
                line,
                f"{trigger} carries step {record.get('step')}, batch {record.get('batch')}; "
                f"counting says step {step}, batch {batch}",
            )
        grammar = _interpret(
            SESSION_GRAMMAR,
            _GRAMMAR_ROWS,
            self.position,
            trigger,
            lambda _: completes_accumulation(self.counters, self.per_step),
        )
        if grammar is None:
            raise _Diverged(
                line, f"{trigger} is not allowed by the step grammar in position {self.position!r}"
            )
        hooks, _, after = grammar
        if failed:
            after = self.position  # a failed call moves neither the position nor the counters
        if record.get("position") != after:
            raise _Diverged(
                line,
                f"after {trigger}{' (failed)' if failed else ''} the session is in {after!r}, "
                f"the trace says {record.get('position')!r}",
            )
        common = {"seq": self.seq, "step": step, "batch": batch, "event": event_value}
        for (kind, name), (at, entry) in attached.items():
            got = {key: entry.get(key) for key in common}
            if got != common:
                raise _Diverged(
                    at, f"the {kind} record for {name} carries {got}; its call carries {common}"
                )
        stop = self.stop_point(record, line) if failed else None
        if not failed:
            for hook in hooks:  # the grammar's counter hooks, as the session runs them
                if hook in COUNTER_HOOKS:
                    COUNTER_HOOKS[hook](self.counters, step, batch)
        rescheduled = self.reschedule(record)
        if trigger in ("initialize", "finalize"):
            probe = Event(EventType.BATCH_START, global_step=0)
        else:
            assert event_type is not None
            probe = Event(
                EventType.BATCH_START, global_step=step, steps_per_epoch=self.steps_per_epoch
            )
        context = f"{trigger} at step {step}"
        for position, stage in enumerate(self.stages):
            if stop is not None and position > stop[0]:
                break  # not reached: its records, if any, are left over below
            limit = stop[1] if stop is not None and position == stop[0] else None
            self.stage(stage, trigger, event_type, probe, limit, attached, line, context,
                       rescheduled)  # fmt: skip
        if attached:
            (kind, name), (at, _) = min(attached.items(), key=lambda item: item[1][0])
            known = (
                name in self.modifiers
                if kind == "transition"
                else any(stage["id"] == name for stage in self.stages)
            )
            what = "modifier" if kind == "transition" else "stage"
            reason = "which the call did not reach" if known else "which the header does not list"
            raise _Diverged(at, f"{context}: a {kind} record for {what} {name}, {reason}")
        for modifier_id, schedule in rescheduled.items():
            self.modifiers[modifier_id].update(schedule)
        if not failed:
            self.position = after

    def reschedule(self, record: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """Take the schedules the call record says changed since the last call; return
        those the call itself changed (applied after it: guards then come from the record)."""
        for key in ("schedules", "rescheduled"):
            if not isinstance(record.get(key, {}), Mapping):
                raise TypeError(f"{key} must be an object")
        for modifier_id, schedule in record.get("schedules", {}).items():
            self.modifiers[str(modifier_id)].update(_schedule_of(schedule))
        return {
            str(modifier_id): _schedule_of(schedule)
            for modifier_id, schedule in record.get("rescheduled", {}).items()
            if str(modifier_id) in self.modifiers
        }

    def stop_point(self, record: Mapping[str, Any], line: int) -> tuple[int, int] | None:
        """(stage position, modifier position in it) where a failed call stopped, or None."""
        stopped = record.get("stopped_at")
        if stopped is None:
            return None
        if not isinstance(stopped, Mapping):
            raise _Diverged(line, f"stopped_at must be null or an object, not {stopped!r}")
        for position, stage in enumerate(self.stages):
            if stage["id"] == stopped.get("stage"):
                modifier = stopped.get("modifier")
                if modifier is None:
                    return position, len(stage["modifiers"])
                if modifier in stage["modifiers"]:
                    return position, stage["modifiers"].index(modifier)
                raise _Diverged(
                    line, f"stopped_at: stage {stage['id']} has no modifier {modifier!r}"
                )
        raise _Diverged(line, f"stopped_at names an unknown stage {stopped.get('stage')!r}")

    def stage(
        self,
        stage: dict[str, Any],
        trigger: str,
        event_type: EventType | None,
        probe: Event,
        limit: int | None,
        attached: dict[tuple[str, str], tuple[int, Mapping[str, Any]]],
        line: int,
        context: str,
        rescheduled: Mapping[str, Any],
    ) -> None:
        """Replay one stage's part of a call; ``limit``: where a failed call stopped in it."""
        state = stage["state"]
        for stage_trigger in STAGE_TRIGGERS.get(trigger, STAGE_TRIGGERS["update"]):
            if (state, stage_trigger) in _STAGE_IGNORED:
                continue
            cell = _interpret(STAGE_LIFECYCLE, _STAGE_ROWS, state, stage_trigger, lambda _: True)
            if cell is None:  # the stage refuses: the call must have stopped at its start
                if limit != 0:
                    raise _Diverged(
                        line,
                        f"{context}: stage {stage['id']} refuses {stage_trigger} in state "
                        f"{state!r}, but the call did not stop there",
                    )
                break
            stage_hooks, _, dest = cell
            if stage_hooks:  # the cell reaches the modifiers (a gate prelude or deliver)
                self.deliver(
                    stage, trigger, event_type, probe, limit, attached, line, context,
                    rescheduled,
                )  # fmt: skip
                if limit is not None:
                    break  # the stage's cell raised: its own state stays
            state = dest
        at, recorded = attached.pop(("stage", stage["id"]), (line, None))
        if state != stage["state"]:
            want = {"from": stage["state"], "to": state}
            if recorded is None:
                raise _Diverged(
                    line,
                    f"{context}: the spec expects stage {stage['id']} {want['from']} -> "
                    f"{state}; the trace has none",
                )
            got = {key: recorded.get(key) for key in want}
            if got != want:
                raise _Diverged(
                    at,
                    f"{context}: the spec expects stage {stage['id']} {want['from']} -> "
                    f"{state}; the trace has {got['from']} -> {got['to']}",
                )
            stage["state"] = state
        elif recorded is not None:
            raise _Diverged(
                at,
                f"{context}: the spec expects stage {stage['id']} to stay {state!r}; the "
                f"trace has {recorded.get('from')} -> {recorded.get('to')}",
            )

    def deliver(
        self,
        stage: dict[str, Any],
        trigger: str,
        event_type: EventType | None,
        probe: Event,
        limit: int | None,
        attached: dict[tuple[str, str], tuple[int, Mapping[str, Any]]],
        line: int,
        context: str,
        rescheduled: Mapping[str, Any],
    ) -> None:
        """Replay the stage passing the call to its modifiers, up to ``limit`` if it failed."""
        flag = _DONE_FLAG.get(trigger)
        for position, modifier_id in enumerate(stage["modifiers"]):
            modifier = self.modifiers[modifier_id]
            done = flag is not None and _LIFECYCLE_FLAGS.get(modifier["state"], {}).get(flag)
            if limit is not None and position >= limit:
                if position == limit and done:
                    raise _Diverged(
                        line,
                        f"{context}: the call cannot have stopped at {modifier_id}: it "
                        f"is {modifier['state']!r}, so the stage skips it",
                    )
                return  # the failing modifier changed nothing; the rest were not reached
            if done:
                continue  # the stage skips a modifier already initialized / finalized
            at, recorded = attached.pop(("transition", modifier_id), (line, None))
            # each modifier's own lifecycle routes the event (the calibration table has
            # triggers of its own for the calibration events)
            routes = _LIFECYCLES[modifier["lifecycle"]].event_triggers
            modifier_trigger = trigger if event_type is None else routes[event_type]
            problem = _check_modifier(
                modifier, modifier_trigger, probe, recorded, modifier_id in rescheduled
            )
            if problem is not None:
                raise _Diverged(at, f"{context}: modifier {modifier_id}: {problem}")


@attrs.define
class _Counters:
    """The replay's copy of the session's counters (the grammar's counter hooks update it)."""

    global_step: int
    global_batch: int
    batches_since_step: int


def _schedule_of(value: Any) -> dict[str, Any]:
    """A traced schedule (``start``, ``end``, ``default_guards``), checked for shape."""
    if not isinstance(value, Mapping) or set(value) != {"start", "end", "default_guards"}:
        raise ValueError(f"a schedule must hold start, end and default_guards, not {value!r}")
    return {key: value[key] for key in ("start", "end", "default_guards")}


@attrs.define
class _Schedule:
    """A modifier's schedule as the trace gave it, for the model's default guards."""

    start: float | None
    end: float | None


def _is_bound(value: Any) -> bool:
    return value is None or type(value) in (int, float)


def _check_modifier(
    modifier: dict[str, Any],
    trigger: str,
    event: Event,
    recorded: Mapping[str, Any] | None,
    rescheduled: bool = False,
) -> str | None:
    """Check one modifier's part of a call. Default guards are recomputed with the model's
    rules from the schedule the trace last gave, unless the call itself changed it
    (``rescheduled``) or it is not numbers: then, as for custom guards, the record says."""
    state = modifier["state"]
    recorded_guards = dict(recorded.get("guards", {})) if recorded else {}
    start, end = modifier["start"], modifier["end"]
    computed = modifier["default_guards"] is True and not rescheduled
    computed = computed and _is_bound(start) and _is_bound(end)

    def guard(name: str) -> bool:
        if not computed:
            return bool(recorded_guards.get(name, False))
        rule = default_should_start if name == "should_start" else default_should_end
        return rule(_Schedule(start, end), event)

    lifecycle = modifier["lifecycle"]
    expected = _interpret(_LIFECYCLES[lifecycle], _LIFECYCLE_ROWS[lifecycle], state, trigger, guard)
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
