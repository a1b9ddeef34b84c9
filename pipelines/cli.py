"""Command lines shared by every job: `--config F`, repeatable `--set a.b=c`, and the stage flags.

User errors end with exit code 2 and one line on stderr; bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from pipelines.config import Config, load_config
from pipelines.errors import UserError


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


def user_errors(main: Callable[[], int | None]) -> int:
    """Run `main`; print a user error as one line and return 2."""
    try:
        return main() or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a UserError raised inside a Ray task or actor arrives wrapped
        cause = _user_error_cause(exc)
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        return UserError.exit_code


def _user_error_cause(exc: BaseException) -> UserError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None


def pipeline_main(argv: Sequence[str] | None = None, only: str | None = None, description: str = "") -> int:
    """`jobs/pipeline.py`, and with `only` set, the single-stage job of that stage."""
    from pipelines.stages import pipeline_stages
    from pipelines.workflow import Runner

    prog = f"jobs/{'pipeline' if only is None else only}.py"
    parser = base_parser(prog, description or "Run the workflow: corpus -> ... -> generate.")
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
    args = parser.parse_args(argv)

    def main() -> int:
        cfg = config_from(args)
        runner = Runner(cfg, pipeline_stages())
        if only is None:
            selected = _names(args.stages)
            force = _names(",".join(args.force))
            runner.run(selected, args.from_stage, force, dry_run=args.dry_run)
        else:
            runner.run([only], None, [only] if args.force else [], dry_run=args.dry_run)
        return 0

    return user_errors(main)


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]
