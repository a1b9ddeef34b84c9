"""Reading what the stages publish, in one place, for the stages that come after.

A stage's output is a directory with its files and `manifest.json` (core/manifest.py, written last).
The stages downstream read another stage's output only through this module, never through that
stage's package: the corpus's data files (tokenizer, shards), the fine-tuning rows (generate).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipelines.core.workspace import Workspace
from pipelines.errors import UserError


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
