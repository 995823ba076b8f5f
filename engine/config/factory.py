"""``ModifierFactory``: find modifier classes by name and build them.

Three registries, as in the reference: *main* (every module under the
``modfsm.modifiers`` package except ``modfsm.modifiers.experimental``, and every
module that an installed distribution names in the ``modfsm.modifiers``
entry-point group), *experimental* (under ``modfsm.modifiers.experimental``) and
*registered* (classes added with :meth:`ModifierFactory.register`).
:meth:`ModifierFactory.create` looks a name up in the reference's order:
remembered errors, registered (if allowed), experimental (if allowed), main.

Only modules under the two packages, and the modules and classes the entry points
name, are imported: never a module a recipe names. A class is registered under
its own name when it is defined in one of those modules, is a concrete
:class:`~modfsm.engine.runtime.modifier.Modifier` subclass, and its name ends in
``Modifier``. A module that fails to import is not executed further: its source
is read (with ``ast``, never run) for the ``*Modifier`` classes it defines, and
``create`` re-raises the import error for any of those names. An attribute
named ``*Modifier`` that is not a modifier class is remembered as an error too.

A third-party package declares its modifiers in its own ``pyproject.toml``::

    [project.entry-points."modfsm.modifiers"]
    mypackage = "mypackage.modifiers"        # a module or package, walked like ours
    # or one class:  special = "mypackage.special:SpecialModifier"

An entry point that fails to load is logged once (logger ``modfsm``, by its
name) and remembered for the names it defines; the other modifiers stay
available. Two different classes found under one name are an error for that
name only.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import inspect
import logging
import pkgutil
import re
from collections.abc import Iterable
from importlib import metadata
from typing import Any, ClassVar, Final

from modfsm.engine.kernel.errors import ConfigError, ConfigTypeError, LifecycleError
from modfsm.engine.runtime.modifier import Modifier

__all__ = [
    "ENTRY_POINT_GROUP",
    "ModifierFactory",
    "ModifierImportError",
    "UnknownModifierError",
]

ENTRY_POINT_GROUP: Final = "modfsm.modifiers"
"""The entry-point group in which installed distributions declare their modifiers."""

_LOG: Final = logging.getLogger("modfsm")


class UnknownModifierError(LifecycleError, ValueError):
    """No modifier class of the requested name is available.

    Attributes:
        type_: the requested name.
        suggestions: the closest known names.
    """

    def __init__(self, message: str, *, type_: str, suggestions: tuple[str, ...]) -> None:
        super().__init__(message)
        self.type_ = type_
        self.suggestions = suggestions


class ModifierImportError(LifecycleError, ImportError):
    """The module that defines the requested modifier failed to import (see ``__cause__``)."""


class ModifierFactory:
    """Finds modifier classes by name in the modifier packages and builds them.

    Class-level state, like the reference; :meth:`refresh` reloads the main and
    experimental registries (the registered one is kept).
    """

    main_package: ClassVar[str] = "modfsm.modifiers"
    experimental_package: ClassVar[str] = "modfsm.modifiers.experimental"
    entry_point_group: ClassVar[str] = ENTRY_POINT_GROUP

    _loaded: ClassVar[bool] = False
    _reported: ClassVar[set[str]] = set()
    _main_registry: ClassVar[dict[str, type[Modifier]]] = {}
    _experimental_registry: ClassVar[dict[str, type[Modifier]]] = {}
    _registered_registry: ClassVar[dict[str, type[Modifier]]] = {}
    _errors: ClassVar[dict[str, Exception]] = {}

    @staticmethod
    def refresh() -> None:
        """Walk the packages and entry points again and rebuild the main and experimental
        registries (the registered one is kept)."""
        factory = ModifierFactory
        factory._errors = {}
        factory._experimental_registry = factory.load_from_package(factory.experimental_package)
        main = factory.load_from_package(factory.main_package, exclude=factory.experimental_package)
        factory._main_registry = factory._add_entry_points(main)
        factory._loaded = True

    @staticmethod
    def _add_entry_points(main: dict[str, type[Modifier]]) -> dict[str, type[Modifier]]:
        """``main`` and the modifiers of every entry point in :attr:`entry_point_group`."""
        factory = ModifierFactory
        origin = dict.fromkeys(main, factory.main_package)
        for point in sorted(metadata.entry_points(group=factory.entry_point_group)):
            where = f"entry point {point.name!r} ({point.value}) of group {point.group!r}"
            try:
                loaded = point.load()
            except Exception as error:
                factory._remember_import_error(point.module, error, where=where)
                factory._report(where, error)
                continue
            found: dict[str, type[Modifier]] = {}
            if point.attr:  # "module:Class": that one class, under its own name
                factory._collect_class(point.attr, loaded, found, where)
            else:  # "module": walked like the shipped package
                found = factory._walk(point.module)
            for name, cls in found.items():
                if main.get(name, cls) is not cls:
                    factory._errors[name] = ConfigError(
                        f"two classes are called {name}: one from {origin[name]}, one from "
                        f"{where}. To fix, uninstall one of the two packages or rename one "
                        "class.",
                        owner="ModifierFactory",
                        field=name,
                        value=point.value,
                    )
                    continue
                main[name] = cls
                origin.setdefault(name, where)
        return main

    @staticmethod
    def _report(where: str, error: Exception) -> None:
        """Log a broken entry point, once per process."""
        if where in ModifierFactory._reported:
            return
        ModifierFactory._reported.add(where)
        _LOG.warning(
            "modfsm: %s failed to load (%s: %s), so its modifiers are unavailable; the other "
            "modifiers are not affected. To fix, repair or uninstall the package that "
            "declares it.",
            where,
            type(error).__name__,
            error,
        )

    @staticmethod
    def load_from_package(
        package_path: str, *, exclude: str | None = None
    ) -> dict[str, type[Modifier]]:
        """The modifier classes defined under ``package_path``, by name.

        Args:
            package_path: the main or experimental package, or a package under them.
            exclude: a subpackage to skip (the main walk skips the experimental one).

        Raises:
            ConfigError: ``package_path`` is not under the modifier packages.
        """
        factory = ModifierFactory
        roots = (factory.main_package, factory.experimental_package)
        if not any(package_path == r or package_path.startswith(r + ".") for r in roots):
            raise ConfigError(
                f"ModifierFactory.load_from_package({package_path!r}): only the modifier "
                f"packages {list(roots)} and their subpackages are loaded. To fix, put the "
                "module there, or register the class with ModifierFactory.register().",
                owner="ModifierFactory",
                field="package_path",
                value=package_path,
            )
        return factory._walk(package_path, exclude=exclude)

    @staticmethod
    def _walk(package_path: str, *, exclude: str | None = None) -> dict[str, type[Modifier]]:
        """The modifier classes defined in the module ``package_path`` and, for a package,
        in every module under it (``exclude`` and what is under it left out)."""
        factory = ModifierFactory
        loaded: dict[str, type[Modifier]] = {}
        package = importlib.import_module(package_path)
        modules = [package_path]
        failed_packages: list[str] = []
        for info in pkgutil.walk_packages(
            getattr(package, "__path__", ()), package_path + ".", onerror=failed_packages.append
        ):
            if exclude and (info.name == exclude or info.name.startswith(exclude + ".")):
                continue
            modules.append(info.name)
        for name in modules + failed_packages:
            try:
                module = importlib.import_module(name)
            except Exception as error:
                factory._remember_import_error(name, error)
                continue
            factory._collect(module, loaded)
        return loaded

    @staticmethod
    def _collect(module: Any, loaded: dict[str, type[Modifier]]) -> None:
        for attribute in dir(module):
            if not attribute.endswith("Modifier") or attribute in loaded:
                continue
            value = getattr(module, attribute)
            if isinstance(value, type) and value.__module__ != module.__name__:
                continue  # imported from elsewhere; registered where it is defined
            ModifierFactory._collect_class(
                attribute, value, loaded, f"{module.__name__}.{attribute}"
            )

    @staticmethod
    def _collect_class(
        name: str, value: Any, loaded: dict[str, type[Modifier]], where: str
    ) -> None:
        """Register ``value`` as ``name`` if it is a concrete modifier class, else say why not."""
        problem = None
        if not isinstance(value, type):
            problem = f"{where} is not a class"
        elif not issubclass(value, Modifier):
            problem = f"{where} does not subclass modfsm.engine.Modifier"
        elif inspect.isabstract(value):
            problem = f"{where} is abstract (missing {_missing(value)})"
        if problem is None:
            loaded[name] = value
        else:
            ModifierFactory._errors[name] = ConfigTypeError(
                f"{problem}, so it cannot be created by name. To fix, make it a concrete "
                "modfsm.engine.Modifier subclass or rename it.",
                owner="ModifierFactory",
                field=name,
                value=value,
            )

    @staticmethod
    def _remember_import_error(
        module_name: str, error: Exception, *, where: str | None = None
    ) -> None:
        """Remember ``error`` for every ``*Modifier`` class the module's source defines.

        ``where`` names what was loaded when it is not the module itself (an entry point).
        """
        try:
            spec = importlib.util.find_spec(module_name)
        except Exception:  # the parent package is itself broken
            spec = None
        names: list[str] = []
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            try:
                with open(spec.origin, encoding="utf-8") as handle:
                    tree = ast.parse(handle.read())
                names = [
                    node.name
                    for node in tree.body
                    if isinstance(node, ast.ClassDef) and node.name.endswith("Modifier")
                ]
            except (OSError, SyntaxError, ValueError):
                names = []
        wrapped = ModifierImportError(
            f"{where or f'module {module_name}'} failed to import ({type(error).__name__}: "
            f"{error}). To fix, repair that module; it defines "
            f"{', '.join(names) or 'no *Modifier class'}."
        )
        wrapped.__cause__ = error
        for name in names:
            ModifierFactory._errors[name] = wrapped
        ModifierFactory._errors[f"<module {module_name}>"] = wrapped

    @staticmethod
    def create(
        type_: str,
        allow_registered: bool = True,
        allow_experimental: bool = False,
        **kwargs: Any,
    ) -> Modifier:
        """Build the modifier class named ``type_`` with ``kwargs``.

        Looks in: remembered errors, registered (if ``allow_registered``),
        experimental (if ``allow_experimental``), main.

        Raises:
            ModifierImportError: the module defining ``type_`` failed to import.
            ConfigTypeError: ``type_`` names something that is not a modifier class.
            UnknownModifierError: no such modifier; the message lists the closest names.
        """
        factory = ModifierFactory
        modifier_class = factory.lookup(type_, allow_registered, allow_experimental)
        factory.check_arguments(modifier_class, kwargs)
        return modifier_class(**kwargs)

    @staticmethod
    def lookup(
        type_: str, allow_registered: bool = True, allow_experimental: bool = False
    ) -> type[Modifier]:
        """The class ``create`` would build for ``type_``, without building it."""
        factory = ModifierFactory
        if not factory._loaded:
            factory.refresh()
        if type_ in factory._errors:
            raise factory._errors[type_]
        for allowed, registry in (
            (allow_registered, factory._registered_registry),
            (allow_experimental, factory._experimental_registry),
            (True, factory._main_registry),
        ):
            if allowed and type_ in registry:
                return registry[type_]
        raise factory.unknown(type_, allow_registered, allow_experimental)

    @staticmethod
    def unknown(
        type_: str, allow_registered: bool, allow_experimental: bool
    ) -> UnknownModifierError:
        """The error for a name no allowed registry knows, with the closest known names."""
        factory = ModifierFactory
        if not allow_experimental and type_ in factory._experimental_registry:
            return UnknownModifierError(
                f"No modifier of type {type_!r} found: it is experimental. To fix, pass "
                "allow_experimental=True.",
                type_=type_,
                suggestions=(type_,),
            )
        if not allow_registered and type_ in factory._registered_registry:
            return UnknownModifierError(
                f"No modifier of type {type_!r} found: it is registered, but registered "
                "modifiers are not allowed here. To fix, pass allow_registered=True.",
                type_=type_,
                suggestions=(type_,),
            )
        known = sorted(
            set(factory._main_registry)
            | set(factory._experimental_registry if allow_experimental else ())
            | set(factory._registered_registry if allow_registered else ())
        )
        suggestions = _closest(type_, known)
        guess = f"Did you mean {', '.join(suggestions)}? " if suggestions else ""
        return UnknownModifierError(
            f"No modifier of type {type_!r} found. {guess}Known types: "
            f"{', '.join(known) or 'none'}. To fix, use one of those names, or make your "
            "class known (ModifierFactory.register(), an entry point of group "
            f"{factory.entry_point_group!r}, or modfsm run --import MODULE).",
            type_=type_,
            suggestions=suggestions,
        )

    @staticmethod
    def parameters(modifier_class: type[Modifier]) -> tuple[frozenset[str], tuple[str, ...], bool]:
        """What ``modifier_class(...)`` takes: (keyword names, required names, ``**kwargs``?)."""
        accepted, required, open_ended = _parameters(modifier_class)
        return frozenset(accepted), tuple(required), open_ended

    @staticmethod
    def check_arguments(
        modifier_class: type[Modifier], arguments: Iterable[str], *, hide: Iterable[str] = ()
    ) -> None:
        """Raise if ``arguments`` are not exactly what ``modifier_class`` accepts.

        Args:
            modifier_class: the class to build.
            arguments: the argument names to be passed.
            hide: accepted names to leave out of the message (set elsewhere).

        Raises:
            ConfigTypeError: unknown arguments (with the accepted names and the
                closest match) or missing required ones.
        """
        accepted, required, open_ended = _parameters(modifier_class)
        given = list(arguments)
        unknown = [name for name in given if name not in accepted] if not open_ended else []
        missing = [name for name in required if name not in given]
        if not unknown and not missing:
            return
        owner = modifier_class.__name__
        shown = sorted(accepted - set(hide))
        parts = []
        if unknown:
            guesses = [
                f"{close[0]!r} instead of {name!r}"
                for name in unknown
                if (close := difflib.get_close_matches(name, shown, n=1, cutoff=0.75))
            ]
            guess = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
            parts.append(f"unknown argument(s) {unknown}{guess}")
        if missing:
            parts.append(f"missing required argument(s) {missing}")
        raise ConfigTypeError(
            f"{owner}: {' and '.join(parts)}. {owner} accepts: {', '.join(shown)}. "
            "To fix, use only those names and give every required one.",
            owner=owner,
            field=(unknown or missing)[0],
            value=None,
        )

    @staticmethod
    def register(type_: str, modifier_class: object) -> None:
        """Make ``modifier_class`` creatable as ``type_`` (with ``allow_registered``).

        ``modifier_class`` is typed ``object`` because it is checked at run time: it
        must be a concrete subclass of :class:`~modfsm.engine.runtime.modifier.Modifier`.

        Raises:
            ConfigTypeError: ``modifier_class`` is not a class, not a Modifier
                subclass, or abstract; or ``type_`` is not a non-empty str.
        """
        if not isinstance(type_, str) or not type_:
            raise ConfigTypeError(
                f"ModifierFactory.register: type_ must be a non-empty str, got {type_!r}. "
                "To fix, pass the name recipes use, e.g. 'MyPruningModifier'.",
                owner="ModifierFactory",
                field="type_",
                value=type_,
            )

        def refuse(problem: str) -> ConfigTypeError:
            return ConfigTypeError(
                f"ModifierFactory.register({type_!r}, ...): {problem}. To fix, register a "
                "concrete subclass of modfsm.engine.Modifier.",
                owner="ModifierFactory",
                field="modifier_class",
                value=modifier_class,
            )

        if not isinstance(modifier_class, type):
            raise refuse(f"{modifier_class!r} is not a class")
        if not issubclass(modifier_class, Modifier):
            raise refuse(f"{modifier_class.__qualname__} does not subclass modfsm.engine.Modifier")
        if inspect.isabstract(modifier_class):
            missing = _missing(modifier_class)
            raise refuse(f"{modifier_class.__qualname__} is abstract (missing {missing})")
        ModifierFactory._registered_registry[type_] = modifier_class

    @staticmethod
    def import_modifiers(module_name: str, only: str | None = None) -> tuple[str, ...]:
        """Import the module (or package) ``module_name`` and register the modifier
        classes it defines, as an entry point naming it would (for ``modfsm run --import``);
        with ``only``, just its attribute of that name (``module:Class``), and no walk
        of a package.

        A class whose name a shipped, an entry point's or an already registered modifier
        already has is refused, not shadowed. Returns the names registered.

        Raises:
            ModifierImportError: the module, or one under the package, failed to import.
            ConfigError: it defines no modifier class, or one whose name is taken.
        """
        factory = ModifierFactory
        if not factory._loaded:
            factory.refresh()
        where = f"--import {module_name}" if only is None else f"{module_name}:{only}"
        try:
            module = importlib.import_module(module_name)
        except Exception as error:
            hint = (
                "check the name, and run from the folder that holds it (the current folder "
                "is searched first)"
                if isinstance(error, ModuleNotFoundError) and error.name == module_name
                else "repair that module"
            )
            wrapped = ModifierImportError(
                f"{where}: the module failed to import ({type(error).__name__}: {error}). "
                f"To fix, {hint}."
            )
            raise wrapped from error
        before = dict(factory._errors)
        found: dict[str, type[Modifier]] = {}
        if only is None:
            found = factory._walk(module_name)
        elif hasattr(module, only):
            factory._collect_class(only, getattr(module, only), found, where)
        else:
            raise ConfigError(
                f"{where}: the module has no attribute {only!r}. To fix, name a modifier "
                "class the module defines.",
                owner="ModifierFactory",
                field="import",
                value=where,
            )
        broken = [e for k, e in factory._errors.items() if k not in before or before[k] is not e]
        if broken:
            raise broken[0]
        if not found:
            raise ConfigError(
                f"{where}: the module defines no modifier class (a concrete subclass of "
                "modfsm.engine.Modifier whose name ends in 'Modifier'). To fix, import the "
                "module that defines your modifiers.",
                owner="modfsm run",
                field="import",
                value=module_name,
            )
        taken = {
            **dict.fromkeys(factory._main_registry, "a shipped or entry-point modifier"),
            **dict.fromkeys(factory._experimental_registry, "an experimental modifier"),
            **dict.fromkeys(factory._registered_registry, "a registered modifier"),
        }
        for name, cls in sorted(found.items()):
            known = factory._main_registry.get(name, factory._registered_registry.get(name))
            if name in taken and known is not cls:
                raise ConfigError(
                    f"{where}: its class {name} has the name of {taken[name]}. To fix, "
                    "rename your class.",
                    owner="modfsm run",
                    field="import",
                    value=module_name,
                )
        for name, cls in found.items():
            factory.register(name, cls)
        return tuple(sorted(found))

    @staticmethod
    def known() -> dict[str, tuple[str, ...]]:
        """Every known name, by registry (``main``, ``experimental``, ``registered``)."""
        factory = ModifierFactory
        if not factory._loaded:
            factory.refresh()
        return {
            "main": tuple(sorted(factory._main_registry)),
            "experimental": tuple(sorted(factory._experimental_registry)),
            "registered": tuple(sorted(factory._registered_registry)),
        }


def _stem(name: str) -> str:
    """``"MagnitudePruningModifier"`` -> ``"magnitudepruning"`` (typos of the suffix too)."""
    lowered = name.lower()
    return re.sub(r"mod[a-z]*$", "", lowered) or lowered


def _closest(name: str, known: Iterable[str], count: int = 3) -> tuple[str, ...]:
    """Known names closest to ``name``, compared without the shared ``Modifier`` suffix."""
    stem = _stem(name)
    scored = sorted(
        ((difflib.SequenceMatcher(None, stem, _stem(k)).ratio(), k) for k in known),
        key=lambda pair: (-pair[0], pair[1]),
    )
    close = [k for ratio, k in scored if ratio >= 0.75]
    containing = [k for _, k in scored if stem and (stem in _stem(k) or _stem(k) in stem)]
    return tuple(dict.fromkeys(close + containing))[:count]


def _missing(cls: type) -> str:
    return ", ".join(sorted(getattr(cls, "__abstractmethods__", ()))) or "abstract methods"


def _parameters(cls: type) -> tuple[set[str], list[str], bool]:
    """(accepted keyword names, required ones, whether it takes **kwargs) of ``cls(...)``."""
    accepted: set[str] = set()
    required: list[str] = []
    open_ended = False
    for parameter in inspect.signature(cls).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            open_ended = True
        elif parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                inspect.Parameter.KEYWORD_ONLY):  # fmt: skip
            accepted.add(parameter.name)
            if parameter.default is inspect.Parameter.empty:
                required.append(parameter.name)
    return accepted, required, open_ended
