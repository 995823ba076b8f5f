"""A small, deterministic training loop through a Session, shared by the modifier tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch

from modfsm.engine import Modifier
from modfsm.engine.loop.session import Session

__all__ = ["batch", "bounds", "linear", "mlp", "resume_run", "straight_run", "train_steps"]


def mlp(seed: int = 0, widths: Sequence[int] = (8, 16, 4)) -> torch.nn.Sequential:
    """Linear layers with ReLU between; names "0", "2", ..."""
    torch.manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for position, (a, b) in enumerate(itertools.pairwise(widths)):
        if position:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(a, b))
    return torch.nn.Sequential(*layers)


def linear(model: torch.nn.Module, index: int) -> torch.nn.Linear:
    """``model[index]``, typed as the Linear layer it is."""
    layer = model[index]  # type: ignore[index]  # a Sequential, typed as Module here
    assert isinstance(layer, torch.nn.Linear)
    return layer


def bounds(observer: Any) -> tuple[float, float]:
    """An observer's ``(lo, hi)`` as floats; it must have observed something."""
    assert observer.lo is not None, "the observer saw nothing"
    assert observer.hi is not None, "the observer saw nothing"
    return float(observer.lo), float(observer.hi)


def batch(step: int, width: int = 8) -> torch.Tensor:
    """The inputs of batch ``step``: fixed by ``step`` alone."""
    return torch.randn(6, width, generator=torch.Generator().manual_seed(1000 + step))


def train_steps(
    session: Session,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    steps: int,
    after_step: Callable[[int], None] | None = None,
) -> None:
    """Run ``steps`` batches (one optimizer step each, reported by the wrapped optimizer)."""
    width = next(model.parameters()).shape[1]
    for _ in range(steps):
        step = session.global_step
        x = batch(step, width)
        session.batch_start(x)
        out = model(x)
        loss = out.pow(2).mean() + out.sin().sum() * 0.01
        session.loss_calculated(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        session.batch_end()
        if after_step is not None:
            after_step(step)


def _start(
    make: Callable[[], list[Modifier]], model: torch.nn.Module, **kwargs: Any
) -> tuple[Session, torch.optim.Optimizer]:
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    session = Session()
    session.initialize(
        model=model, optimizer=optimizer, recipe=make(), wrap_optimizer=True, **kwargs
    )
    return session, optimizer


def _model(prepare: Callable[[torch.nn.Module], None] | None) -> torch.nn.Module:
    model = mlp()
    if prepare is not None:
        prepare(model)
    return model


def straight_run(
    make: Callable[[], list[Modifier]],
    steps: int,
    prepare: Callable[[torch.nn.Module], None] | None = None,
    **kwargs: Any,
) -> tuple[torch.nn.Module, list[Modifier]]:
    """``steps`` steps and finalize, uninterrupted (``prepare`` edits the model first)."""
    model = _model(prepare)
    session, optimizer = _start(make, model, **kwargs)
    train_steps(session, model, optimizer, steps)
    session.finalize()
    return model, [m for _, m in session.modifiers]


def resume_run(
    make: Callable[[], list[Modifier]],
    steps: int,
    save_at: int,
    prepare: Callable[[torch.nn.Module], None] | None = None,
    **kwargs: Any,
) -> tuple[torch.nn.Module, list[Modifier]]:
    """``save_at`` steps, a checkpoint through torch.save/load, fresh objects, the rest."""
    import io

    model = _model(prepare)
    session, optimizer = _start(make, model, **kwargs)
    train_steps(session, model, optimizer, save_at)
    buffer = io.BytesIO()
    torch.save(
        {
            "session": session.state_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
        },
        buffer,
    )
    for _, modifier in session.modifiers:  # the old run is abandoned, hooks and all
        modifier.remove_hooks()
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    fresh = mlp(seed=99)  # different weights: everything must come from the checkpoint
    fresh.load_state_dict(saved["model"])
    optimizer = torch.optim.Adam(fresh.parameters(), lr=0.05)
    optimizer.load_state_dict(saved["optimizer"])
    resumed = Session()
    resumed.load_state_dict(saved["session"])
    resumed.initialize(
        model=fresh, optimizer=optimizer, recipe=make(), wrap_optimizer=True, **kwargs
    )
    train_steps(resumed, fresh, optimizer, steps - save_at)
    resumed.finalize()
    return fresh, [m for _, m in resumed.modifiers]
