"""The pipeline, in order. Each stage module keeps heavy imports (torch, ray, mlflow) inside its
run function, so `--help` and `--dry-run` stay fast.

Each issue adds its stage here: corpus, tokenizer, shards, pretrain, finetune, generate.
"""

from __future__ import annotations

from pipelines.corpus.stage import corpus_stage
from pipelines.finetune import finetune_stage
from pipelines.generate import generate_stage
from pipelines.shards import shards_stage
from pipelines.tokenizer import tokenizer_stage
from pipelines.train import pretrain_stage
from pipelines.workflow import Stage


def pipeline_stages() -> list[Stage]:
    stages: list[Stage] = [corpus_stage()]
    stages += [tokenizer_stage(), shards_stage()]
    stages += [pretrain_stage()]
    stages += [finetune_stage(), generate_stage()]
    return stages
