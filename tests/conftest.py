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


# Credentials for the tests' S3 server and the node-local cache, set before any Ray starts so that
# every worker inherits them (`s3_server` adds AWS_ENDPOINT_URL, before the session's Ray starts).
# `{node}` gives each Ray node its own cache directory: a hidden dependence on one node's files
# fails. Loopback never goes through a proxy a machine may have set.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_DEFAULT_REGION="us-east-1",
    PIPELINES_CACHE_DIR=os.path.join(tempfile.mkdtemp(prefix="pipelines-cache-"), "{node}"),
    NO_PROXY=",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1,localhost"])),
)
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def wait_http(url: str, timeout: float = 120.0, proc: subprocess.Popen | None = None, headers=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with _LOOPBACK.open(urllib.request.Request(url, headers=headers or {}), timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop_process_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a server started with start_new_session=True and every worker it forked."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


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


def start_session_ray():
    """The session's local Ray: started if it is not running (first use, or after a multi-node test)."""
    import ray

    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            object_store_memory=400 * 2**20,
            include_dashboard=False,
            logging_level="WARNING",
        )
    return ray


@pytest.fixture(scope="session")
def ray_session(s3_server):
    """One local Ray for the whole session (startup costs seconds on 2 cores)."""
    ray = start_session_ray()
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_local(ray_session):
    """The session's Ray, restarted if a multi-node test shut it down."""
    return start_session_ray()


@pytest.fixture(scope="module")
def ray_module(ray_session):
    """ray_local for module-scoped fixtures (e.g. one training run shared by a module's tests)."""
    return start_session_ray()


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
        # The server's background job runner (three huey consumers) is not used by tracking or the
        # registry; on 2 cores it only slows every test down.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
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
    stop_process_group(proc)
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
        # The job agent's fixed default port (52365) collides with any other head on this machine,
        # and then `ray job submit` fails with "No available agent to submit job".
        f"--dashboard-agent-listen-port={free_port()}",
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


@pytest.fixture(scope="session")
def prepared_workspace(ray_session, tmp_path_factory):
    """A published workspace: a small stdlib-docstring corpus, a 512-piece SentencePiece tokenizer and
    token shards, built once per session by the real tokenizer and shards stages (see
    tests/prepared_workspace.py: `.shards_dir`, `.tokenizer_dir`, `.train_overrides(ws, ...)`)."""
    from prepared_workspace import build_prepared_workspace

    start_session_ray()  # the shards stage needs it; a multi-node test may have stopped it
    return build_prepared_workspace(tmp_path_factory.mktemp("prepared") / "ws")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API server (moto) on 127.0.0.1, reached through AWS_ENDPOINT_URL."""
    from s3_server import start_s3_server

    proc, endpoint = start_s3_server(tmp_path_factory.mktemp("s3-server") / "server.log")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    stop_process_group(proc)


@pytest.fixture
def s3_bucket(s3_server, request):
    """A fresh bucket; yields its URI `s3://<bucket>`."""
    import re
    import uuid

    import boto3

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


@pytest.fixture
def reported_node_types(ray_local):
    """The node types as an autoscaler reports them to the GCS (the key Ray Data reads too)."""
    import ray._raylet
    from ray.core.generated import autoscaler_pb2
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    config = autoscaler_pb2.ClusterConfig()
    group = config.node_group_configs.add(name="gpu-8x", min_count=0, max_count=2)
    group.resources.update({"CPU": 96, "GPU": 8, "memory": 10**12})
    where = dict(namespace=ray._raylet.GCS_AUTOSCALER_STATE_NAMESPACE.encode())
    key = ray._raylet.GCS_AUTOSCALER_CLUSTER_CONFIG_KEY.encode()
    _internal_kv_put(key, config.SerializeToString(), overwrite=True, **where)
    yield
    _internal_kv_del(key, **where)  # other tests' Ray Data must not see an autoscaler


from user_chain import user_chain  # noqa: E402, F401  (a session fixture: the console and lineage tests)
