"""Cells written out as straight-line code (``compiler._straight_cell``): the same calls,
in the same order, with the same arguments, as the plan says — with keyword arguments
and without, calling a class's functions directly or looking names up on the object."""

from __future__ import annotations

import traceback
from typing import Any

import pytest

from modfsm.engine.kernel.compiler import compile_machine, specialize
from modfsm.engine.kernel.declaration import Declaration, HookSpec, StateSpec, TriggerSpec
from modfsm.engine.kernel.errors import DeclarationError
from tests.unit.test_elision import _guarded  # go: noisy when check holds, else stay


def _moving(name: str, hooks: tuple[str, ...] = ("first", "second")) -> Declaration:
    """off --go--> on through an event prelude ``seen`` and the hooks ``hooks`` when
    ``check`` holds; stays, running ``other``, when it does not."""
    return Declaration(
        name=name,
        flags=("on",),
        states=(StateSpec("off", {"on": False}), StateSpec("on", {"on": True})),
        initial="off",
        guards=("check",),
        hooks=(HookSpec("seen"), *(HookSpec(h) for h in (*hooks, "other"))),
        triggers=(TriggerSpec("go", "go", "seen", "go"),),
        event_triggers={"go": "go"},
        transitions=(
            {
                "trigger": "go",
                "source": "off",
                "dest": "on",
                "conditions": "check",
                "before": list(hooks),
            },
            {"trigger": "go", "source": "off", "dest": None, "unless": "check", "before": "other"},
            {"trigger": "go", "source": "on", "dest": None},
        ),
        rejections=(),
    )


class Recorder:
    """Records every call with its arguments; ``check`` answers ``answer``."""

    __slots__ = ("_lc", "answer", "calls")

    _lc: Any

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls: list[tuple[Any, ...]] = []

    def check(self, event: Any) -> bool:
        self.calls.append(("check", event))
        return self.answer

    def seen(self, state: Any, event: Any, **kwargs: Any) -> None:
        self.calls.append(("seen", state, event, kwargs))

    def first(self, state: Any, event: Any, **kwargs: Any) -> None:
        self.calls.append(("first", state, event, kwargs))

    def second(self, state: Any, event: Any, **kwargs: Any) -> None:
        self.calls.append(("second", state, event, kwargs))

    def other(self, state: Any, event: Any, **kwargs: Any) -> None:
        self.calls.append(("other", state, event, kwargs))


@pytest.mark.parametrize("resolved", [True, False], ids=["class functions", "names"])
@pytest.mark.parametrize("answer", [True, False])
@pytest.mark.parametrize("kwargs", [{}, {"loss": 1.5, "batch_data": None}], ids=["bare", "kw"])
def test_a_written_cell_makes_the_plans_calls_with_the_given_arguments(
    resolved: bool, answer: bool, kwargs: dict[str, Any]
) -> None:
    machine = compile_machine(
        _moving(f"written-{resolved}-{answer}-{len(kwargs)}"), state_attr="_lc"
    )
    table = specialize(machine, noop_hooks=frozenset(), owner=Recorder if resolved else None)
    obj = Recorder(answer)
    object.__setattr__(obj, "_lc", table.states["off"])
    table.states["off"]["go"](obj, "STATE", "EVENT", **kwargs)
    hooks = ["first", "second"] if answer else ["other"]
    assert obj.calls == [
        ("seen", "STATE", "EVENT", kwargs),
        ("check", "EVENT"),
        *((hook, "STATE", "EVENT", kwargs) for hook in hooks),
    ]
    assert obj._lc is table.states["on" if answer else "off"]


def test_a_cell_of_names_looks_them_up_on_the_object_at_each_call() -> None:
    machine = compile_machine(_guarded("written-lookup"), state_attr="_lc")
    table = specialize(machine, noop_hooks=frozenset())

    class Open:
        def __init__(self) -> None:
            self.calls: list[str] = []

        def check(self, event: Any) -> bool:
            return True

        def noisy(self, state: Any, event: Any, **kwargs: Any) -> None:
            self.calls.append("class")

    obj = Open()
    cell = table.states["off"]["go"]
    cell(obj, None, None)
    obj.noisy = lambda state, event, **kwargs: obj.calls.append("instance")  # type: ignore[method-assign]
    cell(obj, None, None)
    assert obj.calls == ["class", "instance"]


def test_a_traceback_through_a_written_cell_shows_the_cells_line() -> None:
    machine = compile_machine(_moving("written-traceback"), state_attr="_lc")

    class Failing(Recorder):
        __slots__ = ()

        def second(self, state: Any, event: Any, **kwargs: Any) -> None:
            raise RuntimeError("second failed")

    table = specialize(machine, noop_hooks=frozenset(), owner=Failing)

    obj = Failing(answer=True)
    with pytest.raises(RuntimeError) as caught:
        table.states["off"]["go"](obj, None, None)
    text = "".join(traceback.format_exception(caught.value))
    assert "<modfsm cell " in text
    assert "h_second(obj, state, event)" in text  # the line of the cell that made the call
    assert obj.calls[-1][0] == "first"  # the hooks before it ran, in order


@pytest.mark.parametrize("name", ["pass", "class", "None"])
def test_a_hook_named_by_a_python_keyword_is_refused_when_declared(name: str) -> None:
    with pytest.raises(DeclarationError, match=f"'{name}' is not a valid identifier"):
        compile_machine(_moving(f"written-keyword-{name}", hooks=(name,)), state_attr="_lc")
