"""pytest plugin (entry point ``pytest11: modfsm``): the test kit as fixtures.

Installed with modfsm, so any test suite can use, without importing anything:

- ``modfsm_contract`` — ``modfsm_contract(make_modifier, **options)`` returns a
  :class:`~modfsm.engine.tools.testing.contract.Contract` (the same options as its fields);
  call ``.check_all()`` or one check::

      def test_my_modifier_keeps_the_contract(modfsm_contract):
          modfsm_contract(lambda start, end: MyModifier(start=start, end=end)).check_all()

- ``modfsm_spy`` — ``modfsm_spy(modifier)`` attaches a
  :class:`~modfsm.engine.tools.testing.spy.LifecycleSpy`; every spy is detached after the test.
- ``modfsm_torch_hooks`` — :func:`~modfsm.engine.tools.testing.snapshot.torch_hooks`, to count
  the hooks torch holds for a model (and optimizer) before and after.

Loading the plugin imports nothing heavy (neither hypothesis nor torch): each
fixture imports the kit when a test asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from modfsm.engine.runtime.modifier import Modifier
    from modfsm.engine.tools.testing.contract import Contract
    from modfsm.engine.tools.testing.spy import LifecycleSpy


#: ``pytest -v`` level, for the contract's reports (hypothesis' own report only from -v).
PYTEST_VERBOSITY: list[int] = [0]


def pytest_configure(config: pytest.Config) -> None:
    """Remember how verbose pytest is (the kit reads it; nothing is imported here)."""
    PYTEST_VERBOSITY[0] = config.get_verbosity()


@pytest.fixture
def modfsm_contract() -> Callable[..., Contract]:
    """``modfsm_contract(make_modifier, **options)``: the modifier contract to check."""
    from modfsm.engine.tools.testing.contract import Contract

    def build(
        make_modifier: Callable[[float | None, float | None], Modifier], **options: Any
    ) -> Contract:
        return Contract(make_modifier=make_modifier, **options)

    return build


@pytest.fixture
def modfsm_spy() -> Iterator[Callable[[Modifier], LifecycleSpy]]:
    """``modfsm_spy(modifier)``: record its lifecycle calls and hooks (detached after the test)."""
    from modfsm.engine.tools.testing.spy import LifecycleSpy

    spies: list[LifecycleSpy] = []

    def attach(modifier: Modifier) -> LifecycleSpy:
        spy = LifecycleSpy(modifier)
        spies.append(spy)
        return spy

    yield attach
    for spy in spies:
        spy.detach()


@pytest.fixture
def modfsm_torch_hooks() -> Callable[..., Any]:
    """``modfsm_torch_hooks(model, optimizer=None)``: torch's hooks, counted by where they are."""
    from modfsm.engine.tools.testing.snapshot import torch_hooks

    return torch_hooks
