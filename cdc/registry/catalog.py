"""The MLflow model registry for CDC codecs (MLflow 3: aliases and tags, not stages).

* One registered model per *family* — ``cdc-{x|eps|v}-rho{rho}`` — and one version per lambda.
* Version tags: ``lmbda``, ``rho``, ``prediction``, ``preset``, ``decode_steps``, ``cell_key``,
  ``shards_fingerprint``, ``code_version``, ``perceptual`` (+ whether it was pretrained), and per
  evaluation dataset ``<dataset>.<metric>`` (``div2k.bpp``, ``div2k.psnr-rgb``, ``div2k.stlpips-vgg``, ...).
* Aliases ``q1`` ... ``qK`` order a family's versions by bpp (low to high, like CompressAI's
  quality 1..8); ``champion`` is the version closest to the family's target rate (default 0.25 bpp).
* Each version is a pyfunc model (image files in -> ``.cdc`` files, real bpp and reconstructions out;
  ``.cdc`` files in -> reconstructions; ``cdc.registry.pyfunc``) with the raw
  codec checkpoint as an artifact, loadable by ``mlflow.pyfunc.load_model("models:/cdc-x-rho0.9@q2")``.

``find(target_bpp=0.2, objective="perception", dataset="shards")`` returns the best version at or
under a rate; the CLI accepts ``-m models:/NAME@ALIAS`` and ``-m "best:bpp<=0.2,objective=perception"``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cdc.registry.tracking import TrackingUnavailable, configure_tracking

PERCEPTION_METRICS = ("lpips-vgg", "stlpips-vgg", "dists", "fid", "fd-stlpips-vgg")  # lower is better, in order
DISTORTION_METRIC = "psnr-rgb"
DEFAULT_CHAMPION_BPP = 0.25


class RegistryError(LookupError):
    """No model matches, or the registry cannot be reached."""


def family_name(prediction: str, rho: float) -> str:
    """``cdc-x-rho0.9`` for an X-parameterized model trained with rho = 0.9."""
    short = {"sample": "x", "epsilon": "eps", "v": "v"}[prediction]
    return f"cdc-{short}-rho{rho:g}"


@dataclass(frozen=True)
class Version:
    """One registered model version: name, version, tags and aliases."""
    name: str
    version: str
    tags: dict[str, str]
    aliases: tuple[str, ...]

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def metric(self, dataset: str, metric: str) -> float | None:
        value = self.tags.get(f"{dataset}.{metric}")
        return float(value) if value not in (None, "", "nan") else None


def client():
    """An ``MlflowClient`` on the configured tracking URI.

    Raises:
        RegistryError: the tracking store cannot be reached (one line naming it and the fix).
    """
    return _mlflow().MlflowClient()


def _mlflow():
    try:
        return configure_tracking()
    except TrackingUnavailable as exc:
        raise RegistryError(str(exc)) from None


def list_versions(prefix: str = "cdc-") -> list[Version]:
    """Every version of every registered model whose name starts with ``prefix``."""
    c = client()
    out = []
    for model in c.search_registered_models(filter_string=f"name LIKE '{prefix}%'"):
        for v in c.search_model_versions(f"name = '{model.name}'"):
            aliases = tuple(sorted(a for a, ver in (model.aliases or {}).items() if str(ver) == str(v.version)))
            out.append(Version(model.name, str(v.version), dict(v.tags), aliases))
    return sorted(out, key=lambda v: (v.name, int(v.version)))


def registered_cell_keys(prefix: str = "cdc-") -> set[str]:
    """Cell keys of every registered version (grid idempotency)."""
    return {v.tags["cell_key"] for v in list_versions(prefix) if "cell_key" in v.tags}


def evaluated_datasets(versions: list[Version]) -> list[str]:
    """The datasets any of ``versions`` has metrics on (tags ``<dataset>.bpp``), sorted."""
    return sorted({key.removesuffix(".bpp") for v in versions for key in v.tags if key.endswith(".bpp")})


def default_dataset(versions: list[Version]) -> str:
    """The dataset to compare ``versions`` on when none is named: the only one they were evaluated
    on (the grid and the demo evaluate on ``shards``, ``cdc eval`` on ``kodak`` by default).

    Raises:
        RegistryError: none, or several (the message lists them: name one with ``dataset=``).
    """
    datasets = evaluated_datasets(versions)
    if len(datasets) != 1:
        found = f"several: {', '.join(datasets)}" if datasets else "none"
        raise RegistryError(f"which evaluation dataset? the registered models have {found} (name one: dataset=NAME, "
                            "--dataset NAME)")
    return datasets[0]


def find(target_bpp: float, objective: str = "perception", dataset: str | None = None,
         prefix: str = "cdc-") -> Version:
    """The best version with ``<dataset>.bpp <= target_bpp``.

    ``objective="distortion"`` maximises PSNR; ``"perception"`` minimises the first perceptual metric
    (LPIPS-VGG, ST-LPIPS-VGG, DISTS, FID, fd-stlpips-vgg) that every candidate has. ``dataset``: None
    is ``default_dataset``.

    Raises:
        RegistryError: nothing was evaluated on ``dataset`` at or under the rate (the message names
            the datasets there are).
    """
    if objective not in ("perception", "distortion"):
        raise RegistryError(f"objective must be 'perception' or 'distortion', not {objective!r}")
    versions = list_versions(prefix)
    if not versions:
        raise RegistryError(f"no registered {prefix}* models (train a grid: prefect deployment run train-grid/local)")
    dataset = dataset or default_dataset(versions)
    candidates = [v for v in versions
                  if v.metric(dataset, "bpp") is not None and v.metric(dataset, "bpp") <= target_bpp]
    if not candidates:
        others = ", ".join(evaluated_datasets(versions)) or "none"
        raise RegistryError(f"no registered model evaluated on {dataset} at or under {target_bpp} bpp "
                            f"(datasets with evaluations: {others})")
    if objective == "distortion":
        scored = [(v.metric(dataset, DISTORTION_METRIC), v) for v in candidates]
        scored = [(s, v) for s, v in scored if s is not None]
        if scored:
            return max(scored, key=lambda sv: sv[0])[1]
    else:
        for metric in PERCEPTION_METRICS:
            scored = [(v.metric(dataset, metric), v) for v in candidates]
            if all(s is not None for s, _ in scored):
                return min(scored, key=lambda sv: sv[0])[1]
    raise RegistryError(f"no candidate has the {objective} metrics on {dataset}")


def parse_best(ref: str) -> tuple[float, str, str | None]:
    """``best:bpp<=X[,objective=perception|distortion][,dataset=NAME]`` (options in any order) ->
    (X, objective, dataset or None: see ``default_dataset``); raises ``RegistryError`` naming
    the query for anything else."""
    first, *options = (part.strip() for part in ref.removeprefix("best:").split(","))
    key, sep, value = first.replace(" ", "").partition("<=")
    if key != "bpp" or not sep:
        raise RegistryError(f"{ref}: a best: query starts with bpp<=X")
    try:
        target = float(value)
    except ValueError:
        raise RegistryError(f"{ref}: {value!r} is not a number of bits per pixel") from None
    chosen: dict[str, str | None] = {"objective": "perception", "dataset": None}
    given: set[str] = set()
    for option in options:
        name, sep, choice = (x.strip() for x in option.partition("="))
        if not sep or name not in chosen or not re.fullmatch(r"[\w.-]+", choice):
            raise RegistryError(f"{ref}: unknown option {option!r} (objective=..., dataset=...)")
        if name in given:
            raise RegistryError(f"{ref}: {name} given twice")
        given.add(name)
        chosen[name] = choice
    if chosen["objective"] not in ("perception", "distortion"):
        raise RegistryError(f"{ref}: objective must be perception or distortion, not {chosen['objective']!r}")
    return target, chosen["objective"], chosen["dataset"]


def resolve(ref: str, cache: Path | None = None) -> Path:
    """A ``models:/...`` URI or a ``best:bpp<=X[,objective=...][,dataset=...]`` query -> local checkpoint.

    Downloads are cached per tracking store and model version (its run id included), so another
    registry's version 1 is never served from this one's cache; an incomplete entry is fetched again.
    """
    if ref.startswith("best:"):
        target, objective, dataset = parse_best(ref)
        ref = find(target, objective, dataset).uri
    if not ref.startswith("models:/"):
        raise RegistryError(f"{ref}: not a models:/ URI or best: query")
    mlflow = _mlflow()
    c = mlflow.MlflowClient()
    name, _, rest = ref[len("models:/"):].partition("/")
    name, at, alias = name.partition("@")
    if not name or (at and (rest or not alias)) or (not at and not rest.isdigit()):
        raise RegistryError(f"{ref}: not models:/NAME@ALIAS or models:/NAME/VERSION")
    try:
        mv = c.get_model_version_by_alias(name, alias) if at else c.get_model_version(name, rest)
    except mlflow.exceptions.MlflowException as exc:
        raise RegistryError(f"{ref}: {exc.message if hasattr(exc, 'message') else exc}") from None
    cache = cache or Path(os.environ.get("CDC_MODEL_CACHE", Path.home() / ".cache" / "cdc" / "models"))
    identity = hashlib.sha256(f"{mlflow.get_tracking_uri()}|{mv.name}|{mv.version}|{mv.run_id}|{mv.source}".encode())
    target = cache / mv.name / f"{mv.version}-{identity.hexdigest()[:16]}"
    checkpoint = target / "artifacts" / "checkpoint"
    if not all((checkpoint / f).is_file() for f in ("model.safetensors", "config.json")):
        shutil.rmtree(target, ignore_errors=True)  # an incomplete entry: fetch it whole again
        staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        with _environment(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):  # MLflow reads it from the environment
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{mv.name}/{mv.version}", dst_path=str(staging))
        try:
            staging.rename(target)
        except OSError:  # another process finished the same download first
            shutil.rmtree(staging, ignore_errors=True)
    if not (checkpoint / "model.safetensors").is_file():
        raise RegistryError(f"{ref}: the model has no codec checkpoint artifact")
    return checkpoint


@contextlib.contextmanager
def _environment(**defaults: str) -> Iterator[None]:
    """Set environment defaults for the duration of a call only (what the user set wins)."""
    added = {k: v for k, v in defaults.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def register(checkpoint: str | Path, metrics: dict[str, dict[str, float]], eval_dataset: str, cell_key: str,
             decode_steps: int, tags: dict[str, str] | None = None,
             champion_bpp: float = DEFAULT_CHAMPION_BPP) -> Version:
    """Log ``checkpoint`` as a pyfunc model in the active MLflow run and register it in its family.

    Args:
        checkpoint: a codec checkpoint directory (e.g. a training output directory).
        metrics: ``{dataset: {metric: value}}`` from the evaluation (``bpp`` included).
        eval_dataset: the dataset whose bpp orders the ``q1..qK`` aliases.
        cell_key: the grid cell's idempotency key (a rerun skips registered keys).
        decode_steps: the DDIM steps the metrics were measured with.
    """
    import mlflow

    from cdc.registry.pyfunc import MODEL_CODE, SIGNATURE, input_example, requirements, stage_checkpoint
    from cdc.zoo.checkpoint import read_checkpoint_info

    info = read_checkpoint_info(checkpoint)
    cfg, meta = info["config"], info.get("metadata", {})
    family = family_name(cfg["diffusion"]["prediction"], cfg["loss"]["rho"])
    with tempfile.TemporaryDirectory() as tmp:
        staged = stage_checkpoint(checkpoint, Path(tmp))
        model_info = mlflow.pyfunc.log_model(name="codec", python_model=str(MODEL_CODE),
                                             artifacts={"checkpoint": str(staged)}, signature=SIGNATURE,
                                             input_example=input_example(), pip_requirements=requirements(),
                                             registered_model_name=family)
    version = str(model_info.registered_model_version)
    all_tags = {
        "lmbda": cfg["loss"]["lmbda"], "rho": cfg["loss"]["rho"], "prediction": cfg["diffusion"]["prediction"],
        "preset": cfg["preset"], "decode_steps": decode_steps, "cell_key": cell_key, "eval_dataset": eval_dataset,
        "fingerprint": info["fingerprint"], "shards_fingerprint": meta.get("shards_fingerprint"),
        "code_version": meta.get("code_version"), "perceptual": meta.get("perceptual"),
        "perceptual_pretrained": meta.get("perceptual_pretrained"), "trained_steps": meta.get("trained_steps"),
        **{f"{ds}.{k}": v for ds, values in metrics.items() for k, v in values.items()},
        **(tags or {}),
    }
    c = client()
    for key, value in all_tags.items():
        c.set_model_version_tag(family, version, key, "" if value is None else str(value))
    update_aliases(family, eval_dataset, champion_bpp)
    return next(v for v in list_versions(family) if v.version == version)


@dataclass(frozen=True)
class TrainedModel:
    """A trained and evaluated model to register: a grid cell (label, idempotency key, training
    parameters), its checkpoint, its metrics ``{dataset: {metric: value}}`` and the CompressAI-schema
    results file they came from (its ``meta.steps``: the decode steps measured)."""

    label: str
    key: str
    params: dict
    model_dir: str
    metrics: dict[str, dict[str, float]]
    results_file: str


def register_grid(models: list[TrainedModel], dataset: str, experiment: str, settings: dict) -> dict[str, dict]:
    """One MLflow parent run for the grid, a child run per model; each model becomes a version.

    Returns ``{model key: {"name", "version"}}`` plus the parent run id under ``"__parent__"``.
    """
    import json

    from cdc.registry.tracking import setup_mlflow

    mlflow = setup_mlflow(experiment)
    out: dict[str, dict] = {}
    with mlflow.start_run(run_name="train-grid", tags={"cdc.role": "grid"}) as parent:
        mlflow.log_params({f"eval.{k}": v for k, v in settings.items()})
        out["__parent__"] = {"run_id": parent.info.run_id}
        for m in models:
            with mlflow.start_run(run_name=m.label, nested=True, tags={"cdc.cell_key": m.key}):
                mlflow.log_params(m.params)
                mlflow.log_metrics({f"{ds}.{k}": v for ds, values in m.metrics.items() for k, v in values.items()})
                mlflow.log_artifact(m.results_file, "eval")
                meta = json.loads(Path(m.results_file).read_text())["meta"]
                gamma = {"decode_gamma": meta["gamma"]} if meta.get("gamma") is not None else {}
                version = register(m.model_dir, m.metrics, dataset, m.key, meta["steps"], tags=gamma)
                out[m.key] = {"name": version.name, "version": version.version}
    return out


def update_aliases(family: str, dataset: str, champion_bpp: float = DEFAULT_CHAMPION_BPP) -> None:
    """Re-point ``q1..qK`` (by bpp on ``dataset``, low to high) and ``champion`` for ``family``."""
    c = client()
    versions = [v for v in list_versions(family) if v.name == family and v.metric(dataset, "bpp") is not None]
    versions.sort(key=lambda v: v.metric(dataset, "bpp"))
    for i, v in enumerate(versions, start=1):
        c.set_registered_model_alias(family, f"q{i}", v.version)
    if versions:
        champion = min(versions, key=lambda v: abs(v.metric(dataset, "bpp") - champion_bpp))
        c.set_registered_model_alias(family, "champion", champion.version)


def table(versions: list[Version], dataset: str) -> str:
    """What ``cdc models list`` prints: the versions with their metrics on ``dataset``."""
    metrics = ["bpp", "psnr-rgb", "ms-ssim-rgb", "stlpips-vgg", "lpips-vgg", "fd-stlpips-vgg", "fid"]
    metrics = [m for m in metrics if any(v.metric(dataset, m) is not None for v in versions)]
    header = ["model", "version", "aliases", "lmbda", "rho", "steps", *[f"{dataset}.{m}" for m in metrics]]
    rows = [[v.name, v.version, ",".join(v.aliases), v.tags.get("lmbda", ""), v.tags.get("rho", ""),
             v.tags.get("decode_steps", ""), *[f"{v.metric(dataset, m):.4f}" if v.metric(dataset, m) is not None
                                              else "" for m in metrics]] for v in versions]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=True)) for r in [header, *rows])
