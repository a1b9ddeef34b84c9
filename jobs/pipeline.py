"""Run the whole workflow (or part of it): corpus, tokenizer, shards, pretrain, finetune, generate.

python jobs/pipeline.py --config configs/demo.yaml [--set k=v ...] [--stages a,b] [--from X]
                        [--force X] [--dry-run]
"""

import sys

import _path  # noqa: F401

from pipelines.cli import pipeline_main

if __name__ == "__main__":
    sys.exit(pipeline_main(description=__doc__.strip().splitlines()[0]))
