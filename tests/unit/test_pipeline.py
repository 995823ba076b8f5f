"""Calibration pipelines (``modfsm.engine.app.pipeline``): what each layer is calibrated on,
the events the session receives, and the refusals."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import torch

from modfsm.engine import CALIBRATION_LIFECYCLE, ConfigError, Event, Modifier, State
from modfsm.engine.app.pipeline import decoder_layers, run_pipeline
from modfsm.engine.loop.session import Session
from modfsm.engine.tools.replay import verify

transformers = pytest.importorskip("transformers")

Inputs = dict[str, list[torch.Tensor]]


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model: torch.nn.Module = transformers.LlamaForCausalLM(config)
    return model


BATCHES = [{"input_ids": torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(i))}
           for i in range(3)]  # fmt: skip


def _watched(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n.endswith("q_proj") or n == "lm_head"]


@attrs.define(eq=False)
class Halving(Modifier):
    """Records each watched layer's inputs while calibrating; "compresses" a decoder layer by
    halving its attention output weight, at its sequential epoch end or at the end."""

    __lifecycle__ = CALIBRATION_LIFECYCLE
    seen: Inputs = attrs.field(factory=dict)
    events: list[Any] = attrs.field(factory=list)
    done: set[int] = attrs.field(factory=set)

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True

    def on_calibration_start(self, state: State, event: Event, **kwargs: Any) -> None:
        self.events.append("start")
        for name, module in _watched(state.model):

            def record(module: torch.nn.Module, args: Any, name: str = name) -> None:
                self.seen.setdefault(name, []).append(args[0].clone())

            self.register_hook(module, record, "forward_pre")

    def _compress(self, layer: Any) -> None:
        if id(layer) not in self.done:
            self.done.add(id(layer))
            layer.self_attn.o_proj.weight.data.mul_(0.5)

    def on_sequential_epoch_end(
        self, state: State, event: Event, modules: Any = (), **kwargs: Any
    ) -> None:
        self.events.append(("layer", [id(m) for m in modules]))
        for module in modules:
            self._compress(module)

    def on_calibration_end(self, state: State, event: Event, **kwargs: Any) -> None:
        self.events.append("end")
        for layer in decoder_layers(state.model):
            self._compress(layer)
        self.remove_hooks()


def inputs_of(model: torch.nn.Module) -> Inputs:
    found: Inputs = {}
    handles = [
        module.register_forward_pre_hook(
            lambda m, args, name=name: found.setdefault(name, []).append(args[0].clone())
        )
        for name, module in _watched(model)
    ]
    with torch.no_grad():
        for batch in BATCHES:
            model(**batch, use_cache=False)
    for handle in handles:
        handle.remove()
    return found


def same(a: Inputs, b: Inputs) -> dict[str, bool]:
    return {k: all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a[k], b[k], strict=True))
            for k in a}  # fmt: skip


def calibrate(pipeline: Any) -> tuple[torch.nn.Module, Halving, Inputs, Session]:
    model = tiny_llama()
    before = inputs_of(model)
    modifier = Halving()
    session = Session()
    session.initialize(model=model, recipe=[modifier], trace=True)
    run_pipeline(session, model, BATCHES, pipeline)
    return model, modifier, before, session


def test_the_sequential_pipeline_calibrates_each_layer_on_the_compressed_layers_before_it() -> None:
    model, modifier, before, session = calibrate("sequential")
    layers = decoder_layers(model)
    assert modifier.events == ["start", *(("layer", [id(layer)]) for layer in layers), "end"]
    assert {name: len(v) for name, v in modifier.seen.items()} == dict.fromkeys(modifier.seen, 3)
    # each layer saw what it sees in the compressed model: its predecessors compressed
    assert set(same(modifier.seen, inputs_of(model)).values()) == {True}
    # and not what the float model gave it (but the first layer, which nothing precedes)
    float_inputs = same(modifier.seen, before)
    assert float_inputs["model.layers.0.self_attn.q_proj"]
    assert not float_inputs["model.layers.1.self_attn.q_proj"]
    assert not float_inputs["lm_head"]
    assert session.position == "idle"
    session.finalize()
    assert session.trace is not None
    assert verify(session.trace.records).ok


def test_the_basic_pipeline_calibrates_every_layer_on_the_float_model() -> None:
    model, modifier, before, session = calibrate("basic")
    assert modifier.events == ["start", "end"]
    assert set(same(modifier.seen, before).values()) == {True}
    assert not same(modifier.seen, inputs_of(model))["model.layers.2.self_attn.q_proj"]
    session.finalize()
    assert session.trace is not None
    calls = [(r["trigger"], r["event"]) for r in session.trace.records if r["kind"] == "call"]
    assert calls[1:3] == [("calibration_epoch_start", "calibration_epoch_start"),
                          ("calibration_epoch_end", "calibration_epoch_end")]  # fmt: skip


def test_a_sequential_pipeline_needs_a_stack_of_layers_and_refuses_before_any_event() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    modifier = Halving()
    session = Session()
    session.initialize(model=model, recipe=[modifier])
    with pytest.raises(ConfigError, match=r"no torch.nn.ModuleList. To fix, pass --pipeline basic"):
        run_pipeline(session, model, [{"input": torch.zeros(1, 4)}], "sequential")
    assert modifier.events == []
    assert session.position == "idle"
    with pytest.raises(ConfigError, match=r"unknown calibration pipeline 'fast'. To fix, use one"):
        run_pipeline(session, model, [], "fast")  # type: ignore[arg-type]  # the refusal is tested


def test_the_model_is_calibrated_in_eval_mode_without_gradients_and_left_as_it_was() -> None:
    model = tiny_llama()
    model.train()
    modes: list[tuple[bool, bool]] = []
    layer = decoder_layers(model)[0]
    layer.register_forward_pre_hook(
        lambda m, args: modes.append((m.training, torch.is_grad_enabled()))
    )
    session = Session()
    session.initialize(model=model, recipe=[Halving()])
    run_pipeline(session, model, BATCHES[:1], "sequential")
    assert modes
    assert set(modes) == {(False, False)}
    assert model.training
