"""The job command lines as a user runs them: --help, --dry-run, exit code 2 on user errors."""

import pytest

from tests.conftest import run_job


def test_pipeline_help():
    proc = run_job("jobs/pipeline.py", "--help")
    assert proc.returncode == 0
    for flag in ("--config", "--set", "--stages", "--from", "--force", "--dry-run"):
        assert flag in proc.stdout


def test_dry_run_on_demo_config_prints_plan(tmp_path):
    proc = run_job(
        "jobs/pipeline.py", "--config", "configs/demo.yaml", "--set", f"workspace={tmp_path}", "--dry-run"
    )
    assert proc.returncode == 0, proc.stderr
    assert f"workspace: {tmp_path}" in proc.stdout
    assert not (tmp_path / "mlflow.db").exists()  # a dry run touches nothing


@pytest.mark.parametrize(
    "args, key",
    [
        (["--set", "train.lr=abc"], "train.lr"),
        (["--set", "nosuch.key=1"], "nosuch"),
        (["--config", "configs/does-not-exist.yaml"], "configs/does-not-exist.yaml"),
        (["--stages", "nosuchstage"], "nosuchstage"),
    ],
)
def test_user_errors_exit_2_with_one_line(args, key):
    proc = run_job("jobs/pipeline.py", "--config", "configs/demo.yaml", *args, "--dry-run")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert key in lines[0]
    assert "Traceback" not in proc.stderr
