"""Generate completions in batch with Ray Data from a registered model.

    python jobs/generate.py --config configs/demo.yaml [--set key=value ...] [--force] [--dry-run]

The `generate` stage of jobs/pipeline.py, run on its own (its inputs must already be published).
"""

import sys

import _path  # noqa: F401

from pipelines.cli import pipeline_main

if __name__ == "__main__":
    sys.exit(pipeline_main(only="generate", description=__doc__.strip().splitlines()[0]))
