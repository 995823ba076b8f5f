"""Recipes: reading the reference formats, validating before anything runs, building stages."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

from modfsm.engine import Event, EventType, Modifier, State
from modfsm.engine.config.factory import ModifierFactory
from modfsm.engine.config.recipe import ModifierSpec, Recipe, RecipeError, StageSpec
from modfsm.engine.runtime.stage import StageModifiers
from tests.recipes.doubles import DOUBLES

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
GOOD = sorted((RECIPES / "good").glob("*.yaml"))
BAD = sorted((RECIPES / "bad").glob("*.yaml"))


@pytest.fixture(autouse=True)
def doubles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the test doubles for reference types modfsm does not ship yet."""
    monkeypatch.setattr(ModifierFactory, "_registered_registry", {})
    for cls in DOUBLES:
        ModifierFactory.register(cls.__name__, cls)


def expected_problems(path: Path) -> list[str]:
    prefix = "# expect: "
    return [
        line[len(prefix) :] for line in path.read_text().splitlines() if line.startswith(prefix)
    ]


def test_there_are_recipe_folders_to_check() -> None:
    assert len(GOOD) >= 5
    assert len(BAD) >= 15


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.stem)
def test_every_good_recipe_loads_validates_and_builds(path: Path) -> None:
    recipe = Recipe.load(path)
    recipe.validate()
    stages = recipe.build()
    assert [s.group for s in stages] == [s.name for s in recipe.stages]
    for position, (stage, spec) in enumerate(zip(stages, recipe.stages, strict=True)):
        assert stage.index == position
        assert [type(m).__name__ for m in stage.modifiers] == [m.type for m in spec.modifiers]
        assert [(m.group, m.index) for m in stage.modifiers] == [
            (spec.name, i) for i in range(len(spec.modifiers))
        ]


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_every_bad_recipe_fails_with_exactly_its_expected_problems(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = expected_problems(path)
    assert expected, f"{path.name} has no '# expect:' lines"

    def must_not_build(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a rejected recipe built a modifier")

    monkeypatch.setattr(ModifierFactory, "create", must_not_build)
    with pytest.raises(RecipeError) as caught:
        Recipe.load(path).build()
    assert [str(problem) for problem in caught.value.problems] == expected
    assert caught.value.origin == str(path)
    assert str(caught.value).startswith(f"recipe {path} has {len(expected)} problem")


def test_the_multi_stage_recipe_keeps_its_structure_and_extra_keys() -> None:
    recipe = Recipe.load(RECIPES / "good" / "sparsify_finetune_quantize.yaml")
    assert [s.name for s in recipe.stages] == [
        "sparsity_stage", "finetuning_stage", "quantization_stage",
    ]  # fmt: skip
    assert [dict(s.args) for s in recipe.stages] == [
        {"run_type": "train"}, {"run_type": "train"}, {"run_type": "oneshot"},
    ]  # fmt: skip
    first = recipe.stages[0].modifiers[0]
    assert (first.type, first.group, first.index) == ("MagnitudePruningModifier", "pruning", 0)
    assert first.args["targets"] == ("re:.*weight",)
    assert first.kwargs()["targets"] == ["re:.*weight"]


def test_top_level_groups_form_the_default_stage() -> None:
    recipe = Recipe.load(RECIPES / "good" / "oneshot_top_level_groups.yaml")
    (stage,) = recipe.stages
    assert stage.name == "default_stage"
    assert [(m.type, m.group, m.index) for m in stage.modifiers] == [
        ("SmoothQuantModifier", "smoothing", 0), ("GPTQModifier", "quantization", 1),
    ]  # fmt: skip
    built = recipe.build()[0].modifiers[1]
    groups = built.config_groups  # type: ignore[attr-defined]  # the stand-in class's own field
    assert groups["group_0"]["weights"]["num_bits"] == 4


def test_the_stages_mapping_form_and_top_level_keys() -> None:
    recipe = Recipe.load(RECIPES / "good" / "stages_mapping.yaml")
    assert [s.name for s in recipe.stages] == ["prune", "quantize"]
    assert dict(recipe.args) == {"version": 1.1}
    assert recipe.stages[1].modifiers[0].group == ""
    assert "stages:" in recipe.to_yaml()


def test_one_class_twice_gives_two_independent_instances() -> None:
    (stage,) = Recipe.load(RECIPES / "good" / "repeated_class.yaml").build()
    first, second = stage.modifiers
    assert type(first) is type(second)
    assert first is not second
    targets = (first.targets, second.targets)  # type: ignore[attr-defined]  # the class's own field
    assert targets == (["model.layers.0"], ["model.layers.1"])
    assert (first.index, second.index) == (0, 1)


def test_a_built_recipe_runs_through_its_stages() -> None:
    stages = Recipe.load(RECIPES / "good" / "sparsify_finetune_quantize.yaml").build()
    state = State()
    for stage in stages:
        stage.initialize(state)
        for step in range(3):
            stage.update_event(state, Event(EventType.BATCH_START, global_step=step))
            stage.update_event(state, Event(EventType.BATCH_END, global_step=step + 1))
        stage.finalize(state)
    assert all(isinstance(s, StageModifiers) and s.applied for s in stages)
    assert [m.lifecycle_state for m in stages[0].modifiers] == ["finalized_started"]
    assert [m.lifecycle_state for m in stages[2].modifiers] == ["finalized_started"]


def test_load_reads_paths_strings_and_dicts_alike() -> None:
    path = RECIPES / "good" / "epoch_schedule.yaml"
    from_path = Recipe.load(path)
    assert Recipe.load(str(path)) == from_path
    assert Recipe.load(path.read_text()) == from_path
    assert Recipe.load(from_path.to_dict()) == from_path
    assert from_path.stages[0].modifiers[0].args["update"] == 0.1


def test_load_reports_a_missing_file() -> None:
    with pytest.raises(RecipeError, match=r"(?s)recipe nowhere\.yaml has 1 problem.*cannot read"):
        Recipe.load("nowhere.yaml")


def test_a_bare_name_that_is_no_file_is_reported_as_a_missing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as caught:
        Recipe.load("my_recipe")
    assert caught.value.origin == "my_recipe"
    (problem,) = caught.value.problems
    assert str(problem) == (
        f"no file 'my_recipe' exists (relative to {os.getcwd()}), and as YAML text it is "
        "not a recipe (it has no 'key: value'). To fix, pass the path of an existing recipe "
        "file, or recipe YAML text."
    )
    (tmp_path / "my_recipe.yaml").write_text("a_stage:\n  modifiers: {}\n")
    with pytest.raises(RecipeError, match=r"To fix, did you mean 'my_recipe\.yaml'\? pass"):
        Recipe.load("my_recipe")
    assert Recipe.load("") == Recipe()  # empty text is an empty recipe, not a file name


def test_load_refuses_other_sources() -> None:
    with pytest.raises(RecipeError, match=r"cannot read a recipe from int"):
        Recipe.load(3)  # type: ignore[arg-type]  # on purpose


def test_yaml_tags_that_would_run_code_are_refused() -> None:
    text = "a_stage:\n  modifiers: !!python/object/apply:os.system ['true']\n"
    with pytest.raises(RecipeError, match=r"line 2: the tag !!python/object/apply:os.system is not "
                       r"plain data"):  # fmt: skip
        Recipe.load(text)


def test_specs_are_frozen_deeply() -> None:
    spec = ModifierSpec("X", {"targets": ["a"], "nested": {"k": [1]}})
    with pytest.raises(TypeError):
        spec.args["targets"] = ["b"]  # type: ignore[index]  # read-only on purpose
    assert spec.args["nested"]["k"] == (1,)
    assert spec.kwargs() == {"targets": ["a"], "nested": {"k": [1]}}


def test_to_yaml_writes_the_reference_format_and_reads_back_equal() -> None:
    recipe = Recipe(
        (
            StageSpec("a_stage", (ModifierSpec("QuantizationModifier", {"scheme": "W8A8"},
                                               "quantization", 0),), {"run_type": "oneshot"}),
        ),
        {"version": "1"},
    )  # fmt: skip
    text = recipe.to_yaml()
    assert text == (
        "version: '1'\n"
        "a_stage:\n"
        "  run_type: oneshot\n"
        "  quantization_modifiers:\n"
        "    QuantizationModifier:\n"
        "      scheme: W8A8\n"
    )
    assert Recipe.load(text) == recipe


def test_build_passes_the_allow_flags_to_the_factory() -> None:
    # A name only the registered registry has (modifiers/ may ship the doubles' names).
    ModifierFactory.register("OnlyRegisteredModifier", DOUBLES[0])
    recipe = Recipe.load("a_stage:\n  modifiers:\n    OnlyRegisteredModifier: {}\n")
    with pytest.raises(RecipeError, match=r"it is registered, but registered modifiers are not"):
        recipe.build(allow_registered=False)


def test_yaml_merge_keys_work_and_own_keys_override_them() -> None:
    recipe = Recipe.load(RECIPES / "good" / "merge_keys.yaml")
    first, second = recipe.stages[0].modifiers
    (constant,) = recipe.stages[1].modifiers
    assert first.kwargs() == {"targets": ["re:.*weight"], "start": 0, "end": 10}
    assert second.kwargs() == {
        "targets": ["re:.*weight"], "start": 0, "end": 20, "final_sparsity": 0.75,
    }  # fmt: skip
    assert constant.kwargs() == {"targets": ["re:.*weight"], "start": 20, "end": 30}


def test_a_mapping_merged_before_it_is_built_is_not_a_duplicate() -> None:
    # `shared` merges `inner` before `inner` itself is built (it lies deeper); both
    # override `end` of `base`, which is not a duplicate key.
    recipe = Recipe.load(
        "base: &base {start: 0, end: 10}\n"
        "a_stage:\n  modifiers:\n    QuantizationModifier: &inner\n"
        "      <<: *base\n      end: 5\n      scheme: W8A8\n"
        "shared: {<<: *inner}\n"
    )
    assert recipe.stages[0].modifiers[0].kwargs() == {"start": 0, "end": 5, "scheme": "W8A8"}
    assert dict(recipe.args["shared"]) == {"start": 0, "end": 5, "scheme": "W8A8"}


def test_a_key_written_twice_beside_a_merge_key_is_still_a_duplicate() -> None:
    text = (
        "base: &base {start: 0}\n"
        "a_stage:\n  modifiers:\n    QuantizationModifier:\n"
        "      <<: *base\n      end: 5\n      end: 6\n"
    )
    with pytest.raises(RecipeError, match=r"line 7: the key 'end' appears twice"):
        Recipe.load(text)


def test_genuine_stage_and_recipe_arguments_are_kept() -> None:
    recipe = Recipe.load(
        "version: 2\nmetadata: {author: me}\n"
        "a_stage:\n  run_type: oneshot\n  options: {seed: 1, layers: [a, b]}\n"
        "  modifiers:\n    QuantizationModifier: {scheme: W8A8}\n"
    )
    assert dict(recipe.stages[0].args) == {"run_type": "oneshot", "options": {
        "seed": 1, "layers": ("a", "b")}}  # fmt: skip
    assert set(recipe.args) == {"version", "metadata"}


def test_recipe_values_compare_by_value_and_are_not_hashable() -> None:
    spec = ModifierSpec("QuantizationModifier", {"scheme": "W8A8"})
    stage = StageSpec("a_stage", (spec,))
    recipe = Recipe((stage,))
    same_spec = ModifierSpec("QuantizationModifier", {"scheme": "W8A8"})
    assert recipe == Recipe((StageSpec("a_stage", (same_spec,)),))
    for value in (spec, ModifierSpec("X"), stage, recipe):
        assert type(value).__hash__ is None
        with pytest.raises(TypeError, match=rf"unhashable type: '{type(value).__name__}'"):
            hash(value)


@attrs.define(eq=False)
class CountingModifier(Modifier):
    """Keeps every instance; raises the error named by ``fail_with``."""

    built: ClassVar[list[Modifier]] = []
    fail_with: str = ""

    def __attrs_post_init__(self) -> None:
        self.built.append(self)
        if self.fail_with:
            raise {"RuntimeError": RuntimeError, "KeyError": KeyError}[self.fail_with]("boom")

    def on_initialize(self, state: State, **kwargs: Any) -> bool:
        return True


def test_validation_builds_each_modifier_once_and_discards_it() -> None:
    ModifierFactory.register("CountingModifier", CountingModifier)
    built = CountingModifier.built
    built.clear()
    recipe = Recipe.load({"a_stage": {"modifiers": {"CountingModifier": {}}}})
    recipe.validate()
    assert len(built) == 1  # built once for checking, then discarded
    (stage,) = recipe.build()
    assert len(built) == 3  # build validates again, then builds the one it returns
    assert stage.modifiers == [built[2]]


@pytest.mark.parametrize("error", ["RuntimeError", "KeyError"])
def test_an_exception_of_any_type_from_a_constructor_is_reported_with_its_path(
    error: str,
) -> None:
    ModifierFactory.register("CountingModifier", CountingModifier)
    recipe = Recipe.load({"a_stage": {"x_modifiers": {"CountingModifier": {"fail_with": error}}}})
    with pytest.raises(RecipeError) as caught:
        recipe.build()
    (problem,) = caught.value.problems
    assert problem.path == "a_stage / x_modifiers / CountingModifier"
    assert problem.message.startswith(f"CountingModifier(...) raised {error}: ")
    assert problem.message.endswith("To fix, change the argument CountingModifier rejects.")


def test_attrs_validator_errors_name_their_field() -> None:
    @attrs.define(eq=False)
    class ChoosyModifier(Modifier):
        mode: str = attrs.field(default="a", validator=attrs.validators.in_(["a", "b"]))

        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            return True

    ModifierFactory.register("ChoosyModifier", ChoosyModifier)
    with pytest.raises(RecipeError) as caught:
        Recipe.load({"a_stage": {"modifiers": {"ChoosyModifier": {"mode": "c"}}}}).validate()
    (problem,) = caught.value.problems
    assert problem.path == "a_stage / modifiers / ChoosyModifier / mode"
    assert problem.message.startswith("ChoosyModifier(...) raised ValueError: 'mode' must be in")


def test_a_missing_required_argument_of_the_wrong_type_is_not_built() -> None:
    with pytest.raises(RecipeError) as caught:
        Recipe.load({"a_stage": {"modifiers": {"ConstantPruningModifier": {"targets": 3}}}}).build()
    assert [problem.path for problem in caught.value.problems] == [
        "a_stage / modifiers / ConstantPruningModifier / targets"
    ]
    assert "must be str | list[str], got 3 (int)" in caught.value.problems[0].message
