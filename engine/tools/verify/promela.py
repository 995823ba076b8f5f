"""A Promela model generated from a declaration, for the Spin model checker.

Theory of operation
-------------------
The model is one process that, forever, lets the environment make any call:
it picks a trigger, then (inside the cell of the current state and that
trigger) any value of the guards the cell's rows consult and any result of a
gate prelude, and applies the declared semantics of :mod:`modfsm.engine.tools.verify.model`.
Every row, rejection and ignore rule that applies is a separate branch of a
nondeterministic ``if``, so an ambiguous table shows up as two outcomes and a
cell nothing covers as the outcome ``undefined``. Each call is one ``atomic``
step: the LTL claims see only the states between calls.

Ghost variables record what the last call did (trigger, state before it,
outcome, which row or rule, how many applied, which hooks ran) and, for the
hooks a property counts, how often each has run (up to 2), so that the
properties of :mod:`modfsm.engine.tools.verify.properties` are plain LTL over the atoms
that module documents. Each call prints one ``MODFSM`` line; a
counterexample trail replayed by ``spin -t`` prints them back, and
:meth:`PromelaModel.decode` turns them into :class:`~modfsm.engine.tools.verify.model.Step` s.

Nothing here is declared: states, triggers, rows and rules all come from the
declaration, so the model cannot drift from the table the engine compiles.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import attrs

from modfsm.engine.kernel.declaration import Declaration
from modfsm.engine.kernel.errors import DeclarationError
from modfsm.engine.tools.verify.model import (
    Outcome,
    Row,
    Step,
    cell_guards,
    read_rows,
    well_formed_problems,
)
from modfsm.engine.tools.verify.properties import TemporalProperty, VerifiedMachine

__all__ = ["LINE_TAG", "PromelaModel", "generate", "generate_for"]

LINE_TAG: Final = "MODFSM"
"""Each call prints ``MODFSM trig prev state outcome choice gate guards options``."""

_OUTCOME_CODES: Final = {
    Outcome.ACCEPTED: 1,
    Outcome.REJECTED: 2,
    Outcome.DECLINED: 3,
    Outcome.IGNORED: 4,
    Outcome.UNDEFINED: 5,
}
_NONE: Final = 255

# Promela keywords, and the names the generated model defines without a prefix.
_PROMELA_WORDS: Final = """
    active assert atomic bit bool break byte chan d_step D_proctype do else empty enabled eval
    false fi full goto hidden if init inline int len local mtype nempty never nfull od of
    pc_value print printf printm priority proctype provided run select short show skip timeout
    true typedef unless unsigned xr xs c_code c_decl c_expr c_state c_track ltl trace notrace
    state prev trig outcome choice options gate_result unchanged NONE
    accepted rejected declined ignored undefined
"""
_RESERVED: Final = frozenset(_PROMELA_WORDS.split())


@attrs.frozen
class PromelaModel:
    """A generated model and what it takes to read its trails back.

    Attributes:
        declaration: the declaration it was generated from.
        text: the Promela source, LTL claims included.
        properties: the temporal properties it claims, in order.
    """

    declaration: Declaration
    text: str
    properties: tuple[TemporalProperty, ...]

    def claim_name(self, prop: TemporalProperty) -> str:
        """The name of ``prop``'s ``ltl`` claim in :attr:`text` (its id)."""
        return prop.id

    def decode(self, line: str) -> Step:
        """One ``MODFSM`` line printed by the model, as the step it reports.

        Raises:
            ValueError: the line is not one the model prints.
        """
        fields = line.split()
        if len(fields) != 9 or fields[0] != LINE_TAG:
            raise ValueError(f"not a {LINE_TAG} line: {line!r}")
        trig, prev, state, outcome_code, choice, gate, guard_bits, options = map(int, fields[1:])
        decl = self.declaration
        states, triggers = decl.state_names(), decl.triggers
        trigger = triggers[trig]
        outcome = {code: o for o, code in _OUTCOME_CODES.items()}[outcome_code]
        source, dest = states[prev], states[state]
        rows = read_rows(decl)
        cell = [r for r in rows if r.trigger == trigger.name and source in r.sources]
        names = cell_guards(cell)
        guards = tuple((g, bool(guard_bits >> decl.guards.index(g) & 1)) for g in names)
        prelude = trigger.prelude
        is_gate = prelude is not None and any(h.name == prelude and h.gate for h in decl.hooks)
        shown_gate = (prelude, bool(gate)) if is_gate and prelude is not None else None
        first = (prelude,) if prelude is not None else ()
        step = Step(source, trigger.name, (), None, outcome, (), dest, options=options)
        if outcome is Outcome.ACCEPTED:
            row = rows[choice]
            hooks = first + row.hooks
            return attrs.evolve(step, guards=guards, gate=shown_gate, hooks=hooks, row=row.index)
        if outcome is Outcome.REJECTED:
            return attrs.evolve(step, rule=decl.rejections[choice - len(rows)].rule)
        if outcome is Outcome.DECLINED:
            return attrs.evolve(step, gate=shown_gate, hooks=first)
        if outcome is Outcome.UNDEFINED:
            return attrs.evolve(step, guards=guards)
        return step


def _check_names(decl: Declaration, properties: Sequence[TemporalProperty]) -> None:
    problems = well_formed_problems(decl)
    names = [
        *decl.state_names(), *decl.trigger_names(), *decl.guards, *decl.flags,
        *(h.name for h in decl.hooks), *(p.id for p in properties),
    ]  # fmt: skip
    bad = sorted({n for n in names if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n)})
    if bad:
        problems.append(f"names that are not Promela identifiers: {', '.join(bad)}")
    clashing = sorted(set(decl.flags) & _RESERVED)
    if clashing:
        problems.append(f"flags that clash with Promela or the model's own names: "
                        f"{', '.join(clashing)}")  # fmt: skip
    if len(decl.transitions) + len(decl.rejections) + len(decl.ignored) >= _NONE:
        problems.append("more than 254 rows and rules")
    if len(decl.states) >= _NONE or len(decl.triggers) >= _NONE:
        problems.append("more than 254 states or triggers")
    if problems:
        raise DeclarationError(
            f"cannot generate a Promela model of {decl.name!r}: {'; '.join(problems)}. "
            "To fix, correct the declaration (structural proof V1 lists every problem).",
            declaration=decl.name,
            where="promela",
        )


def _any(terms: Sequence[str]) -> str:
    return "(" + " || ".join(terms) + ")" if terms else "false"


def _bump(hook: str, counted: frozenset[str]) -> list[str]:
    if hook not in counted:
        return [f"ran_{hook} = true"]
    return [f"ran_{hook} = true", f"count_{hook} = (count_{hook} < 2 -> count_{hook} + 1 : 2)"]


def _counted(decl: Declaration, properties: Sequence[TemporalProperty]) -> frozenset[str]:
    """The hooks whose ``count_<hook>`` a property reads (only those are counted)."""
    used = {m for p in properties for m in re.findall(r"\bcount_(\w+)", p.formula)}
    return frozenset(h.name for h in decl.hooks if h.name in used)


def _condition(row: Row) -> str:
    """The row's guard literals as a Promela expression (``true`` for an unguarded row)."""
    literals = [f"guard_{g}" if value else f"!guard_{g}" for g, value in row.literals]
    return " && ".join(literals) or "true"


def _reset_guards(decl: Declaration) -> str:
    return "; ".join(f"guard_{g} = false" for g in decl.guards) or "skip"


def _row_branch(
    decl: Declaration, row: Row, prelude: str | None, gate: bool, counted: frozenset[str]
) -> list[str]:
    """One ``if`` branch: the row applies; its prelude, gate, hooks and commit."""
    steps = [*(s for h in row.hooks for s in _bump(h, counted))]
    if row.dest is not None:
        steps.append(f"state = S_{row.dest}")
    commit = "; ".join([*steps, "outcome = O_ACCEPTED", f"choice = {row.index}"])
    lines = [f":: {_condition(row)} ->  /* {row.describe()} */"]
    if prelude is not None:
        lines.append(f"     {'; '.join(_bump(prelude, counted))};")
    if not gate:
        return [*lines, f"     {commit}"]
    declined = f"gate_result = false; outcome = O_DECLINED; {_reset_guards(decl)}"
    return [*lines, "     if", f"     :: gate_result = true; {commit}", f"     :: {declined}",
            "     fi"]  # fmt: skip


def _cell(
    decl: Declaration, rows: Sequence[Row], counted: frozenset[str], state: str, trigger: str
) -> list[str]:
    """The branch of the dispatch ``if`` for (state, trigger), without its indentation."""
    trig = next(t for t in decl.triggers if t.name == trigger)
    cell = [r for r in rows if r.trigger == trigger and state in r.sources]
    gate = trig.prelude is not None and any(h.name == trig.prelude and h.gate for h in decl.hooks)
    first_rule = len(rows)
    lines = [f":: state == S_{state} && trig == T_{trigger} ->"]
    lines += [f"     if :: guard_{g} = true :: guard_{g} = false fi;" for g in cell_guards(cell)]
    branches: list[str] = []
    terms: list[str] = []
    for k, rule in enumerate(decl.rejections):
        if state in rule.states and trigger in rule.triggers:
            branches.append(f":: outcome = O_REJECTED; choice = {first_rule + k}"
                            f"  /* rule {rule.rule}: {rule.reason} */")  # fmt: skip
            terms.append("1")
    for k, ignored in enumerate(decl.ignored):
        if state in ignored.states and trigger in ignored.triggers:
            code = first_rule + len(decl.rejections) + k
            branches.append(f":: outcome = O_IGNORED; choice = {code}  /* {ignored.reason} */")
            terms.append("1")
    for row in cell:
        branches += _row_branch(decl, row, trig.prelude, gate, counted)
        terms.append(f"({_condition(row)} -> 1 : 0)")
    branches.append(":: options == 0 -> outcome = O_UNDEFINED  /* nothing covers the call */")
    return [
        *lines,
        f"     options = {' + '.join(terms) or '0'};",
        "     if",
        *(f"     {b}" for b in branches),
        "     fi",
    ]


def generate(decl: Declaration, properties: Sequence[TemporalProperty] = ()) -> PromelaModel:
    """The Promela model of ``decl`` with one ``ltl`` claim per property.

    Raises:
        DeclarationError: the declaration is not well-formed (see structural
            proof V1) or uses names Promela cannot carry.
    """
    _check_names(decl, properties)
    states = decl.state_names()
    rows = read_rows(decl)
    counted = _counted(decl, properties)
    out: list[str] = [
        f"/* Generated by modfsm.engine.tools.verify.promela from the declaration {decl.name!r}.",
        "   Do not edit: the declaration is the source (modfsm verify --write-models DIR). */",
        "",
        "/* states */",
        *(f"#define S_{name} {i}" for i, name in enumerate(states)),
        "/* triggers */",
        *(f"#define T_{name} {i}" for i, name in enumerate(decl.trigger_names())),
        "#define NONE 255",
        "/* the outcome of the last call */",
        "#define O_NONE 0",
        *(f"#define O_{o.name} {code}" for o, code in _OUTCOME_CODES.items()),
        "",
        f"byte state = S_{decl.initial};  /* the state after the last call */",
        f"byte prev = S_{decl.initial};   /* the state the last call was made in */",
        "byte trig = NONE;            /* the last call's trigger */",
        "byte outcome = O_NONE;",
        "byte choice = NONE;          /* the row (its index) or rule that decided it */",
        "byte options = 1;            /* how many rows and rules applied to it */",
        "bool gate_result;            /* what its gate prelude returned */",
        *(f"bool guard_{g};  /* the guard's value in the last call */" for g in decl.guards),
        *(f"bool ran_{h.name};  /* ran during the last call */" for h in decl.hooks),
        *(f"byte count_{h};  /* runs so far, up to 2 */" for h in sorted(counted)),
        "",
        "/* atoms of the LTL properties (engine/tools/verify/properties.py) */",
        *(f"#define at_{s} (state == S_{s})" for s in states),
        *(f"#define from_{s} (prev == S_{s})" for s in states),
        *(f"#define did_{t} (trig == T_{t})" for t in decl.trigger_names()),
    ]
    for flag in decl.flags:
        holding = [s.name for s in decl.states if s.flags.get(flag)]
        out.append(f"#define {flag} {_any([f'at_{s}' for s in holding])}")
        out.append(f"#define was_{flag} {_any([f'from_{s}' for s in holding])}")
    out += [
        *(f"#define {o.value} (outcome == O_{o.name})" for o in _OUTCOME_CODES),
        "#define unchanged (state == prev)",
        "",
        "active proctype machine()",
        "{",
        "  do",
        "  :: atomic {",
        "       /* the environment may make any call, in any state */",
        "       if",
        *(f"       :: trig = T_{t}" for t in decl.trigger_names()),
        "       fi;",
        "       prev = state; choice = NONE; gate_result = false;",
        f"       {_reset_guards(decl)};",
        "       " + ("; ".join(f"ran_{h.name} = false" for h in decl.hooks) or "skip") + ";",
        "       if",
        *(
            f"       {line}"
            for state in states
            for trigger in decl.trigger_names()
            for line in _cell(decl, rows, counted, state, trigger)
        ),
        "       fi;",
        '       printf("' + LINE_TAG + ' %d %d %d %d %d %d %d %d\\n", trig, prev, state, outcome, '
        "choice, gate_result, "
        + (" + ".join(f"{1 << i} * guard_{g}" for i, g in enumerate(decl.guards)) or "0")
        + ", options)",
        "     }",
        "  od",
        "}",
        "",
        *(f"ltl {p.id} {{ {p.formula} }}  /* {p.title} */" for p in properties),
        "",
    ]
    return PromelaModel(decl, "\n".join(out), tuple(properties))


def generate_for(machine: VerifiedMachine) -> PromelaModel:
    """The model of one of :data:`~modfsm.engine.tools.verify.properties.MACHINES`.

    The model carries the machine's temporal properties.
    """
    return generate(machine.declaration, machine.temporal)
