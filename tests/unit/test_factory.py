"""ModifierFactory: registries, lookup order, remembered errors, clear messages."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from engine import ConfigError, ConfigTypeError, Modifier, State
from engine.factory import ModifierFactory, ModifierImportError, UnknownModifierError
from tests.doubles import NoopModifier

FAKE = "tests.fixtures.fake_modifiers"


@pytest.fixture
def factory(monkeypatch: pytest.MonkeyPatch) -> type[ModifierFactory]:
    """The factory pointed at the fake packages, with its registries restored afterwards."""
    for name in ("_main_registry", "_experimental_registry", "_registered_registry", "_errors"):
        monkeypatch.setattr(ModifierFactory, name, {})
    monkeypatch.setattr(ModifierFactory, "_loaded", False)
    monkeypatch.setattr(ModifierFactory, "main_package", FAKE)
    monkeypatch.setattr(ModifierFactory, "experimental_package", f"{FAKE}.experimental")
    return ModifierFactory


def test_refresh_finds_concrete_modifiers_defined_in_each_package(
    factory: type[ModifierFactory],
) -> None:
    factory.refresh()
    assert factory.known() == {
        "main": ("AlphaModifier", "DeepModifier", "NeedsTargetsModifier"),
        "experimental": ("TrialModifier",),
        "registered": (),
    }


def test_only_modules_under_the_packages_are_imported(
    factory: type[ModifierFactory], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in sys.modules if n.startswith(FAKE)]:
        monkeypatch.delitem(sys.modules, name)
    before = set(sys.modules)
    factory.refresh()
    new = set(sys.modules) - before
    ancestors = {FAKE.rsplit(".", n)[0] for n in range(1, FAKE.count(".") + 1)}
    assert new
    assert all(name.startswith(FAKE) or name in ancestors for name in new), sorted(new)


def test_load_from_package_refuses_other_packages(factory: type[ModifierFactory]) -> None:
    with pytest.raises(ConfigError, match=r"only the modifier packages"):
        factory.load_from_package("json")


def test_create_builds_with_arguments(factory: type[ModifierFactory]) -> None:
    made = factory.create("AlphaModifier", strength=0.5, start=1)
    assert type(made).__name__ == "AlphaModifier"
    assert (made.strength, made.start) == (0.5, 1)  # type: ignore[attr-defined]  # AlphaModifier's field


def test_experimental_modifiers_need_allow_experimental(factory: type[ModifierFactory]) -> None:
    with pytest.raises(UnknownModifierError, match=r"it is experimental.*allow_experimental=True"):
        factory.create("TrialModifier")
    assert type(factory.create("TrialModifier", allow_experimental=True)).__name__ == (
        "TrialModifier"
    )


def test_registered_classes_come_first_when_allowed(factory: type[ModifierFactory]) -> None:
    class Replacement(NoopModifier):
        pass

    factory.register("AlphaModifier", Replacement)
    assert type(factory.create("AlphaModifier", allow_registered=True)) is Replacement
    assert type(factory.create("AlphaModifier", allow_registered=False)).__name__ == (
        "AlphaModifier"
    )
    factory.refresh()  # keeps registered classes, as in the reference
    assert type(factory.create("AlphaModifier")) is Replacement


def test_a_failed_import_is_re_raised_for_the_classes_the_module_defines(
    factory: type[ModifierFactory],
) -> None:
    factory.refresh()
    with pytest.raises(ModifierImportError, match=r"broken failed to import") as caught:
        factory.create("BrokenModifier")
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    assert "this_module_does_not_exist" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("HalfDoneModifier", r"good.HalfDoneModifier is abstract \(missing on_initialize\)"),
        ("StringModifier", r"good.StringModifier is not a class"),
        ("NotReallyModifier", r"good.NotReallyModifier does not subclass engine.Modifier"),
    ],
)
def test_names_that_are_not_modifier_classes_are_remembered_errors(
    factory: type[ModifierFactory], name: str, message: str
) -> None:
    with pytest.raises(ConfigTypeError, match=message):
        factory.create(name)


def test_an_unknown_type_lists_the_closest_names(factory: type[ModifierFactory]) -> None:
    with pytest.raises(UnknownModifierError) as caught:
        factory.create("AlphaModifer")
    assert caught.value.suggestions == ("AlphaModifier",)
    assert "Did you mean AlphaModifier?" in str(caught.value)
    assert "Known types: AlphaModifier, DeepModifier, NeedsTargetsModifier" in str(caught.value)
    with pytest.raises(UnknownModifierError, match=r"Did you mean DeepModifier\?"):
        factory.create("deepmodifier")


def test_arguments_are_checked_against_the_class(factory: type[ModifierFactory]) -> None:
    with pytest.raises(ConfigTypeError, match=r"unknown argument\(s\) \['strenght'\].*strength"):
        factory.create("AlphaModifier", strenght=2.0)
    with pytest.raises(ConfigTypeError, match=r"missing required argument\(s\) \['targets'\]"):
        factory.create("NeedsTargetsModifier")


def test_register_rejects_what_it_cannot_create(factory: type[ModifierFactory]) -> None:
    class Abstract(Modifier):
        pass

    class Concrete(Modifier):
        def on_initialize(self, state: State, **kwargs: Any) -> bool:
            return True

    with pytest.raises(ConfigTypeError, match=r"is not a class"):
        factory.register("X", Concrete())
    with pytest.raises(ConfigTypeError, match=r"dict does not subclass engine.Modifier"):
        factory.register("X", dict)
    with pytest.raises(ConfigTypeError, match=r"Abstract is abstract \(missing on_initialize\)"):
        factory.register("X", Abstract)
    with pytest.raises(ConfigTypeError, match=r"type_ must be a non-empty str"):
        factory.register("", Concrete)
    assert factory.known()["registered"] == ()
    factory.register("X", Concrete)
    assert factory.known()["registered"] == ("X",)


def test_the_real_packages_load_without_errors() -> None:
    ModifierFactory.refresh()
    assert ModifierFactory._errors == {}
