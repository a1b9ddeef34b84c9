"""Reading what the stages publish, in one place, for the stages that come after.

A stage's output is a directory with its files and `manifest.json` (core/manifest.py, written last).
A stage reads another stage's output through these types, never through that stage's package or
raw manifest keys: CorpusOutput (tokenizer, shards, finetune), TokenizerOutput (shards, pretrain),
ModelOutput (finetune), FinetuneData (generate).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gpt2core.tokenizer import SPM_FILE
from pipelines.core.workspace import Workspace
from pipelines.errors import UserError

if TYPE_CHECKING:
    from pipelines.core.workflow import Published


# --- the corpus -----------------------------------------------------------------------------------
def corpus_data_files(ws: Workspace, corpus_dir: str) -> list[str]:
    """The corpus's `data/*.parquet` files (workspace-relative, sorted); an error when there are none."""
    data = posixpath.join(corpus_dir, "data")
    files = [posixpath.join(data, f) for f in ws.list_files(data) if f.endswith(".parquet")]
    if not files:
        raise UserError(f"corpus {ws.full_uri(corpus_dir)} has no data/*.parquet files")
    return files


def iter_corpus_batches(ws: Workspace, files: list[str], columns: list[str]) -> Iterator[Any]:
    """pyarrow RecordBatches of `columns`, file by file in order; never the whole corpus at once."""
    import pyarrow.parquet as pq

    for rel in files:
        with ws.fs.open_input_file(ws.path(rel)) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=8192, columns=columns)


@dataclass(frozen=True)
class CorpusOutput:
    """A published corpus version: data/*.parquet (id, text, url, source) and rejects/."""

    dir: str  # workspace-relative

    @classmethod
    def of(cls, published: Published) -> CorpusOutput:
        return cls(published.dir)

    def data_files(self, ws: Workspace) -> list[str]:
        return corpus_data_files(ws, self.dir)


# --- the tokenizer ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenizerOutput:
    """A published tokenizer: spm.model (+ vocab, Hugging Face files) and its record."""

    dir: str  # workspace-relative
    sha256: str  # of spm.model
    vocab_size: int
    eos_id: int

    @classmethod
    def of(cls, published: Published) -> TokenizerOutput:
        info = published.manifest["tokenizer"]
        return cls(published.dir, info["sha256"], info["vocab_size"], info["eos_id"])

    @property
    def model_file(self) -> str:
        return posixpath.join(self.dir, SPM_FILE)


# --- a trained model -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelOutput:
    """A published model directory (models/<run>/) and the registry version it became."""

    dir: str  # workspace-relative
    manifest: dict[str, Any]  # its files, for a DirRef
    registered_uri: str
    version: str

    @classmethod
    def of(cls, published: Published) -> ModelOutput:
        m = published.manifest
        return cls(published.dir, m, m["registered_uri"], str(m["version"]))


# --- fine-tuning rows ------------------------------------------------------------------------------
VAL_PAIRS = "val.jsonl"  # the val pairs as text: the gate encodes them with each model's tokenizer


@dataclass(frozen=True)
class FinetuneData:
    """The rows a fine-tuning run trained on, uploaded beside its checkpoints (manifest["data"])."""

    data_dir: str  # workspace-relative
    files: dict[str, str]  # name -> sha256

    @classmethod
    def of(cls, manifest: dict[str, Any]) -> FinetuneData:
        return cls(manifest["data"]["data_dir"], manifest["data"]["data_files"])

    def val_pairs(self) -> tuple[str, str]:
        """(workspace-relative path, sha256) of the val pairs file."""
        return f"{self.data_dir}/{VAL_PAIRS}", self.files[VAL_PAIRS]
