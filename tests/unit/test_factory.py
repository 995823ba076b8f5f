"""ModifierFactory: registries, lookup order, remembered errors, clear messages."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modfsm.engine import ConfigError, ConfigTypeError, Modifier, State
from modfsm.engine.config.factory import ModifierFactory, ModifierImportError, UnknownModifierError
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
    monkeypatch.setattr(ModifierFactory, "entry_point_group", GROUP)
    monkeypatch.setattr(ModifierFactory, "_reported", set())
    return ModifierFactory


GROUP = "modfsm.tests.modifiers"
"""The entry-point group the tests declare in (no installed package uses it)."""


def declare(root: Path, distribution: str, points: dict[str, str]) -> None:
    """Write what pip leaves for a distribution declaring ``points`` in :data:`GROUP`."""
    info = root / f"{distribution}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n", encoding="utf-8"
    )
    lines = [f"[{GROUP}]", *(f"{name} = {value}" for name, value in points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def module(root: Path, name: str, source: str) -> None:
    (root / f"{name}.py").write_text(source, encoding="utf-8")


CONCRETE = "from modfsm.engine import Modifier\n\n\nclass {0}(Modifier):\n" \
    "    def on_initialize(self, state, **kwargs):\n        return True\n"  # fmt: skip


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for throwaway distributions; its modules are forgotten after."""
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", None) and str(tmp_path) in str(
            sys.modules[name].__file__
        ):
            del sys.modules[name]


def test_entry_points_add_modules_and_classes_to_the_main_registry(
    factory: type[ModifierFactory], site: Path
) -> None:
    module(site, "ep_walked", CONCRETE.format("WalkedModifier"))
    module(site, "ep_single", CONCRETE.format("SingleModifier") + CONCRETE.format("OtherModifier"))
    declare(site, "ep-dist", {"walked": "ep_walked", "single": "ep_single:SingleModifier"})
    factory.refresh()
    assert factory.known()["main"] == (
        "AlphaModifier", "DeepModifier", "NeedsTargetsModifier", "SingleModifier", "WalkedModifier"
    )  # fmt: skip
    assert type(factory.create("WalkedModifier")).__name__ == "WalkedModifier"
    assert "OtherModifier" not in factory.known()["main"]  # the class form takes one class
    # a module (not a package) is not walked further: nothing under it failed to import
    assert not [key for key in factory._errors if "ep_" in key], sorted(factory._errors)


def test_a_broken_entry_point_is_logged_once_and_hides_no_other_modifier(
    factory: type[ModifierFactory], site: Path, caplog: pytest.LogCaptureFixture
) -> None:
    module(site, "ep_broken", "import no_such_module_here\n\n\nclass GoneModifier:\n    pass\n")
    module(site, "ep_fine", CONCRETE.format("FineModifier"))
    declare(site, "ep-dist", {"broken": "ep_broken", "fine": "ep_fine"})
    with caplog.at_level("WARNING", logger="modfsm"):
        factory.refresh()
        factory.refresh()
    assert [r.getMessage() for r in caplog.records] == [
        f"modfsm: entry point 'broken' (ep_broken) of group {GROUP!r} failed to load "
        "(ModuleNotFoundError: No module named 'no_such_module_here'), so its modifiers are "
        "unavailable; the other modifiers are not affected. To fix, repair or uninstall the "
        "package that declares it."
    ]
    assert type(factory.create("FineModifier")).__name__ == "FineModifier"
    with pytest.raises(ModifierImportError, match=r"^entry point 'broken' \(ep_broken\)") as caught:
        factory.create("GoneModifier")
    assert str(caught.value).endswith("it defines GoneModifier.")


def test_entry_points_are_read_in_order_of_name_and_a_clash_names_both_entry_points(
    factory: type[ModifierFactory], site: Path
) -> None:
    module(site, "ep_second", CONCRETE.format("SharedModifier"))
    module(site, "ep_first", CONCRETE.format("SharedModifier"))
    declare(site, "ep-dist", {"zeta": "ep_second", "alpha": "ep_first"})
    with pytest.raises(ConfigError) as caught:
        factory.create("SharedModifier")
    assert str(caught.value) == (
        f"two classes are called SharedModifier: one from entry point 'alpha' (ep_first) of "
        f"group {GROUP!r}, one from entry point 'zeta' (ep_second) of group {GROUP!r}. To fix, "
        "uninstall one of the two packages or rename one class."
    )
    assert (caught.value.owner, caught.value.field, caught.value.value) == (
        "ModifierFactory", "SharedModifier", "ep_second"
    )  # fmt: skip


def test_a_broken_entry_point_keeps_its_import_error_as_the_cause(
    factory: type[ModifierFactory], site: Path
) -> None:
    module(site, "ep_raises", 'raise RuntimeError("no GPU")\n\n\nclass GpuModifier:\n    pass\n')
    declare(site, "ep-dist", {"gpu": "ep_raises"})
    with pytest.raises(ModifierImportError) as caught:
        factory.create("GpuModifier")
    assert str(caught.value) == (
        f"entry point 'gpu' (ep_raises) of group {GROUP!r} failed to import (RuntimeError: no "
        "GPU). To fix, repair that module; it defines GpuModifier."
    )
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_two_classes_of_one_name_are_an_error_for_that_name_only(
    factory: type[ModifierFactory], site: Path
) -> None:
    module(site, "ep_twin", CONCRETE.format("AlphaModifier") + CONCRETE.format("OwnModifier"))
    declare(site, "ep-dist", {"twin": "ep_twin"})
    with pytest.raises(ConfigError, match=r"two classes are called AlphaModifier: one from "
                       rf"{FAKE}, one from entry point 'twin' \(ep_twin\)") as caught:  # fmt: skip
        factory.create("AlphaModifier")
    assert str(caught.value).endswith(
        ". To fix, uninstall one of the two packages or rename one class."
    )
    assert (caught.value.owner, caught.value.field, caught.value.value) == (
        "ModifierFactory", "AlphaModifier", "ep_twin"
    )  # fmt: skip
    assert type(factory.create("OwnModifier")).__name__ == "OwnModifier"


def test_an_entry_point_naming_a_class_that_is_no_modifier_is_remembered(
    factory: type[ModifierFactory], site: Path
) -> None:
    module(site, "ep_plain", "class PlainModifier:\n    pass\n")
    declare(site, "ep-dist", {"plain": "ep_plain:PlainModifier"})
    with pytest.raises(ConfigTypeError, match=r"^entry point 'plain' \(ep_plain:PlainModifier\) "
                       r"of group .* does not subclass modfsm.engine.Modifier"):  # fmt: skip
        factory.create("PlainModifier")


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
        ("NotReallyModifier", r"good.NotReallyModifier does not subclass modfsm.engine.Modifier"),
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
    with pytest.raises(ConfigTypeError, match=r"dict does not subclass modfsm.engine.Modifier"):
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


def test_known_loads_the_packages_on_first_use(factory: type[ModifierFactory]) -> None:
    assert factory.known()["main"] == ("AlphaModifier", "DeepModifier", "NeedsTargetsModifier")


def test_names_are_compared_without_the_modifier_suffix_or_its_typos() -> None:
    from modfsm.engine.config.factory import _stem

    assert _stem("MagnitudePruningModifier") == "magnitudepruning"
    assert _stem("MagnitudePruningModifer") == "magnitudepruning"
    assert _stem("Modifier") == "modifier"  # nothing left: the whole name


def test_at_most_three_close_names_are_suggested() -> None:
    from modfsm.engine.config.factory import _closest

    known = ["AlphaModifier", "AlphbModifier", "AlphcModifier", "AlphdModifier"]
    assert _closest("AlphxModifier", known) == ("AlphaModifier", "AlphbModifier", "AlphcModifier")


def test_suggestions_come_closest_first_then_by_name() -> None:
    from modfsm.engine.config.factory import _closest

    known = ["ZetaModifier", "AlphbModifier", "AlphcModifier", "AlphaModifier"]
    assert _closest("AlphaModifer", known) == ("AlphaModifier", "AlphbModifier", "AlphcModifier")


def test_a_name_contained_in_a_known_name_is_suggested_though_not_close() -> None:
    from modfsm.engine.config.factory import _closest

    known = ["MagnitudePruningModifier", "QuantizationModifier"]
    assert _closest("Pruning", known) == ("MagnitudePruningModifier",)
    assert _closest("MagnitudePruningWithLotsOfExtras", known) == ("MagnitudePruningModifier",)


def test_unknown_names_the_type_and_the_fix_for_each_reason(
    factory: type[ModifierFactory],
) -> None:
    class OnlyRegistered(NoopModifier):
        pass

    factory.register("OnlyRegisteredModifier", OnlyRegistered)
    factory.refresh()
    experimental = factory.unknown("TrialModifier", True, False)
    assert str(experimental) == (
        "No modifier of type 'TrialModifier' found: it is experimental. To fix, pass "
        "allow_experimental=True."
    )
    assert (experimental.type_, experimental.suggestions) == ("TrialModifier", ("TrialModifier",))
    registered = factory.unknown("OnlyRegisteredModifier", False, False)
    assert str(registered) == (
        "No modifier of type 'OnlyRegisteredModifier' found: it is registered, but registered "
        "modifiers are not allowed here. To fix, pass allow_registered=True."
    )
    assert (registered.type_, registered.suggestions) == (
        "OnlyRegisteredModifier", ("OnlyRegisteredModifier",),
    )  # fmt: skip
    nothing_close = factory.unknown("Zzz", False, False)
    assert str(nothing_close) == (
        "No modifier of type 'Zzz' found. Known types: AlphaModifier, DeepModifier, "
        "NeedsTargetsModifier. To fix, use one of those names, or make your class known "
        f"(ModifierFactory.register(), an entry point of group {GROUP!r}, or modfsm "
        "run --import MODULE)."
    )
    assert (nothing_close.type_, nothing_close.suggestions) == ("Zzz", ())


def test_the_known_types_listed_follow_the_allowed_registries(
    factory: type[ModifierFactory],
) -> None:
    class OnlyRegistered(NoopModifier):
        pass

    factory.register("OnlyRegisteredModifier", OnlyRegistered)
    factory.refresh()
    everything = str(factory.unknown("Zzz", True, True))
    assert "Known types: AlphaModifier, DeepModifier, NeedsTargetsModifier, " in everything
    assert "OnlyRegisteredModifier, TrialModifier. To fix" in everything
    main_only = str(factory.unknown("Zzz", False, False))
    assert "OnlyRegisteredModifier" not in main_only
    assert "TrialModifier" not in main_only


def test_several_suggestions_are_joined_and_no_known_types_say_none(
    factory: type[ModifierFactory], monkeypatch: pytest.MonkeyPatch
) -> None:
    factory.refresh()
    error = factory.unknown("eModifier", True, True)  # "e" is in two names
    assert error.suggestions == ("DeepModifier", "NeedsTargetsModifier")
    assert "found. Did you mean DeepModifier, NeedsTargetsModifier? Known types:" in str(error)
    monkeypatch.setattr(ModifierFactory, "_main_registry", {})
    monkeypatch.setattr(ModifierFactory, "_experimental_registry", {})
    assert "Known types: none. To fix" in str(factory.unknown("Zzz", True, True))


def test_a_name_exactly_three_quarters_similar_is_suggested() -> None:
    from modfsm.engine.config.factory import _closest

    assert _closest("AbcdModifier", ["AbceModifier"]) == ("AbceModifier",)  # ratio 6/8


def test_a_module_whose_source_cannot_be_found_is_remembered_without_class_names(
    factory: type[ModifierFactory], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "namespace_only").mkdir()  # a namespace package: its spec has no origin
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("tests.fixtures.no_such_package.module", "namespace_only"):
        cause = ImportError("boom")
        factory._remember_import_error(name, cause)
        error = factory._errors[f"<module {name}>"]
        assert str(error) == (
            f"module {name} failed to import (ImportError: boom). To fix, repair that module; "
            "it defines no *Modifier class."
        )
        assert error.__cause__ is cause


def test_a_broken_modules_class_names_are_read_as_utf8_whatever_the_locale(
    factory: type[ModifierFactory], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import textwrap

    (tmp_path / "cafe_broken.py").write_text(
        "# café: not ASCII\nimport this_module_does_not_exist\n\n\n"
        "class CafeModifier:\n    pass\n\n\nclass CremeModifier:\n    pass\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    factory._remember_import_error("cafe_broken", ImportError("boom"))
    assert str(factory._errors["CafeModifier"]) == (
        "module cafe_broken failed to import (ImportError: boom). To fix, repair that module; "
        "it defines CafeModifier, CremeModifier."
    )
    script = textwrap.dedent(
        f"""
        import os, sys
        for key, value in os.environ.items():  # the C locale decodes them as ASCII; they
            os.environ[key] = os.fsencode(value).decode("utf-8")  # are UTF-8 (mutmut's ids)
        sys.path.insert(1, {str(tmp_path)!r})
        from modfsm.engine.config.factory import ModifierFactory
        ModifierFactory._remember_import_error("cafe_broken", ImportError("boom"))
        print(sorted(ModifierFactory._errors))
        """
    )
    env = {**__import__("os").environ, "LC_ALL": "C", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "['<module cafe_broken>', 'CafeModifier', 'CremeModifier']"


def test_a_broken_module_that_does_not_parse_is_remembered_without_class_names(
    factory: type[ModifierFactory], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bad_syntax.py").write_text("class HalfModifier(:\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    factory._remember_import_error("bad_syntax", SyntaxError("invalid syntax"))
    assert str(factory._errors["<module bad_syntax>"]).endswith("it defines no *Modifier class.")
    assert "HalfModifier" not in factory._errors


def test_a_package_that_raises_on_import_is_remembered_not_fatal(
    factory: type[ModifierFactory], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    boom = tmp_path / "tmp_mods" / "boom"
    boom.mkdir(parents=True)
    (tmp_path / "tmp_mods" / "__init__.py").write_text("", encoding="utf-8")
    (boom / "__init__.py").write_text(
        'raise RuntimeError("boom")\n\n\nclass BoomModifier:\n    pass\n', encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ModifierFactory, "main_package", "tmp_mods")
    assert factory.load_from_package("tmp_mods") == {}
    error = factory._errors["BoomModifier"]
    assert isinstance(error, ModifierImportError)
    assert isinstance(error.__cause__, RuntimeError)
    for name in [n for n in sys.modules if n.startswith("tmp_mods")]:
        del sys.modules[name]  # imported from tmp_path, which goes away


def test_missing_lists_the_abstract_methods_sorted_or_says_abstract_methods() -> None:
    from modfsm.engine.config.factory import _missing

    class TwoMissing(Modifier):
        def on_start(self, state: State, event: Any, **kwargs: Any) -> None:
            raise NotImplementedError

    TwoMissing.__abstractmethods__ = frozenset({"on_start", "on_initialize"})
    assert _missing(TwoMissing) == "on_initialize, on_start"
    assert _missing(int) == "abstract methods"  # no __abstractmethods__ at all


def test_a_class_taking_any_keyword_accepts_unknown_arguments_but_not_missing_ones() -> None:
    class OpenEnded(NoopModifier):
        def __init__(self, needed: int, **kwargs: Any) -> None:
            super().__init__()

    ModifierFactory.check_arguments(OpenEnded, ["needed", "anything", "else"])
    with pytest.raises(ConfigTypeError) as caught:
        ModifierFactory.check_arguments(OpenEnded, ["anything"])
    assert str(caught.value) == (
        "OpenEnded: missing required argument(s) ['needed']. OpenEnded accepts: needed. "
        "To fix, use only those names and give every required one."
    )
    assert (caught.value.owner, caught.value.field) == ("OpenEnded", "needed")


def test_an_argument_error_names_the_class_the_guess_and_the_accepted_names(
    factory: type[ModifierFactory],
) -> None:
    alpha = factory.lookup("AlphaModifier")
    with pytest.raises(ConfigTypeError) as caught:
        factory.check_arguments(alpha, ["strenght", "zzz"], hide=("start", "end"))
    error = caught.value
    accepted = ", ".join(sorted(factory.parameters(alpha)[0] - {"start", "end"}))
    assert str(error) == (
        "AlphaModifier: unknown argument(s) ['strenght', 'zzz'] (did you mean 'strength' "
        f"instead of 'strenght'?). AlphaModifier accepts: {accepted}. To fix, use only those "
        "names and give every required one."
    )
    assert (error.owner, error.field, error.value) == ("AlphaModifier", "strenght", None)


def test_argument_guesses_are_close_matches_only_and_joined(
    factory: type[ModifierFactory],
) -> None:
    alpha = factory.lookup("AlphaModifier")
    accepted = "end, group, index, start, strength, update"
    with pytest.raises(ConfigTypeError) as far:
        factory.check_arguments(alpha, ["strenxxx"])  # 'strength' is only 0.625 similar
    assert str(far.value) == (
        f"AlphaModifier: unknown argument(s) ['strenxxx']. AlphaModifier accepts: {accepted}. "
        "To fix, use only those names and give every required one."
    )
    with pytest.raises(ConfigTypeError) as two:
        factory.check_arguments(alpha, ["startt", "groupp"])
    assert str(two.value).startswith(
        "AlphaModifier: unknown argument(s) ['startt', 'groupp'] (did you mean 'start' instead "
        "of 'startt', 'group' instead of 'groupp'?). AlphaModifier accepts:"
    )


def test_unknown_and_missing_arguments_are_reported_together(
    factory: type[ModifierFactory],
) -> None:
    needs = factory.lookup("NeedsTargetsModifier")
    with pytest.raises(ConfigTypeError) as caught:
        factory.check_arguments(needs, ["zzz"])
    assert str(caught.value).startswith(
        "NeedsTargetsModifier: unknown argument(s) ['zzz'] and missing required argument(s) "
        "['targets']. NeedsTargetsModifier accepts: "
    )
    assert caught.value.field == "zzz"


def test_refresh_loads_once_and_later_lookups_do_not_walk_again(
    factory: type[ModifierFactory], monkeypatch: pytest.MonkeyPatch
) -> None:
    factory.refresh()

    def no_walk(*args: Any, **kwargs: Any) -> dict[str, type[Modifier]]:
        raise AssertionError("walked the packages again")

    monkeypatch.setattr(ModifierFactory, "load_from_package", staticmethod(no_walk))
    assert type(factory.create("AlphaModifier")).__name__ == "AlphaModifier"
    assert factory.known()["main"][0] == "AlphaModifier"


def test_a_remembered_non_class_error_names_it_and_the_fix(factory: type[ModifierFactory]) -> None:
    factory.refresh()
    with pytest.raises(ConfigTypeError) as caught:
        factory.create("StringModifier")
    error = caught.value
    assert str(error) == (
        f"{FAKE}.good.StringModifier is not a class, so it cannot be created by name. To fix, "
        "make it a concrete modfsm.engine.Modifier subclass or rename it."
    )
    good = sys.modules[f"{FAKE}.good"]
    assert (error.owner, error.field, error.value) == (
        "ModifierFactory", "StringModifier", good.StringModifier,
    )  # fmt: skip


def test_load_from_package_takes_subpackages_and_names_what_it_refuses(
    factory: type[ModifierFactory],
) -> None:
    assert list(factory.load_from_package(f"{FAKE}.sub")) == ["DeepModifier"]
    with pytest.raises(ConfigError) as caught:
        factory.load_from_package("json")
    error = caught.value
    assert str(error) == (
        f"ModifierFactory.load_from_package('json'): only the modifier packages ['{FAKE}', "
        f"'{FAKE}.experimental'] and their subpackages are loaded. To fix, put the module "
        "there, or register the class with ModifierFactory.register()."
    )
    assert (error.owner, error.field, error.value) == ("ModifierFactory", "package_path", "json")


def test_parameters_say_whether_a_class_takes_any_keyword() -> None:
    class OpenEnded(NoopModifier):
        def __init__(self, needed: int, *, extra: int = 0, **kwargs: Any) -> None:
            super().__init__()

    assert ModifierFactory.parameters(OpenEnded) == (
        frozenset({"needed", "extra"}), ("needed",), True,
    )  # fmt: skip
    accepted, required, open_ended = ModifierFactory.parameters(NoopModifier)
    assert (required, open_ended) == ((), False)
    assert open_ended is False
    assert {"start", "end", "group", "index", "update"} <= accepted


def test_register_errors_name_the_argument_the_value_and_the_fix() -> None:
    with pytest.raises(ConfigTypeError) as bad_name:
        ModifierFactory.register("", NoopModifier)
    assert str(bad_name.value) == (
        "ModifierFactory.register: type_ must be a non-empty str, got ''. To fix, pass the name "
        "recipes use, e.g. 'MyPruningModifier'."
    )
    assert (bad_name.value.owner, bad_name.value.field, bad_name.value.value) == (
        "ModifierFactory", "type_", "",
    )  # fmt: skip
    with pytest.raises(ConfigTypeError) as bad_class:
        ModifierFactory.register("FiveModifier", 5)
    assert str(bad_class.value) == (
        "ModifierFactory.register('FiveModifier', ...): 5 is not a class. To fix, register a "
        "concrete subclass of modfsm.engine.Modifier."
    )
    assert (bad_class.value.owner, bad_class.value.field, bad_class.value.value) == (
        "ModifierFactory", "modifier_class", 5,
    )  # fmt: skip
    assert "FiveModifier" not in ModifierFactory.known()["registered"]


def test_lookup_allows_registered_and_refuses_experimental_by_default(
    factory: type[ModifierFactory],
) -> None:
    class OnlyRegistered(NoopModifier):
        pass

    factory.register("OnlyRegisteredModifier", OnlyRegistered)
    assert factory.lookup("OnlyRegisteredModifier") is OnlyRegistered
    with pytest.raises(UnknownModifierError, match="it is experimental"):
        factory.lookup("TrialModifier")
    with pytest.raises(UnknownModifierError, match=r"Known types: .*TrialModifier\."):
        factory.lookup("Zzz", allow_experimental=True)


USER_MODIFIERS = """
import attrs
from modfsm.engine import Modifier


@attrs.define
class ClipModifier(Modifier):
    def on_initialize(self, state, **kwargs):
        return True
"""


def test_import_modifiers_registers_the_classes_a_module_or_package_defines(
    factory: type[ModifierFactory], site: Path
) -> None:
    (site / "usermods.py").write_text(USER_MODIFIERS, encoding="utf-8")
    package = site / "userpkg"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("", encoding="utf-8")
    (package / "inner" / "__init__.py").write_text("", encoding="utf-8")
    (package / "inner" / "deep.py").write_text(
        USER_MODIFIERS.replace("ClipModifier", "DeepUserModifier"), encoding="utf-8"
    )
    assert factory.import_modifiers("usermods") == ("ClipModifier",)
    assert factory.import_modifiers("userpkg") == ("DeepUserModifier",)
    assert type(factory.create("ClipModifier")).__name__ == "ClipModifier"
    assert factory.known()["registered"] == ("ClipModifier", "DeepUserModifier")
    assert factory.import_modifiers("usermods") == ("ClipModifier",)  # again: the same class


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        (None, ModifierImportError, "--import usermods: the module failed to import "
         "(ModuleNotFoundError: No module named 'usermods'). To fix, check the name, and run "
         "from the folder that holds it (the current folder is searched first)."),
        ("import not_there_either\n", ModifierImportError, "--import usermods: the module failed "
         "to import (ModuleNotFoundError: No module named 'not_there_either'). To fix, repair "
         "that module."),
        ("X = 1\n", ConfigError, "--import usermods: the module defines no modifier class (a "
         "concrete subclass of modfsm.engine.Modifier whose name ends in 'Modifier'). To fix, "
         "import the module that defines your modifiers."),
        (USER_MODIFIERS.replace("ClipModifier", "AlphaModifier"), ConfigError, "--import "
         "usermods: its class AlphaModifier has the name of a shipped or entry-point modifier. "
         "To fix, rename your class."),
        (USER_MODIFIERS.replace("ClipModifier", "TrialModifier"), ConfigError, "--import "
         "usermods: its class TrialModifier has the name of an experimental modifier. To fix, "
         "rename your class."),
        (USER_MODIFIERS.replace("ClipModifier", "NoopModifier"), ConfigError, "--import "
         "usermods: its class NoopModifier has the name of a registered modifier. To fix, "
         "rename your class."),
        ("class BadModifier:\n    pass\n", ConfigTypeError, "tests-style"),
    ],
    ids=["missing", "broken", "empty", "shadows", "experimental", "registered", "not-a-modifier"],
)  # fmt: skip
def test_import_modifiers_refuses_with_one_message_naming_the_module(
    factory: type[ModifierFactory], site: Path, source: str | None, error: type[Exception],
    message: str,
) -> None:  # fmt: skip
    factory.register("NoopModifier", NoopModifier)
    if source is not None:
        (site / "usermods.py").write_text(source, encoding="utf-8")
    with pytest.raises(error) as caught:
        factory.import_modifiers("usermods")
    if message != "tests-style":
        assert str(caught.value) == message
    else:
        assert "does not subclass modfsm.engine.Modifier" in str(caught.value)
    assert factory.known()["registered"] == ("NoopModifier",)  # nothing added on failure


def test_import_modifiers_of_one_class_registers_only_it_and_names_a_missing_one(
    factory: type[ModifierFactory], site: Path
) -> None:
    (site / "usermods.py").write_text(
        USER_MODIFIERS + USER_MODIFIERS.replace("ClipModifier", "OtherModifier"), encoding="utf-8"
    )
    assert factory.import_modifiers("usermods", only="OtherModifier") == ("OtherModifier",)
    assert factory.known()["registered"] == ("OtherModifier",)
    with pytest.raises(ConfigError) as caught:
        factory.import_modifiers("usermods", only="Missing")
    assert str(caught.value) == (
        "usermods:Missing: the module has no attribute 'Missing'. To fix, name a modifier "
        "class the module defines."
    )
    with pytest.raises(ConfigTypeError, match=r"usermods:attrs is not a class"):
        factory.import_modifiers("usermods", only="attrs")


def test_a_class_declared_through_the_entry_point_group_is_drawn_by_its_name(
    factory: type[ModifierFactory], site: Path
) -> None:
    from modfsm.engine.tools.diagrams import draw, render

    module(site, "ep_drawn", CONCRETE.format("DrawnModifier"))
    declare(site, "ep-drawn-dist", {"drawn": "ep_drawn:DrawnModifier"})
    factory.refresh()
    drawing = draw("DrawnModifier")
    assert drawing.title == "DrawnModifier lifecycle; * = defined by DrawnModifier: on_initialize"
    assert "initialized --> started" in render(drawing, "mermaid").decode()
