"""Fixtures every test module shares: one local Ray per session, a real `mlflow server` on loopback,
and helpers to run the jobs as a user would (subprocesses, exit codes, stderr)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None, headers=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(
                urllib.request.Request(url, headers=headers or {}), timeout=2
            ) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def run_job(
    *args: str, env: dict | None = None, timeout: float = 900, cwd: Path = ROOT
) -> subprocess.CompletedProcess:
    """Run `python jobs/<args...>` as a user would; returns the completed process (text output)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session (startup costs seconds on 2 cores)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            object_store_memory=400 * 2**20,
            include_dashboard=False,
            logging_level="WARNING",
        )
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_local(ray_session):
    """The session's Ray, restarted if a multi-node test shut it down."""
    if not ray_session.is_initialized():
        ray_session.init(
            address="local", num_cpus=2, object_store_memory=400 * 2**20, include_dashboard=False
        )
    return ray_session


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 with a temporary SQLite store and artifact root."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{uri}/health", proc=proc)
    except Exception:
        proc.kill()
        raise RuntimeError((root / "server.log").read_text()[-3000:]) from None
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def mlflow_env(mlflow_server, monkeypatch):
    """MLFLOW_TRACKING_URI pointed at the real server, for this process and its children."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    yield mlflow_server


@pytest.fixture
def ray_head(tmp_path):
    """`ray start --head` on loopback with its own temp dir, ports and token auth, as a user runs it.

    Yields the env that both the head and every client use: RAY_ADDRESS (the dashboard, for
    `ray job submit`), RAY_AUTH_MODE=token and RAY_AUTH_TOKEN. The head runs with --block in its
    own session, so stopping it kills exactly its processes (`ray stop` would kill every Ray on
    the machine, including this test session's).
    """
    import secrets

    dashboard_port = free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",  # an activated venv: `python` is ours
    }
    env.pop("RAY_ADDRESS", None)
    # Ray's socket paths must stay short: a private dir under /tmp, not pytest's deep tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="rayhead-", dir="/tmp")
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={free_port()}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        "--include-dashboard=true",
        "--num-cpus=2",
        "--object-store-memory=400000000",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    log = open(tmp_path / "ray-head.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    env["RAY_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    try:
        auth = {"Authorization": f"Bearer {env['RAY_AUTH_TOKEN']}"}
        wait_http(f"{env['RAY_ADDRESS']}/api/version", timeout=180, proc=head, headers=auth)
        yield env
    finally:
        for sig in ("TERM", "KILL"):
            subprocess.run(["pkill", f"-{sig}", "-s", str(head.pid)], capture_output=True)
            time.sleep(1)
        head.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)
