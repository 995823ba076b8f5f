"""Calibration pipelines: how one-shot calibration data flows through a model and its session.

A pipeline drives a :class:`~modfsm.engine.loop.session.Session` through the calibration
part of its step grammar (``idle -> calibrating -> idle``), so every call is checked by
the grammar, delivered to the modifiers by their own lifecycle (one-shot modifiers run
:data:`~modfsm.engine.model.calibration_lifecycle.CALIBRATION_LIFECYCLE`) and recorded in
the session's trace:

* **basic**: ``CALIBRATION_START``; every calibration batch through the whole model;
  ``CALIBRATION_END``. The modifiers see the float model's activations and compress
  every layer at the end.
* **sequential**: ``CALIBRATION_START``; the inputs of the first decoder layer are
  captured for every batch (the model is run up to that layer and stopped); then, layer
  by layer, the captured inputs go through the layer (the modifiers collect its
  statistics), ``SEQUENTIAL_EPOCH_END(modules=[layer])`` lets them compress it, and the
  inputs go through the *compressed* layer again, with the modifiers' torch hooks off
  (:meth:`~modfsm.engine.runtime.hooks.HooksMixin.disable_hooks`), to become the next
  layer's inputs; after
  the last layer its outputs go through what follows the decoder stack (the final norm and
  the head, for the Llama family), so layers there are calibrated too; ``CALIBRATION_END``.
  Each layer is therefore compressed from the outputs of the already compressed layers
  before it, as the GPTQ and SparseGPT papers do, and only one layer's activations are
  held at a time besides the captured hidden states.

A recipe of several stages calibrates in one pass: every stage receives every event, in
recipe order, so at a layer's ``SEQUENTIAL_EPOCH_END`` a first stage's ``SparseGPTModifier``
prunes it before a second stage's ``GPTQModifier`` quantizes it. llm-compressor 0.14's
``oneshot`` does the same (its pipeline sends the events to all the recipe's modifiers);
its opt-in ``independent`` pipeline, one pass per modifier, is not implemented here.

The decoder layers are found by :func:`decoder_layers`: ``model.model.layers`` (the Llama
family and most transformers causal LMs), else the longest ``ModuleList`` of the model.
Calls are made under ``torch.no_grad()`` with the model in eval mode.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final, Literal

import torch

from modfsm.engine.kernel.errors import ConfigError
from modfsm.engine.loop.session import Session
from modfsm.engine.model.events import EventType
from modfsm.engine.runtime.hooks import HooksMixin

__all__ = ["PIPELINES", "Pipeline", "decoder_layers", "run_pipeline"]

Pipeline = Literal["basic", "sequential"]
PIPELINES: Final[tuple[Pipeline, ...]] = ("basic", "sequential")
"""The calibration pipelines, by name (``modfsm oneshot --pipeline``)."""

Batch = Mapping[str, torch.Tensor]
Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: called as the pipeline advances."""


class _Captured(Exception):
    """Raised by the capture hook to stop a forward pass at the first decoder layer."""


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The model's decoder layers, in order: ``model.model.layers``, else its longest
    ``ModuleList``.

    Raises:
        ConfigError: the model has no ``ModuleList`` of layers (use the basic pipeline).
    """
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, torch.nn.ModuleList) and len(layers) > 0:
        return layers
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 0]
    if not lists:
        raise ConfigError(
            f"the sequential pipeline needs a stack of layers, and {type(model).__name__} has "
            "no torch.nn.ModuleList. To fix, pass --pipeline basic.",
            owner="pipeline",
            field="pipeline",
            value="sequential",
        )
    return max(lists, key=len)


def _hidden(output: Any) -> torch.Tensor:
    """A decoder layer's hidden states, whether it returns them or a tuple starting with them."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"a decoder layer returned {type(output).__name__}, not hidden states")


def _with_hidden(
    call: tuple[tuple[Any, ...], dict[str, Any]], hidden: torch.Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A captured call with its hidden states replaced (passed by position or by keyword)."""
    args, kwargs = call
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _forward(model: torch.nn.Module, batch: Batch) -> Any:
    """``model(**batch)``, without a key/value cache for a transformers model: a cache would
    be updated by every call of a layer, and the sequential pipeline calls each one twice."""
    config = getattr(model, "config", None)
    if getattr(config, "use_cache", None) is not None:
        return model(**batch, use_cache=False)
    return model(**batch)


def _capture(
    model: torch.nn.Module, first: torch.nn.Module, batches: Sequence[Batch]
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """The (args, kwargs) the model passes its first decoder layer, one per batch."""
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append((args, dict(kwargs)))
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            with contextlib.suppress(_Captured):
                _forward(model, batch)
    finally:
        handle.remove()
    return calls


def _tail(model: torch.nn.Module, hidden: torch.Tensor) -> None:
    """Run what follows the decoder stack (final norm, head) on ``hidden``, when the model
    has the Llama family's layout; other models have no tail here."""
    norm = getattr(getattr(model, "model", None), "norm", None)
    head = getattr(model, "lm_head", None)
    if isinstance(norm, torch.nn.Module) and isinstance(head, torch.nn.Module):
        head(norm(hidden))


def _basic(
    session: Session, model: torch.nn.Module, batches: Sequence[Batch], progress: Progress
) -> None:
    for done, batch in enumerate(batches, 1):
        _forward(model, batch)
        progress("calibrating", done, len(batches))


def _sequential(
    session: Session, model: torch.nn.Module, batches: Sequence[Batch], progress: Progress
) -> None:
    layers = decoder_layers(model)
    calls = _capture(model, layers[0], batches)
    for position, layer in enumerate(layers, 1):
        for call in calls:  # the modifiers collect this layer's statistics
            layer(*call[0], **call[1])
        session.event(EventType.SEQUENTIAL_EPOCH_END, modules=[layer])
        # the compressed layer's outputs are the next layer's inputs; the modifiers' hooks
        # are off meanwhile (the layer is compressed: what it sees now is no statistic)
        with HooksMixin.disable_hooks():
            calls = [_with_hidden(call, _hidden(layer(*call[0], **call[1]))) for call in calls]
        progress("layers", position, len(layers))
    for call in calls:
        _tail(model, call[0][0] if call[0] else call[1]["hidden_states"])


def run_pipeline(
    session: Session,
    model: torch.nn.Module,
    batches: Iterable[Batch],
    pipeline: Pipeline = "sequential",
    progress: Progress | None = None,
) -> None:
    """Calibrate the session's modifiers on ``batches`` with ``pipeline`` (see the module).

    ``session`` must be initialized with ``model`` and idle; it is idle again afterwards.

    Raises:
        ConfigError: an unknown pipeline, or a sequential one on a model without layers.
    """
    if pipeline not in PIPELINES:
        raise ConfigError(
            f"unknown calibration pipeline {pipeline!r}. To fix, use one of "
            f"{', '.join(PIPELINES)}.",
            owner="pipeline",
            field="pipeline",
            value=pipeline,
        )
    chosen = list(batches)
    if pipeline == "sequential":
        decoder_layers(model)  # refuse before the grammar moves
    report = progress or (lambda phase, done, total: None)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            session.event(EventType.CALIBRATION_START)
            run = _sequential if pipeline == "sequential" else _basic
            run(session, model, chosen, report)
            session.event(EventType.CALIBRATION_END)
    finally:
        model.train(training)
