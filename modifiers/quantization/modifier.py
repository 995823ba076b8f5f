"""``QuantizationModifier``: quantization-aware training and one-shot calibration.

It runs :data:`~modfsm.engine.model.calibration_lifecycle.CALIBRATION_LIFECYCLE`:
the default lifecycle (training events behave exactly as there) plus
llm-compressor 0.13+'s calibration events, so it serves both uses.

Quantization-aware training (the modifier's window is ``[start, end)``):

* **initialize** resolves the target layers and checks the scheme fits them
  (group sizes divide the layers' inputs; a one-shot run has calibration data).
* **start** attaches the fake quantization to every target layer: a
  ``forward_wrap`` hook (:mod:`modfsm.engine.runtime.hooks`) quantizes the layer's input
  and output (when the scheme quantizes them) and puts a fake-quantized view of the
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
  weight by its dequantized value (so it lies exactly on its grid, integer or
  float8), records the quantized values, scales and zero points for
  :meth:`export`, and the engine removes the hooks.

One-shot calibration (the one-shot pipeline's events, whatever ``start`` says):

* **CALIBRATION_START** (``on_calibration_start``) attaches the fake
  quantization (if the window has not already) and turns the observers on, in
  ``train()`` and ``eval()`` mode alike: every calibration forward (under
  ``no_grad``, whole model or layer by layer) updates the static activation
  observers and is itself fake-quantized, so later layers see the quantized
  outputs of earlier ones, as in the reference.
* **SEQUENTIAL_EPOCH_END** (``on_sequential_epoch_end(modules=...)``) settles
  the target layers inside ``modules``: their observers stop and their weights are
  written on their grid (scales computed then), so the pipeline's pass that
  propagates that layer's outputs to the next one sees the quantized weights even
  with the modifiers' hooks off (as the reference's frozen layer does).
* **CALIBRATION_END** (``on_calibration_end``) freezes, as finalize does in
  training: activation scales fixed, weight scales computed, each weight written
  on its grid, :meth:`export` and :attr:`report` filled. From then on the forward
  uses the frozen weight scales (a weight on its grid fake-quantizes to itself,
  exactly) and the frozen activation scales (dynamic ones are still computed per
  forward); finalize writes the weights on the same grid again (they are unchanged
  unless trained since) and the engine removes the hooks.

KV cache (``kv_cache_scheme``, :mod:`modfsm.modifiers.quantization.kv_cache`): the keys
(after the rotary embedding) and values every attention layer stores in its cache are
fake-quantized with static scales, observed while the activation observers are (every
calibration forward; in training, ``train()`` forwards inside the window), frozen with
them (a sequential epoch's end for the layers inside it, ``CALIBRATION_END``, finalize),
and exported per attention layer as ``k_scale`` and ``v_scale``. A ``kv_cache_scheme``
alone (no ``scheme`` or ``config_groups``) quantizes only the KV cache, as in the reference.

The checkpoint (:meth:`state_dict`) keeps what calibration decided (whether it is
calibrating, the settled layers, the frozen weight scales and the report), so a
resumed one-shot run exports what the uninterrupted one does.

A run whose window never opened (and that was never calibrated) quantizes nothing
and exports nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import torch

from modfsm.engine import (
    CALIBRATION_LIFECYCLE,
    ConfigError,
    Event,
    IllegalTransitionError,
    Modifier,
    State,
)
from modfsm.modifiers.quantization import layer_schemes
from modfsm.modifiers.quantization.args import (
    QuantizationArgs,
    QuantizationScheme,
    parse_schemes,
)
from modfsm.modifiers.quantization.fake import (
    Observer,
    dequantize,
    dynamic_qparams,
    fake_quantize,
    grid_step_bound,
    quantize,
    scale_shape,
    weight_qparams,
)
from modfsm.modifiers.quantization.kv_cache import (
    KVCacheQuantizer,
    KVCacheScheme,
    parse_kv_cache_scheme,
)
from modfsm.modifiers.targets import (
    as_names,
    check_names,
    check_target_names,
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


def _check_kv_cache_scheme(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        parse_kv_cache_scheme(_OWNER, value)


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
    ``W4A16``, ``W4A16_ASYM``, ``FP8``, ``FP8_DYNAMIC``; ``group_size`` changes a
    grouped preset's group), or ``config_groups`` (see
    :mod:`modfsm.modifiers.quantization.args`); ``ignore``; ``start``, ``end``;
    ``kv_cache_scheme`` (the KV cache's arguments; see
    :mod:`modfsm.modifiers.quantization.kv_cache`).

    Attributes:
        targets: the layers a ``scheme`` applies to (default ``Linear``); with
            ``config_groups`` each group names its own.
        ignore: layers to leave in float.
        scheme: a preset name.
        config_groups: explicit schemes by group name.
        group_size: the group width for a grouped preset.
        kv_cache_scheme: how the attention layers' cached keys and values are
            quantized (``{num_bits: 8, type: float, strategy: tensor}``; strategy
            ``tensor`` or ``attn_head``; static scales only), or None (float).
    """

    __lifecycle__ = CALIBRATION_LIFECYCLE

    targets: str | list[str] | None = attrs.field(default=None, validator=_check_optional_names)
    ignore: str | list[str] = attrs.field(factory=list, validator=check_target_names)
    scheme: str | None = attrs.field(default=None, validator=_check_scheme)
    config_groups: dict[str, Any] | None = None
    group_size: int | None = attrs.field(default=None, validator=_check_group_size)
    kv_cache_scheme: Any = attrs.field(default=None, validator=_check_kv_cache_scheme)
    _schemes: tuple[QuantizationScheme, ...] = attrs.field(init=False, repr=False, default=())
    _plan: dict[str, QuantizationScheme] = attrs.field(init=False, repr=False, factory=dict)
    _layers: dict[str, torch.nn.Module] = attrs.field(init=False, repr=False, factory=dict)
    _observers: dict[str, Observer] = attrs.field(init=False, repr=False, factory=dict)
    _output_observers: dict[str, Observer] = attrs.field(init=False, repr=False, factory=dict)
    _settled: set[str] = attrs.field(init=False, repr=False, factory=set)
    _observing: bool = attrs.field(init=False, repr=False, default=False)
    _calibrating: bool = attrs.field(init=False, repr=False, default=False)
    _weight_qparams: dict[str, tuple[torch.Tensor, torch.Tensor]] = attrs.field(
        init=False, repr=False, factory=dict
    )
    _exported: dict[str, dict[str, Any]] | None = attrs.field(init=False, repr=False, default=None)
    _report: dict[str, dict[str, float]] = attrs.field(init=False, repr=False, factory=dict)
    _kv_scheme: KVCacheScheme | None = attrs.field(init=False, repr=False, default=None)
    _kv: KVCacheQuantizer | None = attrs.field(init=False, repr=False, default=None)

    def __attrs_post_init__(self) -> None:
        if self.kv_cache_scheme is not None:
            self._kv_scheme = parse_kv_cache_scheme(_OWNER, self.kv_cache_scheme)
        kv_cache_only = (
            self._kv_scheme is not None
            and self.scheme is None
            and self.config_groups is None
            and self.targets is None
            and self.group_size is None
        )
        if not kv_cache_only:
            self._schemes = parse_schemes(
                _OWNER, self.scheme, self.config_groups, self.targets, group_size=self.group_size
            )

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
    def kv_cache(self) -> KVCacheQuantizer | None:
        """The KV-cache quantizer (``kv_cache_scheme``), bound at initialize; None without."""
        return self._kv

    @property
    def report(self) -> dict[str, dict[str, float]]:
        """Per layer, at finalize: the largest weight change to the grid, and its bound.

        ``max_error`` is ``max |w - dequantize(quantize(w))|``; ``bound`` is half
        the layer's largest grid step (the rounding bound: the largest ``scale / 2``
        for integers, ``16 * scale`` for float8); ``relative_error`` is
        ``||w - dq|| / ||w||``.
        """
        return {name: dict(values) for name, values in self._report.items()}

    # --- lifecycle hooks ----------------------------------------------------------------------

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        self._bind(state)
        static = bool(self._observers or self._output_observers or self._kv is not None)
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
            self._freeze()  # after CALIBRATION_END: the same scales, the weights unchanged
        layer_schemes.clear(self._layers.values(), self._plan.values())
        return True

    # --- one-shot calibration hooks (CALIBRATION_LIFECYCLE) ---------------------------------

    def on_calibration_start(self, state: State, event: Event, **kwargs: Any) -> None:
        """Attach the fake quantization (unless the window did) and observe every forward."""
        if not self.started:
            self._attach()
        self._weight_qparams, self._exported, self._report = {}, None, {}
        self._settled = set()
        if self._kv is not None:
            self._kv.thaw()
        self._observing = True
        self._calibrating = True

    def on_sequential_epoch_end(
        self,
        state: State,
        event: Event,
        modules: Iterable[torch.nn.Module] | None = None,
        **kwargs: Any,
    ) -> None:
        """While calibrating, settle the target layers inside ``modules`` (one pipeline
        layer): their observers stop, and their weights are written on their grid."""
        if not self._calibrating:
            return
        modules = list(modules or ())
        inside = {id(sub) for module in modules for sub in module.modules()}
        names = [name for name, layer in self._layers.items() if id(layer) in inside]
        self._settled.update(names)
        self._write_on_grid(names)
        if self._kv is not None:
            self._kv.settle(modules)

    def on_calibration_end(self, state: State, event: Event, **kwargs: Any) -> None:
        """Freeze: activation scales fixed, weights written on their grid, export filled
        (nothing when the modifier never started: nothing was attached)."""
        self._calibrating = False
        if self.started:
            self._freeze()

    # --- calibration and export ---------------------------------------------------------------

    def calibrate(self, model: torch.nn.Module, batches: Iterable[Any]) -> int:
        """Run ``model`` over ``batches`` (no gradients, eval mode) to set the observers.

        Returns:
            the number of batches seen.
        """
        was_training, was_calibrating = model.training, self._calibrating
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
            self._calibrating = was_calibrating
            model.train(was_training)
        return seen

    def export(self) -> dict[str, dict[str, Any]]:
        """The quantized model: per layer, the quantized weight and its scale and zero point.

        Each entry has ``weight`` (the layer's shape: int8 integers, or
        ``torch.float8_e4m3fn`` values for ``type: float``), ``weight_scale``
        (float32; shape ``(1,)``, ``(out, 1)`` or ``(out, groups)`` by strategy),
        ``weight_zero_point`` (int32, same shape; 0 for float8), ``input_scale`` /
        ``input_zero_point`` and ``output_scale`` / ``output_zero_point`` (static
        activation quantization only; shape ``(1,)``) and ``scheme`` (the
        arguments, as recipe values). ``dequantize(weight)`` equals the layer's
        weight after finalize (or after ``CALIBRATION_END``), exactly.

        With ``kv_cache_scheme``, each attention layer (``model.layers.0.self_attn``) has
        an entry too: ``k_scale`` and ``v_scale`` (float32, ``(1,)`` or ``(heads, 1, 1)``),
        ``k_zero_point``/``v_zero_point`` for an asymmetric integer grid, and ``scheme``
        (``{"kv_cache": arguments}``); see :mod:`modfsm.modifiers.quantization.kv_cache`.

        Raises:
            IllegalTransitionError: the modifier is neither calibrated
                (``CALIBRATION_END``) nor finalized yet, or its window never opened
                (nothing was quantized).
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
        saved: dict[str, Any] = {
            "observing": self._observing,
            "observers": {name: obs.state_dict() for name, obs in self._observers.items()},
        }
        if self._output_observers:  # only with static output activations
            saved["output_observers"] = {
                name: obs.state_dict() for name, obs in self._output_observers.items()
            }
        if self._kv is not None:
            saved["kv_cache"] = self._kv.state_dict()
        if self._calibrating or self._settled or self._exported is not None:
            saved["calibration"] = {
                "calibrating": self._calibrating,
                "settled": sorted(self._settled),
                "frozen": self._exported is not None,
                "weight_qparams": {
                    name: {"scale": scale.clone(), "zero_point": zero_point.clone()}
                    for name, (scale, zero_point) in self._weight_qparams.items()
                },
                "report": self.report,
            }
        return saved

    def load_state_dict(self, state_dict: Mapping[str, Any], state: State) -> None:
        if self.initialized:
            self._bind(state)
        keys = {"observing", "observers"}
        if self._output_observers:
            keys.add("output_observers")
        if self._kv is not None:
            keys.add("kv_cache")
        calibration = _read_calibration(state_dict.get("calibration"), self._layers)
        calibrating = isinstance(calibration, _Calibration) and calibration.calibrating
        if isinstance(calibration, _Calibration) and calibration.frozen:
            unsaved = sorted(
                name
                for name, scheme in self._plan.items()
                if scheme.weights is not None and name not in calibration.weight_qparams
            )
            if unsaved:
                calibration = (
                    f"calibration is frozen but the weight scales of {unsaved} are not saved"
                )
        problem = ""
        if set(state_dict) - {"calibration"} != keys or isinstance(calibration, str):
            problem = (
                calibration
                if isinstance(calibration, str)
                else f"its keys are {sorted(map(str, state_dict))}, expected "
                f"{', '.join(sorted(keys))}"
            )
        elif not isinstance(state_dict["observing"], bool):
            problem = f"observing is {state_dict['observing']!r}, not true or false"
        elif calibrating and not state_dict["observing"]:
            problem = "observing is False, but the modifier is calibrating (it observes then)"
        elif not calibrating and state_dict["observing"] != (
            self.started and not self.ended and not self.finalized and self.start != -1
        ):
            problem = (
                f"observing is {state_dict['observing']}, but the modifier is "
                f"'{self.lifecycle_state}' (it observes exactly while its window is open, "
                "unless start is -1)"
            )
        elif not all(
            isinstance(state_dict[key], Mapping) for key in keys - {"observing", "kv_cache"}
        ):
            problem = "observers is not a dict of layer name to observer state"
        elif self._kv is not None:
            problem = self._kv.check_state_dict(state_dict["kv_cache"])
        if problem:
            raise ConfigError(
                f"{self.lifecycle_label}.load_state_dict: {problem}. To fix, resume with the "
                "state this modifier saved.",
                owner=_OWNER,
                field="state_dict",
                value=None,
            )
        kept = {"observers": self._observers}
        if self._output_observers:
            kept["output_observers"] = self._output_observers
        for key, mine in kept.items():
            observers = state_dict[key]
            unknown = sorted(map(str, set(observers) - set(mine)))
            missing = sorted(set(mine) - set(observers))
            if unknown or missing:
                which = "observers" if key == "observers" else "output observers"
                problem = (
                    f"saved {which} {unknown} are not target layers of this model"
                    if unknown
                    else f"the {which} of target layers {missing} are not saved"
                )
                raise ConfigError(
                    f"{self.lifecycle_label}.load_state_dict: {problem} "
                    f"({sorted(mine)}). To fix, resume with the same model and recipe.",
                    owner=_OWNER,
                    field=key,
                    value=unknown or missing,
                )
        for key, mine in kept.items():
            for name, saved in state_dict[key].items():
                # on the layer's device: a checkpoint loaded to the CPU may resume a CUDA model
                mine[name].load_state_dict(saved, weight_of(self._layers[name]).device)
        if self._kv is not None:
            self._kv.load_state_dict(state_dict["kv_cache"])
        self._observing = state_dict["observing"]
        self._calibrating, self._settled = calibrating, set()
        self._weight_qparams, self._exported, self._report = {}, None, {}
        if isinstance(calibration, _Calibration):
            self._settled = set(calibration.settled)
            self._report = calibration.report
            self._weight_qparams = {
                name: (scale.to(device), zero_point.to(device))
                for name, (scale, zero_point) in calibration.weight_qparams.items()
                for device in (weight_of(self._layers[name]).device,)
            }
            if calibration.frozen:
                self._exported = self._export_entries()
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
        field = "config_groups" if self.config_groups is not None else "scheme"
        self._layers, plan = layer_schemes.plan_layers(
            self.lifecycle_label, _OWNER, field, model, self._schemes, as_names(self.ignore)
        )
        self._plan = plan
        layer_schemes.annotate(self._layers, plan)  # for a transform before it (AWQ)
        self._observers = {
            name: Observer(scheme.input_activations)
            for name, scheme in plan.items()
            if scheme.input_activations is not None and not scheme.input_activations.dynamic
        }
        self._output_observers = {
            name: Observer(scheme.output_activations)
            for name, scheme in plan.items()
            if scheme.output_activations is not None and not scheme.output_activations.dynamic
        }
        if self._kv_scheme is not None:
            if self._kv is None:
                self._kv = KVCacheQuantizer(
                    self._kv_scheme, observe=self._kv_observes, owner=_OWNER
                )
            if not self._kv.bound_to(model):
                self._kv.bind(model)

    def _kv_observes(self, attention: torch.nn.Module) -> bool:
        """Whether an attention layer's forward updates its KV-cache ranges: as for the
        activation observers (settled layers are frozen by the quantizer itself)."""
        return self._observing and (attention.training or self._calibrating)

    def _attach(self) -> None:
        for name, layer in self._layers.items():
            self.register_hook(
                layer, self._quantized_forward(name, self._plan[name]), "forward_wrap"
            )
        if self._kv is not None:
            self._kv.attach(self)

    def _quantized_forward(self, name: str, scheme: QuantizationScheme) -> Callable[..., Any]:
        """The layer's forward while quantizing: fake-quantized weight, input and output.

        The fake-quantized weight shadows the parameter for this call only (an
        instance attribute, removed in ``finally`` even if the forward raises).
        Once frozen (:meth:`_freeze`) the weight's frozen scales are used: a weight on
        its grid is fake-quantized to itself, exactly.
        """
        weights = scheme.weights
        inputs, outputs = scheme.input_activations, scheme.output_activations
        observer, output_observer = self._observers.get(name), self._output_observers.get(name)

        def forward(
            module: torch.nn.Module, original: Callable[..., Any], *args: Any, **kwargs: Any
        ) -> Any:
            if weights is not None:
                weight = module._parameters["weight"]
                assert weight is not None
                frozen = self._weight_qparams.get(name)
                scale, zero_point = weight_qparams(weight, weights) if frozen is None else frozen
                module.__dict__["weight"] = fake_quantize(weight, scale, zero_point, weights)
            try:
                if inputs is not None:
                    x = self._activation(name, module, args[0], inputs, observer)
                    args = (x, *args[1:])
                out = original(*args, **kwargs)
                if outputs is not None:
                    out = self._activation(name, module, out, outputs, output_observer)
                return out
            finally:
                if weights is not None:
                    module.__dict__.pop("weight", None)

        return forward

    def _activation(
        self,
        name: str,
        module: torch.nn.Module,
        x: torch.Tensor,
        args: QuantizationArgs,
        observer: Observer | None,
    ) -> torch.Tensor:
        """``x`` (a layer's input or output) fake-quantized: dynamic from its own values, or
        static from ``observer``, updated first while observing (in ``train()`` mode, or
        calibrating) unless the layer is settled, and always when it has seen nothing.
        ``dynamic: local`` (FP4 groups) takes its group scales from its own values and its
        global scale from ``observer``."""
        if observer is None:  # dynamic: this batch's own range (per tensor or per token)
            scale, zero_point = dynamic_qparams(x, args)
        else:
            if (
                self._observing
                and name not in self._settled
                and (module.training or self._calibrating)
            ) or not observer.observed:
                observer.update(x)
            # dynamic: local (FP4 groups): the group scales from x, under the observer's
            # static global scale
            scale, zero_point = (
                dynamic_qparams(x, args, observer.global_scale())
                if args.local
                else observer.qparams()
            )
        return fake_quantize(x, scale, zero_point, args)

    def _freeze(self) -> None:
        """Fix the scales and write every weight on its grid; fill :meth:`export`."""
        self._write_on_grid(self._layers)
        self._observing = False
        if self._kv is not None:
            self._kv.freeze()
        self._exported = self._export_entries()

    def _write_on_grid(self, names: Iterable[str]) -> None:
        """Write the weights of the layers ``names`` on their grid.

        A layer's weight scales are computed once, the first time (a sequential
        epoch's end, ``CALIBRATION_END`` or finalize), with its :attr:`report`; a
        later call keeps them and writes the weight on the same grid again (a weight
        already on it is unchanged, bit for bit; one trained since moves back onto it).
        """
        with torch.no_grad():
            for name in names:
                args = self._plan[name].weights
                if args is None:
                    continue
                weight = weight_of(self._layers[name])
                fresh = name not in self._weight_qparams
                if fresh:
                    self._weight_qparams[name] = weight_qparams(weight, args)
                scale, zero_point = self._weight_qparams[name]
                q = quantize(weight, scale, zero_point, args)
                snapped = dequantize(q, scale, zero_point, args).to(weight.dtype)
                if fresh:
                    norm = float(weight.norm())
                    self._report[name] = {
                        "max_error": float((weight - snapped).abs().max()),
                        "bound": grid_step_bound(scale, args, zero_point),
                        "relative_error": float((weight - snapped).norm()) / norm if norm else 0.0,
                    }
                weight.copy_(snapped)

    def _export_entries(self) -> dict[str, dict[str, Any]]:
        """What :meth:`export` returns, from the weights (on their grid) and frozen scales."""
        exported: dict[str, dict[str, Any]] = {}
        with torch.no_grad():
            for name, layer in self._layers.items():
                scheme = self._plan[name]
                entry: dict[str, Any] = {"scheme": _scheme_values(scheme)}
                args = scheme.weights
                if args is not None:
                    weight = weight_of(layer)
                    scale, zero_point = self._weight_qparams[name]
                    shape = scale_shape(weight, args)
                    entry["weight"] = quantize(weight, scale, zero_point, args)
                    if args.is_fp4:  # the pair is (group scales, global scale): see fake.py
                        entry["weight_global_scale"] = zero_point.reshape(1).clone()
                        scale = scale.to(torch.float8_e4m3fn)
                        zero_point = torch.zeros_like(scale, dtype=torch.int32)
                    entry.update(
                        weight_scale=scale.reshape(shape),
                        weight_zero_point=zero_point.reshape(shape),
                    )
                for prefix, observers in (
                    ("input", self._observers),
                    ("output", self._output_observers),
                ):
                    observer = observers.get(name)
                    if observer is not None and observer.observed and observer.args.local:
                        entry[f"{prefix}_global_scale"] = observer.global_scale()
                    elif observer is not None and observer.observed:
                        static_scale, static_zero_point = observer.qparams()
                        entry[f"{prefix}_scale"] = static_scale.reshape(1)
                        entry[f"{prefix}_zero_point"] = static_zero_point.reshape(1)
                exported[name] = entry
        if self._kv is not None:
            exported.update(self._kv.export())
        return exported


def _scheme_values(scheme: QuantizationScheme) -> dict[str, Any]:
    values: dict[str, Any] = {
        "weights": None if scheme.weights is None else scheme.weights.to_dict(),
        "input_activations": None
        if scheme.input_activations is None
        else scheme.input_activations.to_dict(),
    }
    if scheme.output_activations is not None:
        values["output_activations"] = scheme.output_activations.to_dict()
    return values


@attrs.frozen
class _Calibration:
    """The calibration part of a saved state (``state_dict()["calibration"]``)."""

    calibrating: bool
    settled: tuple[str, ...]
    frozen: bool
    weight_qparams: dict[str, tuple[torch.Tensor, torch.Tensor]]
    report: dict[str, dict[str, float]]


def _read_calibration(saved: Any, layers: Mapping[str, Any]) -> _Calibration | str | None:
    """The saved calibration state, None if none was saved, or what is wrong with it."""
    if saved is None:
        return None
    keys = ("calibrating", "frozen", "report", "settled", "weight_qparams")
    if not isinstance(saved, Mapping) or sorted(map(str, saved)) != list(keys):
        return f"calibration is not a dict of {', '.join(keys)}"
    if not isinstance(saved["calibrating"], bool) or not isinstance(saved["frozen"], bool):
        return "calibration.calibrating and calibration.frozen must be true or false"
    settled, qparams, report = saved["settled"], saved["weight_qparams"], saved["report"]
    if not isinstance(settled, list | tuple) or not set(settled) <= set(layers):
        return f"calibration.settled names layers that are not targets: {settled!r}"
    if (
        not isinstance(qparams, Mapping)
        or not set(qparams) <= set(layers)
        or not all(
            isinstance(pair, Mapping)
            and set(pair) == {"scale", "zero_point"}
            and all(isinstance(value, torch.Tensor) for value in pair.values())
            for pair in qparams.values()
        )
    ):
        return "calibration.weight_qparams is not a dict of target layer -> {scale, zero_point}"
    if not isinstance(report, Mapping) or not all(
        isinstance(values, Mapping) for values in report.values()
    ):
        return "calibration.report is not a dict of layer -> errors"
    return _Calibration(
        calibrating=saved["calibrating"],
        settled=tuple(settled),
        frozen=saved["frozen"],
        weight_qparams={
            name: (pair["scale"], pair["zero_point"]) for name, pair in qparams.items()
        },
        report={
            str(name): {str(key): float(value) for key, value in values.items()}
            for name, values in report.items()
        },
    )
