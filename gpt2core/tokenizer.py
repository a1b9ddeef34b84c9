"""The two tokenizers a model directory can carry, behind one small interface.

- SentencePiece (`spm.model`): the project's own tokenizer; its end-of-text piece is "<|endoftext|>".
- OpenAI GPT-2 byte-level BPE (`encoder.json` + `vocab.bpe`, or Hugging Face's names for the same
  files, `vocab.json` + `merges.txt`), for imported GPT-2 checkpoints; run by the `tokenizers` package
  from local files only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

EOS_PIECE = "<|endoftext|>"
UNK_PIECE = "<unk>"
SPM_FILE = "spm.model"
META = "\u2581"  # SentencePiece's internal stand-in for a space
# HF tokenizer files that a tokenizer directory may carry next to spm.model (written by the
# tokenizer stage); they travel with the model so that an exported directory is complete.
SPM_COMPANIONS = ("spm.vocab", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
BPE_NAMES = (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt"))  # OpenAI's, then HF's


class Tokenizer:
    """encode(text) -> ids, decode(ids) -> text, eos_id, vocab_size, files, save_to(dir)."""

    kind: str
    eos_id: int
    vocab_size: int

    @property
    def files(self) -> dict[str, Path]:
        """File name in a model directory -> where it is now."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def save_to(self, out_dir: str | Path) -> list[Path]:
        """Copy the tokenizer files into out_dir (e.g. a model directory); returns the new paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for name, src in self.files.items():
            dst = out / name
            if src.resolve() != dst.resolve():
                shutil.copyfile(src, dst)
            written.append(dst)
        return written


def load_sentencepiece(model: bytes) -> Any:
    """A SentencePiece processor from the bytes of spm.model."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=model)


def encode_lossless(sp: Any, texts: list[str], num_threads: int = 1) -> list[list[int]]:
    """SentencePiece ids of each text that decode back to exactly that text.

    SentencePiece writes spaces as U+2581 inside, so a literal U+2581 would decode as a space; such a
    text is encoded piecewise around it, with U+2581 itself as its three UTF-8 byte pieces (models
    trained with byte_fallback, as the project's tokenizer stage does, have them).
    """
    ids = sp.encode(texts, num_threads=num_threads)
    for i, text in enumerate(texts):
        if META in text:
            meta = [sp.piece_to_id(f"<0x{b:02X}>") for b in META.encode()]
            parts = sp.encode(text.split(META))
            ids[i] = parts[0] + [t for part in parts[1:] for t in (*meta, *part)]
    return ids


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"

    def __init__(self, model_file: str | Path):
        import sentencepiece as spm

        self.path = Path(model_file)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"{self.path}: not a SentencePiece model ({exc})") from None
        self.vocab_size = self.sp.get_piece_size()
        eos = self.sp.piece_to_id(EOS_PIECE)
        self.eos_id = eos if eos != self.sp.unk_id() else self.sp.eos_id()
        if self.eos_id < 0:
            raise ValueError(f"{self.path}: no {EOS_PIECE!r} piece and no EOS id")

    @property
    def files(self) -> dict[str, Path]:
        companions = (self.path.with_name(n) for n in SPM_COMPANIONS)
        return {SPM_FILE: self.path, **{p.name: p for p in companions if p.is_file()}}

    def encode(self, text: str) -> list[int]:
        return encode_lossless(self.sp, [text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return encode_lossless(self.sp, list(texts))

    def decode(self, ids: list[int]) -> str:
        return self.sp.decode(list(ids))


class GPT2BPETokenizer(Tokenizer):
    kind = "gpt2-bpe"

    def __init__(self, encoder_file: str | Path, merges_file: str | Path):
        from tokenizers import AddedToken, decoders, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers.models import BPE

        self.encoder_file, self.merges_file = Path(encoder_file), Path(merges_file)
        try:
            model = BPE.from_file(str(self.encoder_file), str(self.merges_file))
        except Exception as exc:  # the Rust side raises a plain Exception for unreadable files
            raise ValueError(
                f"{self.encoder_file}, {self.merges_file}: not a GPT-2 BPE vocabulary ({exc})"
            ) from None
        self.tok = HFTokenizer(model)
        # GPT-2's regex split and byte-to-unicode mapping; no prefix space, exactly as OpenAI's encoder.
        self.tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self.tok.decoder = decoders.ByteLevel()
        eos = self.tok.token_to_id(EOS_PIECE)
        if eos is None:
            raise ValueError(f"{self.encoder_file}: no {EOS_PIECE!r} token")
        self.tok.add_special_tokens([AddedToken(EOS_PIECE, special=True, normalized=False)])
        self.eos_id = eos
        self.vocab_size = self.tok.get_vocab_size()

    @property
    def files(self) -> dict[str, Path]:
        names = BPE_NAMES[0]
        return {names[0]: self.encoder_file, names[1]: self.merges_file}

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def write_hf_files(self, out_dir: str | Path, model_max_length: int) -> None:
        """vocab.json, merges.txt, tokenizer.json and tokenizer_config.json for transformers."""
        out = Path(out_dir)
        shutil.copyfile(self.encoder_file, out / BPE_NAMES[1][0])
        shutil.copyfile(self.merges_file, out / BPE_NAMES[1][1])
        self.tok.save(str(out / "tokenizer.json"))
        config = {
            "tokenizer_class": "GPT2Tokenizer",
            "bos_token": EOS_PIECE,
            "eos_token": EOS_PIECE,
            "unk_token": EOS_PIECE,
            "add_prefix_space": False,
            "model_max_length": model_max_length,
        }
        (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def find_bpe_files(directory: str | Path) -> tuple[Path, Path] | None:
    for vocab, merges in BPE_NAMES:
        pair = Path(directory) / vocab, Path(directory) / merges
        if pair[0].is_file() and pair[1].is_file():
            return pair
    return None


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The tokenizer stored in a model (or tokenizer) directory."""
    directory = Path(model_dir)
    if (directory / SPM_FILE).is_file():
        return SentencePieceTokenizer(directory / SPM_FILE)
    bpe = find_bpe_files(directory)
    if bpe:
        return GPT2BPETokenizer(*bpe)
    raise ValueError(
        f"{model_dir}: no tokenizer ({SPM_FILE}, or encoder.json + vocab.bpe, or vocab.json + merges.txt)"
    )
