"""The README and the documentation site say what the results JSON says."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys

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
    with pytest.raises(results.ResultsError, match=r"marker 'r\.json rows': r\.json: no key 'rows'"):
        results.render(page.replace("r.json table", "r.json rows"))


def _hook(tmp_path, page_text: str, *args: str) -> subprocess.CompletedProcess:
    page = tmp_path / "page.md"
    page.write_text(page_text)
    return subprocess.run([sys.executable, str(REPO / "docs" / "hooks" / "results.py"), str(page), *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.mark.parametrize(("source", "key", "problem"), [
    ("/etc/passwd", "table", "outside the repository"),
    ("../../../../etc/passwd", "table", "outside the repository"),
    ("/dev/zero", "table", "outside the repository"),
    ("docs", "table", "not a regular file"),
    ("docs/nothing.json", "table", "no such file"),
    ("README.md", "table", "not JSON"),
    ("benchmarks/results/scale.json", "nope", "no key 'nope'"),
    ("benchmarks/results/scale.json", "rows", "holds list, not text"),
    ("benchmarks/results/scale.json", "loader.gpu_images_s", "holds float, not text"),
    ("benchmarks/results/scale.json", "table.x", "no key 'table.x'"),
])
def test_the_hook_reads_only_text_of_regular_files_in_the_repository(tmp_path, source, key, problem):
    r = _hook(tmp_path, f"<!-- results: {source} {key} -->\nold\n<!-- /results -->\n")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"results: error: {tmp_path / 'page.md'}: marker '{source} {key}': ")
    assert problem in lines[0]
    assert (tmp_path / "page.md").read_text().endswith("old\n<!-- /results -->\n")  # the page is untouched


def test_the_hook_escapes_markup_and_refuses_unclosed_markers(tmp_path, monkeypatch):
    (tmp_path / "r.json").write_text(json.dumps({"table": "| a |\n|---|\n| <script>alert(1)</script> |"}))
    monkeypatch.setattr(results, "REPO", tmp_path)
    rendered = results.render("<!-- results: r.json table -->\n<!-- /results -->\n")
    assert "<script>" not in rendered and "&lt;script>" in rendered
    with pytest.raises(results.ResultsError, match="page:2: results marker without its closing"):
        results.render("intro\n<!-- results: r.json table -->\n| a |\n")
    with pytest.raises(results.ResultsError, match="without its closing"):
        results.stale("<!-- results: r.json table -->\n| a |\n")
    missing = subprocess.run([sys.executable, str(REPO / "docs" / "hooks" / "results.py"), str(tmp_path / "no.md")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"results: error: {tmp_path / 'no.md'}: No such file or directory"


def test_a_bad_marker_stops_the_site_build_in_one_line(tmp_path):
    """As ``make docs`` runs the hook: MkDocs reports the page and the marker, no traceback."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("<!-- results: benchmarks/results/scale.json nope -->\n"
                                                "<!-- /results -->\n")
    (tmp_path / "mkdocs.yml").write_text(f"site_name: t\nhooks:\n  - {REPO / 'docs' / 'hooks' / 'results.py'}\n")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    source = "benchmarks/results/scale.json"
    assert f"index.md: marker '{source} nope': {source}: no key 'nope'" in r.stderr



# Words that mean something only to the people who wrote the code: work sessions, borrowed machines,
# issue numbers, notes that are not in the repository. Readers are users and contributors.
INSIDER = re.compile(r"\bsessions?\b|\blent\b|\blease\b|\bissue \d+|the issue asks|our machines|cdc-reference",
                     re.IGNORECASE)
PYTEST_SCOPE = re.compile(r"scope=\"session\"|the session;|session-scoped|pytest session", re.IGNORECASE)


def test_the_repository_speaks_of_the_product_only():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    found = []
    for name in files:
        path = REPO / name
        if path.suffix not in {".md", ".py", ".json", ".yaml", ".yml", ".sh", ".toml", ".cfg", ".txt", ""} or \
                name == "tests/test_docs.py" or not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            lines = path.read_text().splitlines()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(lines, 1):
            if INSIDER.search(PYTEST_SCOPE.sub("", line)):
                found.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not found, "\n".join(found)


def _readme_block(containing: str) -> list[str]:
    """The commands of the README's bash block that contains ``containing``, comments removed."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.DOTALL)
    block = next(b for b in blocks if containing in b)
    return [re.sub(r"\s+# .*$", "", line).strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.slow
def test_the_readmes_model_commands_run_as_written(tmp_path):
    """Section 3 of the README, line by line as a user pastes it, in a folder holding a photo.png."""
    import socket
    import time

    from conftest import photo
    from PIL import Image

    Image.fromarray(photo("coffee", (96, 128))).save(tmp_path / "photo.png")
    env = {**os.environ, "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "CDC_HOME": str(tmp_path / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = None
    try:
        for line in _readme_block("cdc serve"):
            if line.startswith("cdc serve"):
                server = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=tmp_path, env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                deadline = time.monotonic() + 120
                while socket.socket().connect_ex(("127.0.0.1", 5001)) != 0:
                    assert server.poll() is None and time.monotonic() < deadline, "cdc serve did not come up"
                    time.sleep(0.5)
                continue
            r = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                               timeout=300)
            if "best:" in line:  # an empty registry: one line that says so
                assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr
                assert "no registered cdc-* models" in r.stderr
            else:
                assert r.returncode == 0, (line, r.stderr[-2000:])
            if line.startswith("curl"):
                answer = json.loads(r.stdout)["predictions"][0]
                assert answer["error"] is None and answer["bpp"] > 0
        assert (tmp_path / "photo-decoded.png").is_file() and (tmp_path / "photo.cdc").is_file()
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)


def test_the_model_cards_page_includes_every_shipped_models_card():
    from cdc.zoo.pretrained import available

    page = (REPO / "docs" / "models.md").read_text()
    assert [n for n in available() if f'--8<-- "cdc/zoo/weights/{n}.md"' not in page] == []
