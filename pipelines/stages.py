"""The pipeline, in order. Each stage module keeps heavy imports (torch, ray, mlflow) inside its
run function, so `--help` and `--dry-run` stay fast.

Each issue adds its stage here: corpus, tokenizer, shards, pretrain, finetune, generate.
"""

from __future__ import annotations

from pipelines.workflow import Stage


def pipeline_stages() -> list[Stage]:
    stages: list[Stage] = []
    return stages
