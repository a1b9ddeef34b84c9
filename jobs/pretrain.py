"""Pretrain GPT-2 with Ray Train + DeepSpeed ZeRO; register the model in MLflow.

    python jobs/pretrain.py --config configs/demo.yaml [--set key=value ...] [--force] [--dry-run]

The `pretrain` stage of jobs/pipeline.py, run on its own (its inputs must already be published).
"""

import sys

import _path  # noqa: F401

from pipelines.cli import pipeline_main

if __name__ == "__main__":
    sys.exit(pipeline_main(only="pretrain", description=__doc__.strip().splitlines()[0]))
