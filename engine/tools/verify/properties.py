"""What is verified about each declared machine: its structural and temporal properties.

Theory of operation
-------------------
Four machines are declared in ``engine/``: the modifier lifecycle, its calibration
variant (llm-compressor 0.13+), the stage lifecycle and the session's step grammar.
For each, a :class:`VerifiedMachine` names the declaration, the flag that marks its
terminal states, which hooks must run in any call that turns a flag on, and its
temporal properties: LTL formulas in Spin's syntax over the atoms that
:mod:`modfsm.engine.tools.verify.promela` defines for every generated model:

============================  =====================================================
atom                          holds when
============================  =====================================================
``<flag>``                    the flag is True in the current state
``was_<flag>``                the flag was True in the state before the last call
``at_<state>``                the machine is in ``<state>``
``from_<state>``              the last call was made in ``<state>``
``did_<trigger>``             the last call was ``<trigger>``
``ran_<hook>``                ``<hook>`` ran during the last call (preludes included)
``count_<hook>``              how often ``<hook>`` has run (0, 1, or 2 for "2 or more");
                              kept only for the hooks some property counts
``accepted``, ``rejected``,   the outcome of the last call
``declined``, ``ignored``,
``undefined``
``unchanged``                 the last call left the state as it was
``options``                   how many rows and rules applied to the last call
============================  =====================================================

Before the first call, ``was_*``/``from_*`` describe the initial state, no
``did_*``/``ran_*`` holds and ``options`` is 1. No formula uses ``X`` (next):
every property is stutter-invariant, so a call that raises inside a hook (it
changes nothing, see :mod:`modfsm.engine.tools.verify.model`) cannot affect a verdict.

The "Temporal properties" catalogs of ``specs/lifecycle.md``, ``specs/calibration.md``,
``specs/stage.md`` and ``specs/session.md`` list these ids, titles and formulas;
``tests/unit/test_specs.py`` checks that they equal :data:`MACHINES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

from modfsm.engine.kernel.declaration import Declaration
from modfsm.engine.model.machines import DECLARED_MACHINES

__all__ = ["MACHINES", "TemporalProperty", "VerifiedMachine", "machine_named"]


@attrs.frozen
class TemporalProperty:
    """An LTL property of one machine.

    Attributes:
        id: its catalog id (``LT1``), unique across machines.
        title: one line; the specification's catalog shows it capitalized.
        formula: the formula in Spin's LTL syntax over the atoms listed above.
    """

    id: str
    title: str
    formula: str


@attrs.frozen
class VerifiedMachine:
    """A declared machine and what is verified about it.

    Attributes:
        name: short name for reports (``lifecycle``).
        declaration: the declared machine.
        terminal_flag: the flag of the states that must be absorbing.
        flag_hooks: flag -> the hooks every call that turns it on must run.
        temporal: the temporal properties, in catalog order.
        spec: the specification document that lists them.
    """

    name: str
    declaration: Declaration
    terminal_flag: str
    flag_hooks: Mapping[str, tuple[str, ...]]
    temporal: tuple[TemporalProperty, ...]
    spec: str


def _decided(prefix: str, first: int) -> tuple[TemporalProperty, ...]:
    """The totality and determinism of every reachable call, as temporal properties."""
    return (
        TemporalProperty(f"{prefix}{first}", "every reachable call is decided by the table",
                         "[] (options >= 1)"),
        TemporalProperty(f"{prefix}{first + 1}", "no reachable call has two possible outcomes",
                         "[] (options <= 1)"),
    )  # fmt: skip


# fmt: off
_LIFECYCLE: Final = VerifiedMachine(
    name="lifecycle",
    declaration=DECLARED_MACHINES["lifecycle"],
    terminal_flag="finalized",
    flag_hooks={
        "initialized": ("on_initialize",),
        "started": ("on_start",),
        "ended": ("on_end",),
        "finalized": ("on_finalize", "release_hooks"),
    },
    temporal=(
        TemporalProperty("LT1", "finalized is absorbing",
                         "[] (finalized -> [] finalized)"),
        TemporalProperty("LT2", "started is never set without on_start running in that call",
                         "[] ((started && !was_started) -> ran_on_start)"),
        TemporalProperty("LT3", "ended is never set without on_end running in that call",
                         "[] ((ended && !was_ended) -> ran_on_end)"),
        TemporalProperty("LT4", "finalizing releases the torch hooks",
                         "[] ((finalized && !was_finalized) -> ran_release_hooks)"),
        TemporalProperty("LT5", "the window opens at most once and closes at most once",
                         "[] (count_on_start <= 1 && count_on_end <= 1)"),
        TemporalProperty("LT6", "updates run only inside the window, or with on_start or on_end",
                         "[] (ran_on_update -> (was_started || ran_on_start || ran_on_end))"),
        TemporalProperty("LT7", "an initialized, unfinalized modifier can always be finalized",
                         "[] ((did_finalize && was_initialized && !was_finalized) -> !rejected)"),
        TemporalProperty("LT8", "no event reaches a modifier before initialize or after finalize",
                         "[] (ran_on_event -> (was_initialized && !was_finalized))"),
        *_decided("LT", 9),
    ),
    spec="specs/lifecycle.md",
)

_CALIBRATION: Final = VerifiedMachine(
    name="calibration",
    declaration=DECLARED_MACHINES["calibration"],
    terminal_flag="finalized",
    flag_hooks={
        "initialized": ("on_initialize",),
        "started": ("on_start|on_calibration_start",),
        "ended": ("on_end|on_calibration_end",),
        "finalized": ("on_finalize", "release_hooks"),
    },
    temporal=(
        TemporalProperty("CAT1", "finalized is absorbing",
                         "[] (finalized -> [] finalized)"),
        TemporalProperty("CAT2", "started is set only with on_start or on_calibration_start",
                         "[] ((started && !was_started) -> "
                         "(ran_on_start || ran_on_calibration_start))"),
        TemporalProperty("CAT3", "ended is set only with on_end or on_calibration_end",
                         "[] ((ended && !was_ended) -> (ran_on_end || ran_on_calibration_end))"),
        TemporalProperty("CAT4", "calibration_start always leaves the modifier started",
                         "[] ((did_calibration_start && accepted) -> started)"),
        TemporalProperty("CAT5", "calibration_end always leaves the modifier ended",
                         "[] ((did_calibration_end && accepted) -> ended)"),
        TemporalProperty("CAT6", "sequential_epoch_end never moves and never updates",
                         "[] (did_sequential_epoch_end -> (unchanged && !ran_on_update))"),
        TemporalProperty("CAT7", "each calibration hook runs only on its own event",
                         "[] ((ran_on_calibration_start -> did_calibration_start) && "
                         "(ran_on_sequential_epoch_end -> did_sequential_epoch_end) && "
                         "(ran_on_calibration_end -> did_calibration_end))"),
        TemporalProperty("CAT8", "the window opens at most once and closes at most once",
                         "[] (count_on_start <= 1 && count_on_end <= 1)"),
        TemporalProperty("CAT9", "finalizing releases the torch hooks",
                         "[] ((finalized && !was_finalized) -> ran_release_hooks)"),
        TemporalProperty("CAT10", "no event reaches a modifier before initialize or after finalize",
                         "[] (ran_on_event -> (was_initialized && !was_finalized))"),
        *_decided("CAT", 11),
    ),
    spec="specs/calibration.md",
)

_STAGE: Final = VerifiedMachine(
    name="stage",
    declaration=DECLARED_MACHINES["stage"],
    terminal_flag="applied",
    flag_hooks={"applied": ("finalize_modifiers",)},
    temporal=(
        TemporalProperty("STT1", "applied is absorbing",
                         "[] (applied -> [] applied)"),
        TemporalProperty("STT2", "modifiers receive events only from an initialized stage",
                         "[] (ran_deliver -> from_initialized)"),
        TemporalProperty("STT3", "once finalization began, no modifier receives an event",
                         "[] ((at_finalizing || applied) -> [] !ran_deliver)"),
        TemporalProperty("STT4", "the modifiers are finalized only after finalization began",
                         "[] (ran_finalize_modifiers -> from_finalizing)"),
        TemporalProperty("STT5", "an applied stage ignores every call",
                         "[] (was_applied -> (ignored && unchanged))"),
        *_decided("STT", 6),
    ),
    spec="specs/stage.md",
)

_SESSION: Final = VerifiedMachine(
    name="session",
    declaration=DECLARED_MACHINES["session"],
    terminal_flag="finalized",
    flag_hooks={"initialized": ("setup",), "finalized": ("teardown",)},
    temporal=(
        TemporalProperty("SET1", "finalized is absorbing",
                         "[] (finalized -> [] finalized)"),
        TemporalProperty("SET2", "only batch_start opens a batch and only batch_end closes one",
                         "[] (((in_batch && !was_in_batch) -> did_batch_start) && "
                         "((was_in_batch && !in_batch) -> did_batch_end))"),
        TemporalProperty("SET3", "the optimizer steps only inside a batch",
                         "[] (((did_optim_pre_step || did_partial_step || did_optim_post_step) "
                         "&& accepted) -> (was_in_batch && in_batch))"),
        TemporalProperty("SET4", "a step is counted only after optim_pre_step in the same batch",
                         "[] (ran_count_step -> from_stepping)"),
        TemporalProperty("SET5", "modifiers receive events only between initialize and finalize",
                         "[] (ran_send -> (was_initialized && !was_finalized))"),
        TemporalProperty("SET6", "the session is finalized only between batches",
                         "[] ((finalized && !was_finalized) -> from_idle)"),
        *_decided("SET", 7),
    ),
    spec="specs/session.md",
)
# fmt: on

MACHINES: Final = (_LIFECYCLE, _CALIBRATION, _STAGE, _SESSION)
"""What is verified about each machine of
:data:`~modfsm.engine.model.machines.DECLARED_MACHINES`, in report order
(``tests/unit/test_verify_structure.py`` checks that none is left out)."""


def machine_named(name: str) -> VerifiedMachine:
    """The entry of :data:`MACHINES` called ``name``.

    Raises:
        KeyError: no such machine; the message lists the names.
    """
    for machine in MACHINES:
        if machine.name == name:
            return machine
    known = ", ".join(m.name for m in MACHINES)
    raise KeyError(f"no verified machine is called {name!r}; known: {known}")
