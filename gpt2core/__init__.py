"""gpt2core: GPT-2 in plain PyTorch (model, generation, checkpoints, tokenizers, Hugging Face interop).

No Ray, MLflow or pipelines imports here: the training and serving layers build on this package.
Names are imported lazily so that `import gpt2core.config` does not pull in torch. (Generation is
`gpt2core.generate.generate`: the module name would shadow a package-level function.)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "GPTConfig": "gpt2core.config",
    "preset": "gpt2core.config",
    "GPT": "gpt2core.model",
    "save_model": "gpt2core.checkpoint",
    "load_model": "gpt2core.checkpoint",
    "load_tokenizer": "gpt2core.tokenizer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'gpt2core' has no attribute {name!r}")
