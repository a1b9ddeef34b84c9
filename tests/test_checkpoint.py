"""The model directory on disk: config.json + model.safetensors, round trips, and clear refusals."""

from __future__ import annotations

import pytest
import torch
from gpt2_reference import VOCAB, edit_config, random_batch
from safetensors import safe_open

from gpt2core.checkpoint import load_model, save_model, save_state_dict
from gpt2core.config import preset
from gpt2core.model import GPT


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(preset("tiny", VOCAB)).eval()


def logits_of(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)[0]


def test_round_trip_keeps_logits_and_tying(tmp_path):
    model = tiny_model()
    save_model(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys and "transformer.wte.weight" in keys  # tied: stored once
    loaded = load_model(tmp_path)
    assert loaded.config == model.config and not loaded.training
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    idx = random_batch(2, 20)
    assert torch.equal(logits_of(loaded, idx), logits_of(model, idx))


def test_dtype_is_preserved_and_can_be_changed(tmp_path):
    model = tiny_model().to(torch.bfloat16)
    save_model(model, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert f.get_tensor("transformer.h.0.mlp.c_fc.weight").dtype == torch.bfloat16
    assert load_model(tmp_path).transformer.wte.weight.dtype == torch.bfloat16
    as_fp32 = load_model(tmp_path, dtype=torch.float32)
    assert all(p.dtype == torch.float32 for p in as_fp32.parameters())
    assert as_fp32.lm_head.weight is as_fp32.transformer.wte.weight


def test_wrapped_state_dicts_are_unwrapped(tmp_path):
    model = tiny_model()
    wrapped = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    save_state_dict(wrapped, model.config, tmp_path)
    idx = random_batch(1, 10)
    assert torch.equal(logits_of(load_model(tmp_path), idx), logits_of(model, idx))


def test_loaded_model_trains(tmp_path):
    save_model(tiny_model(), tmp_path)
    model = load_model(tmp_path).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = random_batch(2, 16)
    losses = []
    for _ in range(3):
        _, loss = model(idx, idx)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied after updates


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_embd": 128}, r"transformer.*has shape .* but the config implies"),
        ({"n_layer": 3}, r"weights do not match the config \(missing \['transformer.h.2"),
        ({"n_head": 3}, "n_embd=64 is not divisible by n_head=3"),
        ({"vocab_size": 1000}, "transformer.wte.weight has shape"),
        ({"format": None, "model_type": "gpt2"}, "a Hugging Face config .*from-hf"),
        ({"n_kv_heads": 2}, "unknown keys"),
    ],
)
def test_mismatched_checkpoints_are_refused_in_one_line(tmp_path, change, message):
    save_model(tiny_model(), tmp_path)
    edit_config(tmp_path, **change)
    with pytest.raises(ValueError, match=message) as err:
        load_model(tmp_path)
    assert "\n" not in str(err.value)
    assert str(tmp_path) in str(err.value)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="not a model directory"):
        load_model(tmp_path)
    save_model(tiny_model(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="no model.safetensors"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_model(tmp_path)
