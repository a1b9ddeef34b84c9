"""Token shards: a memory-mapped reader, a resumable world-size-independent window sampler, an eval
iterator whose windows do not depend on the world size either.

The shards (written by pipelines/shards/stage.py) are a directory with `manifest.json` and Arrow IPC files,
uncompressed, with one flat `tokens` column (uint16, or uint32 for vocabularies over 65536): the
documents of a split back to back, each followed by EOS. The manifest names the tokenizer
({sha256, vocab_size, eos_id}), the dtype, and per split its files with `tokens`, `docs`, `bytes`
(UTF-8 bytes of the documents' text) and `sha256`.

    shards = TokenShards(dir, "train", expect_sha256=tok_sha, expect_vocab_size=vocab)
    sampler = WindowSampler(shards, block_size, rank, world_size, seed)
    x, y = sampler.next_batch(micro_batch)          # int64 [micro_batch, block_size] each
    state = sampler.state_dict()                    # into the checkpoint
    sampler.load_state_dict(state)                  # after a restart: exactly the next batch
    for x, y in eval_batches(val, block_size, batch, rank, world_size, max_windows): ...
    bpb = bits_per_byte(mean_loss, val)

A split is read as one stream of tokens cut into non-overlapping windows of block_size + 1 tokens
(window i = tokens[i*(block_size+1) : (i+1)*(block_size+1)]; the tail shorter than a window is
never read); x is a window without its last token, y without its first. Pure numpy + torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

IGNORE_INDEX = -100  # targets that do not count in the loss (fine-tuning masks prompts this way)

if TYPE_CHECKING:
    import torch

TOKENS_COLUMN = "tokens"
MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> str:
    """The smallest unsigned dtype that holds every id of a vocabulary."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


class TokenShards:
    """One split of a shards directory: its files memory-mapped (nothing is loaded) as one token stream.

    Refuses (ValueError, one line): a directory without manifest, a tokenizer other than the expected
    one (sha256 of spm.model, vocab size of the tokenizer the model was built for), and with
    verify=True (the default) a file whose sha256 differs from the manifest. verify=False skips
    hashing, which reads every byte once, for very large runs on trusted storage.
    Totals for bits per byte: n_tokens (EOS included), n_docs, n_bytes.
    """

    def __init__(
        self,
        shards_dir: str | Path,
        split: str = "train",
        expect_sha256: str | None = None,
        expect_vocab_size: int | None = None,
        verify: bool = True,
    ):
        import pyarrow as pa

        self.dir, self.split = Path(shards_dir), split
        self.manifest = _read_manifest(self.dir)
        tokenizer = self.manifest["tokenizer"]
        if expect_sha256 is not None and tokenizer["sha256"] != expect_sha256:
            raise ValueError(
                f"shards {self.dir} were made with tokenizer sha256 {tokenizer['sha256'][:12]}..., "
                f"the model expects {expect_sha256[:12]}..."
            )
        if expect_vocab_size is not None and tokenizer["vocab_size"] != expect_vocab_size:
            raise ValueError(
                f"shards {self.dir} have vocab size {tokenizer['vocab_size']}, "
                f"the model expects {expect_vocab_size}"
            )
        if split not in self.manifest["splits"]:
            raise ValueError(
                f"shards {self.dir} have no split {split!r} ({', '.join(self.manifest['splits'])})"
            )
        info = self.manifest["splits"][split]
        self.eos_id, self.vocab_size = tokenizer["eos_id"], tokenizer["vocab_size"]
        self.tokenizer_sha256 = tokenizer["sha256"]
        self.dtype = np.dtype(self.manifest["dtype"])
        self.n_tokens, self.n_docs, self.n_bytes = info["tokens"], info["docs"], info["bytes"]
        self._maps: list[Any] = []  # the open memory maps, kept for the arrays' lifetime
        self._arrays: list[np.ndarray] = []
        for entry in info["files"]:
            path = self.dir / entry["name"]
            if verify and _sha256(path) != entry["sha256"]:
                raise ValueError(
                    f"shard file {path}: sha256 does not match the manifest (corrupt or replaced)"
                )
            arrays = self._map(path, pa)
            if sum(len(a) for a in arrays) != entry["tokens"]:
                raise ValueError(f"shard file {path}: token count does not match the manifest")
            self._arrays += arrays
        self._starts = np.cumsum([0] + [len(a) for a in self._arrays])

    def _map(self, path: Path, pa: Any) -> list[np.ndarray]:
        """The file's token arrays, one per record batch: zero-copy views into the memory map."""
        source = pa.memory_map(str(path), "r")
        self._maps.append(source)
        reader = pa.ipc.open_file(source)
        field = reader.schema.field(0)
        if reader.schema.names != [TOKENS_COLUMN] or field.type != pa.from_numpy_dtype(self.dtype):
            raise ValueError(f"shard file {path}: expected one {TOKENS_COLUMN!r} column of {self.dtype}")
        batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        return [b.column(0).to_numpy(zero_copy_only=True) for b in batches]

    def __len__(self) -> int:
        return self.n_tokens

    @property
    def tokens_per_byte(self) -> float:
        return self.n_tokens / max(self.n_bytes, 1)

    def read(self, start: int, length: int) -> np.ndarray:
        """tokens[start : start + length] of the split (a view when it lies within one record batch)."""
        if start < 0 or start + length > self.n_tokens:
            raise IndexError(f"tokens [{start}, {start + length}) outside the split's {self.n_tokens}")
        i = int(np.searchsorted(self._starts, start, side="right")) - 1
        offset = start - int(self._starts[i])
        if offset + length <= len(self._arrays[i]):
            return self._arrays[i][offset : offset + length]
        parts, need = [], length
        while need:
            piece = self._arrays[i][offset : offset + need]
            parts.append(piece)
            need -= len(piece)
            i, offset = i + 1, 0
        return np.concatenate(parts)

    def close(self) -> None:
        """Unmap the files; arrays returned by read() before must not be used after this."""
        self._arrays = []
        for source in self._maps:
            source.close()
        self._maps = []


class GlobalOrder:
    """An endless sequence over `n_items` items that depends on the seed alone, read by a world.

    Epoch e is a seeded permutation of all items, and epoch e + 1 follows it. The world consumes
    the sequence together: every rank draws the same number of batches of the same size, and rank
    r of w takes the r-th slice of each w * batch_size items. So the items of an optimizer step
    (however they are split into ranks and micro-batches) are the same for 1, 2 or 8 workers, and
    the state - how far the world has read - is one number, the same on every rank: a run resumes on
    another number of workers at exactly the next global item. No item is skipped at an epoch's end.
    Subclasses name what else a state must match to be resumed (`identity`).
    """

    def __init__(self, n_items: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.n_items, self.rank, self.world_size, self.seed = n_items, rank, world_size, seed
        self.position = 0  # items of the global sequence the world has read
        self._order_epoch, self._order = -1, np.empty(0, dtype=np.int64)

    @property
    def epoch(self) -> int:
        return self.position // self.n_items

    def order(self, epoch: int) -> np.ndarray:
        """All item indices of epoch `epoch`, in the global order."""
        if epoch != self._order_epoch:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
            self._order_epoch, self._order = epoch, perm
        return self._order

    def global_items(self, start: int, count: int) -> np.ndarray:
        """Items start .. start + count - 1 of the global sequence (across epochs)."""
        taken = []
        while count:
            epoch, offset = divmod(start, self.n_items)
            chunk = self.order(epoch)[offset : offset + count]
            taken.append(chunk)
            start, count = start + len(chunk), count - len(chunk)
        return np.concatenate(taken) if taken else np.empty(0, dtype=np.int64)

    def next_items(self, count: int) -> np.ndarray:
        """This rank's `count` items of the world's next `world_size * count`; advances the state."""
        mine = self.global_items(self.position + self.rank * count, count)
        self.position += self.world_size * count
        return mine

    def identity(self) -> dict[str, int]:
        return {"seed": self.seed}

    def state_dict(self) -> dict[str, int]:
        """The world's position (not the rank's): any rank's state resumes any world size."""
        return {"global_position": self.position, **self.identity()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if "global_position" not in state:
            raise ValueError("sampler state of an older, per-rank data order: it cannot be resumed")
        for key, value in self.identity().items():
            if state.get(key) != value:
                raise ValueError(f"sampler state has {key}={state.get(key)}, this sampler {value}")
        if state["global_position"] < 0:
            raise ValueError(f"sampler state position {state['global_position']} is negative")
        self.position = state["global_position"]


class WindowSampler(GlobalOrder):
    """Training batches of token windows (block_size + 1 tokens each) in one global window order
    that depends on the seed and shards alone (GlobalOrder)."""

    def __init__(
        self, shards: TokenShards, block_size: int, rank: int = 0, world_size: int = 1, seed: int = 0
    ):
        self.shards, self.block_size = shards, block_size
        self.window = block_size + 1
        self.n_windows = len(shards) // self.window
        if not self.n_windows:
            raise ValueError(
                f"split {shards.split!r} of {shards.dir} has {len(shards)} tokens: too few for "
                f"one window of block_size + 1 = {self.window}"
            )
        super().__init__(self.n_windows, rank, world_size, seed)

    def global_windows(self, start: int, count: int) -> np.ndarray:
        return self.global_items(start, count)

    def next_windows(self, count: int) -> np.ndarray:
        return self.next_items(count)

    def next_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return windows_batch(self.shards, self.next_windows(batch_size), self.window)

    def identity(self) -> dict[str, int]:
        return {"seed": self.seed, "block_size": self.block_size, "n_windows": self.n_windows}


DIGEST_MOD = 2**31 - 1  # a prime: digests stay exact as int64 sums and as MLflow's float metrics


def batch_digest(x: torch.Tensor) -> torch.Tensor:
    """An order-free digest of a batch's token windows (int64 scalar on x's device): each row's
    tokens weighed by position, summed over rows. Sums of digests over micro-batches and ranks give
    one number per optimizer step, equal exactly when the step saw the same windows, however they
    were split over workers."""
    import torch

    weights = (torch.arange(1, x.shape[1] + 1, device=x.device, dtype=torch.int64) * 2654435761) % DIGEST_MOD
    return ((x.long() * weights).sum(dim=1) % DIGEST_MOD).sum()


def eval_shares(n_items: int, rank: int, world_size: int, batch_size: int, max_items: int | None = None):
    """Rank r's batches (index arrays) of the first min(n_items, max_items) items: items r, r + w,
    r + 2w, ... So the items evaluated depend on max_items alone, not on the world size, and every
    rank gets the same number of batches (ZeRO-3 needs every rank in every forward): where its
    share runs out first, its last batch is empty and the caller pads it with a row that counts
    no target."""
    n = n_items if max_items is None else min(n_items, max_items)
    mine = np.arange(rank, n, world_size)
    per_rank = -(-n // world_size)
    return [mine[start : start + batch_size] for start in range(0, per_rank, batch_size)]


def eval_batches(
    shards: TokenShards,
    block_size: int,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    max_windows: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation batches of the split's first `max_windows` windows (all: None), in a fixed order,
    each rank its disjoint share (eval_shares). Sum the losses and token counts over ranks
    (all_reduce) for the mean loss: the same for any world size."""
    import torch

    window = block_size + 1
    for windows in eval_shares(len(shards) // window, rank, world_size, batch_size, max_windows):
        if len(windows):
            yield windows_batch(shards, windows, window)
        else:
            yield torch.zeros(1, block_size, dtype=torch.int64), torch.full((1, block_size), IGNORE_INDEX)


def windows_batch(shards: TokenShards, windows: np.ndarray, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): int64 [len(windows), window - 1] each, y shifted one token ahead of x."""
    import torch  # here, so that the shard writer can import this module without torch

    rows = np.empty((len(windows), window), dtype=np.int64)
    for row, index in zip(rows, windows):
        row[:] = shards.read(int(index) * window, window)
    batch = torch.from_numpy(rows)
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


def bits_per_byte(mean_loss: float, shards: TokenShards) -> float:
    """Bits per UTF-8 byte of text from the mean cross-entropy (nats per token) over a split."""
    return mean_loss / math.log(2) * shards.tokens_per_byte


def _read_manifest(shards_dir: Path) -> dict[str, Any]:
    path = shards_dir / MANIFEST
    if not path.is_file():
        raise ValueError(f"shards {shards_dir}: no {MANIFEST} (missing, or the shards stage did not finish)")
    return json.loads(path.read_text())


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
