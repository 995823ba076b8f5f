"""The documentation site as a reader sees it: built as ``make site`` builds it, served on
127.0.0.1 and loaded in headless Chromium.

The tests marked ``browser`` need Chromium, Debian's ``chromium`` (``make chromium``,
which ``make test`` runs, installs it). Without it they skip, unless
``MODFSM_REQUIRE_BROWSER`` is set (``make test`` sets it): then they fail. The site is
built afresh into a temporary folder, once for the module (about 10 s). The screenshot of
the lifecycle diagram is kept in ``build/test-artifacts/site-lifecycle.png``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http import server
from pathlib import Path
from typing import Any, Final

import attrs
import pytest

from modfsm.engine.model.machines import DECLARED_MACHINES
from tests.diagram_support import png_size, require_graphviz
from tests.site.browser import VIEWPORT, Visit, visit

ROOT: Final = Path(__file__).resolve().parents[2]
ARTIFACTS: Final = ROOT / "build" / "test-artifacts"
REQUIRE: Final = "MODFSM_REQUIRE_BROWSER"
PAGE: Final = "diagrams.html"
SECTION: Final = "the-modifier-lifecycle"

# What the page shows of the lifecycle section's diagram, evaluated in the page.
PROBE: Final = f"""(() => {{
  const section = document.getElementById("{SECTION}");
  const figure = section && section.querySelector("figure.modfsm-diagram");
  if (!figure) return {{figure: false}};
  const svg = figure.querySelector(":scope > svg");
  const drawn = figure.firstElementChild ? figure.firstElementChild.tagName.toLowerCase() : "";
  if (!svg) return {{figure: true, svg: false, drawn: drawn}};
  const box = svg.getBoundingClientRect();
  return {{
    figure: true, svg: true, drawn: drawn,
    texts: [...svg.querySelectorAll("text")].map(t => t.textContent),
    width: box.width, height: box.height,
    room: figure.parentElement.getBoundingClientRect().width,
  }};
}})()"""


def chromium() -> str:
    """The Chromium program; skip without it, or fail when MODFSM_REQUIRE_BROWSER is set."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found is not None:
            return found
    if os.environ.get(REQUIRE):
        pytest.fail(f"{REQUIRE} is set and Chromium is not on PATH (make chromium installs it)")
    pytest.skip("Chromium is not installed (make test installs it: apt-get install chromium)")


@attrs.frozen
class Served:
    """A folder served over HTTP on 127.0.0.1, and every request it answered."""

    origin: str
    answered: list[tuple[str, int]]


@contextmanager
def serve(folder: Path) -> Iterator[Served]:
    """Serve ``folder`` on 127.0.0.1 (a free port) from a thread, for the ``with`` block."""
    answered: list[tuple[str, int]] = []

    class Handler(server.SimpleHTTPRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            answered.append((self.path, int(code)))

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test reports what matters

    handler = functools.partial(Handler, directory=str(folder))
    httpd = server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{httpd.server_port}", answered)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def page_problems(shown: Visit, served: Served) -> list[str]:
    """What a reader would see go wrong on a page: console errors, files the server did
    not have, and anything fetched from another origin than the site's."""
    problems = [f"console: {line}" for line in shown.console_errors]
    problems += [f"HTTP {code} for {path}" for path, code in served.answered if code >= 400]
    problems += [
        f"fetched from outside the site: {url}"
        for url in shown.requests
        if not url.startswith((served.origin, "data:", "about:"))
    ]
    return problems


def lifecycle_problems(value: dict[str, Any]) -> list[str]:
    """What is wrong with the lifecycle diagram as the probe found it; empty when it is an
    inline SVG that names every state and fits the text's width."""
    if not value.get("figure"):
        return [f"section #{SECTION} has no <figure class='modfsm-diagram'>"]
    if not value.get("svg"):
        return [f"the lifecycle diagram is a <{value.get('drawn')}>, not an inline <svg>"]
    texts = set(value["texts"])
    problems = [
        f"state {state!r} is not a text of the svg"
        for state in DECLARED_MACHINES["lifecycle"].state_names()
        if state not in texts
    ]
    if not (value["width"] > 0 and value["height"] > 0):
        problems.append(f"the svg is not drawn ({value['width']} x {value['height']} px)")
    if value["width"] > value["room"] + 1:
        problems.append(f"the svg ({value['width']} px) overflows its column ({value['room']} px)")
    return problems


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built as ``make site`` builds it (``-W``), into a temporary folder."""
    chromium()
    require_graphviz()  # else the diagrams fall back to mermaid text
    pytest.importorskip("sphinx", reason="the docs extra is not installed (make test does)")
    out = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
               str(ROOT / "docs" / "site"), str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"the site does not build:\n{done.stdout}\n{done.stderr}"
    return out


@pytest.mark.browser
def test_the_diagrams_page_shows_the_lifecycle_as_an_inline_svg_naming_every_state(
    site: Path, tmp_path: Path
) -> None:
    with serve(site) as served:
        shown = visit(chromium(), f"{served.origin}/{PAGE}", PROBE, f"#{SECTION}")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for folder in (ARTIFACTS, tmp_path):
        (folder / "site-lifecycle.png").write_bytes(shown.screenshot)
    assert png_size(shown.screenshot) == VIEWPORT
    assert lifecycle_problems(shown.value) == []
    assert page_problems(shown, served) == []
    assert any(path.startswith("/_images/timeline-") for path, _ in served.answered)


@pytest.mark.browser
@pytest.mark.parametrize(
    "page",
    ["index.html", "specs/lifecycle.html", "docs/diagrams.html", "api/engine.html"],
)
def test_the_main_pages_load_without_console_errors_or_missing_files(site: Path, page: str) -> None:
    with serve(site) as served:
        shown = visit(chromium(), f"{served.origin}/{page}", "document.title", "h1")
    assert "modfsm" in shown.value
    assert page_problems(shown, served) == []


@pytest.mark.browser
def test_the_checks_fail_for_a_diagram_drawn_as_an_img_and_for_console_errors(
    tmp_path: Path,
) -> None:
    shutil.copy(ROOT / "docs" / "diagrams" / "lifecycle.svg", tmp_path / "lifecycle.svg")
    (tmp_path / PAGE).write_text(
        f'<!doctype html><html><head><title>modfsm</title><link rel="icon" href="data:,">'
        f'</head><body><section id="{SECTION}"><figure class="modfsm-diagram">'
        '<img src="lifecycle.svg" alt="lifecycle"></figure></section>'
        '<img src="missing.png" alt="">'
        '<script>console.error("drawn wrong")</script></body></html>',
        encoding="utf-8",
    )
    with serve(tmp_path) as served:
        shown = visit(chromium(), f"{served.origin}/{PAGE}", PROBE, f"#{SECTION}")
    assert lifecycle_problems(shown.value) == [
        "the lifecycle diagram is a <img>, not an inline <svg>"
    ]
    problems = page_problems(shown, served)
    assert "console: console.error: drawn wrong" in problems
    assert "HTTP 404 for /missing.png" in problems


def test_every_spec_and_guide_has_its_page_on_the_site() -> None:
    included = {
        ROOT / "specs": ROOT / "docs" / "site" / "specs",
        ROOT / "docs": ROOT / "docs" / "site" / "docs",
    }
    missing = []
    for folder, pages in included.items():
        for source in sorted(folder.glob("*.md")):
            page = pages / source.name
            include = f"```{{include}} ../../../{source.relative_to(ROOT).as_posix()}"
            if not page.is_file() or not page.read_text(encoding="utf-8").startswith(include):
                missing.append(
                    f"{page.relative_to(ROOT)} does not include {source.relative_to(ROOT)}. To "
                    f"fix, write it as: {include}, then :relative-images: and ``` on two lines"
                )
    assert missing == []


def test_the_lifecycle_check_names_each_missing_state_and_an_overflowing_svg() -> None:
    states = DECLARED_MACHINES["lifecycle"].state_names()
    value = {
        "figure": True, "svg": True, "drawn": "svg", "texts": list(states[1:]),
        "width": 900.0, "height": 300.0, "room": 700.0,
    }  # fmt: skip
    assert lifecycle_problems(value) == [
        f"state {states[0]!r} is not a text of the svg",
        "the svg (900.0 px) overflows its column (700.0 px)",
    ]
