"""Every cell shape the compiler supports, each guard outcome and gate result.

The random declarations of ``tests/property/test_compiler_model.py`` reach every
shape only with some probability; this enumeration reaches each one every run.
A shape is the trigger's prelude (none, a notify prelude, a gate prelude) x the
cell's rows: one unguarded row moving or staying, a guarded pair with each
branch moving or staying, or no rows (rejected, ignored). For each shape, guard
outcome and gate result, three readings must agree: the compiled table,
``transitions``' dispatch of the same declaration, and the semantics of
``modfsm.engine.kernel.compiler`` applied by hand in :func:`expected`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import pytest

from modfsm.engine.kernel.compiler import (
    CompiledMachine,
    Declaration,
    HookSpec,
    Ignored,
    Rejection,
    StateSpec,
    TriggerSpec,
    compile_machine,
)
from modfsm.engine.kernel.errors import HookReturnError, IllegalTransitionError
from modfsm.engine.tools.transitions_adapter import TransitionsDriver

PRELUDES: dict[str, str | None] = {"none": None, "notify": "note", "gate": "gate"}
TRUE_HOOKS: tuple[str, ...] = ("h1", "h2")  # two, so the order is checked too
FALSE_HOOKS: tuple[str, ...] = ("h3",)
DESTS = (None, "s1")


class Shape(NamedTuple):
    """The prelude kind and the rows of cell (s0, t)."""

    prelude: str  # a key of PRELUDES
    rows: str  # "row", "pair", "reject" or "ignore"
    dest_true: str | None = None
    dest_false: str | None = None

    def __str__(self) -> str:
        if self.rows in ("reject", "ignore"):
            return f"{self.prelude}-{self.rows}"
        dests = f"{self.dest_true}" + ("" if self.rows == "row" else f"-{self.dest_false}")
        return f"{self.prelude}-{self.rows}-{dests}"


SHAPES = [
    *(Shape(p, "row", d) for p, d in itertools.product(PRELUDES, DESTS)),
    *(Shape(p, "pair", t, f) for p, t, f in itertools.product(PRELUDES, DESTS, DESTS)),
    *(Shape(p, kind) for p, kind in itertools.product(PRELUDES, ("reject", "ignore"))),
]


def declaration(shape: Shape) -> Declaration:
    """Two states; only cell (s0, t) has the shape, and (s1, t) is rejected."""
    rows: list[dict[str, Any]] = []
    rejections = [Rejection("R_s1", ("s1",), ("t",), "in s1", "stay in s0")]
    ignored: list[Ignored] = []
    if shape.rows == "row":
        rows.append({"trigger": "t", "source": "s0", "dest": shape.dest_true,
                     "before": list(TRUE_HOOKS)})  # fmt: skip
    elif shape.rows == "pair":
        rows.append({"trigger": "t", "source": "s0", "dest": shape.dest_true,
                     "conditions": "g", "before": list(TRUE_HOOKS)})  # fmt: skip
        rows.append({"trigger": "t", "source": "s0", "dest": shape.dest_false,
                     "unless": "g", "before": list(FALSE_HOOKS)})  # fmt: skip
    elif shape.rows == "reject":
        rejections.append(Rejection("R_s0", ("s0",), ("t",), "in s0", "do not"))
    else:
        ignored.append(Ignored(("s0",), ("t",), "nothing to do"))
    return Declaration(
        name=f"cell-shape-{shape}",
        flags=("moved",),
        states=(StateSpec("s0", {"moved": False}), StateSpec("s1", {"moved": True})),
        initial="s0",
        guards=("g",),
        hooks=(
            *(HookSpec(h) for h in (*TRUE_HOOKS, *FALSE_HOOKS)),
            HookSpec("note"),
            HookSpec("gate", takes_event=False, gate=True),
        ),
        triggers=(TriggerSpec("t", "t", prelude=PRELUDES[shape.prelude]),),
        event_triggers={},
        transitions=tuple(rows),
        rejections=tuple(rejections),
        ignored=tuple(ignored),
    )


class Expected(NamedTuple):
    error: str | None
    log: tuple[str, ...]
    state: str


def expected(shape: Shape, guard: bool, gate: Any) -> Expected:
    """One call of ``t`` in s0, by the rules of the ``modfsm.engine.kernel.compiler`` docstring."""
    if shape.rows == "reject":
        return Expected("illegal", (), "s0")
    if shape.rows == "ignore":
        return Expected(None, (), "s0")
    log: list[str] = []
    prelude = PRELUDES[shape.prelude]
    if prelude is not None:
        log.append(prelude)
    if prelude == "gate" and gate is not True:
        return Expected(None if gate is False else "bad-return", tuple(log), "s0")
    hooks, dest = TRUE_HOOKS, shape.dest_true
    if shape.rows == "pair":
        log.append("g")
        if not guard:
            hooks, dest = FALSE_HOOKS, shape.dest_false
    return Expected(None, (*log, *hooks), dest or "s0")


class Scripted:
    """Logs every hook, guard and prelude call; the guard and the gate follow a script."""

    def __init__(self, state: Any, guard: bool, gate: Any) -> None:
        self.current = state
        self.guard = guard
        self.gate_result = gate
        self.log: list[str] = []

    def g(self, event: Any) -> bool:
        self.log.append("g")
        return self.guard

    def gate(self, state: Any, **kwargs: Any) -> Any:
        self.log.append("gate")
        return self.gate_result

    def note(self, state: Any, event: Any, **kwargs: Any) -> None:
        self.log.append("note")

    def h1(self, state: Any, event: Any, **kwargs: Any) -> None:
        self.log.append("h1")

    def h2(self, state: Any, event: Any, **kwargs: Any) -> None:
        self.log.append("h2")

    def h3(self, state: Any, event: Any, **kwargs: Any) -> None:
        self.log.append("h3")


def outcome(fire: Callable[[], object], obj: Scripted) -> tuple[str | None, tuple[str, ...]]:
    """How ``fire()`` ended, and what it called on ``obj``."""
    try:
        fire()
    except IllegalTransitionError:
        return "illegal", tuple(obj.log)
    except (HookReturnError, TypeError):
        return "bad-return", tuple(obj.log)
    return None, tuple(obj.log)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_every_cell_shape_dispatches_as_declared(shape: Shape) -> None:
    decl = declaration(shape)
    compiled: CompiledMachine = compile_machine(decl, state_attr="current")
    for guard, gate in itertools.product([True, False], [True, False, None]):
        want = expected(shape, guard, gate)
        where = f"{shape}, guard={guard}, gate={gate}"

        fast = Scripted(compiled.initial, guard, gate)
        got = outcome(partial(fast.current.calls["t"], fast, None, "event"), fast)
        assert got == want[:2], f"compiled table at {where}"
        assert fast.current is compiled.states[want.state], f"compiled table at {where}"

        slow = Scripted(None, guard, gate)
        driver = TransitionsDriver(decl, slow)
        got = outcome(partial(driver.fire, "t", None, "event", {}), slow)
        assert got == want[:2], f"transitions dispatch at {where}"
        assert driver.state == want.state, f"transitions dispatch at {where}"


def test_the_shapes_cover_every_prelude_guard_and_destination() -> None:
    moving = {(s.prelude, s.rows, s.dest_true, s.dest_false) for s in SHAPES}
    for prelude in PRELUDES:
        assert {(prelude, "row", d, None) for d in DESTS} <= moving
        assert {(prelude, "pair", t, f) for t in DESTS for f in DESTS} <= moving
    assert len(SHAPES) == len(PRELUDES) * (2 + 4 + 2)
