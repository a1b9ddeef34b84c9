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
from pipelines.core.workspace import Workspace
from pipelines.errors import UserError

# A name (env var, config key or dict key) that holds a credential. "token" counts only as the whole
# last word, so `tokenizer.vocab_size` or `max_new_tokens` are not taken for secrets.
_SECRET_KEY = re.compile(
    r"passw|secret|credential|(^|[_.-])(token|api[_-]?key|access[_-]?key|private[_-]?key|connection[_-]?string)$",
    re.I,
)
# Credentials that travel inside values: `scheme://user:PASSWORD@host` and signed-URL query parameters.
_URL_PASSWORD = re.compile(r"(?<=://)([^/\s:@]+):([^/\s@]+)@")
_URL_SIGNATURE = re.compile(
    r"([?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|sig|signature|"
    r"token|access_token|api_key)=)[^&#\s\"']+",
    re.I,
)
MAX_PARAM_CHARS = 6000
REDACTED = "***"


def resolve_tracking_uri(cfg: Config, ws: Workspace) -> str:
    uri = cfg.mlflow.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not ws.is_local and (not uri or uri.startswith("sqlite:")):
        # Workers on other nodes log to it and load models from it: a file on one disk will not do.
        raise UserError(
            "config key 'mlflow.tracking_uri': an object-store workspace needs an MLflow tracking "
            f"server (http://...), not {'a SQLite file' if uri else 'the workspace SQLite default'}"
        )
    return uri or f"sqlite:///{ws.local_path('mlflow.db')}"


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


def is_secret_name(name: str) -> bool:
    """True for a name (environment variable, config or dict key) that holds a credential."""
    return bool(_SECRET_KEY.search(name))


def _secret_values() -> list[str]:
    """Values of environment variables that look like credentials (never logged anywhere), longest
    first so that a secret containing another is replaced whole."""
    values = {v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= 6}
    return sorted(values, key=len, reverse=True)


def redact(value: str, secrets: list[str] | None = None) -> str:
    """`value` without credentials: env secrets, URL passwords and URL signatures become ***."""
    for secret in _secret_values() if secrets is None else secrets:
        value = value.replace(secret, REDACTED)
    value = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", value)
    return _URL_SIGNATURE.sub(rf"\1{REDACTED}", value)


def redact_tree(tree: Any, secrets: list[str] | None = None, masked: bool = False) -> Any:
    """A copy of a JSON-like tree fit to log: every value under a secret-named key masked, every
    string redacted."""
    secrets = _secret_values() if secrets is None else secrets
    if isinstance(tree, Mapping):
        return {k: redact_tree(v, secrets, masked or is_secret_name(str(k))) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [redact_tree(item, secrets, masked) for item in tree]
    if masked and tree not in (None, ""):
        return REDACTED
    return redact(tree, secrets) if isinstance(tree, str) else tree


def safe_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Params fit for MLflow: flattened, stringified, truncated, credentials redacted."""
    return {key: str(value)[:MAX_PARAM_CHARS] for key, value in flatten(redact_tree(params)).items()}


def log_dict(tree: Mapping[str, Any], artifact_file: str) -> None:
    """`mlflow.log_dict` of the redacted tree: artifacts hold no credentials either."""
    import mlflow

    mlflow.log_dict(redact_tree(tree), artifact_file)


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


def meta_dataset(uri: str, name: str, digest: str, schema=None):
    """An MLflow dataset (a run's input: lineage) for the files at `uri`, named `name`, with the first
    16 characters of `digest` (a manifest's or a file's sha256) as its digest."""
    from mlflow.data.meta_dataset import MetaDataset

    return MetaDataset(source=dataset_source(uri), name=name, digest=digest[:16], schema=schema)


def dataset_source(uri: str):
    """The MLflow dataset source of a local path or object-store URI (its query options left out:
    they may hold an endpoint or keys)."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": a local path is local
        return resolve_dataset_source(uri.split("?", 1)[0])
