"""Declared state machines and their compilation into dispatch tables.

Theory of operation
-------------------
A machine is declared once, as data (:class:`Declaration`, defined in
:mod:`modfsm.engine.kernel.declaration` and re-exported here): its states (each with the
boolean flags users read), its triggers, the guards and hooks those may call,
the transition rows, and the rules that reject a trigger outright.
Transition rows use the vocabulary of the ``transitions`` library
(``trigger``/``source``/``dest``/``conditions``/``unless``/``before``), so the
same literal also builds a ``transitions.Machine`` (see ``modfsm.engine.tools.transitions_adapter``)
for diagrams and for cross-checking.

Every legal call runs the same three phases:

1. the trigger's *prelude* hook, if it has one. A *gate* prelude must return a
   bool; ``False`` ends the call with nothing changed.
2. the cell's guard, if it has one (at most one guard per cell), picks a row;
3. the row's ``before`` hooks run in order, then the state becomes ``dest``
   (``None``: stays). If a hook raises, the exception propagates and the state
   stays where it was: a transition is committed only once all its hooks returned.
   Every prelude, guard and hook therefore reads the state the call started in.

A rejected call raises :class:`~modfsm.engine.kernel.errors.IllegalTransitionError` before
anything runs; an ignored call returns before anything runs.

:func:`compile_machine` validates a declaration, refuses what the compiler does
not support, and turns it into one :class:`CompiledState` per state: a dict
from event key to a small closure (*cell*), plus ``calls`` from trigger name to
cell. Dispatch is then one dict lookup and one call. ``transitions``' own
dispatch of the same declaration costs about 16-24x the reference's flag logic
per event (``benchmarks/dispatch.py``; figures in ``benchmarks/README.md``),
and the compiled table costs less than that logic; it is never on the hot path.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import inspect
import keyword
import linecache
import types
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Final, TypeAlias

import attrs

from modfsm.engine.kernel.declaration import (
    SUPPORTED_ROW_KEYS,
    Declaration,
    HookSpec,
    Ignored,
    Rejection,
    StateSpec,
    TriggerSpec,
)
from modfsm.engine.kernel.errors import DeclarationError, HookReturnError, IllegalTransitionError

__all__ = [
    "IGNORE",
    "SUPPORTED_ROW_KEYS",
    "Branch",
    "Cell",
    "CompiledMachine",
    "CompiledState",
    "Declaration",
    "HookSpec",
    "Ignored",
    "Plan",
    "Rejection",
    "StateSpec",
    "TriggerSpec",
    "compile_machine",
    "describe",
    "specialize",
]

Cell: TypeAlias = Callable[..., None]
"""A compiled cell: ``cell(obj, state, event, **kwargs)`` (an event hook's own signature, so a
cell that runs one hook and nothing else is that hook's function)."""

_UNSUPPORTED_ROW_KEYS: Final = {
    "after": "hooks after the state change would leave the state changed when they raise; "
    "list them in 'before'",
    "prepare": "per-row prepare callbacks; declare a trigger prelude instead",
    "on_exception": "exception callbacks; hooks' exceptions always propagate",
}


@attrs.frozen
class Branch:
    """What a cell does once its guard (if any) is decided: hooks, then the new state."""

    hooks: tuple[str, ...]
    dest: str | None


@attrs.frozen
class Plan:
    """A cell as data: the compiled reading of the declaration for one (state, trigger).

    ``rejection`` is set for illegal cells and ``ignored`` for cells that do
    nothing. Otherwise ``prelude``/``gate`` say what runs first; with ``guard``
    None only ``when_true`` applies.
    """

    state: str
    trigger: str
    rejection: Rejection | None = None
    ignored: Ignored | None = None
    prelude: str | None = None
    gate: bool = False
    guard: str | None = None
    when_true: Branch | None = None
    when_false: Branch | None = None


def describe(obj: Any) -> str:
    """How messages name an object: its ``lifecycle_label`` or its class name."""
    label = getattr(obj, "lifecycle_label", None)
    return label if isinstance(label, str) else type(obj).__name__


class CompiledState(dict[Hashable, Cell]):
    """One state of a compiled machine: event key -> cell, plus ``calls`` by trigger.

    Instances are shared by every object of the machine and never copied:
    ``copy``/``deepcopy`` return the same object and pickling stores the names.
    """

    __slots__ = ("calls", "flags", "machine", "name", "route")

    def __init__(self, machine: str, name: str, flags: Mapping[str, bool]) -> None:
        super().__init__()
        self.machine = machine
        self.name = name
        self.flags: Mapping[str, bool] = dict(flags)
        self.calls: dict[str, Cell] = {}
        # What code that fans events out to objects in this state runs for each key: the
        # table itself, unless the objects' class takes every event through an entry
        # point of its own (then a table of cells that call it; see Modifier).
        self.route: Mapping[Hashable, Cell] = self

    def __repr__(self) -> str:
        return f"<state {self.name!r} of {self.machine!r}>"

    def __copy__(self) -> CompiledState:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledState:
        return self

    def __reduce__(self) -> tuple[Callable[[str, str], CompiledState], tuple[str, str]]:
        return (_restore_state, (self.machine, self.name))


def _restore_state(machine: str, name: str) -> CompiledState:
    try:
        return _COMPILED[machine].states[name]
    except KeyError:
        raise DeclarationError(
            f"cannot restore state {name!r} of machine {machine!r}: no such machine or state "
            "is compiled in this process. To fix, import the module that declares it first.",
            declaration=machine,
            where="states",
        ) from None


@attrs.frozen(eq=False)
class CompiledMachine:
    """A declaration compiled into dispatch tables.

    Attributes:
        declaration: what was compiled.
        states: state name -> :class:`CompiledState`.
        initial: the initial state's table.
        plans: (state, trigger) -> :class:`Plan`, the data each cell was built from.
        allowed: state name -> the calls allowed from it, for messages.
        state_attr: the attribute the cells assign the new state to.
        cell_plans: the plans the cells were built from: ``plans``, or for a
            :func:`specialize` variant, the plans with the left-out calls removed.
        key_plans: (state, event key) -> the plan of a cell that differs from its
            trigger's (a :func:`specialize` variant with ``key_filters``).
    """

    declaration: Declaration
    states: Mapping[str, CompiledState]
    initial: CompiledState
    plans: Mapping[tuple[str, str], Plan]
    allowed: Mapping[str, tuple[str, ...]]
    state_attr: str
    cell_plans: Mapping[tuple[str, str], Plan]
    key_plans: Mapping[tuple[str, Hashable], Plan] = attrs.field(factory=dict)


_COMPILED: dict[str, CompiledMachine] = {}


def compile_machine(declaration: Declaration, *, state_attr: str) -> CompiledMachine:
    """Validate ``declaration`` and compile it (once per declaration name).

    Args:
        declaration: the machine to compile.
        state_attr: the attribute of the object that holds its current
            :class:`CompiledState`; cells assign it with ``object.__setattr__``.

    Raises:
        DeclarationError: the declaration is inconsistent, incomplete, or uses a
            feature the compiler does not support; the message says which and where.
    """
    cached = _COMPILED.get(declaration.name)
    if cached is not None:
        if cached.declaration == declaration:
            return cached
        raise DeclarationError(
            f"another declaration named {declaration.name!r} is already compiled. "
            "To fix, give each declaration a unique name (attrs.evolve(decl, name=...)).",
            declaration=declaration.name,
            where="name",
        )
    plans = _plan(declaration)
    compiled = _build(declaration, plans, state_attr)
    _COMPILED[declaration.name] = compiled
    return compiled


# --- validation and planning -------------------------------------------------------------


def _fail(decl: Declaration, where: str, problem: str, fix: str) -> DeclarationError:
    return DeclarationError(
        f"declaration {decl.name!r}, {where}: {problem}. To fix, {fix}.",
        declaration=decl.name,
        where=where,
    )


def _names(value: Any, decl: Declaration, where: str) -> tuple[str, ...]:
    """Normalise a ``transitions``-style str-or-list field to a tuple of names."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
        raise _fail(
            decl,
            where,
            f"expected a name or a list of names, got {value!r}",
            "refer to guards and hooks by their method names (callables are not supported)",
        )
    return tuple(items)


def _check_unique(decl: Declaration, where: str, names: Sequence[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise _fail(
                decl, where, f"{name!r} is not a valid identifier", "use a method-like name"
            )
        if name in seen:
            raise _fail(decl, where, f"{name!r} is declared twice", "declare each name once")
        seen.add(name)


def _check_vocabulary(decl: Declaration) -> dict[str, HookSpec]:
    _check_unique(decl, "flags", decl.flags)
    _check_unique(decl, "states", decl.state_names())
    _check_unique(decl, "triggers", decl.trigger_names())
    _check_unique(decl, "guards", decl.guards)
    _check_unique(decl, "hooks", [h.name for h in decl.hooks])
    hooks = {h.name: h for h in decl.hooks}
    if decl.initial not in decl.state_names():
        raise _fail(decl, "initial", f"{decl.initial!r} is not a declared state", "name a state")
    for spec in decl.states:
        if set(spec.flags) != set(decl.flags):
            raise _fail(
                decl,
                f"states[{spec.name}].flags",
                f"defines {sorted(spec.flags)}, expected {sorted(decl.flags)}",
                "give every state a value for every declared flag",
            )
    for trig in decl.triggers:
        if trig.prelude is None:
            continue
        if trig.prelude not in hooks:
            raise _fail(
                decl,
                f"triggers[{trig.name}].prelude",
                f"{trig.prelude!r} is not a declared hook",
                "declare it in hooks",
            )
        prelude = hooks[trig.prelude]
        if prelude.gate == prelude.takes_event:
            raise _fail(
                decl,
                f"triggers[{trig.name}].prelude",
                f"{prelude.name!r} has gate={prelude.gate} and takes_event={prelude.takes_event}",
                "use a gate prelude called as hook(state=state, **kwargs), or a notify prelude "
                "called as hook(state, event, **kwargs)",
            )
    for key, trig_name in decl.event_triggers.items():
        if trig_name not in decl.trigger_names():
            raise _fail(
                decl,
                f"event_triggers[{key!r}]",
                f"{trig_name!r} is not a declared trigger",
                "route each event to a declared trigger",
            )
    _check_every_member_routed(decl)
    return hooks


def _check_every_member_routed(decl: Declaration) -> None:
    """Keys that are enum members (``EventType``) must include every member of their enum.

    Dispatch looks the event's key up in the state's table, so an unrouted member
    would fail at run time, far from the declaration.
    """
    kinds = {type(key) for key in decl.event_triggers if isinstance(key, enum.Enum)}
    for kind in sorted(kinds, key=lambda k: k.__qualname__):
        missing = [member.name for member in kind if member not in decl.event_triggers]
        if missing:
            raise _fail(
                decl,
                "event_triggers",
                f"{kind.__name__} {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} routed to no trigger, so dispatching "
                f"{'it' if len(missing) == 1 else 'them'} would fail at run time",
                f"route every {kind.__name__} member to a trigger (for example "
                f"{kind.__name__}.{missing[0]} to the trigger that handles other events; "
                "reject that trigger in the states where the event must not arrive)",
            )


def _read_row(
    decl: Declaration, index: int, row: Mapping[str, Any], hooks: Mapping[str, HookSpec]
) -> tuple[str, tuple[str, ...], tuple[str, bool] | None, Branch]:
    """Check one transition row; return (trigger, sources, guard literal, branch)."""
    where = f"transitions[{index}]"
    if not isinstance(row, Mapping):
        raise _fail(
            decl, where, f"expected a dict, got {type(row).__name__}", "write rows as dicts"
        )
    for key in row:
        if key in SUPPORTED_ROW_KEYS:
            continue
        why = _UNSUPPORTED_ROW_KEYS.get(key, "not part of the supported row format")
        raise _fail(
            decl,
            f"{where}.{key}",
            f"the compiler does not support {key!r} ({why})",
            f"use only {sorted(SUPPORTED_ROW_KEYS)}",
        )
    trigger = row.get("trigger")
    if trigger not in decl.trigger_names():
        raise _fail(
            decl,
            f"{where}.trigger",
            f"{trigger!r} is not a declared trigger",
            "declare it in triggers",
        )
    sources = _names(row.get("source"), decl, f"{where}.source")
    if not sources:
        raise _fail(decl, f"{where}.source", "no source state", "name the source state(s)")
    for source in sources:
        if source in ("*", "="):
            raise _fail(
                decl,
                f"{where}.source",
                f"wildcard {source!r} is not supported",
                "list the source states explicitly",
            )
        if source not in decl.state_names():
            raise _fail(
                decl,
                f"{where}.source",
                f"{source!r} is not a declared state",
                "name a declared state",
            )
    if "dest" not in row:
        raise _fail(decl, f"{where}.dest", "missing", "give a state, or None to stay")
    dest = row["dest"]
    if dest is not None and (not isinstance(dest, str) or dest not in decl.state_names()):
        hint = " ('=', transitions' reflexive dest, is not supported)" if dest == "=" else ""
        raise _fail(
            decl,
            f"{where}.dest",
            f"{dest!r} is not a declared state{hint}",
            "name a declared state, or None to stay",
        )
    conditions = _names(row.get("conditions"), decl, f"{where}.conditions")
    unless = _names(row.get("unless"), decl, f"{where}.unless")
    literals = [(g, True) for g in conditions] + [(g, False) for g in unless]
    if len(literals) > 1:
        raise _fail(
            decl,
            where,
            f"guards {literals} combine {len(literals)} guards",
            "use at most one guard per row (split the state instead)",
        )
    for guard, _ in literals:
        if guard not in decl.guards:
            raise _fail(decl, where, f"{guard!r} is not a declared guard", "declare it in guards")
    before = _names(row.get("before"), decl, f"{where}.before")
    for hook in before:
        spec = hooks.get(hook)
        if spec is None:
            raise _fail(
                decl, f"{where}.before", f"{hook!r} is not a declared hook", "declare it in hooks"
            )
        if spec.gate or not spec.takes_event:
            raise _fail(
                decl,
                f"{where}.before",
                f"{hook!r} is a gate or event-less hook",
                "call gate hooks only as trigger preludes",
            )
    return trigger, sources, (literals[0] if literals else None), Branch(before, dest)


def _plan(decl: Declaration) -> dict[tuple[str, str], Plan]:
    hooks = _check_vocabulary(decl)
    triggers = {t.name: t for t in decl.triggers}
    rows: dict[tuple[str, str], list[tuple[tuple[str, bool] | None, Branch, int]]] = {}
    for index, row in enumerate(decl.transitions):
        trigger, sources, literal, branch = _read_row(decl, index, row, hooks)
        for source in sources:
            rows.setdefault((source, trigger), []).append((literal, branch, index))
    covered: dict[tuple[str, str], Plan] = {}
    rules: list[tuple[str, Rejection | Ignored]] = [
        *((f"rejections[{rule.rule}]", rule) for rule in decl.rejections),
        *((f"ignored[{index}]", rule) for index, rule in enumerate(decl.ignored)),
    ]
    for where, rule in rules:
        for state in rule.states:
            for trigger in rule.triggers:
                key = (state, trigger)
                if state not in decl.state_names() or trigger not in triggers:
                    raise _fail(
                        decl,
                        where,
                        f"({state!r}, {trigger!r}) is not a declared cell",
                        "name declared states and triggers",
                    )
                if key in covered or key in rows:
                    raise _fail(
                        decl,
                        where,
                        f"({state}, {trigger}) is already covered",
                        "cover each (state, trigger) by rows, one rejection or one ignore rule",
                    )
                if isinstance(rule, Rejection):
                    covered[key] = Plan(state, trigger, rejection=rule)
                else:
                    covered[key] = Plan(state, trigger, ignored=rule)
    plans: dict[tuple[str, str], Plan] = {}
    for state in decl.state_names():
        for trigger, trig in triggers.items():
            key = (state, trigger)
            if key in covered:
                plans[key] = covered[key]
                continue
            if key not in rows:
                raise _fail(
                    decl,
                    f"cell ({state}, {trigger})",
                    "has neither rows nor a rejection",
                    "declare what the trigger does in this state, reject it or ignore it",
                )
            prelude = trig.prelude
            gate = prelude is not None and hooks[prelude].gate
            plans[key] = _plan_cell(decl, state, trigger, prelude, gate, rows[key])
    return plans


def _plan_cell(
    decl: Declaration,
    state: str,
    trigger: str,
    prelude: str | None,
    gate: bool,
    cell_rows: list[tuple[tuple[str, bool] | None, Branch, int]],
) -> Plan:
    where = f"cell ({state}, {trigger})"
    if len(cell_rows) == 1:
        literal, branch, index = cell_rows[0]
        if literal is not None:
            raise _fail(
                decl,
                f"transitions[{index}]",
                f"{where} has one guarded row, so some guard outcome has no row",
                "add the row for the opposite guard outcome",
            )
        return Plan(state, trigger, prelude=prelude, gate=gate, when_true=branch)
    if len(cell_rows) == 2:
        (lit_a, branch_a, _), (lit_b, branch_b, index_b) = cell_rows
        if (
            lit_a is not None
            and lit_b is not None
            and lit_a[0] == lit_b[0]
            and lit_a[1] != lit_b[1]
        ):
            when_true, when_false = (branch_a, branch_b) if lit_a[1] else (branch_b, branch_a)
            return Plan(
                state,
                trigger,
                prelude=prelude,
                gate=gate,
                guard=lit_a[0],
                when_true=when_true,
                when_false=when_false,
            )
        raise _fail(
            decl,
            f"transitions[{index_b}]",
            f"{where} rows guarded by {lit_a} and {lit_b} are not one guard and its negation",
            "guard two rows of a cell by the same guard, one with conditions and one with unless",
        )
    raise _fail(
        decl,
        where,
        f"has {len(cell_rows)} rows; the compiler supports 1 or 2",
        "split the state so each cell needs at most one guard",
    )


# --- building the cells ------------------------------------------------------------------


def specialize(
    machine: CompiledMachine,
    *,
    noop_hooks: frozenset[str],
    pure_guards: frozenset[str] = frozenset(),
    key_filters: Mapping[str, frozenset[Hashable]] | None = None,
    into: CompiledMachine | None = None,
    owner: type | None = None,
    observer: Observer | None = None,
) -> CompiledMachine:
    """A variant of ``machine`` for objects whose hooks in ``noop_hooks`` do nothing.

    The variant's cells leave out the calls to those hooks (never a gate prelude,
    whose result decides the call); a cell left with no prelude, no hooks and
    no state change is the shared :data:`IGNORE` cell, so a caller
    fanning an event out may skip it. A guard in ``pure_guards`` (known to have
    no side effects) is left out too when both of its branches became the same.
    What the variant does is therefore observably what ``machine`` does;
    ``plans`` and ``allowed`` stay the declared ones (traces and the testing kit
    read them).

    Args:
        machine: the compiled declaration (:func:`compile_machine`).
        noop_hooks: hooks that the objects' class leaves as do-nothing defaults.
        pure_guards: guards the class leaves as side-effect-free defaults.
        key_filters: hook -> the event keys it acts on; for any other key its call
            is left out of that key's cell too (the hook does nothing there:
            :func:`modfsm.engine.runtime.modifier.handles` makes sure of it).
        into: an earlier variant of the same declaration to rebuild in place, so
            objects already holding its states see the new cells (used when a
            hook is assigned to a class after it was defined).
        owner: the class whose instances run the variant, when they cannot hold hooks of
            their own (``__slots__``): the cells then call its hook and guard functions
            directly instead of looking them up on each object. Whoever assigns a hook to
            the class later must rebuild the variant (``into``).
        observer: called as ``observer(obj, source, dest, event)`` (compiled states)
            after every move the variant's cells commit, and after no other call: a
            cell's branches that stay put pay nothing for it.
    """
    plans = {key: _elide(plan, noop_hooks, pure_guards) for key, plan in machine.plans.items()}
    if into is not None and into.declaration != machine.declaration:
        raise ValueError("specialize: 'into' must be a variant of the same declaration")
    decl = machine.declaration
    key_plans: dict[tuple[str, Hashable], Plan] = {}
    for hook, keys in (key_filters or {}).items():
        for key, trigger in decl.event_triggers.items():
            if key in keys:
                continue
            for state in decl.state_names():
                plan = key_plans.get((state, key), plans[(state, trigger)])
                if plan.when_true is not None:  # rejected and ignored cells stay as they are
                    key_plans[(state, key)] = _elide(plan, frozenset({hook}), pure_guards)
    built = _build(
        decl,
        plans,
        machine.state_attr,
        None if into is None else into.states,
        key_plans,
        owner,
        observer,
    )
    return attrs.evolve(built, plans=machine.plans, cell_plans=plans, key_plans=key_plans)


def _elide(plan: Plan, noop_hooks: frozenset[str], pure_guards: frozenset[str]) -> Plan:
    if plan.when_true is None:  # rejected or ignored
        return plan
    prelude = plan.prelude if plan.gate or plan.prelude not in noop_hooks else None
    when_true = _elide_branch(plan.when_true, noop_hooks)
    when_false = None if plan.when_false is None else _elide_branch(plan.when_false, noop_hooks)
    guard = plan.guard
    if guard in pure_guards and when_true == when_false:
        guard, when_false = None, None
    return attrs.evolve(
        plan, prelude=prelude, guard=guard, when_true=when_true, when_false=when_false
    )


def _elide_branch(branch: Branch, noop_hooks: frozenset[str]) -> Branch:
    return Branch(tuple(h for h in branch.hooks if h not in noop_hooks), branch.dest)


def _build(
    decl: Declaration,
    plans: Mapping[tuple[str, str], Plan],
    attr: str,
    into: Mapping[str, CompiledState] | None = None,
    key_plans: Mapping[tuple[str, Hashable], Plan] | None = None,
    owner: type | None = None,
    observer: Observer | None = None,
) -> CompiledMachine:
    hooks = {h.name: h for h in decl.hooks}
    triggers = {t.name: t for t in decl.triggers}
    if into is None:
        states = {s.name: CompiledState(decl.name, s.name, s.flags) for s in decl.states}
    else:
        states = dict(into)
        for table in states.values():
            table.clear()
            table.calls.clear()
            table.route = table
    allowed = {
        state: tuple(
            dict.fromkeys(
                triggers[t].call
                for t in decl.trigger_names()
                if plans[(state, t)].rejection is None
            )
        )
        for state in decl.state_names()
    }
    routed = set(decl.event_triggers.values())
    for (state, trigger), plan in plans.items():
        if plan.rejection is not None:
            cell = _reject_cell(
                plan.rejection, state, triggers[trigger], allowed[state], trigger in routed
            )
        elif plan.ignored is not None:
            cell = _ignore
        else:
            prelude = hooks[plan.prelude] if plan.prelude is not None else None
            watch = None if observer is None else (observer, states[state])
            cell = _move_cell(plan, prelude, states, attr, owner, watch)
        states[state].calls[trigger] = cell
    for key, trigger in decl.event_triggers.items():
        for table in states.values():
            table[key] = table.calls[trigger]
    built: dict[tuple[Plan, str | None], Cell] = {}
    for (state, key), plan in (key_plans or {}).items():
        shared = (plan, None if observer is None else state)  # an observer is told the source
        if shared not in built:
            prelude = hooks[plan.prelude] if plan.prelude is not None else None
            watch = None if observer is None else (observer, states[state])
            built[shared] = _move_cell(plan, prelude, states, attr, owner, watch)
        states[state][key] = built[shared]
    return CompiledMachine(
        decl, states, states[decl.initial], dict(plans), allowed, attr, dict(plans)
    )


def _ignore(obj: Any, state: Any, event: Any, /, **kwargs: Any) -> None:
    """The cell of an ignored call: nothing runs, nothing changes."""


IGNORE: Final[Cell] = _ignore
"""The one cell that does nothing (ignored calls, and calls with nothing left to run);
code that fans events out may skip a cell that ``is IGNORE``."""


def _reject_cell(
    rule: Rejection, state: str, trig: TriggerSpec, allowed: tuple[str, ...], routed: bool
) -> Cell:
    options = ", ".join(allowed) if allowed else "nothing (it accepts no further calls)"

    def reject(obj: Any, _state: Any, event: Any, /, **_kwargs: Any) -> None:
        event_type = getattr(event, "type_", None) if routed else None
        call = trig.call
        if event_type is not None and f"({event_type.name})" not in call:
            call = f"{call}({event_type.name})"  # unless the call already names it
        raise IllegalTransitionError(
            f"{call} is not allowed on {describe(obj)}: it is {state!r} ({rule.reason}). "
            f"Allowed from {state!r}: {options}. To fix, {rule.fix} [rule {rule.rule}]",
            modifier=obj,
            state=state,
            trigger=trig.name,
            rule=rule.rule,
            allowed=allowed,
        )

    return reject


def _bad_gate_result(obj: Any, hook: str, value: Any) -> HookReturnError:
    return HookReturnError(
        f"{type(obj).__name__}.{hook} returned {value!r}, expected True or False; the state is "
        f"unchanged. To fix, end {hook} with 'return True' (or 'return False' to leave the "
        "lifecycle where it was).",
        modifier=obj,
        hook=hook,
        value=value,
    )


def _functions(owner: type | None, names: Sequence[str]) -> dict[str, Callable[..., Any]] | None:
    """``owner``'s plain functions for ``names``, by name; None if one is anything else (a
    staticmethod, a callable object, a mock): such cells look the name up on each call."""
    if owner is None:
        return None
    found: dict[str, Callable[..., Any]] = {}
    for name in names:
        function = inspect.getattr_static(owner, name, None)
        if not inspect.isfunction(function):
            return None
        found[name] = function
    return found


Observer: TypeAlias = "Callable[[Any, CompiledState, CompiledState, Any], None]"
"""Told of every move a cell commits: ``observer(obj, source, dest, event)``."""

Watch: TypeAlias = "tuple[Observer, CompiledState] | None"
"""An observer and the state a cell belongs to (None: no observer)."""

Hook: TypeAlias = "tuple[str, Callable[..., Any] | None]"
"""What a written-out cell calls: a declared name and the class's function for it (None:
the name is looked up on the object at each call)."""


@functools.cache
def _code(text: str) -> types.CodeType:
    """``text`` compiled (once per distinct text: the code is the same for every class),
    named after it and kept in linecache, so a traceback through a cell shows its lines."""
    filename = f"<modfsm cell {hashlib.sha1(text.encode()).hexdigest()[:12]}>"
    linecache.cache[filename] = (len(text), None, text.splitlines(keepends=True), filename)
    return compile(text, filename, "exec")


def _straight_cell(
    attr: str,
    watch: Watch,
    notify: Hook | None,
    decide: Hook | None,
    when_true: tuple[Sequence[Hook], CompiledState | None],
    when_false: tuple[Sequence[Hook], CompiledState | None],
) -> Cell:
    """A cell written out as straight-line code (as attrs writes ``__init__``): the
    prelude, then the guard's branch — its hooks one call each — then the commit.

    A hook given as a function is called directly (``f(obj, state, event)``); one
    given as a name is looked up on the object at each call (``obj.name(state, event)``,
    so an instance's own attribute or a method patched later is what runs). No loop
    runs and no branch is tested that the plan does not have. The body is written
    twice, with the keyword arguments and without: the same calls, a plain call
    being the cheaper one in CPython. Computed once per class and plan.
    """
    names: dict[str, Any] = {"set_state": object.__setattr__, "attr": attr}
    if watch is not None:
        names["observe"], names["source"] = watch

    # The cell's own names are these and "h_<hook>" (a hook's function) and "s_<state>" (a
    # destination): hook and state names are identifiers (the declaration is checked).
    def callee(hook: Hook) -> tuple[str, str]:
        name, function = hook
        if function is None:
            return f"obj.{name}", ""
        names[f"h_{name}"] = function
        return f"h_{name}", "obj, "

    def branch(hooks: Sequence[Hook], dest: CompiledState | None, indent: str,
               tail: str) -> list[str]:  # fmt: skip
        lines = []
        for hook in hooks:
            function, first = callee(hook)
            lines.append(f"{indent}{function}({first}state, event{tail})")
        if dest is not None:
            names[f"s_{dest.name}"] = dest
            lines.append(f"{indent}set_state(obj, attr, s_{dest.name})")
            if watch is not None:
                lines.append(f"{indent}observe(obj, source, s_{dest.name}, event)")
        return lines

    def body(tail: str) -> list[str]:
        lines = []
        if notify is not None:
            function, first = callee(notify)
            lines.append(f"        {function}({first}state, event{tail})")
        if decide is None:
            return lines + (branch(*when_true, "        ", tail) or ["        pass"])
        function, first = callee(decide)
        lines.append(f"        if {function}({first}event):")
        lines += branch(*when_true, "            ", tail) or ["            pass"]
        otherwise = branch(*when_false, "            ", tail)
        return lines + (["        else:", *otherwise] if otherwise else [])

    text = "\n".join(["def cell(obj, state, event, /, **kwargs):", "    if kwargs:",
                      *body(", **kwargs"), "    else:", *body("")])  # fmt: skip
    exec(_code(text), names)  # our own text, built from a checked plan
    cell: Cell = names["cell"]
    return cell


def _move_cell(
    plan: Plan, prelude: HookSpec | None, states: Mapping[str, CompiledState], attr: str,
    owner: type | None = None,
    watch: Watch = None,
) -> Cell:  # fmt: skip
    """The cell of ``plan``: prelude, guard, the chosen branch's hooks, commit (and the
    observer of ``watch``, ``(observer, the cell's state)``, told of the move).

    Where ``owner`` is a class whose hooks and guard are plain functions, the cell
    calls them directly (and a cell that would only run one hook *is* that hook:
    cells and event hooks are called alike); otherwise it looks them up by name on
    the object at each call (instances with a ``__dict__`` may hold their own).
    """
    assert plan.when_true is not None  # a non-rejection plan always has a branch
    when_false = plan.when_false or Branch((), None)
    guard = plan.guard
    dest_t = None if plan.when_true.dest is None else states[plan.when_true.dest]
    dest_f = None if when_false.dest is None else states[when_false.dest]
    if prelude is None and guard is None and not plan.when_true.hooks and dest_t is None:
        return _ignore  # a row with no prelude, no hooks and no destination
    if prelude is not None and prelude.gate:
        return _gated_cell(prelude.name, guard, plan, states, attr, watch)
    first = () if prelude is None else (prelude.name,)
    asked = () if guard is None else (guard,)
    needed = (*first, *asked, *plan.when_true.hooks, *when_false.hooks)
    functions = _functions(owner, needed) or {}
    # A name is looked up on the object at each call unless the class's function was found.
    find: dict[str, Hook] = {name: (name, functions.get(name)) for name in needed}
    notify = None if prelude is None else find[prelude.name]
    decide = None if guard is None else find[guard]
    hooks_t = [find[name] for name in plan.when_true.hooks]
    hooks_f = [find[name] for name in when_false.hooks]
    only = hooks_t[0][1] if len(hooks_t) == 1 else None
    if notify is None and decide is None and dest_t is None and only is not None:
        return only  # the cell is the hook itself: cells and event hooks are called alike
    return _straight_cell(attr, watch, notify, decide, (hooks_t, dest_t), (hooks_f, dest_f))


def _gated_cell(
    gate_name: str, guard: str | None, plan: Plan, states: Mapping[str, CompiledState],
    attr: str, watch: Watch,
) -> Cell:  # fmt: skip
    """A cell whose prelude is a gate (``initialize``/``finalize``): the gate's result
    decides whether anything else runs; hooks are looked up by name (cold path)."""
    assert plan.when_true is not None
    when_false = plan.when_false or Branch((), None)  # read only when there is a guard
    hooks_t, hooks_f = plan.when_true.hooks, when_false.hooks
    dest_t = None if plan.when_true.dest is None else states[plan.when_true.dest]
    dest_f = None if when_false.dest is None else states[when_false.dest]
    set_state = object.__setattr__

    def gated(obj: Any, state: Any, event: Any, /, **kwargs: Any) -> None:
        result = getattr(obj, gate_name)(state=state, **kwargs)  # as the reference calls it
        if result is not True:
            if result is False:
                return
            raise _bad_gate_result(obj, gate_name, result)
        if guard is None or getattr(obj, guard)(event):
            hooks, dest = hooks_t, dest_t
        else:
            hooks, dest = hooks_f, dest_f
        for name in hooks:
            getattr(obj, name)(state, event, **kwargs)
        if dest is not None:
            set_state(obj, attr, dest)
            if watch is not None:
                watch[0](obj, watch[1], dest, event)

    return gated
