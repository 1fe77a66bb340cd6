"""mkdocs hooks (mkdocs.yml `hooks:`): the site's security page is SECURITY.md itself.

SECURITY.md stays at the repository's root, where GitHub shows it as the security policy, and
links into the pages as `docs/...`; docs/security.md only names it (a link for readers on GitHub,
between the markers), so the two cannot drift.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(
    r"^<!-- include: (?P<name>[A-Z]+\.md) -->\n.*?^<!-- end include -->$", re.MULTILINE | re.DOTALL
)
# A link from the root file into the pages, `](docs/page.md#anchor)`, seen from docs/.
DOCS_LINK = re.compile(r"\]\(docs/")


def included(markdown: str) -> str:
    """The page, each `<!-- include: NAME.md -->` ... `<!-- end include -->` replaced by that root file."""

    def text(match: re.Match[str]) -> str:
        return DOCS_LINK.sub("](", (ROOT / match["name"]).read_text(encoding="utf-8"))

    return INCLUDE.sub(text, markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return included(markdown)
