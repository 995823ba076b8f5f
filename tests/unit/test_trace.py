"""Traces: what a session records, and the verifier catching every kind of tampering."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

from modfsm.engine import LIFECYCLE, DeclarationError, EventType
from modfsm.engine.kernel.compiler import compile_machine
from modfsm.engine.loop.session import Session
from modfsm.engine.loop.trace import check_traceable
from modfsm.engine.runtime.stage import StageError, StageModifiers
from modfsm.engine.tools.replay import read_jsonl, verify
from tests.doubles import CalibrationRecordingModifier, EventLog, RecordingModifier


def traced_run(path: Path | None = None) -> Session:
    """A run with accumulation, epochs, a calibration epoch, default and custom guards."""
    session = Session()
    session.initialize(
        recipe=[EventLog(start=1, end=3), RecordingModifier(start=0.5), EventLog(start=-1, end=2)],
        batches_per_step=2,
        steps_per_epoch=2,
        trace=path or True,
    )
    session.event(EventType.CALIBRATION_EPOCH_START)
    session.event(EventType.CALIBRATION_EPOCH_END)
    for _ in range(9):
        session.batch_start()
        session.loss_calculated()
        if session.position == "step_due_loss":
            session.optim_pre_step()
            session.optim_post_step()
        session.batch_end()
    session.finalize()
    return session


@pytest.fixture
def records() -> list[dict[str, Any]]:
    session = traced_run()
    assert session.trace is not None
    return session.trace.records


def test_a_real_trace_follows_the_specification(records: list[dict[str, Any]]) -> None:
    result = verify(records)
    assert result.ok, result.divergence
    # initialize, the calibration epoch, 9 batches of 3 calls, 4 steps of 2 calls, finalize
    assert result.calls == 1 + 2 + 9 * 3 + 4 * 2 + 1
    assert result.transitions > 20
    header = records[0]
    assert [m["default_guards"] for m in header["modifiers"]] == [True, False, True]
    assert [m["id"] for m in header["modifiers"]] == [f"default_stage.{i}" for i in range(3)]


def test_transitions_carry_states_hooks_and_guards(records: list[dict[str, Any]]) -> None:
    starts = [r for r in records if r["kind"] == "transition" and r["to"] == "started"
              and r["from"] == "initialized"]  # fmt: skip
    assert starts[0]["hooks"] == ["on_event", "on_start", "on_update"]
    assert starts[0]["guards"] == {"should_start": True}
    call = next(r for r in records if r.get("seq") == starts[0]["seq"] and r["kind"] == "call")
    assert (call["trigger"], call["event"]) == ("batch_start", "batch_start")


def test_the_trace_file_holds_the_same_records(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    session = traced_run(path)
    assert session.trace is not None
    assert read_jsonl(path) == json.loads(json.dumps(session.trace.records))


def _first(records: list[dict[str, Any]], **match: Any) -> int:
    return next(i for i, r in enumerate(records) if all(r.get(k) == v for k, v in match.items()))


def retarget(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="transition", to="started", **{"from": "initialized"})
    records[i]["to"] = "ended"
    return i


def drop_transition(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="transition", to="ended")
    seq = records.pop(i)["seq"]
    return _first(records, kind="call", seq=seq)  # a missing transition is its call's fault


def duplicate_transition(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="transition", to="ended")
    copy_ = dict(records[i], modifier="default_stage.9")
    records.insert(i + 1, copy_)
    return i + 1


def shift_step(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="call", trigger="optim_post_step")
    records[i]["step"] += 1
    return i


def move_position(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="call", trigger="loss_calculated")
    records[i]["position"] = "step_due_loss"
    return i


def swap_calls(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="call", trigger="batch_start")
    j = _first(records, kind="call", trigger="loss_calculated")
    records[i], records[j] = records[j], records[i]
    return i


def drop_a_hook(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="transition", to="ended")
    records[i]["hooks"] = [h for h in records[i]["hooks"] if h != "on_end"]
    return i


def flip_a_custom_guard(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="transition", modifier="default_stage.1", to="started")
    records[i]["guards"] = {"should_start": False}
    return i


def reschedule(records: list[dict[str, Any]]) -> int:
    records[0]["modifiers"][0]["start"] = 2
    return _first(records, kind="transition", modifier="default_stage.0", to="started")


def relabel_an_event(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="call", trigger="loss_calculated")
    records[i]["event"] = "optim_pre_step"  # counts the same; the trigger stays loss_calculated
    return i


def renumber_a_call(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="call", trigger="batch_end")
    records[i]["seq"] += 1
    return i


def renumber_a_transition(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="transition", to="ended")
    records[i]["seq"] -= 1
    return i


def move_a_transition_in_time(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="transition", to="ended")
    records[i]["step"] += 1
    return i


def retarget_a_stage(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="stage", to="applied")
    records[i]["to"] = "finalizing"
    return i


def drop_a_stage_record(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="stage", to="initialized")
    seq = records.pop(i)["seq"]
    return _first(records, kind="call", seq=seq)


def hide_tampering_behind_a_failure(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="call", trigger="batch_start")
    records.insert(i, {"kind": "failed"})  # what hid everything after it before
    j = _first(records, kind="transition", to="ended")
    records[j]["to"] = "started"
    return i


TAMPERING: list[Callable[[list[dict[str, Any]]], int]] = [
    retarget, drop_transition, duplicate_transition, shift_step, move_position, swap_calls,
    drop_a_hook, flip_a_custom_guard, reschedule, relabel_an_event, renumber_a_call,
    renumber_a_transition, move_a_transition_in_time, retarget_a_stage, drop_a_stage_record,
    hide_tampering_behind_a_failure,
]  # fmt: skip


@pytest.mark.parametrize("tamper", TAMPERING, ids=lambda f: f.__name__)
def test_a_tampered_trace_is_caught_at_the_tampered_record(
    records: list[dict[str, Any]], tamper: Callable[[list[dict[str, Any]]], int]
) -> None:
    changed = copy.deepcopy(records)
    index = tamper(changed)
    result = verify(changed)
    assert not result.ok
    assert result.divergence is not None
    assert result.divergence.line == index + 1, result.divergence


def test_a_trace_without_its_header_is_refused(records: list[dict[str, Any]]) -> None:
    result = verify(records[1:])
    assert result.divergence is not None
    assert "header" in result.divergence.message


def test_a_run_that_failed_verifies_up_to_the_failure() -> None:
    session = Session()
    session.initialize(recipe=[RecordingModifier(start=0, fail={"on_update": 1})], trace=True)
    session.batch_start()
    with pytest.raises(Exception, match="on_update"):
        session.loss_calculated()
    assert session.trace is not None
    assert session.trace.records[-1]["kind"] == "failed"
    assert session.trace.records[-1]["stopped_at"] == {
        "stage": "default_stage", "modifier": "default_stage.0",
    }  # fmt: skip
    result = verify(session.trace.records)
    assert result.ok
    assert result.ended_in_failure


def failed_and_retried() -> list[dict[str, Any]]:
    """Two stages; the second modifier of the first stage fails once, then the call is retried."""
    session = Session()
    stages = [
        StageModifiers([EventLog(start=0), RecordingModifier(start=0, fail={"on_update": 1}),
                        EventLog(start=1)], group="one", index=0),
        StageModifiers([EventLog(start=0, end=2)], group="two", index=1),
    ]  # fmt: skip
    session.initialize(recipe=stages, trace=True)
    session.batch_start()
    with pytest.raises(Exception, match="on_update"):
        session.loss_calculated()
    for _ in range(3):
        session.loss_calculated() if session.position == "step_due" else session.batch_start()
        session.optim_pre_step()
        session.optim_post_step()
        session.batch_end()
    session.finalize()
    assert session.trace is not None
    return session.trace.records


def test_a_retried_call_verifies_with_the_partial_delivery_recorded() -> None:
    records = failed_and_retried()
    failed = _first(records, kind="failed")
    assert records[failed]["stopped_at"] == {"stage": "one", "modifier": "one.1"}
    seq = records[failed]["seq"]
    reached = [r["modifier"] for r in records if r["kind"] == "transition" and r["seq"] == seq]
    assert reached == ["one.0"]  # it completed the call (on_update) before one.1 raised
    retried = [r["modifier"] for r in records if r["kind"] == "transition" and r["seq"] == seq + 1]
    assert retried == ["one.0", "one.1", "two.0"]  # the retry reaches one.0 a second time
    result = verify(records)
    assert result.ok, result.divergence
    assert not result.ended_in_failure  # the call was retried; the run went on
    assert result.calls == sum(r["kind"] in ("call", "failed") for r in records)


def test_tampering_after_a_failed_call_is_still_caught() -> None:
    records = failed_and_retried()
    for tamper in (retarget_after_failure, drop_a_stage_record, renumber_after_failure):
        changed = copy.deepcopy(records)
        index = tamper(changed)
        result = verify(changed)
        assert result.divergence is not None, tamper.__name__
        assert result.divergence.line == index + 1, result.divergence


def retarget_after_failure(records: list[dict[str, Any]]) -> int:
    failed = _first(records, kind="failed")
    i = next(i for i in range(failed, len(records)) if records[i]["kind"] == "transition")
    records[i]["to"] = "ended"
    return i


def renumber_after_failure(records: list[dict[str, Any]]) -> int:
    i = _first(records, kind="failed") + 1
    records[i]["seq"] -= 1  # the retry reuses the failed call's number
    return i


def test_a_failed_call_that_claims_to_have_stopped_elsewhere_is_caught() -> None:
    records = failed_and_retried()
    failed = _first(records, kind="failed")
    records[failed]["stopped_at"] = None  # claims every modifier completed the call
    result = verify(records)
    assert result.divergence is not None
    assert "one.1" in result.divergence.message


def test_stage_transitions_are_recorded_and_checked() -> None:
    session = traced_run()
    assert session.trace is not None
    records = session.trace.records
    stages = [(r["seq"], r["stage"], r["from"], r["to"]) for r in records if r["kind"] == "stage"]
    last = max(r["seq"] for r in records if r["kind"] == "call")
    assert stages == [
        (1, "default_stage", "pending", "initialized"),
        (last, "default_stage", "initialized", "applied"),
    ]
    assert records[0]["stages"] == [
        {"id": "default_stage", "state": "pending",
         "modifiers": ["default_stage.0", "default_stage.1", "default_stage.2"]},
    ]  # fmt: skip


def test_a_failed_initialize_and_a_failed_finalize_verify_and_resume() -> None:
    session = Session()
    declining = RecordingModifier(returns={"on_initialize": False})
    with pytest.raises(StageError):
        session.initialize(recipe=[EventLog(), declining], trace=True)
    assert session.trace is not None
    first = session.trace.records
    failed = first[_first(first, kind="failed")]
    assert failed["stopped_at"] == {"stage": "default_stage", "modifier": "default_stage.1"}
    assert [r["kind"] for r in first] == ["header", "failed", "transition"]  # EventLog initialized
    outcome = verify(first)
    assert outcome.ok, outcome.divergence
    assert outcome.ended_in_failure
    declining = RecordingModifier(returns={"on_finalize": False})
    session.initialize(recipe=[EventLog(start=0), declining], trace=True)
    with pytest.raises(StageError):
        session.finalize()
    assert session.trace.records[-1]["kind"] == "stage"  # initialized -> finalizing
    assert verify(session.trace.records).ended_in_failure
    declining.returns.clear()  # it finalizes now
    session.finalize()  # resumes the stage: default_stage.0 is skipped, it is finalized
    result = verify(session.trace.records)
    assert result.ok, result.divergence
    assert not result.ended_in_failure


def test_refused_calls_are_not_recorded() -> None:
    session = Session()
    session.initialize(recipe=[EventLog()], trace=True)
    with pytest.raises(Exception, match="rule G5"):
        session.batch_end()
    assert session.trace is not None
    assert [r["kind"] for r in session.trace.records] == ["header", "call", "transition", "stage"]
    assert verify(session.trace.records).ok


def test_a_resumed_session_traces_from_where_it_resumed() -> None:
    first = Session()
    first.initialize(recipe=[EventLog(start=2, end=4)])
    for _ in range(3):
        first.batch_start()
        first.optim_pre_step()
        first.optim_post_step()
        first.batch_end()
    resumed = Session()
    resumed.load_state_dict(first.state_dict())
    resumed.initialize(recipe=[EventLog(start=2, end=4)], trace=True)
    for _ in range(3):
        resumed.batch_start()
        resumed.optim_pre_step()
        resumed.optim_post_step()
        resumed.batch_end()
    assert resumed.trace is not None
    header = resumed.trace.records[0]
    assert header["counters"]["global_step"] == 3
    assert header["modifiers"][0]["state"] == "started"
    assert header["resumed"] is True
    assert verify(resumed.trace.records).ok


def test_a_resumed_run_appending_to_the_same_file_verifies_as_two_segments(
    tmp_path: Path,
) -> None:
    path = tmp_path / "run.jsonl"

    def batches(session: Session, count: int) -> None:
        for _ in range(count):
            session.batch_start()
            if session.position == "step_due":
                session.optim_pre_step()
                session.optim_post_step()
            session.batch_end()

    first = Session()
    first.initialize(recipe=[EventLog(start=1, end=3)], batches_per_step=2, trace=path)
    batches(first, 3)
    checkpoint = first.state_dict()
    batches(first, 2)  # work after the checkpoint, lost when the run stops
    assert first.trace is not None
    first.trace.close()
    resumed = Session()
    resumed.load_state_dict(checkpoint)
    resumed.initialize(recipe=[EventLog(start=1, end=3)], trace=path)
    batches(resumed, 5)
    resumed.finalize()
    records = read_jsonl(path)
    assert [r["resumed"] for r in records if r["kind"] == "header"] == [False, True]
    result = verify(records)
    assert result.ok, result.divergence
    assert result.segments == 2
    second = _first(records, kind="header", resumed=True)
    records[second + 2]["step"] += 1  # tampering inside the second segment is still caught
    assert verify(records).divergence is not None


def test_a_lifecycle_whose_outcomes_look_alike_cannot_be_traced() -> None:
    rows = [dict(r) for r in LIFECYCLE.transitions]
    for row in rows:
        if row["source"] == "started" and row["trigger"] == "batch_end":
            row["dest"] = None  # both guard outcomes stay in 'started'
    ambiguous = attrs.evolve(LIFECYCLE, name="ambiguous-lifecycle", transitions=tuple(rows))
    with pytest.raises(DeclarationError, match=r"\(started, batch_end\).*cannot be told apart"):
        check_traceable(compile_machine(ambiguous, state_attr="_lc"))


def calibration_run() -> Session:
    """Both lifecycles in one session: a calibration epoch with two sequential layers, then
    training steps."""
    session = Session()
    session.initialize(
        recipe=[EventLog(start=0, end=2), CalibrationRecordingModifier(start=1, end=3)],
        trace=True,
    )
    session.event(EventType.CALIBRATION_START)
    session.event(EventType.SEQUENTIAL_EPOCH_END, modules=["layer0"])
    session.event(EventType.SEQUENTIAL_EPOCH_END, modules=["layer1"])
    session.event(EventType.CALIBRATION_END)
    for _ in range(3):
        session.batch_start()
        session.optim_pre_step()
        session.optim_post_step()
        session.batch_end()
    session.finalize()
    return session


def test_a_trace_records_each_modifiers_own_lifecycle_and_replays_against_it() -> None:
    session = calibration_run()
    assert session.trace is not None
    records = session.trace.records
    header = records[0]
    # the default table is left out, as in traces written before there were two
    assert ["lifecycle" in m for m in header["modifiers"]] == [False, True]
    assert header["modifiers"][1]["lifecycle"] == "calibration-lifecycle"
    moves = [(r["event"], r["from"], r["to"], r["hooks"]) for r in records
             if r["kind"] == "transition" and r["modifier"] == "default_stage.1"]  # fmt: skip
    assert moves[0] == (None, "created", "initialized", ["on_initialize"])
    assert moves[1:4] == [
        ("calibration_epoch_start", "initialized", "started", ["on_event", "on_calibration_start"]),
        ("sequential_epoch_end", "started", "started", ["on_event", "on_sequential_epoch_end"]),
        ("sequential_epoch_end", "started", "started", ["on_event", "on_sequential_epoch_end"]),
    ]
    assert moves[4] == (
        "calibration_epoch_end", "started", "ended", ["on_event", "on_calibration_end"],
    )  # fmt: skip
    result = verify(records)
    assert result.ok, result.divergence


def test_replay_reads_a_modifier_against_its_own_table_and_refuses_an_unknown_one() -> None:
    session = calibration_run()
    assert session.trace is not None
    records = copy.deepcopy(session.trace.records)
    # read against the first table, the calibration moves are not what it says
    del records[0]["modifiers"][1]["lifecycle"]
    result = verify(records)
    assert result.divergence is not None
    assert "default_stage.1" in result.divergence.message
    records[0]["modifiers"][1]["lifecycle"] = "my-lifecycle"
    result = verify(records)
    assert result.divergence is not None
    assert "runs the lifecycle 'my-lifecycle', which replay does not know" in (
        result.divergence.message
    )
