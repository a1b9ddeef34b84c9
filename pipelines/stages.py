"""The pipeline, in order. Each stage module keeps heavy imports (torch, ray, mlflow) inside its
run function, so `--help` and `--dry-run` stay fast.

Each issue adds its stage here: corpus, tokenizer, shards, pretrain, finetune, generate.
"""

from __future__ import annotations

from pipelines.core.workflow import Stage
from pipelines.corpus.stage import corpus_stage
from pipelines.generate.stage import generate_stage
from pipelines.shards.stage import shards_stage
from pipelines.tokenizer.stage import tokenizer_stage
from pipelines.training.finetune.stage import finetune_stage
from pipelines.training.pretrain import pretrain_stage


def pipeline_stages() -> list[Stage]:
    stages: list[Stage] = [corpus_stage()]
    stages += [tokenizer_stage(), shards_stage()]
    stages += [pretrain_stage()]
    stages += [finetune_stage(), generate_stage()]
    return stages
