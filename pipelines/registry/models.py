"""The model registry: log a model directory as a pyfunc model, register a version, move the aliases.

MLflow reserves the alias name `latest`: `models:/<name>/latest` is built in and always resolves to
the newest version, i.e. the one registered last. `champion` moves only when the new version's validation
bits per byte beat the current champion's, both evaluated now on the same validation shards (in a
Ray task with a training worker's resources, so a GPU model is evaluated on a GPU). Both figures
and the decision go into the new version's tags. Bits per byte compare across tokenizers: a
champion with another tokenizer reads the same validation text, re-encoded with its own.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipelines.core.cache import DirRef, as_local
from pipelines.errors import UserError

if TYPE_CHECKING:
    from pipelines.config import LoopConfig

PYFUNC_FILE = Path(__file__).with_name("pyfunc.py")
GPT2CORE_DIR = Path(__file__).resolve().parents[2] / "gpt2core"
MODEL_ARTIFACT = "model"
CHAMPION = "champion"
OUTPUT_TAG = "output"  # on a registered version: its model directory (full URI), for lineage
_REQUIREMENTS = ("torch", "safetensors", "sentencepiece", "tokenizers", "numpy", "mlflow")


@dataclass(frozen=True, kw_only=True)
class GateResources:
    """How the gate evaluates, whatever its data: batches and resources as the training loop's."""

    batch_size: int
    max_batches: int
    num_cpus: int = 1
    num_gpus: int = 0


class Gate(Protocol):
    """What the champion gate evaluates with: its resources (GateResources) and the figures of a
    candidate model directory against the champion's (None: there is no champion)."""

    num_cpus: int
    num_gpus: int

    @property
    def val_data(self) -> str: ...

    def figures(self, candidate_dir: str, champion_dir: str | None) -> dict[str, float | None]: ...


def gate_resources(loop: LoopConfig) -> dict[str, int]:
    """GateResources fields of a training loop config: its global micro batch and eval batches,
    one worker's CPUs and GPU."""
    return {
        "batch_size": loop.micro_batch_size * loop.max_workers,
        # the training evaluation's windows (eval_batches global batches), in batches of that size
        "max_batches": loop.eval_batches
        * loop.global_batch_size
        // (loop.micro_batch_size * loop.max_workers),
        "num_cpus": loop.cpus_per_worker,
        "num_gpus": 1 if loop.use_gpu else 0,
    }


@dataclass(frozen=True)
class GateData(GateResources):
    """The pretraining gate's data: validation shards and their tokenizer."""

    shards_dir: str | DirRef  # a local path, or published shards fetched by the gate's node
    tokenizer_dir: str | DirRef  # the shards' tokenizer (to re-encode for a champion with another one)

    @property
    def val_data(self) -> str:
        return location(self.shards_dir)

    def figures(self, candidate_dir: str, champion_dir: str | None) -> dict[str, float | None]:
        """What the gate compares. Another gate data (fine-tuning's val pairs) brings its own."""
        return gate_figures(candidate_dir, champion_dir, self)


def pip_requirements() -> list[str]:
    """The serving environment: pinned to what trained the model (no slow requirement inference)."""
    pins = []
    for name in _REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def input_example() -> tuple[list[str], dict[str, Any]]:
    """The logged input example: a prompt and the sampling params. With `predict`'s type hints it is
    the signature's one source: the hints give inputs and outputs, these params (PARAMS) the params
    schema with their defaults (MLflow keeps only params declared there). MLflow runs the model on it
    while logging (a model load and PARAMS' max_new_tokens of sampling), to check the output."""
    from pipelines.registry.pyfunc import PARAMS

    return ["Once upon a time"], dict(PARAMS)


def log_model(model_dir: str | Path) -> str:
    """Log `model_dir` as a pyfunc model into the active MLflow run; returns its model URI."""
    import mlflow

    from pipelines.registry.pyfunc import MODEL_CONFIG

    info = mlflow.pyfunc.log_model(
        # logged with its keys, so a load-time model_config (or MLflow's serving env) overrides them
        model_config=dict(MODEL_CONFIG),
        name=MODEL_ARTIFACT,
        python_model=str(PYFUNC_FILE),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(GPT2CORE_DIR)],
        input_example=input_example(),
        pip_requirements=pip_requirements(),
    )
    return info.model_uri


def register(model_uri: str, name: str, tags: dict[str, Any] | None = None) -> str:
    """A new version of registered model `name` (so `models:/<name>/latest`); returns the version."""
    import mlflow

    return str(mlflow.register_model(model_uri, name, tags=tags).version)


def latest_uri(name: str) -> str:
    return f"models:/{name}/latest"


def model_dir_of(uri: str, dst: str | Path | None = None) -> Path:
    """A local model directory (config.json + weights + tokenizer) for a model dir path or a
    `models:/name@alias` / `models:/name/version` / `runs:/...` URI (downloaded into `dst`)."""
    if "://" not in uri and ":/" not in uri:
        path = Path(uri).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(f"{uri}: not a model directory (no config.json)")
        return path
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.registry import pyfunc

    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst) if dst else None)
    except MlflowException as exc:
        raise UserError(f"{uri}: cannot download the model ({exc.message.splitlines()[0]})") from None
    found = pyfunc_artifact(Path(local), pyfunc.MODEL_DIR_ARTIFACT)
    if found is None or not (found / "config.json").is_file():
        raise UserError(
            f"{uri}: not a model logged by this project (no {pyfunc.MODEL_DIR_ARTIFACT!r} artifact)"
        )
    return found


def pyfunc_artifact(model_root: Path, key: str) -> Path | None:
    """Where a pyfunc model keeps its artifact `key` (MLmodel: python_function.artifacts.<key>.path)."""
    import yaml

    mlmodel = model_root / "MLmodel"
    if not mlmodel.is_file():
        return None
    flavor = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {})
    path = flavor.get("artifacts", {}).get(key, {}).get("path")
    return model_root / path if path else None


def current_champion(name: str) -> Any | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def gate_figures(candidate_dir: str, champion_dir: str | None, data: GateData) -> dict[str, float | None]:
    """Val bits per byte (and loss) of the candidate and the champion on the same val text."""
    import torch

    from gpt2core.evaluate import evaluate_model_dir, val_tokens_for

    device = "cuda" if data.num_gpus and torch.cuda.is_available() else "cpu"
    figures: dict[str, float | None] = {"champion_bpb": None, "champion_loss": None}
    shards_dir, tokenizer_dir = as_local(data.shards_dir), as_local(data.tokenizer_dir)
    for who, model_dir in (("candidate", candidate_dir), ("champion", champion_dir)):
        if model_dir is None:
            continue
        val = val_tokens_for(model_dir, shards_dir, tokenizer_dir)
        result = evaluate_model_dir(model_dir, val, data.batch_size, data.max_batches, device)
        figures[f"{who}_bpb"], figures[f"{who}_loss"] = result.bits_per_byte, result.loss
    return figures


def location(where: str | DirRef) -> str:
    """What a tag or a message names: a DirRef's URI, or the path itself."""
    return where.uri if isinstance(where, DirRef) else str(where)


def _figures_of(data: Gate, candidate: str | DirRef, champion_uri: str | None, tracking_uri: str | None):
    """The gate's figures, on whichever node the task landed: it fetches the candidate (from the
    workspace, through the node cache) and the champion (from the registry) itself, since no
    directory of the driver is visible there."""
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="champion-") as tmp:
        champion_dir = str(model_dir_of(champion_uri, tmp)) if champion_uri else None
        return data.figures(as_local(candidate), champion_dir)


@dataclass(frozen=True)
class GateEvaluation:
    """The gate's evaluation under way in a Ray task (start_gate): the candidate against the
    champion of the moment it started."""

    champion: Any  # the champion's ModelVersion, or None
    figures: Any  # the Ray ObjectRef of gate figures


def start_gate(name: str, candidate: str | DirRef, data: Gate) -> GateEvaluation:
    """Start evaluating a published candidate against `name`'s champion, without waiting: the
    caller logs and registers the model meanwhile (the evaluation needs only the model files)."""
    import mlflow
    import ray

    champion = current_champion(name)
    champion_uri = f"models:/{name}/{champion.version}" if champion is not None else None
    task = ray.remote(num_cpus=data.num_cpus, num_gpus=data.num_gpus)(_figures_of)
    return GateEvaluation(champion, task.remote(data, candidate, champion_uri, mlflow.get_tracking_uri()))


def champion_gate(
    name: str,
    version: str,
    candidate: str | DirRef,
    data: Gate,
    contamination: dict[str, Any] | None = None,
    started: GateEvaluation | None = None,
) -> dict[str, Any]:
    """Evaluate the new version against the champion (or take the evaluation `started` for it);
    move `champion` if it is better and, when `contamination` is given ({"figures":
    lineage.contamination.measure's, "refused": why not, or None}), clean enough. Returns the
    figures and the decision, also set as tags `gate.*` on the new version."""
    import mlflow
    import ray

    started = started or start_gate(name, candidate, data)
    champion, figures = started.champion, ray.get(started.figures)
    better = figures["champion_bpb"] is None or figures["candidate_bpb"] < figures["champion_bpb"]
    refused = (contamination or {}).get("refused")
    promote = better and refused is None
    decision = {
        **figures,
        "champion_version": champion.version if champion is not None else None,
        "promoted": promote,
        "contamination": (contamination or {}).get("figures"),
        "refused": refused,
    }
    client = mlflow.MlflowClient()
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    tags = {
        "gate.candidate_bpb": f"{figures['candidate_bpb']:.6f}",
        "gate.champion_bpb": "none" if figures["champion_bpb"] is None else f"{figures['champion_bpb']:.6f}",
        "gate.champion_version": str(decision["champion_version"] or "none"),
        "gate.decision": "promoted to champion"
        if promote
        else f"kept the champion{': ' + refused if refused else ''}",
        "gate.val_data": data.val_data,
    }
    if decision["contamination"] is not None:
        tags["gate.contamination"] = f"{decision['contamination']['max']:.6f}"
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return decision


def registry_version(uri: str, key: str = "finetune.init_from") -> tuple[str, str]:
    """(models:/<name>/<version>, version) for models:/<name>@<alias> or models:/<name>/<version>:
    an alias is resolved once, so the run and its lineage name one version even if the alias moves."""
    import mlflow
    from mlflow.exceptions import MlflowException

    body = uri.removeprefix("models:/")
    name, at, alias = body.partition("@")
    if not at:
        name, _, version = body.partition("/")
        return uri, version
    try:
        version = mlflow.MlflowClient().get_model_version_by_alias(name, alias).version
    except MlflowException:
        raise UserError(
            f"config key {key!r}: registered model {name!r} has no alias {alias!r} ({uri} does not exist)"
        ) from None
    return f"models:/{name}/{version}", str(version)
