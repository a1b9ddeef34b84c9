"""The consolidated model on disk: `config.json` + `model.safetensors` (+ tokenizer files).

Weights are never pickled. The tied head (lm_head.weight == transformer.wte.weight) is stored once,
as transformer.wte.weight, and re-tied on load. Tensors keep the dtype they were saved in, unless
load_model is given one; `inference_placement` picks the device and dtype to generate with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from gpt2core.config import GPTConfig
from gpt2core.model import GPT

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "gpt2core"  # marks our config.json apart from a Hugging Face one
TIED_KEY = "lm_head.weight"
# Wrappers add these to state-dict keys: torch.compile(model), DDP/DeepSpeed engines.
_KEY_PREFIXES = ("_orig_mod.", "module.")


def _clean_key(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _KEY_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def save_state_dict(state_dict: dict[str, torch.Tensor], config: GPTConfig, out_dir: str | Path) -> Path:
    """Write config.json + model.safetensors from a (possibly wrapped, e.g. ZeRO-consolidated) state dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in state_dict.items():
        key = _clean_key(key)
        if key != TIED_KEY:
            tensors[key] = value.detach().to("cpu").contiguous()
    check_shapes(tensors, config, out / WEIGHTS_FILE)
    save_file(tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps({"format": FORMAT, **config.to_dict()}, indent=2) + "\n")
    return out


def save_model(model: torch.nn.Module, out_dir: str | Path) -> Path:
    """Save a GPT (or a torch.compile / DeepSpeed wrapper of one) to out_dir."""
    inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None) or model
    return save_state_dict(model.state_dict(), inner.config, out_dir)


def expected_shapes(config: GPTConfig) -> dict[str, torch.Size]:
    with torch.device("meta"):
        reference = GPT(config)
    return {k: v.shape for k, v in reference.state_dict().items() if k != TIED_KEY}


def check_shapes(tensors: dict[str, torch.Tensor], config: GPTConfig, source: Path | str) -> None:
    """ValueError (one line, naming the file) unless tensors are exactly the weights of config."""
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{source}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for key, shape in expected.items():
        if tensors[key].shape != shape:
            raise ValueError(
                f"{source}: {key} has shape {tuple(tensors[key].shape)} but the config implies {tuple(shape)}"
            )


def read_config(model_dir: str | Path) -> GPTConfig:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{model_dir}: not a model directory (no {CONFIG_FILE})")
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if raw.get("model_type") is not None and raw.get("format") != FORMAT:
        raise ValueError(
            f"{path}: a Hugging Face config (model_type={raw['model_type']!r}); "
            "import it with `python -m gpt2core.hf from-hf HF_DIR OUT_DIR`"
        )
    if raw.pop("format", None) != FORMAT:
        raise ValueError(f'{path}: not a gpt2core config (no "format": "{FORMAT}")')
    try:
        return GPTConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def build_model(config: GPTConfig, tensors: dict[str, torch.Tensor], source: Path | str) -> GPT:
    """A GPT whose parameters are `tensors` (no random init, no copy), with the head re-tied."""
    check_shapes(tensors, config, source)
    with torch.device("meta"):
        model = GPT(config)
    model.load_state_dict(tensors, strict=False, assign=True)
    model.lm_head.weight = model.transformer.wte.weight
    return model


def load_model(
    model_dir: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> GPT:
    """Load a saved model in eval mode; dtype=None keeps the saved dtype."""
    config = read_config(model_dir)
    path = Path(model_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise ValueError(f"{model_dir}: no {WEIGHTS_FILE}")
    model = build_model(config, load_file(str(path), device=str(device)), path)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PlacementError(ValueError):
    """A device or dtype a model cannot run with here; `setting` is "device" or "dtype", so that a
    caller can name its own key for it."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


def inference_placement(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """(device, dtype) to load a model onto for generation.

    device "auto" is cuda when torch sees a CUDA device, else cpu. dtype "auto" is bf16 on a CUDA
    device that has it natively, else fp32 (bf16 matmuls are slow on most CPUs, and an fp32 model
    gives the same tokens as before). PlacementError for cuda without a CUDA device, fp16 off CUDA
    (slow, and its range overflows where bf16's does not) and bf16 on a GPU without it.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        where = torch.device(device)
    except RuntimeError:
        raise PlacementError("device", f"device {device!r}: not a torch device (cpu, cuda, cuda:1)") from None
    cuda = where.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise PlacementError("device", f"device {device!r}: torch sees no CUDA device")
    if dtype == "auto":
        dtype = "bf16" if cuda and torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    if dtype not in DTYPES:
        raise PlacementError("dtype", f"dtype {dtype!r}: expected auto, {', '.join(DTYPES)}")
    if dtype == "fp16" and not cuda:
        raise PlacementError("dtype", f"dtype 'fp16' needs a CUDA device, not {where.type}; use fp32 or bf16")
    if dtype == "bf16" and cuda and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise PlacementError("dtype", "dtype 'bf16': this CUDA device lacks it; use fp16 or fp32")
    return where, DTYPES[dtype]
