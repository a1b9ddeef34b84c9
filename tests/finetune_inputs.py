"""Inputs shared by the fine-tuning, generation and serving tests: prompt/completion pairs from the
stdlib docstrings, a registered champion, and stage runs on the prepared workspace's tokenizer."""

from __future__ import annotations

from pathlib import Path

from prepared_workspace import MODULES

from pipelines.training.finetune.data import demo_pairs, write_pairs

# Tiny fine-tuning runs: 2 workers, fp32, few steps, a 64-token context (the prepared models').
FINETUNE_OVERRIDES = (
    "finetune.num_workers=2",
    "finetune.micro_batch_size=4",
    "finetune.global_batch_size=8",
    "finetune.max_steps=12",
    "finetune.warmup_steps=2",
    "finetune.lr=0.003",
    "finetune.eval_interval=6",
    "finetune.eval_batches=4",
    "finetune.log_interval=6",
    "finetune.checkpoint_interval=12",
    "finetune.zero_stage=1",
    "finetune.precision=fp32",
    "finetune.val_fraction=0.15",
)


def write_pairs_file(path: Path, extra_lines: tuple[str, ...] = ()) -> Path:
    """(signature, what it does) pairs from the pydoc pages of the prepared workspace's modules, as the
    demo makes them from its corpus, as JSONL; plus raw extra lines."""
    import importlib
    import pydoc

    pages = [pydoc.render_doc(importlib.import_module(m), renderer=pydoc.plaintext) for m in MODULES]
    pairs = demo_pairs(pages, max_pairs=400, per_doc=20)
    write_pairs(pairs, path)
    with open(path, "a", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in extra_lines)
    return path


def register_model(model_dir: Path, name: str, alias: str | None = None) -> str:
    """Log a model directory as this project's pyfunc model and register it (optionally aliased)."""
    import mlflow

    from pipelines.registry import models as registry

    with mlflow.start_run(run_name=f"register-{model_dir.name}"):
        version = registry.register(registry.log_model(model_dir), name)
    if alias:
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return version


def run_stage(stage, cfg):
    """Run one stage through the real runner (fingerprint, manifest, MLflow runs); its manifest."""
    from pipelines.core.workflow import Runner

    runner = Runner(cfg, [stage])
    runner.run()
    return runner.published(stage.name).manifest
