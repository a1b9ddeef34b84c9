"""Hugging Face GPT2LMHeadModel checkpoints in and out.

    python -m gpt2core.hf from-hf HF_DIR OUT_DIR     HF directory -> gpt2core model directory
    python -m gpt2core.hf to-hf MODEL_DIR OUT_DIR    gpt2core model directory -> HF directory

The parameter names match GPT-2's; the only change is that GPT-2's four Conv1D weights are stored
(in, out) where nn.Linear keeps (out, in). Local files only: nothing is fetched from the hub.
transformers itself is not needed (it is what the tests check the result against).
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gpt2core.checkpoint import (
    CONFIG_FILE,
    FORMAT,
    TIED_KEY,
    build_model,
    expected_shapes,
    load_model,
    save_model,
)
from gpt2core.config import GPTConfig
from gpt2core.model import GPT
from gpt2core.tokenizer import (
    BPE_NAMES,
    GPT2BPETokenizer,
    SentencePieceTokenizer,
    find_bpe_files,
    load_tokenizer,
)

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers of old GPT-2 checkpoints
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# GPT2Config keys that would change the architecture: (default, is the value what gpt2core computes?)
GPT2_VARIANT_KEYS = {
    "activation_function": ("gelu_new", lambda v, raw: v in TANH_GELUS),
    "n_inner": (None, lambda v, raw: v is None or v == 4 * raw.get("n_embd", 0)),
    "layer_norm_epsilon": (1e-5, lambda v, raw: abs(v - 1e-5) < 1e-12),
    "scale_attn_weights": (True, lambda v, raw: v is True),
    "scale_attn_by_inverse_layer_idx": (False, lambda v, raw: not v),
    "tie_word_embeddings": (True, lambda v, raw: v is True),
}


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def is_hf_dir(path: str | Path) -> bool:
    """True when path holds a Hugging Face config.json (one with a model_type)."""
    try:
        raw = json.loads((Path(path) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and "model_type" in raw and raw.get("format") != FORMAT


def read_hf_config(hf_dir: str | Path) -> GPTConfig:
    path = Path(hf_dir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{hf_dir}: no {CONFIG_FILE}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    model_type = raw.get("model_type")
    if model_type != "gpt2":
        raise ValueError(
            f"{path}: model_type {model_type!r} is not GPT-2; only GPT2LMHeadModel can be imported"
        )
    for key, (default, supported) in GPT2_VARIANT_KEYS.items():
        value = raw.get(key, default)
        if not supported(value, raw):
            raise ValueError(f"{path}: {key}={value!r} is not supported (not the GPT-2 architecture)")
    try:
        return GPTConfig(
            vocab_size=raw["vocab_size"],
            n_layer=raw["n_layer"],
            n_head=raw["n_head"],
            n_embd=raw["n_embd"],
            block_size=raw["n_positions"],
            dropout=raw.get("resid_pdrop", 0.0),
        )
    except KeyError as exc:
        raise ValueError(f"{path}: missing key {exc.args[0]!r}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _load_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:  # weights_only: never unpickle arbitrary objects
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: refused, it holds more than tensors (weights_only load)") from None


def read_hf_weights(hf_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint: one file, or shards listed in a *.index.json."""
    directory = Path(hf_dir)
    for name in WEIGHT_FILES:
        index = directory / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in _load_weight_file(directory / shard).items()}
        if (directory / name).is_file():
            return _load_weight_file(directory / name)
    raise ValueError(f"{hf_dir}: no weights ({' or '.join(WEIGHT_FILES)})")


def hf_to_gpt2core(tensors: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """HF GPT-2 tensor names/layouts -> ours (Conv1D transposed, embedding rows padded)."""
    out = {}
    for key, value in tensors.items():
        key = key.removeprefix("transformer.")
        if key == TIED_KEY or key.endswith(BUFFER_SUFFIXES):
            continue
        if key.endswith(CONV1D_SUFFIXES):
            value = value.t()
        out[f"transformer.{key}"] = value.contiguous()
    wte = out.get("transformer.wte.weight")
    if wte is not None and wte.size(0) == config.vocab_size:
        padding = wte.new_zeros(config.padded_vocab_size - config.vocab_size, wte.size(1))
        out["transformer.wte.weight"] = torch.cat([wte, padding])
    return out


def gpt2core_to_hf(model: GPT) -> dict[str, torch.Tensor]:
    """Our state dict -> HF GPT2LMHeadModel names/layouts (padding rows dropped, head left tied).
    A bias-free model gets zero biases, which GPT2LMHeadModel needs and which change nothing."""
    cfg = model.config
    out = {}
    for key, value in model.state_dict().items():
        if key == TIED_KEY:
            continue
        if key.endswith(CONV1D_SUFFIXES):
            value = value.t()
        if key == "transformer.wte.weight":
            value = value[: cfg.vocab_size]
        out[key] = value.detach().to("cpu").contiguous()
    if not cfg.bias:
        for key, shape in expected_shapes(replace(cfg, bias=True)).items():
            if key.endswith(".bias") and key not in out:
                out[key] = torch.zeros(shape, dtype=out["transformer.wte.weight"].dtype)
    return out


def load_hf_model(hf_dir: str | Path) -> GPT:
    """A GPT with the weights of a Hugging Face GPT-2 directory (eval mode, the checkpoint's dtype)."""
    config = read_hf_config(hf_dir)
    tensors = hf_to_gpt2core(read_hf_weights(hf_dir), config)
    return build_model(config, tensors, Path(hf_dir)).eval()


def _import_tokenizer(hf_dir: Path, out_dir: Path) -> None:
    """GPT-2 BPE files (vocab.json + merges.txt, or the BPE inside tokenizer.json) -> encoder.json + vocab.bpe."""
    pair = find_bpe_files(hf_dir)
    if pair:
        GPT2BPETokenizer(*pair).save_to(out_dir)
        return
    tokenizer_json = hf_dir / "tokenizer.json"
    model = json.loads(tokenizer_json.read_text()).get("model", {}) if tokenizer_json.is_file() else {}
    if model.get("type") != "BPE":
        warn(f"{hf_dir}: no GPT-2 BPE tokenizer files; {out_dir} has weights but no tokenizer")
        return
    encoder, merges = out_dir / BPE_NAMES[0][0], out_dir / BPE_NAMES[0][1]
    encoder.write_text(json.dumps(model["vocab"], ensure_ascii=False))
    lines = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    merges.write_text("#version: 0.2\n" + "\n".join(lines) + "\n")
    GPT2BPETokenizer(encoder, merges)  # validates what was written


def import_hf(hf_dir: str | Path, out_dir: str | Path) -> Path:
    """HF_DIR -> OUT_DIR as config.json + model.safetensors + tokenizer files."""
    model = load_hf_model(hf_dir)
    out = save_model(model, out_dir)
    _import_tokenizer(Path(hf_dir), out)
    return out


def _hf_config(cfg: GPTConfig, dtype: torch.dtype, eos_id: int | None) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        # The same tanh GELU as GPT-2's "gelu_new", computed by one fused kernel as gpt2core does:
        # faster in transformers and bit-identical to gpt2core in bf16.
        "activation_function": "gelu_pytorch_tanh",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eos_id,
        "eos_token_id": eos_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "dtype": str(dtype).removeprefix("torch."),
    }


def export_hf(model_dir: str | Path, out_dir: str | Path) -> Path:
    """MODEL_DIR (ours) -> OUT_DIR that transformers.AutoModelForCausalLM/AutoTokenizer load."""
    model = load_model(model_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    try:
        tokenizer = load_tokenizer(model_dir)
    except ValueError:
        tokenizer = None
        warn(f"{model_dir}: no tokenizer files; {out} will hold the model only")
    if isinstance(tokenizer, GPT2BPETokenizer):
        tokenizer.write_hf_files(out, model.config.block_size)
    elif isinstance(tokenizer, SentencePieceTokenizer):
        tokenizer.save_to(out)  # spm.model plus the tokenizer.json the tokenizer stage wrote, if any
        if not (out / "tokenizer.json").is_file():
            warn(f"{model_dir}: spm.model has no tokenizer.json beside it; transformers cannot load it")
    dtype = model.transformer.wte.weight.dtype
    eos_id = tokenizer.eos_id if tokenizer else None
    save_file(gpt2core_to_hf(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(_hf_config(model.config, dtype, eos_id), indent=2) + "\n")
    generation = {"bos_token_id": eos_id, "eos_token_id": eos_id}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpt2core.hf", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_in = sub.add_parser("from-hf", help="import a Hugging Face GPT-2 directory")
    p_in.add_argument("hf_dir")
    p_in.add_argument("out_dir")
    p_out = sub.add_parser("to-hf", help="export a gpt2core model directory for transformers")
    p_out.add_argument("model_dir")
    p_out.add_argument("out_dir")
    args = parser.parse_args(argv)
    try:
        if args.command == "from-hf":
            out = import_hf(args.hf_dir, args.out_dir)
        else:
            out = export_hf(args.model_dir, args.out_dir)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
