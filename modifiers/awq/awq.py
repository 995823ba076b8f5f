"""``AWQModifier``: activation-aware weight quantization (Lin et al., 2023), one shot.

Two recipe shapes, both llm-compressor's. **Transform** (0.14): ``AWQModifier``
without ``scheme`` and ``config_groups`` only smooths; the quantizing modifier after
it in the recipe (``QuantizationModifier`` or ``GPTQModifier``) records the grid of
each layer it quantizes on the layer
(:mod:`~modfsm.modifiers.quantization.layer_schemes`), AWQ searches its scales for
that grid, and the quantizing modifier rounds and exports the weights::

    oneshot_stage:
      modifiers:
        AWQModifier: {duo_scaling: true}
        QuantizationModifier: {scheme: W4A16_ASYM, targets: Linear, ignore: [lm_head]}

A mapping none of whose balance layers is quantized is left alone (logged). **With
its quantization arguments** (recipes written before 0.14; 0.14 still accepts them
and splits them into the two modifiers), AWQ also rounds and exports::

    oneshot_stage:
      quantization_modifiers:
        AWQModifier:
          scheme: W4A16_ASYM      # or config_groups: {...}
          targets: Linear
          ignore: [lm_head]
          duo_scaling: true
          n_grid: 20
          mappings:               # optional: the Llama family's by default
            - [["re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"], "re:.*input_layernorm$"]

For every mapping (a smooth layer and the balance ``Linear`` layers its output
feeds, :mod:`modfsm.modifiers.smoothing.mappings`) AWQ searches per-channel
scales ``s`` that make ``Q(W · diag(s)) · diag(s)^-1`` closest to ``W`` on the
calibration inputs (:mod:`modfsm.modifiers.awq.search`), divides the smooth
layer's output by ``s`` and multiplies the balance layers' input columns by it
(the model's function is unchanged), then rounds every target weight to its
grid. It runs on :data:`~modfsm.engine.CALIBRATION_LIFECYCLE`:

* ``on_initialize`` resolves the target layers (``targets``/``ignore`` and the
  scheme, as ``GPTQModifier``: every one a ``Linear`` whose weight no other module
  shares, groups dividing its inputs) and the mappings (patterns that match
  nothing are a ``ConfigError``; pairs whose shapes do not line up, such as
  ``v_proj -> o_proj`` under grouped-query attention, are skipped; a mapping whose
  balance layers are all left in float is skipped, since it changes no error).
* ``on_calibration_start`` (in the transform form, first checks that the grid every
  balance layer will be put on is one AWQ can search for) hooks the first balance
  layer of every mapping not smoothed yet: each call adds its input (padding left
  out, as the GPTQ modifier does, when the model is called with a ``(batch,
  sequence)`` ``attention_mask``) to the mapping's
  :class:`~modfsm.modifiers.awq.search.InputStatistics`.
* ``on_sequential_epoch_end(modules=...)`` smooths the mappings whose balance
  layers all lie inside ``modules`` and that saw inputs, then rounds to the grid
  every target layer inside ``modules`` that no unfinished mapping still
  rescales (without ``modules``: every mapping with inputs, every such layer).
  The pipeline then runs the block again, quantized, for the next one.
* ``on_calibration_end`` first checks that every mapping still waiting saw
  inputs (else a :class:`~modfsm.modifiers.solvers.CalibrationError` naming them,
  nothing changed: AWQ never skips a mapping silently), then smooths them and
  rounds every remaining target layer, so every target ends on its grid, those in
  no mapping (``o_proj`` under grouped-query attention, ``lm_head`` unless
  ignored) by plain round-to-nearest.
* A layer is rounded only once every mapping that rescales it (as a smooth or a
  balance layer) is done, so rounding is never undone by a later rescale.
  Mappings are smoothed and layers rounded once; a later calibration does
  nothing more.
* :meth:`AWQModifier.export` returns what ``GPTQModifier.export`` returns (integer
  weights, scales, zero points and the scheme), for ``modfsm oneshot``'s
  compressed checkpoint.

Arguments, against llm-compressor:

* ``scheme`` (default ``W4A16_ASYM``, the reference's AWQ default) or
  ``config_groups``, ``targets`` (default ``Linear``), ``ignore``. Weights only, on
  an integer grid; a scheme quantizing activations is refused (add a
  ``QuantizationModifier`` for them).
* ``mappings``: default :data:`LLAMA_AWQ_MAPPINGS` (the reference's default).
* ``duo_scaling``: true (default), false, or ``"both"`` (each ratio both ways;
  the reference halves its grid instead). Refused with per-tensor weight
  scales, as the reference refuses it.
* ``n_grid``: the number of ratios tried (default 20), at least 1.
* ``kv_cache_scheme``: only null; the fix names the shape 0.14 splits such a recipe
  into (``AWQModifier`` then ``QuantizationModifier`` with the ``kv_cache_scheme``).
* ``offload_device``: only null (modfsm keeps statistics, not activations, on the
  layers' device, so there is nothing to offload).

**Departure:** the loss is the balance layers' output error (the paper's
per-layer objective), computed exactly from each mapping's input second moment
rather than by re-running the enclosing block on cached inputs as
llm-compressor does; the ratios are ``i / n_grid`` (the paper's and AutoAWQ's
grid) plus the identity, where llm-compressor spaces ``n_grid - 1`` ratios over
``[0, 1]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import torch

from modfsm.engine import (
    ConfigError,
    Event,
    IllegalTransitionError,
    State,
)
from modfsm.engine.kernel.validate import check_int
from modfsm.modifiers.awq.search import InputStatistics, round_to_grid, search_scales
from modfsm.modifiers.calibration import CalibrationBase, layers_inside, refuse_unless
from modfsm.modifiers.quantization import layer_schemes
from modfsm.modifiers.quantization.args import (
    QuantizationArgs,
    QuantizationScheme,
    check_scheme_value,
    parse_schemes,
)
from modfsm.modifiers.quantization.fake import dequantize, quantize, scale_shape
from modfsm.modifiers.quantization.layer_schemes import scheme_of
from modfsm.modifiers.smoothing.mappings import (
    ResolvedMapping,
    apply_smoothing,
    parse_mappings,
    resolve_mappings,
)
from modfsm.modifiers.solvers import CalibrationError
from modfsm.modifiers.targets import as_names, check_names, check_target_names

if TYPE_CHECKING:
    from modfsm.engine.runtime.hooks import Handle
    from modfsm.modifiers.smoothing.mappings import Mapping as MappingPatterns

__all__ = ["DEFAULT_SCHEME", "LLAMA_AWQ_MAPPINGS", "AWQModifier"]

_OWNER: Final = "AWQModifier"
_LOG: Final = logging.getLogger("modfsm")
DEFAULT_SCHEME: Final = "W4A16_ASYM"
"""The scheme when neither ``scheme`` nor ``config_groups`` is given (the reference's)."""

LLAMA_AWQ_MAPPINGS: Final[tuple[MappingPatterns, ...]] = (
    (("re:.*q_proj$", "re:.*k_proj$", "re:.*v_proj$"), "re:.*input_layernorm$"),
    (("re:.*o_proj$",), "re:.*v_proj$"),
    (("re:.*gate_proj$", "re:.*up_proj$"), "re:.*post_attention_layernorm$"),
    (("re:.*down_proj$",), "re:.*up_proj$"),
)
"""llm-compressor's default AWQ mappings (Llama, Mistral, Qwen and the like):
``input_layernorm -> q, k, v``; ``v_proj -> o_proj``; ``post_attention_layernorm ->
gate, up``; ``up_proj -> down_proj``."""

_STATE_KEYS: Final = frozenset({"calibrating", "statistics", "smoothed", "quantized"})
_DUO: Final = (True, False, "both")


def _check_optional_names(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        check_names(_OWNER, attribute.name, value)


def _check_scheme(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_scheme_value(_OWNER, "W4A16_ASYM", value)


def _check_duo_scaling(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not any(type(value) is type(ok) and value == ok for ok in _DUO):
        raise ConfigError(
            f"{_OWNER}.duo_scaling must be true, false or 'both', got {value!r}. To fix, write "
            "true (scales from activations and weights, the default), false (activations "
            "only) or 'both' (try each ratio both ways).",
            owner=_OWNER,
            field="duo_scaling",
            value=value,
        )


def _check_n_grid(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_int(_OWNER, attribute.name, value, minimum=1)


def _check_offload(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    refuse_unless(
        _OWNER, attribute.name, value, (None,),
        "leave it out: modfsm does not offload; AWQ keeps each mapping's input statistics "
        "(not its activations) on the layers' device",
    )  # fmt: skip


def _refuse_kv_cache_scheme(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    refuse_unless(
        _OWNER, attribute.name, value, (None,),
        "move it to a QuantizationModifier after AWQModifier (the shape llm-compressor 0.14 "
        "turns this recipe into: AWQModifier smooths, QuantizationModifier quantizes the "
        "weights and the KV cache)",
    )  # fmt: skip


@attrs.define(eq=False)
class AWQModifier(CalibrationBase):
    """Smooth each mapping by AWQ's searched scales, then round the target weights to the grid.

    See the module docstring for the lifecycle and the arguments.

    Attributes:
        targets: the layers a ``scheme`` applies to (default ``Linear``).
        ignore: layers to leave in float (and mappings touching them unsmoothed).
        scheme: a preset name, or preset name -> targets (default ``W4A16_ASYM``).
        config_groups: explicit weight schemes by group name.
        mappings: the smooth/balance layer patterns (default :data:`LLAMA_AWQ_MAPPINGS`).
        duo_scaling: scales from activations and weights (True), activations only
            (False), or both tried (``"both"``).
        n_grid: how many ratios the search tries.
        offload_device: accepted only as None.
    """

    targets: str | list[str] | None = attrs.field(default=None, validator=_check_optional_names)
    ignore: str | list[str] = attrs.field(factory=list, validator=check_target_names)
    scheme: str | dict[str, str | list[str]] | None = attrs.field(
        default=None, validator=_check_scheme
    )
    config_groups: dict[str, Any] | None = None
    mappings: list[Any] | None = None
    duo_scaling: bool | str = attrs.field(default=True, validator=_check_duo_scaling)
    n_grid: int = attrs.field(default=20, validator=_check_n_grid)
    offload_device: Any = attrs.field(default=None, validator=_check_offload)
    kv_cache_scheme: Any = attrs.field(default=None, validator=_refuse_kv_cache_scheme)
    _patterns: tuple[MappingPatterns, ...] = attrs.field(init=False, repr=False, default=())
    _schemes: tuple[QuantizationScheme, ...] = attrs.field(init=False, repr=False, default=())
    _plan: dict[str, QuantizationArgs] = attrs.field(init=False, repr=False, factory=dict)
    _layers: dict[str, torch.nn.Linear] = attrs.field(init=False, repr=False, factory=dict)
    _mappings: dict[str, ResolvedMapping] = attrs.field(init=False, repr=False, factory=dict)
    _touching: dict[str, tuple[str, ...]] = attrs.field(init=False, repr=False, factory=dict)
    _statistics: dict[str, InputStatistics] = attrs.field(init=False, repr=False, factory=dict)
    _smoothed: dict[str, dict[str, Any]] = attrs.field(init=False, repr=False, factory=dict)
    _quantized: dict[str, dict[str, Any]] = attrs.field(init=False, repr=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self._patterns = (
            LLAMA_AWQ_MAPPINGS
            if self.mappings is None
            else parse_mappings(_OWNER, "mappings", self.mappings)
        )
        if self.transform:
            if self.targets is not None:
                raise ConfigError(
                    f"{_OWNER}: targets={self.targets!r} without a scheme. Without scheme and "
                    "config_groups AWQModifier is a transform: it smooths for the "
                    "quantization a later QuantizationModifier or GPTQModifier applies, and "
                    "that modifier names the targets. To fix, move targets there, or add "
                    f"scheme: {DEFAULT_SCHEME} here to quantize with AWQ itself.",
                    owner=_OWNER,
                    field="targets",
                    value=self.targets,
                )
            return
        self._schemes = parse_schemes(
            _OWNER, self.scheme, self.config_groups, self.targets, example=DEFAULT_SCHEME
        )
        field = "config_groups" if self.config_groups is not None else "scheme"
        for position, parsed in enumerate(self._schemes):
            self._check_scheme_group(position, parsed, field)

    def _check_scheme_group(self, position: int, scheme: QuantizationScheme, field: str) -> None:
        where = f"scheme group {position} ({', '.join(scheme.targets)})"
        if scheme.input_activations is not None or scheme.output_activations is not None:
            raise ConfigError(
                f"{_OWNER}: {where} quantizes activations ({scheme.describe()}); AWQ quantizes "
                "weights only. To fix, use a weight-only scheme here (W4A16_ASYM, W4A16, "
                "W8A16), and add a QuantizationModifier for the activations.",
                owner=_OWNER,
                field=field,
                value=scheme.describe(),
            )
        weights = scheme.weights
        if weights is None:
            raise ConfigError(
                f"{_OWNER}: {where} quantizes no weights, so AWQ has nothing to do. To fix, "
                "give it weights, or move it to a QuantizationModifier.",
                owner=_OWNER,
                field=field,
                value=scheme.describe(),
            )
        if weights.is_float:
            raise ConfigError(
                f"{_OWNER}: {where} quantizes weights to float8; AWQ here rounds to integer "
                "grids only. To fix, use an integer scheme (W4A16_ASYM, W4A16, W8A16).",
                owner=_OWNER,
                field=field,
                value=scheme.describe(),
            )
        if weights.strategy == "tensor" and self.duo_scaling is not False:
            raise ConfigError(
                f"{_OWNER}: duo_scaling={self.duo_scaling!r} needs per-channel or per-group "
                f"weight scales, and {where} has one scale per tensor (as llm-compressor, "
                "which refuses it). To fix, set duo_scaling: false, or use strategy channel "
                "or group.",
                owner=_OWNER,
                field="duo_scaling",
                value=self.duo_scaling,
            )

    # --- views ------------------------------------------------------------------------------

    @property
    def transform(self) -> bool:
        """True without ``scheme`` and ``config_groups``: llm-compressor 0.14's form, which
        smooths only, for the grid a later quantizing modifier puts each layer on."""
        return self.scheme is None and self.config_groups is None

    @property
    def schemes(self) -> tuple[QuantizationScheme, ...]:
        """The weight schemes, as parsed from ``scheme`` or ``config_groups``."""
        return self._schemes

    @property
    def plan(self) -> dict[str, QuantizationArgs]:
        """The weight arguments of every target layer, resolved at initialize."""
        return dict(self._plan)

    @property
    def mapping_names(self) -> list[str]:
        """The smooth layers of the mappings in use (resolved at initialize), in the model
        order of their first balance layer."""
        return list(self._mappings)

    @property
    def resolved_mappings(self) -> list[ResolvedMapping]:
        """The mappings in use, in the order of :attr:`mapping_names`."""
        return list(self._mappings.values())

    @property
    def smoothed(self) -> list[str]:
        """The mappings (by smooth layer) smoothed so far, in :attr:`mapping_names` order."""
        return [name for name in self._mappings if name in self._smoothed]

    @property
    def quantized(self) -> list[str]:
        """The target layers rounded to their grid so far, in model order."""
        return [name for name in self._layers if name in self._quantized]

    def report(self) -> dict[str, dict[str, Any]]:
        """Per smoothed mapping (by smooth layer), in order: what the search chose.

        Each entry has ``balance`` (the balance layers), ``ratio`` and ``duo`` (the grid
        point chosen), ``loss`` (its mean squared output error on the calibration
        inputs), ``identity_loss`` (plain round-to-nearest's), ``samples`` (input
        vectors) and ``seconds``; ``scales`` is left out (see :meth:`scales`).
        """
        return {
            name: {key: value for key, value in self._smoothed[name].items() if key != "scales"}
            for name in self.smoothed
        }

    def scales(self) -> dict[str, torch.Tensor]:
        """Per smoothed mapping (by smooth layer): the scales applied (float32)."""
        return {
            name: self._smoothed[name]["scales"].clone()
            for name in self.smoothed
            if "scales" in self._smoothed[name]
        }

    # --- lifecycle hooks ----------------------------------------------------------------------

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        self._bind(self._model(state))
        self._statistics, self._handles, self._smoothed, self._quantized = {}, {}, {}, {}
        self._calibrating = False
        return True

    def on_calibration_start(self, state: State, event: Event, **kwargs: Any) -> None:
        for mapping in self._mappings.values():  # the transform: every grid known by now
            for name, layer in zip(mapping.balance_names, mapping.balance, strict=True):
                self._weight_args(name, layer)
        if not self._calibrating:
            self._watch_padding(self._model(state))
        for name in self._mappings:
            if name not in self._smoothed and name not in self._handles:
                mapping = self._mappings[name]
                weight = mapping.balance[0].weight
                self._statistics[name] = InputStatistics.empty(weight.shape[1], weight.device)
                self._handles[name] = self._register_collector(name)
        self._calibrating = True

    def on_sequential_epoch_end(
        self,
        state: State,
        event: Event,
        modules: torch.nn.Module | Iterable[torch.nn.Module] | None = None,
        **kwargs: Any,
    ) -> None:
        if not self._calibrating:
            return
        waiting = [n for n in self._mappings if n in self._statistics and self._statistics[n].count]
        layers = list(self._layers)
        if modules is not None:
            waiting = [n for n in waiting if self._inside(self._mappings[n], modules)]
            layers = layers_inside(self._layers, modules)
        for name in waiting:
            self._smooth(name)
        self._round([name for name in layers if self._ready(name)])

    def on_calibration_end(self, state: State, event: Event, **kwargs: Any) -> None:
        waiting = [name for name in self._mappings if name not in self._smoothed]
        unseen = [
            name
            for name in waiting
            if name not in self._statistics or not self._statistics[name].count
        ]  # fmt: skip
        if unseen:
            raise CalibrationError(
                f"{self.lifecycle_label}: {len(unseen)} mapping(s) received no input during "
                f"calibration, so their scales cannot be searched: "
                f"{', '.join(f'{n} -> {self._balance_list(n)}' for n in unseen)}. Nothing was "
                "smoothed or quantized at CALIBRATION_END. To fix, make the calibration run "
                "these layers (a layer the forward pass skips has no inputs), or add them to "
                "ignore.",
                problem="no samples",
            )
        for name in waiting:
            self._smooth(name)
        self._round([name for name in self._layers if name not in self._quantized])
        self._stop_calibrating()

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        self._stop_calibrating()
        left = [name for name in self._mappings if name not in self._smoothed]
        left += [name for name in self._layers if name not in self._quantized]
        self._warn_unfinished("mappings and target layers", left,
                              len(self._mappings) + len(self._layers))  # fmt: skip
        return True

    # --- export -------------------------------------------------------------------------------

    def export(self) -> dict[str, dict[str, Any]]:
        """Per target layer: the integer weight, its scale and zero point, as ``GPTQModifier``.

        Each entry has ``weight`` (int8, the layer's shape), ``weight_scale``
        (float32; ``(1,)``, ``(out, 1)`` or ``(out, groups)``), ``weight_zero_point``
        (int32, same shape) and ``scheme`` (the arguments, as recipe values;
        ``input_activations`` is None). ``dequantize(weight)`` equals the layer's
        weight, cast to the weight's dtype.

        Raises:
            IllegalTransitionError: some target layer is not quantized yet.
            ConfigError: a layer's weight changed since it was quantized.
        """
        if self.transform:
            return {}  # the quantizing modifier exports the weights
        waiting = [name for name in self._layers if name not in self._quantized]
        if not self._layers or waiting:
            reason = (
                "it is not initialized"
                if not self._layers
                else f"{len(waiting)} target layer(s) are not quantized yet ({waiting[0]}, ...)"
            )
            raise IllegalTransitionError(
                f"{self.lifecycle_label}.export() is not available: {reason}. To fix, run "
                "calibration (CALIBRATION_START, the calibration data, CALIBRATION_END) first.",
                modifier=self,
                state=str(self.lifecycle_state),
                trigger="export",
                rule="-",
                allowed=("calibration_start", "calibration_end"),
            )
        return {name: self._export_layer(name) for name in self._layers}

    def _export_layer(self, name: str) -> dict[str, Any]:
        record, layer, args = self._quantized[name], self._layers[name], self._plan[name]
        weight = layer.weight.detach()
        scale, zero_point = record["scale"], record["zero_point"]
        codes = quantize(weight.float(), scale, zero_point, args)
        restored = dequantize(codes, scale, zero_point, args)
        if not torch.equal(restored.to(weight.dtype), weight):
            raise ConfigError(
                f"{self.lifecycle_label}.export(): layer {name!r} is no longer on the grid AWQ "
                "quantized it to: its weight changed after calibration. To fix, export before "
                "anything else changes the weights (or run AWQ after it).",
                owner=_OWNER,
                field="export",
                value=name,
            )
        shape = scale_shape(weight, args)
        return {
            "weight": codes,
            "weight_scale": scale.reshape(shape).clone(),
            "weight_zero_point": zero_point.reshape(shape).clone(),
            "scheme": {"weights": args.to_dict(), "input_activations": None},
        }

    # --- checkpoints ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "calibrating": self._calibrating,
            "statistics": {name: s.state_dict() for name, s in self._statistics.items()},
            "smoothed": {name: dict(record) for name, record in self._smoothed.items()},
            "quantized": {name: dict(record) for name, record in self._quantized.items()},
        }

    def load_state_dict(self, state_dict: Mapping[str, Any], state: State) -> None:
        problem = ""
        if set(state_dict) != _STATE_KEYS:
            problem = f"its keys are {sorted(map(str, state_dict))}, expected {sorted(_STATE_KEYS)}"
        elif not isinstance(state_dict["calibrating"], bool):
            problem = f"calibrating is {state_dict['calibrating']!r}, not true or false"
        elif not all(
            isinstance(state_dict[key], Mapping) for key in ("statistics", "smoothed", "quantized")
        ):
            problem = "statistics, smoothed and quantized must be dicts by layer name"
        elif not self.initialized and any(
            state_dict[key] for key in ("calibrating", "statistics", "smoothed", "quantized")
        ):
            problem = "it holds calibration state, but the modifier is not initialized"
        if problem:
            self._refuse_state(problem)
        if self.initialized:
            self._bind(self._model(state))
        statistics, smoothed = state_dict["statistics"], state_dict["smoothed"]
        quantized = state_dict["quantized"]
        strangers = sorted(
            map(str, (set(statistics) | set(smoothed)) - set(self._mappings))
        ) + sorted(map(str, set(quantized) - set(self._layers)))
        if strangers:
            self._refuse_state(
                f"{strangers} are not mappings ({self.mapping_names}) or target layers of this "
                "model"
            )
        self.remove_hooks()
        self._handles, self._padding_handles, self._padding = {}, [], None
        self._smoothed = {
            name: _on_device(record, self._mappings[name].balance[0].weight.device)
            for name, record in smoothed.items()
        }
        self._quantized = {
            name: _on_device(record, self._layers[name].weight.device)
            for name, record in quantized.items()
        }
        self._statistics = {}
        for name, saved in statistics.items():
            weight = self._mappings[name].balance[0].weight
            try:
                self._statistics[name] = InputStatistics.from_state_dict(
                    dict(saved), weight.shape[1], weight.device
                )
            except (TypeError, ValueError) as error:
                self._refuse_state(f"the statistics of {name!r}: {error}")
        self._calibrating = state_dict["calibrating"] and not self.finalized
        if self._calibrating:
            self._watch_padding(self._model(state))
            for name in self._statistics:
                self._handles[name] = self._register_collector(name)
        else:
            self._statistics = {}

    # --- internals ------------------------------------------------------------------------------

    def _bind(self, model: torch.nn.Module) -> None:
        """Resolve the target layers, their arguments and the mappings in use."""
        self._layers, self._plan = self._resolve_targets(model)
        self._mappings = self._resolve_mappings(model)
        touching: dict[str, list[str]] = {name: [] for name in self._layers}
        for key, mapping in self._mappings.items():
            for name in (mapping.smooth_name, *mapping.balance_names):
                if name in touching:
                    touching[name].append(key)
        self._touching = {name: tuple(keys) for name, keys in touching.items()}

    def _resolve_targets(
        self, model: torch.nn.Module
    ) -> tuple[dict[str, torch.nn.Linear], dict[str, QuantizationArgs]]:
        field = "config_groups" if self.config_groups is not None else "scheme"
        found, schemes = layer_schemes.plan_layers(
            self.lifecycle_label, _OWNER, field, model, self._schemes, as_names(self.ignore)
        )
        layers = self._check_layers(model, found)
        plan: dict[str, QuantizationArgs] = {}
        for name, scheme in schemes.items():
            assert scheme.weights is not None, "checked at construction"
            plan[name] = scheme.weights
        return layers, plan

    def _resolve_mappings(self, model: torch.nn.Module) -> dict[str, ResolvedMapping]:
        """The mappings in use, by smooth layer, in the model order of their first balance
        layer (a Llama block's: ``q, k, v``; ``o``; ``gate, up``; ``down``).

        AWQ chains mappings (``v_proj`` is a balance layer of ``input_layernorm`` and the
        smooth layer of ``o_proj``), which :func:`resolve_mappings` allows: a layer may
        have each role once.
        """
        resolved = resolve_mappings(_OWNER, model, self._patterns, as_names(self.ignore))
        order = {name: index for index, name in enumerate(dict(model.named_modules()))}
        kept: dict[str, ResolvedMapping] = {}
        for mapping in sorted(resolved, key=lambda m: order[m.balance_names[0]]):
            if not self.transform and not any(n in self._plan for n in mapping.balance_names):
                _LOG.info(
                    "%s: %s -> %s skipped: none of its balance layers is quantized",
                    _OWNER, mapping.smooth_name, ", ".join(mapping.balance_names),
                )  # fmt: skip
                continue
            kept[mapping.smooth_name] = mapping
        return kept

    def _balance_list(self, name: str) -> str:
        return ", ".join(self._mappings[name].balance_names)

    @staticmethod
    def _inside(
        mapping: ResolvedMapping, modules: torch.nn.Module | Iterable[torch.nn.Module]
    ) -> bool:
        balance = dict(zip(mapping.balance_names, mapping.balance, strict=True))
        return len(layers_inside(balance, modules)) == len(balance)

    def _ready(self, name: str) -> bool:
        """Whether layer ``name`` waits to be rounded and no unfinished mapping rescales it."""
        return name not in self._quantized and all(
            key in self._smoothed for key in self._touching[name]
        )

    def _smooth(self, name: str) -> None:
        """Search mapping ``name``'s scales, apply them, and drop its statistics and hook."""
        mapping = self._mappings[name]
        statistics = self._statistics[name]
        started = time.perf_counter()
        arguments = [
            self._weight_args(balance, layer)
            for balance, layer in zip(mapping.balance_names, mapping.balance, strict=True)
        ]
        if all(args is None for args in arguments):  # transform: nothing quantizes them
            _LOG.info("%s: %s -> %s left alone: none of its balance layers is quantized",
                      self.lifecycle_label, name, self._balance_list(name))  # fmt: skip
            self._smoothed[name] = {"balance": list(mapping.balance_names), "skipped": True}
            self._drop_collector(name)
            return
        try:
            result = search_scales(
                statistics,
                [layer.weight.detach() for layer in mapping.balance],
                arguments,
                self.n_grid,
                self.duo_scaling,
            )
        except ValueError as error:
            raise CalibrationError(
                f"{self.lifecycle_label}: the scale search of {name} -> "
                f"{self._balance_list(name)} failed: {error}. To fix, check the calibration "
                "inputs are finite (a model producing NaN or inf), or leave this mapping out.",
                problem="not finite",
            ) from error
        apply_smoothing(mapping, result.scales)
        self._smoothed[name] = {
            "balance": list(mapping.balance_names),
            "ratio": result.ratio,
            "duo": result.duo,
            "loss": result.loss,
            "identity_loss": result.identity_loss,
            "samples": statistics.count,
            "seconds": time.perf_counter() - started,
            "scales": result.scales.detach().cpu(),
        }
        self._drop_collector(name)
        _LOG.debug(
            "%s: smoothed %s (ratio %.2f%s): loss %.4g, round-to-nearest %.4g",
            self.lifecycle_label, name, result.ratio, " duo" if result.duo else "",
            result.loss, result.identity_loss,
        )  # fmt: skip

    def _drop_collector(self, name: str) -> None:
        del self._statistics[name]
        self._drop_hook(name)

    def _weight_args(self, name: str, layer: torch.nn.Module) -> QuantizationArgs | None:
        """The grid layer ``name`` is put on: this modifier's plan, or in the transform form
        what the quantizing modifier recorded on the layer (None: left in float).

        Raises:
            ConfigError: the transform form, and the layer's grid is not an integer one.
        """
        if not self.transform:
            return self._plan.get(name)
        scheme = scheme_of(layer)
        args = None if scheme is None else scheme.weights
        if args is not None and (args.is_float or (args.strategy not in ("channel", "group")
                                 and self.duo_scaling is not False)):  # fmt: skip
            raise ConfigError(
                f"{self.lifecycle_label}: layer {name!r} is quantized to {args.describe()} by "
                "the modifier after AWQ; AWQ searches scales for integer grids per channel or "
                "group (per tensor with duo_scaling: false). To fix, quantize it to such a "
                "grid, or leave it out of AWQ's mappings (ignore).",
                owner=_OWNER,
                field="mappings",
                value=name,
            )
        return args

    def _round(self, names: Iterable[str]) -> None:
        """Round the weights of the layers ``names`` to their grid (round-to-nearest)."""
        with torch.no_grad():
            for name in names:
                args, weight = self._plan[name], self._layers[name].weight
                restored, scale, zero_point = round_to_grid(weight, args)
                weight.copy_(restored.to(weight.dtype))
                self._quantized[name] = {
                    "bits": args.num_bits,
                    "strategy": args.strategy,
                    "group_size": args.group_size,
                    "symmetric": args.symmetric,
                    "scale": scale,
                    "zero_point": zero_point,
                }

    def _register_collector(self, name: str) -> Handle:
        return self._collect_inputs(self._mappings[name].balance[0], self._statistics[name].update)

    def _stop_calibrating(self) -> None:
        self._stop_hooks()
        self._statistics = {}


def _on_device(record: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        key: value.to(device) if isinstance(value, torch.Tensor) else value
        for key, value in record.items()
    }
