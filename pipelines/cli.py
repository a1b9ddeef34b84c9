"""Command lines shared by every job: `--config F`, repeatable `--set a.b=c`, and the stage flags.

User errors end with exit code 2 and one line on stderr (a run no retry could cure: exit code 1, one
line); bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

from pipelines.config import Config, load_config
from pipelines.errors import UserError, user_error_in
from pipelines.runtime import console
from pipelines.runtime.console import VERBOSE_ENV, verbose_requested


def base_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", metavar="FILE", help="YAML config (default: embedded defaults)")
    parser.add_argument(
        "--set",
        dest="overrides",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="override a config key, value parsed as YAML (repeatable), e.g. --set train.lr=3e-4",
    )
    return parser


def config_from(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


@contextmanager
def job_console(ws, verbose: bool):
    """A job's console session (pipelines/runtime/console.py). Ray is shut down inside it: workers'
    last lines keep arriving for a moment after a run, and belong in the log, not on the console."""
    from pipelines.runtime.ray import shutdown_ray

    with console.session(ws, verbose_requested(verbose)):
        try:
            yield
        finally:
            shutdown_ray()


def user_errors(main: Callable[[], int | None]) -> int:
    """Run `main`; print a user error as one line and return its exit code (2; a RunFailed 1)."""
    try:
        return main() or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a UserError, also one raised inside a Ray task or actor (wrapped)
        cause = user_error_in(exc)
        if cause is None:
            raise
        if cause.detail:  # e.g. a failed worker's traceback: whatever the console mode, shown in full
            print(cause.detail.rstrip("\n"), file=sys.stderr)
        print(f"error: {cause}", file=sys.stderr)
        return cause.exit_code


# The single-stage jobs: jobs/<job>.py runs `pipeline_main(only=<stage>)`.
STAGE_JOBS = {
    "prepare_corpus": "corpus",
    "train_tokenizer": "tokenizer",
    "build_shards": "shards",
    "pretrain": "pretrain",
    "finetune": "finetune",
    "generate": "generate",
}
JOBS_DIR = Path(__file__).resolve().parents[1] / "jobs"


def pipeline_parser(only: str | None = None, description: str = "") -> argparse.ArgumentParser:
    """The command line of `jobs/pipeline.py`, or with `only`, of that stage's single-stage job."""
    job = "pipeline" if only is None else next((j for j, s in STAGE_JOBS.items() if s == only), only)
    parser = base_parser(f"jobs/{job}.py", description or "Run the workflow: corpus -> ... -> generate.")
    if only is None:
        parser.add_argument("--stages", help="comma-separated stages to run (default: all)")
        parser.add_argument(
            "--from", dest="from_stage", metavar="STAGE", help="run STAGE and the stages after it"
        )
        parser.add_argument(
            "--force",
            action="append",
            default=[],
            metavar="STAGE",
            help="rerun STAGE even if up to date (repeatable or comma-separated)",
        )
    else:
        parser.add_argument("--force", action="store_true", help="rerun even if up to date")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and what is up to date")
    add_verbose(parser)
    return parser


def add_verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help=f"show Ray's, DeepSpeed's, MLflow's and the workers' output here too ({VERBOSE_ENV}=1); "
        "it is always in <workspace>/logs/<stage>/",
    )


def job_parser(job: str) -> argparse.ArgumentParser:
    """The parser of `jobs/<job>.py`, built without running the job (tests check the commands that
    infra/ manifests run). A job that is not a pipeline stage defines a module-level `build_parser()`."""
    if job == "pipeline":
        return pipeline_parser()
    if job in STAGE_JOBS:
        return pipeline_parser(STAGE_JOBS[job])
    path = JOBS_DIR / f"{job}.py"
    if not path.is_file():
        raise UserError(f"job {job!r}: no file jobs/{job}.py")
    spec = importlib.util.spec_from_file_location(f"_job_{job}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(JOBS_DIR))  # job files `import _path`, which lives next to them
    try:
        spec.loader.exec_module(module)  # defines the job; runs nothing (`__name__` is not "__main__")
    finally:
        sys.path.remove(str(JOBS_DIR))
    if not callable(getattr(module, "build_parser", None)):
        raise UserError(f"jobs/{job}.py defines no build_parser() returning its argument parser")
    return module.build_parser()


def pipeline_main(argv: Sequence[str] | None = None, only: str | None = None, description: str = "") -> int:
    """`jobs/pipeline.py`, and with `only` set, the single-stage job of that stage."""
    from pipelines.core.workflow import Runner
    from pipelines.stages import pipeline_stages

    args = pipeline_parser(only, description).parse_args(argv)

    def main() -> int:
        cfg = config_from(args)
        runner = Runner(cfg, pipeline_stages())
        selected = _names(args.stages) if only is None else [only]
        force = _names(",".join(args.force)) if only is None else ([only] if args.force else [])
        if args.dry_run:
            runner.run(selected, getattr(args, "from_stage", None), force, dry_run=True)
            return 0
        with job_console(runner.ws, args.verbose):
            steps = runner.run(selected, getattr(args, "from_stage", None), force)
            if only is None:
                console.say(outputs_summary(runner, steps))
        return 0

    return user_errors(main)


def outputs_summary(runner, steps) -> str:
    """Where a pipeline run's outputs are, and how to look at its MLflow runs and models."""
    from pipelines.runtime.tracking import resolve_tracking_uri

    lines = ["", "outputs:"]
    for step in steps:
        if step.action != "-":
            lines.append(f"  {step.stage.name:<10} {runner.ws.full_uri(step.out)}")
    uri = resolve_tracking_uri(runner.cfg, runner.ws)
    if uri.startswith(("http://", "https://")):
        lines.append(f"MLflow: open {uri} (experiment {runner.cfg.mlflow.experiment!r})")
    else:
        lines.append(f"MLflow UI: mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000)")
    return "\n".join(lines)


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]
