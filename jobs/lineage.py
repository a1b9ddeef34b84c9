"""What a model was trained on: its run, shards, tokenizer, corpus versions and input files.

    python jobs/lineage.py models:/gpt2-demo@champion [--config F] [--set key=value ...] [--json]
    python jobs/lineage.py <workspace>/models/<run>

Reads the registry and the manifests only.
The config names the MLflow tracking URI (mlflow.tracking_uri, else MLFLOW_TRACKING_URI, else the
workspace's SQLite database). See pipelines/lineage/.
"""

import json
import sys

import _path  # noqa: F401

from pipelines.cli import base_parser, config_from, user_errors


def build_parser():
    parser = base_parser("jobs/lineage.py", __doc__.strip().splitlines()[0])
    parser.add_argument("model", help="models:/NAME@ALIAS, models:/NAME/VERSION, or a model directory")
    parser.add_argument("--json", action="store_true", help="print the chain as JSON")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        import mlflow

        from pipelines.core.workspace import Workspace
        from pipelines.lineage.chain import model_lineage, render, resolve
        from pipelines.runtime.tracking import resolve_tracking_uri

        cfg = config_from(args)
        mlflow.set_tracking_uri(resolve_tracking_uri(cfg, Workspace(cfg.workspace)))
        model = resolve(args.model)
        lineage = model_lineage(model)
        if args.json:
            print(json.dumps(lineage, indent=2, sort_keys=True))
            return 0
        print("\n".join(render(lineage)))
        return 0

    return user_errors(run)


if __name__ == "__main__":
    sys.exit(main())
