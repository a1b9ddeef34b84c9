"""MLflow in one place: where the tracking server is, run contexts, safe params and metrics.

Tracking URI: config `mlflow.tracking_uri`, else MLFLOW_TRACKING_URI, else a SQLite database in the
workspace (MLflow 3 deprecates the file store). Artifacts of a SQLite-backed experiment live in the
workspace too, never in the current directory.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pipelines.config import Config
from pipelines.errors import UserError
from pipelines.workspace import Workspace

_SECRET_KEY = re.compile(r"(passw|secret|token|credential|api[_-]?key|access[_-]?key|private[_-]?key)", re.I)
MAX_PARAM_CHARS = 6000
REDACTED = "***"


def resolve_tracking_uri(cfg: Config, ws: Workspace) -> str:
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if not ws.is_local:
        raise UserError("config key 'mlflow.tracking_uri' is required when the workspace is not local")
    return f"sqlite:///{ws.local_path('mlflow.db')}"


def configure(cfg: Config, ws: Workspace) -> str:
    """Point this process's MLflow client at the tracking server and experiment; return the URI."""
    import mlflow

    uri = resolve_tracking_uri(cfg, ws)
    if uri.startswith("sqlite:///"):
        ws.makedirs("")
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_TRACKING_URI"] = uri  # Ray workers and subprocesses inherit it
    experiment = mlflow.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is None:
        artifact_location = ws.full_uri("mlartifacts") if uri.startswith("sqlite:") else None
        if artifact_location and ws.is_local:
            artifact_location = ws.local_path("mlartifacts").as_uri()
        mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=artifact_location)
    mlflow.set_experiment(cfg.mlflow.experiment)
    return uri


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _secret_values() -> list[str]:
    """Values of environment variables that look like credentials (never logged anywhere)."""
    return [v for k, v in os.environ.items() if _SECRET_KEY.search(k) and len(v) >= 6]


def redact(value: str) -> str:
    for secret in _secret_values():
        value = value.replace(secret, REDACTED)
    return value


def safe_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Params fit for MLflow: flattened, stringified, truncated, credentials redacted."""
    safe = {}
    for key, value in flatten(params).items():
        text = REDACTED if _SECRET_KEY.search(key) and value not in (None, "") else redact(str(value))
        safe[key] = text[:MAX_PARAM_CHARS]
    return safe


def log_params(params: Mapping[str, Any]) -> None:
    import mlflow

    items = list(safe_params(params).items())
    for start in range(0, len(items), 100):  # MLflow caps a batch at 100 params
        mlflow.log_params(dict(items[start : start + 100]))


def numeric_metrics(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers among `values` (nested mappings flattened), as MLflow metrics."""
    metrics = {}
    for key, value in flatten(values, prefix).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            metrics[key] = float(value)
    return metrics


@contextmanager
def run(
    name: str, *, nested: bool = False, run_id: str | None = None, tags: dict | None = None
) -> Iterator[Any]:
    """An MLflow run that ends FAILED when the body raises, FINISHED otherwise."""
    import mlflow

    with mlflow.start_run(
        run_name=None if run_id else name, nested=nested, run_id=run_id, tags=tags
    ) as active:
        yield active
