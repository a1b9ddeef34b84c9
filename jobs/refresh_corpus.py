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

from pipelines.cli import add_verbose, base_parser, config_from, job_console, user_errors


def build_parser():
    parser = base_parser("jobs/refresh_corpus.py", __doc__.strip().splitlines()[0])
    parser.add_argument(
        "--dry-run", action="store_true", help="print the current version and the new files; write nothing"
    )
    add_verbose(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from pipelines.core.workspace import Workspace
        from pipelines.refresh.stage import refresh
        from pipelines.runtime.console import stage_log

        cfg = config_from(args)
        if args.dry_run:
            refresh(cfg, dry_run=True, config_path=args.config)
            return 0
        with job_console(Workspace(cfg.workspace), args.verbose), stage_log("refresh"):
            refresh(cfg, config_path=args.config)
        return 0

    return user_errors(run)


if __name__ == "__main__":
    sys.exit(main())
