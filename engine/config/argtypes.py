"""Check recipe arguments against a modifier class's attrs field annotations.

A recipe gives plain YAML values (``None``, bool, int, float, str, lists and
mappings). :func:`field_annotations` resolves the annotations of an attrs
class's ``__init__`` arguments; :func:`mismatch` says whether a value fits
one and, if not, which part of it does not.

Understood annotations: ``Any`` and ``object``; ``bool`` (not an int); ``int``
(not a bool); ``float`` (an int too, not a bool); ``str``; ``None``; unions
(``X | Y``, ``Optional[X]``); ``Literal[...]``; ``list[X]``, ``tuple[X, ...]``,
``tuple[X, Y]`` (YAML has no tuples: a sequence is accepted), ``dict[K, V]``,
``Sequence[X]`` and ``Mapping[K, V]`` with their element types, bare or not.
Anything else (a class, a ``TypeVar``, a string that does not resolve) is not
checked: :func:`mismatch` lets every value through, so the class's own
validators decide. A field with a converter is not checked either, since the
converter sees the value first.
"""

from __future__ import annotations

import collections.abc
import inspect
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any, Final

import attrs

__all__ = ["Mismatch", "describe", "field_annotations", "mismatch"]

_UNIONS: Final = (typing.Union, types.UnionType)
_SEQUENCES: Final = (list, tuple, collections.abc.Sequence)
_MAPPINGS: Final = (dict, collections.abc.Mapping)
_UNRESOLVED: Final = object()


def field_annotations(cls: type) -> dict[str, Any]:
    """The resolved annotation of each checkable ``__init__`` argument of ``cls``, by name.

    Arguments are named as ``__init__`` takes them (a field ``_x`` is ``x``). Left
    out: fields with a converter and annotations that do not resolve. A class that
    is not an attrs class has none.
    """
    fields = getattr(cls, "__attrs_attrs__", None)
    if fields is None:
        return {}
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # one unresolvable annotation fails them all: resolve one by one
        hints = {}
        for field in fields:
            resolved = _resolve_one(cls, field.name)
            if resolved is not _UNRESOLVED:
                hints[field.name] = resolved
    annotations: dict[str, Any] = {}
    for field in fields:
        if not field.init or field.converter is not None or field.name not in hints:
            continue
        annotations[field.alias or field.name] = hints[field.name]
    return annotations


def _resolve_one(cls: type, name: str) -> Any:
    """Resolve one field's annotation in the module of the class that declares it."""
    for owner in cls.__mro__:
        own = inspect.get_annotations(owner)
        if name not in own:
            continue
        holder = types.SimpleNamespace(__annotations__={name: own[name]})
        module = sys.modules.get(owner.__module__)
        try:
            hints = typing.get_type_hints(
                holder,
                globalns=vars(module) if module is not None else {},
                localns=dict(vars(owner)),
            )
        except Exception:
            return _UNRESOLVED
        return hints[name]
    return _UNRESOLVED


@attrs.frozen
class Mismatch:
    """Where a value fails its annotation.

    Attributes:
        where: ``""`` for the value itself, or the item that fails (``"[1]"``,
            ``"['weights']['num_bits']"``).
        value: the value (or item) that fails.
        expected: the annotation it fails.
    """

    where: str
    value: Any
    expected: Any

    def explain(self) -> str:
        """``""`` for the value itself, else ``"item [1] is 'x' (str), not int"``."""
        if not self.where:
            return ""
        return (
            f"item {self.where} is {self.value!r} ({type(self.value).__name__}), "
            f"not {describe(self.expected)}"
        )


def mismatch(value: Any, annotation: Any) -> Mismatch | None:
    """How ``value`` fails ``annotation``; None if it fits or the annotation is not understood."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in _UNIONS:
        return _union(value, annotation, arguments)
    if annotation in _SEQUENCES or origin in _SEQUENCES:
        return _sequence(value, annotation, origin or annotation, arguments)
    if annotation in _MAPPINGS or origin in _MAPPINGS:
        return _mapping(value, annotation, arguments)
    fits = _scalar_fits(value, annotation, origin, arguments)
    return None if fits else Mismatch("", value, annotation)


def _scalar_fits(value: Any, annotation: Any, origin: Any, arguments: tuple[Any, ...]) -> bool:
    if annotation is None or annotation is type(None):
        return value is None
    if annotation is bool:
        return type(value) is bool
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return any(type(value) is type(choice) and value == choice for choice in arguments)
    return True  # Any, object, or not understood: not checked


def _union(value: Any, annotation: Any, members: tuple[Any, ...]) -> Mismatch | None:
    nested = []
    for member in members:
        found = mismatch(value, member)
        if found is None:
            return None
        if found.where:
            nested.append(found)
    # A list that fails list[str] only in one item: say which item.
    return nested[0] if len(nested) == 1 else Mismatch("", value, annotation)


def _sequence(
    value: Any, annotation: Any, kind: Any, arguments: tuple[Any, ...]
) -> Mismatch | None:
    if not isinstance(value, list | tuple):
        return Mismatch("", value, annotation)
    if kind is tuple and arguments and not (len(arguments) == 2 and arguments[1] is Ellipsis):
        fixed = [] if arguments == ((),) else list(arguments)  # tuple[()] is the empty tuple
        if len(value) != len(fixed):
            return Mismatch("", value, annotation)
        wanted = fixed
    else:
        wanted = [arguments[0] if arguments else Any] * len(value)
    for position, (item, item_type) in enumerate(zip(value, wanted, strict=True)):
        found = mismatch(item, item_type)
        if found is not None:
            return attrs.evolve(found, where=f"[{position}]{found.where}")
    return None


def _mapping(value: Any, annotation: Any, arguments: tuple[Any, ...]) -> Mismatch | None:
    if not isinstance(value, Mapping):
        return Mismatch("", value, annotation)
    key_type, value_type = arguments if len(arguments) == 2 else (Any, Any)
    for key, item in value.items():
        if mismatch(key, key_type) is not None:
            return Mismatch("", value, annotation)
        found = mismatch(item, value_type)
        if found is not None:
            return attrs.evolve(found, where=f"[{key!r}]{found.where}")
    return None


def describe(annotation: Any) -> str:
    """How a message names ``annotation``: ``float``, ``str | list[str]``, ``None``."""
    if annotation is None or annotation is type(None):
        return "None"
    if annotation is Any:
        return "Any"
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin in _UNIONS:
        return " | ".join(describe(member) for member in arguments)
    if origin is typing.Literal:
        return f"Literal[{', '.join(repr(choice) for choice in arguments)}]"
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        if not arguments:
            return str(name)
        shown = ", ".join("..." if a is Ellipsis else describe(a) for a in arguments)
        return f"{name}[{shown}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)
