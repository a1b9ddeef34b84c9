"""Stage `finetune`: pretraining's machinery (training/launch.py, training/loop.py) on new data.

Only what differs from pretraining lives here: where the initial model comes from (the pipeline's
`pretrain` output, a registry URI resolved to its version, a models/<run>/ directory, or a Hugging
Face GPT-2 directory imported with its own BPE tokenizer), the data (JSONL pairs with the loss on
the completion, a text file, pairs made from the demo corpus, or the pipeline's shards), optional
LoRA and early stopping, and lineage tags on the new registered version (parent model, dataset
digest). The champion gate is pretraining's, evaluated on the fine-tuning val set. What the initial
model's config.json tells (model.block_size within its positions, finetune.lora_rank within its
width) is checked at planning time (finetune_preflight, in a dry run too) and again once it is resolved.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.config import Config, lora_rank_problem
from pipelines.core.cache import DirRef, file_identity, user_file
from pipelines.core.hashing import sha256_path
from pipelines.core.outputs import CorpusOutput, ModelOutput
from pipelines.core.workflow import Published, Stage, StageContext
from pipelines.core.workspace import Workspace, uri_basename
from pipelines.errors import UserError
from pipelines.registry.models import registry_version
from pipelines.training.launch import run_name

if TYPE_CHECKING:
    from pipelines.registry.models import Gate
    from pipelines.training.task import Task

DEMO_PAIRS = "demo:corpus-pairs"  # finetune.data: pairs made from the pipeline's corpus
DATA_DIR = "data"  # in checkpoints/<run>/: the tokenized rows and the val pairs


def finetune_stage() -> Stage:
    return Stage(
        "finetune",
        run_finetune,
        sections=("model", "finetune"),
        inputs=finetune_inputs,
        output_dir=lambda cfg, fp: f"models/{run_name(cfg.finetune, 'finetune', fp)}",
        fingerprint_extra=_sources_identity,
        preflight=finetune_preflight,
        enabled=lambda cfg: cfg.finetune.enabled,
        summary="fine-tune a registered, pretrained or Hugging Face GPT-2; register it in MLflow",
    )


def finetune_inputs(cfg: Config) -> tuple[str, ...]:
    f = cfg.finetune
    names = () if f.init_from else ("pretrain",)
    if f.data is None and not cfg.train.shards:
        names += ("tokenizer", "shards")
    elif f.data == DEMO_PAIRS:
        names += ("corpus",)
    return names


def _sources_identity(cfg: Config, ws: Workspace) -> Any:
    """What the config's strings do not say: the content of a data file and of a model directory."""
    from pipelines.training.pretrain import explicit_shards_identity

    f = cfg.finetune
    data = file_identity(f.data, DEMO_PAIRS, "finetune.data")
    init = None
    if f.init_from and ":/" not in f.init_from:
        config = Path(f.init_from).expanduser() / "config.json"
        weights = list(config.parent.glob("*.safetensors")) + list(config.parent.glob("*.bin"))
        stat = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(weights)]
        init = {"config": sha256_path(config) if config.is_file() else None, "weights": stat}
    shards = explicit_shards_identity(cfg, ws) if f.data is None else None
    return {"data": data, "init": init, "shards": shards}


# --- the initial model ---------------------------------------------------------------------------
@dataclass(frozen=True)
class InitModel:
    dir: Path  # a gpt2core model directory with its tokenizer files, on the driver
    ref: DirRef  # the same files where every worker reads them (the workspace)
    lineage: dict[str, str]  # parent_model_uri, parent_model_version (registry versions only)


def resolve_init_model(ctx: StageContext) -> InitModel:
    from gpt2core.hf import import_hf, is_hf_dir
    from pipelines.core.cache import staging_dir
    from pipelines.training.pretrain import resolve_init, stage_init

    loop, key = ctx.cfg.finetune, "config key 'finetune.init_from'"
    if not loop.init_from:
        pretrain = ModelOutput.of(ctx.inputs["pretrain"])
        lineage = {"parent_model_uri": pretrain.registered_uri, "parent_model_version": pretrain.version}
        ref = DirRef.of(ctx.ws, pretrain.dir, pretrain.manifest)
        return InitModel(ref.local(), ref, lineage)
    if loop.init_from.startswith("models:/"):
        uri, version = registry_version(loop.init_from)
        directory = resolve_init(loop.model_copy(update={"init_from": uri}), "finetune")
        lineage = {"parent_model_uri": loop.init_from, "parent_model_version": version}
    elif is_hf_dir(path := Path(loop.init_from).expanduser()):
        try:
            directory = import_hf(path, Path(staging_dir("hf-import-")))
        except ValueError as exc:
            raise UserError(f"{key}: {exc}") from None
        lineage = {"parent_model_uri": str(path.resolve()), "parent_model_version": "none"}
    else:
        directory = resolve_init(loop, "finetune")
        lineage = {"parent_model_uri": str(directory.resolve()), "parent_model_version": "none"}
    return InitModel(directory, stage_init(ctx, loop, directory), lineage)


def check_init_model(cfg: Config, gpt: dict, source: str) -> None:
    """What fine-tuning asks of the model it starts from (GPTConfig fields): model.block_size within its
    positions (fine-tuning keeps the model's context; a longer one has no position embeddings), and
    finetune.lora_rank within its width."""
    wanted, positions = cfg.model.block_size, gpt["block_size"]
    if wanted is not None and wanted > positions:
        raise UserError(
            f"config key 'model.block_size': {wanted} is more than the {positions} positions of the model "
            f"fine-tuning starts from ({source}); use at most {positions}"
        )
    problem = lora_rank_problem(cfg.finetune.lora_rank, gpt["n_embd"], source)
    if problem:
        raise UserError(f"config key 'finetune.lora_rank': {problem}")


def finetune_preflight(cfg: Config, ws: Workspace, inputs: dict[str, Published]) -> None:
    """At planning time (Runner.check, `--dry-run` too), on what is published: the initial model's
    config.json against model.block_size and finetune.lora_rank, and (finetune.data unset) the shards'
    val split against the batch. Pairs and text files are tokenized when the stage runs: not here."""
    from pipelines.training.pretrain import check_windows, published_shards

    f = cfg.finetune
    start = None
    if f.init_from:
        gpt = init_architecture(cfg, ws, f.init_from)
        start = (gpt, f.init_from) if gpt else None
    elif "pretrain" in inputs:
        start = (inputs["pretrain"].manifest["model"], ws.full_uri(inputs["pretrain"].dir))
    if start is not None:
        check_init_model(cfg, *start)
    block = start[0]["block_size"] if start else None
    if block is None and not (f.init_from or cfg.train.init_from):
        block = cfg.model.resolved("block_size")  # the pipeline's pretrained model, still to be built
    shards = published_shards(cfg, ws, inputs) if f.data is None and block else None
    if shards is not None:
        check_windows(*shards, block, f, "finetune")


def init_architecture(cfg: Config, ws: Workspace, init_from: str) -> dict | None:
    """finetune.init_from's GPTConfig fields from its config.json alone (no weights): of a model or a
    Hugging Face directory, or of a registered model. None for other URIs (runs:/, s3://)."""
    if init_from.startswith("models:/"):
        return _registered_architecture(cfg, ws, init_from)
    if ":/" in init_from:
        return None
    from gpt2core.checkpoint import read_config
    from gpt2core.hf import is_hf_dir, read_hf_config

    path = Path(init_from).expanduser()
    try:
        return (read_hf_config(path) if is_hf_dir(path) else read_config(path)).to_dict()
    except ValueError as exc:
        raise UserError(f"config key 'finetune.init_from': {exc}") from None


def _registered_architecture(cfg: Config, ws: Workspace, uri: str) -> dict | None:
    """A registered model's config.json: two small files from the registry's artifact store (MLmodel,
    then config.json of its model directory), not the weights. None while the registry is the
    workspace's SQLite default and does not exist yet (the run then names the missing model)."""
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    from gpt2core.checkpoint import read_config
    from pipelines.registry import pyfunc
    from pipelines.registry.models import pyfunc_artifact
    from pipelines.runtime.tracking import resolve_tracking_uri

    key, tracking = "config key 'finetune.init_from'", resolve_tracking_uri(cfg, ws)
    if tracking.startswith("sqlite:///") and not Path(tracking.removeprefix("sqlite:///")).is_file():
        return None
    mlflow.set_tracking_uri(tracking)
    version_uri, _ = registry_version(uri)
    with tempfile.TemporaryDirectory(prefix="init-config-") as tmp:
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=f"{version_uri}/MLmodel", dst_path=tmp)
            found = pyfunc_artifact(Path(tmp), pyfunc.MODEL_DIR_ARTIFACT)
            if found is None:
                raise UserError(f"{key}: {uri} is not a model logged by this project (no model directory)")
            (Path(tmp) / "model").mkdir()
            rel = found.relative_to(tmp).as_posix()
            config = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{version_uri}/{rel}/config.json", dst_path=f"{tmp}/model"
            )
        except MlflowException as exc:
            raise UserError(f"{key}: {uri}: cannot read its config ({exc.message.splitlines()[0]})") from None
        try:
            return read_config(Path(config).parent).to_dict()
        except ValueError as exc:
            raise UserError(f"{key}: {exc}") from None


def tokenizer_identity(tokenizer) -> str:
    digest = hashlib.sha256()
    for name, path in sorted(tokenizer.files.items()):
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# --- the data ------------------------------------------------------------------------------------
@dataclass
class Prepared:
    task: Task  # FinetuneTask, or pretraining's task on shards
    gate: Gate  # PairsGate, or pretraining's GateData
    gpt: dict
    info: dict  # counts for the manifest
    source: str  # the data file (or shards dir)
    digest: str  # sha256 of the data


def prepare_data(ctx: StageContext, init: InitModel) -> Prepared:
    from gpt2core.tokenizer import load_tokenizer
    from pipelines.core.cache import discard_staging, staging_dir
    from pipelines.registry.models import gate_resources
    from pipelines.training.finetune import data as finetune_data
    from pipelines.training.finetune.task import FinetuneTask, PairsGate
    from pipelines.training.launch import run_rel
    from pipelines.training.pretrain import init_config

    loop = ctx.cfg.finetune
    if loop.data is None:
        return _shards_data(ctx, init)
    gpt = init_config(ctx.cfg, init.dir, "finetune").to_dict()
    try:
        tokenizer = load_tokenizer(init.dir)
    except ValueError as exc:
        raise UserError(f"config key 'finetune.init_from': {exc}") from None
    work = Path(staging_dir("finetune-data-"))
    source = _data_file(ctx, work)
    build = finetune_data.build_pairs if source.suffix in (".jsonl", ".json") else finetune_data.build_text
    try:
        info = build(source, tokenizer, gpt["block_size"], loop.val_fraction, work / DATA_DIR)
    except ValueError as exc:
        raise UserError(f"config key 'finetune.data': {source}: {exc}") from None
    if info["splits"]["train"]["rows"] < loop.max_workers:
        raise UserError(f"config key 'finetune.data': {source} has fewer training rows than workers")
    # The rows go where every worker (and the generate stage) reads them: the run's directory.
    data_rel = f"{run_rel(ctx, loop)}/{DATA_DIR}"
    data = DirRef(ctx.ws.full_uri(data_rel), ctx.ws.upload_dir(work / DATA_DIR, data_rel))
    task = FinetuneTask(
        data,
        init.ref,
        tokenizer_identity(tokenizer),
        tokenizer.vocab_size,
        info["splits"]["val"]["tokens_per_byte"],
    )
    gate = PairsGate(data, **gate_resources(loop))
    info["data_dir"], info["data_files"] = data_rel, data.files
    named = data.uri if loop.data == DEMO_PAIRS else loop.data  # not the driver's local copy
    digest = sha256_path(source)
    discard_staging(work)  # the rows are in the workspace now
    return Prepared(task, gate, gpt, info, named, digest)


def _data_file(ctx: StageContext, work: Path) -> Path:
    """finetune.data as a local file; demo:corpus-pairs is written from the corpus first."""
    loop = ctx.cfg.finetune
    if loop.data != DEMO_PAIRS:
        return user_file(loop.data, "finetune.data")
    import pyarrow.parquet as pq

    from pipelines.training.finetune import data as finetune_data

    corpus = CorpusOutput.of(ctx.inputs["corpus"]).dir
    files = sorted(f for f in ctx.ws.list_files(f"{corpus}/data") if f.endswith(".parquet"))
    paths = [ctx.ws.path(f"{corpus}/data/{f}") for f in files]
    table = pq.read_table(paths, columns=["id", "text"], filesystem=ctx.ws.fs)
    table = table.sort_by("id")  # a stable order, whatever the corpus stage's file layout
    pairs = finetune_data.demo_pairs(table.column("text").to_pylist(), loop.demo_pairs)
    path = work / "demo-pairs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    finetune_data.write_pairs(pairs, path)
    ctx.log(f"[finetune] {len(pairs)} prompt/completion pairs from the corpus -> {path}")
    return path


def _shards_data(ctx: StageContext, init: InitModel) -> Prepared:
    """Continued pretraining on the pipeline's shards (or train.shards): pretraining's task and gate."""
    from pipelines.core.manifest import manifest_digest
    from pipelines.registry.models import GateData, gate_resources
    from pipelines.training.pretrain import check_windows, resolve_model, resolve_shards
    from pipelines.training.task import PretrainTask

    loop = ctx.cfg.finetune
    shards = resolve_shards(ctx)
    gpt = resolve_model(ctx.cfg, shards.vocab_size, shards.tokenizer_sha256, init.dir, "finetune")
    check_windows(shards.manifest, shards.dir, gpt["block_size"], loop, "finetune")
    task = PretrainTask(shards.ref, shards.tokenizer, shards.tokenizer_sha256, shards.vocab_size, "finetune")
    gate = GateData(shards.ref, shards.tokenizer, **gate_resources(loop))
    info = {"format": "shards", "splits": shards.manifest["splits"]}
    return Prepared(task, gate, gpt, info, shards.dir, manifest_digest(shards.manifest))


def data_dataset(prepared: Prepared) -> tuple:
    """The fine-tuning data as an MLflow dataset input of the run (lineage), with its counts as tags."""
    from pipelines.runtime import tracking

    name = f"finetune/{uri_basename(prepared.source)}"
    dataset = tracking.meta_dataset(prepared.source, name, prepared.digest)
    splits = prepared.info["splits"]
    tags = {
        "format": prepared.info["format"],
        **{f"{s}_rows": str(v.get("rows", "")) for s, v in splits.items()},
    }
    return dataset, tags


# --- the stage -----------------------------------------------------------------------------------
def run_finetune(ctx: StageContext) -> dict[str, Any]:
    from gpt2core.lora import LoraConfig
    from pipelines.core.cache import discard_staging
    from pipelines.training.launch import prepare, train
    from pipelines.training.pretrain import init_config
    from pipelines.training.publish import publish

    loop = ctx.cfg.finetune
    init = resolve_init_model(ctx)
    gpt = init_config(ctx.cfg, init.dir, "finetune").to_dict()
    check_init_model(ctx.cfg, gpt, init.lineage["parent_model_uri"])  # as finetune_preflight did
    prepared = prepare_data(ctx, init)
    info = prepared.info
    if info.get("rejects") or info.get("truncated"):
        ctx.log(
            f"[finetune] data: {info.get('rejects')} rejected lines, {info.get('truncated')} truncated prompts"
        )
    lora = LoraConfig(loop.lora_rank, loop.lora_alpha) if loop.lora_rank else None
    launch = prepare(
        ctx,
        loop,
        "finetune",
        prepared.task,
        prepared.gpt,
        init.ref,
        data_dataset(prepared),
        lora=lora,
        early_stop_patience=loop.early_stop_patience,
    )
    discard_staging(init.dir)  # a download or an import: the workers read the workspace copy
    summary, checkpoint = train(launch, ctx.log)
    lineage = {
        **init.lineage,
        "dataset": prepared.source,
        "dataset_digest": prepared.digest,
        "lora_rank": str(loop.lora_rank),
    }
    result = publish(ctx, launch, summary, checkpoint, prepared.gate, tags=lineage)
    return {**result, "lineage": lineage, "data": info, "model": prepared.gpt}
