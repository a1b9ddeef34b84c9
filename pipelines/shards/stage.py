"""Stage `shards`: tokenize the corpus with Ray Data into memory-mappable Arrow token shards.

Publishes `<ws>/shards/<fp12>/`: train-00000.arrow ..., val-00000.arrow ... (Arrow IPC files,
uncompressed, one flat `tokens` column: documents back to back, each followed by EOS) and a
manifest (see gpt2core/data.py, which reads them). Documents are encoded by a pool of Ray actors
that each load the tokenizer once and encode a batch of documents per call; one writer task
(`shards.writer_cpus`) receives the encoded blocks in corpus order and streams them into the shard
files, so the output is the same for the same input and no process holds the corpus. A document
goes to `val` when a stable hash of its id falls below `shards.val_fraction`, so a document keeps
its split as the corpus grows, unless most of its text is in training documents (val_split.py).

Beside each shard file lies its document index, train-00000.docs.parquet ...: one row per document
of the file, in file order, with the document's id, source and source_id and its token range
[start, stop) in the file, EOS included (doc_index.py reads it; jobs/lineage.py --doc uses it). The
manifest names each file's index (`doc_index` in its splits entry) and checksums both files.
"""

from __future__ import annotations

import hashlib
import itertools
import posixpath
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gpt2core.data import TOKENS_COLUMN, token_dtype
from gpt2core.tokenizer import encode_lossless, load_sentencepiece
from pipelines.config import ShardsConfig
from pipelines.core.manifest import file_entry
from pipelines.core.outputs import CorpusOutput, TokenizerOutput
from pipelines.core.workflow import Stage, StageContext
from pipelines.core.workspace import Workspace
from pipelines.errors import UserError
from pipelines.shards.doc_index import DOC_COLUMNS, index_name, write_doc_index
from pipelines.shards.val_split import ValSplit

ENCODE_BATCH_DOCS = 256  # documents per actor call: large enough to amortise the call
BLOCK_BYTES = 4 << 20  # target size of the Ray Data blocks of text read from the corpus
WRITE_BATCH_TOKENS = 1 << 22  # tokens per Arrow record batch in a shard file
SPLITS = ("train", "val")
# What is read of the corpus. Explicit, so that a data file from before `source_id` (an older
# corpus, or its files linked into a refreshed version) reads it as nulls.
CORPUS_COLUMNS = pa.schema(
    [("id", pa.string()), ("text", pa.large_string()), ("source", pa.string()), ("source_id", pa.string())]
)


def shards_stage() -> Stage:
    return Stage(
        "shards",
        run_shards,
        sections=("shards",),
        inputs=("corpus", "tokenizer"),
        summary="tokenize the corpus with Ray Data into Arrow token shards (train/val)",
    )


def run_shards(ctx: StageContext) -> dict[str, Any]:
    started = time.perf_counter()
    tokenizer = TokenizerOutput.of(ctx.inputs["tokenizer"])
    corpus = CorpusOutput.of(ctx.inputs["corpus"])
    model = TokenizerFile(ctx.ws, tokenizer.model_file, tokenizer.sha256)
    model.load()  # fail here, before any actor starts, when the file is not the published one
    files = corpus.data_files(ctx.ws)
    dtype = token_dtype(tokenizer.vocab_size)
    val_split = ValSplit.for_corpus(ctx.ws, files, ctx.cfg.shards, corpus.dir, ctx.log)
    written = write_shards(ctx.ws, ctx.out, files, model, dtype, val_split, ctx.cfg.shards)
    splits, empty_docs = written.splits, written.empty_docs
    if not splits["train"]["docs"]:
        raise UserError(
            f"config key 'shards.val_fraction': no document of corpus {ctx.ws.full_uri(corpus.dir)} is left for training "
            f"({splits['val']['docs']} in val, {empty_docs} empty)"
        )
    seconds = time.perf_counter() - started
    tokens = sum(s["tokens"] for s in splits.values())
    ctx.log(f"[shards] {tokens} tokens ({dtype}), {empty_docs} empty docs, {tokens / seconds:,.0f} tokens/s")
    return {
        "tokenizer": {
            "sha256": tokenizer.sha256,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id,
            "dir": tokenizer.dir,
        },
        "dtype": dtype,
        "splits": splits,
        "empty_docs": empty_docs,  # documents with no tokens: counted, not written
        "val_to_train": len(val_split.to_train),  # val by their hash, but mostly training text
        "tokens_per_second": round(tokens / seconds),
        "files": written.files,
    }


@dataclass(frozen=True)
class WrittenShards:
    splits: dict[str, dict[str, Any]]  # per split: files, tokens, docs, bytes (the manifest's "splits")
    empty_docs: int
    files: dict[str, dict[str, Any]]  # name -> {bytes, sha256} of token files and indexes (manifest "files")


def write_shards(
    ws: Workspace,
    out: str,
    files: list[str],
    model: TokenizerFile,
    dtype: str,
    val_split: ValSplit,
    cfg: ShardsConfig,
    first_index: dict[str, int] | None = None,
) -> WrittenShards:
    """Tokenize the corpus data `files` into `<out>/<split>-NNNNN.arrow` (+ .docs.parquet), numbered from
    first_index[split] (a refresh appends to its parent's files). A Ray task of
    `shards.writer_cpus` CPUs consumes the encoded blocks and writes the files."""
    from pipelines.runtime.ray import autoscaler_node_groups, cluster_cpus, run_as_task

    fixed = not autoscaler_node_groups()  # an autoscaler adds CPUs when the tasks ask for them
    cpus = cluster_cpus()
    if cfg.writer_cpus and fixed and cpus - cfg.writer_cpus < 2:
        raise UserError(  # Ray Data would wait forever for a CPU to read and one to encode
            f"config key 'shards.writer_cpus': {cfg.writer_cpus:g} of the cluster's {cpus:g} CPUs "
            "leave too few for a reader and an encoder (2); use 0"
        )
    args = (ws, out, files, model, dtype, val_split, cfg, first_index or {})
    return run_as_task(_write_shards, *args, num_cpus=cfg.writer_cpus)


def _write_shards(ws, out, files, model, dtype, val_split, cfg: ShardsConfig, first_index) -> WrittenShards:
    from ray.data import DataContext, ExecutionResources

    # Ray Data would count this task's own CPUs as free for its readers and encoders.
    DataContext.get_current().execution_options.exclude_resources = ExecutionResources(cpu=cfg.writer_cpus)
    DataContext.get_current().enable_progress_bars = False  # redrawn bars, forwarded line by line: noise
    writers = {s: SplitWriter(ws, out, s, dtype, cfg.shard_tokens, first_index.get(s, 0)) for s in SPLITS}
    empty_docs = 0
    for block in encoded_blocks(ws, files, model, dtype, val_split, cfg.num_actors):
        empty_docs += write_block(block, writers)
    return WrittenShards(
        {name: writer.finish() for name, writer in writers.items()},
        empty_docs,
        {name: entry for w in writers.values() for name, entry in w.checksums.items()},
    )


@dataclass(frozen=True)
class TokenizerFile:
    """The published spm.model, which every actor loads from the shared workspace."""

    ws: Workspace
    rel: str
    sha256: str

    def load(self) -> Any:
        model = self.ws.read_bytes(self.rel)
        if hashlib.sha256(model).hexdigest() != self.sha256:
            raise UserError(f"{self.ws.full_uri(self.rel)}: sha256 does not match the tokenizer manifest")
        return load_sentencepiece(model)


# --- the Ray Data part ---------------------------------------------------------------------------
def encoded_blocks(
    ws: Workspace,
    files: list[str],
    model: TokenizerFile,
    dtype: str,
    val_split: ValSplit,
    num_actors: int | None,
):
    """Blocks of (val, bytes, tokens, id, source, source_id) rows, one row per document, in corpus order."""
    import ray

    from pipelines.runtime.ray import cluster_cpus

    ds = ray.data.read_parquet([ws.path(f) for f in files], filesystem=ws.fs, schema=CORPUS_COLUMNS)
    ds = ds.select_columns(CORPUS_COLUMNS.names)
    ds.context.execution_options.preserve_order = True  # same input, same shard bytes
    # Small blocks (the default is 128 MiB): every actor gets work at once, and the driver writes
    # shards while the actors encode, instead of one block holding a whole small corpus.
    ds.context.target_max_block_size = BLOCK_BYTES
    actors = num_actors or max(1, int(cluster_cpus()))
    # The pool grows from one actor as CPUs free up: a fixed pool of one actor per CPU would hold
    # every CPU before the read tasks start, and they would never run.
    ds = ds.map_batches(
        DocumentEncoder,
        fn_constructor_kwargs={"model": model, "dtype": dtype, "val_split": val_split},
        batch_size=ENCODE_BATCH_DOCS,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        num_cpus=1,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


class DocumentEncoder:
    """A Ray Data actor: loads the tokenizer once, then encodes batches of documents (their
    DOC_COLUMNS pass through, for the document index)."""

    def __init__(self, model: TokenizerFile, dtype: str, val_split: ValSplit):
        self.sp = model.load()
        self.dtype = np.dtype(dtype)
        self.val_split = val_split

    def __call__(self, batch: Any) -> Any:
        texts = batch.column("text").fill_null("")
        ids = encode_lossless(self.sp, texts.to_pylist())
        eos = self.sp.eos_id()
        for doc in ids:
            if doc:  # an empty document stays empty: counted by the driver, never written
                doc.append(eos)
        offsets = np.zeros(len(ids) + 1, dtype=np.int32)
        np.cumsum([len(doc) for doc in ids], out=offsets[1:])
        values = np.fromiter(itertools.chain.from_iterable(ids), dtype=self.dtype, count=int(offsets[-1]))
        return pa.table(
            {
                "val": [self.val_split.is_val(i) for i in batch.column("id").to_pylist()],
                "bytes": pc.binary_length(texts).cast(pa.int64()),
                "tokens": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                **{c: batch.column(c) for c in DOC_COLUMNS},
            }
        )


# --- writing shards ------------------------------------------------------------------------------
def write_block(block: Any, writers: dict[str, SplitWriter]) -> int:
    """Append a block's documents to their splits' writers; returns how many were empty."""
    tokens = block.column("tokens").combine_chunks()
    lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False)
    nbytes = block.column("bytes").to_numpy()
    is_val = block.column("val").to_numpy()
    docs = block.select(list(DOC_COLUMNS))
    for name, in_split in (("train", ~is_val), ("val", is_val)):
        keep = in_split & (lengths > 0)
        if keep.any():
            values = tokens.filter(pa.array(keep)).flatten().to_numpy()
            writers[name].add(values, docs.filter(pa.array(keep)), lengths[keep], nbytes[keep])
    return int((lengths == 0).sum())


class SplitWriter:
    """Writes one split's documents into `<split>-NNNNN.arrow` files of about `shard_tokens` tokens,
    and as each file closes, its document index `<split>-NNNNN.docs.parquet`.

    A document never straddles two files: a file closes after the document that fills it, so files
    hold at least `shard_tokens` tokens (the last one less), exact per-file document counts, and an
    index whose token ranges tile the file.
    """

    def __init__(
        self, ws: Workspace, out: str, split: str, dtype: str, shard_tokens: int, first_index: int = 0
    ):
        self.ws, self.out, self.split, self.shard_tokens = ws, out, split, shard_tokens
        self.first_index = first_index  # number of the first file written (a refresh continues its parent's)
        ws.makedirs(out)
        self.schema = pa.schema(
            [pa.field(TOKENS_COLUMN, pa.from_numpy_dtype(np.dtype(dtype)), nullable=False)]
        )
        self.written: list[dict[str, Any]] = []  # the closed files' entries in the manifest's "splits"
        self.checksums: dict[str, dict[str, Any]] = {}  # name -> {bytes, sha256}: token files and indexes
        self._writer = self._sink = None
        self._pending: list[np.ndarray] = []
        self._reset_file()

    def add(self, tokens: np.ndarray, docs: Any, doc_tokens: np.ndarray, doc_bytes: np.ndarray) -> None:
        """Append documents: their tokens back to back, their DOC_COLUMNS (a pyarrow Table) and each
        one's token and byte count."""
        ends = np.cumsum(doc_tokens)
        first = 0
        while first < len(ends):
            start = int(ends[first - 1]) if first else 0
            room = self.shard_tokens - self._file["tokens"]
            filler = int(np.searchsorted(ends, start + room))  # the document that fills the file
            stop = min(filler + 1, len(ends))
            self._append(
                tokens[start : ends[stop - 1]],
                docs.slice(first, stop - first),
                doc_tokens[first:stop],
                int(doc_bytes[first:stop].sum()),
            )
            if filler < len(ends):
                self._close()
            first = stop

    def finish(self) -> dict[str, Any]:
        """Close the open file; the split's summary for the manifest."""
        self._close()
        totals = {k: sum(f[k] for f in self.written) for k in ("tokens", "docs", "bytes")}
        return {"files": self.written, **totals}

    def _append(self, tokens: np.ndarray, docs: Any, doc_tokens: np.ndarray, nbytes: int) -> None:
        if self._writer is None:
            self._name = f"{self.split}-{self.first_index + len(self.written):05d}.arrow"
            self._sink = self.ws.fs.open_output_stream(
                self.ws.path(posixpath.join(self.out, self._name)), compression=None
            )
            self._writer = pa.ipc.new_file(
                self._sink, self.schema, options=pa.ipc.IpcWriteOptions(compression=None)
            )
        self._pending.append(tokens)
        self._docs.append(docs)
        self._doc_tokens.append(doc_tokens)
        self._file = {
            "tokens": self._file["tokens"] + len(tokens),
            "docs": self._file["docs"] + len(doc_tokens),
            "bytes": self._file["bytes"] + nbytes,
        }
        if sum(len(p) for p in self._pending) >= WRITE_BATCH_TOKENS:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            batch = pa.array(np.concatenate(self._pending))
            self._writer.write_batch(pa.record_batch([batch], schema=self.schema))
            self._pending = []

    def _close(self) -> None:
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        self._sink.close()
        index = index_name(self._name)
        docs = pa.concat_tables(self._docs)
        write_doc_index(self.ws, posixpath.join(self.out, index), docs, np.concatenate(self._doc_tokens))
        for name in (self._name, index):
            self.checksums[name] = file_entry(self.ws, posixpath.join(self.out, name))
        sha256 = self.checksums[self._name]["sha256"]
        self.written.append({"name": self._name, **self._file, "sha256": sha256, "doc_index": index})
        self._writer = self._sink = None
        self._reset_file()

    def _reset_file(self) -> None:
        self._file = {"tokens": 0, "docs": 0, "bytes": 0}
        self._docs: list[Any] = []  # the open file's documents (DOC_COLUMNS), a table per add
        self._doc_tokens: list[np.ndarray] = []
