"""Trace replay: every legal run verifies, and any single tampered record is a divergence.

Random legal streams of loop calls — with and without gradient accumulation and
epoch counting, skipped and partial optimizer steps, calibration epochs, one or
two stages, modifiers with default or custom guards, and a modifier that fails
once and is retried — are traced by a real ``Session``. The trace must verify;
then one record is changed (a state, a hook list, a step, an event or a seq) and
the verifier must report a divergence, at that record unless it is the header.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from modfsm.engine import EventType, LifecycleState, Modifier
from modfsm.engine.loop.session import Session
from modfsm.engine.model.stage_lifecycle import StageState
from modfsm.engine.runtime.stage import StageModifiers
from modfsm.engine.tools.replay import verify
from modfsm.engine.tools.testing import strategies as ms
from specs.reference import HookFailure
from tests.doubles import EventLog, RecordingModifier

#: position -> the loop calls that are legal there, as (event name, partial).
LEGAL: dict[str, list[tuple[str, bool]]] = {
    "idle": [("batch_start", False), ("calibration_epoch_start", False)],
    "accumulating": [("loss_calculated", False), ("optim_pre_step", True), ("batch_end", False)],
    "accumulating_loss": [("optim_pre_step", True), ("batch_end", False)],
    "step_due": [("loss_calculated", False), ("optim_pre_step", False), ("batch_end", False)],
    "step_due_loss": [("optim_pre_step", False), ("batch_end", False)],
    "stepping": [("optim_post_step", False)],
    "stepped": [("batch_end", False)],
    "calibrating": [("sequential_epoch_end", False), ("calibration_epoch_end", False)],
}
EVENTS = [None, *(event.value for event in EventType)]
STATES = {
    "transition": [state.value for state in LifecycleState],
    "stage": [state.value for state in StageState],
}
HOOKS = ["on_event", "on_start", "on_update", "on_end", "on_initialize", "on_finalize"]


def build(windows: list[tuple[Any, Any]], custom: list[bool], two_stages: bool,
          fail_after: int | None) -> list[StageModifiers]:  # fmt: skip
    modifiers: list[Modifier] = [
        RecordingModifier(start=start, end=end) if mine else EventLog(start=start, end=end)
        for (start, end), mine in zip(windows, custom, strict=True)
    ]
    if fail_after is not None:  # raises once, in its (fail_after + 1)-th on_event
        failing = RecordingModifier(start=0, fail={"on_event": fail_after})
        modifiers.insert(len(modifiers) // 2, failing)
    cut = len(modifiers) // 2 if two_stages and len(modifiers) > 1 else len(modifiers)
    groups = [modifiers[:cut], modifiers[cut:]] if cut < len(modifiers) else [modifiers]
    return [StageModifiers(group, group=f"stage{i}", index=i) for i, group in enumerate(groups)]


def retried(call: Any) -> None:
    """Make ``call``; after a modifier raises, retry it as the spec says (a few times at most)."""
    for _ in range(5):
        try:
            call()
            return
        except HookFailure:  # the scripted failure: the modifier that raised changed nothing
            continue
    raise AssertionError("the call kept failing")


def tamper(records: list[dict[str, Any]], data: st.DataObject) -> int | None:
    """Change one field of one record; the index changed, or None for the header."""
    index = data.draw(st.integers(0, len(records) - 1), label="record")
    record = records[index]
    kind = record["kind"]
    if kind == "header":
        part = data.draw(st.sampled_from(["modifiers", "stages"]), label="header part")
        entry = data.draw(st.sampled_from(record[part]), label="entry")
        choices = STATES["transition" if part == "modifiers" else "stage"]
        entry["state"] = data.draw(st.sampled_from([x for x in choices if x != entry["state"]]))
        return None
    fields = ["step", "event", "seq"]
    if kind == "call":
        fields.append("position")
    if kind in STATES:
        fields += ["from", "to"]
    if kind == "transition":
        fields.append("hooks")
    field = data.draw(st.sampled_from(fields), label="field")
    value = record[field]
    if field in ("step", "seq"):
        record[field] = value + data.draw(st.sampled_from([-1, 1, 2]))
    elif field == "event":
        record[field] = data.draw(st.sampled_from([e for e in EVENTS if e != value]))
    elif field == "position":
        record[field] = data.draw(st.sampled_from([p for p in LEGAL if p != value]))
    elif field == "hooks":
        dropped = [h for h in value if h != data.draw(st.sampled_from(value or HOOKS))]
        record[field] = dropped if dropped != value else [*value, data.draw(st.sampled_from(HOOKS))]
    else:
        record[field] = data.draw(st.sampled_from([x for x in STATES[kind] if x != value]))
    return index


@given(
    windows=st.lists(st.tuples(ms.schedule_values, ms.schedule_values), min_size=1, max_size=4),
    custom=st.lists(st.booleans(), min_size=4, max_size=4),
    two_stages=st.booleans(),
    fail_after=st.one_of(st.none(), st.integers(0, 12)),
    per_step=st.integers(1, 3),
    steps_per_epoch=ms.steps_per_epoch,
    moves=st.lists(st.integers(0, 2), max_size=40),
    finalize=st.booleans(),
    data=st.data(),
)
def test_a_legal_run_verifies_and_any_single_tamper_is_caught(
    windows: list[tuple[Any, Any]],
    custom: list[bool],
    two_stages: bool,
    fail_after: int | None,
    per_step: int,
    steps_per_epoch: int | None,
    moves: list[int],
    finalize: bool,
    data: st.DataObject,
) -> None:
    session = Session()
    session.initialize(
        recipe=build(windows, custom[: len(windows)], two_stages, fail_after),
        batches_per_step=per_step,
        steps_per_epoch=steps_per_epoch,
        trace=True,
    )
    for move in moves:
        options = LEGAL[session.position]
        name, partial = options[move % len(options)]
        retried(lambda: session.event(EventType(name), partial=partial))  # noqa: B023
    if finalize and session.position == "idle":
        retried(session.finalize)
    assert session.trace is not None
    records = session.trace.records

    result = verify(records)
    assert result.ok, result.divergence
    assert result.calls == sum(r["kind"] in ("call", "failed") for r in records)

    changed = copy.deepcopy(records)
    index = tamper(changed, data)
    result = verify(changed)
    assert result.divergence is not None, f"tampered record {index} was not caught"
    if index is not None:
        assert result.divergence.line == index + 1, result.divergence
