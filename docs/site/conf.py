"""Sphinx configuration of modfsm's documentation site: ``make site`` builds it into build/site.

The pages include the Markdown files of the repository (README, specs, guides) through
myst-parser rather than copying them. Each including page sits at the path its file has
in the repository (``specs/lifecycle.md`` includes ``../../../specs/lifecycle.md``), so
the files' relative links between one another resolve to the site's pages unchanged.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from docutils import nodes
from pygments.lexers.special import TextLexer
from sphinx import addnodes
from sphinx.application import Sphinx

REPOSITORY = Path(__file__).resolve().parents[2]

project = "modfsm"
author = "the modfsm authors"
copyright = "the modfsm authors; Apache-2.0"
release = metadata.version("modfsm")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "modfsm.engine.tools.sphinx",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns: list[str] = []

html_theme = "furo"
html_title = f"modfsm {release}"
html_static_path = ["_static"]
# Also spares every page a request for /favicon.ico, which the site does not have.
html_favicon = "_static/favicon.svg"
html_show_sourcelink = False  # the pages are mostly one include line each

# Google-style docstrings (house style). Attributes as :ivar: fields: an attribute
# both listed there and documented by autodoc would otherwise be described twice.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
# "Class attributes:" (Modifier, ModifierContract) is a section of its own, listed like Args.
napoleon_custom_sections = [("Class attributes", "params_style")]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"

# "## In Sphinx" in docs/diagrams.md is linked as docs/diagrams.md#in-sphinx.
myst_heading_anchors = 3


def _repository_links(app: Sphinx, doctree: nodes.document) -> None:
    """Links of the included files that MyST reads relative to the including page.

    MyST reads a link relative to the page that includes the file, and warns when
    nothing is there: ``reference.py`` in specs/lifecycle.md, ``site/diagrams.md`` in
    docs/diagrams.md, the folder ``docs/recipes/`` in the README. Read relative to the
    included file instead (``node.source``): a page of the site becomes a link to it; any
    other file a download of it; a folder, which a static site cannot show, its text
    alone. A link to nothing that exists is left alone, so it still fails the -W build.
    """
    page_folder = Path(app.env.doc2path(app.env.docname)).parent
    for node in list(doctree.findall(addnodes.pending_xref)):
        if node.get("reftype") != "myst" or node.get("refdomain") or not node.source:
            continue
        path, _, anchor = node["reftarget"].partition("#")
        target = (Path(node.source).parent / path).resolve()
        if not target.is_relative_to(REPOSITORY) or not target.exists():
            continue
        docname = app.env.path2doc(str(target))
        if docname is not None:
            node["refdomain"], node["reftarget"] = "doc", docname
            node["reftargetid"] = anchor or None
        elif target.is_dir():
            node.replace_self(node.children)
        else:
            download = addnodes.download_reference(
                "",
                "",
                *node.children,
                refdomain="",
                reftype="myst",
                reftarget=os.path.relpath(target, page_folder),
                refdoc=node["refdoc"],
                refexplicit=node.get("refexplicit", False),
            )
            download.source, download.line = node.source, node.line
            node.replace_self(download)


def setup(app: Sphinx) -> None:
    """The site's own fixes: repository links, and mermaid fences shown as text."""
    # Before the download collector (priority 500), which copies the files linked.
    app.connect("doctree-read", _repository_links, priority=400)
    # The README holds a ```mermaid fence (GitHub draws it). Pygments has no mermaid
    # lexer, which Sphinx reports as a warning: shown as plain text instead.
    app.add_lexer("mermaid", TextLexer)
