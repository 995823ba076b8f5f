"""HooksMixin: registration, disabling (on any subclass, nested), removal at finalize."""

from __future__ import annotations

import copy
from typing import Any

import attrs
import pytest
import torch

from modfsm.engine import (
    ConfigError,
    ConfigTypeError,
    Event,
    EventType,
    LifecycleState,
    Modifier,
    State,
)
from modfsm.engine.runtime.hooks import HooksMixin


def torch_hook_count(module: torch.nn.Module) -> int:
    """Every hook torch holds for ``module``'s tree and its parameters, and every forward
    replaced on an instance (``forward_wrap``)."""
    total = 0
    for sub in module.modules():
        total += "forward" in sub.__dict__
        total += len(sub._forward_hooks) + len(sub._forward_pre_hooks)
        total += len(sub._backward_hooks) + len(sub._backward_pre_hooks)
        for parameter in sub.parameters(recurse=False):
            total += len(parameter._backward_hooks or {})
    return total


@attrs.define(eq=False)
class Probe(Modifier):
    """Registers one hook of every kind when it starts."""

    calls: list[str] = attrs.field(factory=list)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        layer = state.model[0]
        self.register_hook(layer, lambda *a: self.calls.append("forward"), "forward")
        self.register_hook(layer, lambda *a: self.calls.append("forward_pre"), "forward_pre")
        self.register_hook(layer, lambda *a: self.calls.append("full_backward"), "full_backward")
        self.register_hook(
            layer, lambda *a: self.calls.append("full_backward_pre"), "full_backward_pre"
        )
        self.register_hook(layer.weight, lambda g: self.calls.append("parameter"), "parameter")
        self.register_hook(state.model[2], self._wrap, "forward_wrap")

    def _wrap(self, module: torch.nn.Module, forward: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls.append("forward_wrap")
        return forward(*args, **kwargs)


class OtherProbe(Probe):
    """A second subclass, to disable hooks through."""


def model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))


def step(net: torch.nn.Module) -> None:
    net(torch.randn(4, 3, requires_grad=True)).sum().backward()


def started(net: torch.nn.Module, cls: type[Probe] = Probe) -> tuple[Probe, State]:
    state = State(model=net)
    probe = cls(start=0)
    probe.initialize(state)
    return probe, state


def test_every_hook_kind_fires_and_is_held_by_torch() -> None:
    net = model()
    before = torch_hook_count(net)
    probe, _ = started(net)
    assert torch_hook_count(net) == before + 6
    step(net)
    assert sorted(probe.calls) == sorted(
        [
            "forward_pre",
            "forward",
            "full_backward_pre",
            "full_backward",
            "parameter",
            "forward_wrap",
        ]
    )


def test_finalize_removes_every_hook_registered_through_the_modifier() -> None:
    net = model()
    before = torch_hook_count(net)
    probe, state = started(net)
    assert torch_hook_count(net) > before
    probe.finalize(state)
    assert torch_hook_count(net) == before
    probe.calls.clear()
    step(net)
    assert probe.calls == []


def test_hooks_survive_an_on_finalize_that_returns_false() -> None:
    @attrs.define(eq=False)
    class NotYet(Probe):
        def on_finalize(self, state: State, **kwargs: Any) -> bool:
            return False

    net = model()
    before = torch_hook_count(net)
    probe, state = started(net, NotYet)
    probe.finalize(state)
    assert not probe.finalized
    assert torch_hook_count(net) == before + 6


def test_hooks_survive_an_on_finalize_that_raises_and_a_retry_removes_them() -> None:
    @attrs.define(eq=False)
    class FailsOnce(Probe):
        failures: int = 1

        def on_finalize(self, state: State, **kwargs: Any) -> bool:
            if self.failures:
                self.failures -= 1
                raise OSError("checkpoint disk full")
            return True

    net = model()
    before = torch_hook_count(net)
    probe, state = started(net, FailsOnce)
    with pytest.raises(OSError, match="disk full"):
        probe.finalize(state)
    assert not probe.finalized
    assert torch_hook_count(net) == before + 6  # still active, so its hooks stay
    step(net)
    assert len(probe.calls) == 6
    probe.finalize(state)  # the retry succeeds and removes them
    assert probe.finalized
    assert torch_hook_count(net) == before


@attrs.define(eq=False)
class HooksAtInitialize(Modifier):
    """Registers a module hook and a tensor hook in ``on_initialize``, then follows a script."""

    leaf: Any = None
    gate: Any = True
    start_fails: bool = False

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        self.register_hook(state.model[0], lambda *a: None, "forward")
        self.register_hook(self.leaf, lambda g: None, "tensor")
        return self.gate  # type: ignore[no-any-return]  # scripted, may be a non-bool

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        if self.start_fails:
            raise OSError("calibration data missing")


def test_an_initialize_that_does_not_complete_leaves_no_hook_behind() -> None:
    net, leaf = model(), torch.ones(3, requires_grad=True)

    def held() -> tuple[int, int]:
        return torch_hook_count(net), len(leaf._backward_hooks or {})

    before = held()
    state = State(model=net)
    mod = HooksAtInitialize(start=0, leaf=leaf, start_fails=True)
    earlier = mod.register_hook(net[2], lambda *a: None, "forward")  # before initialize: kept
    with pytest.raises(OSError, match="calibration"):
        mod.initialize(state)  # on_initialize registered two hooks, then on_start raised
    assert mod.lifecycle_state is LifecycleState.CREATED
    assert held() == (before[0] + 1, before[1])
    assert mod._hooks == {earlier}
    for gate in (False, None):  # the gate declines, or returns a non-bool
        mod.gate, mod.start_fails = gate, False
        if gate is None:
            with pytest.raises(TypeError, match="on_initialize returned None"):
                mod.initialize(state)
        else:
            mod.initialize(state)
        assert mod.lifecycle_state is LifecycleState.CREATED
        assert held() == (before[0] + 1, before[1])
    mod.gate = True
    mod.initialize(state)  # the retry that completes registers each hook once
    assert mod.lifecycle_state is LifecycleState.STARTED
    assert held() == (before[0] + 2, before[1] + 1)
    mod.finalize(state)
    assert held() == before


def test_tensor_and_parameter_hooks_run_and_are_removed_at_finalize() -> None:
    @attrs.define(eq=False)
    class GradProbe(Modifier):
        tensor: Any = None
        calls: list[str] = attrs.field(factory=list)

        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            self.register_hook(self.tensor, lambda g: self.calls.append("tensor"), "tensor")
            weight = state.model[0].weight
            self.register_hook(weight, lambda g: self.calls.append("parameter"), "parameter")
            return True

    net = model()
    leaf = torch.ones(3, requires_grad=True)
    before_leaf, before_net = len(leaf._backward_hooks or {}), torch_hook_count(net)
    probe = GradProbe(tensor=leaf)
    state = State(model=net)
    probe.initialize(state)
    assert len(leaf._backward_hooks or {}) == before_leaf + 1  # held by torch
    assert torch_hook_count(net) == before_net + 1
    (net(leaf.unsqueeze(0)).sum() + leaf.sum()).backward()
    assert sorted(probe.calls) == ["parameter", "tensor"]
    probe.finalize(state)
    assert len(leaf._backward_hooks or {}) == before_leaf
    assert torch_hook_count(net) == before_net
    probe.calls.clear()
    (net(leaf.unsqueeze(0)).sum() + leaf.sum()).backward()
    assert probe.calls == []


def test_hooks_mixin_works_on_a_plain_class() -> None:
    class Plain(HooksMixin):
        pass

    net = model()
    before = torch_hook_count(net)
    plain, calls = Plain(), []
    plain.remove_hooks()  # nothing registered yet: nothing to do
    handle = plain.register_hook(net[0], lambda *a: calls.append("forward"), "forward")
    net(torch.randn(1, 3))
    assert calls == ["forward"]
    assert plain._hooks == {handle}
    with Plain.disable_hooks():
        net(torch.randn(1, 3))
    assert calls == ["forward"]
    plain.remove_hooks()
    assert torch_hook_count(net) == before


def test_a_slotted_class_without_a_hooks_slot_is_told_how_to_fix_it() -> None:
    class Slotted(HooksMixin):
        __slots__ = ("name",)

    net = model()
    before = torch_hook_count(net)
    with pytest.raises(ConfigTypeError, match=r"Slotted has __slots__ without a '_hooks' slot"):
        Slotted().register_hook(net[0], lambda *a: None, "forward")
    assert torch_hook_count(net) == before  # nothing was left registered


def test_disable_hooks_on_any_subclass_disables_all_of_them() -> None:
    net = model()
    probe, _ = started(net)
    with OtherProbe.disable_hooks():
        assert HooksMixin.hooks_disabled()
        step(net)
    assert probe.calls == []
    assert not HooksMixin.hooks_disabled()
    step(net)
    assert len(probe.calls) == 6


def test_disable_hooks_nests() -> None:
    net = model()
    probe, _ = started(net)
    with Probe.disable_hooks():
        with OtherProbe.disable_hooks():
            step(net)
        step(net)  # the outer block is still active
    assert probe.calls == []
    step(net)
    assert len(probe.calls) == 6


def test_kept_hooks_run_while_others_are_disabled() -> None:
    net = model()
    state = State(model=net)
    probe = Probe(start=None)
    probe.initialize(state)
    kept = probe.register_hook(net[0], lambda *a: probe.calls.append("kept"), "forward")
    probe.register_hook(net[0], lambda *a: probe.calls.append("dropped"), "forward")
    with Probe.disable_hooks(keep=[kept]):
        net(torch.randn(1, 3))
    assert probe.calls == ["kept"]


def test_nested_blocks_keep_the_union_of_their_keep_arguments() -> None:
    net = model()
    state = State(model=net)
    probe = Probe(start=None)
    probe.initialize(state)
    a = probe.register_hook(net[0], lambda *a: probe.calls.append("a"), "forward")
    b = probe.register_hook(net[0], lambda *a: probe.calls.append("b"), "forward")
    probe.register_hook(net[0], lambda *a: probe.calls.append("c"), "forward")

    def run() -> list[str]:
        probe.calls.clear()
        net(torch.randn(1, 3))
        return sorted(probe.calls)

    with Probe.disable_hooks(keep=[a]):
        assert run() == ["a"]
        with OtherProbe.disable_hooks(keep=[b]):
            assert run() == ["a", "b"]  # kept by either block: the union, as the reference
            with Probe.disable_hooks():  # a block that keeps nothing takes nothing away
                assert run() == ["a", "b"]
        assert run() == ["a"]  # leaving the inner block restores the outer one
    assert run() == ["a", "b", "c"]


def test_a_hook_registered_with_gate_false_runs_inside_disable_hooks() -> None:
    net = model()
    before = torch_hook_count(net)
    probe, state = started(net)
    probe.register_hook(net[2], lambda *a: probe.calls.append("always"), "forward", gate=False)
    probe.calls.clear()
    with Probe.disable_hooks():
        step(net)
    assert probe.calls == ["always"]
    probe.finalize(state)  # removed with the others
    assert torch_hook_count(net) == before


def test_disable_hooks_is_restored_when_the_block_raises() -> None:
    with pytest.raises(KeyError), Probe.disable_hooks():
        raise KeyError("boom")
    assert not HooksMixin.hooks_disabled()


def test_remove_hooks_accepts_any_iterable_of_handles() -> None:
    net = model()
    before = torch_hook_count(net)
    probe, _ = started(net)
    handles = [probe.register_hook(net[2], lambda *a: None, "forward") for _ in range(3)]
    probe.remove_hooks(h for h in handles[:2])
    assert torch_hook_count(net) == before + 6 + 1
    probe.remove_hooks()
    assert torch_hook_count(net) == before


@pytest.mark.parametrize(
    ("target", "hook_type", "error", "message"),
    [
        (torch.nn.Linear(1, 1), "backward", ConfigError, r"unknown hook_type 'backward'.*forward"),
        (torch.zeros(1, requires_grad=True), "forward", ConfigTypeError,
         r"a 'forward' hook needs a torch Module, got Tensor"),
        (torch.nn.Linear(1, 1), "tensor", ConfigTypeError, r"needs a torch Tensor, got Linear"),
        (torch.zeros(1), "tensor", ConfigError, r"needs a tensor that requires grad"),
    ],
)  # fmt: skip
def test_bad_registrations_are_clear_errors(
    target: Any, hook_type: str, error: type[Exception], message: str
) -> None:
    probe = Probe()
    with pytest.raises(error, match=message):
        probe.register_hook(target, lambda *a: None, hook_type)
    assert probe._hooks is None


def test_a_modifier_without_hooks_allocates_no_handle_set() -> None:
    probe = Probe(start=0)
    probe.initialize(State(model=model()))  # registers hooks
    plain = Probe(start=None)
    plain.initialize(State())
    assert plain._hooks is None
    plain.update_event(State(), Event(EventType.BATCH_START))
    plain.finalize(State())
    assert plain._hooks is None


# --- forward_wrap: modfsm's own kind ---------------------------------------------------------


class Wrapping(HooksMixin):
    """A plain HooksMixin user (not a modifier) for the forward_wrap tests."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def doubling(self, tag: str) -> Any:
        def wrap(module: torch.nn.Module, forward: Any, *args: Any, **kwargs: Any) -> Any:
            self.seen.append(f"{tag} on {type(module).__name__}")
            return forward(*args, **kwargs) * 2

        return wrap


def layer_input_output() -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor, Wrapping]:
    """A layer, an input, its plain output, and a hook owner."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    return layer, x, layer(x), Wrapping()


def test_forward_wrap_replaces_the_forward_until_removed() -> None:
    layer, x, plain, owner = layer_input_output()
    handle = owner.register_hook(layer, owner.doubling("a"), "forward_wrap")
    assert torch.equal(layer(x), plain * 2)
    assert owner.seen == ["a on Linear"]
    owner.remove_hooks()
    assert "forward" not in layer.__dict__
    assert torch.equal(layer(x), plain)
    handle.remove()  # idempotent
    assert owner.seen == ["a on Linear"]


def test_forward_wrap_is_gated_by_disable_hooks_unless_kept_or_ungated() -> None:
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    owner = Wrapping()
    gated = owner.register_hook(layer, owner.doubling("gated"), "forward_wrap")
    owner.register_hook(layer, owner.doubling("always"), "forward_wrap", gate=False)
    with HooksMixin.disable_hooks():
        layer(x)
    assert owner.seen == ["always on Linear"]
    owner.seen.clear()
    with HooksMixin.disable_hooks(keep=[gated]):
        layer(x)
    assert owner.seen == ["always on Linear", "gated on Linear"]


def test_removing_a_wrap_under_another_leaves_the_outer_one_working() -> None:
    layer, x, plain, owner = layer_input_output()
    inner = owner.register_hook(layer, owner.doubling("inner"), "forward_wrap")
    outer = owner.register_hook(layer, owner.doubling("outer"), "forward_wrap")
    assert torch.equal(layer(x), plain * 4)
    inner.remove()  # the outer one stays installed; the inner one passes calls through
    assert torch.equal(layer(x), plain * 2)
    outer.remove()
    assert torch.equal(layer(x), plain)
    assert owner.seen == ["outer on Linear", "inner on Linear", "outer on Linear"]


def test_a_deep_copy_of_a_wrapped_module_runs_the_copy() -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    owner = Wrapping()
    owner.register_hook(layer, owner.doubling("a"), "forward_wrap")
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        twin.weight.zero_()
        twin.bias.fill_(1.0)
    assert torch.equal(twin(torch.randn(4, 3)), torch.full((4, 2), 2.0))  # the copy's weights
    owner.remove_hooks()
    assert "forward" in twin.__dict__  # the copy keeps its own forward; only the layer is undone


def test_forward_wrap_takes_no_torch_options() -> None:
    owner = Wrapping()
    with pytest.raises(ConfigError, match=r"'forward_wrap' hook takes no torch options"):
        owner.register_hook(
            torch.nn.Linear(3, 2), owner.doubling("a"), "forward_wrap", prepend=True
        )
