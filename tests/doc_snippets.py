"""The code blocks of docs/ that tests run exactly as written."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def snippet(name: str, page: str = "integrations.md") -> str:
    """The code block after `<!-- snippet: NAME -->` in docs/PAGE."""
    text = (DOCS / page).read_text()
    match = re.search(rf"<!-- snippet: {re.escape(name)} -->\n```\w+\n(.*?)```", text, re.S)
    assert match, f"docs/{page} has no snippet {name!r}"
    return match.group(1)
