"""Tables of measured numbers come from the JSON their script wrote, never from a hand copy.

A page (or the README) marks a table with its source, a repo-relative JSON file and a key in it::

    <!-- results: benchmarks/results/family.json table -->
    | model | ... |
    <!-- /results -->

MkDocs runs :func:`on_page_markdown` on every page (``hooks:`` in ``mkdocs.yml``), so the site always
shows the JSON's table; ``tests/test_docs.py`` fails when a committed page or the README holds
anything else, and ``python docs/hooks/results.py README.md docs/*.md`` rewrites them after a rerun.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"(<!-- results: (\S+) (\S+) -->\n)(.*?)(<!-- /results -->)", re.S)


def table(source: str, key: str) -> str:
    """The markdown text at ``key`` (dotted for nested objects) of the JSON file ``source`` (repo-relative).

    Raises:
        KeyError / FileNotFoundError: the marker names something the JSON does not hold.
    """
    value = json.loads((REPO / source).read_text())
    for part in key.split("."):
        value = value[part]
    return str(value).strip()


def render(markdown: str) -> str:
    """``markdown`` with every marked block replaced by its JSON's table."""
    return BLOCK.sub(lambda m: f"{m[1]}{table(m[2], m[3])}\n{m[5]}", markdown)


def stale(markdown: str) -> list[str]:
    """The ``source key`` of every marked block whose text differs from its JSON's table."""
    return [f"{m[2]} {m[3]}" for m in BLOCK.finditer(markdown) if m[4].strip() != table(m[2], m[3])]


def on_page_markdown(markdown: str, **_) -> str:
    """MkDocs hook: render the marked tables of a page."""
    return render(markdown)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        path = Path(name)
        text = path.read_text()
        if render(text) != text:
            path.write_text(render(text))
            print(f"updated {path}")
