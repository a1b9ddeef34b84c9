"""The pipeline, in order. Each stage module keeps heavy imports inside its run function, so
`--help` and `--dry-run` stay fast."""

from __future__ import annotations

from pipelines.workflow import Stage


def pipeline_stages() -> list[Stage]:
    return []
