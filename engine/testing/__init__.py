"""modfsm's test kit: property-test a modifier against the lifecycle specification.

``from engine.testing import ModifierContract`` and subclass it in a test module
(see ``docs/testing-modifiers.md``); or use the pytest fixtures the kit
registers (``modfsm_contract``, ``modfsm_spy``, ``modfsm_torch_hooks``). The
kit needs hypothesis and pytest, from the ``test`` extra
(``pip install 'modfsm[test]'``); ``import engine`` never does.

Names are imported from their modules on first use, so that pytest can load
the plugin (:mod:`engine.testing.plugin`) without importing hypothesis or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.testing import strategies
    from engine.testing.contract import Contract
    from engine.testing.defaults import default_model
    from engine.testing.expected import Expectation, check_call, expect
    from engine.testing.report import ContractViolation
    from engine.testing.scenario import Schedule, Stream, StreamRecorder
    from engine.testing.snapshot import torch_hooks
    from engine.testing.spy import HookCall, LifecycleCall, LifecycleSpy
    from engine.testing.testcase import ModifierContract

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
    "Contract": "engine.testing.contract",
    "ContractViolation": "engine.testing.report",
    "ModifierContract": "engine.testing.testcase",
    "default_model": "engine.testing.defaults",
    "Expectation": "engine.testing.expected",
    "check_call": "engine.testing.expected",
    "expect": "engine.testing.expected",
    "Schedule": "engine.testing.scenario",
    "Stream": "engine.testing.scenario",
    "StreamRecorder": "engine.testing.scenario",
    "torch_hooks": "engine.testing.snapshot",
    "HookCall": "engine.testing.spy",
    "LifecycleCall": "engine.testing.spy",
    "LifecycleSpy": "engine.testing.spy",
}


def __getattr__(name: str) -> Any:
    if name == "strategies":
        return importlib.import_module("engine.testing.strategies")
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'engine.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


def __dir__() -> list[str]:
    return sorted(__all__)
