"""Tokenize the corpus into memory-mappable Arrow token shards (train/val).

    python jobs/build_shards.py --config configs/demo.yaml [--set key=value ...] [--force] [--dry-run]

The `shards` stage of jobs/pipeline.py, run on its own (its inputs must already be published).
"""

import sys

import _path  # noqa: F401

from pipelines.cli import pipeline_main

if __name__ == "__main__":
    sys.exit(pipeline_main(only="shards", description=__doc__.strip().splitlines()[0]))
