"""A declaration read row by row: the abstract machine every check explores.

Theory of operation
-------------------
The structural proofs (:mod:`modfsm.engine.tools.verify.structure`) and the Promela
generator (:mod:`modfsm.engine.tools.verify.promela`) read a
:class:`~modfsm.engine.kernel.declaration.Declaration` directly, never through
:func:`modfsm.engine.kernel.compiler.compile_machine`, so that they
also work on declarations the compiler would refuse (a mutated table must be
*reported*, not rejected before it is looked at).

Guards and gate preludes are opaque: every valuation is explored. One call
from a state, with a trigger and a guard valuation, has as its *options*
every rejection rule and ignore rule that covers the cell and every row of
the cell whose guard literals the valuation satisfies. A well-formed,
deterministic and total declaration has exactly one option for every cell
and valuation. The outcome of taking an option (:class:`Step`) follows
:mod:`modfsm.engine.kernel.compiler`:

- a rejection: the call raises, nothing runs, the state stays (``rejected``);
- an ignore rule: nothing runs, the state stays (``ignored``);
- a row: the trigger's prelude runs first; a gate prelude may return False
  (``declined``: nothing else runs, the state stays); otherwise the row's
  ``before`` hooks run and the state becomes its ``dest`` (``accepted``);
- no option at all: the declaration says nothing (``undefined``).

A call that raises inside a hook changes nothing either (the engine commits
only after every hook returned), so as far as states go it is a stutter; it is
not explored separately.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import attrs

from modfsm.engine.kernel.declaration import SUPPORTED_ROW_KEYS, Declaration, Ignored, Rejection

__all__ = [
    "Option",
    "Outcome",
    "Row",
    "Step",
    "cell_guards",
    "format_path",
    "options",
    "read_rows",
    "steps_from",
    "valuations",
    "well_formed_problems",
]


class Outcome(enum.StrEnum):
    """What a call did."""

    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DECLINED = "declined"
    IGNORED = "ignored"
    UNDEFINED = "undefined"


@attrs.frozen
class Row:
    """One declared transition row, normalised.

    Attributes:
        index: its position in ``Declaration.transitions``.
        trigger: the trigger it answers.
        sources: the states it applies in.
        dest: the next state, or None to stay.
        literals: (guard, required value) pairs; the row applies when all hold.
        hooks: its ``before`` hooks, in order.
    """

    index: int
    trigger: str
    sources: tuple[str, ...]
    dest: str | None
    literals: tuple[tuple[str, bool], ...]
    hooks: tuple[str, ...]

    def applies(self, valuation: Mapping[str, bool]) -> bool:
        """Whether the row's guard literals hold under ``valuation``."""
        return all(valuation[guard] is value for guard, value in self.literals)

    def describe(self) -> str:
        """``row 2 (batch_start from initialized [should_start] -> started)``."""
        guards = ", ".join(g if v else f"not {g}" for g, v in self.literals)
        shown = f" [{guards}]" if guards else ""
        dest = "(stays)" if self.dest is None else self.dest
        return f"row {self.index} ({self.trigger} from {', '.join(self.sources)}{shown} -> {dest})"


Option = Row | Rejection | Ignored
"""What one call may do in a cell: a row, a rejection rule or an ignore rule."""


@attrs.frozen
class Step:
    """One call of the abstract machine, and what it did.

    Attributes:
        source: the state the call was made in.
        trigger: the trigger.
        guards: the values of the guards the cell's rows consult.
        gate: the gate prelude's result, or None when no gate ran.
        outcome: what the call did.
        hooks: the hooks that ran, prelude first.
        dest: the state after the call.
        rule: the rejection rule's id, for ``rejected``.
        row: the row's index, for ``accepted``.
        options: how many rows and rules applied (more than 1: the table is
            ambiguous there, and this is one of the outcomes).
    """

    source: str
    trigger: str
    guards: tuple[tuple[str, bool], ...]
    gate: tuple[str, bool] | None
    outcome: Outcome
    hooks: tuple[str, ...]
    dest: str
    rule: str | None = None
    row: int | None = None
    options: int = 1

    def __str__(self) -> str:
        """UML-like: ``batch_start [should_start=true] / on_event, on_start -> started``."""
        shown = ([self.gate] if self.gate is not None else []) + list(self.guards)
        text = self.trigger
        if shown:
            text += " [" + ", ".join(f"{n}={str(v).lower()}" for n, v in shown) + "]"
        if self.hooks:
            text += " / " + ", ".join(self.hooks)
        ambiguous = f" (ambiguous: {self.options} rows or rules apply)" if self.options > 1 else ""
        if self.outcome is Outcome.ACCEPTED:
            return f"{text} -> {self.dest}{ambiguous}"
        if self.outcome is Outcome.REJECTED:
            return f"{text} -> rejected by {self.rule} (stays {self.dest}){ambiguous}"
        if self.outcome is Outcome.UNDEFINED:
            return (
                f"{text} -> UNDEFINED: no row, rejection or ignore rule covers "
                f"({self.source}, {self.trigger})"
            )
        return f"{text} -> {self.outcome.value} (stays {self.dest}){ambiguous}"


def format_path(steps: Sequence[Step], *, cycle_start: int | None = None) -> str:
    """Steps joined by ``; `` (an infinite counterexample marks where its cycle starts)."""
    parts = [str(step) for step in steps]
    if cycle_start is not None and 0 <= cycle_start < len(parts):
        parts[cycle_start] = "(cycle:) " + parts[cycle_start]
    return "; ".join(parts) if parts else "(the initial state)"


# --- reading the declaration -------------------------------------------------------------


def _names(value: Any) -> tuple[str, ...] | None:
    """A ``transitions``-style str-or-list field as a tuple, or None if it is neither."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
        return None
    return tuple(items)


def well_formed_problems(decl: Declaration) -> list[str]:
    """Everything in ``decl`` that names something it does not declare, one sentence each.

    The other checks read a declaration only when this list is empty.
    """
    problems: list[str] = []
    states = set(decl.state_names())
    triggers = set(decl.trigger_names())
    guards = set(decl.guards)
    hooks = {h.name for h in decl.hooks}
    for kind, names in (("state", decl.state_names()), ("trigger", decl.trigger_names())):
        doubles = sorted({n for n in names if names.count(n) > 1})
        if doubles:
            problems.append(f"{kind}s declared twice: {', '.join(doubles)}")
    if decl.initial not in states:
        problems.append(f"the initial state {decl.initial!r} is not declared")
    for spec in decl.states:
        if set(spec.flags) != set(decl.flags):
            problems.append(f"state {spec.name} defines flags {sorted(spec.flags)}, "
                            f"expected {sorted(decl.flags)}")  # fmt: skip
    for trig in decl.triggers:
        if trig.prelude is not None and trig.prelude not in hooks:
            problems.append(
                f"trigger {trig.name}'s prelude {trig.prelude!r} is not a declared hook"
            )
    for index, entry in enumerate(decl.transitions):
        where = f"row {index}"
        row: object = entry  # a mutated or hand-built declaration may hold anything
        if not isinstance(row, Mapping):
            problems.append(f"{where} is a {type(row).__name__}, not a dict")
            continue
        for key in sorted(set(row) - SUPPORTED_ROW_KEYS):
            problems.append(f"{where} uses {key!r}, which has no declared semantics")
        if row.get("trigger") not in triggers:
            problems.append(f"{where}: trigger {row.get('trigger')!r} is not declared")
        sources = _names(row.get("source"))
        if not sources or any(s not in states for s in sources):
            problems.append(f"{where}: source {row.get('source')!r} is not a declared state")
        if "dest" not in row or (row["dest"] is not None and row["dest"] not in states):
            problems.append(f"{where}: dest {row.get('dest')!r} is not a declared state or None")
        for key in ("conditions", "unless"):
            named = _names(row.get(key))
            if named is None or any(g not in guards for g in named):
                problems.append(f"{where}: {key} {row.get(key)!r} names an undeclared guard")
        before = _names(row.get("before"))
        if before is None or any(h not in hooks for h in before):
            problems.append(f"{where}: before {row.get('before')!r} names an undeclared hook")
    rules: tuple[Rejection | Ignored, ...] = (*decl.rejections, *decl.ignored)
    for rule in rules:
        label = rule.rule if isinstance(rule, Rejection) else f"ignore rule ({rule.reason})"
        for state, trigger in itertools.product(rule.states, rule.triggers):
            if state not in states or trigger not in triggers:
                problems.append(f"{label} covers ({state}, {trigger}), not a declared cell")
    return problems


def read_rows(decl: Declaration) -> tuple[Row, ...]:
    """The declaration's rows, normalised (call on a well-formed declaration)."""
    rows = []
    for index, row in enumerate(decl.transitions):
        literals = tuple((g, True) for g in _names(row.get("conditions")) or ()) + tuple(
            (g, False) for g in _names(row.get("unless")) or ()
        )
        rows.append(
            Row(
                index=index,
                trigger=row["trigger"],
                sources=_names(row["source"]) or (),
                dest=row["dest"],
                literals=literals,
                hooks=_names(row.get("before")) or (),
            )
        )
    return tuple(rows)


_NO_ROWS: Final[tuple[Row, ...]] = ()


def _by_cell(rows: Sequence[Row]) -> dict[tuple[str, str], tuple[Row, ...]]:
    cells: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        for source in row.sources:
            cells.setdefault((source, row.trigger), []).append(row)
    return {key: tuple(value) for key, value in cells.items()}


def cell_guards(cell_rows: Sequence[Row]) -> tuple[str, ...]:
    """The guards the rows of one cell consult, in first-use order."""
    return tuple(dict.fromkeys(g for row in cell_rows for g, _ in row.literals))


def valuations(guards: Sequence[str]) -> Iterator[dict[str, bool]]:
    """Every assignment of True/False to ``guards`` (one empty one when there are none)."""
    for values in itertools.product((True, False), repeat=len(guards)):
        yield dict(zip(guards, values, strict=True))


def options(
    decl: Declaration, rows: Sequence[Row], state: str, trigger: str, valuation: Mapping[str, bool]
) -> list[Option]:
    """Every rule and applicable row that covers (state, trigger) under ``valuation``."""
    rules: tuple[Rejection | Ignored, ...] = (*decl.rejections, *decl.ignored)
    found: list[Option] = [
        rule for rule in rules if state in rule.states and trigger in rule.triggers
    ]
    found.extend(
        row
        for row in rows
        if row.trigger == trigger and state in row.sources and row.applies(valuation)
    )
    return found


def steps_from(decl: Declaration, rows: Sequence[Row], state: str) -> Iterator[Step]:
    """Every call from ``state``: each trigger, guard valuation, gate result and option."""
    cells = _by_cell(rows)
    hooks = {h.name: h for h in decl.hooks}
    for trig in decl.triggers:
        cell_rows = cells.get((state, trig.name), _NO_ROWS)
        guards = cell_guards(cell_rows)
        gate = trig.prelude is not None and trig.prelude in hooks and hooks[trig.prelude].gate
        for valuation in valuations(guards):
            found = options(decl, rows, state, trig.name, valuation)
            shown = tuple(valuation.items())
            if not found:
                yield Step(state, trig.name, shown, None, Outcome.UNDEFINED, (), state)
            for option in found:
                step = _take(state, trig.name, trig.prelude, gate, shown, option)
                yield from (attrs.evolve(s, options=len(found)) for s in step)


def _take(
    state: str,
    trigger: str,
    prelude: str | None,
    gate: bool,
    guards: tuple[tuple[str, bool], ...],
    option: Option,
) -> Iterator[Step]:
    if isinstance(option, Rejection):
        yield Step(state, trigger, (), None, Outcome.REJECTED, (), state, rule=option.rule)
        return
    if isinstance(option, Ignored):
        yield Step(state, trigger, (), None, Outcome.IGNORED, (), state)
        return
    first = (prelude,) if prelude is not None else ()
    hooks = first + option.hooks
    dest = state if option.dest is None else option.dest
    if not gate:
        yield Step(state, trigger, guards, None, Outcome.ACCEPTED, hooks, dest, row=option.index)
        return
    assert prelude is not None  # a gate is a prelude
    yield Step(state, trigger, guards, (prelude, True), Outcome.ACCEPTED, hooks, dest,
               row=option.index)  # fmt: skip
    yield Step(state, trigger, (), (prelude, False), Outcome.DECLINED, first, state)
