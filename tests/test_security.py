"""Security defaults in code: credentials never reach MLflow (params, tags, artifacts) of a real
pipeline run, and the embedded Ray keeps its dashboard on loopback behind token auth. (The settings of
the clusters and servers in infra/ are checked by tests/test_infra.py.)"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import load_config
from pipelines.core.workflow import Runner, Stage
from pipelines.runtime.tracking import REDACTED, redact, redact_tree, safe_params
from tests.conftest import ROOT


def test_safe_params_keep_every_ordinary_config_value():
    """Names like tokenizer.* or max_new_tokens are not secrets: the whole default config logs as is."""
    cfg = load_config(None, [])
    params = safe_params(cfg.model_dump(mode="json"))
    assert REDACTED not in params.values()
    assert params["tokenizer.vocab_size"] == str(cfg.tokenizer.vocab_size)
    assert params["generate.max_new_tokens"] == str(cfg.generate.max_new_tokens)


@pytest.mark.parametrize(
    "text, secret",
    [
        ("postgresql://mlflow:hunter2pw@db:5432/mlflow", "hunter2pw"),
        ("https://bucket.s3.amazonaws.com/x.jsonl?X-Amz-Signature=abc123def&X-Amz-Date=1", "abc123def"),
        ("https://acct.blob.core.windows.net/c/x?sv=2024&sig=s1gn4ture", "s1gn4ture"),
    ],
)
def test_redact_removes_credentials_inside_values(text, secret):
    assert secret not in redact(text)
    assert redact(text).split("://")[0] == text.split("://")[0]  # the rest stays readable


def test_redact_tree_masks_secret_keys_and_env_secret_values(monkeypatch):
    value = secrets.token_hex(12)
    monkeypatch.setenv("HF_TOKEN", value)
    tree = {
        "auth": {"api_key": "k-123456", "user": "me"},
        "credentials": {"user": "svc", "pw": ["p4ss", None]},  # everything under a secret-named key
        "note": f"uses {value}",
        "tokens": [1, 2],
    }
    assert redact_tree(tree) == {
        "auth": {"api_key": REDACTED, "user": "me"},
        "credentials": {"user": REDACTED, "pw": [REDACTED, None]},
        "note": f"uses {REDACTED}",
        "tokens": [1, 2],
    }


# --- a pipeline run against the real MLflow server ------------------------------------------------------
def leaky_stage(seen: dict) -> Stage:
    """A stage whose config and result carry credentials the way a careless user's would."""

    def run(ctx):
        inputs = ctx.cfg.corpus.inputs
        ctx.ws.write_bytes(f"{ctx.out}/inputs.json", json.dumps(inputs).encode())
        seen["run_id"] = ctx.mlflow_run_id
        return {
            "docs": 3,
            "inputs_seen": inputs,
            "env": {"aws_secret_access_key": os.environ["AWS_SECRET_ACCESS_KEY"]},
        }

    return Stage("leaky", run, sections=("corpus", "tokenizer"), needs_ray=False)


def run_texts(client, tracking_uri: str, run_id: str) -> dict[str, str]:
    """Everything MLflow holds for a run, as text: params, tags, metric names and every artifact."""
    import mlflow

    run = client.get_run(run_id)
    texts = {
        "params": json.dumps(run.data.params),
        "tags": json.dumps(run.data.tags),
        "metrics": json.dumps(sorted(run.data.metrics)),
    }
    local = mlflow.artifacts.download_artifacts(run_id=run_id, tracking_uri=tracking_uri)
    for path in Path(local).rglob("*"):
        if path.is_file():
            texts[str(path.relative_to(local))] = path.read_text(errors="replace")
    return texts


def test_secrets_never_reach_mlflow_params_tags_or_artifacts(tmp_path, mlflow_env, monkeypatch):
    import mlflow

    aws_secret = "aws-" + secrets.token_hex(16)
    mlflow_password = "pw-" + secrets.token_hex(16)
    url_password = "url-" + secrets.token_hex(8)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", aws_secret)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "tester")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_password)
    inputs = [
        f"https://crawler:{url_password}@data.example.com/crawl.jsonl",
        f"s3://b/x.jsonl?token={aws_secret}",
    ]
    cfg = load_config(
        None,
        [
            f"workspace={tmp_path / 'ws'}",
            "mlflow.experiment=security-tests",
            f"corpus.inputs={json.dumps(inputs)}",
        ],
    )
    seen: dict = {}
    Runner(cfg, [leaky_stage(seen)], log=lambda m: None).run()

    client = mlflow.MlflowClient(mlflow_env)
    child = client.get_run(seen["run_id"])
    parent_id = child.data.tags["mlflow.parentRunId"]
    for run_id in (parent_id, seen["run_id"]):
        for what, text in run_texts(client, mlflow_env, run_id).items():
            for secret in (aws_secret, mlflow_password, url_password):
                assert secret not in text, f"run {run_id}: {what} leaks a credential"
    # What is not a credential still arrives, and the redaction is visible where it happened.
    params = child.data.params
    assert params["tokenizer.vocab_size"] == str(cfg.tokenizer.vocab_size)
    assert "crawler:***@data.example.com" in params["corpus.inputs"]
    manifest = json.loads(run_texts(client, mlflow_env, seen["run_id"])["manifest.json"])
    assert manifest["docs"] == 3 and manifest["env"]["aws_secret_access_key"] == REDACTED
    assert manifest["inputs_seen"][1] == "s3://b/x.jsonl?token=***"


# --- the embedded Ray -----------------------------------------------------------------------------------
EMBEDDED_RAY = """
import json, time, urllib.error, urllib.request
import ray
from pipelines.config import load_config
from pipelines.runtime.ray import init_ray
from ray._raylet import AuthenticationMode, get_authentication_mode

init_ray(load_config(None, ["ray.include_dashboard=true", "ray.num_cpus=1", "ray.object_store_memory_mb=80"]))
url = ray._private.worker.global_worker.node.address_info["webui_url"]
anonymous = None
for _ in range(120):  # the dashboard may answer a little after ray.init returns
    try:
        anonymous = urllib.request.urlopen(f"http://{url}/api/version", timeout=5).status
    except urllib.error.HTTPError as exc:
        anonymous = exc.code
    except OSError:
        time.sleep(0.5)
        continue
    break
print(json.dumps({"dashboard": url, "token_auth": get_authentication_mode() == AuthenticationMode.TOKEN,
                  "anonymous_status": anonymous}))
ray.shutdown()
"""


@pytest.mark.slow
def test_embedded_ray_dashboard_is_loopback_only_and_needs_the_token(tmp_path):
    """A plain `python jobs/X.py` starts its own Ray: dashboard on 127.0.0.1, token auth on by default."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.update(HOME=str(tmp_path), RAY_USAGE_STATS_ENABLED="0")  # its generated token stays in tmp_path
    proc = subprocess.run(
        [sys.executable, "-c", EMBEDDED_RAY], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["dashboard"].startswith("127.0.0.1:")
    assert result["token_auth"] is True
    assert result["anonymous_status"] in (401, 403)
    assert (tmp_path / ".ray" / "auth_token").is_file()
