"""Mutated declarations for the verification tests, and the Spin requirement.

Each mutant changes the real declaration at the ``Declaration`` level (never
through the compiler, which refuses some of them) in one way the structural
proofs and the model checker must catch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs
import pytest

from modfsm.engine.kernel.declaration import Declaration, Ignored, Rejection
from modfsm.engine.tools.verify.properties import VerifiedMachine, machine_named
from modfsm.engine.tools.verify.spin import SpinNotFoundError, find_tools

LIFECYCLE = machine_named("lifecycle")
CALIBRATION = machine_named("calibration")
STAGE = machine_named("stage")
SESSION = machine_named("session")


def require_spin() -> None:
    """Skip without spin, unless ``MODFSM_REQUIRE_SPIN`` is set (``make test``): then fail."""
    try:
        find_tools()
    except SpinNotFoundError as missing:
        if os.environ.get("MODFSM_REQUIRE_SPIN"):
            pytest.fail(f"MODFSM_REQUIRE_SPIN is set and {missing}")
        pytest.skip(f"{missing} (make test installs it and sets MODFSM_REQUIRE_SPIN=1)")


def edited(
    machine: VerifiedMachine,
    *,
    rows: Mapping[int, Mapping[str, Any] | None] | None = None,
    added: tuple[Mapping[str, Any], ...] = (),
    drop_rules: tuple[str, ...] = (),
    narrow_rules: Mapping[str, tuple[str, ...]] | None = None,
    rule_triggers: Mapping[str, tuple[str, ...]] | None = None,
    new_rules: tuple[Rejection, ...] = (),
    ignored: tuple[Ignored, ...] | None = None,
) -> VerifiedMachine:
    """``machine`` with its table edited.

    Args:
        machine: what to edit.
        rows: row index -> its replacement, or None to remove it.
        added: rows appended to the table.
        drop_rules: rejection rules removed.
        narrow_rules: rejection rule -> the states it keeps.
        rule_triggers: rejection rule -> the triggers it keeps.
        new_rules: rejection rules appended.
        ignored: the ignore rules that replace the declared ones.
    """
    decl = machine.declaration
    table: list[Mapping[str, Any]] = []
    for index, row in enumerate(decl.transitions):
        replacement = (rows or {}).get(index, row)
        if replacement is not None:
            table.append(replacement)
    table.extend(added)
    rejections = tuple(
        attrs.evolve(
            rule,
            states=(narrow_rules or {}).get(rule.rule, rule.states),
            triggers=(rule_triggers or {}).get(rule.rule, rule.triggers),
        )
        for rule in decl.rejections
        if rule.rule not in drop_rules
    )
    mutant: Declaration = attrs.evolve(
        decl,
        name=f"{decl.name}-mutant",
        transitions=tuple(table),
        rejections=(*rejections, *new_rules),
        ignored=decl.ignored if ignored is None else ignored,
    )
    return attrs.evolve(machine, declaration=mutant)


def with_before(machine: VerifiedMachine, index: int, hooks: list[str]) -> VerifiedMachine:
    """``machine`` with row ``index``'s ``before`` hooks replaced."""
    row = dict(machine.declaration.transitions[index])
    row["before"] = hooks
    return edited(machine, rows={index: row})


# --- the mutants the verification must catch ------------------------------------------

#: initialized -> started on batch_start forgets on_start (row 2 keeps only on_update).
STARTS_WITHOUT_ON_START = with_before(LIFECYCLE, 2, ["on_update"])

#: a finalized modifier can be initialized again, back to created (R2 replaced by a row).
FINALIZED_LEFT = edited(
    LIFECYCLE,
    added=(
        {
            "trigger": "initialize",
            "source": list(LIFECYCLE.declaration.rejections[1].states),
            "dest": "created",
        },
    ),
    drop_rules=("R2",),
)

#: finalize on a created modifier is neither moved nor rejected (R6 dropped).
FINALIZE_UNDECIDED = edited(LIFECYCLE, drop_rules=("R6",))

#: a second, unguarded batch_start row from started overlaps row 7.
OVERLAPPING_ROW = edited(
    LIFECYCLE,
    added=({"trigger": "batch_start", "source": "started", "dest": "ended", "before": "on_end"},),
)

#: the row for "not should_start" from created is gone: half of a guarded pair.
HALF_GUARDED_PAIR = edited(LIFECYCLE, rows={1: None})

#: initialize always starts (row 1 goes to started as well): initialized is never entered.
NEVER_WAITS = edited(
    LIFECYCLE,
    rows={1: {"trigger": "initialize", "source": "created", "dest": "started",
              "unless": "should_start", "before": "on_start"}},
)  # fmt: skip

#: the session can be finalized in the middle of an optimizer step (G16 no longer covers it).
FINALIZED_MID_STEP = edited(
    SESSION,
    added=({"trigger": "finalize", "source": "stepping", "dest": "finalized"},),
    narrow_rules={"G16": ("accumulating", "accumulating_loss", "step_due", "step_due_loss",
                          "stepped", "calibrating")},
)  # fmt: skip

#: a finalizing stage forwards events (S2 replaced by a row).
STAGE_FORWARDS_WHILE_FINALIZING = edited(
    STAGE,
    added=({"trigger": "update", "source": "finalizing", "dest": None, "before": "deliver"},),
    drop_rules=("S2",),
)


# --- one mutant per machine for the properties the mutants above leave unviolated, so that
# every temporal property is shown able to fail ------------------------------------------

#: on_end forgotten (row 8), release_hooks forgotten (row 18), finalize rejected in started
#: (row 19 replaced by a rule), other_event accepted before initialize (R3 narrowed).
LIFECYCLE_FAULTS = edited(
    LIFECYCLE,
    rows={
        8: {**LIFECYCLE.declaration.transitions[8], "before": ["on_update"]},
        18: {**LIFECYCLE.declaration.transitions[18], "before": []},
        19: None,
    },
    added=({"trigger": "other_event", "source": "created", "dest": None},),
    rule_triggers={"R3": ("batch_start", "batch_end")},
    new_rules=(Rejection("R7", ("started",), ("finalize",), "busy", "wait."),),
)

#: an applied stage can be initialized again (back to pending); finalize applies an
#: initialized stage directly; S1 dropped; begin_finalize in pending both moves and is rejected.
STAGE_FAULTS = edited(
    STAGE,
    added=(
        {"trigger": "initialize", "source": "applied", "dest": "pending"},
        {"trigger": "finalize", "source": "initialized", "dest": "applied"},
        {"trigger": "begin_finalize", "source": "pending", "dest": None},
    ),
    drop_rules=("S1",),
    narrow_rules={"S4": ("pending",)},
    ignored=(Ignored(("applied",), ("update", "begin_finalize", "finalize"), "applied"),),
)

#: a finalized session can be initialized again; optim_post_step is accepted between batches
#: and counts a step; batch_end after a step counts one too; events are sent before
#: initialize; G15 dropped; a second, unguarded batch_start row.
SESSION_FAULTS = edited(
    SESSION,
    rows={9: {**SESSION.declaration.transitions[9], "before": ["absorb", "send", "count_step"]}},
    added=(
        {"trigger": "initialize", "source": "finalized", "dest": "idle", "before": []},
        {"trigger": "optim_post_step", "source": "idle", "dest": None, "before": ["count_step"]},
        {"trigger": "sequential_epoch_end", "source": "created", "dest": None, "before": ["send"]},
        {"trigger": "batch_start", "source": "idle", "dest": "idle"},
    ),
    drop_rules=("G15",),
    narrow_rules={"G3": ()},
    rule_triggers={
        "G1": ("batch_start", "loss_calculated", "optim_pre_step", "partial_step",
               "optim_post_step", "batch_end", "calibration_epoch_start",
               "calibration_epoch_end", "finalize"),
        "G5": ("loss_calculated", "optim_pre_step", "partial_step", "batch_end"),
    },
    new_rules=(
        Rejection("G17", ("calibrating",), ("optim_post_step",), "calibrating", "wait."),
        Rejection("G18", ("finalized",), tuple(t for t in SESSION.declaration.trigger_names()
                                               if t not in ("initialize", "lifecycle_event")),
                  "already finalized", "build a new Session."),
    ),
)  # fmt: skip

#: the calibration lifecycle: calibration_start marks started without its hook (row 22),
#: calibration_end marks ended without its hook (row 27), sequential_epoch_end updates
#: (row 26), batch_start in started runs on_calibration_start (row 7), finalize from
#: initialized forgets release_hooks (row 18).
CALIBRATION_HOOKS_FORGOTTEN = edited(
    CALIBRATION,
    rows={
        22: {**CALIBRATION.declaration.transitions[22], "before": []},
        27: {**CALIBRATION.declaration.transitions[27], "before": []},
        26: {**CALIBRATION.declaration.transitions[26],
             "before": ["on_sequential_epoch_end", "on_update"]},
        7: {**CALIBRATION.declaration.transitions[7],
            "before": ["on_update", "on_calibration_start"]},
        18: {**CALIBRATION.declaration.transitions[18], "before": []},
    },
)  # fmt: skip

#: calibration_start in started goes back to initialized (row 23); calibration_end in
#: started stays (row 28); calibration_start after the window runs on_start again (row 24).
CALIBRATION_FLAGS_WRONG = edited(
    CALIBRATION,
    rows={
        23: {**CALIBRATION.declaration.transitions[23], "dest": "initialized"},
        28: {**CALIBRATION.declaration.transitions[28], "dest": None},
        24: {**CALIBRATION.declaration.transitions[24],
             "before": ["on_calibration_start", "on_start"]},
    },
)  # fmt: skip

#: a finalized modifier can be initialized again (R2 replaced by a row); finalize before
#: initialize is undecided (R6 dropped); a second calibration_start row from started;
#: other_event is accepted before initialize (R3 narrowed).
CALIBRATION_UNDECIDED = edited(
    CALIBRATION,
    added=(
        {"trigger": "initialize",
         "source": list(CALIBRATION.declaration.rejections[1].states), "dest": "created"},
        {"trigger": "calibration_start", "source": "started", "dest": "ended"},
        {"trigger": "other_event", "source": "created", "dest": None},
    ),
    drop_rules=("R2", "R6"),
    rule_triggers={"R3": ("batch_start", "batch_end", "calibration_start",
                          "sequential_epoch_end", "calibration_end")},
)  # fmt: skip

#: every mutant above, by name
MUTANTS = {
    name: value
    for name, value in sorted(globals().items())
    if isinstance(value, VerifiedMachine)
    and name.isupper()
    and value.declaration.name.endswith("-mutant")
}
