"""The session's step grammar, declared once (``Session`` compiles it).

Theory of operation
-------------------
A training loop reports each batch as::

    batch_start  loss_calculated?  (optim_pre_step  optim_post_step)?  batch_end

With gradient accumulation (``batches_per_step = N``) the optimizer steps on
every N-th batch: a batch that completes N accumulated batches is a *step
batch* and reports the optimizer step, or ends without one when the step was
skipped (a GradScaler that found inf/NaN gradients: ``global_step`` stays and
the accumulation starts over); the others must not step (unless the loop
steps early on purpose: ``optim_pre_step(partial=True)``, for a last,
incomplete accumulation). The guard ``completes_accumulation`` decides at
``batch_start`` which kind of batch begins, so the states below say what is
expected next. Calibration (one-shot) reports ``calibration_epoch_start``,
any number of ``sequential_epoch_end``, then ``calibration_epoch_end``.

Counters (see ``specs/session.md``): ``global_batch`` counts completed
batches and ``global_step`` completed optimizer steps. Each event carries the
counters *as of that event*: ``optim_post_step`` already counts its step and
``batch_end`` its batch (:data:`COUNT_AFTER`). The session builds the event
first, the cell's hooks ``absorb`` (store batch/loss on the state), ``send``
(to the stages) and then commit the counters, so a rejected event changes
nothing and a failing modifier leaves the counters and position as they were.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final, Protocol

from modfsm.engine.kernel.compiler import Declaration, HookSpec, Rejection, StateSpec, TriggerSpec
from modfsm.engine.model.events import EventType

__all__ = [
    "COUNTER_HOOKS",
    "COUNT_AFTER",
    "SESSION_GRAMMAR",
    "Counters",
    "SessionState",
    "completes_accumulation",
]


class SessionState(enum.StrEnum):
    """The states of :data:`SESSION_GRAMMAR` (the session's position in the loop)."""

    CREATED = "created"
    IDLE = "idle"
    ACCUMULATING = "accumulating"
    ACCUMULATING_LOSS = "accumulating_loss"
    STEP_DUE = "step_due"
    STEP_DUE_LOSS = "step_due_loss"
    STEPPING = "stepping"
    STEPPED = "stepped"
    CALIBRATING = "calibrating"
    FINALIZED = "finalized"


#: event type -> (steps, batches) the event itself completes; it carries the counters after them.
COUNT_AFTER: Final = {
    EventType.OPTIM_POST_STEP: (1, 0),
    EventType.BATCH_END: (0, 1),
}


class Counters(Protocol):
    """What the counting rules read and write (a ``Session``, or a replay's copy)."""

    global_step: int
    global_batch: int
    batches_since_step: int


def completes_accumulation(counters: Counters, batches_per_step: int) -> bool:
    """The grammar's guard: the batch beginning now completes ``batches_per_step`` batches."""
    return counters.batches_since_step + 1 >= batches_per_step


def _count_step(counters: Counters, step: int, batch: int) -> None:
    counters.global_step = step
    counters.batches_since_step = 0


def _close_accumulating_batch(counters: Counters, step: int, batch: int) -> None:
    counters.global_batch = batch
    counters.batches_since_step += 1


def _close_step_batch(counters: Counters, step: int, batch: int) -> None:
    counters.global_batch = batch


def _close_skipped_batch(counters: Counters, step: int, batch: int) -> None:
    counters.global_batch = batch
    counters.batches_since_step = 0  # global_step stays; the accumulation starts over


COUNTER_HOOKS: Final[dict[str, Callable[[Counters, int, int], None]]] = {
    "count_step": _count_step,
    "close_accumulating_batch": _close_accumulating_batch,
    "close_step_batch": _close_step_batch,
    "close_skipped_batch": _close_skipped_batch,
}
"""The grammar's counter hooks: what each commits, given the counters its event carries
(``step``, ``batch``: :data:`COUNT_AFTER` applied). ``Session`` runs them as its hooks and
the trace replay applies them to its copy: the rules are written once, here."""

_OPEN_BATCH: Final = (
    "accumulating",
    "accumulating_loss",
    "step_due",
    "step_due_loss",
    "stepping",
    "stepped",
)
_BEFORE_OPTIMIZER: Final = ("accumulating", "accumulating_loss", "step_due", "step_due_loss")
_LIVE: Final = ("idle", *_OPEN_BATCH, "calibrating")
_EVENTS: Final = (
    "batch_start",
    "loss_calculated",
    "optim_pre_step",
    "partial_step",
    "optim_post_step",
    "batch_end",
    "calibration_epoch_start",
    "sequential_epoch_end",
    "calibration_epoch_end",
)
_SEND: Final = ["absorb", "send"]


def _flags(initialized: int, in_batch: int, finalized: int) -> dict[str, bool]:
    return {
        "initialized": bool(initialized),
        "in_batch": bool(in_batch),
        "finalized": bool(finalized),
    }


# fmt: off
SESSION_GRAMMAR: Final = Declaration(
    name="session-grammar",
    flags=("initialized", "in_batch", "finalized"),
    states=(
        StateSpec("created", _flags(0, 0, 0), "built; initialize not yet called"),
        StateSpec("idle", _flags(1, 0, 0), "between batches"),
        StateSpec("accumulating", _flags(1, 1, 0), "a batch that accumulates gradients began"),
        StateSpec("accumulating_loss", _flags(1, 1, 0), "an accumulating batch reported its loss"),
        StateSpec("step_due", _flags(1, 1, 0), "a batch that completes the accumulation began; the optimizer step is due (or skipped)"),
        StateSpec("step_due_loss", _flags(1, 1, 0), "that batch reported its loss"),
        StateSpec("stepping", _flags(1, 1, 0), "optim_pre_step reported"),
        StateSpec("stepped", _flags(1, 1, 0), "optim_post_step reported; the batch may end"),
        StateSpec("calibrating", _flags(1, 0, 0), "inside a calibration epoch"),
        StateSpec("finalized", _flags(1, 0, 1), "finalize completed"),
    ),
    initial="created",
    guards=("completes_accumulation",),
    hooks=(
        HookSpec("setup", takes_event=False, gate=True),
        HookSpec("teardown", takes_event=False, gate=True),
        HookSpec("absorb"),
        HookSpec("send"),
        HookSpec("count_step"),
        HookSpec("close_accumulating_batch"),
        HookSpec("close_step_batch"),
        HookSpec("close_skipped_batch"),
        HookSpec("check_lockstep"),
        HookSpec("keep_resume"),
    ),
    triggers=(
        TriggerSpec("initialize", "session.initialize", "setup", "Session.initialize(...)"),
        TriggerSpec("batch_start", "session.batch_start", None, "BATCH_START"),
        TriggerSpec("loss_calculated", "session.loss_calculated", None, "LOSS_CALCULATED"),
        TriggerSpec("optim_pre_step", "session.optim_pre_step", None, "OPTIM_PRE_STEP on a step batch"),
        TriggerSpec("partial_step", "session.optim_pre_step(partial=True)", None, "OPTIM_PRE_STEP before the accumulation is complete"),
        TriggerSpec("optim_post_step", "session.optim_post_step", None, "OPTIM_POST_STEP"),
        TriggerSpec("batch_end", "session.batch_end", None, "BATCH_END"),
        TriggerSpec("calibration_epoch_start", "session.event(CALIBRATION_EPOCH_START)", None, "CALIBRATION_EPOCH_START"),
        TriggerSpec("sequential_epoch_end", "session.event(SEQUENTIAL_EPOCH_END)", None, "SEQUENTIAL_EPOCH_END"),
        TriggerSpec("calibration_epoch_end", "session.event(CALIBRATION_EPOCH_END)", None, "CALIBRATION_EPOCH_END"),
        TriggerSpec("lifecycle_event", "session.event", None, "INITIALIZE or FINALIZE sent as an event"),
        TriggerSpec("finalize", "session.finalize", "teardown", "Session.finalize()"),
        TriggerSpec("agree", "session.agree", None, "Session.agree(): the ranks compare their states"),
        TriggerSpec("state_dict", "session.state_dict", None, "Session.state_dict(): save"),
        TriggerSpec("load_state_dict", "session.load_state_dict", None, "Session.load_state_dict(saved): resume at initialize"),
    ),
    event_triggers={
        EventType.INITIALIZE: "lifecycle_event",
        EventType.FINALIZE: "lifecycle_event",
        EventType.BATCH_START: "batch_start",
        EventType.LOSS_CALCULATED: "loss_calculated",
        EventType.BATCH_END: "batch_end",
        EventType.CALIBRATION_EPOCH_START: "calibration_epoch_start",
        EventType.SEQUENTIAL_EPOCH_END: "sequential_epoch_end",
        EventType.CALIBRATION_EPOCH_END: "calibration_epoch_end",
        EventType.OPTIM_PRE_STEP: "optim_pre_step",
        EventType.OPTIM_POST_STEP: "optim_post_step",
    },
    transitions=(
        {"trigger": "initialize",              "source": "created",                                "dest": "idle"},
        {"trigger": "batch_start",             "source": "idle",                                   "dest": "step_due",          "conditions": "completes_accumulation", "before": _SEND},
        {"trigger": "batch_start",             "source": "idle",                                   "dest": "accumulating",      "unless": "completes_accumulation",     "before": _SEND},
        {"trigger": "loss_calculated",         "source": "accumulating",                           "dest": "accumulating_loss", "before": _SEND},
        {"trigger": "loss_calculated",         "source": "step_due",                               "dest": "step_due_loss",     "before": _SEND},
        {"trigger": "optim_pre_step",          "source": ["step_due", "step_due_loss"],            "dest": "stepping",          "before": _SEND},
        {"trigger": "partial_step",            "source": ["accumulating", "accumulating_loss"],    "dest": "stepping",          "before": _SEND},
        {"trigger": "optim_post_step",         "source": "stepping",                               "dest": "stepped",           "before": [*_SEND, "count_step"]},
        {"trigger": "batch_end",               "source": ["accumulating", "accumulating_loss"],    "dest": "idle",              "before": [*_SEND, "close_accumulating_batch"]},
        {"trigger": "batch_end",               "source": "stepped",                                "dest": "idle",              "before": [*_SEND, "close_step_batch"]},
        {"trigger": "batch_end",               "source": ["step_due", "step_due_loss"],            "dest": "idle",              "before": [*_SEND, "close_skipped_batch"]},
        {"trigger": "calibration_epoch_start", "source": "idle",                                   "dest": "calibrating",       "before": _SEND},
        {"trigger": "sequential_epoch_end",    "source": "calibrating",                            "dest": None,                "before": _SEND},
        {"trigger": "calibration_epoch_end",   "source": "calibrating",                            "dest": "idle",              "before": _SEND},
        {"trigger": "finalize",                "source": "idle",                                   "dest": "finalized"},
        {"trigger": "agree",                   "source": list(_LIVE),                              "dest": None,                "before": "check_lockstep"},
        {"trigger": "state_dict",              "source": list(_LIVE),                              "dest": None},
        {"trigger": "load_state_dict",         "source": "created",                                "dest": None,                "before": "keep_resume"},
    ),
    rejections=(
        Rejection("G1", ("created",), (*_EVENTS, "finalize", "agree", "state_dict"), "not initialized",
                  "call session.initialize(model=..., recipe=...) first."),
        Rejection("G2", ("created", *_LIVE, "finalized"), ("lifecycle_event",), "INITIALIZE and FINALIZE are not loop events",
                  "call session.initialize(...) or session.finalize() instead."),
        Rejection("G3", ("finalized",), ("initialize", *_EVENTS, "finalize", "agree", "state_dict", "load_state_dict"), "already finalized",
                  "build a new Session for another run."),
        Rejection("G4", _LIVE, ("initialize",), "already initialized",
                  "initialize a session once; build a new Session for another run."),
        Rejection("G5", ("idle", "calibrating"), ("loss_calculated", "optim_pre_step", "partial_step", "optim_post_step", "batch_end"), "no batch is open",
                  "call session.batch_start(batch) first."),
        Rejection("G6", (*_OPEN_BATCH, "calibrating"), ("batch_start",), "the current batch or calibration epoch has not ended",
                  "end it first (session.batch_end() or the CALIBRATION_EPOCH_END event)."),
        Rejection("G7", ("accumulating_loss", "step_due_loss", "stepping", "stepped"), ("loss_calculated",), "the loss of this batch was already reported, or the optimizer step began",
                  "report the loss once per batch, before the optimizer step."),
        Rejection("G8", ("accumulating", "accumulating_loss"), ("optim_pre_step", "optim_post_step"), "this batch does not complete the gradient accumulation, so no optimizer step is due",
                  "step only every batches_per_step batches, or call optim_pre_step(partial=True) to step early on purpose."),
        Rejection("G9", ("step_due", "step_due_loss"), ("partial_step",), "this batch completes the accumulation, so the step is not partial",
                  "call session.optim_pre_step() without partial=True."),
        Rejection("G10", ("step_due", "step_due_loss"), ("optim_post_step",), "optim_pre_step was not reported",
                  "call session.optim_pre_step() before optimizer.step() (or pass wrap_optimizer=True)."),
        Rejection("G11", ("stepping",), ("optim_pre_step", "partial_step", "batch_end"), "optim_pre_step was reported and optim_post_step was not",
                  "call session.optim_post_step() after optimizer.step()."),
        Rejection("G12", ("stepped",), ("optim_pre_step", "partial_step", "optim_post_step"), "the optimizer already stepped in this batch",
                  "end the batch with session.batch_end()."),
        Rejection("G13", ("idle", *_OPEN_BATCH), ("sequential_epoch_end", "calibration_epoch_end"), "no calibration epoch is open",
                  "send CALIBRATION_EPOCH_START first."),
        Rejection("G14", _OPEN_BATCH, ("calibration_epoch_start",), "a batch is open",
                  "end the batch before calibrating."),
        Rejection("G15", ("calibrating",), ("calibration_epoch_start",), "a calibration epoch is already open",
                  "send CALIBRATION_EPOCH_END first."),
        Rejection("G16", (*_OPEN_BATCH, "calibrating"), ("finalize",), "a batch or calibration epoch is open",
                  "end it before session.finalize()."),
        Rejection("G17", _LIVE, ("load_state_dict",), "already initialized: a saved state loads into a new Session, before initialize",
                  "build a new Session, load the state, then initialize it."),
    ),
)
# fmt: on
