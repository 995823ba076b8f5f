"""Snapshots to compare: a model's tensors and output, a modifier's state, torch's hooks.

Every comparison is exact (``torch.equal``): a modifier that should leave the
model alone must leave it bit for bit, and a resumed run must equal the
uninterrupted one bit for bit.
"""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs
import torch

from modfsm.engine.runtime.hooks import output_tensor

__all__ = [
    "differences",
    "forward_probe",
    "model_snapshot",
    "object_snapshot",
    "torch_hooks",
]

_MODULE_HOOK_DICTS = (
    ("forward", "_forward_hooks"),
    ("forward_pre", "_forward_pre_hooks"),
    ("backward", "_backward_hooks"),
    ("backward_pre", "_backward_pre_hooks"),
    ("state_dict", "_state_dict_hooks"),
    ("state_dict_pre", "_state_dict_pre_hooks"),
    ("load_state_dict_pre", "_load_state_dict_pre_hooks"),
    ("load_state_dict_post", "_load_state_dict_post_hooks"),
)
_TENSOR_HOOK_DICTS = (
    ("tensor", "_backward_hooks"),
    ("post_accumulate_grad", "_post_accumulate_grad_hooks"),
)
_GLOBAL_MODULE_HOOKS = (
    ("module forward", "_global_forward_hooks"),
    ("module forward_pre", "_global_forward_pre_hooks"),
    ("module backward", "_global_backward_hooks"),
    ("module backward_pre", "_global_backward_pre_hooks"),
    ("module registration", "_global_module_registration_hooks"),
    ("parameter registration", "_global_parameter_registration_hooks"),
    ("buffer registration", "_global_buffer_registration_hooks"),
)
_OPTIMIZER_HOOK_DICTS = (
    ("step_pre", "_optimizer_step_pre_hooks"),
    ("step_post", "_optimizer_step_post_hooks"),
    ("state_dict_pre", "_optimizer_state_dict_pre_hooks"),
    ("state_dict_post", "_optimizer_state_dict_post_hooks"),
    ("load_state_dict_pre", "_optimizer_load_state_dict_pre_hooks"),
    ("load_state_dict_post", "_optimizer_load_state_dict_post_hooks"),
)
_GLOBAL_OPTIMIZER_HOOKS = (
    ("optimizer step_pre", "_global_optimizer_pre_hooks"),
    ("optimizer step_post", "_global_optimizer_post_hooks"),
)


def torch_hooks(model: torch.nn.Module, optimizer: Any = None) -> Counter[str]:
    """Every hook torch holds for ``model`` (modules, parameters, buffers), its optimizer and
    globally, counted by where it is: ``{"forward hook on module '0'": 1, ...}``; and every
    module whose ``forward`` is replaced on the instance (``forward_wrap``)."""
    found: Counter[str] = Counter()
    tensors = [*model.named_parameters(), *model.named_buffers()]
    owners = [
        *(
            (module, _MODULE_HOOK_DICTS, f"on module {name!r}")
            for name, module in model.named_modules()
        ),
        *((tensor, _TENSOR_HOOK_DICTS, f"on {name!r}") for name, tensor in tensors),
        (importlib.import_module("torch.nn.modules.module"), _GLOBAL_MODULE_HOOKS, "(global)"),
    ]
    if optimizer is not None:
        owners.append((optimizer, _OPTIMIZER_HOOK_DICTS, "on the optimizer"))
        optimizers = importlib.import_module("torch.optim.optimizer")
        owners.append((optimizers, _GLOBAL_OPTIMIZER_HOOKS, "(global)"))
    for owner, table, where in owners:
        for kind, attribute in table:
            count = len(getattr(owner, attribute, None) or {})
            if count:
                found[f"{kind} hook {where}"] += count
    for name, module in model.named_modules():
        if "forward" in module.__dict__:  # a forward replaced on the instance (forward_wrap)
            found[f"forward replaced on module {name!r}"] += 1
    return found


def model_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter, buffer and gradient, by name."""
    tensors: dict[str, torch.Tensor] = {}
    for name, parameter in model.named_parameters():
        tensors[f"parameter {name!r}"] = parameter.detach().clone()
        if parameter.grad is not None:
            tensors[f"gradient of {name!r}"] = parameter.grad.detach().clone()
    for name, buffer in model.named_buffers():
        tensors[f"buffer {name!r}"] = buffer.detach().clone()
    return tensors


def forward_probe(model: torch.nn.Module, inputs: Any) -> torch.Tensor:
    """The model's output on ``inputs`` (a tensor, or a dict of keyword arguments) in eval
    mode, without gradients (the mode is restored); of an output object, its ``logits`` or
    first tensor."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    finally:
        model.train(was_training)
    tensor = output_tensor(output)
    if tensor is None:
        raise TypeError(
            f"the contract compares model outputs, and {type(model).__name__} returned "
            f"{type(output).__name__}, which holds no tensor. To fix, give the contract a "
            "model that returns a tensor or an output object."
        )
    return tensor.detach().clone()


def object_snapshot(value: Any, _seen: frozenset[int] = frozenset()) -> Any:
    """A copy of ``value`` that later changes to ``value`` do not reach, for :func:`differences`.

    Tensors are cloned; mappings, sequences, sets and attrs instances are copied
    item by item; modules, optimizers and other objects stand for themselves
    (by identity: the model is compared separately).
    """
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if id(value) in _seen:
        return ("<cycle>", id(value))
    seen = _seen | {id(value)}
    if isinstance(value, Mapping):
        return {key: object_snapshot(item, seen) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(object_snapshot(item, seen) for item in value)
    if isinstance(value, set | frozenset):
        return frozenset(value)
    if attrs.has(type(value)) and not isinstance(value, torch.nn.Module):
        fields = attrs.fields(type(value))
        return {"<class>": type(value).__qualname__} | {
            field.name: object_snapshot(getattr(value, field.name), seen) for field in fields
        }
    return ("<object>", type(value).__qualname__, id(value))


def differences(before: Any, after: Any, where: str = "") -> list[str]:
    """Where two snapshots differ, as ``where`` paths (empty: equal, tensors bit for bit)."""
    if isinstance(before, torch.Tensor) or isinstance(after, torch.Tensor):
        same = (
            isinstance(before, torch.Tensor)
            and isinstance(after, torch.Tensor)
            and before.shape == after.shape
            and before.dtype == after.dtype
            and bool(torch.equal(before, after))
        )
        return [] if same else [where or "the value"]
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for key in [*before, *(k for k in after if k not in before)]:
            path = f"{where}[{key!r}]" if where else str(key)
            if key not in before or key not in after:
                found.append(path)
            else:
                found += differences(before[key], after[key], path)
        return found
    if isinstance(before, list | tuple) and isinstance(after, list | tuple):
        if type(before) is not type(after) or len(before) != len(after):
            return [where or "the value"]
        found = []
        for position, (one, other) in enumerate(zip(before, after, strict=True)):
            found += differences(one, other, f"{where}[{position}]")
        return found
    if isinstance(before, float) and isinstance(after, float) and before != before:
        return [] if after != after else [where or "the value"]  # NaN equals NaN here
    try:
        same = bool(before == after)
    except Exception:  # an object whose == is not a bool (an array); compare identity
        same = before is after
    return [] if same else [where or "the value"]
