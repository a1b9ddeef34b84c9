"""Sample from a model directory, as nanoGPT's sample.py:

    python -m gpt2core.sample MODEL_DIR --prompt "Once upon a time" --max-new-tokens 50 --top-k 40

MODEL_DIR holds config.json + model.safetensors + tokenizer files (a Hugging Face GPT-2 directory
also works: it is converted in memory). Prints the completion (the new text only).
"""

from __future__ import annotations

import argparse
import sys

DTYPES = ("float32", "bfloat16", "float16")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gpt2core.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--greedy", action="store_true", help="argmax instead of sampling")
    parser.add_argument(
        "--num-samples", type=int, default=1, help="completions of the same prompt, one batch"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="default: as saved")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from gpt2core.checkpoint import load_model
    from gpt2core.generate import generate
    from gpt2core.hf import is_hf_dir, load_hf_model
    from gpt2core.tokenizer import load_tokenizer

    try:
        dtype = getattr(torch, args.dtype) if args.dtype else None
        if is_hf_dir(args.model_dir):
            model = load_hf_model(args.model_dir).to(device=args.device, dtype=dtype)
        else:
            model = load_model(args.model_dir, device=args.device, dtype=dtype)
        tokenizer = load_tokenizer(args.model_dir)
        prompt = tokenizer.encode(args.prompt)
        results = generate(
            model,
            [prompt] * args.num_samples,
            args.max_new_tokens,
            greedy=args.greedy,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            repetition_penalty=args.repetition_penalty,
            eos_id=tokenizer.eos_id,
            seed=args.seed,
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for i, result in enumerate(results):
        if i:
            print("---------------")
        print(tokenizer.decode(result.tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())
