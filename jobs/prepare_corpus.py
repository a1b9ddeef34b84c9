"""Clean and deduplicate raw web text (HTML, WARC, JSONL, Parquet, text) into a corpus version.

    python jobs/prepare_corpus.py --config configs/demo.yaml [--set key=value ...] [--force] [--dry-run]

The `corpus` stage of jobs/pipeline.py, run on its own (its inputs must already be published).
"""

import sys

import _path  # noqa: F401

from pipelines.cli import pipeline_main

if __name__ == "__main__":
    sys.exit(pipeline_main(only="corpus", description=__doc__.strip().splitlines()[0]))
