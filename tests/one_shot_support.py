"""What the one-shot modifier tests share: a tiny Llama, calibration batches, and the
calibration events sent around forward passes as a pipeline sends them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from modfsm.engine import EventType
from modfsm.engine.loop.session import Session

Batch = dict[str, torch.Tensor]
Flow = Literal["basic", "sequential"]


def tiny_llama(seed: int = 0) -> Any:
    """A 2-layer Llama, 64 wide (its layers have 64 or 128 inputs), 64 tokens, in eval mode."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()  # type: ignore[no-untyped-call]  # transformers leaves eval unannotated


def batches(count: int = 3, padded: int = 0) -> list[Batch]:
    """``count`` batches of 4 sequences of 12 tokens; the last ``padded`` positions of the
    first sequence are padding."""
    generator = torch.Generator().manual_seed(5)
    out = []
    for _ in range(count):
        mask = torch.ones(4, 12, dtype=torch.long)
        if padded:
            mask[0, -padded:] = 0
        out.append(
            {
                "input_ids": torch.randint(0, 64, (4, 12), generator=generator),
                "attention_mask": mask,
            }
        )
    return out


def start(model: torch.nn.Module, *modifiers: Any, trace: bool = False) -> Session:
    """A session initialized with ``modifiers`` (one stage) on ``model``."""
    session = Session()
    session.initialize(model=model, recipe=list(modifiers), trace=trace)
    return session


def calibrate(session: Session, model: Any, data: Sequence[Batch], flow: Flow = "basic") -> None:
    """Send the calibration events around forward passes, as a pipeline does."""
    with torch.no_grad():
        session.event(EventType.CALIBRATION_START)
        if flow == "basic":
            for batch in data:
                model(**batch)
        else:  # each decoder layer is compressed when its block ends
            for layer in model.model.layers:
                for batch in data:
                    model(**batch)
                session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[layer])
        session.event(EventType.CALIBRATION_END)


def linears(model: torch.nn.Module) -> dict[str, torch.nn.Linear]:
    """The model's ``Linear`` layers by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def torch_hooks(model: torch.nn.Module) -> int:
    """How many forward (pre-)hooks the model's modules hold."""
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())
