"""Which layers of a model a modifier acts on: ``targets`` and ``ignore``.

A target (and an ``ignore`` entry) is one of:

* ``"__ALL__"`` — every ``Linear`` and ``Conv1d/2d/3d`` layer;
* ``"__ALL_PRUNABLE__"`` — the same layers, under llm-compressor's name for
  them (its ``expand_special_targets``: ``Linear``, ``Conv1d``, ``Conv2d``,
  ``Conv3d``); ``"__ALL_QUANTIZABLE__"`` — every ``Linear``, ``Conv2d`` and
  ``Conv3d`` layer (llm-compressor's expansion of that name);
* a layer type name, such as ``"Linear"`` or ``"Conv2d"``;
* a module name, such as ``"0"`` or ``"encoder.fc1"``, or a parameter name
  ``"<module>.weight"`` (which selects that module);
* ``"re:<pattern>"`` — a regular expression that must match the whole module
  name or the whole ``"<module>.weight"`` name (``"re:.*weight"``).

Only modules with a ``weight`` parameter of two or more dimensions are layers
here. A target that matches no layer is an error at ``initialize``, listing the
model's layers, rather than a modifier that silently does nothing.

:func:`select_modules` reads the same entries over *every* module, not only
layers: the one-shot pruning modifiers name the blocks (decoder layers) whose
layers they compress, as llm-compressor's ``SparseGPTModifier`` does
(``re:model.layers.\\d+$``, ``LlamaDecoderLayer``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

from modfsm.engine.kernel.errors import ConfigError, ConfigTypeError

if TYPE_CHECKING:
    import torch

__all__ = [
    "ALL",
    "ALL_PRUNABLE",
    "ALL_QUANTIZABLE",
    "PRUNABLE_TYPES",
    "as_names",
    "check_names",
    "check_target_names",
    "layers",
    "matches_any",
    "resolve",
    "select_modules",
    "weight_of",
]

ALL: Final = "__ALL__"
ALL_PRUNABLE: Final = "__ALL_PRUNABLE__"
ALL_QUANTIZABLE: Final = "__ALL_QUANTIZABLE__"
PRUNABLE_TYPES: Final = ("Linear", "Conv1d", "Conv2d", "Conv3d")
"""The layer types ``__ALL__`` and ``__ALL_PRUNABLE__`` stand for."""
_SPECIAL: Final = {
    ALL: PRUNABLE_TYPES,
    ALL_PRUNABLE: PRUNABLE_TYPES,
    ALL_QUANTIZABLE: ("Linear", "Conv2d", "Conv3d"),
}
_SHOWN_MODULES: Final = 12


def check_names(owner: str, field: str, value: Any) -> list[str]:
    """``value`` as a list of target strings; regexes are compiled to catch typos early."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) and n for n in names):
        raise ConfigTypeError(
            f"{owner}.{field} must be a name or a list of names, got {value!r}. To fix, write "
            "e.g. '__ALL__', 'Linear', 're:.*fc.*' or ['0', '2'].",
            owner=owner,
            field=field,
            value=value,
        )
    for name in names:
        if name.startswith("re:"):
            try:
                re.compile(name[3:])
            except re.error as error:
                raise ConfigError(
                    f"{owner}.{field}: {name!r} is not a valid regular expression ({error}). "
                    "To fix, correct the pattern after 're:'.",
                    owner=owner,
                    field=field,
                    value=name,
                ) from None
    return list(names)


def check_target_names(instance: Any, attribute: Any, value: Any) -> None:
    """attrs validator for a ``targets`` / ``ignore`` field."""
    check_names(type(instance).__name__, attribute.name, value)


def as_names(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """A ``targets`` / ``ignore`` value (one name or several) as a list of names."""
    return [value] if isinstance(value, str) else list(value)


def layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every module of ``model`` with a weight of two or more dimensions, by name."""
    found = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if weight is not None and getattr(weight, "ndim", 0) >= 2:
            found[name] = module
    return found


def _matches(target: str, name: str, module: torch.nn.Module) -> bool:
    special = _SPECIAL.get(target)
    if special is not None:
        return type(module).__name__ in special
    if target.startswith("re:"):
        pattern = re.compile(target[3:])
        return bool(pattern.fullmatch(name) or pattern.fullmatch(f"{name}.weight"))
    return target in (name, f"{name}.weight", type(module).__name__)


def resolve(
    owner: str, model: torch.nn.Module, targets: list[str], ignore: list[str]
) -> dict[str, torch.nn.Module]:
    """The layers selected by ``targets`` and not by ``ignore``, in model order.

    Raises:
        ConfigError: a target matches no layer, or everything is ignored; the
            message lists the model's layers.
    """
    candidates = layers(model)
    chosen: dict[str, torch.nn.Module] = {}
    for target in targets:
        hits = {n: m for n, m in candidates.items() if _matches(target, n, m)}
        if not hits:
            raise ConfigError(
                f"{owner}: target {target!r} matches no layer of the model. Its layers are: "
                f"{_listing(candidates)}. To fix, use one of those names, a type such as "
                "'Linear', '__ALL__' or a 're:' pattern.",
                owner=owner,
                field="targets",
                value=target,
            )
        chosen.update(hits)
    kept = {
        n: m for n, m in candidates.items()
        if n in chosen and not any(_matches(i, n, m) for i in ignore)
    }  # fmt: skip
    if not kept:
        raise ConfigError(
            f"{owner}: ignore={ignore!r} removes every target layer ({_listing(chosen)}). "
            "To fix, narrow ignore or widen targets.",
            owner=owner,
            field="ignore",
            value=ignore,
        )
    return kept


def matches_any(entries: list[str], name: str, module: torch.nn.Module) -> bool:
    """Whether any of ``entries`` (targets or ignore entries) selects the module ``name``."""
    return any(_matches(entry, name, module) for entry in entries)


def select_modules(
    owner: str, model: torch.nn.Module, targets: list[str]
) -> dict[str, torch.nn.Module]:
    """Every module of ``model`` (not only layers) that one of ``targets`` selects, in model order.

    The entries read as for layers: a module name, a type name, ``re:<pattern>``
    over the whole name, or a special name (which selects the layers of its
    types). The model itself (name ``""``) is never selected.

    Raises:
        ConfigError: a target matches no module; the message lists the module
            types and some module names.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    chosen: set[str] = set()
    for target in targets:
        hits = {n for n, m in named if _matches(target, n, m)}
        if not hits:
            kinds = sorted({type(m).__name__ for _, m in named})
            shown = ", ".join(n for n, _ in named[:_SHOWN_MODULES])
            more = f", ... ({len(named)} in all)" if len(named) > _SHOWN_MODULES else ""
            raise ConfigError(
                f"{owner}: target {target!r} matches no module of the model. Its module types "
                f"are: {', '.join(kinds) or 'none'}; its modules: {shown or 'none'}{more}. To "
                "fix, use a module name, a type name such as 'LlamaDecoderLayer' or 'Linear', "
                "'__ALL_PRUNABLE__', or a 're:' pattern matching whole names "
                "(e.g. 're:model.layers.\\d+$').",
                owner=owner,
                field="targets",
                value=target,
            )
        chosen |= hits
    return {n: m for n, m in named if n in chosen}


def _listing(found: dict[str, torch.nn.Module]) -> str:
    return ", ".join(f"{n or '<root>'} ({type(m).__name__})" for n, m in found.items()) or "none"


def weight_of(layer: torch.nn.Module) -> torch.nn.Parameter:
    """``layer.weight``, typed (torch types module attributes loosely)."""
    import torch

    weight = layer.weight
    assert isinstance(weight, torch.nn.Parameter), "layers() only returns modules with one"
    return weight
