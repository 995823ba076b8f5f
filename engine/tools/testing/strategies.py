"""Hypothesis strategies for modifiers: events, schedules, loop streams and save points.

>>> from modfsm.engine.tools.testing import strategies as ms
>>> stream = ms.event_streams(max_batches=3)   # a SearchStrategy[Stream]

- :data:`schedule_values`, :func:`schedules` — ``start``/``end`` values: unset,
  the one-shot ``-1`` and ``0``, step counts and fractional values (epochs, when
  the stream sets ``steps_per_epoch``); :func:`opening_schedules`, only windows
  that open before they close; :func:`contract_schedules`, a mix of both.
- :data:`event_types`, :data:`steps`, :func:`events` — single events, for
  driving a modifier's ``update_event`` directly (steps may go backwards).
- :func:`event_streams` — whole training loops that follow the step grammar,
  with gradient accumulation, epoch counting, skipped and partial optimizer
  steps and calibration epochs, as a :class:`~modfsm.engine.tools.testing.scenario.Stream`.
- :func:`save_points` — where to interrupt a stream to save and resume.

Streams are drawn batch by batch, each batch a walk over the step grammar that
prefers the calls of the batch's variant (usual, no loss, skipped step, partial
step, calibration epoch first). They shrink towards fewer batches and towards
the usual batch.
"""

from __future__ import annotations

from typing import Final

from modfsm.engine.model.events import Event, EventType
from modfsm.engine.tools.testing._hypothesis import st
from modfsm.engine.tools.testing.scenario import Schedule, Stream, StreamRecorder

__all__ = [
    "PIPELINES",
    "calibration_streams",
    "contract_schedules",
    "event_streams",
    "event_types",
    "events",
    "opening_schedules",
    "save_points",
    "schedule_values",
    "schedules",
    "steps",
    "steps_per_epoch",
]

#: start/end values: unset, the one-shot conventions, step counts and fractional epochs.
schedule_values: Final = st.one_of(
    st.none(),
    st.sampled_from([-1, 0]),
    st.integers(min_value=1, max_value=6),
    st.sampled_from([0.5, 1.5, 2.25, 3.0, 0.3]),
)

#: None for step-based schedules, else optimizer steps per epoch.
steps_per_epoch: Final = st.one_of(st.none(), st.integers(min_value=1, max_value=4))

#: event types, with the two that move the lifecycle drawn more often.
event_types: Final = st.one_of(
    st.sampled_from([EventType.BATCH_START, EventType.BATCH_END]),
    st.sampled_from(list(EventType)),
)

#: global_step values; small, so windows are hit often, and free to go backwards.
steps: Final = st.integers(min_value=0, max_value=8)

# A batch's variant, and how often it is drawn: the first is the usual batch (shrinking
# prefers it); a variant whose call the grammar does not allow in a batch (a partial
# step in a step batch) leaves that batch usual.
_VARIANTS: Final = (
    ("usual", 12),
    ("no loss", 1),
    ("skipped step", 1),
    ("partial step", 1),
    ("calibration epoch first", 1),
)
# What each variant does differently: in a position, the call it takes once instead of
# the usual one.
_PREFERS: Final[dict[str, dict[str, str]]] = {
    "usual": {},
    "no loss": {"accumulating": "batch_end", "step_due": "optim_pre_step"},
    "skipped step": {"step_due_loss": "batch_end"},
    "partial step": {"accumulating_loss": "partial_step"},
    "calibration epoch first": {
        "idle": "calibration_epoch_start",
        "calibrating": "sequential_epoch_end",
    },
}
# The usual loop: in each position, the first of these the grammar allows.
_USUAL: Final = (
    "batch_start",
    "loss_calculated",
    "optim_pre_step",
    "optim_post_step",
    "batch_end",
    "calibration_epoch_end",
)


def schedules(
    starts: st.SearchStrategy[float | None] = schedule_values,
    ends: st.SearchStrategy[float | None] = schedule_values,
) -> st.SearchStrategy[Schedule]:
    """Windows ``[start, end)``; by default every kind of value, including ``end <= start``."""
    return st.builds(Schedule, start=starts, end=ends)


def contract_schedules() -> st.SearchStrategy[Schedule]:
    """The contract's default: half the time a window that opens early and closes soon
    (:func:`opening_schedules` from step 1 at the latest, for 1 or 2 steps), else any
    :func:`schedules`."""
    return st.one_of(opening_schedules(max_start=1, max_length=2), schedules())


@st.composite
def opening_schedules(draw: st.DrawFn, max_start: int = 6, max_length: int = 3) -> Schedule:
    """Windows that open before they close in every stream: whole ``start`` (``-1`` to
    ``max_start``) and ``end`` 1 to ``max_length`` steps past ``max(start, 0)``, or None.

    Steps grow by at most one per batch, so such a window always sees a
    ``BATCH_START`` inside it before a ``BATCH_END`` at or past its end (in
    epochs too). Use them for a modifier whose ``on_end`` is only meant to run
    after ``on_start``; :func:`schedules` also draws windows that never open
    (``start=None``, ``end <= start``, or no step inside), where the lifecycle
    calls ``on_end`` on a modifier that never started.
    """
    start = draw(st.integers(min_value=-1, max_value=max_start), label="start")
    length = draw(st.one_of(st.integers(1, max_length), st.none()), label="length")
    return Schedule(start, None if length is None else max(start, 0) + length)


def events(
    types: st.SearchStrategy[EventType] = event_types,
    global_steps: st.SearchStrategy[int] = steps,
    epochs: st.SearchStrategy[int | None] = steps_per_epoch,
) -> st.SearchStrategy[Event]:
    """Single events with any counters (not tied to a loop: steps may go backwards)."""
    return st.builds(
        lambda type_, step, spe, batch: Event(
            type_, global_step=step, global_batch=batch, steps_per_epoch=spe
        ),
        types,
        global_steps,
        epochs,
        st.integers(min_value=0, max_value=16),
    )


@st.composite
def event_streams(
    draw: st.DrawFn,
    *,
    max_batches: int = 8,
    batches_per_step: st.SearchStrategy[int] | None = None,
    epochs: st.SearchStrategy[int | None] | None = None,
    calibration: bool = True,
    skipped_steps: bool = True,
    partial_steps: bool = True,
) -> Stream:
    """Training loops that follow the step grammar, ending between batches.

    Each batch is drawn as one variant: usual (``batch_start``, ``loss_calculated``,
    the optimizer step when one is due, ``batch_end``), without its loss, with its
    due step skipped, with a partial step, or after a calibration epoch (with one
    ``sequential_epoch_end``). The calls come from walking the grammar (a
    :class:`~modfsm.engine.tools.testing.scenario.StreamRecorder`): in each position the call
    the variant takes there, if the grammar allows it, else the usual one.

    Args:
        max_batches: the most batches a stream has (calibration epochs come on top).
        batches_per_step: gradient accumulation (default 1 to 3, 1 most often).
        epochs: ``steps_per_epoch`` (default None, or 1 to 3).
        calibration: whether a calibration epoch may come before a batch.
        skipped_steps: whether a batch may end without its due optimizer step.
        partial_steps: whether an accumulating batch may step early.
    """
    per_step = draw(
        st.sampled_from([1, 1, 2, 3]) if batches_per_step is None else batches_per_step,
        label="batches_per_step",
    )
    spe = draw(
        st.one_of(st.none(), st.integers(min_value=1, max_value=3)) if epochs is None else epochs,
        label="steps_per_epoch",
    )
    excluded = {
        name
        for name, allowed in (
            ("calibration epoch first", calibration),
            ("skipped step", skipped_steps),
            ("partial step", partial_steps),
        )
        if not allowed
    }
    variants = [(name, weight) for name, weight in _VARIANTS if name not in excluded]
    tickets = sum(weight for _, weight in variants) - 1
    recorder = StreamRecorder(per_step, spe)
    for _ in range(draw(st.integers(min_value=0, max_value=max_batches), label="batches")):
        variant = _pick(variants, draw(st.integers(0, tickets), label="variant"))
        prefers = dict(_PREFERS[variant])
        while True:
            allowed = recorder.allowed()
            call = prefers.pop(recorder.position, None)
            if call not in allowed:
                call = next(c for c in _USUAL if c in allowed)
            recorder.apply(call)
            if call == "batch_end":
                break
    return recorder.stream()


PIPELINES: Final = ("basic", "sequential")
"""The calibration pipelines :func:`calibration_streams` draws (as ``modfsm oneshot`` runs them)."""

_STEP: Final = ("batch_start", "loss_calculated", "optim_pre_step", "optim_post_step", "batch_end")


@st.composite
def calibration_streams(
    draw: st.DrawFn,
    *,
    pipeline: str | None = None,
    max_layers: int = 3,
    max_epochs: int = 2,
    max_batches: int = 2,
) -> Stream:
    """One-shot scenarios: calibration epochs, with training batches around them.

    Each calibration epoch is ``calibration_epoch_start``, then for the *sequential*
    pipeline one ``sequential_epoch_end`` per layer block (1 to ``max_layers``; the loop
    runs a forward pass before each and passes ``modules=[model]``), for the *basic*
    one none, then ``calibration_epoch_end``. Up to ``max_batches`` training steps come
    before each epoch and after the last (0 most often when shrunk): a one-shot
    modifier must also stand a training loop around its calibration.

    Args:
        pipeline: ``basic`` or ``sequential`` (default: either, per epoch).
        max_layers: the most sequential epochs in one calibration epoch.
        max_epochs: the most calibration epochs.
        max_batches: the most training steps between them.
    """
    if pipeline is not None and pipeline not in PIPELINES:
        raise ValueError(f"pipeline must be one of {PIPELINES}, not {pipeline!r}")
    calls: list[str] = []
    for epoch in range(draw(st.integers(1, max_epochs), label="calibration epochs")):
        calls += list(_STEP) * draw(st.integers(0, max_batches), label=f"steps before {epoch}")
        chosen = pipeline or draw(st.sampled_from(PIPELINES), label=f"pipeline {epoch}")
        layers = draw(st.integers(1, max_layers), label=f"layers {epoch}") if (
            chosen == "sequential") else 0  # fmt: skip
        calls += ["calibration_epoch_start", *["sequential_epoch_end"] * layers,
                  "calibration_epoch_end"]  # fmt: skip
    calls += list(_STEP) * draw(st.integers(0, max_batches), label="steps after")
    return Stream.from_calls(calls)


def _pick(options: list[tuple[str, int]], ticket: int) -> str:
    """The option whose share of the weights holds ``ticket``."""
    for name, weight in options:
        if ticket < weight:
            return name
        ticket -= weight
    raise AssertionError("the ticket is below the sum of the weights")


def save_points(stream: Stream) -> st.SearchStrategy[int]:
    """Where to save: after that many calls of ``stream`` (0: right after ``initialize``)."""
    return st.integers(min_value=0, max_value=len(stream.calls))
