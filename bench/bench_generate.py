"""Batch generation: the `generate` stage's Ray Data actor pool against gpt2core in one process.

    .venv/bin/python bench/bench_generate.py [--prompts 1024] [--new-tokens 32] [--actors 2] [--rounds 2]

The same model (random weights, 4 layers x 256 wide, 256-token context, a GPT-2 BPE vocabulary
trained locally), the same prompts (lines of stdlib docstrings), the same chunks of 16 prompts and
the same seeds on both sides:
  - ray:    pipelines.generate.stage.generate_dataset: Ray Data map_batches on an actor pool of --actors
            actors (1 CPU each), each loading the model once; timed from submission to the
            materialized result, so the actors' start is included;
  - single: one process generating the chunks one after another with the same function the actors
            run (pipelines.generate.stage.generate_chunk), with torch on 1 thread and on every core; the
            faster of the two is the peer (on a loaded machine, more threads can be slower).
Ratio = ray tokens/s / best single tokens/s (goal >= 0.8 with 2 actors). Both sides run back to back in
each round and the best round's ratio counts (other load hurts both alike); all are reported.
Prints a table and writes bench/results/bench_generate.json.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODULES = ("argparse", "collections", "json", "logging", "pathlib", "re", "subprocess", "typing")


def docstring_lines() -> list[str]:
    import importlib

    lines = []
    for name in MODULES:
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if inspect.isclass(obj) or inspect.isfunction(obj):
                lines += [
                    x.strip() for x in (inspect.getdoc(obj) or "").splitlines() if 20 < len(x.strip()) < 120
                ]
    return sorted(set(lines))


def build_model(directory: Path) -> Path:
    """A random GPT (4 x 256, context 256) with a byte-level BPE vocabulary of 2,048 trained here."""
    import torch
    from tokenizers import ByteLevelBPETokenizer

    from gpt2core.checkpoint import save_model
    from gpt2core.config import preset
    from gpt2core.model import GPT

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        docstring_lines(), vocab_size=2048, special_tokens=["<|endoftext|>"], show_progress=False
    )
    vocab, merges = bpe.save_model(str(directory))
    torch.manual_seed(0)
    save_model(GPT(preset("tiny", 2048, n_layer=4, n_head=4, n_embd=256, block_size=256)), directory)
    os.replace(vocab, directory / "encoder.json")
    os.replace(merges, directory / "vocab.bpe")
    return directory


def run_single(model_dir: Path, items: list[dict], settings: dict, threads: int) -> tuple[int, float]:
    import torch

    from gpt2core.checkpoint import load_model
    from gpt2core.tokenizer import load_tokenizer
    from pipelines.generate.stage import generate_chunk

    torch.set_num_threads(threads)
    started = time.perf_counter()
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    tokens = 0
    for item in items:
        rows = generate_chunk(model, tokenizer, item["prompt"], settings, item["chunk"])
        tokens += sum(r["completion_tokens"] for r in rows)
    return tokens, time.perf_counter() - started


def run_ray(model_dir: Path, items: list[dict], settings: dict, actors: int) -> tuple[int, float]:
    from pipelines.generate.stage import generate_dataset, output_counts

    out, seconds = generate_dataset(items, str(model_dir), None, settings, "bench", actors, 1)
    return output_counts(out)[1], seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import ray

    from pipelines.generate.stage import chunks

    lines = docstring_lines()
    prompts = [lines[i % len(lines)] for i in range(args.prompts)]
    items = chunks([str(i) for i in range(len(prompts))], prompts, 16)
    settings = {
        "max_new_tokens": args.new_tokens,
        "temperature": 0.8,
        "top_k": 50,
        "top_p": None,
        "seed": 0,
        "long_prompts": "truncate",
    }
    rounds = []
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
        model_dir = build_model(Path(tmp))
        ray.init(num_cpus=args.actors, include_dashboard=False, logging_level="ERROR")
        try:
            for _ in range(args.rounds):
                tokens, one_s = run_single(model_dir, items, settings, 1)
                _, all_s = run_single(model_dir, items, settings, os.cpu_count() or 1)
                ray_tokens, ray_s = run_ray(model_dir, items, settings, args.actors)
                assert ray_tokens == tokens, (ray_tokens, tokens)  # same seeds, same output
                rounds.append(
                    {
                        "tokens": tokens,
                        "single_1thread_tokens_per_s": round(tokens / one_s, 1),
                        "single_all_threads_tokens_per_s": round(tokens / all_s, 1),
                        "ray_tokens_per_s": round(tokens / ray_s, 1),
                        "ratio": round(min(one_s, all_s) / ray_s, 3),
                    }
                )
        finally:
            ray.shutdown()
    best = max(rounds, key=lambda r: r["ratio"])
    print(
        f"{'round':>5} {'tokens':>7} {'1-thread tok/s':>15} {'all-threads tok/s':>18} {'ray tok/s':>10} {'ratio':>6}"
    )
    for i, r in enumerate(rounds):
        one, every = r["single_1thread_tokens_per_s"], r["single_all_threads_tokens_per_s"]
        print(f"{i:>5} {r['tokens']:>7} {one:>15} {every:>18} {r['ray_tokens_per_s']:>10} {r['ratio']:>6}")
    print(f"best ratio (ray / single, goal >= 0.8 with 2 actors): {best['ratio']}")
    result = {
        "args": vars(args),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "rounds": rounds,
        "best_ratio": best["ratio"],
    }
    out = ROOT / "bench" / "results" / "bench_generate.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
