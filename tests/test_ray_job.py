"""The job path: `ray start --head` on loopback with token auth, then `ray job submit`."""

import subprocess

import pytest

from tests.conftest import BIN, ROOT

pytestmark = pytest.mark.slow


def submit(env: dict, *job_args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`ray job submit --working-dir . -- python ...`, waiting for the job to end (exit 0 = SUCCEEDED)."""
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--working-dir", ".", "--", "python", *job_args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_pipeline_dry_run_through_ray_job_submit(ray_head, tmp_path):
    proc = submit(
        ray_head,
        "jobs/pipeline.py",
        "--config",
        "configs/demo.yaml",
        "--set",
        f"workspace={tmp_path}",
        "--dry-run",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout
    assert f"workspace: {tmp_path}" in proc.stdout


def test_submit_without_the_token_is_refused(ray_head):
    env = {k: v for k, v in ray_head.items() if k != "RAY_AUTH_TOKEN"}
    env["HOME"] = "/nonexistent"  # no ~/.ray/auth_token to fall back on
    proc = submit(env, "-c", "print('should not run')", timeout=120)
    assert proc.returncode != 0
    assert "should not run" not in proc.stdout
