"""The MLflow pyfunc model of a trained GPT-2: prompts in, completions out.

Logged as an MLflow "model from code": this file IS the model's code (pipelines/registry/models.py logs it
with `code_paths=[gpt2core]` and the model directory as the artifact `model_dir`), so it imports
only gpt2core, torch and mlflow, never the rest of `pipelines`. Then

    mlflow.pyfunc.load_model("models:/gpt2@champion").predict(["Once upon a time"], params={"seed": 0})

returns one completion (the new text only) per prompt, and `mlflow models serve --env-manager local`
serves the same. Sampling parameters are params with defaults: top_k=0 and top_p=1.0 switch those
filters off, seed=-1 samples without a fixed seed, temperature=0 is greedy.

The type hints of `predict` are the model's signature: MLflow infers the input (a string column) and
output (strings) from `list[str]` when the model is logged, with the params schema from the input
example's params (pipelines/registry/models.py logs `(prompts, PARAMS)`), and validates every call
against the hint: a list of strings, or a one-column DataFrame (a request to `mlflow models serve`,
JSON `{"inputs": [...]}` or CSV), which MLflow turns into that list. A bare string or a None prompt
is refused by that validation (an MlflowException), before generation starts.

Where it runs is the model config, MODEL_CONFIG: device "auto" is the GPU when torch sees one,
dtype "auto" bf16 there and fp32 on CPU, and batch_size prompts share one generate() call (its KV
cache grows with it: raise it on a GPU). MLflow hands a load-time `model_config={...}` (or
MLFLOW_PYFUNC_INFERENCE_CONFIG) to load_context only for the keys the model was logged with, so a
model logged with `model_config=MODEL_CONFIG` can be told where to run when it is loaded.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.models import set_model

MODEL_DIR_ARTIFACT = "model_dir"
PARAMS: dict[str, Any] = {"max_new_tokens": 64, "temperature": 0.8, "top_k": 0, "top_p": 1.0, "seed": -1}
MODEL_CONFIG: dict[str, Any] = {"device": "auto", "dtype": "auto", "batch_size": 16}


class GPT2Completions(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from gpt2core.checkpoint import inference_placement, load_model
        from gpt2core.tokenizer import load_tokenizer

        settings = {**MODEL_CONFIG, **(context.model_config or {})}
        device, dtype = inference_placement(str(settings["device"]), str(settings["dtype"]))
        self.batch_size = int(settings["batch_size"])
        model_dir = context.artifacts[MODEL_DIR_ARTIFACT]
        self.model = load_model(model_dir, device, dtype)
        self.tokenizer = load_tokenizer(model_dir)

    def predict(self, context, model_input: list[str], params: dict[str, Any] | None = None) -> list[str]:
        from gpt2core.generate import generate

        p = {**PARAMS, **(params or {})}
        keep = self.model.config.block_size - 1  # the context must leave room for one new token
        eos = self.tokenizer.eos_id
        # An empty prompt starts from end-of-text, as GPT-2 samples unconditionally.
        ids = [(self.tokenizer.encode(text) or [eos])[-keep:] for text in model_input]
        completions: list[str] = []
        for start in range(0, len(ids), self.batch_size):
            results = generate(
                self.model,
                ids[start : start + self.batch_size],
                int(p["max_new_tokens"]),
                greedy=float(p["temperature"]) == 0.0,
                temperature=float(p["temperature"]) or 1.0,
                top_k=int(p["top_k"]) or None,
                top_p=float(p["top_p"]) if float(p["top_p"]) < 1.0 else None,
                eos_id=eos,
                seed=int(p["seed"]) + start if int(p["seed"]) >= 0 else None,
            )
            completions += [self.tokenizer.decode(r.tokens) for r in results]
        return completions


set_model(GPT2Completions())
