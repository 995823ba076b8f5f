"""Recipes: which modifiers to apply, in which stages, read from YAML and checked first.

A recipe is read from a path, a YAML string or a dict, in the reference's
format (see ``specs/recipe.md``)::

    sparsity_stage:                        # a stage: a top-level key ending in _stage
      run_type: oneshot                    # other keys are kept as stage arguments
      pruning_modifiers:                   # a group: a key ending in _modifiers
        MagnitudePruningModifier:          # a modifier class, found by the factory
          init_sparsity: 0.05
          final_sparsity: 0.75
          start: 0
          end: 10

Also accepted: a ``stages:`` mapping of stage name to stage body, and top-level
``*_modifiers`` groups, which form one stage named ``default_stage``. A group may
be a list of one-key mappings to use one class twice.

It parses into frozen values (:class:`Recipe` -> :class:`StageSpec` ->
:class:`ModifierSpec`); :meth:`Recipe.validate` checks everything that can be
checked before training (types exist, arguments match the class's names and
annotations, schedules make sense) and reports every problem with its path
``stage / group / ClassName / field``; :meth:`Recipe.build` returns
:class:`~modfsm.engine.runtime.stage.StageModifiers` only for a valid recipe. Validation builds
each modifier once, to run the class's own argument checks, and discards it.
Keys that look like misspelled groups or stages are errors, not arguments.

YAML is read by :mod:`modfsm.engine.config.yaml_input`: plain data only, within
bounds on size, nesting and alias expansion, string keys, no key written twice
(merge keys ``<<: *anchor`` work as in ``safe_load``); nothing in a recipe is
executed.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import attrs
import yaml

from modfsm.engine.config import yaml_input
from modfsm.engine.config.argtypes import Mismatch, describe, field_annotations, mismatch
from modfsm.engine.config.factory import ModifierFactory
from modfsm.engine.kernel.errors import LifecycleError
from modfsm.engine.runtime.modifier import Modifier
from modfsm.engine.runtime.stage import StageModifiers

__all__ = ["ModifierSpec", "Recipe", "RecipeError", "RecipeProblem", "StageSpec"]

DEFAULT_STAGE: Final = "default_stage"
_SCHEDULE_FIELDS: Final = ("start", "end", "update")
_STAGE_SET_FIELDS: Final = ("group", "index")


@attrs.frozen
class RecipeProblem:
    """One thing wrong with a recipe: where (``stage / group / ClassName / field``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class RecipeError(LifecycleError, ValueError):
    """A recipe that cannot be read or would not run; nothing was built.

    Attributes:
        origin: where the recipe came from (a path, ``<string>`` or ``<dict>``).
        problems: every problem found, each with its path in the recipe.
    """

    def __init__(self, origin: str, problems: list[RecipeProblem]) -> None:
        listed = "\n".join(f"  - {problem}" for problem in problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"recipe {origin} has {count}:\n{listed}")
        self.origin = origin
        self.problems = tuple(problems)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _thaw(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thaw(item) for item in value]
    return value


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    frozen: Mapping[str, Any] = _freeze(dict(value))
    return frozen


@attrs.frozen(unsafe_hash=False)
class ModifierSpec:
    """One modifier of a recipe.

    Specs compare by value and are not hashable (their arguments may hold any
    YAML value); ``hash()`` raises ``TypeError``, as for a dict.

    Attributes:
        type: the modifier class name the factory looks up.
        args: its arguments, deep-frozen (mappings read-only, lists as tuples).
        group: the group it was listed in (``"pruning"`` for ``pruning_modifiers``).
        index: its position within the stage, counting across groups.
    """

    type: str
    args: Mapping[str, Any] = attrs.field(converter=_frozen_mapping, factory=dict)
    group: str = ""
    index: int = 0

    def kwargs(self) -> dict[str, Any]:
        """The arguments as plain dicts and lists, ready for the modifier class."""
        thawed: dict[str, Any] = _thaw(self.args)
        return thawed


@attrs.frozen(unsafe_hash=False)
class StageSpec:
    """One stage: its name, its modifiers in order, and its other keys (``run_type``...).

    Compares by value; not hashable, like :class:`ModifierSpec`.
    """

    name: str
    modifiers: tuple[ModifierSpec, ...] = ()
    args: Mapping[str, Any] = attrs.field(converter=_frozen_mapping, factory=dict)


@attrs.frozen(unsafe_hash=False)
class Recipe:
    """A parsed recipe: stages in order, and the top-level keys that are not stages.

    Compares by value (``origin`` aside); not hashable, like :class:`ModifierSpec`.
    """

    stages: tuple[StageSpec, ...] = ()
    args: Mapping[str, Any] = attrs.field(converter=_frozen_mapping, factory=dict)
    origin: str = attrs.field(default="<dict>", eq=False, repr=False)

    # --- reading ------------------------------------------------------------------------------

    @classmethod
    def load(cls, source: str | os.PathLike[str] | Mapping[str, Any]) -> Recipe:
        """Read a recipe from a path, a YAML string or a dict.

        A str is a path if a file of that name exists, or if it ends in ``.yaml``
        or ``.yml`` (then a missing file is an error); otherwise it is YAML text.
        A single line without ``:`` that names no file (``"my_recipe"``) cannot be
        a recipe, so it is reported as a missing file.

        Raises:
            RecipeError: the file is missing, the YAML is malformed, or the shape
                is not a recipe; every structural problem is listed.
        """
        if isinstance(source, Mapping):
            return cls.from_dict(source, origin="<dict>")
        if isinstance(source, os.PathLike) or (
            isinstance(source, str)
            and "\n" not in source
            and (os.path.isfile(source) or source.endswith((".yaml", ".yml")))
        ):
            path = Path(source)
            try:
                text = yaml_input.read_file(path)
            except yaml_input.YamlRefused as refused:
                raise _refused(str(path), refused) from None
            except OSError as error:
                what = (
                    "it is a folder, not a file"
                    if path.is_dir()
                    else f"cannot read the file: {error.strerror}"
                )
                raise RecipeError(
                    str(path),
                    [
                        RecipeProblem(
                            "",
                            f"{what}. To fix, pass the path of an existing recipe file.",
                        )
                    ],
                ) from None
            return cls.from_yaml(text, origin=str(path))
        if isinstance(source, str):
            if _looks_like_a_path(source):
                raise RecipeError(source, [_missing_file(source)])
            return cls.from_yaml(source, origin="<string>")
        raise RecipeError(
            "<unknown>",
            [
                RecipeProblem(
                    "",
                    f"cannot read a recipe from {type(source).__name__}. To fix, "
                    "pass a path, YAML text or a dict.",
                )
            ],
        )

    @classmethod
    def from_yaml(cls, text: str, *, origin: str = "<string>") -> Recipe:
        """Parse YAML text: plain data only, within bounds (see :mod:`.yaml_input`)."""
        try:
            data = yaml_input.load(text)
        except yaml_input.YamlRefused as refused:
            raise _refused(origin, refused) from None
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark
            where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
            raise RecipeError(
                origin,
                [
                    RecipeProblem(
                        where,
                        f"{error.problem or error}. To fix, check the YAML syntax "
                        "(indentation, ':' and quotes) at that position.",
                    )
                ],
            ) from None
        except yaml.YAMLError as error:
            problem = f"unreadable YAML: {error}. To fix, write the recipe as plain YAML text."
            raise RecipeError(origin, [RecipeProblem("", problem)]) from None
        if data is None:
            data = {}
        return cls.from_dict(data, origin=origin)

    @classmethod
    def from_dict(cls, data: Any, *, origin: str = "<dict>") -> Recipe:
        """Parse the recipe's structure (types and arguments are checked by :meth:`validate`)."""
        parser = _Parser()
        recipe = parser.recipe(data, origin)
        if parser.problems:
            raise RecipeError(origin, parser.problems)
        return recipe

    # --- writing ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain data, with ``<name>_stage`` keys (or ``stages:`` if needed)."""
        stages = {stage.name: _stage_body(stage) for stage in self.stages}
        args: dict[str, Any] = _thaw(self.args)
        if all(name.endswith("_stage") for name in stages) and "stages" not in args:
            return {**args, **stages}
        return {**args, "stages": stages}

    def to_yaml(self) -> str:
        """The recipe as YAML that :meth:`load` reads back to an equal recipe."""
        # Non-ASCII is written escaped: PyYAML writes some characters raw that it
        # reads back differently (U+0085 NEL becomes a space), found by the round trip.
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=False)

    # --- checking and building ----------------------------------------------------------------

    def problems(
        self, *, allow_registered: bool = True, allow_experimental: bool = False
    ) -> list[RecipeProblem]:
        """Everything that would stop this recipe from building or running.

        Builds each modifier once (when its arguments passed the other checks) to
        run the class's own checks, and discards it; any exception it raises is
        a problem here.
        """
        found: list[RecipeProblem] = []
        if not any(stage.modifiers for stage in self.stages):
            found.append(
                RecipeProblem(
                    "",
                    "the recipe defines no modifiers. To fix, add a "
                    "stage with a *_modifiers group.",
                )
            )
        for stage in self.stages:
            if not stage.modifiers:
                found.append(
                    RecipeProblem(
                        stage.name,
                        "the stage has no modifiers. To fix, "
                        "add a *_modifiers group or remove the stage.",
                    )
                )
            for spec in stage.modifiers:
                found.extend(_check_modifier(stage, spec, allow_registered, allow_experimental))
        return found

    def validate(self, *, allow_registered: bool = True, allow_experimental: bool = False) -> None:
        """Raise :class:`RecipeError` listing every problem, if there is any."""
        found = self.problems(
            allow_registered=allow_registered, allow_experimental=allow_experimental
        )
        if found:
            raise RecipeError(self.origin, found)

    def build(
        self, *, allow_registered: bool = True, allow_experimental: bool = False
    ) -> list[StageModifiers]:
        """Validate, then build one :class:`StageModifiers` per stage (group = stage name)."""
        self.validate(allow_registered=allow_registered, allow_experimental=allow_experimental)
        stages = []
        for position, stage in enumerate(self.stages):
            modifiers: list[Modifier] = [
                ModifierFactory.create(
                    spec.type, allow_registered, allow_experimental, **spec.kwargs()
                )
                for spec in stage.modifiers
            ]
            stages.append(StageModifiers(modifiers, index=position, group=stage.name))
        return stages


def _refused(origin: str, refused: yaml_input.YamlRefused) -> RecipeError:
    return RecipeError(origin, [RecipeProblem(refused.where, refused.message)])


def _looks_like_a_path(source: str) -> bool:
    """A single line with no ``:`` (no YAML mapping) that is not a flow collection or blank."""
    text = source.strip()
    return (
        "\n" not in text and ":" not in text and bool(text) and not text.startswith(("{", "[", "#"))
    )


def _missing_file(source: str) -> RecipeProblem:
    near = [f"{source}{suffix}" for suffix in (".yaml", ".yml") if os.path.isfile(source + suffix)]
    hint = f"did you mean {near[0]!r}? " if near else ""
    where = "" if os.path.isabs(source) else f" (relative to {os.getcwd()})"
    return RecipeProblem(
        "",
        f"no file {source!r} exists{where}, and as YAML text it is not a "
        f"recipe (it has no 'key: value'). To fix, {hint}pass the path of an existing "
        "recipe file, or recipe YAML text.",
    )


def _stage_body(stage: StageSpec) -> dict[str, Any]:
    body: dict[str, Any] = _thaw(stage.args)
    groups: dict[str, list[ModifierSpec]] = {}
    for spec in stage.modifiers:
        groups.setdefault(spec.group, []).append(spec)
    for group, specs in groups.items():
        key = f"{group}_modifiers" if group else "modifiers"
        if len({spec.type for spec in specs}) == len(specs):
            body[key] = {spec.type: spec.kwargs() for spec in specs}
        else:
            body[key] = [{spec.type: spec.kwargs()} for spec in specs]
    return body


def _is_group(key: str) -> bool:
    return key == "modifiers" or key.endswith("_modifiers")


def _group_name(key: str) -> str:
    return "" if key == "modifiers" else key.removesuffix("_modifiers")


def _group_keys(value: Any) -> list[str]:
    """The ``*_modifiers`` keys of a stage-shaped value."""
    if not isinstance(value, Mapping):
        return []
    return [key for key in value if isinstance(key, str) and _is_group(key)]


def _modifier_names(value: Any) -> list[str]:
    """The ``*Modifier`` keys of a group-shaped value (a mapping, or a list of mappings)."""
    items = [value] if isinstance(value, Mapping) else value if isinstance(value, list) else []
    return [
        key
        for item in items
        if isinstance(item, Mapping)
        for key in item
        if isinstance(key, str) and key.endswith("Modifier")
    ]


def _respelled(key: str, word: str) -> str:
    """The key spelled with the ``_modifiers`` / ``_stage`` suffix, its near-miss replaced."""
    head, underscore, last = key.rpartition("_")
    if difflib.SequenceMatcher(None, last.lower(), word).ratio() >= 0.6:
        if not underscore:
            return word if word == "modifiers" else "<name>_stage"
        key = head
    return f"{key}_{word}"


def _misspelled_group(key: str, modifier_names: list[str], read_as: str) -> str:
    return (
        f"this looks like a modifier group (it names {modifier_names[0]}), but a group's key "
        f"must end in '_modifiers', so it would be read as {read_as}. To fix, rename it to "
        f"{_respelled(key, 'modifiers')!r}."
    )


class _Parser:
    """Turns recipe data into specs, collecting structural problems instead of stopping."""

    def __init__(self) -> None:
        self.problems: list[RecipeProblem] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(RecipeProblem(path, message))

    def recipe(self, data: Any, origin: str) -> Recipe:
        if not isinstance(data, Mapping):
            self.problem(
                "",
                f"a recipe is a mapping of stages, got {type(data).__name__}. "
                "To fix, start the file with '<name>_stage:'.",
            )
            return Recipe(origin=origin)
        stages: list[StageSpec] = []
        args: dict[str, Any] = {}
        default_groups: dict[str, Any] = {}
        default_at: int | None = None
        for key, value in data.items():
            if not isinstance(key, str):
                self.problem(str(key), "recipe keys must be strings. To fix, quote the key.")
            elif key == "stages":
                if not isinstance(value, Mapping):
                    self.problem(
                        "stages",
                        f"expected a mapping of stage names to stages, got "
                        f"{type(value).__name__}. To fix, indent the stages under it.",
                    )
                    continue
                for name, body in value.items():
                    stages.append(self.stage(str(name), body))
            elif key.endswith("_stage"):
                stages.append(self.stage(key, value))
            elif _is_group(key):
                if default_at is None:
                    default_at = len(stages)
                default_groups[key] = value
            elif group_keys := _group_keys(value):
                self.problem(
                    key,
                    f"this looks like a stage (it has the group {group_keys[0]!r}), but a "
                    "stage's key must end in '_stage', so it would be read as a recipe "
                    f"argument. To fix, rename it to {_respelled(key, 'stage')!r} (or list "
                    "it under 'stages:').",
                )
            elif modifier_names := _modifier_names(value):
                self.problem(key, _misspelled_group(key, modifier_names, "a recipe argument"))
            else:
                args[key] = value
        if default_at is not None:
            stages.insert(default_at, self.stage(DEFAULT_STAGE, default_groups))
        seen: set[str] = set()
        for stage in stages:
            if stage.name in seen:
                self.problem(
                    stage.name,
                    "this stage name is used twice. To fix, give each stage its own name.",
                )
            seen.add(stage.name)
        return Recipe(tuple(stages), args, origin=origin)

    def stage(self, name: str, body: Any) -> StageSpec:
        if body is None:
            body = {}
        if not isinstance(body, Mapping):
            self.problem(
                name,
                f"a stage is a mapping of *_modifiers groups, got "
                f"{type(body).__name__}. To fix, indent its groups under it.",
            )
            return StageSpec(name)
        modifiers: list[ModifierSpec] = []
        args: dict[str, Any] = {}
        group_keys: dict[str, str] = {}  # group name -> the key that named it
        for key, value in body.items():
            if isinstance(key, str) and _is_group(key):
                group = _group_name(key)
                if group in group_keys:
                    self.problem(
                        f"{name} / {key}",
                        f"{group_keys[group]!r} and {key!r} both name the group {group!r}. "
                        f"To fix, merge them into one {group_keys[group]!r} group.",
                    )
                    continue
                group_keys[group] = key
                for type_, spec_args in self.entries(f"{name} / {key}", value):
                    modifiers.append(ModifierSpec(type_, spec_args, group, len(modifiers)))
            elif isinstance(key, str) and (modifier_names := _modifier_names(value)):
                self.problem(
                    f"{name} / {key}", _misspelled_group(key, modifier_names, "a stage argument")
                )
            else:
                args[str(key)] = value
        return StageSpec(name, tuple(modifiers), args)

    def entries(self, path: str, group: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
        """The (ClassName, args) pairs of a group, in order."""
        if isinstance(group, Mapping):
            pairs = list(group.items())
        elif isinstance(group, list):
            pairs = []
            for position, item in enumerate(group):
                if isinstance(item, Mapping) and len(item) == 1:
                    pairs.extend(item.items())
                else:
                    self.problem(
                        f"{path} / [{position}]",
                        "each list entry is a one-key "
                        "mapping 'ClassName: {args}'. To fix, write it that way.",
                    )
        else:
            self.problem(
                path,
                f"a group maps modifier class names to their arguments, got "
                f"{type(group).__name__}. To fix, list 'ClassName:' entries under it.",
            )
            return
        for type_, args in pairs:
            if not isinstance(type_, str):
                self.problem(f"{path} / {type_}", "a modifier class name must be a string.")
                continue
            if args is None:
                args = {}
            if not isinstance(args, Mapping):
                self.problem(
                    f"{path} / {type_}",
                    f"arguments are a mapping, got "
                    f"{type(args).__name__}. To fix, write 'name: value' pairs.",
                )
                continue
            bad_keys = [key for key in args if not isinstance(key, str)]
            if bad_keys:
                self.problem(
                    f"{path} / {type_}",
                    f"argument names must be strings, got {bad_keys}. To fix, quote them.",
                )
                continue
            yield type_, args


def _check_modifier(
    stage: StageSpec, spec: ModifierSpec, allow_registered: bool, allow_experimental: bool
) -> Iterator[RecipeProblem]:
    group_key = f"{spec.group}_modifiers" if spec.group else "modifiers"
    path = f"{stage.name} / {group_key} / {spec.type}"
    try:
        cls = ModifierFactory.lookup(spec.type, allow_registered, allow_experimental)
    except (LifecycleError, ImportError) as error:
        yield RecipeProblem(path, str(error))
        return
    args = spec.kwargs()
    rejected: set[str] = set()
    for name in _STAGE_SET_FIELDS:
        if name in args:
            rejected.add(name)
            yield RecipeProblem(
                f"{path} / {name}",
                f"{name} is set by the stage. To fix, remove it from the recipe.",
            )
    for name in _SCHEDULE_FIELDS:
        value = args.get(name)
        problem = None
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            problem = (
                f"{name} must be a number, got {value!r} ({type(value).__name__}). To fix, "
                "write a number such as 0 or 2.5, or leave it out."
            )
        elif not math.isfinite(value):
            problem = (
                f"{name} must be finite, got {value!r}. To fix, write a finite number or "
                "leave it out."
            )
        elif name == "update" and value < 0:
            problem = (
                f"update must be >= 0, got {value!r}. To fix, give the interval as a positive "
                "number (0: every step)."
            )
        if problem is not None:
            rejected.add(name)
            yield RecipeProblem(f"{path} / {name}", problem)
    start, end = args.get("start"), args.get("end")
    if (
        not rejected & {"start", "end"}
        and isinstance(start, int | float)
        and isinstance(end, int | float)
        and end < start
    ):
        rejected.add("end")
        yield RecipeProblem(
            f"{path} / end",
            f"end ({end!r}) is before start ({start!r}). "
            "To fix, make end >= start (or leave end out to never end).",
        )
    owner = cls.__name__
    accepted, required, open_ended = ModifierFactory.parameters(cls)
    shown = sorted(accepted - set(_STAGE_SET_FIELDS))
    accepts = f"{owner} accepts: {', '.join(shown) or 'no arguments'}."
    incomplete = False
    for name, value in args.items():
        if open_ended or name in accepted:
            continue
        incomplete = True
        close = difflib.get_close_matches(name, shown, n=1, cutoff=0.75)
        guess = f"; did you mean {close[0]!r}?" if close else ""
        yield RecipeProblem(
            f"{path} / {name}",
            f"unknown argument {name!r} (given {_shown(value)}{guess}). {accepts} To fix, "
            "rename it to one of those names or remove it.",
        )
    annotations = field_annotations(cls)
    for name in required:
        if name not in args:
            incomplete = True
            wanted = f" ({describe(annotations[name])})" if name in annotations else ""
            yield RecipeProblem(
                f"{path} / {name}",
                f"missing required argument {name!r}{wanted}. {accepts} To fix, add "
                f"'{name}: <value>' to its arguments.",
            )
    for name, value in args.items():
        if name in rejected or name not in annotations:
            continue
        found = mismatch(value, annotations[name])
        if found is not None:
            rejected.add(name)
            yield RecipeProblem(
                f"{path} / {name}",
                _type_message(owner, name, value, annotations[name], found, name in required),
            )
    if incomplete or rejected & set(required):
        return  # the class cannot be built from these arguments
    # Build one, to run the class's own argument checks, and discard it. Modifier
    # constructors have no side effects (the work starts at initialize).
    try:
        cls(**{name: value for name, value in args.items() if name not in rejected})
    except Exception as error:
        yield _constructor_problem(path, owner, error)


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_message(
    owner: str, name: str, value: Any, annotation: Any, found: Mismatch, required: bool
) -> str:
    expected = describe(annotation)
    where = f": {found.explain()}" if found.where else ""
    default = "" if required else f", or leave {name} out to use its default"
    return (
        f"{owner}.{name} must be {expected}, got {_shown(value)} "
        f"({type(value).__name__}){where}. To fix, write a value of type {expected}{default}."
    )


def _constructor_problem(path: str, owner: str, error: Exception) -> RecipeProblem:
    """A problem for an exception the class raised while being built to check it."""
    field = getattr(error, "field", None)
    message = str(error).strip()
    args = error.args
    if len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], attrs.Attribute):
        # attrs' own validators (instance_of, in_, ...) raise (message, attribute, ...).
        field, message = args[1].alias or args[1].name, args[0]
    if not isinstance(error, LifecycleError):
        if not message.endswith((".", "!", "?")):
            message += "."
        if "To fix" not in message:
            message += f" To fix, change the argument {owner} rejects."
        message = f"{owner}(...) raised {type(error).__name__}: {message}"
    return RecipeProblem(f"{path} / {field}" if isinstance(field, str) else path, message)
