"""Tables of measured numbers come from the JSON their script wrote, never from a hand copy.

A page (or the README) marks a table with its source, a repo-relative JSON file and a key in it::

    <!-- results: benchmarks/results/family.json table -->
    | model | ... |
    <!-- /results -->

MkDocs runs :func:`on_page_markdown` on every page (``hooks:`` in ``mkdocs.yml``), so the site always
shows the JSON's table; ``tests/test_docs.py`` fails when a committed page or the README holds
anything else, and ``python docs/hooks/results.py README.md docs/*.md`` rewrites them after a rerun.

A marker may name only a regular file inside the repository, and the value at its key must be
text (a Markdown table); it is inserted with ``<`` escaped, so no HTML tag gets through. Anything else (a file outside
the repository, a device, malformed JSON, a missing key, a marker without its closing line) is
one error line naming the page and the marker.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OPEN = re.compile(r"<!-- results: (\S+) (\S+) -->\n")
BLOCK = re.compile(r"(<!-- results: (\S+) (\S+) -->\n)(.*?)(<!-- /results -->)", re.S)
MAX_BYTES = 16 * 2**20  # a results file is a few KB; anything this large is not one


class ResultsError(ValueError):
    """A marker that cannot be rendered (the message names the page and the marker)."""


def table(source: str, key: str) -> str:
    """The Markdown text at ``key`` (dotted for nested objects) of the JSON file ``source``
    (repo-relative), with ``<`` escaped (no HTML from a results file reaches the page).

    Raises:
        ResultsError: ``source`` is not a regular file inside the repository, not JSON, or has no
            text at ``key``.
    """
    path = (REPO / source).resolve()
    if not path.is_relative_to(REPO):
        raise ResultsError(f"{source}: outside the repository")
    if not path.is_file():
        raise ResultsError(f"{source}: {'not a regular file' if path.exists() else 'no such file'}")
    if path.stat().st_size > MAX_BYTES:
        raise ResultsError(f"{source}: larger than {MAX_BYTES} bytes")
    try:
        value = json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:
        raise ResultsError(f"{source}: not JSON ({str(exc).splitlines()[0][:200]})") from None
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ResultsError(f"{source}: no key {key!r}")
        value = value[part]
    if not isinstance(value, str):
        raise ResultsError(f"{source}: {key!r} holds {type(value).__name__}, not text (a Markdown table)")
    return value.strip().replace("<", "&lt;")  # no tag of a results file reaches the page


def _blocks(markdown: str, page: str) -> list[re.Match]:
    """Every marked block of ``markdown``; an opening line without its closing one is an error."""
    blocks = list(BLOCK.finditer(markdown))
    opened = [m.start() for m in OPEN.finditer(markdown)]
    if len(opened) != len(blocks):
        closed = {m.start() for m in blocks}
        line = markdown[: next(s for s in opened if s not in closed)].count("\n") + 1
        raise ResultsError(f"{page}:{line}: results marker without its closing <!-- /results -->")
    return blocks


def _table(match: re.Match, page: str) -> str:
    try:
        return table(match[2], match[3])
    except ResultsError as exc:
        raise ResultsError(f"{page}: marker '{match[2]} {match[3]}': {exc}") from None


def render(markdown: str, page: str = "page") -> str:
    """``markdown`` with every marked block replaced by its JSON's table."""
    out, end = [], 0
    for m in _blocks(markdown, page):
        out.append(markdown[end : m.start()] + f"{m[1]}{_table(m, page)}\n{m[5]}")
        end = m.end()
    return "".join(out) + markdown[end:]


def stale(markdown: str, page: str = "page") -> list[str]:
    """The ``source key`` of every marked block whose text differs from its JSON's table."""
    return [f"{m[2]} {m[3]}" for m in _blocks(markdown, page) if m[4].strip() != _table(m, page)]


def on_page_markdown(markdown: str, page=None, **_) -> str:
    """MkDocs hook: render the marked tables of a page (an error stops the build in one line)."""
    from mkdocs.exceptions import PluginError

    try:
        return render(markdown, str(getattr(getattr(page, "file", None), "src_path", "page")))
    except ResultsError as exc:
        raise PluginError(str(exc)) from None


def main(pages: list[str]) -> int:
    """Rewrite ``pages`` with their JSON's tables; 1 with one error line per page that cannot be."""
    failed = 0
    for name in pages:
        path = Path(name)
        try:
            text = path.read_text()
            rendered = render(text, name)
        except OSError as exc:
            print(f"results: error: {name}: {exc.strerror or exc}", file=sys.stderr)
            failed += 1
            continue
        except ResultsError as exc:
            print(f"results: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        if rendered != text:
            path.write_text(rendered)
            print(f"updated {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
