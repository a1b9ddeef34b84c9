"""Stage `pretrain`: Ray Train V2 + DeepSpeed ZeRO on the token shards, then the model registry.

The stage resolves the data (the pipeline's shards, or `train.shards`), the tokenizer and the
initial weights (`train.init_from`, a model directory or a registry URI) and checks, before any
worker starts, that the shards are complete and made with the run's tokenizer, that both splits
hold a window per worker and the val split an evaluation batch (check_windows: also at planning
time, in a dry run too, when the shards are published). pipelines/training/launch.py then checks
DeepSpeed options and the cluster, runs the TorchTrainer (per-worker loop: pipelines/training/loop.py)
and publishes the model into `<workspace>/models/<run>/`, MLflow and the registry. Fine-tuning reuses
all of it with its own Task.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2core.tokenizer import SPM_FILE
from pipelines.config import Config, LoopConfig
from pipelines.core.cache import DirRef
from pipelines.core.hashing import sha256_path
from pipelines.core.manifest import manifest_digest, read_manifest
from pipelines.core.outputs import TokenizerOutput
from pipelines.core.workflow import Published, Stage, StageContext
from pipelines.core.workspace import Workspace, uri_basename
from pipelines.errors import UserError
from pipelines.training.launch import run_name


def pretrain_stage() -> Stage:
    return Stage(
        "pretrain",
        run_pretrain,
        sections=("model", "train"),
        inputs=lambda cfg: () if cfg.train.shards else ("tokenizer", "shards"),
        output_dir=lambda cfg, fp: f"models/{run_name(cfg.train, 'pretrain', fp)}",  # checkpoints/<same>
        fingerprint_extra=explicit_shards_identity,
        preflight=pretrain_preflight,
        summary="pretrain GPT-2 with Ray Train + DeepSpeed ZeRO; register the model in MLflow",
    )


def explicit_shards_identity(cfg: Config, ws: Workspace) -> Any:
    """The digest of the shards manifest named by `train.shards` (pretrain and finetune fingerprints)."""
    if not cfg.train.shards:
        return None
    manifest = read_manifest(Workspace(cfg.train.shards, "train.shards"), "")
    return manifest_digest(manifest) if manifest else f"missing:{cfg.train.shards}"


# --- data ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardsData:
    ref: DirRef  # the shards directory (its manifest travels with it: TokenShards reads it)
    manifest: dict
    tokenizer: DirRef  # the tokenizer directory (spm.model, Hugging Face files)
    tokenizer_sha256: str
    vocab_size: int

    @property
    def dir(self) -> str:
        """The shards' URI (a local path on a local workspace): for messages and lineage."""
        return self.ref.uri


def resolve_shards(ctx: StageContext) -> ShardsData:
    """The shards to train on, checked complete and made with the tokenizer the run uses."""
    if ctx.cfg.train.shards:
        where = Workspace(ctx.cfg.train.shards, "train.shards")
        manifest = read_manifest(where, "")
        if manifest is None:
            state = "is incomplete (no manifest.json)" if where.exists("") else "does not exist"
            raise UserError(f"config key 'train.shards': {where.full_uri()} {state}")
        # The shards' workspace root: the manifest records the shards' workspace-relative output dir.
        root = _strip_suffix(where.root, manifest.get("output", ""))
        tokenizer_path = posixpath.join(root, manifest["tokenizer"]["dir"])
        tokenizer_ws = Workspace(where.uri_of(tokenizer_path), "train.shards")
        shards_ws, shards_rel = where, ""
    else:
        shards, tokenizer = ctx.inputs["shards"], TokenizerOutput.of(ctx.inputs["tokenizer"])
        manifest, shards_ws, shards_rel = shards.manifest, ctx.ws, shards.dir
        tokenizer_ws = Workspace(ctx.ws.full_uri(tokenizer.dir))
        if tokenizer.sha256 != manifest["tokenizer"]["sha256"]:
            raise UserError(
                f"shards {ctx.ws.full_uri(shards.dir)} were made with tokenizer "
                f"{manifest['tokenizer']['sha256'][:12]}..., not with the pipeline's tokenizer "
                f"{tokenizer.dir}; rebuild the shards"
            )
    ref = DirRef.of(shards_ws, shards_rel, manifest, with_manifest=True)
    info = manifest["tokenizer"]
    tokenizer_ref = DirRef.of(tokenizer_ws, "")
    recorded = tokenizer_ref.files.get(SPM_FILE)
    if tokenizer_ws.is_local and recorded:  # a local file can be read now; a remote one when fetched
        spm = Path(tokenizer_ws.path(SPM_FILE))
        recorded = sha256_path(spm) if spm.is_file() else None
    if recorded != info["sha256"]:
        raise UserError(f"shards {ref.uri}: their tokenizer {tokenizer_ref.uri} is missing or does not match")
    _check_shards_complete(shards_ws, shards_rel, manifest)
    return ShardsData(ref, manifest, tokenizer_ref, info["sha256"], info["vocab_size"])


def _strip_suffix(path: str, suffix: str) -> str:
    suffix = suffix.strip("/")
    if not suffix or not path.rstrip("/").endswith(suffix):
        return posixpath.dirname(posixpath.dirname(path.rstrip("/")))  # the layout: <ws>/shards/<id>
    return path.rstrip("/")[: -len(suffix)]


def _check_shards_complete(ws: Workspace, rel: str, manifest: dict) -> None:
    """Every file of both splits is present with its recorded size; on a local workspace also
    its checksum (read once, here). Object-store files are verified by the node cache instead,
    as each node fetches them, so the driver never downloads the shards."""
    from gpt2core.data import TokenShards

    tokenizer = manifest["tokenizer"]
    if ws.is_local:
        for split in ("train", "val"):
            try:
                TokenShards(
                    ws.path(rel), split, tokenizer["sha256"], tokenizer["vocab_size"], verify=True
                ).close()
            except (ValueError, OSError) as exc:
                raise UserError(f"shards {ws.full_uri(rel)} are incomplete or damaged: {exc}") from None
        return
    files = manifest["files"]
    infos = ws.fs.get_file_info([ws.path(posixpath.join(rel, name)) for name in files])
    for (name, entry), info in zip(files.items(), infos):
        if info.size != entry["bytes"]:
            state = (
                "is missing"
                if info.type.name == "NotFound"
                else f"has {info.size} bytes, not {entry['bytes']}"
            )
            raise UserError(f"shards {ws.full_uri(rel)} are incomplete or damaged: {name} {state}")


def published_shards(cfg: Config, ws: Workspace, inputs: dict[str, Published]) -> tuple[dict, str] | None:
    """(manifest, URI) of the shards a training stage reads - `train.shards`, or the pipeline's `shards`
    output - when they are published; only the manifest is read."""
    if cfg.train.shards:
        where = Workspace(cfg.train.shards, "train.shards")
        manifest = read_manifest(where, "")
        return (manifest, where.full_uri()) if manifest else None
    shards = inputs.get("shards")
    return (shards.manifest, ws.full_uri(shards.dir)) if shards else None


def check_windows(manifest: dict, where: str, block_size: int, loop: LoopConfig, section: str) -> None:
    """Both splits of the shards manifest hold a window per worker, and the val split an evaluation
    batch: micro_batch_size windows on each rank (engine.evaluate_engine, gpt2core.data.eval_shares)
    at the most workers the run may get. A smaller val split is evaluated in partial batches, every
    val figure and the champion gate on less than one batch of windows."""
    window, workers = block_size + 1, loop.max_workers
    splits = manifest["splits"]
    for split in ("train", "val"):
        if splits[split]["tokens"] // window // workers < 1:
            raise UserError(
                f"shards {where}: the {split} split has {splits[split]['tokens']} tokens, too few for "
                f"{workers} workers with windows of {window} tokens "
                f"(lower model.block_size or {section}.num_workers, or give the corpus more text)"
            )
    windows, need = splits["val"]["tokens"] // window, loop.micro_batch_size * workers
    if windows < need:
        raise UserError(
            f"config key '{section}.micro_batch_size': shards {where}: the val split has {windows} windows "
            f"of {window} tokens, fewer than one evaluation batch of {section}.micro_batch_size="
            f"{loop.micro_batch_size} windows on each of {workers} workers ({need}); lower "
            f"{section}.micro_batch_size (and {section}.global_batch_size) or give the val split more text"
        )


def pretrain_preflight(cfg: Config, ws: Workspace, inputs: dict[str, Published]) -> None:
    """At planning time (Runner.check, `--dry-run` too): published shards against the context and the
    batch. With train.init_from the context is the initial model's, checked once it is resolved."""
    from pipelines.lineage.contamination import check_sets

    check_sets(cfg.registry)
    shards = published_shards(cfg, ws, inputs)
    if shards is not None and not cfg.train.init_from:
        check_windows(*shards, cfg.model.resolved("block_size"), cfg.train, "train")


# --- model ---------------------------------------------------------------------------------------
def resolve_model(
    cfg: Config, vocab_size: int, tokenizer_sha256: str, init_dir: Path | None, section: str = "train"
) -> dict:
    """The GPTConfig fields: the preset with overrides, or the initial model's architecture (whose
    tokenizer must be the data's tokenizer); dropout and activation checkpointing from `model`."""
    from gpt2core.config import preset

    m = cfg.model
    if init_dir is None:
        try:
            config = preset(
                m.preset,
                vocab_size,
                n_layer=m.n_layer,
                n_head=m.n_head,
                n_embd=m.n_embd,
                block_size=m.block_size,
            )
        except ValueError as exc:
            raise UserError(f"config section 'model': {exc}") from None
        config.dropout, config.activation_checkpointing = m.dropout, m.activation_checkpointing
    else:
        config = init_config(cfg, init_dir, section)
        spm = init_dir / "spm.model"
        sha = hashlib.sha256(spm.read_bytes()).hexdigest() if spm.is_file() else "none (not SentencePiece)"
        if sha != tokenizer_sha256 or config.vocab_size != vocab_size:
            raise UserError(
                f"config key '{section}.init_from': the model's tokenizer ({sha[:12]}..., vocab "
                f"{config.vocab_size}) is not the data's tokenizer ({tokenizer_sha256[:12]}..., vocab {vocab_size})"
            )
    return config.to_dict()


def init_config(cfg: Config, init_dir: Path, section: str):
    """The initial model's architecture (a GPTConfig), with dropout and activation checkpointing
    from `model` (they are how this run trains, not what the model is)."""
    from gpt2core.checkpoint import read_config

    try:
        config = read_config(init_dir)
    except ValueError as exc:
        raise UserError(f"config key '{section}.init_from': {exc}") from None
    config.dropout, config.activation_checkpointing = cfg.model.dropout, cfg.model.activation_checkpointing
    return config


def resolve_init(loop: LoopConfig, section: str) -> Path | None:
    """<section>.init_from as a model directory on the driver (registry models are downloaded into
    a local staging directory); stage_init then puts it where every worker can read it."""
    if not loop.init_from:
        return None
    from pipelines.core.cache import staging_dir
    from pipelines.registry.models import model_dir_of

    try:
        if ":/" in loop.init_from:
            return model_dir_of(loop.init_from, staging_dir("init-model-"))
        return model_dir_of(loop.init_from)
    except UserError as exc:
        raise UserError(f"config key '{section}.init_from': {exc}") from None


def stage_init(ctx: StageContext, loop: LoopConfig, init_dir: Path | None) -> DirRef | None:
    """The initial model copied into `checkpoints/<run>/init-model/` of the workspace: a driver's
    directory is not there on the workers' nodes."""
    if init_dir is None:
        return None
    from pipelines.training.launch import run_rel

    rel = f"{run_rel(ctx, loop)}/init-model"
    return DirRef(ctx.ws.full_uri(rel), ctx.ws.upload_dir(init_dir, rel))


# --- the stage -----------------------------------------------------------------------------------
def run_pretrain(ctx: StageContext) -> dict[str, Any]:
    from pipelines.core.cache import discard_staging
    from pipelines.lineage.contamination import gate_input
    from pipelines.registry.models import GateData, gate_resources
    from pipelines.training.launch import prepare, train
    from pipelines.training.publish import publish
    from pipelines.training.task import PretrainTask

    loop = ctx.cfg.train
    shards = resolve_shards(ctx)
    init_dir = resolve_init(loop, "train")
    gpt = resolve_model(ctx.cfg, shards.vocab_size, shards.tokenizer_sha256, init_dir)
    check_windows(shards.manifest, shards.dir, gpt["block_size"], loop, "train")
    task = PretrainTask(shards.ref, shards.tokenizer, shards.tokenizer_sha256, shards.vocab_size)
    init_model = stage_init(ctx, loop, init_dir)
    discard_staging(init_dir)  # a registry download: the workspace copy is the one the workers use
    launch = prepare(ctx, loop, "train", task, gpt, init_model, shards_dataset(shards))
    summary, checkpoint = train(launch, ctx.log)
    gate = GateData(shards.ref, shards.tokenizer, **gate_resources(loop))
    said = lambda line: ctx.log(f"[{ctx.stage}] {line}")  # noqa: E731
    contamination = gate_input(shards.dir, shards.manifest, ctx.cfg.registry, ctx.cfg.corpus, said)
    result = publish(ctx, launch, summary, checkpoint, gate, contamination=contamination)
    return {**result, "shards": shards.dir, "tokenizer_sha256": shards.tokenizer_sha256, "model": gpt}


def shards_dataset(shards: ShardsData) -> tuple:
    """The shards manifest as an MLflow dataset (lineage: which tokens trained this run), with tags."""
    from mlflow.types import ColSpec, Schema

    from pipelines.runtime import tracking

    name, digest = f"shards/{uri_basename(shards.dir)}", manifest_digest(shards.manifest)
    dataset = tracking.meta_dataset(shards.dir, name, digest, schema=Schema([ColSpec("long", "tokens")]))
    splits = shards.manifest["splits"]
    tags = {
        "tokenizer_sha256": shards.tokenizer_sha256,
        "dtype": str(shards.manifest.get("dtype")),
        **{f"{s}_{k}": str(splits[s][k]) for s in splits for k in ("tokens", "docs", "bytes")},
    }
    return dataset, tags
