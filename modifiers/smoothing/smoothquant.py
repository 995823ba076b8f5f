"""``SmoothQuantModifier``: move activation outliers into the weights before quantizing.

SmoothQuant (Xiao et al., 2022, arXiv:2211.10438) observes that a few input
channels of an LLM's linear layers carry activations far larger than the rest,
so one int8 scale per token (or per tensor) wastes its range on them, while
weights are easy to quantize. It divides each input channel ``j`` by a factor
``s_j`` and multiplies the matching weight column by it, which leaves the
product unchanged::

    Y = X W^T = (X diag(s)^-1) (W diag(s))^T
    s_j = max|X_j| ** alpha / max|W_j| ** (1 - alpha)

``alpha`` (``smoothing_strength``) says how much of the difficulty moves to the
weights; ``max|W_j|`` is the largest magnitude in column ``j`` over every layer
that reads the activation. The division by ``s`` is folded into the layer that
produces ``X`` (a norm's weight, or a ``Linear``'s weight rows and bias), so the
model is the same function, up to float rounding, with smaller outliers.

The reference's recipe shape (llm-compressor 0.14)::

    oneshot_stage:
      smoothing:
        SmoothQuantModifier:
          smoothing_strength: 0.8
          mappings:           # default: the Llama family's
            - [["re:.*q_proj", "re:.*k_proj", "re:.*v_proj"], "re:.*input_layernorm"]
            - [["re:.*gate_proj", "re:.*up_proj"], "re:.*post_attention_layernorm"]
          ignore: []
      quantization:
        QuantizationModifier: {scheme: W8A8, targets: Linear, ignore: [lm_head]}

Arguments, against llm-compressor 0.14:

* ``smoothing_strength`` (alpha, in (0, 1], default 0.5).
* ``mappings`` (see :mod:`modfsm.modifiers.smoothing.mappings`); None means
  :data:`~modfsm.modifiers.smoothing.mappings.LLAMA_SMOOTHQUANT_MAPPINGS`, the
  reference's default for the Llama family (the reference also infers other
  architectures' mappings from the model's class; modfsm does not).
* ``ignore``: a mapping with any ignored layer is left alone (the reference skips a
  mapping only when all its layers are ignored).
* ``num_calibration_steps`` (None: all): how many calibration calls of each smooth
  layer count, one per batch in either pipeline. The reference declares it ("number
  of samples") and does not read it.
* ``start``/``end``: as for every one-shot modifier, the calibration events drive it
  whatever they say (the reference refuses values other than None and -1).
* Accepted only at their defaults: ``calibration_function: null`` (the pipeline runs
  the model), ``algorithm: smoothquant`` (not ``log_equalization``).

Theory of operation (on :data:`~modfsm.engine.CALIBRATION_LIFECYCLE`, as
:mod:`modfsm.modifiers.calibration` describes for GPTQ):

* ``on_initialize`` resolves the mappings on the model
  (:func:`~modfsm.modifiers.smoothing.mappings.resolve_mappings`): one
  :class:`~modfsm.modifiers.smoothing.mappings.ResolvedMapping` per smooth layer.
* ``on_calibration_start`` registers a forward hook on each smooth layer not
  smoothed yet; each call folds ``|output|``'s per-channel maximum over every
  position into the layer's running maximum (padding positions count, as in the
  reference). With ``num_calibration_steps`` only that many calls per smooth
  layer count (one call per batch in either pipeline).
* ``on_sequential_epoch_end(modules=...)`` smooths the mappings whose smooth
  layer lies inside one of ``modules`` and that saw activations (every such
  mapping when ``modules`` is not given), then drops their hooks.
* ``on_calibration_end`` smooths the rest and removes the hooks; a hooked
  mapping that saw no activation is a
  :class:`~modfsm.modifiers.solvers.CalibrationError` listing them, raised
  before anything is smoothed (the modifier stays started, so the event can be
  sent again once the pipeline runs them).
* A mapping is smoothed once: a later calibration hooks only those still waiting.
* ``finalize`` removes what is left and warns about mappings never smoothed.

Scales are computed in float32: ``s_j`` as above, 1 where a weight column is
all zero (the channel feeds nothing), and at least ``1e-5`` (the reference's
floor). The reference uses the activation's range ``max - min`` instead of
``max|X_j|`` and ``2 max|W_j|``; both are about twice the paper's values, so
its scales differ from these by a constant factor ``2 ** (2 alpha - 1)``
(none at ``alpha = 0.5``), which no per-channel or per-token quantizer notices.

Order matters: smoothing rewrites the weights, so it must come *before* the
quantization modifiers in the same stage. The engine calls a stage's modifiers
in recipe order, so for each ``SEQUENTIAL_EPOCH_END`` (and ``CALIBRATION_END``)
SmoothQuant rescales a block before ``QuantizationModifier`` or ``GPTQModifier``
writes the block's weights on their grid. Dynamic activation scales (``W8A8``
per token) then follow the smoothed inputs; *static* activation observers of a
quantization modifier in the same stage saw the inputs before smoothing, so put
SmoothQuant in an earlier, separately calibrated run for static schemes.

Checkpoints hold whether calibration is running, each waiting mapping's maxima
and step count, and the scales applied so far (the weights themselves are in
the model's checkpoint).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import torch

from modfsm.engine import ConfigError, Event, State
from modfsm.engine.kernel.validate import check_optional_int
from modfsm.modifiers.calibration import CalibrationBase, layers_inside, refuse_unless
from modfsm.modifiers.smoothing.mappings import (
    LLAMA_SMOOTHQUANT_MAPPINGS,
    ResolvedMapping,
    apply_smoothing,
    parse_mappings,
    resolve_mappings,
)
from modfsm.modifiers.solvers import CalibrationError
from modfsm.modifiers.targets import as_names, check_target_names

if TYPE_CHECKING:
    from modfsm.engine.runtime.hooks import Handle
    from modfsm.modifiers.smoothing.mappings import Mapping as LayerMapping

__all__ = ["MINIMUM_SCALE", "SmoothQuantModifier", "smoothing_scales"]

_OWNER: Final = "SmoothQuantModifier"
_LOG: Final = logging.getLogger("modfsm")
MINIMUM_SCALE: Final = 1e-5
"""The smallest smoothing factor applied (llm-compressor's ``MINIMUM_SMOOTHING_SCALE``)."""
_STATE_KEYS: Final = frozenset({"calibrating", "maxima", "steps", "scales"})


def smoothing_scales(
    activation_max: torch.Tensor, balance: Iterable[torch.nn.Linear], strength: float
) -> torch.Tensor:
    """``s_j = max|X_j| ** strength / max|W_j| ** (1 - strength)``, at least :data:`MINIMUM_SCALE`.

    ``max|W_j|`` is the largest magnitude of column ``j`` over every layer of
    ``balance``; where it is 0 the channel feeds nothing and ``s_j`` is 1.

    Example:
        >>> fc = torch.nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = fc.weight.copy_(torch.tensor([[1.0, 4.0]]))
        >>> smoothing_scales(torch.tensor([16.0, 1.0]), [fc], 0.5)
        tensor([4.0000, 0.5000])
    """
    columns = torch.stack([layer.weight.detach().abs().amax(dim=0).float() for layer in balance])
    weight_max = columns.amax(dim=0)
    activations = activation_max.to(device=weight_max.device, dtype=torch.float32)
    scales = activations.pow(strength) / weight_max.pow(1.0 - strength)
    scales = torch.where(weight_max > 0, scales, torch.ones_like(scales))
    return scales.clamp(min=MINIMUM_SCALE)


def _check_strength(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not (0 < value <= 1):
        raise ConfigError(
            f"{_OWNER}.smoothing_strength must be a number in (0, 1], got {value!r}. To fix, "
            "write e.g. 0.5 (the paper's default; 0.8 for models with strong outliers).",
            owner=_OWNER,
            field="smoothing_strength",
            value=value,
        )


def _check_mappings(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        parse_mappings(_OWNER, "mappings", value)


def _check_steps(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_optional_int(_OWNER, "num_calibration_steps", value, minimum=1)


@attrs.define(eq=False)
class SmoothQuantModifier(CalibrationBase):
    """Smooth activation outliers into the following weights, once, from calibration.

    See the module docstring for the algorithm and the lifecycle.

    Attributes:
        smoothing_strength: alpha in (0, 1]: how much of the activations' range moves
            to the weights (default 0.5).
        mappings: ``[[balance patterns...], smooth pattern]`` pairs (or dicts
            ``{balance_layers, smooth_layer}``); None: the Llama family's
            (:data:`~modfsm.modifiers.smoothing.mappings.LLAMA_SMOOTHQUANT_MAPPINGS`).
        ignore: layers whose mappings are left alone (a mapping with any ignored layer).
        num_calibration_steps: how many calibration calls of each smooth layer count
            (one per batch); None: all.
        calibration_function: accepted as None only (the pipeline runs the model).
        algorithm: accepted as ``"smoothquant"`` only.
    """

    smoothing_strength: float = attrs.field(default=0.5, validator=_check_strength)
    mappings: list[Any] | None = attrs.field(default=None, validator=_check_mappings)
    ignore: str | list[str] = attrs.field(factory=list, validator=check_target_names)
    num_calibration_steps: int | None = attrs.field(default=None, validator=_check_steps)
    calibration_function: Any = None
    algorithm: str = "smoothquant"
    _resolved: dict[str, ResolvedMapping] = attrs.field(init=False, repr=False, factory=dict)
    _maxima: dict[str, torch.Tensor] = attrs.field(init=False, repr=False, factory=dict)
    _steps: dict[str, int] = attrs.field(init=False, repr=False, factory=dict)
    _scales: dict[str, torch.Tensor] = attrs.field(init=False, repr=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        refuse_unless(
            _OWNER, "calibration_function", self.calibration_function, (None,),
            "leave it out: the calibration pipeline runs the model",
        )  # fmt: skip
        refuse_unless(
            _OWNER, "algorithm", self.algorithm, ("smoothquant",),
            "leave it out (logarithmic equalization is not implemented)",
        )  # fmt: skip

    # --- views ------------------------------------------------------------------------------

    @property
    def layer_mappings(self) -> tuple[LayerMapping, ...]:
        """The mappings as patterns: the recipe's, or the Llama-family default."""
        if self.mappings is None:
            return LLAMA_SMOOTHQUANT_MAPPINGS
        return parse_mappings(_OWNER, "mappings", self.mappings)

    @property
    def resolved(self) -> list[ResolvedMapping]:
        """The mappings found in the model at initialize, in model order."""
        return list(self._resolved.values())

    @property
    def smoothed(self) -> list[str]:
        """The smooth layers smoothed so far, in model order."""
        return [name for name in self._resolved if name in self._scales]

    @property
    def scales(self) -> dict[str, torch.Tensor]:
        """The factors applied, by smooth layer (each channel's output was divided by it)."""
        return {name: scale.clone() for name, scale in self._scales.items()}

    def report(self) -> dict[str, dict[str, Any]]:
        """Per smoothed mapping: its balance layers, channels, and smallest and largest factor."""
        return {
            name: {
                "balance": list(self._resolved[name].balance_names),
                "channels": int(scale.numel()),
                "scale_min": float(scale.min()),
                "scale_max": float(scale.max()),
            }
            for name, scale in self._scales.items()
        }

    # --- lifecycle hooks ----------------------------------------------------------------------

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        self._resolved = self._resolve(self._model(state))
        self._maxima, self._steps, self._handles, self._scales = {}, {}, {}, {}
        self._calibrating = False
        return True

    def on_calibration_start(self, state: State, event: Event, **kwargs: Any) -> None:
        for name in self._resolved:
            if name not in self._scales and name not in self._handles:
                self._steps.setdefault(name, 0)
                self._handles[name] = self._register_collector(name)
        self._calibrating = True

    def on_sequential_epoch_end(
        self,
        state: State,
        event: Event,
        modules: torch.nn.Module | Iterable[torch.nn.Module] | None = None,
        **kwargs: Any,
    ) -> None:
        waiting = [name for name in self._resolved if name in self._maxima]
        if modules is not None:
            smooth = {name: self._resolved[name].smooth for name in waiting}
            inside = set(layers_inside(smooth, modules))
            waiting = [name for name in waiting if name in inside]
        for name in waiting:
            self._smooth(name)

    def on_calibration_end(self, state: State, event: Event, **kwargs: Any) -> None:
        unseen = [name for name in self._resolved if name in self._handles
                  and name not in self._maxima]  # fmt: skip
        if unseen:
            raise CalibrationError(
                f"{self.lifecycle_label}: {len(unseen)} smooth layer(s) produced no output "
                f"during calibration, so their mappings cannot be smoothed: {', '.join(unseen)}. "
                "Nothing was smoothed at CALIBRATION_END. To fix, make the calibration run "
                "these layers, or add them to ignore.",
                problem="no samples",
            )
        for name in [n for n in self._resolved if n in self._maxima]:
            self._smooth(name)
        self._stop_calibrating()

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        self._stop_calibrating()
        left = [name for name in self._resolved if name not in self._scales]
        self._warn_unfinished("mappings", left, len(self._resolved))
        return True

    # --- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "calibrating": self._calibrating,
            "maxima": {name: value.clone() for name, value in self._maxima.items()},
            "steps": dict(self._steps),
            "scales": {name: value.clone() for name, value in self._scales.items()},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any], state: State) -> None:
        problem = ""
        if set(state_dict) != _STATE_KEYS:
            problem = f"its keys are {sorted(map(str, state_dict))}, expected {sorted(_STATE_KEYS)}"
        elif not isinstance(state_dict["calibrating"], bool):
            problem = f"calibrating is {state_dict['calibrating']!r}, not true or false"
        elif not all(isinstance(state_dict[k], Mapping) for k in ("maxima", "steps", "scales")):
            problem = "maxima, steps and scales must be dicts by smooth layer name"
        elif not self.initialized and any(
            state_dict[k] for k in ("calibrating", "maxima", "steps", "scales")
        ):
            problem = "it holds calibration state, but the modifier is not initialized"
        if problem:
            self._refuse_state(problem)
        if self.initialized:
            self._resolved = self._resolve(self._model(state))
        saved = {*state_dict["maxima"], *state_dict["steps"], *state_dict["scales"]}
        strangers = sorted(map(str, saved - set(self._resolved)))
        if strangers:
            self._refuse_state(
                f"{strangers} are not smooth layers of this model's mappings "
                f"({list(self._resolved)})"
            )
        self.remove_hooks(list(self._handles.values()))
        self._handles = {}

        def place(name: str, value: Any) -> torch.Tensor:
            return torch.as_tensor(value).to(self._resolved[name].balance[0].weight.device)

        self._maxima = {name: place(name, v) for name, v in state_dict["maxima"].items()}
        self._scales = {name: place(name, v) for name, v in state_dict["scales"].items()}
        self._steps = {str(name): int(v) for name, v in state_dict["steps"].items()}
        self._calibrating = state_dict["calibrating"] and not self.finalized
        if self._calibrating:
            for name in self._resolved:
                if name not in self._scales:
                    self._steps.setdefault(name, 0)
                    self._handles[name] = self._register_collector(name)
        else:
            self._maxima, self._steps = {}, {}

    # --- internals ------------------------------------------------------------------------------

    def _resolve(self, model: torch.nn.Module) -> dict[str, ResolvedMapping]:
        found = resolve_mappings(_OWNER, model, self.layer_mappings, as_names(self.ignore))
        if not found:
            raise ConfigError(
                f"{self.lifecycle_label}: the mappings {list(self.layer_mappings)} give no layer "
                "group to smooth in this model (every match was skipped: ignored, or its "
                "balance layers' inputs do not match the smooth layer's outputs). To fix, "
                "narrow ignore or write mappings for this architecture.",
                owner=_OWNER,
                field="mappings",
                value=self.mappings,
            )
        return {mapping.smooth_name: mapping for mapping in found}

    def _register_collector(self, name: str) -> Handle:
        mapping = self._resolved[name]
        width = mapping.width
        limit = self.num_calibration_steps

        def collect(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if isinstance(output, tuple | list):
                output = output[0]
            if not isinstance(output, torch.Tensor) or output.shape[-1] != width:
                return
            if limit is not None and self._steps[name] >= limit:
                return
            self._steps[name] += 1
            seen = output.detach().reshape(-1, width).abs().amax(dim=0).float()
            known = self._maxima.get(name)
            self._maxima[name] = seen if known is None else torch.maximum(known, seen)

        return self.register_hook(mapping.smooth, collect, "forward")

    def _smooth(self, name: str) -> None:
        """Smooth mapping ``name`` from its maxima; record the scales; drop its hook."""
        mapping = self._resolved[name]
        maxima = self._maxima.pop(name)
        if not bool(torch.isfinite(maxima).all()):
            self._maxima[name] = maxima
            raise CalibrationError(
                f"{self.lifecycle_label}: the outputs of {name!r} were not finite during "
                "calibration, so no smoothing scale can be computed. To fix, check the model "
                "and the calibration data (a float16 overflow?).",
                problem="not finite",
            )
        scales = smoothing_scales(maxima, mapping.balance, float(self.smoothing_strength))
        apply_smoothing(mapping, scales)
        self._scales[name] = scales
        self._steps.pop(name, None)
        self._drop_hook(name)
        _LOG.info(
            "%s: smoothed %s -> %s (factors %.3g to %.3g)",
            self.lifecycle_label,
            name,
            ", ".join(mapping.balance_names),
            float(scales.min()),
            float(scales.max()),
        )

    def _stop_calibrating(self) -> None:
        self._stop_hooks()
        self._maxima, self._steps = {}, {}
