"""HooksMixin: registration, disabling (on any subclass, nested), removal at finalize."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import torch

from engine import ConfigError, ConfigTypeError, Event, EventType, Modifier, State
from engine.hooks import HooksMixin


def torch_hook_count(module: torch.nn.Module) -> int:
    """Every hook torch holds for ``module``'s tree and its parameters."""
    total = 0
    for sub in module.modules():
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
    assert torch_hook_count(net) == before + 5
    step(net)
    assert sorted(probe.calls) == sorted(
        ["forward_pre", "forward", "full_backward_pre", "full_backward", "parameter"]
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
    assert torch_hook_count(net) == before + 5


def test_disable_hooks_on_any_subclass_disables_all_of_them() -> None:
    net = model()
    probe, _ = started(net)
    with OtherProbe.disable_hooks():
        assert HooksMixin.hooks_disabled()
        step(net)
    assert probe.calls == []
    assert not HooksMixin.hooks_disabled()
    step(net)
    assert len(probe.calls) == 5


def test_disable_hooks_nests() -> None:
    net = model()
    probe, _ = started(net)
    with Probe.disable_hooks():
        with OtherProbe.disable_hooks():
            step(net)
        step(net)  # the outer block is still active
    assert probe.calls == []
    step(net)
    assert len(probe.calls) == 5


def test_kept_hooks_run_while_others_are_disabled() -> None:
    net = model()
    state = State(model=net)
    probe = Probe(start=None)
    probe.initialize(state)
    kept = probe.register_hook(net[0], lambda *a: probe.calls.append("kept"), "forward")
    probe.register_hook(net[0], lambda *a: probe.calls.append("dropped"), "forward")
    with Probe.disable_hooks(keep=[kept]):
        net(torch.randn(1, 3))
        with Probe.disable_hooks():  # an inner block without it wins
            net(torch.randn(1, 3))
    assert probe.calls == ["kept"]


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
    assert torch_hook_count(net) == before + 5 + 1
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
