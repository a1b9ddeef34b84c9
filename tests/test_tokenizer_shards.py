"""The `tokenizer` and `shards` stages on a small real-looking corpus, run by the real runner with
real Ray, SentencePiece, Arrow files and an MLflow server.

The corpus comes from a small test stage named "corpus" that publishes Python standard library
docstrings plus adversarial documents in the corpus stage's format. To run on the real corpus
stage instead, change `pipeline()` to return `pipeline_stages()[:3]` (and set `corpus.inputs`).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt2core.data import TokenShards
from gpt2core.tokenizer import META, encode_lossless, load_sentencepiece
from pipelines.config import ShardsConfig, load_config
from pipelines.core.outputs import corpus_data_files, iter_corpus_batches
from pipelines.core.workflow import Runner, Stage
from pipelines.errors import UserError
from pipelines.shards.stage import shards_stage
from pipelines.shards.val_split import ValSplit
from pipelines.tokenizer.stage import (
    CorpusSample,
    tokenizer_stage,
    train_sentencepiece,
)

pytestmark = pytest.mark.slow  # Ray actors, an MLflow server, the whole chain end to end

MODULES = ["argparse", "collections", "contextlib", "csv", "dataclasses", "datetime", "functools", "heapq"]
MODULES += ["itertools", "json", "logging", "pathlib", "random", "re", "shutil", "statistics", "textwrap"]
ADVERSARIAL = [
    "emoji 😀👍🏽 and a family 👨‍👩‍👧 ❤️ in one line",
    "中文文本测试，日本語のテキスト、한국어 텍스트。",
    "odd: no-break\u00a0space, zero\u200bwidth, line\u2028separator, bom\ufeff, e\u0301, ﬁ, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "رسالة باللغة العربية مع أرقام ١٢٣ و 456",
    "long whitespace:" + " " * 300 + "end\n\n\n\n" + "\t" * 40 + "x   \n",
    "def f(x):\n    return {'a': [1, 2, 3]}  # 1234567890\r\n\tpass\n",
    "  leading and trailing spaces  ",
    "x" * 9000,  # longer than a training line
    "literal meta \u2581 and \u2581\u2581 doubled, and a trailing one\u2581",
    "<|endoftext|> written as text, <unk> too, and <0x41>",
]
# Hugging Face tokenizers turn these into special tokens / spaces (documented in hf_files.py).
HF_DIFFERS = (META, "<|endoftext|>", "<unk>")


def stdlib_docs() -> list[tuple[str, str]]:
    docs = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, obj in sorted(vars(module).items()):
            doc = None if attr.startswith("_") else inspect.getdoc(obj)
            if doc and len(doc) > 40 and getattr(obj, "__module__", name) == name:
                docs.append((f"{name}.{attr}", doc))
    return docs


def corpus_stage(docs: list[tuple[str, str]]) -> Stage:
    """Publishes `docs` the way the corpus stage does: data/*.parquet with id, text, url, source, lang."""

    def run(ctx):
        half = len(docs) // 2
        for part, chunk in enumerate((docs[:half], docs[half:])):
            table = pa.table(
                {
                    "id": [d[0] for d in chunk],
                    "text": [d[1] for d in chunk],
                    "url": pa.nulls(len(chunk), pa.string()),
                    "source": ["pydoc"] * len(chunk),
                    "lang": ["en"] * len(chunk),
                }
            )
            ctx.ws.makedirs(f"{ctx.out}/data")
            pq.write_table(table, ctx.ws.local_path(f"{ctx.out}/data/part-{part:05d}.parquet"))
        return {"kept_docs": len(docs)}

    return Stage("corpus", run, needs_ray=False)


def pipeline(docs: list[tuple[str, str]]) -> list[Stage]:
    return [corpus_stage(docs), tokenizer_stage(), shards_stage()]


@pytest.fixture(scope="module")
def built(tmp_path_factory, ray_session, mlflow_server):
    """corpus -> tokenizer -> shards, once for this module."""
    docs = stdlib_docs() + [(f"adversarial-{i}", t) for i, t in enumerate(ADVERSARIAL)] + [("empty", "")]
    settings = [
        f"workspace={tmp_path_factory.mktemp('ws')}",
        f"mlflow.tracking_uri={mlflow_server}",
        "mlflow.experiment=tokenizer-shards-tests",
        "tokenizer.vocab_size=1200",
        "shards.shard_tokens=20000",
        "shards.val_fraction=0.000001",  # so small that no id hashes below it: val gets one doc anyway
    ]

    def runner(*more: str) -> Runner:
        return Runner(load_config(None, [*settings, *more]), pipeline(docs), log=lambda line: None)

    main = runner()
    main.run()
    return main, runner


def published(runner: Runner, stage: str) -> tuple:
    out = runner.published(stage)
    assert out is not None, f"{stage} is not published"
    return runner.ws.local_path(out.dir), out.manifest


def corpus_docs(runner: Runner) -> list[tuple[str, str]]:
    """(id, text) of the published corpus, in corpus order."""
    files = corpus_data_files(runner.ws, runner.published("corpus").dir)
    batches = iter_corpus_batches(runner.ws, files, ["id", "text"])
    return [(i, t) for b in batches for i, t in zip(b.column(0).to_pylist(), b.column(1).to_pylist())]


def sentencepiece_of(runner: Runner):
    tok_dir, _ = published(runner, "tokenizer")
    return load_sentencepiece((tok_dir / "spm.model").read_bytes())


# --- tokenizer -----------------------------------------------------------------------------------
def test_tokenizer_publishes_model_vocab_hf_files_and_manifest(built):
    runner, _ = built
    tok_dir, manifest = published(runner, "tokenizer")
    info = manifest["tokenizer"]
    sp = sentencepiece_of(runner)
    docs = corpus_docs(runner)
    assert info["sha256"] == hashlib.sha256((tok_dir / "spm.model").read_bytes()).hexdigest()
    assert (
        info["vocab_size"]
        == sp.get_piece_size()
        == 1200
        == len((tok_dir / "spm.vocab").read_text().splitlines())
    )
    assert sp.id_to_piece(info["eos_id"]) == info["eos_piece"] == "<|endoftext|>"
    assert sp.id_to_piece(info["unk_id"]) == "<unk>" and info["bos_id"] is None and info["pad_id"] is None
    assert info["model_type"] == "bpe" and info["train_seconds"] > 0
    assert info["train_threads"] == 2  # tokenizer.num_cpus: the task's CPUs, not the host's cores
    assert info["sample_docs"] == len(docs)  # the corpus is smaller than tokenizer.sample_docs
    assert info["sample_bytes"] == sum(len(t.encode()) for _, t in docs)
    config = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>" and not config["clean_up_tokenization_spaces"]
    assert {"tokenizer.json", "special_tokens_map.json"} <= {p.name for p in tok_dir.iterdir()}


def test_round_trip_is_lossless_on_the_corpus_and_adversarial_text(built):
    runner, _ = built
    sp = sentencepiece_of(runner)
    texts = [t for _, t in corpus_docs(runner)] + ADVERSARIAL + ["\u2581", "a\u2581\u2581b\u2581", ""]
    ids = encode_lossless(sp, texts)
    assert [sp.decode(i) for i in ids] == texts
    assert sp.unk_id() not in {t for doc in ids for t in doc}  # byte fallback: nothing is unknown
    # plain SentencePiece loses a literal U+2581 (it reads it as a space): why encode_lossless exists
    assert sp.decode(sp.encode("a\u2581b")) == "a b"


def test_hugging_face_export_gives_the_same_ids(built):
    from transformers import AutoTokenizer

    runner, _ = built
    tok_dir, _ = published(runner, "tokenizer")
    sp = sentencepiece_of(runner)
    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    texts = [t for _, t in corpus_docs(runner)] + ADVERSARIAL
    ours = encode_lossless(sp, texts)
    same = [t for t in texts if not any(s in t for s in HF_DIFFERS)]
    assert len(same) > 100
    assert [hf(t, add_special_tokens=True)["input_ids"] for t in same] == encode_lossless(sp, same)
    assert [hf.decode(i) for i in ours] == texts  # HF decodes our ids losslessly, odd cases included
    assert hf.eos_token_id == sp.eos_id()


def test_unigram_option_is_lossless_and_hf_decodes_it(built, tmp_path):
    from pipelines.core.workspace import Workspace
    from pipelines.tokenizer.hf_files import write_hf_files

    runner, _ = built
    cfg = load_config(None, ["tokenizer.model_type=unigram", "tokenizer.vocab_size=800"]).tokenizer
    sample = CorpusSample(runner.ws, corpus_data_files(runner.ws, runner.published("corpus").dir), 10**6, 0)
    sp = load_sentencepiece(train_sentencepiece(sample.lines(), cfg, sample, 2))
    assert sp.get_piece_size() == 800
    texts = [t for _, t in corpus_docs(runner)][:200] + ADVERSARIAL
    ids = encode_lossless(sp, texts)
    assert [sp.decode(i) for i in ids] == texts
    write_hf_files(Workspace(str(tmp_path)), "hf", sp, "unigram")
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    assert [hf.decode(i) for i in ids] == texts


def test_sample_is_reproducible_and_seeded(built):
    runner, _ = built
    files = corpus_data_files(runner.ws, runner.published("corpus").dir)
    cfg = load_config(None, ["tokenizer.vocab_size=600"]).tokenizer

    def sample(seed: int) -> tuple[list[str], bytes]:
        chosen = CorpusSample(runner.ws, files, 100, seed)
        lines = list(chosen.lines())
        assert chosen.docs == 100
        return lines, train_sentencepiece(lines, cfg, chosen, 2)

    first, model = sample(seed=1)
    again, model_again = sample(seed=1)
    other, _ = sample(seed=2)
    assert first == again and model == model_again
    assert first != other


def test_vocab_larger_than_the_sample_supports_names_the_key(built):
    _, runner = built
    with pytest.raises(UserError, match=r"'tokenizer\.vocab_size': 30000 is more than .*at most \d+") as info:
        runner("tokenizer.vocab_size=30000", "tokenizer.sample_docs=20").run(stages=["tokenizer"])
    assert "\n" not in str(info.value)  # raised in the training task, still one line on the driver


def test_the_tokenizer_trains_in_a_task_with_its_configured_cpus(built):
    _, runner = built
    one = runner("tokenizer.num_cpus=1")
    one.run(stages=["tokenizer"])
    assert published(one, "tokenizer")[1]["tokenizer"]["train_threads"] == 1


def test_corpus_without_manifest_is_refused(built, tmp_path):
    main, _ = built
    corpus_dir, _ = published(main, "corpus")
    cfg = load_config(None, [f"workspace={tmp_path}"])
    runner = Runner(cfg, pipeline([]), log=lambda line: None)
    copy = runner.ws.local_path(runner.output("corpus"))
    copy.mkdir(parents=True)
    (copy / "data").symlink_to(corpus_dir / "data")  # the data is there, the manifest is not
    with pytest.raises(UserError, match="needs the output of stage 'corpus'"):
        runner.run(stages=["tokenizer"])


# --- shards --------------------------------------------------------------------------------------
def test_shards_hold_every_document_then_eos_in_corpus_order(built):
    runner, _ = built
    shards_dir, manifest = published(runner, "shards")
    sp = sentencepiece_of(runner)
    docs = corpus_docs(runner)
    ids = encode_lossless(sp, [t for _, t in docs])
    val = ValSplit.for_corpus(
        runner.ws,
        corpus_data_files(runner.ws, runner.published("corpus").dir),
        ShardsConfig(val_fraction=1e-6),
    )
    for split in ("train", "val"):
        chosen = [
            (text, doc) for (doc_id, text), doc in zip(docs, ids) if val.is_val(doc_id) == (split == "val")
        ]
        chosen = [(text, doc) for text, doc in chosen if doc]  # empty documents are not written
        shards = TokenShards(shards_dir, split)
        stream = shards.read(0, len(shards))
        assert stream.tolist() == [t for _, doc in chosen for t in (*doc, sp.eos_id())]
        assert shards.n_tokens == sum(len(doc) + 1 for _, doc in chosen)  # one EOS per document
        assert shards.n_docs == len(chosen) and shards.n_docs == int((stream == sp.eos_id()).sum())
        assert shards.n_bytes == sum(len(text.encode()) for text, _ in chosen)
    assert manifest["splits"]["val"]["docs"] == 1  # the fraction picks none; val still gets one
    assert manifest["empty_docs"] == 1


def test_shard_files_are_uncompressed_arrow_with_manifest_counts(built):
    runner, _ = built
    shards_dir, manifest = published(runner, "shards")
    tok_manifest = runner.published("tokenizer").manifest["tokenizer"]
    assert manifest["tokenizer"] == {
        **{k: tok_manifest[k] for k in ("sha256", "vocab_size", "eos_id")},
        "dir": runner.published("tokenizer").dir,
    }
    assert manifest["dtype"] == "uint16"
    train = manifest["splits"]["train"]
    assert len(train["files"]) >= 3
    for split in manifest["splits"].values():
        for n, entry in enumerate(split["files"]):
            path = shards_dir / entry["name"]
            assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            with pa.ipc.open_file(pa.memory_map(str(path))) as reader:
                allocated = pa.total_allocated_bytes()
                table = reader.read_all()
                assert pa.total_allocated_bytes() == allocated  # uncompressed: read in place, no copy
                assert reader.schema.names == ["tokens"] and table.column(0).type == pa.uint16()
            assert len(table) == entry["tokens"]
            if n < len(split["files"]) - 1:
                assert entry["tokens"] >= 20000  # files fill up to shard_tokens, whole documents only
        for key in ("tokens", "docs", "bytes"):
            assert split[key] == sum(f[key] for f in split["files"])
    listed = {f["name"] for s in manifest["splits"].values() for f in s["files"]}
    indexes = {f["doc_index"] for s in manifest["splits"].values() for f in s["files"]}  # test_doc_index.py
    assert sorted(listed) == sorted(p.name for p in shards_dir.glob("*.arrow"))
    assert sorted(listed | indexes) == sorted(manifest["files"])


def test_output_is_the_same_with_another_actor_count(built):
    main, runner = built
    _, manifest = published(main, "shards")
    other = runner("shards.num_actors=1")
    other.run(stages=["shards"])
    _, again = published(other, "shards")
    assert again["files"] == manifest["files"] and again["splits"] == manifest["splits"]


def test_a_writer_task_that_would_starve_the_encoders_is_refused(built):
    """2 CPUs: a writer holding one leaves none for the encoders beside the reader (Ray Data hangs)."""
    _, runner = built
    with pytest.raises(UserError, match=r"^config key 'shards.writer_cpus': 1 of the cluster's 2 CPUs"):
        runner("shards.writer_cpus=1").run(stages=["shards"])


def test_shards_stage_logs_counts_to_mlflow(built):
    import mlflow

    runner, _ = built
    _, manifest = published(runner, "shards")
    client = mlflow.MlflowClient(runner.cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name("tokenizer-shards-tests")
    runs = client.search_runs([experiment.experiment_id], filter_string="attributes.run_name = 'shards'")
    metrics = runs[-1].data.metrics  # the first shards run, the one `built` made
    assert metrics["splits.train.tokens"] == manifest["splits"]["train"]["tokens"]
    assert metrics["empty_docs"] == 1 and metrics["tokens_per_second"] > 0


def test_val_split_is_a_stable_hash_fraction(built):
    runner, _ = built
    files = corpus_data_files(runner.ws, runner.published("corpus").dir)
    ids = [doc_id for doc_id, _ in corpus_docs(runner)]
    quarter = ValSplit.for_corpus(runner.ws, files, ShardsConfig(val_fraction=0.25))
    in_val = np.array([quarter.is_val(i) for i in ids])
    assert quarter.forced_id is None and 0.15 < in_val.mean() < 0.35
    again = ValSplit.for_corpus(runner.ws, files, ShardsConfig(val_fraction=0.25))
    assert [again.is_val(i) for i in ids] == in_val.tolist()
    assert not any(
        ValSplit.for_corpus(runner.ws, files, ShardsConfig(val_fraction=0.0)).is_val(i) for i in ids
    )


def test_a_tokenizer_file_that_is_not_the_published_one_is_refused(built):
    from pipelines.shards.stage import TokenizerFile

    runner, _ = built
    published_tokenizer = runner.published("tokenizer")
    rel = f"{published_tokenizer.dir}/spm.model"
    TokenizerFile(runner.ws, rel, published_tokenizer.manifest["tokenizer"]["sha256"]).load()
    with pytest.raises(UserError, match=r"spm\.model: sha256 does not match the tokenizer manifest"):
        TokenizerFile(runner.ws, rel, "0" * 64).load()
