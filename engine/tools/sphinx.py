"""A Sphinx extension: ``.. modfsm-diagram::`` draws modfsm's pictures while the docs build.

Add ``"modfsm.engine.tools.sphinx"`` to ``extensions`` in ``conf.py``, then, in a page::

    .. modfsm-diagram:: lifecycle
       :illegal:
       :caption: Every call a modifier accepts, and the ones it rejects

The one argument, the target, is one of:

* a declared machine: ``lifecycle``, ``calibration``, ``stage``, ``session``;
* a modifier class known by name (``MagnitudePruningModifier``), or by import path
  (``mypkg.mods.MyModifier`` or ``mypkg.mods:MyModifier``: the module is imported, so
  ``conf.py`` must put its folder on ``sys.path``; the class must subclass
  :class:`~modfsm.engine.runtime.modifier.Modifier`);
* a recipe file (a name ending in ``.yaml`` or ``.yml``, or any file that exists),
  relative to the page, or to the source folder when it starts with ``/`` (as
  ``literalinclude`` reads paths): its timeline, a PNG among the build's images.

Options of a machine or class: ``:illegal:`` (also draw the rejected calls),
``:no-self-loops:``, ``:hooks:`` (``yes``, the default when given without a value, or
``no``: whether the edges name the hooks they run; left out, the target's default) and
``:format: svg`` (the default) or ``mermaid``. Options of a recipe: ``:trace: FILE``
(a JSONL trace of a run, whose states are drawn too) and ``:steps: N`` (where the axis
ends). Any target: ``:caption: TEXT``.

In HTML the SVG is inline in the page (a ``<figure class="modfsm-diagram">``, scaled
to the text's width). Without graphviz's ``dot`` an SVG falls back to mermaid, with
an info line in the build's log. Mermaid is a ``<pre class="mermaid">`` block, drawn in
the browser only when ``modfsm_mermaid_js`` in ``conf.py`` names the mermaid script (a
URL, or a file under ``html_static_path``; ``.mjs``: an ES module); without it the
text shows, with a note. Other builders (LaTeX, text, man) get the mermaid text as a
literal block; a timeline is an image in every builder.

A target, option, recipe or trace that cannot be drawn is a warning at the
directive's line that carries modfsm's message (type ``modfsm.diagram``), so
``sphinx-build -W`` fails on it. The recipe and trace files, and the module of a
class given by import path, are dependencies of the page: editing them rebuilds it.
"""

from __future__ import annotations

import hashlib
import html
import importlib
import inspect
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar, Final

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective
from sphinx.util.typing import OptionSpec

from modfsm.engine.config.recipe import Recipe
from modfsm.engine.kernel.errors import LifecycleError
from modfsm.engine.runtime.modifier import Modifier
from modfsm.engine.tools.diagrams import (
    MACHINE_TARGETS,
    DiagramError,
    Drawing,
    GraphvizNotFoundError,
    draw,
    draw_modifier,
    draw_timeline,
    render,
    trace_mismatch,
)
from modfsm.engine.tools.replay import read_jsonl

__all__ = [
    "DIRECTIVE",
    "RECIPE_SUFFIXES",
    "DiagramDirective",
    "diagram",
    "load_modifier_class",
    "setup",
]

DIRECTIVE: Final = "modfsm-diagram"
"""The directive's name."""

RECIPE_SUFFIXES: Final = (".yaml", ".yml")
"""A target ending in one of these is a recipe file, whether or not it exists."""

_FORMATS: Final = ("svg", "mermaid")
_MACHINE_OPTIONS: Final = ("illegal", "no-self-loops", "hooks", "format")
_RECIPE_OPTIONS: Final = ("trace", "steps")
_IMAGES: Final = "modfsm-diagrams"  # under the doctree folder: timelines before they are copied
_MERMAID_MARK: Final = "modfsm_mermaid"  # on the raw nodes that hold a mermaid diagram
_SCALED: Final = 'style="max-width: 100%; height: auto;"'
_ID: Final = re.compile(r'(\bid="|\bhref="#|url\(#)')

logger = logging.getLogger(__name__)


class diagram(nodes.General, nodes.Element):  # lowercase, as docutils names its nodes
    """A state diagram waiting for its builder: HTML inlines it, others get its mermaid text.

    Attributes (node keys): ``mermaid`` (the text, always), ``svg`` (the inline SVG
    element, or ``""`` for a mermaid diagram), ``caption``, ``target``.
    """


def _yes_no(argument: str | None) -> bool:
    """``:hooks:``: no value or yes/true/on -> True, no/false/off -> False."""
    value = (argument or "yes").strip().lower()
    if value in ("yes", "true", "on"):
        return True
    if value in ("no", "false", "off"):
        return False
    raise ValueError(f'"{argument}" is not yes or no. To fix, write :hooks: yes or :hooks: no.')


def _format(argument: str | None) -> str:
    return str(directives.choice(argument or "", _FORMATS))


def _positive(argument: str | None) -> float:
    try:
        value = float(argument or "")
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise ValueError(f'"{argument}" is not a positive number. To fix, write :steps: 100.')
    return value


def load_modifier_class(spec: str) -> type[Modifier]:
    """The modifier class ``spec`` names: ``package.module.Class`` or ``package.module:Class``.

    The module is imported (as ``import`` would find it: ``conf.py`` puts a project's
    folder on ``sys.path``).

    Raises:
        DiagramError: the module failed to import, has no such attribute, or the
            attribute is not a subclass of ``Modifier``; the message says which.
    """
    module_name, colon, attribute = spec.partition(":")
    if not colon:
        module_name, _, attribute = spec.rpartition(".")
    if not module_name or not attribute:
        raise DiagramError(
            f"{spec!r} names no class. To fix, write package.module.Class or package.module:Class."
        )
    try:
        found: object = importlib.import_module(module_name)
    except Exception as error:  # any failure of the user's module, reported with its type
        raise DiagramError(
            f"cannot import {module_name!r} to draw {spec!r} ({type(error).__name__}: {error}). "
            "To fix, check the module's name, and that conf.py puts its folder on sys.path."
        ) from error
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise DiagramError(
                f"module {module_name!r} has no attribute {attribute!r}. To fix, name a "
                "modifier class the module defines."
            )
        found = getattr(found, part)
    if not (isinstance(found, type) and issubclass(found, Modifier)):
        raise DiagramError(
            f"{spec!r} is {found!r}, not a modfsm Modifier subclass. To fix, name a "
            "subclass of modfsm.engine.Modifier."
        )
    return found


def _inline_svg(svg: str, prefix: str) -> str:
    """The ``<svg>`` element alone (no XML prolog, doctype or comments before it), scaled to
    its container, with its ids prefixed so that several diagrams can share a page."""
    element = svg[svg.index("<svg") :].strip()
    element = _ID.sub(lambda found: f"{found.group(1)}{prefix}", element)
    return element.replace("<svg", f"<svg {_SCALED}", 1)


class DiagramDirective(SphinxDirective):
    """``.. modfsm-diagram:: TARGET``: see this module's docstring for targets and options."""

    required_arguments = 1
    final_argument_whitespace = True
    option_spec: ClassVar[OptionSpec] = {
        "illegal": directives.flag,
        "no-self-loops": directives.flag,
        "hooks": _yes_no,
        "format": _format,
        "caption": directives.unchanged_required,
        "trace": directives.path,
        "steps": _positive,
    }

    def run(self) -> list[nodes.Node]:
        """Draw the target; a warning at this line, and nothing drawn, if it cannot be."""
        target = self.arguments[0]
        try:
            return self._draw(target)
        except (LifecycleError, OSError) as error:
            what = str(error) if isinstance(error, LifecycleError) else _os_problem(error)
            self._warn(what)
            return []

    def _warn(self, message: str) -> None:
        logger.warning(
            "%s: %s",
            DIRECTIVE,
            message,
            location=self.get_location(),
            type="modfsm",
            subtype="diagram",
        )

    def _draw(self, target: str) -> list[nodes.Node]:
        _, path = self.env.relfn2path(target, self.env.docname)
        is_recipe = target not in MACHINE_TARGETS and (
            target.lower().endswith(RECIPE_SUFFIXES) or Path(path).is_file()
        )
        if is_recipe:
            self._refuse_options(_MACHINE_OPTIONS, "draw a machine or a class, not a recipe")
            return self._timeline(target, Path(path))
        self._refuse_options(_RECIPE_OPTIONS, "draw a recipe's timeline")
        return [self._state_diagram(target)]

    def _depend_on(self, path: Path) -> None:
        if path.is_file():
            self.env.note_dependency(path)

    def _refuse_options(self, names: tuple[str, ...], what: str) -> None:
        given = [f":{name}:" for name in names if name in self.options]
        if given:
            raise DiagramError(
                f"{' and '.join(given)} {what}. To fix, leave "
                f"{'it' if len(given) == 1 else 'them'} out."
            )

    def _drawing(self, target: str) -> Drawing:
        options: dict[str, bool] = {
            "self_loops": "no-self-loops" not in self.options,
            "illegal": "illegal" in self.options,
        }
        if "hooks" in self.options:  # else the target's own default
            options["hooks"] = self.options["hooks"]
        if target in MACHINE_TARGETS or (":" not in target and "." not in target):
            return draw(target, **options)
        modifier_class = load_modifier_class(target)
        source = inspect.getsourcefile(modifier_class)
        if source is not None:
            self.env.note_dependency(source)
        return draw_modifier(modifier_class, **options)

    def _state_diagram(self, target: str) -> diagram:
        drawing = self._drawing(target)
        format = self.options.get("format", "svg")
        svg = ""
        if format == "svg":
            try:
                svg = render(drawing, "svg").decode()
            except GraphvizNotFoundError as error:
                logger.info(
                    "%s: %s is drawn as mermaid text instead of svg: %s",
                    DIRECTIVE,
                    target,
                    error,
                    location=self.get_location(),
                )
        node = diagram(
            mermaid=render(drawing, "mermaid").decode(),
            caption=self.options.get("caption", ""),
            target=target,
        )
        if svg:
            prefix = f"modfsm-{self.env.new_serialno(DIRECTIVE)}-"
            node["svg"] = _inline_svg(svg, prefix)
        else:
            node["svg"] = ""
        self.set_source_info(node)
        return node

    def _timeline(self, target: str, recipe_path: Path) -> list[nodes.Node]:
        self._depend_on(recipe_path)  # first: editing a broken file rebuilds the page too
        recipe = Recipe.load(recipe_path)
        trace = None
        if "trace" in self.options:
            _, trace_file = self.env.relfn2path(self.options["trace"], self.env.docname)
            self._depend_on(Path(trace_file))
            trace = read_jsonl(Path(trace_file))
            problem = trace_mismatch(recipe, trace)
            if problem is not None:
                self._warn(
                    f"{self.options['trace']} is not a run of {target}: {problem}. To fix, "
                    "pass the trace of a run of this recipe."
                )
        png = draw_timeline(recipe, trace=trace, steps=self.options.get("steps"))
        image_path = _store(Path(self.env.doctreedir) / _IMAGES, png)
        page_folder = Path(self.env.doc2path(self.env.docname)).parent
        image = nodes.image(
            uri=Path(os.path.relpath(image_path, page_folder)).as_posix(),
            alt=f"Recipe timeline of {Path(target).name}",
        )
        figure = nodes.figure("", image, classes=["modfsm-diagram"])
        caption = self.options.get("caption")
        if caption:
            figure += nodes.caption(caption, caption)
        self.set_source_info(figure)
        return [figure]


def _os_problem(error: OSError) -> str:
    return (
        f"cannot read {error.filename}: {error.strerror}. To fix, check the path (relative "
        "to the page, or to the source folder when it starts with /)."
    )


def _store(folder: Path, png: bytes) -> Path:
    """Write ``png`` into ``folder`` under a name made from its content; its path.

    The same picture always gets the same name, so parallel readers never clash, and
    a file already there is kept.
    """
    path = folder / f"timeline-{hashlib.sha256(png).hexdigest()[:20]}.png"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_bytes(png)
        os.replace(temporary, path)
    return path


def _figure_html(node: diagram, body: str) -> str:
    caption = node.get("caption", "")
    shown = f"<figcaption><p>{html.escape(caption)}</p></figcaption>" if caption else ""
    return f'<figure class="modfsm-diagram">\n{body}\n{shown}</figure>\n'


class _HtmlDiagrams(SphinxPostTransform):
    """HTML: each diagram becomes its inline SVG, or a ``<pre class="mermaid">`` block."""

    default_priority = 200
    formats = ("html",)

    def run(self, **kwargs: Any) -> None:
        script = bool(self.config.modfsm_mermaid_js)
        for node in list(self.document.findall(diagram)):
            if node["svg"]:
                raw = nodes.raw("", _figure_html(node, node["svg"]), format="html")
            else:
                body = f'<pre class="mermaid">\n{html.escape(node["mermaid"])}</pre>'
                if not script:
                    body += (
                        '\n<p class="modfsm-diagram-note">The diagram as mermaid text: '
                        "set <code>modfsm_mermaid_js</code> in conf.py to draw it.</p>"
                    )
                raw = nodes.raw("", _figure_html(node, body), format="html")
                raw[_MERMAID_MARK] = True  # not a class: HTML would wrap the node in a <div>
            raw.source, raw.line = node.source, node.line
            node.replace_self(raw)


class _TextDiagrams(SphinxPostTransform):
    """Every other builder: each diagram becomes a literal block of its mermaid text."""

    default_priority = 201

    def run(self, **kwargs: Any) -> None:
        for node in list(self.document.findall(diagram)):
            text = node["mermaid"]
            literal = nodes.literal_block(text, text, language="text")
            caption = node.get("caption", "")
            if not caption:
                node.replace_self(literal)
                continue
            wrapper = nodes.container("", literal_block=True, classes=["literal-block-wrapper"])
            wrapper += nodes.caption(caption, caption)
            wrapper += literal
            node.replace_self(wrapper)


def _mermaid_script(
    app: Sphinx,
    pagename: str,
    templatename: str,
    context: dict[str, Any],
    doctree: nodes.document | None,
) -> None:
    """Load the configured mermaid script on the pages that show a mermaid diagram."""
    script: str = app.config.modfsm_mermaid_js
    if not script or doctree is None:
        return
    if not any(raw.get(_MERMAID_MARK) for raw in doctree.findall(nodes.raw)):
        return
    if script.endswith(".mjs"):
        url = script if "://" in script else context["pathto"](f"_static/{script}", 1)
        body = (
            f"import mermaid from {_js_string(url)};\nmermaid.initialize({{ startOnLoad: true }});"
        )
        app.add_js_file(None, body=body, type="module")
    else:
        app.add_js_file(script)
        app.add_js_file(None, body="mermaid.initialize({ startOnLoad: true });")


def _js_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("<", "\\u003c")
    return f'"{escaped}"'


def _version() -> str:
    try:
        return metadata.version("modfsm")
    except metadata.PackageNotFoundError:  # a source tree that is not installed
        return "unknown"


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the ``modfsm-diagram`` directive, its node and ``modfsm_mermaid_js``.

    Returns:
        The extension's metadata: its version, and that it reads and writes in parallel.
    """
    app.add_config_value(
        "modfsm_mermaid_js",
        "",
        "html",
        types=frozenset({str}),
        description="the mermaid script (a URL, or a file under html_static_path)",
    )
    app.add_node(diagram)
    app.add_directive(DIRECTIVE, DiagramDirective)
    app.add_post_transform(_HtmlDiagrams)
    app.add_post_transform(_TextDiagrams)
    app.connect("html-page-context", _mermaid_script)
    return {
        "version": _version(),
        "env_version": 1,
        "parallel_read_safe": True,
        "parallel_write_safe": True,
    }
