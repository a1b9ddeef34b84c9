"""Reference material for the gpt2core tests: tiny random transformers GPT-2 models (no hub), a tiny
byte-level BPE vocabulary trained locally in OpenAI's file format, and real-looking text."""

from __future__ import annotations

import inspect
import json
import pathlib
import textwrap
from pathlib import Path

import torch

VOCAB = 300  # not a multiple of 64: the padded embedding rows are exercised everywhere
EOS = "<|endoftext|>"

# Text a tokenizer must survive byte for byte: whitespace runs, tabs, CRLF, accents, CJK, emoji,
# combining marks, a zero-width joiner, control bytes, the EOS literal.
ADVERSARIAL = [
    "",
    " leading and trailing spaces  ",
    "tabs\tand\r\nCRLF\n\n\nblank lines",
    "naïve café, Ærøskøbing, ÅngströM",
    "漢字かなカナ 한국어 العربية עברית",
    "emoji 👩‍👩‍👧 flags 🇫🇷 and ZWJ\u200d joiners",
    "combining e\u0301 vs \u00e9",
    "control \x00\x01\x7f bytes",
    f"two documents{EOS}joined",
    "numbers 3.14159 1,000,000 0x7fff -42e-3",
]


def real_texts() -> list[str]:
    """Docstrings of a few stdlib modules: English prose with code and punctuation."""
    import argparse
    import collections
    import json as json_module

    docs = [inspect.getdoc(m) or "" for m in (argparse, collections, json_module, pathlib, textwrap)]
    return [d for d in docs if d]


def train_bpe(out_dir: Path, vocab_size: int = VOCAB) -> tuple[Path, Path]:
    """A valid GPT-2 style byte-level BPE (vocab.json + merges.txt, the format of OpenAI's
    encoder.json + vocab.bpe) with <|endoftext|>, trained on stdlib docstrings."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer(add_prefix_space=False)
    tokenizer.train_from_iterator(
        real_texts(), vocab_size=vocab_size, special_tokens=[EOS], show_progress=False
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab, merges = tokenizer.save_model(str(out_dir))
    return Path(vocab), Path(merges)


def hf_config(**overrides):
    from transformers import GPT2Config

    values = dict(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        # Wider than GPT-2's 0.02 so that random models have clear argmaxes (stable greedy decoding).
        initializer_range=0.1,
        bos_token_id=0,
        eos_token_id=0,
    )
    values.update(overrides)
    return GPT2Config(**values)


def make_hf_model(seed: int = 0, **overrides):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(hf_config(**overrides)).eval()


def hf_and_gpt2core(directory: Path, seed: int):
    """The same random weights as a transformers model and, imported from its directory, as a GPT."""
    from gpt2core.hf import load_hf_model

    hf = make_hf_model(seed)
    hf.save_pretrained(directory)
    return hf, load_hf_model(directory)


def write_hf_dir(out_dir: Path, seed: int = 0, with_tokenizer: bool = True, **overrides):
    """A Hugging Face GPT-2 directory as save_pretrained writes it, plus vocab.json/merges.txt."""
    model = make_hf_model(seed, **overrides)
    model.save_pretrained(out_dir)
    if with_tokenizer:
        train_bpe(out_dir, model.config.vocab_size)
    return model


def edit_config(directory: Path, **changes) -> None:
    """Change keys of directory/config.json (a key set to None is written as null)."""
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def random_batch(batch: int, length: int, vocab: int = VOCAB, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
