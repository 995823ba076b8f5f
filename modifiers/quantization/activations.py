"""Activation quantization for a modifier that solves its weights itself (``GPTQModifier``).

llm-compressor's ``GPTQModifier`` applies a whole quantization scheme: GPTQ writes the
weights, and the scheme's input (and output) activations are quantized in the forward
pass like ``QuantizationModifier``'s. :class:`ActivationQuantizer` is that second part,
for the layers a modifier names, with no say over their weights.

Theory of operation:

* **attach** puts a ``forward_wrap`` hook on every layer whose scheme quantizes its
  input or output, through the owning modifier's ``register_hook`` (so the engine
  removes it at finalize, and the modifier's hook switch turns it off). The wrap
  quantizes the layer's input before the layer's own forward and its output after:
  forward pre-hooks (a Hessian collector) still see the input as the previous layer
  produced it, as llm-compressor's calibration hooks do.
* **dynamic** arguments (``W8A8``'s per-token int8 inputs) take their scale from each
  forward's own values; nothing is calibrated.
* **static** arguments keep an :class:`~modfsm.modifiers.quantization.fake.Observer`,
  updated by every forward while the layer is *observing* (from ``CALIBRATION_START``
  until :meth:`ActivationQuantizer.settle` names it: its block's
  ``SEQUENTIAL_EPOCH_END``, or ``CALIBRATION_END``); the forward is quantized with the
  range seen so far, so later layers see quantized inputs during calibration too. A
  layer settled without having seen a batch is an error (:meth:`settle` raises
  :class:`~modfsm.modifiers.solvers.CalibrationError`): its static scale would be
  made up.
* :meth:`ActivationQuantizer.export` gives the static scales (``input_scale``,
  ``input_zero_point``, and ``output_*``), as ``QuantizationModifier.export`` does.
* :meth:`state_dict`/:meth:`load_state_dict` keep the observers' ranges and which
  layers still observe, so a resumed run quantizes as the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs
import torch

from modfsm.modifiers.quantization.args import QuantizationArgs
from modfsm.modifiers.quantization.fake import Observer, dynamic_qparams, fake_quantize
from modfsm.modifiers.solvers import CalibrationError

__all__ = ["ActivationQuantizer", "Register"]

Register = Callable[[torch.nn.Module, Callable[..., Any], str], Any]
"""A modifier's ``register_hook(module, hook, "forward_wrap")``."""

_SIDES: Final = ("input", "output")


@attrs.define
class ActivationQuantizer:
    """Fake-quantizes the inputs and outputs of named layers (see the module docstring).

    Attributes:
        owner: how messages name the modifier (its lifecycle label).
        plan: layer name -> (input arguments or None, output arguments or None); layers
            with neither are left out.
    """

    owner: str
    plan: dict[str, tuple[QuantizationArgs | None, QuantizationArgs | None]]
    _observers: dict[tuple[str, str], Observer] = attrs.field(init=False, factory=dict)
    _observing: set[str] = attrs.field(init=False, factory=set)

    def __attrs_post_init__(self) -> None:
        self.plan = {name: sides for name, sides in self.plan.items() if any(sides)}
        for name, sides in self.plan.items():
            for side, args in zip(_SIDES, sides, strict=True):
                if args is not None and not args.dynamic:
                    self._observers[name, side] = Observer(args)

    @property
    def static(self) -> bool:
        """True when some layer has a static (calibrated) scale."""
        return bool(self._observers)

    def attach(self, layers: Mapping[str, torch.nn.Module], register: Register) -> None:
        """Wrap the forward of every planned layer (``layers``: name -> module)."""
        for name in self.plan:
            register(layers[name], self._wrap(name), "forward_wrap")

    def observe(self, names: Iterable[str]) -> None:
        """Let the static observers of ``names`` follow the forwards (calibration starts)."""
        self._observing |= {name for name in names if name in self.plan}

    def check(self, names: Iterable[str]) -> None:
        """Raise unless every static scale of ``names`` has seen a batch.

        Raises:
            CalibrationError: a static scale of one of them has seen no batch (its
                scale would be made up).
        """
        wanted = set(names)
        blind = sorted(
            f"{name} ({side})"
            for (name, side), observer in self._observers.items()
            if name in wanted and not observer.observed
        )
        if blind:
            raise CalibrationError(
                f"{self.owner}: the static activation scales of {', '.join(blind)} saw no "
                "calibration batch, so there is nothing to set them from. To fix, run the "
                "calibration data through these layers before the event that settles them.",
                problem="no samples",
            )

    def settle(self, names: Iterable[str]) -> None:
        """Fix the static scales of ``names`` (checked first: see :meth:`check`)."""
        names = [name for name in names if name in self.plan]
        self.check(names)
        self._observing -= set(names)

    def export(self, name: str) -> dict[str, torch.Tensor]:
        """The static scales and zero points of layer ``name`` (``input_scale``, ...)."""
        entry: dict[str, torch.Tensor] = {}
        for side in _SIDES:
            observer = self._observers.get((name, side))
            if observer is not None and observer.observed:
                scale, zero_point = observer.qparams()
                entry[f"{side}_scale"] = scale.reshape(1)
                entry[f"{side}_zero_point"] = zero_point.reshape(1)
        return entry

    def state_dict(self) -> dict[str, Any]:
        """The observers' ranges by ``"layer/side"``, and the layers still observing."""
        return {
            "observers": {f"{n}/{s}": o.state_dict() for (n, s), o in self._observers.items()},
            "observing": sorted(self._observing),
        }

    def load_state_dict(self, saved: Any) -> str:
        """Restore :meth:`state_dict`; returns what is wrong with ``saved`` ("" if nothing).

        Nothing changes unless all of it is right.
        """
        keys = {f"{n}/{s}" for n, s in self._observers}
        if not isinstance(saved, Mapping) or set(saved) != {"observers", "observing"}:
            return "activations is not a dict of observers and observing"
        observers, observing = saved["observers"], saved["observing"]
        if not isinstance(observers, Mapping) or set(map(str, observers)) != keys:
            return f"activations.observers must name exactly {sorted(keys)}"
        if not isinstance(observing, list | tuple) or not set(observing) <= set(self.plan):
            return f"activations.observing names layers that are not planned: {observing!r}"
        restored: dict[tuple[str, str], Observer] = {}
        for key, observer in self._observers.items():
            fresh = Observer(observer.args)
            try:
                fresh.load_state_dict(observers[f"{key[0]}/{key[1]}"])
            except ValueError as error:
                return f"activations.observers[{key[0]}/{key[1]}]: {error}"
            restored[key] = fresh
        self._observers, self._observing = restored, set(observing)
        return ""

    def _wrap(self, name: str) -> Callable[..., Any]:
        inputs, outputs = self.plan[name]

        def forward(
            module: torch.nn.Module, original: Callable[..., Any], *args: Any, **kwargs: Any
        ) -> Any:
            if inputs is not None and args and isinstance(args[0], torch.Tensor):
                args = (self._quantize(name, "input", args[0], inputs), *args[1:])
            out = original(*args, **kwargs)
            if outputs is not None and isinstance(out, torch.Tensor):
                out = self._quantize(name, "output", out, outputs)
            return out

        return forward

    def _quantize(
        self, name: str, side: str, x: torch.Tensor, args: QuantizationArgs
    ) -> torch.Tensor:
        observer = self._observers.get((name, side))
        if observer is None:
            scale, zero_point = dynamic_qparams(x, args)
        else:
            if name in self._observing or not observer.observed:
                observer.update(x)
            scale, zero_point = observer.qparams()
        return fake_quantize(x, scale, zero_point, args)
