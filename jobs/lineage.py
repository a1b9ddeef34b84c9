"""What a model was trained on: its run, shards, tokenizer, corpus versions and input files.

    python jobs/lineage.py models:/gpt2-demo@champion [--config F] [--set key=value ...] [--json]
    python jobs/lineage.py <workspace>/models/<run>
    python jobs/lineage.py models:/gpt2-demo@champion --doc SOURCE_ID [--source NAME]

Reads the registry and the manifests only; with --doc, also the id columns of the corpus versions
and the shards' document index: whether that input record (its id in its input file, or its line
number; --source names the file when ids repeat across files) was kept, and if so which tokens of
which shard file it became (pipelines/lineage/documents.py). --json adds it as "document".
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
    parser.add_argument(
        "--doc", metavar="SOURCE_ID", help="follow one input record: its id in its input file"
    )
    parser.add_argument(
        "--source", metavar="NAME", help="with --doc: the record's input file (its source name)"
    )
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.source is not None and args.doc is None:
        parser.error("--source needs --doc")

    def run() -> int:
        import mlflow

        from pipelines.core.workspace import Workspace
        from pipelines.lineage.chain import model_lineage, render, resolve
        from pipelines.lineage.documents import find_document, render_document
        from pipelines.runtime.tracking import resolve_tracking_uri

        cfg = config_from(args)
        mlflow.set_tracking_uri(resolve_tracking_uri(cfg, Workspace(cfg.workspace)))
        model = resolve(args.model)
        lineage = model_lineage(model)
        lines = render(lineage)
        if args.doc is not None:
            lineage["document"] = find_document(lineage, args.doc, args.source)
            lines += render_document(lineage["document"])
        print(json.dumps(lineage, indent=2, sort_keys=True) if args.json else "\n".join(lines))
        return 0

    return user_errors(run)


if __name__ == "__main__":
    sys.exit(main())
