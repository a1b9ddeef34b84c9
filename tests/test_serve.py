"""Serving for a person: a real `mlflow models serve -m models:/<name>@champion --env-manager local`
process on 127.0.0.1 answers a JSON request with completions (the pyfunc model of pretraining), and
the pyfunc model's config chooses its dtype and batch."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request

import mlflow
import pytest
import torch
from conftest import BIN, free_port, stop_process_group, wait_http
from finetune_inputs import register_model
from prepared_workspace import make_model_dir

from gpt2core.checkpoint import PlacementError, load_model
from gpt2core.generate import generate
from gpt2core.tokenizer import load_tokenizer

NAME = "serve-test"


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_completions(prepared_workspace, mlflow_env, tmp_path):
    pw = prepared_workspace
    model_dir = make_model_dir(tmp_path / "model", pw.tokenizer_dir, 512, 10, pw.shards_dir)
    mlflow.set_experiment("serve-tests")
    register_model(model_dir, NAME, alias="champion")
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{NAME}@champion", "--env-manager", "local"]
    server = subprocess.Popen(
        [*cmd, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        # the server execs `uvicorn` by name: the venv's bin must be on PATH, as in an activated venv
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_env, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            wait_http(f"http://127.0.0.1:{port}/ping", timeout=240, proc=server)
        except Exception:
            raise AssertionError((tmp_path / "serve.log").read_text()[-3000:]) from None
        prompts = ["Return the number of", "Raise an error if"]
        body = {"inputs": prompts, "params": {"max_new_tokens": 10, "temperature": 0.0}}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
    finally:
        stop_process_group(server)
        log.close()
    # greedy completions: exactly gpt2core's greedy decoding of the registered weights
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    ids = [tokenizer.encode(p) for p in prompts]
    expected = generate(model, ids, 10, greedy=True, eos_id=tokenizer.eos_id)
    assert predictions == [tokenizer.decode(g.tokens) for g in expected]
    assert all(isinstance(p, str) and p for p in predictions)


def loaded_pyfunc(model_dir, model_config):
    """The project's pyfunc model after MLflow's load_context, given the context MLflow builds."""
    from mlflow.pyfunc import PythonModelContext

    from pipelines.registry.pyfunc import MODEL_DIR_ARTIFACT, GPT2Completions

    model = GPT2Completions()
    model.load_context(PythonModelContext({MODEL_DIR_ARTIFACT: str(model_dir)}, model_config))
    return model


def test_pyfunc_model_config_sets_dtype_and_batch(prepared_workspace, tmp_path):
    model_dir = make_model_dir(tmp_path / "model", prepared_workspace.tokenizer_dir, 512, 0)
    default = loaded_pyfunc(model_dir, None)  # a model logged without a model config
    assert default.model.transformer.wte.weight.dtype == torch.float32  # auto on CPU: fp32
    bf16 = loaded_pyfunc(model_dir, {"dtype": "bf16", "batch_size": 2})
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16} and bf16.batch_size == 2
    prompts = ["Return the number of", "", "Raise an error if"]
    completions = bf16.predict(None, prompts, params={"max_new_tokens": 4, "temperature": 0.0})
    tokenizer = load_tokenizer(model_dir)
    ids = [tokenizer.encode(p) or [tokenizer.eos_id] for p in prompts]
    batches = (ids[:2], ids[2:])  # two generate() calls, as batch_size 2 cuts them
    expected = [g for b in batches for g in generate(bf16.model, b, 4, greedy=True, eos_id=tokenizer.eos_id)]
    assert completions == [tokenizer.decode(g.tokens) for g in expected]
    with pytest.raises(PlacementError, match="dtype 'fp16' needs a CUDA device"):
        loaded_pyfunc(model_dir, {"device": "cpu", "dtype": "fp16"})


def test_a_registered_model_takes_its_device_and_dtype_at_load_time(prepared_workspace, mlflow_env, tmp_path):
    model_dir = make_model_dir(tmp_path / "model", prepared_workspace.tokenizer_dir, 512, 0)
    mlflow.set_experiment("serve-tests")
    version = register_model(model_dir, "serve-config")
    uri = f"models:/serve-config/{version}"
    loaded = mlflow.pyfunc.load_model(
        uri, model_config={"dtype": "bf16", "batch_size": 2}
    ).unwrap_python_model()
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16} and loaded.batch_size == 2
    plain = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    assert plain.model.transformer.wte.weight.dtype == torch.float32 and plain.batch_size == 16
