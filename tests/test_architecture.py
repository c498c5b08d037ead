"""The layout is the architecture: which package may import which, checked on every import of the source
(module level and inside functions alike)."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# The shared modules at cdc/'s top: configuration, limits, files, images, argument types, the allocator.
SHARED = {"config", "limits", "files", "images", "argtypes", "allocator"}
CORE = {"shared", "models", "zoo", "coding"}
ALLOWED = {
    "shared": {"shared"},
    "models": {"shared", "models"},
    "zoo": {"shared", "models", "zoo"},
    "coding": CORE,
    "registry": CORE | {"registry"},
    "evaluation": CORE | {"evaluation"},
    "training": CORE | {"training", "registry"},
    "cli": CORE | {"registry", "evaluation", "training", "cli"},
    # entry points: the package's lazy exports, ``python -m cdc`` and ``cdc/train.py``
    "entry": CORE | {"cli", "training", "entry"},
}
THIRD_PARTY_BY_LAYER = {"mlflow": {"registry", "training", "cli", "evaluation"}, "prefect": set()}


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "cdc":
        return parts[0]
    if len(parts) == 1 or parts[1] in ("__main__", "train"):
        return "entry"
    return "shared" if parts[1] in SHARED else parts[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            if node.module == "cdc":  # ``from cdc import models`` names a module, ``__version__`` does not
                found |= {f"cdc.{a.name}" for a in node.names
                          if (REPO / "cdc" / a.name).is_dir() or (REPO / "cdc" / f"{a.name}.py").is_file()}
    return found


SOURCES = sorted((REPO / "cdc").rglob("*.py"))


def test_every_module_belongs_to_a_known_layer():
    layers = {_layer(_module_name(p)) for p in SOURCES}
    assert layers <= set(ALLOWED), f"modules outside the known packages: {layers - set(ALLOWED)}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_imports_flow_one_way(path):
    """models <- zoo <- coding (the codec core) <- registry, evaluation <- training <- cli; the core never
    imports training, evaluation or MLflow, and nothing in cdc imports pipelines or Prefect."""
    layer = _layer(_module_name(path))
    wrong = []
    for module in sorted(_imports(path)):
        top = module.split(".")[0]
        if top == "cdc" and module != "cdc" and _layer(module) not in ALLOWED[layer]:
            wrong.append(f"{module} ({_layer(module)})")
        elif top == "pipelines" or (top in THIRD_PARTY_BY_LAYER and layer not in THIRD_PARTY_BY_LAYER[top]):
            wrong.append(module)
    assert not wrong, f"{path.relative_to(REPO)} ({layer}) may not import {', '.join(wrong)}"


def test_shards_imports_no_model_code():
    for path in sorted((REPO / "shards").rglob("*.py")):
        bad = {m for m in _imports(path) if m.split(".")[0] in ("cdc", "pipelines", "prefect", "mlflow")}
        assert not bad, f"{path.relative_to(REPO)} imports {bad}: shards is the data format and its reader only"


def test_each_package_says_what_it_owns_and_may_import():
    for init in sorted((REPO / "cdc").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc, f"{init.relative_to(REPO)}: the docstring must say what the package may import"
