"""What the contract uses where the author gives nothing: a small MLP, SGD, random batches."""

from __future__ import annotations

from typing import Any

import torch

from modfsm.engine.runtime.hooks import output_tensor
from modfsm.engine.tools.testing.loop import reseed

__all__ = [
    "default_loss",
    "default_model",
    "default_optimizer",
    "input_width",
    "no_calib_data",
    "no_teacher",
    "random_batch",
]


def default_model() -> torch.nn.Module:
    """The contract's default model: ``Linear(8, 16) -> ReLU -> Linear(16, 4)``, seeded."""
    generator_state = torch.random.get_rng_state()
    reseed(0)
    try:
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    finally:
        torch.random.set_rng_state(generator_state)


def default_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD with learning rate 0.1 and momentum 0.9."""
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def default_loss(output: Any) -> torch.Tensor:
    """A smooth function of every output value (so every weight gets a gradient); of an
    output object (transformers' ``ModelOutput``), of its ``logits`` or first tensor."""
    tensor = output_tensor(output)
    if tensor is None:
        raise TypeError(
            f"the contract's default loss needs a tensor, and the model returned "
            f"{type(output).__name__} holding none. To fix, give the contract "
            "loss(output) -> a scalar tensor."
        )
    return tensor.float().pow(2).mean() + tensor.float().sin().sum() * 0.01


def no_calib_data() -> Any:
    """No calibration data."""
    return None


def no_teacher() -> torch.nn.Module | None:
    """No teacher model."""
    return None


def random_batch(index: int, width: int) -> torch.Tensor:
    """4 rows of ``width`` random numbers, the same for the same ``index``."""
    return torch.randn(4, width, generator=torch.Generator().manual_seed(index))


def input_width(model: torch.nn.Module) -> int:
    """The ``in_features`` of the model's first layer that has one."""
    for module in model.modules():
        width = getattr(module, "in_features", None)
        if isinstance(width, int):
            return width
    raise TypeError(
        f"the contract cannot tell what input {type(model).__name__} takes (it has no layer "
        "with in_features). To fix, give the contract make_batch(index) -> a batch of inputs "
        "(a tensor, or a dict of keyword arguments for model(**batch))."
    )
