"""Structural proofs over a declared table: pure functions from a declaration to verdicts.

Theory of operation
-------------------
Each proof reads the declaration row by row (:mod:`modfsm.engine.tools.verify.model`), with
guards and gate preludes opaque (every valuation is explored), and returns a
:class:`~modfsm.engine.tools.verify.verdict.Verdict` carrying the witness when the property
holds and every counterexample when it does not. Nothing is compiled: the
proofs work on any declaration, including mutated ones that
:func:`modfsm.engine.kernel.compiler.compile_machine` would refuse.

======  ======================================================================
id      property
======  ======================================================================
V1      well-formed: rows and rules name only declared states, triggers,
        guards and hooks (the other proofs run only on a well-formed table)
V2      every state is reachable from the initial one
V3      every terminal state (its terminal flag set) is absorbing: no row
        leaves it
V4      determinism: for every cell and guard valuation, at most one row or
        rule applies
V5      totality: for every cell and guard valuation, some row or rule
        applies (the call moves, stays, is ignored, or raises a declared error)
V6      a flag turns on only in a call that runs its hooks (``started`` is
        never set without ``on_start`` running in that call)
======  ======================================================================
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence

from modfsm.engine.kernel.declaration import Declaration, Rejection
from modfsm.engine.tools.verify.model import (
    Option,
    Row,
    Step,
    cell_guards,
    format_path,
    options,
    read_rows,
    steps_from,
    valuations,
    well_formed_problems,
)
from modfsm.engine.tools.verify.properties import VerifiedMachine
from modfsm.engine.tools.verify.verdict import Status, Verdict

__all__ = [
    "STRUCTURAL",
    "absorbing",
    "deterministic",
    "flags_set_by_hooks",
    "prove",
    "reachable",
    "shortest_paths",
    "total",
    "well_formed",
]

STRUCTURAL: dict[str, str] = {
    "V1": "well-formed: rows and rules name only what is declared",
    "V2": "every state is reachable",
    "V3": "every terminal state is absorbing",
    "V4": "deterministic: at most one row or rule applies, for any guard values",
    "V5": "total: every call moves, stays, is ignored or raises a declared error",
    "V6": "a flag turns on only in a call that runs its hooks",
}
"""The structural proofs: id -> what it proves."""


def _verdict(
    name: str, prop: str, holds: bool, detail: str, evidence: Sequence[str] = (), title: str = ""
) -> Verdict:
    return Verdict(
        machine=name,
        property_id=prop,
        title=title or STRUCTURAL[prop],
        status=Status.HOLDS if holds else Status.FAILS,
        detail=detail,
        evidence=tuple(evidence),
    )


def _count(items: Sequence[object], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def well_formed(decl: Declaration, name: str = "") -> Verdict:
    """V1: everything the rows and rules name is declared."""
    problems = well_formed_problems(decl)
    if problems:
        return _verdict(name, "V1", False, problems[0], problems)
    return _verdict(
        name, "V1", True,
        f"{_count(decl.transitions, 'row')}, {_count(decl.rejections, 'rejection rule')} and "
        f"{_count(decl.ignored, 'ignore rule')} name only declared names",
    )  # fmt: skip


def _not_checked(name: str, prop: str) -> Verdict:
    return Verdict(name, prop, STRUCTURAL[prop], Status.NOT_CHECKED,
                   "not checked: the table is not well-formed (V1)")  # fmt: skip


def shortest_paths(decl: Declaration) -> dict[str, tuple[Step, ...]]:
    """The shortest call sequence from the initial state to each reachable state.

    Breadth-first over every trigger, guard valuation and gate result, in
    declaration order (so the result is deterministic).
    """
    rows = read_rows(decl)
    paths: dict[str, tuple[Step, ...]] = {decl.initial: ()}
    queue = collections.deque([decl.initial])
    while queue:
        state = queue.popleft()
        for step in steps_from(decl, rows, state):
            if step.dest not in paths:
                paths[step.dest] = (*paths[state], step)
                queue.append(step.dest)
    return paths


def reachable(decl: Declaration, name: str = "") -> Verdict:
    """V2: every declared state is reachable; the witness is a shortest path to each."""
    if well_formed_problems(decl):
        return _not_checked(name, "V2")
    paths = shortest_paths(decl)
    missing = [s for s in decl.state_names() if s not in paths]
    if missing:
        return _verdict(
            name, "V2", False,
            f"unreachable: {', '.join(missing)} (no sequence of calls from "
            f"{decl.initial} reaches {'it' if len(missing) == 1 else 'them'})",
            [f"{state} is unreachable" for state in missing],
        )  # fmt: skip
    witnesses = [f"{state}: {format_path(paths[state])}" for state in decl.state_names()]
    deepest = max(decl.state_names(), key=lambda s: len(paths[s]))
    return _verdict(
        name, "V2", True,
        f"all {len(paths)} states reachable; the farthest, {deepest}, in "
        f"{len(paths[deepest])} calls",
        witnesses,
    )  # fmt: skip


def absorbing(decl: Declaration, flag: str, name: str = "") -> Verdict:
    """V3: no row leaves a state whose ``flag`` is True."""
    title = f"every {flag} state is absorbing"
    if well_formed_problems(decl):
        return _not_checked(name, "V3")
    terminal = [s.name for s in decl.states if s.flags.get(flag)]
    if not terminal:
        return _verdict(name, "V3", False, f"no state has the flag {flag!r}", title=title)
    leaving = [
        f"{row.describe()} leaves {source}"
        for row in read_rows(decl)
        for source in row.sources
        if source in terminal and row.dest is not None and row.dest != source
    ]
    if leaving:
        return _verdict(name, "V3", False, leaving[0], leaving, title=title)
    return _verdict(
        name, "V3", True,
        f"no row leaves {', '.join(terminal)}: every call there stays, is ignored or is rejected",
        title=title,
    )  # fmt: skip


def _per_valuation(
    decl: Declaration, check: Callable[[str, str, dict[str, bool], list[Option]], str | None]
) -> tuple[int, list[str]]:
    """Run ``check`` on every (cell, guard valuation); return the count and its complaints."""
    rows = read_rows(decl)
    complaints: list[str] = []
    count = 0
    for state in decl.state_names():
        for trigger in decl.trigger_names():
            cell_rows = [r for r in rows if r.trigger == trigger and state in r.sources]
            for valuation in valuations(cell_guards(cell_rows)):
                count += 1
                found = options(decl, rows, state, trigger, valuation)
                complaint = check(state, trigger, valuation, found)
                if complaint is not None:
                    complaints.append(complaint)
    return count, complaints


def _cell(state: str, trigger: str, valuation: Mapping[str, bool]) -> str:
    shown = ", ".join(f"{g}={str(v).lower()}" for g, v in valuation.items())
    return f"({state}, {trigger})" + (f" [{shown}]" if shown else "")


def _option(option: Option) -> str:
    if isinstance(option, Row):
        return option.describe()
    if isinstance(option, Rejection):
        return f"rejection {option.rule}"
    return f"ignore rule ({option.reason})"


def deterministic(decl: Declaration, name: str = "") -> Verdict:
    """V4: for every cell and guard valuation, at most one row or rule applies."""
    if well_formed_problems(decl):
        return _not_checked(name, "V4")

    def check(
        state: str, trigger: str, valuation: dict[str, bool], found: list[Option]
    ) -> str | None:
        if len(found) <= 1:
            return None
        both = "both" if len(found) == 2 else "all"
        return (
            f"{_cell(state, trigger, valuation)}: {' and '.join(map(_option, found))} {both} apply"
        )

    count, complaints = _per_valuation(decl, check)
    if complaints:
        return _verdict(name, "V4", False, complaints[0], complaints)
    return _verdict(name, "V4", True,
                    f"{count} (cell, guard valuation) pairs, none with two outcomes")  # fmt: skip


def total(decl: Declaration, name: str = "") -> Verdict:
    """V5: for every cell and guard valuation, some row or rule applies."""
    if well_formed_problems(decl):
        return _not_checked(name, "V5")

    def check(
        state: str, trigger: str, valuation: dict[str, bool], found: list[Option]
    ) -> str | None:
        if found:
            return None
        return (f"{_cell(state, trigger, valuation)}: no row applies and no rejection or "
                "ignore rule covers it")  # fmt: skip

    count, complaints = _per_valuation(decl, check)
    if complaints:
        return _verdict(name, "V5", False, complaints[0], complaints)
    return _verdict(name, "V5", True,
                    f"{count} (cell, guard valuation) pairs, each decided")  # fmt: skip


def flags_set_by_hooks(
    decl: Declaration, flag_hooks: Mapping[str, Sequence[str]], name: str = ""
) -> Verdict:
    """V6: every call that turns a flag on runs that flag's hooks (its prelude counts).

    A hook written ``a|b`` is satisfied by either (the calibration lifecycle sets
    ``started`` through ``on_start`` or ``on_calibration_start``).

    The initial state must not have such a flag set, since no call set it.
    """
    if well_formed_problems(decl):
        return _not_checked(name, "V6")
    pairs = "; ".join(f"{flag}: {', '.join(hooks)}" for flag, hooks in flag_hooks.items())
    flags = {s.name: s.flags for s in decl.states}
    preludes = {t.name: t.prelude for t in decl.triggers}
    complaints = [
        f"the initial state {decl.initial} already has {flag} set"
        for flag in flag_hooks
        if flags[decl.initial].get(flag)
    ]
    setting = 0
    for row in read_rows(decl):
        prelude = preludes[row.trigger]
        ran = {*row.hooks, *((prelude,) if prelude is not None else ())}
        for source in row.sources:
            if row.dest is None:
                continue
            for flag, hooks in flag_hooks.items():
                if flags[source].get(flag) or not flags[row.dest].get(flag):
                    continue
                setting += 1
                missing = [h for h in hooks if not ran.intersection(h.split("|"))]
                if missing:
                    complaints.append(
                        f"{row.describe()} turns {flag} on in {source} without running "
                        f"{', '.join(missing)}"
                    )
    if complaints:
        return _verdict(name, "V6", False, complaints[0], complaints)
    return _verdict(name, "V6", True,
                    f"{setting} (row, source state, flag) cases turn a flag on; each runs "
                    f"the flag's hooks ({pairs})")  # fmt: skip


def prove(machine: VerifiedMachine) -> tuple[Verdict, ...]:
    """Every structural proof (V1-V6) of one machine, in order."""
    decl, name = machine.declaration, machine.name
    return (
        well_formed(decl, name),
        reachable(decl, name),
        absorbing(decl, machine.terminal_flag, name),
        deterministic(decl, name),
        total(decl, name),
        flags_set_by_hooks(decl, machine.flag_hooks, name),
    )
