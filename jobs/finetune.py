"""Fine-tune a registered or Hugging Face GPT-2 with Ray Train + DeepSpeed; register it.

    python jobs/finetune.py --config configs/demo.yaml [--set key=value ...] [--force] [--dry-run]

The `finetune` stage of jobs/pipeline.py, run on its own (its inputs must already be published).
"""

import sys

import _path  # noqa: F401

from pipelines.cli import pipeline_main

if __name__ == "__main__":
    sys.exit(pipeline_main(only="finetune", description=__doc__.strip().splitlines()[0]))
