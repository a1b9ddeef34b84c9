"""The model registry on a real MLflow server: pyfunc logging, versions, `champion` gate both ways,
champions with another tokenizer (bits per byte on the same text), and the pyfunc model answering."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from prepared_workspace import make_model_dir

from gpt2core.checkpoint import load_model
from gpt2core.data import TokenShards
from gpt2core.evaluate import evaluate_model_dir, val_tokens_for
from gpt2core.generate import generate
from gpt2core.tokenizer import load_tokenizer
from pipelines.errors import UserError
from pipelines.registry import models as registry
from pipelines.registry import pyfunc

NAME = "registry-test"


def other_tokenizer(path):
    """A second SentencePiece tokenizer (another vocabulary) trained on the same kind of text."""
    import sentencepiece as spm
    from prepared_workspace import docstring_documents

    path.mkdir(parents=True)
    text = [t for _, t in docstring_documents()[:150]]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(line for doc in text for line in doc.splitlines() if line),
        model_prefix=str(path / "spm"),
        vocab_size=400,
        byte_fallback=True,
        eos_id=1,
        bos_id=-1,
        unk_id=0,
        eos_piece="<|endoftext|>",
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    return path


@pytest.fixture(scope="module")
def models(prepared_workspace, tmp_path_factory):
    pw, root = prepared_workspace, tmp_path_factory.mktemp("registry")
    tok = pw.tokenizer_dir
    return {
        "random": make_model_dir(root / "random", tok, 512, 0),
        "trained": make_model_dir(root / "trained", tok, 512, 25, pw.shards_dir),
        "foreign": make_model_dir(root / "foreign", other_tokenizer(root / "tok400"), 400, 0),
    }


@pytest.fixture(scope="module")
def gate(prepared_workspace):
    pw = prepared_workspace
    return registry.GateData(str(pw.shards_dir), str(pw.tokenizer_dir), batch_size=8, max_batches=4)


def log_and_register(model_dir) -> str:
    with mlflow.start_run(run_name="registry-test"):
        uri = registry.log_model(model_dir)
    return registry.register(uri, NAME, {"source": str(model_dir)})


def tags(version: str) -> dict[str, str]:
    return mlflow.MlflowClient().get_model_version(NAME, version).tags


def test_champion_gate_both_ways(models, gate, mlflow_env, ray_local):
    mlflow.set_experiment("registry-tests")
    first = log_and_register(models["random"])
    decision = registry.champion_gate(NAME, first, models["random"], gate)
    assert decision["promoted"] and decision["champion_bpb"] is None  # no champion yet
    assert tags(first)["gate.champion_bpb"] == "none"

    better = log_and_register(models["trained"])
    decision = registry.champion_gate(NAME, better, models["trained"], gate)
    assert decision["promoted"] and decision["champion_version"] == first
    assert decision["candidate_bpb"] < decision["champion_bpb"]
    assert tags(better)["gate.decision"] == "promoted to champion"
    assert float(tags(better)["gate.champion_bpb"]) == pytest.approx(decision["champion_bpb"], rel=1e-5)

    worse = log_and_register(models["random"])
    decision = registry.champion_gate(NAME, worse, models["random"], gate)
    assert not decision["promoted"] and decision["champion_version"] == better
    assert decision["candidate_bpb"] > decision["champion_bpb"]
    assert tags(worse)["gate.decision"] == "kept the champion"
    assert float(tags(worse)["gate.candidate_bpb"]) == pytest.approx(decision["candidate_bpb"], rel=1e-5)

    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias(NAME, "champion").version == better
    assert client.get_latest_versions(NAME)[0].version == worse  # models:/<name>/latest

    # a challenger with another tokenizer is judged on the same text, re-encoded with its own
    foreign = log_and_register(models["foreign"])
    decision = registry.champion_gate(NAME, foreign, models["foreign"], gate)
    assert not decision["promoted"] and math.isfinite(decision["candidate_bpb"])


def mlflow_user_warnings(caught) -> list[str]:
    """The UserWarnings MLflow itself raised (e.g. its advice to add type hints to `predict`)."""
    package = Path(mlflow.__file__).parent
    return [
        str(w.message)
        for w in caught
        if issubclass(w.category, UserWarning) and package in Path(w.filename).resolve().parents
    ]


def test_pyfunc_model_completes_prompts_with_sampling_params(models, mlflow_env):
    mlflow.set_experiment("registry-tests")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with mlflow.start_run(run_name="pyfunc-test"):
            uri = registry.log_model(models["trained"])
        model = mlflow.pyfunc.load_model(uri)
    # predict's type hints: no advice from MLflow, and they are the signature (the params from PARAMS)
    assert mlflow_user_warnings(caught) == []
    signature = model.metadata.signature
    assert model.metadata._is_signature_from_type_hint()
    assert signature.inputs.to_dict() == [{"type": "string", "required": True}]
    assert signature.outputs.to_dict() == [{"type": "string", "required": True}]
    prompts = ["Return the number of", "", "Raise an error if"]
    sampled = model.predict(prompts, params={"max_new_tokens": 12, "seed": 3, "top_k": 20, "top_p": 0.9})
    assert len(sampled) == 3 and all(isinstance(c, str) and c for c in sampled)
    again = model.predict(prompts, params={"max_new_tokens": 12, "seed": 3, "top_k": 20, "top_p": 0.9})
    assert again == sampled  # a seed makes sampling reproducible
    # greedy (temperature 0) is exactly gpt2core's greedy decoding of the saved model
    greedy = model.predict(prompts[:1], params={"max_new_tokens": 10, "temperature": 0.0})
    gpt, tokenizer = load_model(models["trained"]), load_tokenizer(models["trained"])
    [expected] = generate(gpt, [tokenizer.encode(prompts[0])], 10, greedy=True, eos_id=tokenizer.eos_id)
    assert greedy == [tokenizer.decode(expected.tokens)]
    params = {p.name: p.default for p in model.metadata.get_params_schema().params}
    assert params == {"max_new_tokens": 64, "temperature": 0.8, "top_k": 0, "top_p": 1.0, "seed": -1}
    assert params == pyfunc.PARAMS
    # a one-column DataFrame (what serving builds from CSV) is the list of its prompts; the hint
    # list[str] refuses a bare string or a None prompt before generation
    frame = pd.DataFrame({"prompt": prompts[:1]})
    assert model.predict(frame, params={"max_new_tokens": 10, "temperature": 0.0}) == greedy
    for bad in ("Return the number of", ["Return the number of", None]):
        with pytest.raises(MlflowException, match="Expected"):
            model.predict(bad, params={"max_new_tokens": 2})


def test_model_dir_of_a_registry_uri_and_bad_uris(models, gate, mlflow_env, tmp_path):
    mlflow.set_experiment("registry-tests")
    version = log_and_register(models["trained"])
    local = registry.model_dir_of(f"models:/{NAME}/{version}", tmp_path / "dl")
    assert (local / "config.json").read_text() == (models["trained"] / "config.json").read_text()
    assert registry.model_dir_of(str(models["trained"])) == models["trained"]
    with pytest.raises(UserError, match="cannot download"):
        registry.model_dir_of(f"models:/{NAME}/999", tmp_path / "missing")
    with pytest.raises(UserError, match="config.json"):
        registry.model_dir_of(str(tmp_path))


def test_bits_per_byte_is_loss_per_byte_and_training_lowers_it(models, prepared_workspace):
    pw = prepared_workspace
    val = TokenShards(pw.shards_dir, "val")
    random = evaluate_model_dir(str(models["random"]), val, 8, 4)
    trained = evaluate_model_dir(str(models["trained"]), val, 8, 4)
    assert trained.bits_per_byte < random.bits_per_byte - 0.3
    assert random.loss == pytest.approx(math.log(512), rel=0.05)  # GPT-2 init: about uniform
    assert trained.bits_per_byte == pytest.approx(trained.loss / math.log(2) * val.n_tokens / val.n_bytes)
    assert trained.perplexity == pytest.approx(math.exp(trained.loss))
    assert trained.tokens == 4 * 8 * 64


def test_val_text_is_re_encoded_for_another_tokenizer(models, prepared_workspace):
    pw = prepared_workspace
    same = val_tokens_for(str(models["trained"]), str(pw.shards_dir), str(pw.tokenizer_dir))
    assert isinstance(same, TokenShards)  # same tokenizer: the shards themselves
    stream = val_tokens_for(str(models["foreign"]), str(pw.shards_dir), str(pw.tokenizer_dir))
    val = TokenShards(pw.shards_dir, "val")
    assert stream.n_bytes == val.n_bytes
    theirs, ours = load_tokenizer(models["foreign"]), load_tokenizer(pw.tokenizer_dir)
    their_text = [theirs.decode(d) for d in _split(stream.read(0, len(stream)).tolist(), theirs.eos_id)]
    our_text = [ours.decode(d) for d in _split(val.read(0, len(val)).tolist(), ours.eos_id)]
    assert their_text == our_text and len(our_text) == val.n_docs
    assert sum(len(t.encode()) for t in our_text) == val.n_bytes


def _split(tokens: list[int], eos: int) -> list[list[int]]:
    docs, current = [], []
    for t in tokens:
        if t == eos:
            docs.append(current)
            current = []
        else:
            current.append(t)
    return docs


def test_training_params_reach_mlflow_without_credentials(mlflow_env, monkeypatch):
    """Rank 0 logs the whole resolved config; credentials in it (a URL password, a secret-named key,
    the value of a secret environment variable) are redacted before they reach the server."""
    from pipelines.training.metrics import MetricsLog

    monkeypatch.setenv("HF_TOKEN", "hf_s3cr3tvalue")
    mlflow.set_experiment("train-params")
    with mlflow.start_run() as run:
        pass
    log = MetricsLog(mlflow_env, run.info.run_id, ("loss",))
    log.log_params(
        {
            "mlflow": {"tracking_uri": "https://alice:pa55word@tracking.example"},
            "corpus": {"access_key": "AKIA0123456789", "note": "uses hf_s3cr3tvalue"},
            "train": {"zero_stage": 1},
        }
    )
    params = mlflow.MlflowClient().get_run(run.info.run_id).data.params
    assert params["train.zero_stage"] == "1"
    assert params["mlflow.tracking_uri"] == "https://alice:***@tracking.example"
    assert params["corpus.access_key"] == "***"
    assert params["corpus.note"] == "uses ***"
    assert not any(s in v for v in params.values() for s in ("pa55word", "AKIA0123", "s3cr3t"))
