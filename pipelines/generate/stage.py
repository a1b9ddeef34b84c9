"""Stage `generate`: completions for many prompts with Ray Data, from a registered model.

The driver reads the prompts (JSONL, Parquet or a text file with a prompt a line; a bad line or a
record without a prompt is a counted reject), resolves `generate.model_uri` (default
models:/<registered_model>@champion) to one version, and cuts the prompts into chunks of
`batch_size`. Ray Data `map_batches` runs an actor pool: each actor loads the model once, onto its
GPU (`generate.use_gpu`, a share of one with num_gpus_per_actor < 1) or its CPUs, in
`generate.dtype`, and generates each chunk with gpt2core's KV-cache sampler, seeded by (seed, chunk
number) - so the output depends on the seed, the prompts, the device type and the dtype, not on the
actor count or on which actor ran a chunk.
Output: Parquet under <workspace>/generations/<id>/data/ with prompt index and id, prompt,
completion, token counts, finish reason ("eos", "length", or "prompt_too_long" when rejected),
whether the prompt was truncated, and the model version.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pipelines.config import Config, GenerateConfig
from pipelines.core.workflow import Stage, StageContext
from pipelines.core.workspace import Workspace
from pipelines.errors import UserError

DEMO_PROMPTS = "demo:finetune-prompts"  # generate.prompts: the prompts of the fine-tuning val pairs
TOO_LONG = "prompt_too_long"
MAX_REJECTS_LISTED = 100


def generate_stage() -> Stage:
    return Stage(
        "generate",
        run_generate,
        sections=("generate",),
        inputs=generate_inputs,
        output_dir=lambda cfg, fp: f"generations/{fp[:12]}",
        fingerprint_extra=_identity,
        summary="generate completions in batch with Ray Data from a registered model",
    )


def generate_inputs(cfg: Config) -> tuple[str, ...]:
    """The fine-tuning output for the demo prompts; the last training stage when the model is the
    registry's champion, so a new champion means a new generation run."""
    g = cfg.generate
    names = ["finetune"] if g.prompts == DEMO_PROMPTS else []
    if g.model_uri is None:
        names.append("finetune" if cfg.finetune.enabled else "pretrain")
    return tuple(dict.fromkeys(names))


def _identity(cfg: Config, ws: Workspace) -> Any:
    from pipelines.core.cache import file_identity

    prompts = file_identity(cfg.generate.prompts, DEMO_PROMPTS, "generate.prompts")
    return {"prompts": prompts, "registered_model": cfg.mlflow.registered_model}


# --- prompts -------------------------------------------------------------------------------------
def read_prompts(path: Path, g: GenerateConfig) -> tuple[list[str], list[str], list[dict]]:
    """(ids, prompts, rejects): every usable prompt in file order; rejects name line and reason."""
    if not path.is_file():
        raise UserError(f"config key 'generate.prompts': {path} is not a file")
    if path.suffix == ".parquet":
        return _parquet_prompts(path, g)
    ids, prompts, rejects = [], [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.suffix not in (".jsonl", ".json"):
                ids.append(str(number))
                prompts.append(line.rstrip("\n"))
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                rejects.append({"line": number, "reason": "malformed_json"})
                continue
            prompt = record.get(g.prompt_field) if isinstance(record, dict) else None
            if not isinstance(prompt, str):
                rejects.append({"line": number, "reason": f"missing_{g.prompt_field}"})
                continue
            ids.append(str(record.get(g.id_field, number)) if g.id_field else str(number))
            prompts.append(prompt)
    return ids, prompts, rejects


def _parquet_prompts(path: Path, g: GenerateConfig) -> tuple[list[str], list[str], list[dict]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if g.prompt_field not in table.column_names:
        raise UserError(f"config key 'generate.prompt_field': {path} has no column {g.prompt_field!r}")
    texts = table.column(g.prompt_field).to_pylist()
    has_ids = g.id_field and g.id_field in table.column_names
    row_ids = table.column(g.id_field).to_pylist() if has_ids else range(1, len(texts) + 1)
    ids, prompts, rejects = [], [], []
    for number, (row_id, text) in enumerate(zip(row_ids, texts), 1):
        if not isinstance(text, str):
            rejects.append({"line": number, "reason": f"missing_{g.prompt_field}"})
            continue
        ids.append(str(row_id))
        prompts.append(text)
    return ids, prompts, rejects


def prompts_path(ctx: StageContext) -> Path:
    g = ctx.cfg.generate
    if g.prompts == DEMO_PROMPTS:
        from pipelines.core.cache import local_file
        from pipelines.core.outputs import FinetuneData

        rel, sha256 = FinetuneData.of(ctx.inputs["finetune"].manifest).val_pairs()  # in the workspace
        return local_file(ctx.ws.full_uri(rel), sha256)
    if not g.prompts:
        raise UserError("config key 'generate.prompts': not set (a JSONL, Parquet or text file of prompts)")
    from pipelines.core.cache import user_file

    return user_file(g.prompts, "generate.prompts")


def chunks(ids: list[str], prompts: list[str], size: int) -> list[dict]:
    """Rows of Ray Data: one chunk of prompts each (a chunk is generated together, with its own seed)."""
    return [
        {"chunk": c, "index": list(range(s, s + size))[: len(prompts[s : s + size])], "id": ids[s : s + size],
         "prompt": prompts[s : s + size]}
        for c, s in enumerate(range(0, len(prompts), size))
    ]  # fmt: skip


# --- the actors ----------------------------------------------------------------------------------
class ChunkGenerator:
    """A Ray Data actor: the model is loaded once; each call generates whole chunks."""

    def __init__(
        self,
        model_uri: str,
        tracking_uri: str | None,
        settings: dict,
        version: str,
        use_gpu: bool = False,
        dtype: str = "auto",
    ):
        import tempfile

        import mlflow

        from gpt2core.checkpoint import load_model
        from gpt2core.tokenizer import load_tokenizer
        from pipelines.registry.models import model_dir_of

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        device, torch_dtype = actor_placement(use_gpu, dtype)  # before the download: fail fast
        self._tmp = tempfile.TemporaryDirectory(prefix="generate-model-")
        model_dir = model_dir_of(model_uri, self._tmp.name)
        self.model, self.tokenizer = load_model(model_dir, device, torch_dtype), load_tokenizer(model_dir)
        self.settings, self.version = settings, version

    def __call__(self, batch: dict) -> dict:
        rows: dict[str, list] = {k: [] for k in OUTPUT_COLUMNS}
        for chunk, index, ids, prompts in zip(batch["chunk"], batch["index"], batch["id"], batch["prompt"]):
            for row in generate_chunk(self.model, self.tokenizer, list(prompts), self.settings, int(chunk)):
                row.update(prompt_index=row.pop("i") + int(index[0]), model_version=self.version)
                row["prompt_id"] = str(ids[row["prompt_index"] - int(index[0])])
                for key in OUTPUT_COLUMNS:
                    rows[key].append(row[key])
        return rows


OUTPUT_COLUMNS = (
    "prompt_index",
    "prompt_id",
    "prompt",
    "completion",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "truncated",
    "model_version",
)


def generate_chunk(model, tokenizer, prompts: list[str], s: dict, chunk: int) -> list[dict]:
    """One chunk: encode, truncate or reject over-long prompts, generate with the chunk's seed."""
    from gpt2core.generate import generate

    limit = max(1, model.config.block_size - s["max_new_tokens"])
    encoded = [ids or [tokenizer.eos_id] for ids in tokenizer.encode_batch(prompts)]
    rows, todo = [], []
    for i, (text, ids) in enumerate(zip(prompts, encoded)):
        row = {"i": i, "prompt": text, "prompt_tokens": len(ids), "truncated": len(ids) > limit}
        row.update(completion="", completion_tokens=0, finish_reason=TOO_LONG)
        rows.append(row)
        if len(ids) <= limit or s["long_prompts"] == "truncate":
            todo.append((row, ids[-limit:]))
    results = generate(
        model,
        [ids for _, ids in todo],
        s["max_new_tokens"],
        greedy=s["temperature"] == 0,
        temperature=s["temperature"] or 1.0,
        top_k=s["top_k"],
        top_p=s["top_p"],
        eos_id=tokenizer.eos_id,
        seed=s["seed"] * 1_000_003 + chunk,
    )
    for (row, _), result in zip(todo, results):
        row.update(
            completion=tokenizer.decode(result.tokens),
            completion_tokens=len(result.tokens),
            finish_reason=result.finish_reason,
        )
    return rows


def sampling_settings(g: GenerateConfig) -> dict:
    keys = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "long_prompts")
    return {k: getattr(g, k) for k in keys}


def resolve_model_uri(cfg: Config) -> tuple[str, str]:
    """(a URI of one model version, that version): an alias is resolved once for all actors."""
    from pipelines.registry.models import registry_version

    uri = cfg.generate.model_uri or f"models:/{cfg.mlflow.registered_model}@champion"
    if uri.startswith("models:/"):
        return registry_version(uri, "generate.model_uri")
    return uri, "none"


# --- where the actors run ------------------------------------------------------------------------
def actor_resources(cpus_per_actor: float, use_gpu: bool, num_gpus_per_actor: float) -> dict[str, float]:
    """What each actor asks Ray for: map_batches' num_cpus and num_gpus."""
    return {"num_cpus": cpus_per_actor, "num_gpus": num_gpus_per_actor if use_gpu else 0}


def actor_placement(use_gpu: bool, dtype: str):
    """(torch device, dtype) of an actor: cuda when it asked for a GPU (Ray Data sets the actor's
    CUDA_VISIBLE_DEVICES, so cuda is its GPU), else cpu. A missing GPU is an error, never a silent
    fall back to the CPU."""
    from gpt2core.checkpoint import PlacementError, inference_placement

    try:
        return inference_placement("cuda" if use_gpu else "cpu", dtype)
    except PlacementError as exc:
        if exc.setting == "dtype":
            raise UserError(f"config key 'generate.dtype': {exc}") from None
        import ray

        raise UserError(
            f"config key 'generate.use_gpu': Ray gave this actor GPUs {ray.get_gpu_ids()} but {exc}"
        ) from None


def check_placement(resources: dict[str, float], dtype: str) -> None:
    """Fail on the driver, in one line, before any actor starts: when no live node, nor a node type
    the autoscaler may start, can hold one actor (Ray Data would wait forever; the pool starts with
    as many actors as fit, so one is enough), and a dtype that CPU actors cannot run. The cluster
    arithmetic is training's (pipelines/runtime/cluster.py)."""
    from pipelines.runtime.cluster import current_cluster, placeable_ever

    if not resources["num_gpus"]:
        actor_placement(False, dtype)
    need = {"CPU": resources["num_cpus"], **({"GPU": resources["num_gpus"]} if resources["num_gpus"] else {})}
    cluster = current_cluster()
    if placeable_ever(cluster, need) >= 1:
        return
    nodes = cluster.live + [group.resources for group in cluster.groups]
    most_gpus = max((node.get("GPU", 0.0) for node in nodes), default=0.0)
    key = "use_gpu" if need.get("GPU", 0.0) > most_gpus else "cpus_per_actor"
    raise UserError(
        f"config key 'generate.{key}': an actor needs {need['CPU']:g} CPU and {need.get('GPU', 0):g} GPU "
        f"on one node; this Ray cluster has no such node, nor a node type to start ({cluster.describe()})"
    )


def generate_dataset(
    items: list[dict],
    model_uri: str,
    tracking_uri: str | None,
    settings: dict,
    version: str,
    num_actors: int,
    cpus_per_actor: float,
    *,
    use_gpu: bool = False,
    num_gpus_per_actor: float = 1,
    dtype: str = "auto",
):
    """(materialized Ray Dataset of OUTPUT_COLUMNS rows, seconds): the chunks through the actor pool."""
    import ray

    resources = actor_resources(cpus_per_actor, use_gpu, num_gpus_per_actor)
    check_placement(resources, dtype)
    dataset = ray.data.from_items(items, override_num_blocks=min(len(items), num_actors * 4))
    out = dataset.map_batches(
        ChunkGenerator,
        fn_constructor_kwargs={
            "model_uri": model_uri,
            "tracking_uri": tracking_uri,
            "settings": settings,
            "version": version,
            "use_gpu": use_gpu,
            "dtype": dtype,
        },
        batch_size=1,
        concurrency=num_actors,
        **resources,
    )
    started = time.perf_counter()
    out = out.materialize()
    return out, time.perf_counter() - started


def output_counts(out) -> tuple[int, int, int, Counter]:
    """(rows, completion tokens, truncated prompts, finish reasons) in one pass over the
    materialized output (no further Ray Data jobs)."""
    rows = tokens = truncated = 0
    reasons: Counter = Counter()
    for batch in out.iter_batches(batch_format="pyarrow", batch_size=None):
        rows += batch.num_rows
        tokens += sum(batch.column("completion_tokens").to_pylist())
        truncated += sum(batch.column("truncated").to_pylist())
        reasons.update(batch.column("finish_reason").to_pylist())
    return rows, tokens, truncated, reasons


# --- the stage -----------------------------------------------------------------------------------
def run_generate(ctx: StageContext) -> dict[str, Any]:
    import mlflow

    g = ctx.cfg.generate
    path = prompts_path(ctx)
    ids, prompts, rejects = read_prompts(path, g)
    if not prompts:
        raise UserError(
            f"config key 'generate.prompts': {path} holds no usable prompt ({len(rejects)} rejected)"
        )
    uri, version = resolve_model_uri(ctx.cfg)
    where = f"{g.num_gpus_per_actor:g} GPU" if g.use_gpu else f"{g.cpus_per_actor:g} CPU"
    ctx.log(
        f"[generate] {len(prompts)} prompts from {path} with {uri} on {g.num_actors} actors "
        f"({where} each, dtype {g.dtype})"
    )
    out, seconds = generate_dataset(
        chunks(ids, prompts, g.batch_size),
        uri,
        mlflow.get_tracking_uri(),
        sampling_settings(g),
        version,
        g.num_actors,
        g.cpus_per_actor,
        use_gpu=g.use_gpu,
        num_gpus_per_actor=g.num_gpus_per_actor,
        dtype=g.dtype,
    )
    out.write_parquet(ctx.ws.path(f"{ctx.out}/data"), filesystem=ctx.ws.fs)
    rows, tokens, truncated, reasons = output_counts(out)
    ctx.log(
        f"[generate] {rows} rows, {tokens} tokens in {seconds:.1f}s ({tokens / seconds:.0f} tokens/s); "
        f"finish reasons {dict(reasons)}; {truncated} truncated, {len(rejects)} rejected lines"
    )
    return {
        "prompts_file": str(path),
        "model_uri": uri,
        "model_version": version,
        "rows": rows,
        "finish_reasons": dict(reasons),
        "truncated_prompts": truncated,
        "rejected_lines": len(rejects),
        "rejects": rejects[:MAX_REJECTS_LISTED],
        "completion_tokens": tokens,
        "generate_seconds": round(seconds, 3),
        "tokens_per_s": tokens / seconds,
        "prompts_per_s": len(prompts) / seconds,
        "settings": sampling_settings(g),
        "num_actors": g.num_actors,
        "actor_resources": actor_resources(g.cpus_per_actor, g.use_gpu, g.num_gpus_per_actor),
    }
