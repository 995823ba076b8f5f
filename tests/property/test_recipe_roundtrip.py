"""Recipe round trips: recipe -> YAML -> recipe gives an equal value."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from engine.recipe import ModifierSpec, Recipe, StageSpec

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
