"""KV-cache quantization: the keys and values an attention layer stores, fake-quantized.

A recipe asks for it with ``kv_cache_scheme`` on ``QuantizationModifier`` (in the
reference's shape: one set of quantization arguments)::

    QuantizationModifier:
      scheme: FP8_DYNAMIC
      targets: Linear
      ignore: [lm_head]
      kv_cache_scheme: {num_bits: 8, type: float, strategy: tensor, dynamic: false,
                        symmetric: true}

Theory of operation
-------------------

**What is quantized.** A KV cache stores, for every attention layer, the keys *after*
the rotary position embedding and the values as the value projection made them. A
transformers attention layer (the Llama family and most causal LMs) hands both to its
cache in one call, ``cache.update(key_states, value_states, layer_idx, ...)``, and attends
over what that call returns. :class:`KVCacheQuantizer` wraps each attention layer's
``forward`` (a ``forward_wrap`` hook, :mod:`modfsm.engine.runtime.hooks`) so that the layer
gets, for that one call, a stand-in for its cache argument (``cache``, or
``past_key_values``/``past_key_value`` in older transformers): the stand-in's ``update``
fake-quantizes the keys and values, then passes them to the real cache (whose earlier
entries are therefore quantized too) or, without a cache (``use_cache=False``, as the
calibration pipelines call), returns them. So attention sees exactly the keys and values
a quantized cache would hold, in every pipeline: the decoder layers called one by one
(the sequential pipeline) call their attention layers the same way. This is the
reference's own hook point (compressed-tensors' ``QuantizedKVCache``, which replaces the
cache argument with a module whose ``update`` quantizes); modfsm's stand-in is a plain
object and no submodule is added to the model.

**Which layers.** Every module whose class name contains ``Attention`` and whose
``forward`` takes a cache argument (the reference's "cached attention module"), outermost
only; ``ignore`` does not apply (as in the reference). A model without one is a
:class:`~modfsm.engine.ConfigError` at ``initialize``.

**Arguments** (:func:`parse_kv_cache_scheme`): those of one activation
(:func:`~modfsm.modifiers.quantization.args.parse_args`: ``num_bits``, ``type``,
``symmetric``, ``observer``, ``observer_kwargs``), with ``strategy`` ``tensor`` (one scale
for the keys and one for the values of a layer) or ``attn_head`` (one per key/value head,
the reference's newer strategy), and static scales only (``dynamic: false``): an inference
engine such as vLLM reads one ``k_scale`` and ``v_scale`` per layer.

**Scales.** An :class:`~modfsm.modifiers.quantization.fake.Observer` per tensor (per
head for ``attn_head``) keeps the range of the keys (and of the values) while the owner's
``observe`` predicate says so (a one-shot modifier: every calibration forward), and always
for a layer that has seen nothing yet; each forward then fake-quantizes with the kept
range's scale, ``max|x| / 448`` for float8 and ``max|x| / 127`` for int8 (modfsm's
convention, :mod:`~modfsm.modifiers.quantization.fake`; the reference divides int8 by
127.5). With the default ``minmax`` observer that is the widest range over all
calibration batches (the reference's ``static_minmax``). :meth:`KVCacheQuantizer.settle`
freezes the layers inside some modules (a sequential pipeline's layer),
:meth:`KVCacheQuantizer.freeze` all of them; frozen scales never move again.

**Export.** :meth:`KVCacheQuantizer.export` gives, per attention layer,
``k_scale`` and ``v_scale`` (float32, shape ``(1,)``, or ``(heads, 1, 1)`` for
``attn_head``, the reference's shapes), ``k_zero_point``/``v_zero_point`` for an
asymmetric integer grid only, and ``scheme`` (``{"kv_cache": arguments}``), under the
attention layer's name (``model.layers.0.self_attn``): the names vLLM reads
(``model.layers.0.self_attn.k_scale``).

**Use from a modifier** (the whole API)::

    kv = KVCacheQuantizer(scheme, observe=lambda attention: self._calibrating)
    kv.bind(model)            # at initialize: find the attention layers
    kv.attach(self)           # at start: hooks registered through the modifier
    ...                       # forwards: observed and fake-quantized
    kv.settle([layer])        # optional: a sequential pipeline's layer is done
    kv.freeze()               # at calibration end: scales fixed
    entries = kv.export()     # merged into the modifier's export
    saved = kv.state_dict()   # problem = kv.check_state_dict(saved); kv.load_state_dict(saved)
    kv.detach()               # or let the engine remove the modifier's hooks at finalize
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

import attrs
import torch

from modfsm.engine.kernel.errors import ConfigError, ConfigTypeError
from modfsm.engine.runtime.hooks import Handle, HooksMixin
from modfsm.modifiers.quantization.args import QuantizationArgs, parse_args
from modfsm.modifiers.quantization.fake import Observer, fake_quantize, qparams

__all__ = [
    "CACHE_ARGUMENTS",
    "KV_STRATEGIES",
    "KVCacheQuantizer",
    "KVCacheScheme",
    "attention_layers",
    "parse_kv_cache_scheme",
]

KV_STRATEGIES: Final = ("tensor", "attn_head")
"""The strategies of ``kv_cache_scheme``: one scale per layer, or one per key/value head."""
CACHE_ARGUMENTS: Final = ("cache", "past_key_values", "past_key_value")
"""The names transformers gives an attention layer's cache argument, newest first."""
_FIELD: Final = "kv_cache_scheme"


@attrs.frozen
class KVCacheScheme:
    """How the keys and values of the attention layers are quantized.

    Attributes:
        args: the arguments of one tensor (static; ``strategy`` is ``tensor`` here, the
            per-head split being :attr:`per_head`).
        per_head: one scale per key/value head (``strategy: attn_head``) instead of one
            per layer.
    """

    args: QuantizationArgs
    per_head: bool = False

    @property
    def strategy(self) -> str:
        """``tensor`` or ``attn_head``, as the recipe says."""
        return "attn_head" if self.per_head else "tensor"

    def describe(self) -> str:
        """A short human description, e.g. ``fp8 sym tensor`` or ``int8 sym attn_head``."""
        kind = "fp8" if self.args.is_float else f"int{self.args.num_bits}"
        return f"{kind} {'sym' if self.args.symmetric else 'asym'} {self.strategy}"

    def to_dict(self) -> dict[str, Any]:
        """The recipe form (what :func:`parse_kv_cache_scheme` reads back to an equal value)."""
        return {**self.args.to_dict(), "strategy": self.strategy}


def _fail(owner: str, key: str, message: str, value: Any) -> ConfigError:
    field = f"{_FIELD}.{key}"
    return ConfigError(f"{owner}.{field}: {message}", owner=owner, field=field, value=value)


def parse_kv_cache_scheme(owner: str, raw: Any) -> KVCacheScheme:
    """Read ``kv_cache_scheme`` (a mapping of arguments, a ``QuantizationArgs`` or a
    :class:`KVCacheScheme`).

    Raises:
        ConfigError: a bad value; the message and ``field`` name ``kv_cache_scheme.<key>``.
    """
    if isinstance(raw, KVCacheScheme):
        return raw
    if isinstance(raw, QuantizationArgs):
        raw = raw.to_dict()
    if not isinstance(raw, Mapping):
        raise ConfigTypeError(
            f"{owner}.{_FIELD} must be a mapping of quantization arguments, got {raw!r}. To "
            "fix, write e.g. {num_bits: 8, type: float, strategy: tensor}.",
            owner=owner,
            field=_FIELD,
            value=raw,
        )
    strategy = raw.get("strategy", "tensor")
    if strategy not in KV_STRATEGIES:
        raise _fail(
            owner,
            "strategy",
            f"{strategy!r} is not one of {', '.join(KV_STRATEGIES)}: keys and values are "
            "quantized with one scale per attention layer (tensor) or per key/value head "
            "(attn_head). To fix, use one of those.",
            strategy,
        )
    if raw.get("dynamic", False) is True:
        raise _fail(
            owner,
            "dynamic",
            "the KV cache is quantized with static scales (k_scale and v_scale, calibrated "
            "and saved with the model, as vLLM reads them), not per forward. To fix, drop "
            "dynamic or write dynamic: false.",
            True,
        )
    args = parse_args(_FIELD, {**raw, "strategy": "tensor"}, activations=True)
    return KVCacheScheme(args=args, per_head=strategy == "attn_head")


def _cache_argument(module: torch.nn.Module) -> tuple[str, int] | None:
    """The name of the cache argument of ``module.forward`` and its position (counting
    from the first argument after ``self``), or None if it takes none."""
    try:
        parameters = list(inspect.signature(type(module).forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    names = [p.name for p in parameters]
    for name in CACHE_ARGUMENTS:
        if name in names:
            return name, names.index(name)
    return None


def attention_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The attention layers of ``model`` that store keys and values in a cache, by name:
    a class name containing ``Attention`` and a cache argument; outermost only."""
    found: dict[str, torch.nn.Module] = {}
    for name, module in model.named_modules():
        if "attention" not in type(module).__name__.lower() or _cache_argument(module) is None:
            continue
        if any(name.startswith(f"{outer}.") for outer in found if outer):
            continue
        found[name] = module
    return found


@attrs.define(eq=False)
class _Range:
    """The kept range of one layer's keys (or values): one observer, or one per head."""

    args: QuantizationArgs
    per_head: bool
    observers: list[Observer] = attrs.field(factory=list)
    _qparams: tuple[torch.Tensor, torch.Tensor] | None = attrs.field(init=False, default=None)

    @property
    def observed(self) -> bool:
        return bool(self.observers) and all(observer.observed for observer in self.observers)

    def update(self, x: torch.Tensor) -> None:
        """Take ``x`` (batch, heads, tokens, head_dim) into account."""
        parts = list(x.unbind(1)) if self.per_head else [x]
        if not self.observers:
            self.observers = [Observer(self.args) for _ in parts]
        if len(parts) != len(self.observers):
            raise ValueError(
                f"the keys or values have {len(parts)} heads, and the kept ranges "
                f"{len(self.observers)}"
            )
        for observer, part in zip(self.observers, parts, strict=True):
            observer.update(part)
        self._qparams = None

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales and zero points, one per observer (1-D)."""
        if self._qparams is not None:
            return self._qparams
        lo = torch.stack([observer.lo for observer in self.observers if observer.lo is not None])
        hi = torch.stack([observer.hi for observer in self.observers if observer.hi is not None])
        return qparams(lo, hi, self.args)

    def freeze(self) -> None:
        """Keep the current scales (the observers stop being updated by the owner)."""
        if self.observed:
            self._qparams = self.qparams()

    def thaw(self) -> None:
        self._qparams = None

    def fake_quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the grid of the kept range (per tensor, or per head: dim 1)."""
        scale, zero_point = self.qparams()
        if not self.per_head:
            return fake_quantize(x, scale, zero_point, self.args)
        by_head = attrs.evolve(self.args, strategy="channel")  # rows of dim 0: the heads
        heads_first = x.transpose(0, 1)
        out = fake_quantize(heads_first, scale, zero_point, by_head)
        return out.transpose(0, 1)

    def exported(self, prefix: str) -> dict[str, torch.Tensor]:
        scale, zero_point = self.qparams()
        shape = (len(self.observers), 1, 1) if self.per_head else (1,)
        entry = {f"{prefix}_scale": scale.detach().clone().reshape(shape)}
        if not self.args.symmetric:
            entry[f"{prefix}_zero_point"] = zero_point.detach().clone().reshape(shape)
        return entry

    def state_dict(self) -> list[dict[str, Any]]:
        return [observer.state_dict() for observer in self.observers]

    def load_state_dict(self, saved: list[Mapping[str, Any]], device: torch.device) -> None:
        observers = [Observer(self.args) for _ in saved]
        for observer, state in zip(observers, saved, strict=True):
            observer.load_state_dict(state, device)
        self.observers, self._qparams = observers, None


class _QuantizingCache:
    """Stands in for an attention layer's cache for one call: ``update`` fake-quantizes the
    keys and values, then hands them to the real cache (or returns them, without one).
    Anything else is read from the real cache."""

    __slots__ = ("_inner", "_quantize")

    def __init__(
        self,
        inner: Any,
        quantize: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        self._inner = inner
        self._quantize = quantize

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        key_states, value_states = self._quantize(key_states, value_states)
        if self._inner is None:
            return key_states, value_states
        return self._inner.update(key_states, value_states, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        inner = object.__getattribute__(self, "_inner")
        if inner is None:
            raise AttributeError(f"no cache is passed, so it has no attribute {name!r}")
        return getattr(inner, name)


def _never(module: torch.nn.Module) -> bool:
    return False


@attrs.define(eq=False)
class KVCacheQuantizer(HooksMixin):
    """Fake-quantizes the keys and values the attention layers of one model store.

    See the module docstring for the lifecycle. Standalone use registers its hooks on
    itself (``attach()``); a modifier passes itself (``attach(modifier)``) so the engine
    removes them at finalize.

    Attributes:
        scheme: the arguments (:func:`parse_kv_cache_scheme`).
        observe: called with the attention layer on each forward; True updates its
            ranges first (a layer not yet frozen). A layer that has seen nothing is
            always observed.
        owner: how messages name the owner (``QuantizationModifier``).
    """

    scheme: KVCacheScheme
    observe: Callable[[torch.nn.Module], bool] = _never
    owner: str = "KVCacheQuantizer"
    _layers: dict[str, torch.nn.Module] = attrs.field(init=False, factory=dict)
    _ranges: dict[str, tuple[_Range, _Range]] = attrs.field(init=False, factory=dict)
    _frozen: set[str] = attrs.field(init=False, factory=set)
    _handles: list[tuple[HooksMixin, Handle]] = attrs.field(init=False, factory=list)
    _hooks: set[Handle] | None = attrs.field(init=False, default=None)

    # --- views ------------------------------------------------------------------------------

    @property
    def layers(self) -> dict[str, torch.nn.Module]:
        """The attention layers, by name (after :meth:`bind`)."""
        return dict(self._layers)

    @property
    def attached(self) -> bool:
        """True while the hooks are on the model."""
        return bool(self._handles)

    @property
    def frozen(self) -> frozenset[str]:
        """The attention layers whose scales are fixed."""
        return frozenset(self._frozen)

    @property
    def unobserved(self) -> list[str]:
        """The attention layers that have stored no keys and values yet."""
        return [name for name, (key, _) in self._ranges.items() if not key.observed]

    def qparams(self, name: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """The current ``{"k": (scale, zero_point), "v": ...}`` of attention layer ``name``
        (1-D: one per tensor or per head); empty if it has seen nothing."""
        key, value = self._ranges[name]
        if not key.observed:
            return {}
        return {"k": key.qparams(), "v": value.qparams()}

    def bound_to(self, model: torch.nn.Module) -> bool:
        """True if :meth:`bind` was called with ``model`` (the same attention layers)."""
        found = attention_layers(model)
        return (
            bool(found)
            and found.keys() == self._layers.keys()
            and all(self._layers[name] is layer for name, layer in found.items())
        )

    # --- lifecycle ----------------------------------------------------------------------------

    def bind(self, model: torch.nn.Module) -> None:
        """Find the attention layers of ``model`` and start from empty ranges (detaching
        from a model bound before).

        Raises:
            ConfigError: the model has no attention layer that stores keys and values.
        """
        self.detach()
        found = attention_layers(model)
        if not found:
            kinds = sorted({type(m).__name__ for m in model.modules()})
            raise ConfigError(
                f"{self.owner}.{_FIELD}: the model has no attention layer with a key/value "
                f"cache (a module whose class name contains 'Attention' and whose forward "
                f"takes one of {', '.join(CACHE_ARGUMENTS)}); its module types are "
                f"{', '.join(kinds)}. To fix, drop kv_cache_scheme for this model.",
                owner=self.owner,
                field=_FIELD,
                value=self.scheme.to_dict(),
            )
        self._layers = found
        self._ranges = {
            name: (
                _Range(self.scheme.args, self.scheme.per_head),
                _Range(self.scheme.args, self.scheme.per_head),
            )
            for name in found
        }
        self._frozen = set()

    def attach(self, hooks: HooksMixin | None = None) -> None:
        """Wrap every attention layer's forward (through ``hooks.register_hook``, by
        default this object's own); a no-op while attached."""
        if self._handles:
            return
        owner = self if hooks is None else hooks
        for name, layer in self._layers.items():
            handle = owner.register_hook(layer, self._forward(name), "forward_wrap")
            self._handles.append((owner, handle))

    def detach(self) -> None:
        """Remove the hooks (the ranges and frozen scales are kept)."""
        for owner, handle in self._handles:
            owner.remove_hooks([handle])
        self._handles = []

    def settle(self, modules: Iterable[torch.nn.Module]) -> list[str]:
        """Freeze the attention layers inside ``modules``; returns their names."""
        inside = {id(sub) for module in modules for sub in module.modules()}
        names = [name for name, layer in self._layers.items() if id(layer) in inside]
        self._freeze(names)
        return names

    def freeze(self) -> None:
        """Freeze every attention layer's scales.

        Warns (``RuntimeWarning``) about layers that stored nothing: their keys and values
        stay in float and they are left out of :meth:`export`.
        """
        self._freeze(self._layers)

    def thaw(self) -> None:
        """Let the ranges move again (a new calibration); what they kept stays."""
        self._frozen = set()
        for key, value in self._ranges.values():
            key.thaw()
            value.thaw()

    def export(self) -> dict[str, dict[str, Any]]:
        """Per attention layer that stored keys and values: ``k_scale``, ``v_scale`` (and
        zero points if asymmetric) and ``scheme`` (see the module docstring)."""
        entries: dict[str, dict[str, Any]] = {}
        for name, (key, value) in self._ranges.items():
            if key.observed and value.observed:
                entries[name] = {
                    "scheme": {"kv_cache": self.scheme.to_dict()},
                    **key.exported("k"),
                    **value.exported("v"),
                }
        return entries

    # --- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The kept ranges (per layer: ``k`` and ``v``, a list of observer states, one per
        head for ``attn_head``), the frozen layers and the scheme."""
        return {
            "scheme": self.scheme.to_dict(),
            "ranges": {
                name: {"k": key.state_dict(), "v": value.state_dict()}
                for name, (key, value) in self._ranges.items()
            },
            "frozen": sorted(self._frozen),
        }

    def check_state_dict(self, saved: Any) -> str:
        """What is wrong with ``saved`` for this quantizer ("" if nothing)."""
        keys = ("frozen", "ranges", "scheme")
        if not isinstance(saved, Mapping) or sorted(map(str, saved)) != list(keys):
            return f"kv_cache is not a dict of {', '.join(keys)}"
        if saved["scheme"] != self.scheme.to_dict():
            return (
                f"kv_cache.scheme is {saved['scheme']!r}, and this modifier's "
                f"kv_cache_scheme is {self.scheme.to_dict()!r}"
            )
        ranges, frozen = saved["ranges"], saved["frozen"]
        if not isinstance(ranges, Mapping) or set(ranges) != set(self._layers):
            shown = sorted(map(str, ranges)) if isinstance(ranges, Mapping) else ranges
            return (
                f"kv_cache.ranges names {shown!r}, and the model's attention layers are "
                f"{sorted(self._layers)}"
            )
        if not isinstance(frozen, list | tuple) or not set(frozen) <= set(self._layers):
            return f"kv_cache.frozen names layers that are not attention layers: {frozen!r}"
        for name, pair in ranges.items():
            if not isinstance(pair, Mapping) or set(pair) != {"k", "v"}:
                return f"kv_cache.ranges[{name!r}] is not a dict of k, v"
            for part in ("k", "v"):
                states = pair[part]
                if not isinstance(states, list | tuple) or (
                    not self.scheme.per_head and len(states) > 1
                ):
                    return f"kv_cache.ranges[{name!r}][{part!r}] is not a list of observer states"
                for state in states:
                    try:
                        Observer(self.scheme.args).load_state_dict(state)
                    except (ValueError, AttributeError, TypeError) as error:
                        return f"kv_cache.ranges[{name!r}][{part!r}]: {error}"
            if len(pair["k"]) != len(pair["v"]):
                return f"kv_cache.ranges[{name!r}] keeps k and v ranges of different head counts"
        return ""

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (checked with :meth:`check_state_dict`).

        Raises:
            ValueError: ``saved`` does not fit (the message says why).
        """
        problem = self.check_state_dict(saved)
        if problem:
            raise ValueError(problem)
        for name, pair in saved["ranges"].items():
            device = _device(self._layers[name])
            key, value = self._ranges[name]
            key.load_state_dict(list(pair["k"]), device)
            value.load_state_dict(list(pair["v"]), device)
        self._frozen = set()
        self._freeze(saved["frozen"], warn=False)

    # --- internals ----------------------------------------------------------------------------

    def _freeze(self, names: Iterable[str], *, warn: bool = True) -> None:
        names = list(names)
        fresh = [name for name in names if name not in self._frozen]
        for name in names:
            key, value = self._ranges[name]
            key.freeze()
            value.freeze()
        self._frozen.update(names)
        empty = [name for name in fresh if not self._ranges[name][0].observed]
        if empty and warn:
            warnings.warn(
                f"{self.owner}.{_FIELD}: attention layers {empty} stored no keys and values "
                "(their forward never called the cache's update), so their KV cache stays in "
                "float and has no scales. To fix, calibrate with data that runs them, or "
                "check that the model's attention uses a transformers cache.",
                RuntimeWarning,
                stacklevel=3,
            )

    def _forward(self, name: str) -> Callable[..., Any]:
        """The attention layer's forward while quantizing: its cache argument replaced by a
        stand-in that quantizes the keys and values on their way in."""
        key_range, value_range = self._ranges[name]
        argument = _cache_argument(self._layers[name])
        assert argument is not None, "bind() selects layers with a cache argument"
        parameter, position = argument

        def quantize(
            module: torch.nn.Module, key: torch.Tensor, value: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if name not in self._frozen and (self.observe(module) or not key_range.observed):
                key_range.update(key)
                value_range.update(value)
            if not key_range.observed:  # frozen before it saw anything: float
                return key, value
            return key_range.fake_quantize(key), value_range.fake_quantize(value)

        def forward(
            module: torch.nn.Module, original: Callable[..., Any], *args: Any, **kwargs: Any
        ) -> Any:
            inner: Any = None
            if len(args) > position:
                inner = args[position]
            for alias in CACHE_ARGUMENTS:  # a deprecated name a caller still passes
                given = kwargs.pop(alias, None)
                inner = given if inner is None else inner
            cache = _QuantizingCache(inner, lambda k, v: quantize(module, k, v))
            if len(args) > position:
                args = (*args[:position], cache, *args[position + 1 :])
            else:
                kwargs[parameter] = cache
            return original(*args, **kwargs)

        return forward


def _device(module: torch.nn.Module) -> torch.device:
    for parameter in module.parameters():
        return parameter.device
    return torch.device("cpu")
