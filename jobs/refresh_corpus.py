"""Refresh the corpus with the input files it has not processed yet: a new corpus version and shards.

    python jobs/refresh_corpus.py --config configs/demo.yaml [--set corpus.inputs='[...]'] [--dry-run]

Finds the current corpus version (the newest built with the same corpus settings, or
refresh.parent), runs only new input files through the corpus steps, deduplicates them against each
other and the current version's index, and publishes a new corpus version naming its parent and
shards that extend the current ones (same tokenizer). Nothing new: says so and exits 0. Prints the
shards directory and the command that continues pretraining on it. See pipelines/refresh/stage.py.
"""

import sys

import _path  # noqa: F401

from pipelines.cli import base_parser, config_from, user_errors


def build_parser():
    parser = base_parser("jobs/refresh_corpus.py", __doc__.strip().splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="print the current version and the new files; write nothing"
    )
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from pipelines.refresh.stage import refresh

        refresh(config_from(args), dry_run=args.dry_run, config_path=args.config)
        return 0

    return user_errors(run)


if __name__ == "__main__":
    sys.exit(main())
