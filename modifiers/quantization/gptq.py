"""``GPTQModifier``: one-shot GPTQ weight quantization from calibration inputs.

The reference's recipe shape (llm-compressor 0.14, ``modifiers/gptq/base.py``
and its ``QuantizationMixin``)::

    oneshot_stage:
      quantization_modifiers:
        GPTQModifier:
          targets: Linear
          ignore: [lm_head]
          scheme: W4A16          # or {W4A16: [Linear]}, or config_groups: {...}
          block_size: 128
          dampening_frac: 0.01
          actorder: static

Each target ``Linear`` layer's Hessian is collected during calibration and the
layer is quantized by :func:`~modfsm.modifiers.solvers.gptq_quantize` when the
pipeline says its block is done (``SEQUENTIAL_EPOCH_END``) or at
``CALIBRATION_END`` (:mod:`modfsm.modifiers.calibration` has the lifecycle).
The weight is written in place on its grid (integers, or float8_e4m3fn for ``FP8``
and ``FP8_DYNAMIC``: the solver rounds each column with the scheme's own
quantization, whatever its grid; FP4's group scales under a global scale are
refused); the scale, zero point
(and ``g_idx`` with ``actorder: group``) are kept for :meth:`GPTQModifier.export`,
which returns what ``QuantizationModifier.export`` returns.

Arguments, against llm-compressor 0.14:

* ``targets`` (default ``Linear``), ``ignore``, and exactly one of ``scheme``
  (a preset name, or a mapping of preset name to targets, ``{W4A16: [Linear],
  W8A16: [re:.*down_proj]}``) and ``config_groups`` (see
  :mod:`modfsm.modifiers.quantization.args`). GPTQ solves the weights; a scheme's
  input and output activations (``W8A8``: int8 per token, dynamic) are quantized in
  the forward pass by an
  :class:`~modfsm.modifiers.quantization.activations.ActivationQuantizer`, as
  llm-compressor's ``GPTQModifier`` applies the whole scheme: dynamic scales from
  each forward, static ones observed from ``CALIBRATION_START`` until the layer's
  block ends (or ``CALIBRATION_END``) and exported as ``input_scale`` /
  ``output_scale``. The Hessian is collected from each layer's input as the
  previous layer produced it (before the layer's own input quantization). The
  activation quantization stays on until finalize, like ``QuantizationModifier``'s.
  A group with activations but no weights is refused (nothing for GPTQ to solve;
  the fix names ``QuantizationModifier``).
* ``block_size`` (128), ``dampening_frac`` (0.01).
* ``actorder``: ``"static"`` by default, as 0.14 (its ``Sentinel("static")``);
  ``"weight"`` is the same, ``"group"``/``"dynamic"`` form the groups in
  activation order and export ``weight_g_idx``; ``None`` (or ``false``) keeps the
  columns in order. ``true`` means ``"group"``, as llm-compressor read it before
  compressed-tensors removed that value (0.14 refuses it).
* ``preserve_sparsity_mask`` (modfsm's, default false): keep weights that are
  exactly zero at zero (a model SparseGPT pruned first). llm-compressor did so
  on its own for weights at least 5% zeros until 2026; 0.14 does not. Without
  it, a layer that is at least 5% zeros gets a logged warning, since GPTQ
  will fill them in.
* Accepted for older recipes, changing nothing: ``sequential_update`` (0.14:
  always sequential; the pipeline decides), ``sequential_targets`` (kept for the
  pipeline, which partitions the model; see ``sequential_targets``),
  ``batched_quantization`` (speed only), ``offload_hessians: false``,
  ``weight_observer`` / ``observer: {weights: ...}`` naming a min-max observer
  (weights are read whole), ``bypass_divisibility_checks: false``.
* ``kv_cache_scheme``: the attention layers' keys (after the rotary embedding) and
  values quantized as a KV cache stores them, scales calibrated from
  ``CALIBRATION_START`` and exported as ``<attention>.k_scale``/``v_scale``
  (:mod:`modfsm.modifiers.quantization.kv_cache`, as ``QuantizationModifier``).
* Refused unless at their default: ``offload_hessians: true``,
  ``input_observer``/``output_observer`` (name the observer in the scheme's activation
  arguments instead), another weight observer (``mse``),
  ``bypass_divisibility_checks: true``.

A Hessian that cannot be factorized raises
:class:`~modfsm.modifiers.solvers.HessianNotPositiveDefiniteError` naming the
layer and a larger ``dampening_frac``; llm-compressor falls back to
round-to-nearest with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs
import torch

from modfsm.engine import ConfigError, Event, IllegalTransitionError, State
from modfsm.engine.kernel.validate import check_int
from modfsm.modifiers.calibration import (
    OneShotCompressionBase,
    check_dampening_frac,
    refuse_unless,
)
from modfsm.modifiers.quantization import layer_schemes
from modfsm.modifiers.quantization.activations import ActivationQuantizer
from modfsm.modifiers.quantization.args import (
    QuantizationArgs,
    QuantizationScheme,
    check_scheme_value,
    parse_schemes,
)
from modfsm.modifiers.quantization.fake import dequantize, quantize
from modfsm.modifiers.quantization.kv_cache import KVCacheQuantizer, parse_kv_cache_scheme
from modfsm.modifiers.solvers import ACTORDERS, gptq_quantize
from modfsm.modifiers.targets import (
    as_names,
    check_names,
    check_target_names,
)

__all__ = ["GPTQModifier"]

_OWNER: Final = "GPTQModifier"
_LOG: Final = logging.getLogger("modfsm")
_MINMAX_OBSERVERS: Final = ("minmax", "memoryless_minmax", "static_minmax")
_TENSORS: Final = ("scale", "zero_point", "g_idx")  # in a record; export() gives them
_SPARSE_WARNING: Final = 0.05  # the zero fraction llm-compressor once read as "sparse"


def _check_optional_names(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        check_names(_OWNER, attribute.name, value)


def _check_scheme(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_scheme_value(_OWNER, "W4A16", value)


def _check_kv_cache_scheme(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        parse_kv_cache_scheme(_OWNER, value)


def _check_block_size(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_int(_OWNER, attribute.name, value, minimum=1)


def _check_dampening(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    check_dampening_frac(_OWNER, attribute.name, value)


def _check_actorder(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, str) and value.lower() in ACTORDERS:
        return
    raise ConfigError(
        f"{_OWNER}.actorder must be 'static', 'weight', 'group', 'dynamic', true ('group'), "
        f"false or null, got {value!r}. To fix, write one of those ('static' is the default).",
        owner=_OWNER,
        field="actorder",
        value=value,
    )


def _check_batched(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or (isinstance(value, str) and value == "auto"):
        return
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return
    raise ConfigError(
        f"{_OWNER}.batched_quantization must be 'auto', a whole number > 0 or null, got "
        f"{value!r}. To fix, write one of those (it only changes speed in llm-compressor).",
        owner=_OWNER,
        field="batched_quantization",
        value=value,
    )


def _check_flag(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(
            f"{_OWNER}.{attribute.name} must be true or false, got {value!r}.",
            owner=_OWNER,
            field=attribute.name,
            value=value,
        )


def _check_optional_flag(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _check_flag(instance, attribute, value)


@attrs.define(eq=False)
class GPTQModifier(OneShotCompressionBase):
    """Quantize the weights of the target ``Linear`` layers by GPTQ, once, from calibration.

    See the module docstring for the arguments and what each changes.

    Attributes:
        targets: the layers a ``scheme`` applies to (default ``Linear``).
        ignore: layers to leave in float.
        scheme: a preset name, or preset name -> targets.
        config_groups: explicit weight schemes by group name.
        block_size: columns per GPTQ block (speed only).
        dampening_frac: added to the Hessian's diagonal, as a fraction of its mean.
        actorder: the column order (see the module docstring).
        preserve_sparsity_mask: keep exact zeros at zero.
        sequential_targets: the blocks a sequential pipeline should run one at a time
            (llm-compressor before 0.7 read them from here; the pipeline reads them).
    """

    targets: str | list[str] | None = attrs.field(default=None, validator=_check_optional_names)
    ignore: str | list[str] = attrs.field(factory=list, validator=check_target_names)
    scheme: str | dict[str, str | list[str]] | None = attrs.field(
        default=None, validator=_check_scheme
    )
    config_groups: dict[str, Any] | None = None
    block_size: int = attrs.field(default=128, validator=_check_block_size)
    dampening_frac: float = attrs.field(default=0.01, validator=_check_dampening)
    actorder: str | bool | None = attrs.field(default="static", validator=_check_actorder)
    preserve_sparsity_mask: bool = attrs.field(default=False, validator=_check_flag)
    offload_hessians: bool = False
    sequential_update: bool | None = attrs.field(default=None, validator=_check_optional_flag)
    sequential_targets: str | list[str] | None = attrs.field(
        default=None, validator=_check_optional_names
    )
    batched_quantization: str | int | None = attrs.field(default="auto", validator=_check_batched)
    kv_cache_scheme: Any = attrs.field(default=None, validator=_check_kv_cache_scheme)
    weight_observer: str | None = None
    input_observer: str | None = None
    output_observer: str | None = None
    observer: dict[str, str] | None = None
    bypass_divisibility_checks: bool = False
    _schemes: tuple[QuantizationScheme, ...] = attrs.field(init=False, repr=False, default=())
    _plan: dict[str, QuantizationArgs] = attrs.field(init=False, repr=False, factory=dict)
    _sides: dict[str, tuple[QuantizationArgs | None, QuantizationArgs | None]] = attrs.field(
        init=False, repr=False, factory=dict
    )
    _activations: ActivationQuantizer | None = attrs.field(init=False, repr=False, default=None)
    _wrapped: bool = attrs.field(init=False, repr=False, default=False)
    _kv: KVCacheQuantizer | None = attrs.field(init=False, repr=False, default=None)
    _annotated: dict[str, QuantizationScheme] = attrs.field(init=False, repr=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self._refuse_unsupported()
        self._schemes = self._parse_schemes()
        for position, scheme in enumerate(self._schemes):
            where = f"scheme group {position} ({', '.join(scheme.targets)})"
            if scheme.weights is None:
                raise ConfigError(
                    f"{_OWNER}: {where} quantizes no weights, so GPTQ has nothing to do. To "
                    "fix, give it weights, or move it to a QuantizationModifier.",
                    owner=_OWNER,
                    field="config_groups",
                    value=scheme.describe(),
                )
            if scheme.weights.is_float and scheme.weights.num_bits != 8:
                raise ConfigError(
                    f"{_OWNER}: {where} quantizes weights to FP4 ({scheme.describe()}); GPTQ "
                    "here solves for integer and float8 grids, not for FP4's group scales "
                    "under a global scale. To fix, use QuantizationModifier for NVFP4 "
                    "(round to nearest), or an integer or FP8 scheme here.",
                    owner=_OWNER,
                    field="scheme" if self.scheme is not None else "config_groups",
                    value=scheme.describe(),
                )

    # --- views ------------------------------------------------------------------------------

    @property
    def schemes(self) -> tuple[QuantizationScheme, ...]:
        """The weight schemes, as parsed from ``scheme`` or ``config_groups``."""
        return self._schemes

    @property
    def plan(self) -> dict[str, QuantizationArgs]:
        """The weight arguments of every target layer, resolved at initialize."""
        return dict(self._plan)

    @property
    def activations(self) -> ActivationQuantizer | None:
        """The activation quantization of the target layers (None: weights only, or not
        initialized)."""
        return self._activations

    @property
    def order(self) -> str | None:
        """What ``actorder`` means: None, ``"weight"`` or ``"group"``."""
        value = self.actorder
        if isinstance(value, bool):
            return "group" if value else None
        return None if value is None else ACTORDERS[value.lower()]

    # --- export -------------------------------------------------------------------------------

    def export(self) -> dict[str, dict[str, Any]]:
        """Per layer: the quantized weight, its scale and zero point, as ``QuantizationModifier``.

        Each entry has ``weight`` (int8, the layer's shape), ``weight_scale``
        (float32; ``(1,)``, ``(out, 1)`` or ``(out, groups)``), ``weight_zero_point``
        (int32, same shape), ``weight_g_idx`` (int32, one group per input column;
        with ``actorder`` ``group`` and grouped weights only), ``input_scale`` /
        ``input_zero_point`` (and ``output_*``) for static activation scales, and
        ``scheme`` (the arguments, as recipe values).
        ``dequantize(weight)`` (its columns in their groups) equals the layer's
        weight, cast to the weight's dtype.

        Raises:
            IllegalTransitionError: some target layer is not compressed yet.
            ConfigError: a layer's weight changed since it was quantized.
        """
        waiting = [name for name in self._layers if name not in self._records]
        if not self._layers or waiting:
            reason = (
                "it is not initialized"
                if not self._layers
                else f"{len(waiting)} target layer(s) are not compressed yet ({waiting[0]}, ...)"
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
        exported = {name: self._export_layer(name) for name in self._layers}
        if self._kv is not None:
            exported.update(self._kv.export())
        return exported

    def _export_layer(self, name: str) -> dict[str, Any]:
        record, layer = self._records[name], self._layers[name]
        args = self._plan[name]
        weight = layer.weight.detach()
        scale, zero_point, g_idx = record["scale"], record["zero_point"], record["g_idx"]
        values = weight.float()
        order: torch.Tensor | None = None
        if g_idx is not None:  # groups in activation order: gather each group's columns
            order = torch.argsort(g_idx, stable=True)
            values = values[:, order]
        codes = quantize(values, scale, zero_point, args)
        restored = dequantize(codes, scale, zero_point, args)
        if order is not None:
            inverse = torch.argsort(order)
            codes, restored = codes[:, inverse], restored[:, inverse]
        if not torch.equal(restored.to(weight.dtype), weight):
            raise ConfigError(
                f"{self.lifecycle_label}.export(): layer {name!r} is no longer on the grid GPTQ "
                "quantized it to: its weight changed after calibration. To fix, export before "
                "anything else changes the weights (or run GPTQ after it).",
                owner=_OWNER,
                field="export",
                value=name,
            )
        inputs, outputs = self._sides.get(name, (None, None))
        entry: dict[str, Any] = {
            "weight": codes,
            "weight_scale": scale.clone(),
            "weight_zero_point": zero_point.clone(),
            "scheme": {
                "weights": args.to_dict(),
                "input_activations": None if inputs is None else inputs.to_dict(),
            },
        }
        if outputs is not None:
            entry["scheme"]["output_activations"] = outputs.to_dict()
        if g_idx is not None:
            entry["weight_g_idx"] = g_idx.clone()
        if self._activations is not None:
            entry.update(self._activations.export(name))
        return entry

    # --- activation and KV-cache quantization (hooks on from CALIBRATION_START to finalize) ----

    @property
    def kv_cache(self) -> KVCacheQuantizer | None:
        """The KV-cache quantizer (``kv_cache_scheme``), bound at initialize; None without."""
        return self._kv

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        done = super().on_initialize(state, **kwargs)
        self._activations = (
            ActivationQuantizer(self.lifecycle_label, dict(self._sides)) if self._sides else None
        )
        self._kv = self._new_kv(self._model(state))
        return done

    def on_calibration_start(self, state: State, event: Event, **kwargs: Any) -> None:
        super().on_calibration_start(state, event, **kwargs)
        self._attach_quantizers()
        if self._activations is not None:
            self._activations.observe(n for n in self._layers if n not in self._records)
        if self._kv is not None:
            self._kv.thaw()

    def on_sequential_epoch_end(
        self,
        state: State,
        event: Event,
        modules: torch.nn.Module | Iterable[torch.nn.Module] | None = None,
        **kwargs: Any,
    ) -> None:
        before = set(self._records)
        super().on_sequential_epoch_end(state, event, modules=modules, **kwargs)
        if self._activations is not None:
            self._activations.settle(set(self._records) - before)
        if self._kv is not None and modules is not None:
            self._kv.settle([modules] if isinstance(modules, torch.nn.Module) else modules)

    def on_calibration_end(self, state: State, event: Event, **kwargs: Any) -> None:
        super().on_calibration_end(state, event, **kwargs)
        if self._activations is not None:
            self._activations.settle(self._layers)
        if self._kv is not None:
            self._kv.freeze()

    def on_finalize(self, state: State, **kwargs: Any) -> bool:
        done = super().on_finalize(state, **kwargs)
        layer_schemes.clear(self._layers.values(), self._annotated.values())
        if self._kv is not None:
            self._kv.detach()  # the engine removes every hook this modifier registered
        return done

    def state_dict(self) -> dict[str, Any]:
        saved = super().state_dict()
        if self._activations is not None:
            saved["activations"] = self._activations.state_dict()
        if self._kv is not None:
            saved["kv_cache"] = self._kv.state_dict()
        return saved

    def load_state_dict(self, state_dict: Mapping[str, Any], state: State) -> None:
        saved = dict(state_dict)
        activations, kv_saved = saved.pop("activations", None), saved.pop("kv_cache", None)
        model = self._model(state) if self.initialized else None
        if model is not None:  # the plan comes from the recipe and the model, not the state
            self._resolve(model)
        quantizer = (
            ActivationQuantizer(self.lifecycle_label, dict(self._sides))
            if model is not None and self._sides
            else None
        )
        kv = self._new_kv(model) if model is not None else None
        problem = ""
        for name, mine, theirs in (
            ("activation scales", quantizer, activations),
            ("KV-cache scales", kv, kv_saved),
        ):
            if (mine is None) != (theirs is None):
                problem = (
                    f"it holds {name}, but this modifier has none"
                    if mine is None
                    else f"this modifier keeps {name}, but the state holds none"
                )
                break
        if not problem and quantizer is not None:
            problem = quantizer.load_state_dict(activations)
        if not problem and kv is not None:
            problem = kv.check_state_dict(kv_saved)
        if problem:  # checked before anything changes
            self._refuse_state(problem)
        super().load_state_dict(saved, state)  # checks the rest; removes every hook
        if self._kv is not None:
            self._kv.detach()
        if kv is not None:
            kv.load_state_dict(kv_saved)
        self._activations, self._kv = quantizer, kv
        # the hooks are on from the first CALIBRATION_START until finalize
        if not self.finalized and (self.calibrating or self._records):
            self._attach_quantizers()

    def _new_kv(self, model: torch.nn.Module) -> KVCacheQuantizer | None:
        if self.kv_cache_scheme is None:
            return None
        kv = KVCacheQuantizer(
            parse_kv_cache_scheme(_OWNER, self.kv_cache_scheme),
            observe=lambda attention: self.calibrating,
            owner=_OWNER,
        )
        kv.bind(model)
        return kv

    def _attach_quantizers(self) -> None:
        if self._activations is not None and not self._wrapped:
            self._activations.attach(self._layers, self.register_hook)
            self._wrapped = True
        if self._kv is not None:
            self._kv.attach(self)  # a no-op while attached

    # --- what the base class asks for ---------------------------------------------------------

    def _resolve(self, model: torch.nn.Module) -> dict[str, torch.nn.Module]:
        field = "config_groups" if self.config_groups is not None else "scheme"
        found, schemes = layer_schemes.plan_layers(
            self.lifecycle_label, _OWNER, field, model, self._schemes, as_names(self.ignore)
        )
        plan: dict[str, QuantizationArgs] = {}
        for name, scheme in schemes.items():
            assert scheme.weights is not None, "checked at construction"
            plan[name] = scheme.weights
        self._plan = plan
        self._sides = {
            name: (scheme.input_activations, scheme.output_activations)
            for name, scheme in schemes.items()
            if scheme.input_activations is not None or scheme.output_activations is not None
        }
        self._annotated = schemes
        layer_schemes.annotate(found, schemes)  # for a transform before it (AWQ)
        return found

    def _compress(self, name: str, layer: torch.nn.Linear, hessian: torch.Tensor) -> dict[str, Any]:
        args = self._plan[name]
        weight = layer.weight
        mask: torch.Tensor | None = None
        if self.preserve_sparsity_mask:
            mask = weight.detach() != 0
        else:
            zeros = float((weight.detach() == 0).float().mean())
            if zeros >= _SPARSE_WARNING:
                _LOG.warning(
                    "%s: layer %s is %.0f%% zeros (pruned?); GPTQ will fill them in. To keep "
                    "them zero, set preserve_sparsity_mask: true.",
                    self.lifecycle_label,
                    name,
                    100 * zeros,
                )
        result = gptq_quantize(
            weight.detach(),
            hessian,
            args,
            block_size=self.block_size,
            dampening_frac=self.dampening_frac,
            actorder=self.order,
            mask=mask,
        )
        weight.copy_(result.weight)
        return {
            "bits": args.num_bits,
            "strategy": args.strategy,
            "group_size": args.group_size,
            "symmetric": args.symmetric,
            "actorder": self.order,
            "loss": result.loss,
            "scale": result.scale,
            "zero_point": result.zero_point,
            "g_idx": result.g_idx,
        }

    def _summary(self, record: Mapping[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in record.items() if key not in _TENSORS}

    # --- construction ---------------------------------------------------------------------------

    def _parse_schemes(self) -> tuple[QuantizationScheme, ...]:
        return parse_schemes(_OWNER, self.scheme, self.config_groups, self.targets,
                             example="W4A16")  # fmt: skip

    def _refuse_unsupported(self) -> None:
        refuse_unless(
            _OWNER, "offload_hessians", self.offload_hessians, (False,),
            "leave it false: the Hessians stay on each layer's device (one layer group's "
            "worth at a time with a sequential pipeline)",
        )  # fmt: skip
        refuse_unless(
            _OWNER, "bypass_divisibility_checks", self.bypass_divisibility_checks, (False,),
            "leave it false, and pick a group_size that divides every target layer's inputs "
            "(or ignore the layers it does not)",
        )  # fmt: skip
        for field in ("input_observer", "output_observer"):
            refuse_unless(
                _OWNER, field, getattr(self, field), (None,),
                "leave it out, and name the observer in the scheme's activation arguments "
                "(config_groups: ... input_activations: {observer: minmax})",
            )  # fmt: skip
        weights = self.weight_observer
        if self.observer is not None:
            extra = (
                sorted(set(self.observer) - {"weights"})
                if isinstance(self.observer, Mapping)
                else None
            )
            if extra is None or extra:
                raise ConfigError(
                    f"{_OWNER}.observer={self.observer!r} is not supported: only a weights "
                    "observer applies to GPTQ. To fix, write observer: {weights: minmax} or "
                    "leave it out.",
                    owner=_OWNER,
                    field="observer",
                    value=self.observer,
                )
            if weights is not None:
                raise ConfigError(
                    f"{_OWNER}: weight_observer and observer are both given. To fix, use one "
                    "of them (as llm-compressor requires).",
                    owner=_OWNER,
                    field="observer",
                    value=self.observer,
                )
            weights = self.observer.get("weights")
        if weights is not None and (
            not isinstance(weights, str) or weights.lower() not in _MINMAX_OBSERVERS
        ):
            raise ConfigError(
                f"{_OWNER}: weight observer {weights!r} is not supported; GPTQ reads each "
                f"weight's min and max ({', '.join(_MINMAX_OBSERVERS)}). To fix, leave the "
                "observer out or name one of those.",
                owner=_OWNER,
                field="weight_observer",
                value=weights,
            )
