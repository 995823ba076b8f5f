"""Which layers a smoothing modifier rescales together: ``mappings``.

SmoothQuant and AWQ both move a per-channel factor between a layer whose
output feeds some ``Linear`` layers (the *smooth* layer: an RMSNorm/LayerNorm,
or a ``Linear``) and those consumers (the *balance* layers). A recipe names
them by patterns, as llm-compressor does::

    mappings:
      - [["re:.*q_proj", "re:.*k_proj", "re:.*v_proj"], "re:.*input_layernorm"]
      - [["re:.*gate_proj", "re:.*up_proj"], "re:.*post_attention_layernorm"]

or, in the reference's dict form, ``{balance_layers: [...], smooth_layer: ...}``
(``smooth_layers``, the reference's field name, is accepted too). A pattern
reads as a ``targets`` entry does (:mod:`modfsm.modifiers.targets`): a module
name, a type name, or ``re:<regex>`` over the whole module name.

Theory of operation:

* :func:`parse_mappings` checks the recipe value's shape (at construction) and
  returns it as a tuple of ``(balance patterns, smooth pattern)``.
* :func:`resolve_mappings` turns each mapping into concrete layers. Every
  module the smooth pattern matches is one smooth layer; its balance layers are,
  for each balance pattern, the matches inside the smallest enclosing module of
  the smooth layer that holds any (so ``model.layers.3.input_layernorm`` gets
  ``model.layers.3.self_attn.{q,k,v}_proj``). The search never climbs into a
  module holding another match of the same smooth pattern, so one block's
  layers are never given to another's norm. A pair is skipped (logged) when a
  balance layer's ``in_features`` differs from the smooth layer's output width
  (``v_proj -> o_proj`` under grouped-query attention), when no balance layer
  lies near it, or when any of its layers is ignored (rescaling only part of
  the pair would change the model's function; llm-compressor skips only when
  all are ignored, and rescales ignored layers otherwise). A pattern matching
  no module at all is a ``ConfigError`` naming it and listing similar names;
  so is a layer given the same role in two mappings (it would be rescaled
  twice). A layer may be the balance layer of one mapping and the smooth layer
  of the next (AWQ chains ``input_layernorm -> v_proj -> o_proj``).
* :func:`apply_smoothing` divides the smooth layer's output channels by the
  scales and multiplies the balance layers' input columns by them, so
  ``balance(smooth(x))`` is unchanged up to float rounding.
"""

from __future__ import annotations

import collections.abc
import difflib
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any, Final

import attrs
import torch

from modfsm.engine import ConfigError
from modfsm.modifiers.targets import check_names, matches_any

__all__ = [
    "LLAMA_SMOOTHQUANT_MAPPINGS",
    "Mapping",
    "ResolvedMapping",
    "apply_smoothing",
    "parse_mappings",
    "resolve_mappings",
    "smooth_width",
]

_LOG: Final = logging.getLogger("modfsm")

Mapping = tuple[tuple[str, ...], str]
"""One mapping as a recipe writes it: (balance layer patterns, smooth layer pattern)."""

LLAMA_SMOOTHQUANT_MAPPINGS: Final[tuple[Mapping, ...]] = (
    (("re:.*q_proj", "re:.*k_proj", "re:.*v_proj"), "re:.*input_layernorm"),
    (("re:.*gate_proj", "re:.*up_proj"), "re:.*post_attention_layernorm"),
)
"""llm-compressor's default SmoothQuant mappings (Llama, Mistral, Qwen and the like)."""

_BALANCE_KEYS: Final = ("balance_layers",)
_SMOOTH_KEYS: Final = ("smooth_layer", "smooth_layers")
_EXAMPLE: Final = (
    "[[['re:.*q_proj', 're:.*k_proj', 're:.*v_proj'], 're:.*input_layernorm'], "
    "[['re:.*gate_proj', 're:.*up_proj'], 're:.*post_attention_layernorm']]"
)
_CLOSE: Final = 6


@attrs.frozen
class ResolvedMapping:
    """One smooth layer and the ``Linear`` layers its output feeds, found in a model.

    Attributes:
        smooth_name: the smooth layer's module name.
        smooth: a norm (a 1-D ``weight``, optional ``bias``) or a ``Linear`` whose
            output feeds the balance layers.
        balance_names: the balance layers' module names, in model order.
        balance: the balance layers.
    """

    smooth_name: str
    smooth: torch.nn.Module = attrs.field(repr=False)
    balance_names: tuple[str, ...]
    balance: tuple[torch.nn.Linear, ...] = attrs.field(repr=False)

    @property
    def width(self) -> int:
        """The number of channels smoothed (the smooth layer's outputs)."""
        return smooth_width(self.smooth)


def _refuse(owner: str, field: str, value: Any, problem: str) -> ConfigError:
    return ConfigError(
        f"{owner}.{field}: {problem}, got {value!r}. To fix, write a list of "
        f"[[balance layer patterns...], smooth layer pattern] pairs, e.g. {_EXAMPLE}, or "
        "dicts {balance_layers: [...], smooth_layer: ...}.",
        owner=owner,
        field=field,
        value=value,
    )


def _one(owner: str, field: str, entry: Any) -> Mapping:
    if isinstance(entry, collections.abc.Mapping):
        keys = set(map(str, entry))
        smooth_keys = [k for k in _SMOOTH_KEYS if k in keys]
        unknown = sorted(keys - {*_BALANCE_KEYS, *_SMOOTH_KEYS})
        if unknown or "balance_layers" not in keys or len(smooth_keys) != 1:
            raise _refuse(
                owner, field, entry,
                f"a mapping dict takes exactly the keys balance_layers and smooth_layer "
                f"(unknown: {unknown or 'none'})",
            )  # fmt: skip
        balance, smooth = entry["balance_layers"], entry[smooth_keys[0]]
    elif isinstance(entry, list | tuple) and len(entry) == 2:
        balance, smooth = entry
    else:
        raise _refuse(owner, field, entry, "each mapping must be a pair [balance, smooth]")
    if isinstance(smooth, list | tuple) and len(smooth) == 1:
        smooth = smooth[0]  # the reference writes the smooth layer alone or in a list of one
    if not isinstance(smooth, str) or not smooth:
        raise _refuse(owner, field, entry, "the smooth layer must be one pattern (a string)")
    if isinstance(balance, str):
        balance = [balance]
    if not isinstance(balance, list | tuple) or not balance:
        raise _refuse(owner, field, entry, "the balance layers must be a non-empty list")
    patterns = check_names(owner, field, list(balance))
    check_names(owner, field, smooth)
    return tuple(patterns), smooth


def parse_mappings(owner: str, field: str, value: Any) -> tuple[Mapping, ...]:
    """A recipe's ``mappings`` value, checked, as ``((balance patterns, smooth pattern), ...)``.

    Example:
        >>> parse_mappings("M", "mappings", [[["re:.*fc1"], "re:.*ln"]])
        ((('re:.*fc1',), 're:.*ln'),)
        >>> parse_mappings("M", "mappings", [{"balance_layers": ["a"], "smooth_layer": "b"}])
        ((('a',), 'b'),)

    Raises:
        ConfigError: not a non-empty list of pairs, an unknown dict key, or a
            pattern that is not a valid regular expression; names ``owner.field``.
    """
    if isinstance(value, str | bytes | collections.abc.Mapping) or not isinstance(
        value, list | tuple
    ):
        raise _refuse(owner, field, value, "mappings must be a list of pairs")
    if not value:
        raise _refuse(owner, field, value, "mappings must not be empty (null means the default)")
    return tuple(_one(owner, field, entry) for entry in value)


def smooth_width(module: torch.nn.Module) -> int:
    """How many output channels a smooth layer has (its 1-D weight's size, or ``out_features``).

    Raises:
        TypeError: the module has no weight.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight to smooth")
    return int(weight.shape[0])


def _parent(name: str) -> str | None:
    """The enclosing module's name (``""`` is the root), or None for the root itself."""
    if not name:
        return None
    return name.rpartition(".")[0]


def _inside(name: str, scope: str) -> bool:
    return not scope or name == scope or name.startswith(scope + ".")


def _nearest(smooth_name: str, hits: Sequence[str], rivals: Sequence[str]) -> list[str]:
    """The ``hits`` in the smallest module enclosing ``smooth_name`` that holds any, without
    climbing into a module that also holds one of ``rivals`` (other smooth layers)."""
    scope = _parent(smooth_name)
    while scope is not None:
        if any(_inside(rival, scope) for rival in rivals if rival != smooth_name):
            return []
        found = [hit for hit in hits if _inside(hit, scope) and hit != smooth_name]
        if found:
            return found
        scope = _parent(scope)
    return []


def _close_names(pattern: str, named: collections.abc.Mapping[str, torch.nn.Module]) -> str:
    """Module names that look like ``pattern`` (for an error message)."""
    core = re.sub(r"[\\^$.*+?()\[\]{}|]+", " ", pattern.removeprefix("re:")).split()
    word = max(core, key=len) if core else pattern
    tails: dict[str, str] = {}
    for name in named:
        tails.setdefault(name.rpartition(".")[2], name)
    kinds = {type(m).__name__ for m in named.values()}
    close = difflib.get_close_matches(word, [*tails, *sorted(kinds)], n=_CLOSE, cutoff=0.4)
    shown = [tails.get(c, c) for c in close] or list(named)[:_CLOSE]
    return ", ".join(shown) or "none"


def resolve_mappings(
    owner: str,
    model: torch.nn.Module,
    mappings: Iterable[Mapping],
    ignore: list[str],
) -> list[ResolvedMapping]:
    """The smooth/balance layer groups of ``model`` that ``mappings`` describe, in model order.

    See the module docstring for how balance layers are matched to a smooth layer
    and which pairs are skipped.

    Raises:
        ConfigError: a pattern matches no module of the model (named, with similar
            module names); a balance match is not a ``Linear``; a smooth match has
            no weight; or a layer has the same role in two mappings.
    """
    named = {name: module for name, module in model.named_modules() if name}
    order = {name: index for index, name in enumerate(named)}

    def matches(pattern: str) -> list[str]:
        hits = [name for name, module in named.items() if matches_any([pattern], name, module)]
        if not hits:
            raise ConfigError(
                f"{owner}: mapping pattern {pattern!r} matches no module of the model. Modules "
                f"with similar names: {_close_names(pattern, named)}. To fix, correct the "
                "pattern (a module name, a type name, or 're:' with a regex matching whole "
                "names), or leave mappings out for the Llama-family default.",
                owner=owner,
                field="mappings",
                value=pattern,
            )
        return hits

    resolved: list[ResolvedMapping] = []
    owners: dict[tuple[str, str], str] = {}
    for balance_patterns, smooth_pattern in mappings:
        smooth_hits = matches(smooth_pattern)
        balance_hits = [matches(pattern) for pattern in balance_patterns]
        for smooth_name in smooth_hits:
            smooth = named[smooth_name]
            weight = getattr(smooth, "weight", None)
            if not isinstance(weight, torch.Tensor) or weight.ndim not in (1, 2):
                raise ConfigError(
                    f"{owner}: smooth layer {smooth_name!r} ({type(smooth).__name__}) has no "
                    "1-D (norm) or 2-D (Linear) weight to rescale. To fix, make the smooth "
                    "pattern match a norm or a Linear layer.",
                    owner=owner,
                    field="mappings",
                    value=smooth_pattern,
                )
            chosen: list[str] = []
            for hits in balance_hits:
                chosen += [n for n in _nearest(smooth_name, hits, smooth_hits) if n not in chosen]
            chosen.sort(key=order.__getitem__)
            if not chosen:
                _LOG.info("%s: no balance layer lies near %s; skipped", owner, smooth_name)
                continue
            for name in chosen:
                if not isinstance(named[name], torch.nn.Linear):
                    raise ConfigError(
                        f"{owner}: balance layer {name!r} is a {type(named[name]).__name__}, "
                        "not a Linear. To fix, make the balance patterns match Linear layers "
                        "only.",
                        owner=owner,
                        field="mappings",
                        value=list(balance_patterns),
                    )
            balance = tuple(m for m in (named[n] for n in chosen) if isinstance(m, torch.nn.Linear))
            width = smooth_width(smooth)
            odd = [n for n, m in zip(chosen, balance, strict=True) if m.in_features != width]
            if odd:
                _LOG.info(
                    "%s: %s has %d outputs but %s take a different number of inputs; skipped",
                    owner, smooth_name, width, ", ".join(odd),
                )  # fmt: skip
                continue
            ignored = [n for n in (smooth_name, *chosen) if matches_any(ignore, n, named[n])]
            if ignored:
                _LOG.info(
                    "%s: %s -> %s skipped, since %s ignored",
                    owner, smooth_name, ", ".join(chosen), ", ".join(ignored),
                )  # fmt: skip
                continue
            for role, name in (("smooth", smooth_name), *(("balance", n) for n in chosen)):
                earlier = owners.get((role, name))
                if earlier is not None:
                    raise ConfigError(
                        f"{owner}: layer {name!r} is the {role} layer of two mappings (with "
                        f"smooth layers {earlier!r} and {smooth_name!r}), so it would be "
                        "rescaled twice. To fix, make the patterns match each layer in one "
                        "mapping per role (anchor them, e.g. 're:.*q_proj$').",
                        owner=owner,
                        field="mappings",
                        value=name,
                    )
                owners[role, name] = smooth_name
            resolved.append(ResolvedMapping(smooth_name, smooth, tuple(chosen), balance))
    resolved.sort(key=lambda mapping: order[mapping.smooth_name])
    return resolved


def apply_smoothing(mapping: ResolvedMapping, scales: torch.Tensor) -> None:
    """Divide the smooth layer's output channels by ``scales``; multiply the balance columns.

    In place, without autograd. The product ``balance(smooth(x))`` is unchanged
    up to float rounding: the smooth layer's norm weight (or a ``Linear``'s
    weight rows) and bias are divided by ``scales``, each balance layer's weight
    columns are multiplied by it.

    Example:
        >>> norm, fc = torch.nn.LayerNorm(2), torch.nn.Linear(2, 1)
        >>> m = ResolvedMapping("norm", norm, ("fc",), (fc,))
        >>> x = torch.randn(3, 2)
        >>> before = fc(norm(x))
        >>> apply_smoothing(m, torch.tensor([2.0, 0.5]))
        >>> torch.allclose(before, fc(norm(x)), atol=1e-6)
        True

    Raises:
        ValueError: ``scales`` is not one positive finite value per smoothed channel.
    """
    width = mapping.width
    if scales.shape != (width,) or not bool(torch.isfinite(scales).all() and (scales > 0).all()):
        raise ValueError(
            f"smoothing {mapping.smooth_name}: scales must be {width} positive finite values, "
            f"got shape {tuple(scales.shape)}"
        )
    smooth = mapping.smooth
    with torch.no_grad():
        weight = smooth.weight
        assert isinstance(weight, torch.Tensor), "smooth_width checked it"
        factor = scales.to(device=weight.device, dtype=torch.float32)
        shape = (-1,) if weight.ndim == 1 else (-1, 1)
        weight.copy_((weight.float() / factor.view(shape)).to(weight.dtype))
        bias = getattr(smooth, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.copy_((bias.float() / factor.to(bias.device)).to(bias.dtype))
        for layer in mapping.balance:
            columns = layer.weight
            grow = factor.to(columns.device).view(1, -1)
            columns.copy_((columns.float() * grow).to(columns.dtype))
