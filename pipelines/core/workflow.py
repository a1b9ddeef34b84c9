"""The stage runner: fingerprints, skip-if-up-to-date, atomic publishing, MLflow parent/child runs.

A stage is a named unit with config sections, inputs (other stages) and an output directory under
the workspace. Its fingerprint hashes its config sections, its inputs' fingerprints and the project
version; its output is published data first and `manifest.json` last. A stage is up to date when
its manifest carries the same fingerprint and its inputs' manifests are the ones it was built from.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pipelines import __version__
from pipelines.config import Config, section_dict
from pipelines.core.manifest import fingerprint, input_entry, manifest_digest, publish, read_manifest
from pipelines.core.workspace import Workspace
from pipelines.errors import UserError
from pipelines.runtime.console import say, stage_log


@dataclass(frozen=True)
class Published:
    """A stage output that is complete: its directory and its manifest."""

    stage: str
    dir: str  # workspace-relative
    manifest: dict[str, Any]


@dataclass
class StageContext:
    cfg: Config
    ws: Workspace
    stage: str
    fingerprint: str
    out: str  # workspace-relative output directory, empty when the stage starts
    inputs: dict[str, Published]
    log: Callable[[str], None] = say
    mlflow_run_id: str | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[StageContext], dict[str, Any] | None]
    sections: tuple[str, ...] = ()
    inputs: tuple[str, ...] | Callable[[Config], tuple[str, ...]] = ()
    # (cfg, fingerprint) -> workspace-relative output dir; default "<name>/<fingerprint[:12]>"
    output_dir: Callable[[Config, str], str] | None = None
    # Whatever else defines the output (input file identities, an external model's digest, ...)
    fingerprint_extra: Callable[[Config, Workspace], Any] | None = None
    enabled: Callable[[Config], bool] = lambda cfg: True
    # (cfg, ws, the inputs published already) -> None: one-line UserErrors the stage can tell before
    # it starts, called by Runner.run at planning time (`--dry-run` too) for the stages that will run;
    # an input this run builds is absent, and the stage checks it when it runs.
    preflight: Callable[[Config, Workspace, dict[str, Published]], None] | None = None
    needs_ray: bool = True
    summary: str = ""

    def input_names(self, cfg: Config) -> tuple[str, ...]:
        return self.inputs(cfg) if callable(self.inputs) else self.inputs

    def out_dir(self, cfg: Config, fp: str) -> str:
        return self.output_dir(cfg, fp) if self.output_dir else f"{self.name}/{fp[:12]}"


@dataclass
class Step:
    stage: Stage
    fingerprint: str
    out: str
    selected: bool
    action: str = "run"  # "run" | "skip" | "-" (not selected)
    reason: str = ""


@dataclass
class Runner:
    cfg: Config
    stages: list[Stage]
    log: Callable[[str], None] = say
    ws: Workspace = field(init=False)
    _fingerprints: dict[str, str] = field(init=False, default_factory=dict)

    def __post_init__(self):
        self.ws = Workspace(self.cfg.workspace)
        self.ws.check_reachable()  # one line naming `workspace`, before any stage reads a manifest
        self.by_name = {s.name: s for s in self.stages}

    # --- planning --------------------------------------------------------------------------
    def fingerprint(self, name: str) -> str:
        if name not in self._fingerprints:
            stage = self._stage(name)
            extra = stage.fingerprint_extra(self.cfg, self.ws) if stage.fingerprint_extra else None
            self._fingerprints[name] = fingerprint(
                {
                    "stage": name,
                    "project": __version__,
                    "config": {s: section_dict(self.cfg, s) for s in stage.sections},
                    "inputs": {i: self.fingerprint(i) for i in stage.input_names(self.cfg)},
                    "extra": extra,
                }
            )
        return self._fingerprints[name]

    def output(self, name: str) -> str:
        return self._stage(name).out_dir(self.cfg, self.fingerprint(name))

    def published(self, name: str) -> Published | None:
        """The output of stage `name` for this config, if it is complete and current."""
        out = self.output(name)
        manifest = read_manifest(self.ws, out)
        if manifest is None or manifest.get("fingerprint") != self.fingerprint(name):
            return None
        return Published(name, out, manifest)

    def plan(
        self,
        stages: Iterable[str] | None = None,
        from_stage: str | None = None,
        force: Iterable[str] = (),
    ) -> list[Step]:
        enabled = [s for s in self.stages if s.enabled(self.cfg)]
        names = [s.name for s in enabled]
        chosen = set(names)
        if stages:
            chosen = {self._stage(n).name for n in stages}
        if from_stage:
            start = names.index(self._stage(from_stage).name) if from_stage in names else None
            if start is None:
                raise UserError(f"--from {from_stage}: stage is disabled by the config")
            chosen &= set(names[start:])
        forced = {self._stage(n).name for n in force}

        steps, rebuilt = [], set()
        for stage in enabled:
            step = Step(stage, self.fingerprint(stage.name), self.output(stage.name), stage.name in chosen)
            if not step.selected:
                step.action = "-"
            else:
                step.action, step.reason = self._status(stage, forced, rebuilt)
                if step.action == "run":
                    rebuilt.add(stage.name)
            steps.append(step)
        return steps

    def _status(self, stage: Stage, forced: set[str], rebuilt: set[str]) -> tuple[str, str]:
        if stage.name in forced:
            return "run", "forced"
        manifest = read_manifest(self.ws, self.output(stage.name))
        if manifest is None:
            state = (
                "incomplete output (no manifest)" if self.ws.exists(self.output(stage.name)) else "not built"
            )
            return "run", state
        if manifest.get("fingerprint") != self.fingerprint(stage.name):
            return "run", "config changed"
        for name in stage.input_names(self.cfg):
            if name in rebuilt:
                return "run", f"input {name} is rebuilt"
            current = self.published(name)
            recorded = manifest.get("inputs", {}).get(name, {}).get("digest")
            if current is not None and manifest_digest(current.manifest) != recorded:
                return "run", f"input {name} changed"
        return "skip", "up to date"

    def check(self, steps: list[Step]) -> None:
        """Each stage that will run checks its inputs that are published and not rebuilt by this run
        (Stage.preflight): a bad config fails before any stage starts, in a dry run too."""
        rebuilt = {s.stage.name for s in steps if s.action == "run"}
        for step in steps:
            if step.action != "run" or step.stage.preflight is None:
                continue
            names = [n for n in step.stage.input_names(self.cfg) if n not in rebuilt]
            published = {n: p for n in names if (p := self.published(n)) is not None}
            step.stage.preflight(self.cfg, self.ws, published)

    def describe(self, steps: list[Step]) -> str:
        lines = [f"workspace: {self.ws.full_uri()}"]
        for step in steps:
            what = {"run": "will run", "skip": "up to date", "-": "not selected"}[step.action]
            why = f" ({step.reason})" if step.reason and step.action == "run" else ""
            lines.append(f"  {step.stage.name:<10} {what}{why:<36} {step.out}")
        return "\n".join(lines)

    # --- running ---------------------------------------------------------------------------
    def run(
        self,
        stages: Iterable[str] | None = None,
        from_stage: str | None = None,
        force: Iterable[str] = (),
        dry_run: bool = False,
    ) -> list[Step]:
        steps = self.plan(stages, from_stage, force)
        self.check(steps)
        if dry_run:
            self.log(self.describe(steps))
            return steps
        todo = [s for s in steps if s.action == "run"]
        for step in steps:
            if step.action == "skip":
                self.log(f"[skip] {step.stage.name}: up to date ({self.ws.full_uri(step.out)})")
        if not todo:
            self.log("nothing to do: every selected stage is up to date")
            return steps

        from pipelines.runtime import tracking

        tracking.configure(self.cfg, self.ws)
        with tracking.run("pipeline", tags={"stages": ",".join(s.stage.name for s in todo)}):
            tracking.log_params(self.cfg.model_dump(mode="json"))
            for step in todo:
                with stage_log(step.stage.name):  # its library output into logs/<stage>/
                    self._run_stage(step)
        return steps

    def _run_stage(self, step: Step) -> None:
        import mlflow

        from pipelines.runtime import tracking

        stage = step.stage
        inputs = {name: self._require_input(stage, name) for name in stage.input_names(self.cfg)}
        if stage.needs_ray:
            from pipelines.runtime.ray import init_ray

            init_ray(self.cfg)
        self.log(f"[run] {stage.name}: {step.reason} -> {self.ws.full_uri(step.out)}")
        self.ws.delete_dir(step.out)  # leftovers of a crashed or outdated run are never reused
        self.ws.makedirs(step.out)
        config = {s: section_dict(self.cfg, s) for s in stage.sections}
        with tracking.run(stage.name, nested=True) as active:
            tracking.log_params(config)
            ctx = StageContext(
                self.cfg,
                self.ws,
                stage.name,
                step.fingerprint,
                step.out,
                inputs,
                self.log,
                active.info.run_id,
            )
            started = time.perf_counter()
            result = stage.run(ctx) or {}
            seconds = time.perf_counter() - started
            manifest = publish(
                self.ws,
                step.out,
                stage=stage.name,
                fingerprint=step.fingerprint,
                config=config,
                inputs={n: input_entry(p.dir, p.manifest) for n, p in inputs.items()},
                seconds=seconds,
                fields=result,
            )
            mlflow.log_metrics({**tracking.numeric_metrics(result), "seconds": seconds})
            tracking.log_dict(manifest, "manifest.json")  # redacted: no credentials in artifacts
        self.log(f"[done] {stage.name} in {seconds:.1f}s -> {self.ws.full_uri(step.out)}")

    def _require_input(self, stage: Stage, name: str) -> Published:
        published = self.published(name)
        if published is None:
            raise UserError(
                f"stage {stage.name!r} needs the output of stage {name!r} "
                f"({self.ws.full_uri(self.output(name))}), which is not built for this config; "
                f"run `python jobs/pipeline.py --stages {name}` with the same config first"
            )
        return published

    def _stage(self, name: str) -> Stage:
        if name not in self.by_name:
            raise UserError(f"unknown stage {name!r} (stages: {', '.join(self.by_name)})")
        return self.by_name[name]
