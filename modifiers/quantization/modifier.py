"""``QuantizationModifier``: quantization-aware training and one-shot calibration.

Lifecycle (the modifier's window is ``[start, end)``):

* **initialize** resolves the target layers and checks the scheme fits them
  (group sizes divide the layers' inputs; a one-shot run has calibration data).
* **start** attaches the fake quantization to every target layer: a
  ``forward_wrap`` hook (:mod:`modfsm.engine.runtime.hooks`) quantizes the layer's input (when
  the scheme quantizes activations) and puts a fake-quantized view of the
  weight in the layer's place for that one call, taking it away again when
  the call returns or raises. Parameters,
  ``state_dict`` keys and the optimizer are untouched; gradients reach the
  float weights through the straight-through estimator. With ``start`` at -1
  or 0 the window opens at ``initialize`` and, given ``calib_data``, the
  activation observers are calibrated over it first (a one-shot run, ``-1``,
  needs it).
* **inside the window** the observers follow the training inputs (only in
  ``train()`` mode; evaluation uses the current scales).
* **end** freezes the activation scales; the fake quantization stays on.
* **finalize** freezes the weight scales from the final weights, replaces each
  weight by its dequantized value (so it lies exactly on the integer grid),
  records the integers, scales and zero points for :meth:`export`, and the
  engine removes the hooks.

A run whose window never opened quantizes nothing and exports nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import torch

from modfsm.engine import ConfigError, Event, IllegalTransitionError, Modifier, State
from modfsm.modifiers.quantization.args import (
    QuantizationScheme,
    parse_config_groups,
    preset,
)
from modfsm.modifiers.quantization.fake import (
    Observer,
    dequantize,
    fake_quantize,
    qparams,
    quantize,
    scale_shape,
    weight_qparams,
)
from modfsm.modifiers.targets import (
    as_names,
    check_names,
    check_target_names,
    layers,
    resolve,
    weight_of,
)

__all__ = ["QuantizationModifier"]

_OWNER = "QuantizationModifier"


def _check_scheme(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, str):
        raise ConfigError(
            f"{_OWNER}.scheme must be a preset name such as 'W8A8', got {value!r}. To fix, "
            "write a preset name or describe the scheme with config_groups.",
            owner=_OWNER,
            field="scheme",
            value=value,
        )


def _check_group_size(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(
            f"{_OWNER}.group_size must be a whole number >= 1, got {value!r}. To fix, write "
            "e.g. group_size: 32.",
            owner=_OWNER,
            field="group_size",
            value=value,
        )


def _check_optional_names(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        check_names(_OWNER, attribute.name, value)


def _model_input(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """How a calibration batch is passed to the model: ``model(x)``, ``model(x)`` of
    ``(x, y)``, or ``model(**batch)`` of a mapping."""
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, list | tuple):
        return (batch[0],), {}
    return (batch,), {}


@attrs.define(eq=False)
class QuantizationModifier(Modifier):
    """Quantize weights (and, by the scheme, layer inputs) to integers.

    Recipe arguments: ``targets`` and ``scheme`` (a preset: ``W8A8``, ``W8A16``,
    ``W4A16``; ``group_size`` changes a grouped preset's group), or
    ``config_groups`` (see :mod:`modfsm.modifiers.quantization.args`); ``ignore``;
    ``start``, ``end``.

    Attributes:
        targets: the layers a ``scheme`` applies to (default ``Linear``); with
            ``config_groups`` each group names its own.
        ignore: layers to leave in float.
        scheme: a preset name.
        config_groups: explicit schemes by group name.
        group_size: the group width for a grouped preset.
    """

    targets: str | list[str] | None = attrs.field(default=None, validator=_check_optional_names)
    ignore: str | list[str] = attrs.field(factory=list, validator=check_target_names)
    scheme: str | None = attrs.field(default=None, validator=_check_scheme)
    config_groups: dict[str, Any] | None = None
    group_size: int | None = attrs.field(default=None, validator=_check_group_size)
    _schemes: tuple[QuantizationScheme, ...] = attrs.field(init=False, repr=False, default=())
    _plan: dict[str, QuantizationScheme] = attrs.field(init=False, repr=False, factory=dict)
    _layers: dict[str, torch.nn.Module] = attrs.field(init=False, repr=False, factory=dict)
    _observers: dict[str, Observer] = attrs.field(init=False, repr=False, factory=dict)
    _observing: bool = attrs.field(init=False, repr=False, default=False)
    _calibrating: bool = attrs.field(init=False, repr=False, default=False)
    _exported: dict[str, dict[str, Any]] | None = attrs.field(init=False, repr=False, default=None)
    _report: dict[str, dict[str, float]] = attrs.field(init=False, repr=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        if (self.scheme is None) == (self.config_groups is None):
            raise ConfigError(
                f"{_OWNER} needs exactly one of scheme and config_groups, got "
                f"{'both' if self.scheme is not None else 'neither'}. To fix, write e.g. "
                "scheme: W8A8 (with targets: Linear), or config_groups.",
                owner=_OWNER,
                field="scheme",
                value=self.scheme,
            )
        if self.config_groups is not None:
            if self.targets is not None:
                raise ConfigError(
                    f"{_OWNER}: with config_groups, each group names its targets; the "
                    f"modifier's targets={self.targets!r} would be ignored. To fix, move the "
                    "targets into the config groups.",
                    owner=_OWNER,
                    field="targets",
                    value=self.targets,
                )
            if self.group_size is not None:
                raise ConfigError(
                    f"{_OWNER}: group_size applies to a scheme preset; with config_groups set "
                    "group_size inside the weights' arguments. To fix, move it there.",
                    owner=_OWNER,
                    field="group_size",
                    value=self.group_size,
                )
            self._schemes = parse_config_groups(self.config_groups)
        else:
            targets = self.targets if self.targets is not None else "Linear"
            names = (targets,) if isinstance(targets, str) else tuple(targets)
            self._schemes = (preset(self.scheme, names, self.group_size),)

    # --- views ------------------------------------------------------------------------------

    @property
    def schemes(self) -> tuple[QuantizationScheme, ...]:
        """The schemes, as parsed from ``scheme`` or ``config_groups``."""
        return self._schemes

    @property
    def plan(self) -> dict[str, QuantizationScheme]:
        """The scheme of every target layer, resolved at initialize."""
        return dict(self._plan)

    @property
    def report(self) -> dict[str, dict[str, float]]:
        """Per layer, at finalize: the largest weight change to the grid, and its bound.

        ``max_error`` is ``max |w - dequantize(quantize(w))|``; ``bound`` is the
        largest ``scale / 2`` of the layer (the rounding bound); ``relative_error``
        is ``||w - dq|| / ||w||``.
        """
        return {name: dict(values) for name, values in self._report.items()}

    # --- lifecycle hooks ----------------------------------------------------------------------

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        self._bind(state)
        static = any(
            s.input_activations is not None and not s.input_activations.dynamic
            for s in self._plan.values()
        )
        if self.start == -1 and static and state.data.calib is None:
            raise ConfigError(
                f"{self.lifecycle_label}: a one-shot run (start: -1) with static activation "
                "scales needs calibration data, and state.data.calib is None. To fix, pass "
                "calib_data=... to Session.initialize, or use start: 0 to observe the "
                "training inputs instead.",
                owner=_OWNER,
                field="start",
                value=self.start,
            )
        return True

    def on_start(self, state: State, event: Event, **kwargs: Any) -> None:
        self._attach()
        self._observing = True
        if self.start is not None and self.start <= 0 and state.data.calib is not None:
            self.calibrate(state.model, state.data.calib)
        if self.start == -1:
            self._observing = False  # one-shot: the calibrated scales are final

    def on_end(self, state: State, event: Event, **kwargs: Any) -> None:
        self._observing = False

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        if self.started:
            self._freeze()
        return True

    # --- calibration and export ---------------------------------------------------------------

    def calibrate(self, model: torch.nn.Module, batches: Iterable[Any]) -> int:
        """Run ``model`` over ``batches`` (no gradients, eval mode) to set the observers.

        Returns:
            the number of batches seen.
        """
        was_training = model.training
        model.eval()
        self._calibrating = True
        seen = 0
        try:
            with torch.no_grad():
                for batch in batches:
                    args, kwargs = _model_input(batch)
                    model(*args, **kwargs)
                    seen += 1
        finally:
            self._calibrating = False
            model.train(was_training)
        return seen

    def export(self) -> dict[str, dict[str, Any]]:
        """The quantized model: per layer, the integer weight and its scale and zero point.

        Each entry has ``weight`` (int8, the layer's shape), ``weight_scale``
        (float32; shape ``(1,)``, ``(out, 1)`` or ``(out, groups)`` by strategy),
        ``weight_zero_point`` (int32, same shape), ``input_scale`` /
        ``input_zero_point`` (static activation quantization only) and
        ``scheme`` (the arguments, as recipe values). ``dequantize(weight)``
        equals the layer's weight after finalize, exactly.

        Raises:
            IllegalTransitionError: the modifier is not finalized yet, or its window
                never opened (nothing was quantized).
        """
        if self._exported is None:
            reason = "it is not finalized yet" if not self.finalized else "its window never opened"
            raise IllegalTransitionError(
                f"{self.lifecycle_label}.export() is not available: {reason}. To fix, "
                "finalize a modifier whose window opened (start within the run).",
                modifier=self,
                state=str(self.lifecycle_state),
                trigger="export",
                rule="-",
                allowed=("finalize",),
            )
        return {
            name: {key: value.clone() if isinstance(value, torch.Tensor) else value
                   for key, value in entry.items()}
            for name, entry in self._exported.items()
        }  # fmt: skip

    # --- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "observing": self._observing,
            "observers": {name: obs.state_dict() for name, obs in self._observers.items()},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any], state: State) -> None:
        if self.initialized:
            self._bind(state)
        problem = ""
        if set(state_dict) != {"observing", "observers"}:
            problem = f"its keys are {sorted(map(str, state_dict))}, expected observers, observing"
        elif not isinstance(state_dict["observing"], bool):
            problem = f"observing is {state_dict['observing']!r}, not true or false"
        elif state_dict["observing"] != (
            self.started and not self.ended and not self.finalized and self.start != -1
        ):
            problem = (
                f"observing is {state_dict['observing']}, but the modifier is "
                f"'{self.lifecycle_state}' (it observes exactly while its window is open, "
                "unless start is -1)"
            )
        elif not isinstance(state_dict["observers"], Mapping):
            problem = "observers is not a dict of layer name to observer state"
        if problem:
            raise ConfigError(
                f"{self.lifecycle_label}.load_state_dict: {problem}. To fix, resume with the "
                "state this modifier saved.",
                owner=_OWNER,
                field="state_dict",
                value=None,
            )
        observers = state_dict["observers"]
        unknown = sorted(map(str, set(observers) - set(self._observers)))
        missing = sorted(set(self._observers) - set(observers))
        if unknown or missing:
            problem = (
                f"saved observers {unknown} are not target layers of this model"
                if unknown
                else f"the observers of target layers {missing} are not saved"
            )
            raise ConfigError(
                f"{self.lifecycle_label}.load_state_dict: {problem} "
                f"({sorted(self._observers)}). To fix, resume with the same model and recipe.",
                owner=_OWNER,
                field="observers",
                value=unknown or missing,
            )
        for name, saved in observers.items():
            # on the layer's device: a checkpoint loaded to the CPU may resume a CUDA model
            self._observers[name].load_state_dict(saved, weight_of(self._layers[name]).device)
        self._observing = state_dict["observing"]
        if self.started and not self.finalized:
            self._attach()

    # --- internals ------------------------------------------------------------------------------

    def _bind(self, state: State) -> None:
        model = state.model
        if model is None:
            raise ConfigError(
                f"{self.lifecycle_label} needs a model: state.model is None. To fix, pass "
                "model=... to Session.initialize.",
                owner=_OWNER,
                field="model",
                value=None,
            )
        ignore = as_names(self.ignore)
        plan: dict[str, QuantizationScheme] = {}
        owners: dict[str, int] = {}
        for position, scheme in enumerate(self._schemes):
            for name in resolve(_OWNER, model, list(scheme.targets), ignore):
                if name in owners:
                    raise ConfigError(
                        f"{self.lifecycle_label}: layer {name!r} is targeted by config groups "
                        f"{owners[name]} and {position}. To fix, make each layer match one "
                        "group (or add it to one group's ignore).",
                        owner=_OWNER,
                        field="config_groups",
                        value=name,
                    )
                owners[name] = position
                plan[name] = scheme
        found = layers(model)
        for name, scheme in plan.items():
            weights = scheme.weights
            if weights is not None and weights.strategy == "group":
                assert weights.group_size is not None
                width = weight_of(found[name])[0].numel()
                if width % weights.group_size:
                    raise ConfigError(
                        f"{self.lifecycle_label}: layer {name!r} has {width} inputs, not a "
                        f"multiple of group_size {weights.group_size}. To fix, pick a group size "
                        f"that divides {width}, or ignore the layer.",
                        owner=_OWNER,
                        field="group_size",
                        value=weights.group_size,
                    )
        self._plan = plan
        self._layers = {name: found[name] for name in plan}
        self._observers = {
            name: Observer(scheme.input_activations)
            for name, scheme in plan.items()
            if scheme.input_activations is not None and not scheme.input_activations.dynamic
        }

    def _attach(self) -> None:
        for name, layer in self._layers.items():
            self.register_hook(
                layer, self._quantized_forward(name, self._plan[name]), "forward_wrap"
            )

    def _quantized_forward(self, name: str, scheme: QuantizationScheme) -> Callable[..., Any]:
        """The layer's forward while quantizing: fake-quantized weight and input.

        The fake-quantized weight shadows the parameter for this call only (an
        instance attribute, removed in ``finally`` even if the forward raises).
        """
        weights, inputs = scheme.weights, scheme.input_activations
        observer = self._observers.get(name)

        def forward(
            module: torch.nn.Module, original: Callable[..., Any], *args: Any, **kwargs: Any
        ) -> Any:
            if weights is not None:
                weight = module._parameters["weight"]
                assert weight is not None
                scale, zero_point = weight_qparams(weight, weights)
                module.__dict__["weight"] = fake_quantize(weight, scale, zero_point, weights)
            try:
                if inputs is not None:
                    x = args[0]
                    if observer is None:  # dynamic: this batch's own range
                        lo, hi = torch.aminmax(x.detach())
                        scale, zero_point = qparams(lo, hi, inputs)
                    else:
                        if (self._observing and (module.training or self._calibrating)) or not (
                            observer.observed
                        ):
                            observer.update(x)
                        scale, zero_point = observer.qparams()
                    args = (fake_quantize(x, scale, zero_point, inputs), *args[1:])
                return original(*args, **kwargs)
            finally:
                if weights is not None:
                    module.__dict__.pop("weight", None)

        return forward

    def _freeze(self) -> None:
        exported: dict[str, dict[str, Any]] = {}
        report: dict[str, dict[str, float]] = {}
        with torch.no_grad():
            for name, layer in self._layers.items():
                scheme = self._plan[name]
                entry: dict[str, Any] = {"scheme": _scheme_values(scheme)}
                if scheme.weights is not None:
                    weight = weight_of(layer)
                    args = scheme.weights
                    scale, zero_point = weight_qparams(weight, args)
                    q = quantize(weight, scale, zero_point, args)
                    snapped = dequantize(q, scale, zero_point, args).to(weight.dtype)
                    error = (weight - snapped).abs()
                    norm = float(weight.norm())
                    report[name] = {
                        "max_error": float(error.max()),
                        "bound": float(scale.max()) / 2,
                        "relative_error": float((weight - snapped).norm()) / norm if norm else 0.0,
                    }
                    weight.copy_(snapped)
                    shape = scale_shape(weight, args)
                    entry.update(
                        weight=q,
                        weight_scale=scale.reshape(shape),
                        weight_zero_point=zero_point.reshape(shape),
                    )
                observer = self._observers.get(name)
                if observer is not None and observer.observed:
                    input_scale, input_zero_point = observer.qparams()
                    entry.update(
                        input_scale=input_scale.reshape(1),
                        input_zero_point=input_zero_point.reshape(1),
                    )
                exported[name] = entry
        self._observing = False
        self._exported = exported
        self._report = report


def _scheme_values(scheme: QuantizationScheme) -> dict[str, Any]:
    return {
        "weights": None if scheme.weights is None else scheme.weights.to_dict(),
        "input_activations": None
        if scheme.input_activations is None
        else scheme.input_activations.to_dict(),
    }
