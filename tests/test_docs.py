"""The README and the documentation site say what the results JSON says."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import REPO

spec = importlib.util.spec_from_file_location("results_hook", REPO / "docs" / "hooks" / "results.py")
results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results)
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_marked_table_is_its_json(page):
    """A table copied by hand goes stale; a marked one is checked against the file that measured it."""
    assert results.stale(page.read_text()) == [], f"rerun: python docs/hooks/results.py {page.relative_to(REPO)}"


def test_the_family_and_the_demo_tables_are_marked():
    readme = (REPO / "README.md").read_text()
    assert "<!-- results: benchmarks/results/family.json table -->" in readme
    assert "<!-- results: docs/demo/summary.json table -->" in readme
    assert len(readme.splitlines()) <= 250  # it reads in minutes; the rest is on the site


def test_a_changed_number_is_caught_and_rendered(tmp_path, monkeypatch):
    source = tmp_path / "r.json"
    source.write_text(json.dumps({"table": "| a |\n|---|\n| 1.0 |"}))
    monkeypatch.setattr(results, "REPO", tmp_path)
    page = "intro\n<!-- results: r.json table -->\n| a |\n|---|\n| 0.9 |\n<!-- /results -->\nafter\n"
    assert results.stale(page) == ["r.json table"]
    rendered = results.render(page)
    assert "| 1.0 |" in rendered and "0.9" not in rendered and rendered.endswith("after\n")
    assert results.stale(rendered) == []
    with pytest.raises(KeyError):
        results.render(page.replace("r.json table", "r.json rows"))
