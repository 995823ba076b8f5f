"""modfsm's test kit: property-test a modifier against the lifecycle specification.

``from modfsm.engine.tools.testing import ModifierContract`` and subclass it in a test module
(see ``docs/testing-modifiers.md``); or use the pytest fixtures the kit
registers (``modfsm_contract``, ``modfsm_spy``, ``modfsm_torch_hooks``). The
kit needs hypothesis and pytest, from the ``test`` extra
(``pip install 'modfsm[test]'``); ``import modfsm.engine`` never does.

Names are imported from their modules on first use, so that pytest can load
the plugin (:mod:`modfsm.engine.tools.testing.plugin`) without importing hypothesis or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modfsm.engine.tools.testing import strategies
    from modfsm.engine.tools.testing.contract import Contract
    from modfsm.engine.tools.testing.defaults import default_model
    from modfsm.engine.tools.testing.expected import Expectation, check_call, expect
    from modfsm.engine.tools.testing.report import ContractViolation
    from modfsm.engine.tools.testing.scenario import Schedule, Stream, StreamRecorder
    from modfsm.engine.tools.testing.snapshot import torch_hooks
    from modfsm.engine.tools.testing.spy import HookCall, LifecycleCall, LifecycleSpy
    from modfsm.engine.tools.testing.testcase import ModifierContract

__all__ = [
    "Contract",
    "ContractViolation",
    "Expectation",
    "HookCall",
    "LifecycleCall",
    "LifecycleSpy",
    "ModifierContract",
    "Schedule",
    "Stream",
    "StreamRecorder",
    "check_call",
    "default_model",
    "expect",
    "strategies",
    "torch_hooks",
]

_HOME = {
    "Contract": "modfsm.engine.tools.testing.contract",
    "ContractViolation": "modfsm.engine.tools.testing.report",
    "ModifierContract": "modfsm.engine.tools.testing.testcase",
    "default_model": "modfsm.engine.tools.testing.defaults",
    "Expectation": "modfsm.engine.tools.testing.expected",
    "check_call": "modfsm.engine.tools.testing.expected",
    "expect": "modfsm.engine.tools.testing.expected",
    "Schedule": "modfsm.engine.tools.testing.scenario",
    "Stream": "modfsm.engine.tools.testing.scenario",
    "StreamRecorder": "modfsm.engine.tools.testing.scenario",
    "torch_hooks": "modfsm.engine.tools.testing.snapshot",
    "HookCall": "modfsm.engine.tools.testing.spy",
    "LifecycleCall": "modfsm.engine.tools.testing.spy",
    "LifecycleSpy": "modfsm.engine.tools.testing.spy",
}


def __getattr__(name: str) -> Any:
    if name == "strategies":
        return importlib.import_module("modfsm.engine.tools.testing.strategies")
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'modfsm.engine.tools.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


def __dir__() -> list[str]:
    return sorted(__all__)
