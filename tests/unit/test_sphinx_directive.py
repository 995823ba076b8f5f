"""The ``modfsm-diagram`` Sphinx directive (modfsm.engine.tools.sphinx), run through tiny
Sphinx projects built in a temporary folder."""

from __future__ import annotations

import io
import re
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

pytest.importorskip("sphinx", reason="the docs extra is not installed (make test installs it)")

from sphinx.cmd.build import build_main
from sphinx.testing.util import SphinxTestApp

from modfsm.engine.config.factory import ModifierFactory
from modfsm.engine.config.recipe import Recipe
from modfsm.engine.loop.session import Session
from modfsm.engine.model.machines import DECLARED_MACHINES
from modfsm.engine.tools.diagrams import draw_timeline
from modfsm.engine.tools.sphinx import load_modifier_class
from tests.diagram_support import png_size, require_graphviz
from tests.recipes.doubles import DOUBLES

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "docs" / "recipes" / "prune_2of4.yaml"
DEFAULT_RECIPE = ROOT / "engine" / "app" / "data" / "default_recipe.yaml"
EXTENSION = 'extensions = ["modfsm.engine.tools.sphinx"]\n'
MODULE = "modfsm_sphinx_test_mods"  # written into the project folder by the tests that need it
MODIFIER_SOURCE = """
import attrs
from modfsm.engine import Modifier

@attrs.define
class GreetingModifier(Modifier):
    def on_start(self, state, event, **kwargs):
        pass

class NotAModifier:
    pass
"""


@attrs.frozen
class Built:
    """What a build left: the page as HTML (or text), the build's log and its warnings."""

    page: str
    status: str
    warnings: str
    outdir: Path


def project(folder: Path, body: str, conf: str = "") -> Path:
    """A Sphinx project in ``folder/src`` with one page, ``index.rst``, holding ``body``."""
    source = folder / "src"
    source.mkdir(parents=True)
    (source / "conf.py").write_text(
        "import os, sys\nsys.path.insert(0, os.path.abspath('.'))\n" + EXTENSION + conf,
        encoding="utf-8",
    )
    (source / "index.rst").write_text("Diagrams\n========\n\n" + textwrap.dedent(body))
    (source / f"{MODULE}.py").write_text(MODIFIER_SOURCE, encoding="utf-8")
    shutil.copy(RECIPE, source / "prune.yaml")
    return source


def build(folder: Path, body: str, *, conf: str = "", builder: str = "html") -> Built:
    source = project(folder, body, conf)
    status, warnings = io.StringIO(), io.StringIO()
    app = SphinxTestApp(
        builder,
        srcdir=source,
        builddir=folder / "build",
        freshenv=True,
        status=status,
        warning=warnings,
    )
    try:
        app.build()
    finally:
        app.cleanup()
    suffix = {"html": ".html", "text": ".txt"}[builder]
    page = (app.outdir / f"index{suffix}").read_text(encoding="utf-8")
    return Built(page, status.getvalue(), warnings.getvalue(), Path(app.outdir))


@pytest.fixture(autouse=True)
def _forget_the_test_module() -> Iterator[None]:
    """The projects' conf.py puts their folder on sys.path and the builds import MODULE."""
    saved = list(sys.path)
    yield
    sys.path[:] = saved
    sys.modules.pop(MODULE, None)


def figures(html: str) -> list[str]:
    """Each ``<figure class="modfsm-diagram">`` of the page, whole."""
    return re.findall(r'<figure class="modfsm-diagram[^"]*".*?</figure>', html, re.S)


def svg_texts(figure: str) -> list[str]:
    """The text elements of the figure's inline SVG (state names, edge labels, title)."""
    svg = figure[figure.index("<svg") : figure.index("</svg>")]
    return [re.sub(r"&#45;", "-", t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One project with a diagram of each kind, built once for the tests that read it."""
    require_graphviz()
    folder = tmp_path_factory.mktemp("gallery")
    body = f"""
        .. modfsm-diagram:: lifecycle
           :caption: The <modifier> lifecycle

        .. modfsm-diagram:: lifecycle
           :illegal:

        .. modfsm-diagram:: {MODULE}.GreetingModifier

        .. modfsm-diagram:: {MODULE}:GreetingModifier
           :no-self-loops:

        .. modfsm-diagram:: session

        .. modfsm-diagram:: session
           :hooks:

        .. modfsm-diagram:: lifecycle
           :hooks: no

        .. modfsm-diagram:: prune.yaml
           :caption: A timeline
        """
    source = project(folder, body)
    status, warnings = io.StringIO(), io.StringIO()
    saved = list(sys.path)
    app = SphinxTestApp(
        "html", srcdir=source, builddir=folder / "build", status=status, warning=warnings
    )
    try:
        app.build()
        dependencies = {str(p) for p in app.env.dependencies["index"]}
        extension = app.extensions["modfsm.engine.tools.sphinx"]
        assert (extension.parallel_read_safe, extension.parallel_write_safe) == (True, True)
    finally:
        app.cleanup()
        sys.path[:] = saved
        sys.modules.pop(MODULE, None)
    assert str(source / "prune.yaml") in dependencies
    assert str(source / f"{MODULE}.py") in dependencies
    page = (app.outdir / "index.html").read_text(encoding="utf-8")
    return Built(page, status.getvalue(), warnings.getvalue(), Path(app.outdir))


def test_the_gallery_builds_without_a_warning(gallery: Built) -> None:
    assert gallery.warnings == ""
    assert len(figures(gallery.page)) == 8


def test_a_machine_is_an_inline_svg_in_a_figure_naming_every_state(gallery: Built) -> None:
    figure = figures(gallery.page)[0]
    assert figure.startswith('<figure class="modfsm-diagram">\n<svg ')
    assert "<?xml" not in gallery.page
    assert "<!DOCTYPE svg" not in gallery.page
    assert '<svg style="max-width: 100%; height: auto;"' in figure
    texts = svg_texts(figure)
    assert set(DECLARED_MACHINES["lifecycle"].state_names()) <= set(texts)
    assert "rejected" not in texts
    assert "<figcaption><p>The &lt;modifier&gt; lifecycle</p></figcaption>" in figure


def test_illegal_adds_the_rejected_pseudo_state(gallery: Built) -> None:
    assert "rejected" in svg_texts(figures(gallery.page)[1])


@pytest.mark.parametrize("position", [2, 3], ids=["module.Class", "module:Class"])
def test_a_class_given_by_import_path_is_drawn_with_its_own_hooks_marked(
    gallery: Built, position: int
) -> None:
    texts = svg_texts(figures(gallery.page)[position])
    assert any(t.startswith("GreetingModifier lifecycle; * = defined by") for t in texts)
    assert any("on_start*" in t for t in texts)


def test_no_self_loops_leaves_out_the_edges_that_keep_the_state(gallery: Built) -> None:
    with_loops = figures(gallery.page)[2]
    without = figures(gallery.page)[3]
    assert with_loops.count('class="edge"') > without.count('class="edge"')


def test_hooks_shows_or_hides_the_hooks_against_the_targets_default(gallery: Built) -> None:
    found = figures(gallery.page)
    session, session_hooks, lifecycle, lifecycle_no_hooks = found[4], found[5], found[0], found[6]
    assert not any("absorb" in t for t in svg_texts(session))
    assert any("absorb" in t for t in svg_texts(session_hooks))
    assert any("/ on_start" in t for t in svg_texts(lifecycle))
    assert not any("/ on_" in t for t in svg_texts(lifecycle_no_hooks))


def test_diagrams_sharing_a_page_have_distinct_ids(gallery: Built) -> None:
    ids = re.findall(r'\bid="([^"]+)"', gallery.page)
    assert len(ids) == len(set(ids))
    assert 'id="modfsm-1-graph0"' in gallery.page


def test_a_recipe_is_a_timeline_png_among_the_builds_images(gallery: Built) -> None:
    figure = figures(gallery.page)[7]
    image = r'<img alt="Recipe timeline of prune.yaml" src="(_images/[^"]+\.png)"'
    found = re.search(image, figure)
    assert found is not None
    assert (gallery.outdir / found.group(1)).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "A timeline" in figure


def test_without_dot_an_svg_falls_back_to_mermaid_with_an_info_line_not_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    built = build(tmp_path, ".. modfsm-diagram:: stage\n")
    assert built.warnings == ""
    assert re.search(
        r"index\.rst:4: modfsm-diagram: stage is drawn as mermaid text instead of svg: "
        r"the svg format needs graphviz's dot program",
        built.status,
    )
    figure = figures(built.page)[0]
    assert '<pre class="mermaid">\n---\ntitle: &quot;modfsm stage lifecycle&quot;' in figure
    assert "stateDiagram-v2" in figure
    assert "<svg" not in figure
    assert "set <code>modfsm_mermaid_js</code> in conf.py to draw it" in figure
    assert "<script" not in figure


def test_a_configured_mermaid_script_is_loaded_on_pages_with_a_mermaid_diagram(
    tmp_path: Path,
) -> None:
    url = "https://example.invalid/mermaid.esm.min.mjs"
    conf = f"modfsm_mermaid_js = {url!r}\n"
    built = build(tmp_path, ".. modfsm-diagram:: lifecycle\n   :format: mermaid\n", conf=conf)
    assert built.warnings == ""
    assert f'import mermaid from "{url}";' in built.page
    assert "modfsm_mermaid_js</code>" not in built.page
    plain = build(tmp_path / "svg", ".. modfsm-diagram:: lifecycle\n   :format: mermaid\n")
    assert "import mermaid" not in plain.page


def test_a_mermaid_script_under_static_files_is_linked_relative_to_the_page(
    tmp_path: Path,
) -> None:
    built = build(
        tmp_path,
        ".. modfsm-diagram:: stage\n   :format: mermaid\n",
        conf="modfsm_mermaid_js = 'mermaid.min.js'\n",
    )
    assert '<script src="_static/mermaid.min.js' in built.page
    assert "mermaid.initialize({ startOnLoad: true });" in built.page


def test_a_non_html_builder_gets_the_mermaid_text_as_a_literal_block(tmp_path: Path) -> None:
    built = build(tmp_path, ".. modfsm-diagram:: stage\n   :caption: Stages\n", builder="text")
    assert built.warnings == ""
    assert "stateDiagram-v2" in built.page
    assert "pending --> initialized: initialize" in built.page
    assert "Stages" in built.page


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            ".. modfsm-diagram:: lifecyle\n",
            "modfsm-diagram: unknown diagram target 'lifecyle'. Targets: the machines lifecycle, ",
        ),
        (
            ".. modfsm-diagram:: no_such_module.SomeModifier\n",
            "modfsm-diagram: cannot import 'no_such_module' to draw 'no_such_module.SomeModifier' "
            "(ModuleNotFoundError: No module named 'no_such_module'). To fix, check the "
            "module's name, and that conf.py puts its folder on sys.path.",
        ),
        (
            f".. modfsm-diagram:: {MODULE}:NotAModifier\n",
            f"modfsm-diagram: '{MODULE}:NotAModifier' is <class '{MODULE}.NotAModifier'>, not a "
            "modfsm Modifier subclass. To fix, name a subclass of modfsm.engine.Modifier.",
        ),
        (
            ".. modfsm-diagram:: missing.yaml\n",
            "modfsm-diagram: recipe {source}/missing.yaml has 1 problem:\n  - cannot read the "
            "file: No such file or directory.",
        ),
        (
            ".. modfsm-diagram:: prune.yaml\n   :trace: missing.jsonl\n",
            "modfsm-diagram: cannot read {source}/missing.jsonl: No such file or directory. To "
            "fix, check the path (relative to the page, or to the source folder when it starts "
            "with /).",
        ),
        (
            ".. modfsm-diagram:: lifecycle\n   :steps: 10\n",
            "modfsm-diagram: :steps: draw a recipe's timeline. To fix, leave it out.",
        ),
        (
            ".. modfsm-diagram:: lifecycle\n   :format: png\n",
            'Error in "modfsm-diagram" directive:\ninvalid option value: (option: "format"; '
            "value: 'png')",
        ),
    ],
    ids=["unknown", "no-module", "no-modifier", "no-recipe", "no-trace", "recipe-option", "format"],
)
def test_what_cannot_be_drawn_fails_a_W_build_with_modfsms_message_at_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, message: str
) -> None:
    source = project(tmp_path, body)
    code = build_main(["-W", "-q", "-b", "html", str(source), str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code != 0
    assert f"{source / 'index.rst'}:4: " in error
    assert message.format(source=source) in error


def test_machine_options_on_a_recipe_are_refused(tmp_path: Path) -> None:
    source = project(tmp_path, ".. modfsm-diagram:: prune.yaml\n   :illegal:\n   :format: svg\n")
    status, warnings = io.StringIO(), io.StringIO()
    app = SphinxTestApp(
        "html", srcdir=source, builddir=tmp_path / "build", status=status, warning=warnings
    )
    try:
        app.build()
    finally:
        app.cleanup()
    assert (
        "index.rst:4: WARNING: modfsm-diagram: :illegal: and :format: draw a machine or a "
        "class, not a recipe. To fix, leave them out. [modfsm.diagram]"
    ) in warnings.getvalue()


def test_a_broken_recipe_is_a_warning_and_editing_it_rebuilds_the_page(tmp_path: Path) -> None:
    source = project(tmp_path, ".. modfsm-diagram:: broken.yaml\n")
    (source / "broken.yaml").write_text("- just a list\n", encoding="utf-8")
    status, warnings = io.StringIO(), io.StringIO()
    app = SphinxTestApp(
        "html", srcdir=source, builddir=tmp_path / "build", status=status, warning=warnings
    )
    try:
        app.build()
        dependencies = {str(p) for p in app.env.dependencies["index"]}
    finally:
        app.cleanup()
    assert f"index.rst:4: WARNING: modfsm-diagram: recipe {source}/broken.yaml" in (
        warnings.getvalue()
    )
    assert str(source / "broken.yaml") in dependencies


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trace of a session over modfsm run's default recipe (inert doubles of its modifiers)."""
    path = tmp_path_factory.mktemp("trace") / "run.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModifierFactory, "_registered_registry", {})
        for cls in DOUBLES:
            ModifierFactory.register(cls.__name__, cls)
        session = Session()
        session.initialize(recipe=Recipe.load(DEFAULT_RECIPE), trace=path)
        for _ in range(500):
            session.batch_start()
            session.optim_pre_step()
            session.optim_post_step()
            session.batch_end()
        session.finalize()
    return path


def test_a_recipe_with_the_trace_of_its_run_is_drawn_and_both_files_are_dependencies(
    tmp_path: Path, default_run: Path
) -> None:
    source = project(tmp_path, ".. modfsm-diagram:: default.yaml\n   :trace: run.jsonl\n")
    shutil.copy(DEFAULT_RECIPE, source / "default.yaml")
    shutil.copy(default_run, source / "run.jsonl")
    status, warnings = io.StringIO(), io.StringIO()
    app = SphinxTestApp(
        "html", srcdir=source, builddir=tmp_path / "build", status=status, warning=warnings
    )
    try:
        app.build()
        dependencies = {str(p) for p in app.env.dependencies["index"]}
    finally:
        app.cleanup()
    assert warnings.getvalue() == ""
    assert {str(source / "default.yaml"), str(source / "run.jsonl")} <= dependencies
    images = list((app.outdir / "_images").glob("timeline-*.png"))
    assert len(images) == 1
    assert png_size(images[0].read_bytes())[1] > png_size(draw_timeline(
        Recipe.load(DEFAULT_RECIPE)))[1]  # fmt: skip


def test_a_trace_that_is_not_a_run_of_the_recipe_is_a_warning(
    tmp_path: Path, default_run: Path
) -> None:
    source = project(tmp_path, ".. modfsm-diagram:: prune.yaml\n   :trace: run.jsonl\n")
    shutil.copy(default_run, source / "run.jsonl")
    status, warnings = io.StringIO(), io.StringIO()
    app = SphinxTestApp(
        "html", srcdir=source, builddir=tmp_path / "build", status=status, warning=warnings
    )
    try:
        app.build()
    finally:
        app.cleanup()
    assert (
        "index.rst:4: WARNING: modfsm-diagram: run.jsonl is not a run of prune.yaml: modifier "
        "sparsity_stage.0 has start=150 in the trace, 100 in the recipe. To fix, pass the trace "
        "of a run of this recipe. [modfsm.diagram]"
    ) in warnings.getvalue()


def test_load_modifier_class_finds_a_shipped_class_by_either_spelling() -> None:
    from modfsm.modifiers.pruning.magnitude import MagnitudePruningModifier

    dotted = "modfsm.modifiers.pruning.magnitude.MagnitudePruningModifier"
    colon = "modfsm.modifiers.pruning.magnitude:MagnitudePruningModifier"
    assert load_modifier_class(dotted) is MagnitudePruningModifier
    assert load_modifier_class(colon) is MagnitudePruningModifier
