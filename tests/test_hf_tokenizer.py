"""Both tokenizer kinds a model directory can carry: OpenAI-format GPT-2 BPE and SentencePiece."""

from __future__ import annotations

import io

import pytest
from gpt2_reference import ADVERSARIAL, EOS, real_texts, train_bpe

from gpt2core.tokenizer import GPT2BPETokenizer, SentencePieceTokenizer, load_tokenizer


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """OpenAI's file names: encoder.json + vocab.bpe."""
    directory = tmp_path_factory.mktemp("bpe")
    vocab, merges = train_bpe(directory)
    vocab.rename(directory / "encoder.json")
    merges.rename(directory / "vocab.bpe")
    return directory


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(real_texts()),
        model_writer=model,
        vocab_size=400,
        model_type="bpe",
        eos_piece=EOS,
        byte_fallback=True,
        character_coverage=1.0,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    directory = tmp_path_factory.mktemp("spm")
    (directory / "spm.model").write_bytes(model.getvalue())
    (directory / "tokenizer.json").write_text("{}")  # a companion file that must travel with it
    return directory


def test_bpe_matches_transformers_gpt2_tokenizer(bpe_dir):
    from transformers import GPT2Tokenizer

    ours = load_tokenizer(bpe_dir)
    assert isinstance(ours, GPT2BPETokenizer)
    # transformers' GPT2Tokenizer reads the same two files (its own names for them).
    reference = GPT2Tokenizer(str(bpe_dir / "encoder.json"), str(bpe_dir / "vocab.bpe"))
    texts = real_texts() + ADVERSARIAL
    for text in texts:
        assert ours.encode(text) == reference.encode(text), text[:40]
    assert ours.encode_batch(texts) == [ours.encode(t) for t in texts]
    assert ours.vocab_size == len(reference)
    assert ours.eos_id == reference.convert_tokens_to_ids(EOS)


def test_bpe_round_trip_is_lossless(bpe_dir):
    tok = load_tokenizer(bpe_dir)
    for text in real_texts() + ADVERSARIAL:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode(EOS) == [tok.eos_id]


def test_spm_round_trip_and_eos(spm_dir):
    tok = load_tokenizer(spm_dir)
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.sp.id_to_piece(tok.eos_id) == EOS
    assert tok.vocab_size == 400
    for text in real_texts() + [t for t in ADVERSARIAL if EOS not in t]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert max(ids, default=0) < tok.vocab_size
    assert tok.encode_batch(["a b", "c"]) == [tok.encode("a b"), tok.encode("c")]
    # A literal U+2581 (SentencePiece's internal space) survives, alone, doubled or at either end.
    metas = ["a\u2581b c", "\u2581", "\u2581\u2581x\u2581", "plain"]
    assert [tok.decode(ids) for ids in tok.encode_batch(metas)] == metas
    assert tok.sp.decode(tok.sp.encode("a\u2581b")) == "a b"  # what plain SentencePiece does instead


def test_save_to_carries_the_files(tmp_path, bpe_dir, spm_dir):
    bpe = load_tokenizer(bpe_dir)
    written = bpe.save_to(tmp_path / "m1")
    assert sorted(p.name for p in written) == ["encoder.json", "vocab.bpe"]
    assert load_tokenizer(tmp_path / "m1").encode("hello world") == bpe.encode("hello world")
    spm_written = load_tokenizer(spm_dir).save_to(tmp_path / "m2")
    assert sorted(p.name for p in spm_written) == ["spm.model", "tokenizer.json"]


def test_hf_file_names_are_accepted(tmp_path):
    train_bpe(tmp_path)  # vocab.json + merges.txt
    assert load_tokenizer(tmp_path).kind == "gpt2-bpe"


def test_missing_or_broken_tokenizers_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer") as err:
        load_tokenizer(tmp_path)
    assert "\n" not in str(err.value)
    (tmp_path / "spm.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path)
