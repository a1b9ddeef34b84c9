"""Stage `pretrain`: Ray Train V2 + DeepSpeed ZeRO on the token shards, then the model registry.

The stage resolves the data (the pipeline's shards, or `train.shards`), the tokenizer and the
initial weights (`train.init_from`, a model directory or a registry URI) and checks, before any
worker starts, that the shards are complete and made with the run's tokenizer and that both splits
hold a window per worker. pipelines/train_launch.py then checks DeepSpeed options and the cluster,
runs the TorchTrainer (per-worker loop: pipelines/train_loop.py) and publishes the model into
`<workspace>/models/<run>/`, MLflow and the registry. Fine-tuning reuses all of it with its own Task.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import Config, LoopConfig
from pipelines.errors import UserError
from pipelines.manifest import manifest_digest, read_manifest
from pipelines.train_launch import run_name
from pipelines.workflow import Stage, StageContext
from pipelines.workspace import Workspace


def pretrain_stage() -> Stage:
    return Stage(
        "pretrain",
        run_pretrain,
        sections=("model", "train"),
        inputs=lambda cfg: () if cfg.train.shards else ("tokenizer", "shards"),
        output_dir=lambda cfg, fp: f"models/{run_name(cfg.train, 'pretrain', fp)}",  # checkpoints/<same>
        fingerprint_extra=explicit_shards_identity,
        summary="pretrain GPT-2 with Ray Train + DeepSpeed ZeRO; register the model in MLflow",
    )


def explicit_shards_identity(cfg: Config, ws: Workspace) -> Any:
    """The digest of the shards manifest named by `train.shards` (pretrain and finetune fingerprints)."""
    if not cfg.train.shards:
        return None
    manifest = _manifest_at(cfg.train.shards)
    return manifest_digest(manifest) if manifest else f"missing:{cfg.train.shards}"


def _manifest_at(path: str) -> dict | None:
    directory = Workspace(path)
    return read_manifest(directory, "")


# --- data ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardsData:
    dir: str  # local path
    manifest: dict
    tokenizer_dir: str  # local path with spm.model
    tokenizer_sha256: str
    vocab_size: int


def resolve_shards(ctx: StageContext) -> ShardsData:
    """The shards to train on, checked complete and made with the tokenizer the run uses."""
    ws = ctx.ws
    if ctx.cfg.train.shards:
        shards_dir = Path(ctx.cfg.train.shards).expanduser().resolve()
        manifest = _manifest_at(str(shards_dir))
        if manifest is None:
            state = "is incomplete (no manifest.json)" if shards_dir.exists() else "does not exist"
            raise UserError(f"config key 'train.shards': {shards_dir} {state}")
        # The shards' workspace root: the manifest records the shards' workspace-relative output dir.
        root = _strip_suffix(str(shards_dir), manifest.get("output", ""))
        tokenizer_dir = Path(root) / manifest["tokenizer"]["dir"]
    else:
        shards, tokenizer = ctx.inputs["shards"], ctx.inputs["tokenizer"]
        manifest, shards_dir = shards.manifest, ws.local_path(shards.dir)
        tokenizer_dir = ws.local_path(tokenizer.dir)
        if tokenizer.manifest["tokenizer"]["sha256"] != manifest["tokenizer"]["sha256"]:
            raise UserError(
                f"shards {shards_dir} were made with tokenizer {manifest['tokenizer']['sha256'][:12]}..., "
                f"not with the pipeline's tokenizer {tokenizer.dir}; rebuild the shards"
            )
    info = manifest["tokenizer"]
    spm = tokenizer_dir / "spm.model"
    if not spm.is_file() or hashlib.sha256(spm.read_bytes()).hexdigest() != info["sha256"]:
        raise UserError(f"shards {shards_dir}: their tokenizer {tokenizer_dir} is missing or does not match")
    _check_shards_complete(str(shards_dir), info)
    return ShardsData(str(shards_dir), manifest, str(tokenizer_dir), info["sha256"], info["vocab_size"])


def _strip_suffix(path: str, suffix: str) -> str:
    suffix = suffix.strip("/")
    if not suffix or not path.rstrip("/").endswith(suffix):
        return str(Path(path).parents[1])  # the contract's layout: <workspace>/shards/<id>
    return path.rstrip("/")[: -len(suffix)]


def _check_shards_complete(shards_dir: str, tokenizer: dict) -> None:
    """Every file of both splits is present and has its recorded checksum (read once, here)."""
    from gpt2core.data import TokenShards

    for split in ("train", "val"):
        try:
            TokenShards(shards_dir, split, tokenizer["sha256"], tokenizer["vocab_size"], verify=True).close()
        except (ValueError, OSError) as exc:
            raise UserError(f"shards {shards_dir} are incomplete or damaged: {exc}") from None


def check_windows(shards: ShardsData, block_size: int, loop: LoopConfig, section: str) -> None:
    from gpt2core.data import TokenShards

    for split in ("train", "val"):
        split_tokens = TokenShards(shards.dir, split, verify=False).n_tokens
        per_rank = split_tokens // (block_size + 1) // loop.num_workers
        if per_rank < 1:
            raise UserError(
                f"shards {shards.dir}: the {split} split has {split_tokens} tokens, too few for "
                f"{loop.num_workers} workers with windows of {block_size + 1} tokens "
                f"(lower model.block_size or {section}.num_workers, or give the corpus more text)"
            )


# --- model ---------------------------------------------------------------------------------------
def resolve_model(
    cfg: Config, vocab_size: int, tokenizer_sha256: str, init_dir: Path | None, section: str = "train"
) -> dict:
    """The GPTConfig fields: the preset with overrides, or the initial model's architecture (whose
    tokenizer must be the data's tokenizer); dropout and activation checkpointing from `model`."""
    from gpt2core.checkpoint import read_config
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
    else:
        try:
            config = read_config(init_dir)
        except ValueError as exc:
            raise UserError(f"config key '{section}.init_from': {exc}") from None
        spm = init_dir / "spm.model"
        sha = hashlib.sha256(spm.read_bytes()).hexdigest() if spm.is_file() else "none (not SentencePiece)"
        if sha != tokenizer_sha256 or config.vocab_size != vocab_size:
            raise UserError(
                f"config key '{section}.init_from': the model's tokenizer ({sha[:12]}..., vocab "
                f"{config.vocab_size}) is not the data's tokenizer ({tokenizer_sha256[:12]}..., vocab {vocab_size})"
            )
    config.dropout, config.activation_checkpointing = m.dropout, m.activation_checkpointing
    return config.to_dict()


def resolve_init(loop: LoopConfig, run_dir: Path, section: str) -> Path | None:
    """<section>.init_from as a local model directory every worker can read (registry models are
    downloaded into the run's checkpoint directory in the workspace)."""
    if not loop.init_from:
        return None
    from pipelines.registry import model_dir_of

    try:
        if ":/" in loop.init_from:
            target = run_dir / "init-model"
            target.mkdir(parents=True, exist_ok=True)
            return model_dir_of(loop.init_from, target)
        return model_dir_of(loop.init_from)
    except UserError as exc:
        raise UserError(f"config key '{section}.init_from': {exc}") from None


# --- the stage -----------------------------------------------------------------------------------
def run_pretrain(ctx: StageContext) -> dict[str, Any]:
    from pipelines.registry import GateData, gate_resources
    from pipelines.train_launch import prepare, publish, run_dir, train
    from pipelines.train_task import PretrainTask

    loop = ctx.cfg.train
    shards = resolve_shards(ctx)
    init_dir = resolve_init(loop, run_dir(ctx, loop), "train")
    gpt = resolve_model(ctx.cfg, shards.vocab_size, shards.tokenizer_sha256, init_dir)
    check_windows(shards, gpt["block_size"], loop, "train")
    task = PretrainTask(shards.dir, shards.tokenizer_dir, shards.tokenizer_sha256, shards.vocab_size)
    launch = prepare(ctx, loop, "train", task, gpt, init_dir, shards_dataset(shards))
    summary, checkpoint = train(launch, ctx.log)
    gate = GateData(shards.dir, shards.tokenizer_dir, **gate_resources(loop))
    result = publish(ctx, launch, summary, checkpoint, gate)
    return {**result, "shards": shards.dir, "tokenizer_sha256": shards.tokenizer_sha256, "model": gpt}


def shards_dataset(shards: ShardsData) -> tuple:
    """The shards manifest as an MLflow dataset (lineage: which tokens trained this run), with tags."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import ColSpec, Schema

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "can be interpreted in multiple ways": a local path is local
        source = resolve_dataset_source(shards.dir)
    dataset = MetaDataset(
        source=source,
        name=f"shards/{Path(shards.dir).name}",
        digest=manifest_digest(shards.manifest)[:16],
        schema=Schema([ColSpec("long", "tokens")]),
    )
    splits = shards.manifest["splits"]
    tags = {
        "tokenizer_sha256": shards.tokenizer_sha256,
        "dtype": str(shards.manifest.get("dtype")),
        **{f"{s}_{k}": str(splits[s][k]) for s in splits for k in ("tokens", "docs", "bytes")},
    }
    return dataset, tags
