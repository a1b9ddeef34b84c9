"""gpt2core/data.py on shards written by the shard stage's own writer: memory mapping, refusals,
rank-disjoint epochs, exact resume, and the evaluation iterator.

Every token of the synthetic stream is distinct (its position), so a window is known by its tokens.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

import pipelines.shards.stage as shards_module
from gpt2core.data import IGNORE_INDEX, TokenShards, WindowSampler, bits_per_byte, eval_batches, token_dtype
from pipelines.core.workspace import Workspace
from pipelines.shards.stage import SplitWriter

SHA = "ab" * 32
BLOCK = 15  # windows of 16 tokens


def named(first: int, count: int):
    """The document index's columns for `count` documents numbered from `first`."""
    import pyarrow as pa

    numbers = range(first, first + count)
    return pa.table(
        {
            "id": [f"{i:016x}" for i in numbers],
            "source": ["docs.jsonl"] * count,
            "source_id": [str(i) for i in numbers],
        }
    )


def write_shards(root, splits: dict[str, int], vocab_size=60_000, first=0, shard_tokens=1500) -> str:
    """Shards whose split streams are first, first + 1, ..., in documents of random length."""
    rng = np.random.default_rng(0)
    ws, dtype = Workspace(str(root)), token_dtype(vocab_size)
    manifest = {"tokenizer": {"sha256": SHA, "vocab_size": vocab_size, "eos_id": 1}, "dtype": dtype}
    manifest["splits"] = {}
    for split, n_tokens in splits.items():
        lengths = rng.integers(1, 300, size=n_tokens)
        lengths = lengths[: np.searchsorted(np.cumsum(lengths), n_tokens) + 1]
        lengths[-1] -= lengths.sum() - n_tokens
        writer = SplitWriter(ws, "shards", split, dtype, shard_tokens)
        tokens = np.arange(first, first + n_tokens).astype(dtype)
        ends = np.cumsum(lengths)
        for block in range(0, len(lengths), 5):  # blocks of 5 documents, as the stage receives them
            start = ends[block - 1] if block else 0
            docs = lengths[block : block + 5]
            ids = named(block, len(docs))
            writer.add(tokens[start : start + docs.sum()], ids, docs, docs * 3)  # pretend 3 bytes a token
        manifest["splits"][split] = writer.finish()
    ws.write_json("shards/manifest.json", manifest)
    return str(root / "shards")


@pytest.fixture
def shards_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(shards_module, "WRITE_BATCH_TOKENS", 400)  # several record batches per file
    return write_shards(tmp_path, {"train": 20_003, "val": 3_001})


def window_ids(x: torch.Tensor) -> list[int]:
    """Which windows a batch holds: a window's first token is its start position."""
    return (x[:, 0] // (BLOCK + 1)).tolist()


def test_files_are_memory_mapped_and_read_in_place(shards_dir):
    allocated = pa.total_allocated_bytes()
    train = TokenShards(shards_dir, "train")
    assert pa.total_allocated_bytes() == allocated  # nothing was copied into memory
    assert len(train._arrays) > len(train.manifest["splits"]["train"]["files"])  # batches across files
    view = train.read(100, 50)
    assert not view.flags.writeable and not view.flags.owndata  # a view of the mapped file
    assert view.tolist() == list(range(100, 150))
    for start in np.random.default_rng(1).integers(0, len(train) - 700, size=200):
        assert train.read(int(start), 700).tolist() == list(range(start, start + 700))  # spans files
    assert train.read(0, len(train)).tolist() == list(range(20_003))
    assert (train.n_tokens, train.dtype) == (20_003, np.uint16)
    assert train.n_bytes == 3 * 20_003 and train.tokens_per_byte == pytest.approx(1 / 3)


def test_batches_are_windows_with_targets_shifted_by_one(shards_dir):
    sampler = WindowSampler(TokenShards(shards_dir, "train"), BLOCK, seed=3)
    x, y = sampler.next_batch(8)
    assert x.shape == y.shape == (8, BLOCK) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert all(start % (BLOCK + 1) == 0 for start in x[:, 0].tolist())  # non-overlapping windows


GLOBAL_BATCH = 24  # windows per optimizer step, as train.global_batch_size
LAYOUTS = [(1, 6), (2, 6), (2, 3), (3, 4)]  # (world size, micro-batch): accumulation makes up the rest


def step_windows(samplers, micro: int, steps: int) -> list[list[int]]:
    """The sorted windows of each optimizer step, over all ranks and micro-batches, as the loop draws."""
    accum = GLOBAL_BATCH // (micro * len(samplers))
    return [
        sorted(w for s in samplers for _ in range(accum) for w in window_ids(s.next_batch(micro)[0]))
        for _ in range(steps)
    ]


def world(shards_dir, world_size: int, seed: int = 7) -> list[WindowSampler]:
    shards = TokenShards(shards_dir, "train")
    return [WindowSampler(shards, BLOCK, rank, world_size, seed=seed) for rank in range(world_size)]


def test_every_world_size_sees_the_same_windows_at_every_step(shards_dir):
    n_windows = len(TokenShards(shards_dir, "train")) // (BLOCK + 1)
    steps = 2 * n_windows // GLOBAL_BATCH + 3  # past two epochs, with steps that straddle them
    runs = [step_windows(world(shards_dir, w), micro, steps) for w, micro in LAYOUTS]
    assert all(run == runs[0] for run in runs[1:])
    in_first_epoch = [w for step in runs[0][: n_windows // GLOBAL_BATCH] for w in step]
    assert len(set(in_first_epoch)) == len(in_first_epoch)  # no window twice within an epoch
    sequence = world(shards_dir, 1)[0].global_windows(0, 2 * n_windows)
    assert (
        sorted(sequence[:n_windows]) == sorted(sequence[n_windows:]) == list(range(n_windows))
    )  # none skipped
    assert runs[0] != step_windows(world(shards_dir, 1, seed=8), 6, steps)  # the seed decides the order


@pytest.mark.parametrize("before, after", [((2, 6), (1, 6)), ((1, 6), (2, 3)), ((2, 3), (3, 4))])
def test_resume_on_another_world_size_continues_at_the_next_global_window(shards_dir, before, after):
    total = 40
    expected = step_windows(world(shards_dir, before[0]), before[1], total)
    for k in (0, 1, 17):
        first = world(shards_dir, before[0])
        got = step_windows(first, before[1], k)
        states = [json.loads(json.dumps(s.state_dict())) for s in first]  # as checkpoints store them
        assert all(state == states[0] for state in states)  # one world position, on every rank
        resumed = world(shards_dir, after[0])
        for sampler in resumed:
            sampler.load_state_dict(states[0])
        got += step_windows(resumed, after[1], total - k)
        assert got == expected, k


def test_resume_after_k_batches_gives_the_very_same_batches(shards_dir):
    batch, total = 24, 110  # 24 does not divide the windows: batches straddle epochs
    straight = WindowSampler(TokenShards(shards_dir, "train"), BLOCK, 1, 2, seed=11)
    expected = [straight.next_batch(batch) for _ in range(total)]
    for k in (0, 1, 5, 52, 105):
        first = WindowSampler(TokenShards(shards_dir, "train"), BLOCK, 1, 2, seed=11)
        got = [first.next_batch(batch) for _ in range(k)]
        resumed = WindowSampler(TokenShards(shards_dir, "train"), BLOCK, 1, 2, seed=11)
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        got += [resumed.next_batch(batch) for _ in range(total - k)]
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(got, expected))
    assert straight.epoch >= 2


def test_state_from_another_setup_is_refused(shards_dir):
    shards = TokenShards(shards_dir, "train")
    state = WindowSampler(shards, BLOCK, seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1"):
        WindowSampler(shards, BLOCK, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="block_size"):
        WindowSampler(shards, BLOCK - 1, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="older, per-rank data order"):
        WindowSampler(shards, BLOCK, seed=1).load_state_dict({"epoch": 0, "position": 3, "seed": 1})


def test_eval_batches_are_fixed_disjoint_equal_in_number_and_the_same_set_for_any_world(shards_dir):
    val = TokenShards(shards_dir, "val")
    n_windows = len(val) // (BLOCK + 1)
    for world in (1, 2, 3):
        ranks = [list(eval_batches(val, BLOCK, 10, rank, world)) for rank in range(world)]
        assert len({len(batches) for batches in ranks}) == 1  # every rank runs as many forward passes
        real = [window_ids(x) for batches in ranks for x, y in batches if (y != IGNORE_INDEX).any()]
        assert sorted(w for ids in real for w in ids) == list(range(n_windows))
        limited = [list(eval_batches(val, BLOCK, 4, rank, world, max_windows=30)) for rank in range(world)]
        ids = [
            w for batches in limited for x, y in batches if (y != IGNORE_INDEX).any() for w in window_ids(x)
        ]
        assert sorted(ids) == list(range(30))  # the first 30 windows, however many workers share them
    padded = [y for x, y in eval_batches(val, BLOCK, 10, 2, 3, max_windows=2)]  # rank 2 has no window
    assert len(padded) == 1 and (padded[0] == IGNORE_INDEX).all()
    first = [window_ids(x) for x, _ in eval_batches(val, BLOCK, 10, 0, 2)]
    assert first == [window_ids(x) for x, _ in eval_batches(val, BLOCK, 10, 0, 2)]  # same every time


def test_corrupt_shard_file_is_refused_naming_it(shards_dir):
    manifest = json.loads(open(f"{shards_dir}/manifest.json").read())
    name = manifest["splits"]["train"]["files"][1]["name"]
    with open(f"{shards_dir}/{name}", "r+b") as f:
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=f"shard file .*{name}: sha256 does not match"):
        TokenShards(shards_dir, "train")
    TokenShards(shards_dir, "val")  # the other split is fine
    assert len(TokenShards(shards_dir, "train", verify=False)) == 20_003


def test_tokenizer_mismatch_and_missing_manifest_are_refused(shards_dir, tmp_path):
    with pytest.raises(ValueError, match="tokenizer sha256 ababababab"):
        TokenShards(shards_dir, "train", expect_sha256="cd" * 32)
    with pytest.raises(ValueError, match="vocab size 60000, the model expects 50257"):
        TokenShards(shards_dir, "train", expect_vocab_size=50257)
    assert len(TokenShards(shards_dir, "train", expect_sha256=SHA, expect_vocab_size=60_000)) == 20_003
    with pytest.raises(ValueError, match="no manifest.json"):
        TokenShards(tmp_path / "nothing", "train")
    with pytest.raises(ValueError, match="too few"):
        WindowSampler(TokenShards(shards_dir, "val"), 3_001, 0, 1)


def test_large_vocabularies_use_uint32(tmp_path):
    root = write_shards(tmp_path, {"train": 5_000}, vocab_size=100_000, first=70_000)
    train = TokenShards(root, "train")
    assert train.dtype == np.uint32 and train.read(0, 5_000).tolist() == list(range(70_000, 75_000))


def test_bits_per_byte_uses_the_split_totals(shards_dir):
    val = TokenShards(shards_dir, "val")
    assert bits_per_byte(np.log(2) * 6, val) == pytest.approx(2.0)  # 6 bits/token, 3 bytes/token


def test_writer_closes_a_file_after_the_document_that_fills_it(tmp_path):
    lengths = np.array([700, 900, 100, 1600, 50, 50, 3000, 10])
    tokens = np.arange(lengths.sum()).astype(np.uint16)
    writer = SplitWriter(Workspace(str(tmp_path)), "shards", "train", "uint16", 1500)
    writer.add(tokens[:1700], named(0, 3), lengths[:3], lengths[:3] * 2)  # a block ends in the 2nd file
    writer.add(tokens[1700:], named(3, 5), lengths[3:], lengths[3:] * 2)
    summary = writer.finish()
    files = [(f["name"], f["tokens"], f["docs"], f["bytes"]) for f in summary["files"]]
    assert files == [
        ("train-00000.arrow", 1600, 2, 3200),
        ("train-00001.arrow", 1700, 2, 3400),
        ("train-00002.arrow", 3100, 3, 6200),
        ("train-00003.arrow", 10, 1, 20),
    ]
    assert (summary["tokens"], summary["docs"], summary["bytes"]) == (6410, 8, 12820)
