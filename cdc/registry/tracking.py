"""MLflow tracking for training runs (the only place training talks to MLflow).

With ``MLFLOW_TRACKING_URI`` unset, runs go to a local SQLite store ``$CDC_HOME/mlflow.db`` with
artifacts under ``$CDC_HOME/mlartifacts`` (``CDC_HOME`` defaults to ``./.cdc``); set the variable
to use a server (``http://mlflow:5000``) or another store. Only the main process logs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_EXPERIMENT = "cdc-train"


def cdc_home() -> Path:
    """Project-local state folder (``$CDC_HOME``, default ``./.cdc``)."""
    return Path(os.environ.get("CDC_HOME", ".cdc")).resolve()


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` or the local SQLite default."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    home = cdc_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be used (server down, unsupported URI); the message says what to do."""


SCHEMES = ("http", "https", "sqlite", "file", "postgresql", "mysql", "mssql", "databricks")
# MLflow's own HTTP defaults retry for minutes before failing; a down server must fail in seconds
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


def check_tracking_uri(uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast with one line when ``uri`` cannot work: an unknown scheme, or an HTTP server whose
    ``/health`` does not answer within ``timeout_s``.

    Raises:
        TrackingUnavailable: naming the URI and what to start or set.
    """
    import urllib.error
    import urllib.request

    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else "file"
    if scheme not in SCHEMES:
        raise TrackingUnavailable(f"MLFLOW_TRACKING_URI={uri}: unsupported scheme {scheme!r} "
                                  f"(use one of {', '.join(SCHEMES)}, or unset it for the local store)")
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
                pass
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingUnavailable(f"MLflow tracking server {uri} unreachable ({reason}); start it with "
                                      "`make serve`, or unset MLFLOW_TRACKING_URI to use the local store") from None


def configure_tracking():
    """Point MLflow at ``tracking_uri`` (no experiment side effects), after
    ``check_tracking_uri``; HTTP retries default to a few seconds (``HTTP_DEFAULTS``).

    Raises:
        TrackingUnavailable: see ``check_tracking_uri``.
    """
    import mlflow

    uri = tracking_uri()
    check_tracking_uri(uri)
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    mlflow.set_tracking_uri(uri)
    return mlflow


def setup_mlflow(experiment: str = DEFAULT_EXPERIMENT):
    """Point MLflow at ``tracking_uri`` and select (creating if needed) ``experiment``."""
    mlflow = configure_tracking()
    uri = tracking_uri()
    if mlflow.get_experiment_by_name(experiment) is None:
        artifacts = None
        if uri.startswith("sqlite:") and not os.environ.get("MLFLOW_TRACKING_URI"):
            artifacts = (cdc_home() / "mlartifacts").as_uri()
        with contextlib.suppress(mlflow.exceptions.MlflowException):  # created concurrently elsewhere
            mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment)
    return mlflow


class RunTracker:
    """A training run's MLflow run; every method is a no-op when ``enabled`` is False.

    Args:
        enabled: True on the main process only.
        experiment: MLflow experiment name.
        run_name: display name of the run.
        run_id: resume this run (training resumed from a checkpoint) instead of starting one.
        tags: run tags (e.g. ``cdc.role=warmup``).
    """

    def __init__(self, enabled: bool, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
                 run_id: str | None = None, tags: dict[str, str] | None = None) -> None:
        self.enabled = enabled
        self.run_id: str | None = None
        if not enabled:
            return
        try:
            self.mlflow = setup_mlflow(experiment)
            run = self.mlflow.start_run(run_id=run_id, run_name=None if run_id else run_name, tags=tags)
        except ImportError:
            self._disable("mlflow is not installed")
            return
        except Exception as exc:  # server down, store unusable: training goes on without it
            self._disable(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)
            return
        self.run_id = run.info.run_id

    def _disable(self, reason: str) -> None:
        print(f"WARNING: MLflow tracking off for the rest of this run ({reason}); metrics go to "
              "metrics.jsonl only", file=sys.stderr, flush=True)
        self.enabled = False

    def _guard(self, call) -> None:
        """Run one MLflow call; the first failure (e.g. the server went down) disables tracking."""
        if not self.enabled:
            return
        try:
            call()
        except Exception as exc:
            self._disable(str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__)

    def log_params(self, params: dict[str, Any]) -> None:
        """Log params not logged yet (a resumed run keeps its first values)."""
        def call() -> None:
            existing = self.mlflow.get_run(self.run_id).data.params
            new = {k: str(v) for k, v in params.items() if k not in existing}
            if new:
                self.mlflow.log_params(new)
        self._guard(call)

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set run tags."""
        self._guard(lambda: self.mlflow.set_tags({k: str(v) for k, v in tags.items()}))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log scalar metrics at ``step``."""
        self._guard(lambda: self.mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step))

    def log_image(self, image: np.ndarray, name: str) -> None:
        """Log an H x W x 3 uint8 image as ``name`` (e.g. ``samples/step-0001000.png``)."""
        self._guard(lambda: self.mlflow.log_image(image, artifact_file=name))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file as a run artifact."""
        self._guard(lambda: self.mlflow.log_artifact(str(path), artifact_path=artifact_path))

    def end(self, status: str = "FINISHED") -> None:
        """Close the run with ``status``."""
        self._guard(lambda: self.mlflow.end_run(status=status))


def code_version() -> str:
    """``cdc`` version plus the git commit of the source tree when there is one (``0.1.0+g1a2b3c4``)."""
    import subprocess

    from cdc import __version__

    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__
