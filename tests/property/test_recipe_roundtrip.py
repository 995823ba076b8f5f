"""Recipe round trips: recipe -> YAML -> recipe gives an equal value.

The claim (specs/recipe.md section 2) is for the recipes ``Recipe.load`` returns
(whose arguments hold no NaN), and values built in the same canonical form. The
first two tests generate recipe *data* in every shape the reference accepts and
load it; the other two build canonical values directly.
"""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given, reject
from hypothesis import strategies as st

from modfsm.engine.config.recipe import ModifierSpec, Recipe, RecipeError, StageSpec

identifiers = st.builds(str.__add__, st.sampled_from("abcxyz"), st.text("abcxyz019_", max_size=8))


def plain_key(name: str) -> bool:
    """A key that parses as an argument, not as a stage or a group."""
    return name != "stages" and not name.endswith(("_stage", "modifiers"))


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**62), max_value=2**62),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(identifiers, inner, max_size=3)
    ),
    max_leaves=8,
)
arguments = st.dictionaries(identifiers, values, max_size=4)
class_names = st.sampled_from(["ConstantPruningModifier", "QuantizationModifier", "XModifier"])


@st.composite
def group_bodies(draw: st.DrawFn) -> Any:
    """A group: ``{ClassName: args}``, or a list of one-key mappings (a class twice)."""
    entries = draw(st.lists(st.tuples(class_names, st.none() | arguments), max_size=3))
    if len({type_ for type_, _ in entries}) == len(entries) and draw(st.booleans()):
        return dict(entries)
    return [{type_: args} for type_, args in entries]


group_keys = st.sampled_from(["modifiers", "_modifiers"]) | identifiers.map(
    lambda name: f"{name}_modifiers"
)


def loaded(data: dict[str, Any]) -> Recipe:
    """``Recipe.load(data)``; data it refuses for naming one group twice is outside the claim."""
    try:
        return Recipe.load(data)
    except RecipeError as error:
        if all("both name the group" in problem.message for problem in error.problems):
            reject()
        raise


@st.composite
def stage_bodies(draw: st.DrawFn) -> dict[str, Any] | None:
    groups = draw(st.dictionaries(group_keys, group_bodies(), max_size=3))
    args = draw(st.dictionaries(identifiers.filter(plain_key), values, max_size=2))
    items = draw(st.permutations([*groups.items(), *args.items()]))
    written_empty = draw(st.booleans())  # `name_stage:` with no body reads as an empty stage
    return dict(items) if items or written_empty else None


@st.composite
def recipe_data(draw: st.DrawFn) -> dict[str, Any]:
    """Recipe data as users write it: ``*_stage`` keys, ``stages:``, top-level groups, args."""
    names = st.one_of(identifiers, identifiers.map(lambda name: f"{name}_stage"))
    keyed = draw(st.lists(identifiers.map(lambda name: f"{name}_stage"), max_size=3, unique=True))
    listed = draw(st.lists(names.filter(lambda n: n not in keyed), max_size=2, unique=True))
    items: list[tuple[str, Any]] = [(name, draw(stage_bodies())) for name in keyed]
    if listed:
        items.append(("stages", {name: draw(stage_bodies()) for name in listed}))
    items += draw(st.dictionaries(group_keys, group_bodies(), max_size=2)).items()
    items += draw(st.dictionaries(identifiers.filter(plain_key), values, max_size=2)).items()
    return dict(draw(st.permutations(items)))


@given(recipe_data())
def test_a_loaded_recipe_to_yaml_and_back_is_equal(data: dict[str, Any]) -> None:
    recipe = loaded(data)
    assert Recipe.load(yaml.safe_dump(data, sort_keys=False)) == recipe  # YAML reads alike
    assert Recipe.load(recipe.to_yaml()) == recipe


@given(recipe_data())
def test_a_loaded_recipe_to_dict_and_back_is_equal(data: dict[str, Any]) -> None:
    recipe = loaded(data)
    assert Recipe.load(recipe.to_dict()) == recipe


@st.composite
def stages(draw: st.DrawFn, name: str) -> StageSpec:
    groups = draw(st.lists(st.one_of(st.just(""), identifiers), max_size=3, unique=True))
    modifiers: list[ModifierSpec] = []
    for group in groups:
        for type_ in draw(st.lists(class_names, min_size=1, max_size=3)):
            modifiers.append(ModifierSpec(type_, draw(arguments), group, len(modifiers)))
    args = draw(st.dictionaries(identifiers.filter(plain_key), values, max_size=2))
    return StageSpec(name, tuple(modifiers), args)


@st.composite
def recipes(draw: st.DrawFn) -> Recipe:
    stage_name = st.one_of(identifiers.map(lambda n: f"{n}_stage"), identifiers)
    names = draw(st.lists(stage_name, max_size=4, unique=True))
    args = draw(st.dictionaries(identifiers.filter(plain_key), values, max_size=2))
    return Recipe(tuple(draw(stages(name)) for name in names), args)


@given(recipes())
def test_recipe_to_yaml_and_back_is_equal(recipe: Recipe) -> None:
    text = recipe.to_yaml()
    assert Recipe.load(text) == recipe


@given(recipes())
def test_recipe_to_dict_and_back_is_equal(recipe: Recipe) -> None:
    assert Recipe.load(recipe.to_dict()) == recipe


def test_a_dict_with_tuples_reads_like_one_with_lists() -> None:
    data: dict[str, Any] = {"a_stage": {"modifiers": {"XModifier": {"targets": ("a", "b")}}}}
    assert Recipe.load(data).stages[0].modifiers[0].args["targets"] == ("a", "b")
