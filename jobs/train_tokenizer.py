"""Train a SentencePiece tokenizer on a reproducible sample of the corpus.

    python jobs/train_tokenizer.py --config configs/demo.yaml [--set key=value ...] [--force] [--dry-run]

The `tokenizer` stage of jobs/pipeline.py, run on its own (its inputs must already be published).
"""

import sys

import _path  # noqa: F401

from pipelines.cli import pipeline_main

if __name__ == "__main__":
    sys.exit(pipeline_main(only="tokenizer", description=__doc__.strip().splitlines()[0]))
