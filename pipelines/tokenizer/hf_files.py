"""Export a trained SentencePiece model as a Hugging Face tokenizer (`tokenizers` package only).

tokenizer.json reproduces SentencePiece's encoding: spaces become U+2581, the model runs on the
whole text (no pre-tokenizer, no dummy prefix), unknown characters fall back to UTF-8 byte pieces,
and decoding undoes exactly that. For BPE the merges are rebuilt the way SentencePiece applies them:
any two adjacent pieces whose concatenation is a piece merge, the highest-scored result first.
The ids equal SentencePiece's (tested for BPE, the default; unigram can differ where two
segmentations score the same up to float rounding). Like every HF tokenizer, a literal
"<|endoftext|>" in the text becomes the special token, and a literal U+2581 encodes as a space
(encode_lossless in gpt2core/tokenizer.py keeps it; these tokenizers decode its ids correctly).
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

from gpt2core.tokenizer import EOS_PIECE, META, UNK_PIECE
from pipelines.core.workspace import Workspace


def hf_tokenizer(sp: Any, model_type: str) -> Any:
    """A `tokenizers.Tokenizer` that gives SentencePiece's ids and decodes them back losslessly."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    if model_type == "bpe":
        model = models.BPE(
            vocab={p: i for i, p in enumerate(pieces)},
            merges=bpe_merges(sp),
            unk_token=UNK_PIECE,
            fuse_unk=True,
            byte_fallback=True,
        )
    else:
        # Special and byte pieces must never match text, so they get the lowest score.
        floor = min(sp.get_score(i) for i in range(len(pieces))) - 100.0
        vocab = [(p, sp.get_score(i) if _is_normal(sp, i) else floor) for i, p in enumerate(pieces)]
        model = models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", META)
    tok.decoder = decoders.Sequence([decoders.Replace(META, " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(
        [AddedToken(p, special=True, normalized=False) for p in (UNK_PIECE, EOS_PIECE) if p in pieces]
    )
    return tok


def bpe_merges(sp: Any) -> list[tuple[str, str]]:
    """Every (left, right) split of every normal piece into two normal pieces, best piece first."""
    ids = {sp.id_to_piece(i): i for i in range(sp.get_piece_size()) if _is_normal(sp, i)}
    merges = []
    for piece in sorted(ids, key=lambda p: (-sp.get_score(ids[p]), ids[p])):
        splits = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        merges += sorted(
            ((a, b) for a, b in splits if a in ids and b in ids), key=lambda ab: (ids[ab[0]], ids[ab[1]])
        )
    return merges


def _is_normal(sp: Any, i: int) -> bool:
    return not (sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i))


def write_hf_files(ws: Workspace, out: str, sp: Any, model_type: str) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json into workspace dir `out`."""
    files = {"tokenizer.json": hf_tokenizer(sp, model_type).to_str()}
    special = {"bos_token": EOS_PIECE, "eos_token": EOS_PIECE, "unk_token": UNK_PIECE}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,  # it would drop spaces before punctuation
    }
    files["tokenizer_config.json"] = json.dumps(config, indent=2) + "\n"
    files["special_tokens_map.json"] = json.dumps(special, indent=2) + "\n"
    for name, text in files.items():
        ws.write_bytes(posixpath.join(out, name), text.encode())
