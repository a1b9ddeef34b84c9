"""Fine-tuning: loss masking on the prompt, LoRA, and the `finetune` stage on a real MLflow server and
the session Ray - from a registry alias (lineage tags, the champion moves) and from an exported then
re-imported Hugging Face GPT-2 directory with a GPT-2 BPE tokenizer (the champion stays); continued
pretraining on plain text (a text file, or the pipeline's shards); early stopping's checkpointed state."""

from __future__ import annotations

import hashlib
import json

import mlflow
import numpy as np
import pytest
import torch
from finetune_inputs import FINETUNE_OVERRIDES, register_model, run_stage, write_pairs_file
from gpt2_reference import train_bpe
from prepared_workspace import MODULES, make_model_dir, test_corpus_stage

from gpt2core.checkpoint import load_model, save_model
from gpt2core.config import preset
from gpt2core.lora import LoraConfig, apply_lora, merged_state_dict
from gpt2core.model import GPT
from gpt2core.tokenizer import load_tokenizer
from pipelines.core.manifest import manifest_digest
from pipelines.core.workflow import Runner
from pipelines.errors import UserError
from pipelines.training.checkpoint import TrainState, read_rank_state, train_state, write_rank_state
from pipelines.training.finetune.data import IGNORE, build_pairs, build_text, load_rows, read_pairs
from pipelines.training.finetune.stage import finetune_stage
from pipelines.training.finetune.task import RowSampler

NAME = "finetune-test"


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    bad = ('{"prompt": "no completion"}', "{not json", '["a list"]', '{"prompt": "x", "completion": 3}')
    return write_pairs_file(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", bad)


def test_prompt_tokens_carry_no_loss_and_bad_lines_are_counted(prepared_workspace, pairs_file, tmp_path):
    tok = load_tokenizer(prepared_workspace.tokenizer_dir)
    long_prompt = {"prompt": "word " * 200, "completion": "the end"}
    pairs = read_pairs(pairs_file).pairs
    pairs = [{"prompt": p, "completion": c} for p, c in pairs] + [long_prompt]
    path = tmp_path / "p.jsonl"
    path.write_text(pairs_file.read_text() + json.dumps(long_prompt) + "\n")
    info = build_pairs(path, tok, 64, 0.15, tmp_path / "rows")
    assert info["rejects"] == {"missing_completion": 2, "malformed_json": 1, "not_an_object": 1}
    assert info["truncated"] >= 1
    x, y = (
        np.concatenate(a)
        for a in zip(load_rows(tmp_path / "rows", "train"), load_rows(tmp_path / "rows", "val"))
    )
    assert len(x) == info["splits"]["train"]["rows"] + info["splits"]["val"]["rows"] == len(pairs)
    for row_x, row_y in zip(x, y):
        counted = np.flatnonzero(row_y != IGNORE)
        assert counted.size and np.all(np.diff(counted) == 1)  # one run of targets: the completion
        if counted.size == 64:  # a completion longer than the window: cut on the right, no EOS
            continue
        assert row_y[counted[-1]] == tok.eos_id  # ... ending with EOS
        # the counted targets decode to a completion, the inputs before them to its prompt
        completion = tok.decode(row_y[counted][:-1].tolist())
        prompt = tok.decode(row_x[: counted[0] + 1].tolist())
        match = [p for p in pairs if p["completion"] == completion]
        assert match, completion
        assert any(p["prompt"].endswith(prompt) for p in match)  # whole, or cut on the left
        assert np.array_equal(row_x[counted[0] + 1 : counted[-1] + 1], row_y[counted[:-1]])  # shifted by one


def test_text_file_counts_every_target(prepared_workspace, tmp_path):
    tok = load_tokenizer(prepared_workspace.tokenizer_dir)
    text = tmp_path / "notes.txt"
    text.write_text("A plain text file for continued pretraining.\n" * 60)
    info = build_text(text, tok, 32, 0.2, tmp_path / "rows")
    x, y = load_rows(tmp_path / "rows", "train")
    assert (y != IGNORE).all() and np.array_equal(x[:, 1:], y[:, :-1])
    assert info["splits"]["val"]["rows"] >= 1


def test_lora_trains_only_adapters_and_the_merged_export_equals_the_adapted_model(tmp_path):
    torch.manual_seed(0)
    model = GPT(preset("tiny", 300, block_size=32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoraConfig(rank=4, alpha=8))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(1))
    for _ in range(5):
        model(x[:, :-1], x[:, 1:])[1].backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    for key, value in before.items():
        owner, _, leaf = key.rpartition(".")
        wrapped = f"{owner}.base.{leaf}" if f"{owner}.base.{leaf}" in after else key
        assert torch.equal(after[wrapped], value), key  # base weights untouched
    assert any(after[n].abs().sum() > 0 for n in trainable if n.endswith("lora_B"))  # adapters moved
    merged = merged_state_dict(after, LoraConfig(rank=4, alpha=8))
    config = preset("tiny", 300, block_size=32)
    plain = GPT(config)
    plain.load_state_dict(merged)
    save_model(plain, tmp_path / "merged")
    exported = load_model(tmp_path / "merged")
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(x)[0], model(x)[0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(exported(x)[0], GPT(config).eval()(x)[0])


@pytest.fixture(scope="module")
def champion(prepared_workspace, tmp_path_factory):
    """A tiny model pretrained a little on the shards, registered as NAME@champion."""
    pw = prepared_workspace
    return make_model_dir(
        tmp_path_factory.mktemp("champ") / "pretrained", pw.tokenizer_dir, 512, 25, pw.shards_dir
    )


@pytest.mark.slow
def test_finetune_from_a_registry_alias_registers_lineage_and_moves_the_champion(
    prepared_workspace, champion, pairs_file, mlflow_env, ray_local, tmp_path
):
    mlflow.set_experiment("finetune-tests")
    parent = register_model(champion, NAME, alias="champion")
    mlflow.MlflowClient().set_model_version_tag(NAME, parent, "gate.decision", "promoted to champion")
    cfg = prepared_workspace.config(
        *FINETUNE_OVERRIDES,
        f"workspace={tmp_path / 'ws'}",
        f"mlflow.registered_model={NAME}",
        f"finetune.init_from=models:/{NAME}@champion",
        f"finetune.data={pairs_file}",
        "finetune.lora_rank=8",
        "finetune.lora_alpha=32",
        "finetune.lr=0.01",
    )
    manifest = run_stage(finetune_stage(), cfg)
    version = manifest["version"]
    client = mlflow.MlflowClient()
    tags = client.get_model_version(NAME, version).tags
    assert tags["stage"] == "finetune" and tags["parent_model_version"] == parent
    assert tags["parent_model_uri"] == f"models:/{NAME}@champion"
    assert tags["dataset_digest"] == hashlib.sha256(pairs_file.read_bytes()).hexdigest()
    assert tags["gate.val_data"].endswith("val.jsonl")
    assert manifest["data"]["rejects"] == {"missing_completion": 2, "malformed_json": 1, "not_an_object": 1}
    # the registry holds the pretrained and the fine-tuned version; the fine-tuned one won the gate
    assert manifest["champion"]["promoted"], manifest["champion"]
    assert client.get_model_version_by_alias(NAME, "champion").version == version
    assert manifest["champion"]["candidate_bpb"] < manifest["champion"]["champion_bpb"]
    # LoRA merged on export: plain GPT-2 weights, different from the parent's
    model_dir = tmp_path / "ws" / manifest["output"]
    fine, base = load_model(model_dir), load_model(champion)
    assert set(fine.state_dict()) == set(base.state_dict())
    assert not torch.equal(fine.transformer.h[0].attn.c_attn.weight, base.transformer.h[0].attn.c_attn.weight)
    assert torch.equal(fine.transformer.wte.weight, base.transformer.wte.weight)  # not a LoRA target


def pydoc_text(path, modules=MODULES[:8]):
    """Continued-pretraining text: the pydoc pages of some stdlib modules (the pretraining corpus holds
    their docstrings, not pydoc's page layout), as one plain text file."""
    import importlib
    import pydoc

    pages = [pydoc.render_doc(importlib.import_module(m), renderer=pydoc.plaintext) for m in modules]
    path.write_text("\n".join(pages), encoding="utf-8")
    return path


@pytest.mark.parametrize("source", ["text_file", "pipeline_shards"])
def test_continued_pretraining_registers_the_data_digest_and_lowers_its_val_loss(
    source, prepared_workspace, champion, mlflow_env, ray_local, tmp_path
):
    """Plain text, no pairs: a text file (finetune.data) or, with finetune.data unset, the pipeline's
    own tokenizer and shards stages' outputs (pretraining's task and gate)."""
    from pipelines.shards.stage import shards_stage
    from pipelines.tokenizer.stage import tokenizer_stage

    mlflow.set_experiment("finetune-tests")
    common = (
        *FINETUNE_OVERRIDES,
        f"mlflow.registered_model={NAME}-{source}",
        f"finetune.init_from={champion}",
        "finetune.num_workers=1",
        # the pretraining's batch, and a warm-up so the fresh optimizer state does not undo it first
        "finetune.global_batch_size=16",
        "finetune.warmup_steps=4",
    )
    if source == "text_file":
        text = pydoc_text(tmp_path / "pages.txt")
        cfg = prepared_workspace.config(*common, f"workspace={tmp_path / 'ws'}", f"finetune.data={text}")
        manifest, workspace = run_stage(finetune_stage(), cfg), tmp_path / "ws"
        digest, rows = hashlib.sha256(text.read_bytes()).hexdigest(), manifest["data"]["splits"]
        assert manifest["data"]["format"] == "text" and rows["train"]["rows"] > rows["val"]["rows"] >= 1
    else:  # the prepared workspace's published tokenizer and shards are this config's inputs (its
        # models/ and checkpoints/ get this run: nothing else reads them)
        cfg = prepared_workspace.config(*common, "finetune.data=null")
        runner = Runner(cfg, [test_corpus_stage(), tokenizer_stage(), shards_stage(), finetune_stage()])
        runner.run(stages=["finetune"])
        manifest, workspace = runner.published("finetune").manifest, prepared_workspace.workspace
        digest = manifest_digest(runner.published("shards").manifest)
        assert manifest["data"]["format"] == "shards"
    tags = mlflow.MlflowClient().get_model_version(f"{NAME}-{source}", manifest["version"]).tags
    assert tags["dataset_digest"] == digest and tags["parent_model_uri"] == str(champion.resolve())
    assert (workspace / manifest["output"] / "model.safetensors").is_file()
    # the val loss on that data, from the initial model (step 0) to the fine-tuned one
    val = {
        m.step: m.value
        for m in mlflow.MlflowClient().get_metric_history(manifest["mlflow_run_id"], "val_loss")
    }
    assert sorted(val) == [0, 6, 12] and val[12] < val[0], val


def test_early_stopping_state_survives_a_checkpoint_round_trip(tmp_path):
    """The training state saved with each checkpoint carries the early-stopping record, so a restarted
    run stops where the uninterrupted one would (the worker restores exactly this TrainState)."""
    state = TrainState(step=6, tokens=384, mlflow_run_id="run")
    for loss in (3.0, 2.5, 2.7):  # the best, then one evaluation without improvement
        state.record_eval(loss)
    rows = np.zeros((4, 8), dtype=np.int32)
    sampler = RowSampler(rows, rows, rank=0, world_size=1, seed=0)
    write_rank_state(tmp_path, 0, state, sampler, {"val": None})
    restored = train_state(read_rank_state(tmp_path, 0))
    assert restored == state and restored.best_val_loss == 2.5 and restored.evals_since_best == 1
    assert not restored.stalled(2)
    restored.record_eval(2.6)  # the second evaluation without improvement after the restart
    assert restored.stalled(2) and not restored.stalled(0)
    # a checkpoint written before the early-stopping fields existed restores with a fresh record
    legacy = {"step": 6, "tokens": 384, "mlflow_run_id": "run", "source": {}, "rng": {}}
    assert train_state(legacy) == TrainState(6, 384, "run")


def bpe_model_dir(path, seed: int = 0):
    """A random tiny GPT-2 with a GPT-2 BPE tokenizer (built locally), as a gpt2core model directory."""
    vocab, merges = train_bpe(path / "bpe", 300)
    vocab.rename(path / "bpe" / "encoder.json")
    merges.rename(path / "bpe" / "vocab.bpe")
    torch.manual_seed(seed)
    save_model(GPT(preset("tiny", 300, block_size=64)), path / "model")
    load_tokenizer(path / "bpe").save_to(path / "model")
    return path / "model"


@pytest.mark.slow  # after the registry-alias test (slow): its champion is the one kept
def test_finetune_from_an_exported_hugging_face_dir_with_bpe_stops_early_and_keeps_the_champion(
    prepared_workspace, champion, pairs_file, mlflow_env, ray_local, tmp_path
):
    from gpt2core.hf import export_hf

    mlflow.set_experiment("finetune-tests")
    if mlflow.MlflowClient().get_registered_model(NAME).aliases.get("champion") is None:
        register_model(champion, NAME, alias="champion")
    champion_before = mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion").version
    hf_dir = export_hf(bpe_model_dir(tmp_path), tmp_path / "hf")
    assert (hf_dir / "vocab.json").is_file() and json.loads((hf_dir / "config.json").read_text())[
        "model_type"
    ] == "gpt2"
    cfg = prepared_workspace.config(
        *FINETUNE_OVERRIDES,
        f"workspace={tmp_path / 'ws'}",
        f"mlflow.registered_model={NAME}",
        f"finetune.init_from={hf_dir}",
        f"finetune.data={pairs_file}",
        "finetune.num_workers=1",
        # A learning rate that makes the loss diverge: early stopping ends the run after two
        # evaluations without a better val loss, before max_steps.
        "finetune.max_steps=10",
        "finetune.eval_interval=2",
        "finetune.early_stop_patience=2",
        "finetune.lr=5.0",
        "finetune.warmup_steps=0",
    )
    manifest = run_stage(finetune_stage(), cfg)
    model_dir = tmp_path / "ws" / manifest["output"]
    tokenizer = load_tokenizer(model_dir)
    assert tokenizer.kind == "gpt2-bpe" and tokenizer.vocab_size == 300
    assert manifest["lineage"]["parent_model_uri"] == str(hf_dir.resolve())
    assert manifest["steps"] in (4, 6, 8) and manifest["val"]["step"] == manifest["steps"]
    # a random model does not beat the pretrained champion on the same val pairs: the alias stays
    assert not manifest["champion"]["promoted"]
    assert mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion").version == champion_before
    tags = mlflow.MlflowClient().get_model_version(NAME, manifest["version"]).tags
    assert tags["gate.decision"] == "kept the champion"


def test_bad_sources_are_one_line_errors(prepared_workspace, pairs_file, mlflow_env, ray_local, tmp_path):
    from gpt2_reference import edit_config, write_hf_dir

    base = (*FINETUNE_OVERRIDES, f"workspace={tmp_path / 'ws'}", f"finetune.data={pairs_file}")
    cfg = prepared_workspace.config(*base, f"finetune.init_from=models:/{NAME}@no-such-alias")
    with pytest.raises(UserError, match=r"finetune\.init_from.*no alias 'no-such-alias'"):
        run_stage(finetune_stage(), cfg)
    write_hf_dir(tmp_path / "llama", with_tokenizer=False)
    edit_config(tmp_path / "llama", model_type="llama")
    cfg = prepared_workspace.config(*base, f"finetune.init_from={tmp_path / 'llama'}")
    with pytest.raises(UserError, match=r"finetune\.init_from.*'llama' is not GPT-2"):
        run_stage(finetune_stage(), cfg)
