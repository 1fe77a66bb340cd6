"""The documentation site (mkdocs.yml, docs/): it builds strictly, its pages have navigation and
search, every link in it resolves, the CLI reference is the parser's, and the README says nothing
that the docs do not also hold.

The browser check at the end opens the built site in headless Chromium (Debian's `chromium`;
.ci/run installs it): the home page and a deep page render with the navigation the theme's
JavaScript completes.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType
from urllib.parse import unquote, urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
README = REPO / "README.md"
# A deep page: two levels down the navigation, long, with marked code blocks in lists.
DEEP = "deployment/kubernetes/"

# The README's sections when the docs site was made from it (main of issue 17's docs change), and the
# page that holds each now.
README_SECTIONS = {
    "Quick start through Envoy": "getting-started.md",
    "How a request is decided": "concepts/decision.md",
    "Why encryption alone is not authentication": "concepts/decision.md",
    "Reason codes": "concepts/reasons.md",
    "Sender-constrained tokens": "sender-constrained.md",
    "Configuration reference": "configuration.md",
    "All settings": "configuration.md",
    "Schema and editors": "configuration.md",
    "Operations": "operations.md",
    "Reloads": "operations.md",
    "When a reload fails": "operations.md",
    "Rotating keys, step by step": "operations.md",
    "TLS on the gRPC listener": "operations.md",
    "Shared store (Valkey or Redis)": "shared-store.md",
    "Revocation": "shared-store.md",
    "Failure semantics": "shared-store.md",
    "Observability": "observability.md",
    "Traces in Jaeger": "observability.md",
    "Metrics": "observability.md",
    "Decision log": "observability.md",
    "Deployment": "deployment/index.md",
    "Sidecar or standalone?": "deployment/index.md",
    "Which door: gRPC or HTTP": "deployment/which-door.md",
    "Step by step": "deployment/kubernetes.md",
    "GitOps: the keys Secret": "deployment/kubernetes.md",
    "What the manifests do": "deployment/kubernetes.md",
    "Envoy configuration: one source": "deployment/envoy.md",
    "Headers an upstream reads as ours": "deployment/envoy.md",
    "Overrides and forwarding headers": "deployment/envoy.md",
    "Request ids": "deployment/envoy.md",
    "Traces": "deployment/envoy.md",
    "Istio": "deployment/istio.md",
    "Locally: `make demo`": "deployment/local.md",
    "Performance": "performance.md",
    "Command line": "cli.md",
    "Development": "development.md",
}
# The README's own section of links into the docs: its list is the one part the pages need not repeat.
README_LINKS_SECTION = "Documentation"

_FENCE = re.compile(r"^ *(```|~~~)")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


def _blocks(text: str) -> Iterator[tuple[str, str]]:
    """(section heading, block) for each paragraph, list, table or fenced block of a Markdown text."""
    section, block, fence = "", [], False
    for line in [*text.splitlines(), ""]:
        if _FENCE.match(line):
            fence = not fence
        if not fence and line.startswith("#"):
            if block:
                yield section, "\n".join(block)
            section, block = line.lstrip("#").strip(), []
            yield section, line
            continue
        if not fence and not line.strip():
            if block:
                yield section, "\n".join(block)
            block = []
            continue
        block.append(line)


def _normalized(text: str) -> str:
    """Markdown as a reader sees it: link targets (which differ between README and pages) and
    line breaks and indentation (which differ between a README list and a page's) left out."""
    return " ".join(_LINK.sub(r"\1", text).split())


def _headings(page: Path) -> list[str]:
    return [block.lstrip("#").strip() for _, block in _blocks(page.read_text()) if block.startswith("#")]


def _pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md"))


def _nav_pages() -> list[tuple[str, str]]:
    """(title, page) of every entry of mkdocs.yml's navigation, in order."""
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=_MkdocsLoader)  # noqa: S506
    found: list[tuple[str, str]] = []

    def walk(entries: list[dict[str, object]]) -> None:
        for entry in entries:
            for title, value in entry.items():
                if isinstance(value, list):
                    walk(value)
                else:
                    found.append((title, str(value)))

    walk(config["nav"])
    return found


class _MkdocsLoader(yaml.SafeLoader):
    """mkdocs.yml's one Python tag (the Mermaid fence's formatter) read as a plain string."""


_MkdocsLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: suffix)


# -- the README and the pages ------------------------------------------------------------------


def test_every_readme_section_of_the_move_has_its_page() -> None:
    """Each section the README had when the site was made is a heading of the page that took it."""
    for heading, page in README_SECTIONS.items():
        assert heading in _headings(DOCS / page), f"{heading!r} is not a heading of docs/{page}"


def test_the_readme_says_nothing_the_docs_do_not() -> None:
    """Every heading, paragraph, list, table and code block of the README is in a page too."""
    docs = _normalized("\n".join(p.read_text() for p in _pages()))
    headings = {h for p in _pages() for h in _headings(p)}
    missing = []
    for section, block in _blocks(README.read_text()):
        if section == README_LINKS_SECTION and block.startswith("- "):
            continue  # the list of links into the pages
        if block.startswith("#"):
            heading = block.lstrip("#").strip()
            if heading not in headings and heading not in (README_LINKS_SECTION, "envoy-jwe-authz"):
                missing.append(block)
        elif _normalized(block) not in docs:
            missing.append(block)
    assert not missing, "README blocks no page holds:\n\n" + "\n\n".join(missing)


def test_every_page_is_in_the_navigation() -> None:
    """A page outside mkdocs.yml's nav would be built but found only by search."""
    listed = {page for _, page in _nav_pages()}
    assert listed == {str(p.relative_to(DOCS)) for p in _pages()}


# -- the CLI reference ---------------------------------------------------------------------------


def _cli_reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "cli_reference.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_the_parsers() -> None:
    """docs/cli.md's option tables are what `python docs/cli_reference.py` writes from the parser today."""
    reference = _cli_reference()
    text = reference.PAGE.read_text(encoding="utf-8")
    assert text == reference.page_with_reference(text), "stale: python docs/cli_reference.py"


def test_cli_command_table_names_every_subcommand_once() -> None:
    """The hand-written summary table has one row per subcommand the parser has, and no other."""
    reference = _cli_reference()
    parser = reference._parser()
    commands = set(
        reference._subcommands(parser).choices
    )  # the top level: `authz revocations`, not its actions
    text = (DOCS / "cli.md").read_text(encoding="utf-8").split("## Command line", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `authz ([a-z-]+)", text, re.MULTILINE)
    assert sorted(rows) == sorted(commands)


# -- the built site ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `make docs` builds it (mkdocs build --strict), in a folder of its own."""
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            "mkdocs.yml",
            "--site-dir",
            out,
        ],
        cwd=REPO,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # the theme's notice of its end of life, once a run
        capture_output=True,
        text=True,
        timeout=180,  # about 2 s alone; bounds a stuck build on a loaded machine
        check=False,
    )
    assert build.returncode == 0, build.stderr
    assert not re.search(r"^WARNING\b", build.stderr, re.MULTILINE), build.stderr
    return out


class _Page(HTMLParser):
    """The ids, links and navigation entries of one built page."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.classes: list[str] = []
        self.primary_nav: list[str] = []
        self._in_primary = 0
        self._in_link = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if attributes.get("id"):
            self.ids.add(str(attributes["id"]))
        self.classes += (attributes.get("class") or "").split()
        if tag == "nav" and "md-nav--primary" in (attributes.get("class") or ""):
            self._in_primary = 1
        elif tag == "nav" and self._in_primary:
            self._in_primary += 1
        for name in ("href", "src"):
            if attributes.get(name):
                self.links.append(str(attributes[name]))
        if tag == "a":
            self._in_link = self._in_primary > 0

    def handle_endtag(self, tag: str) -> None:
        if tag == "nav" and self._in_primary:
            self._in_primary -= 1
        if tag == "a":
            self._in_link = False

    def handle_data(self, data: str) -> None:
        if self._in_link and data.strip():
            self.primary_nav.append(" ".join(data.split()))


@functools.cache
def _parsed(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _html(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


@pytest.mark.parametrize("url", ["", DEEP])
def test_home_and_a_deep_page_have_the_navigation_and_search(site: Path, url: str) -> None:
    """Every nav entry is a link in the page's primary navigation; the search box and the page's
    own table of contents are there; Mermaid blocks become the theme's diagrams."""
    page = _parsed(site / url / "index.html")
    titles = [title for title, _ in _nav_pages()]
    for title in titles:
        assert title.replace("`", "") in page.primary_nav, f"nav entry {title!r} missing on /{url}"
    assert "md-search__input" in page.classes
    assert "md-nav--secondary" in page.classes, "the page's table of contents"
    if url == "":
        assert "mermaid" in page.classes, "the request's path diagram"


def test_the_search_index_holds_every_page(site: Path) -> None:
    """search/search_index.json has each page, with text from deep inside them."""
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    locations = {doc["location"].partition("#")[0] for doc in index["docs"]}
    for _, page in _nav_pages():
        expected = "" if page == "index.md" else page.removesuffix("index.md").removesuffix(".md") + "/"
        assert expected.replace("//", "/") in locations, page
    text = " ".join(f"{doc['title']} {doc['text']}" for doc in index["docs"])
    for term in (
        "dpop_replay_cache_full",
        "authz-keys",
        "headers_with_underscores_action",
        "Reporting a vulnerability",
    ):
        assert term in text, term


def test_every_link_in_the_site_resolves(site: Path) -> None:
    """Each relative href/src of every built page names a file of the site, and each #fragment an id
    of its target (mkdocs --strict checks the Markdown's links; this checks the theme's too)."""
    broken = []
    for path in _html(site):
        for link in _parsed(path).links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or link.startswith(("mailto:", "data:")):
                continue
            # 404.html is served at any depth, so its links start at the site's root
            base = site if parts.path.startswith("/") else path.parent
            target = (base / unquote(parts.path).lstrip("/")).resolve() if parts.path else path
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file():
                broken.append(f"{path.relative_to(site)}: {link}")
            elif (
                parts.fragment
                and target.suffix == ".html"
                and unquote(parts.fragment) not in _parsed(target).ids
            ):
                broken.append(f"{path.relative_to(site)}: {link} (no such anchor)")
    assert not broken, "\n".join(broken)


def test_markdown_read_alike_on_github_and_on_the_site(site: Path) -> None:
    """Python-Markdown, unlike GitHub, needs a blank line before a list and four spaces to nest in one:
    a page that misses either renders its list, code block or marker comment as a paragraph's text."""
    misread = []
    for path in _html(site):
        for paragraph in re.findall(r"<p>(.*?)</p>", path.read_text(encoding="utf-8"), re.DOTALL):
            if re.search(r"\n\s*(?:[-*+]|\d+\.) ", paragraph) or "```" in paragraph or "<!--" in paragraph:
                misread.append(f"{path.relative_to(site)}: {paragraph[:120]!r}")
    assert not misread, "\n".join(misread)


def test_security_page_is_security_md(site: Path) -> None:
    """The site's security page is the root SECURITY.md, whole: its last section is there."""
    html = (site / "security" / "index.html").read_text(encoding="utf-8")
    for heading in _headings(REPO / "SECURITY.md"):
        assert heading in html, heading


# -- the site in a browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The built site over HTTP on 127.0.0.1 (the search index is fetched, which file:// forbids)."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Requests are not test output."""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: .ci/run installs it")
        pytest.skip("no chromium: apt-get install -y chromium")
    return found


def _browse(tmp_path: Path, url: str, *action: str) -> subprocess.CompletedProcess[bytes]:
    """One headless Chromium run on a page, given 5 s of virtual time for the theme's scripts."""
    return subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--hide-scrollbars",
            "--window-size=1280,900",
            "--virtual-time-budget=5000",
            *action,
            url,
        ],
        capture_output=True,
        timeout=120,  # a few seconds alone; bounds a browser that hangs on a loaded machine
        check=False,
    )


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.slow
@pytest.mark.parametrize("url", ["", DEEP])
def test_pages_render_in_chromium(served: str, tmp_path: Path, url: str) -> None:
    """After its scripts ran the page has the navigation and what the theme's JavaScript adds; its
    screenshot is the window's size, with the header's colour at the top and text below."""
    dom = _browse(tmp_path, served + url, "--dump-dom")
    assert dom.returncode == 0, dom.stderr.decode(errors="replace")[-2000:]
    page = _Page()
    page.feed(dom.stdout.decode())
    for title, _ in _nav_pages():
        assert title.replace("`", "") in page.primary_nav, title
    # classes only the theme's bundle sets: on <html> (its focus-visible polyfill), on code blocks
    assert "js-focus-visible" in page.classes, "the theme's JavaScript did not run"
    if url == DEEP:
        assert "md-code__button" in page.classes, "no copy buttons on the code blocks"

    shot = tmp_path / "page.png"
    run = _browse(tmp_path, served + url, f"--screenshot={shot}")
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-2000:]
    assert _png_size(shot.read_bytes()) == (1280, 900)
    from PIL import Image

    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        header = rgb.getpixel((640, 20))
        # the theme's indigo primary (#4051b5) on the header bar
        assert header == (0x40, 0x51, 0xB5), header
        # the page's body holds text: many shades, not a blank or an error page
        body = rgb.crop((0, 120, 1280, 900))
        assert len(body.getcolors(maxcolors=1 << 24) or ()) > 50
