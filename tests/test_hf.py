"""Hugging Face interop through the command lines a user runs: from-hf, to-hf, and sample."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gpt2_reference import edit_config, random_batch, write_hf_dir

from gpt2core.checkpoint import load_model, save_model
from gpt2core.config import preset
from gpt2core.generate import generate
from gpt2core.model import GPT
from gpt2core.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    """The command line in a fresh interpreter, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def run_main(capsys, module: str, *args) -> tuple[int, str, str]:
    """The same entry point in this process (saves an interpreter start per call)."""
    main = importlib.import_module(module).main
    capsys.readouterr()  # drop what earlier set-up printed
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A transformers GPT-2 directory with a BPE tokenizer, imported through the CLI."""
    base = tmp_path_factory.mktemp("interop")
    hf = write_hf_dir(base / "hf", seed=2)
    result = cli("gpt2core.hf", "from-hf", base / "hf", base / "model")
    assert result.returncode == 0, result.stderr
    return hf, base


def test_from_hf_gives_a_complete_model_dir(imported):
    hf, base = imported
    model_dir = base / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "encoder.json", "vocab.bpe"} <= names
    ours = load_model(model_dir)
    idx = random_batch(2, 30, seed=5)
    with torch.no_grad():
        assert (ours(idx)[0] - hf(idx).logits).abs().max().item() < 1e-5
    assert load_tokenizer(model_dir).encode("import json") == load_tokenizer(base / "hf").encode(
        "import json"
    )


def test_to_hf_loads_in_transformers_with_the_same_logits_tokens_and_generation(imported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, base = imported
    out = base / "exported"
    result = cli("gpt2core.hf", "to-hf", base / "model", out)
    assert result.returncode == 0, result.stderr
    theirs = AutoModelForCausalLM.from_pretrained(out).eval()
    ours = load_model(base / "model")
    idx = random_batch(3, 40, seed=6)
    with torch.no_grad():
        assert (theirs(idx).logits - ours(idx)[0]).abs().max().item() < 1e-5
    text = "Return a new dict-like object.\n\tnaïve 漢字 <|endoftext|> end"
    hf_tokenizer = AutoTokenizer.from_pretrained(out)
    ours_tokenizer = load_tokenizer(base / "model")
    ids = ours_tokenizer.encode(text)
    assert hf_tokenizer(text)["input_ids"] == ids
    assert hf_tokenizer.eos_token_id == ours_tokenizer.eos_id == theirs.config.eos_token_id
    prompt = ids[:6]
    expected = theirs.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert generate(ours, [prompt], 12, greedy=True)[0].tokens == expected[0, 6:].tolist()


def test_bias_free_models_export_with_zero_biases(tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = GPT(preset("tiny", 300, bias=False)).eval()
    save_model(model, tmp_path / "model")
    assert run_main(capsys, "gpt2core.hf", "to-hf", tmp_path / "model", tmp_path / "hf")[0] == 0
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    idx = random_batch(1, 20)
    with torch.no_grad():
        assert (theirs(idx).logits - model(idx)[0]).abs().max().item() < 1e-5


def test_pytorch_bin_checkpoints_are_read_without_unpickling_objects(tmp_path):
    from gpt2core.hf import load_hf_model

    hf = write_hf_dir(tmp_path, seed=4, with_tokenizer=False)
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    idx = random_batch(1, 16)
    with torch.no_grad():
        assert (load_hf_model(tmp_path)(idx)[0] - hf(idx).logits).abs().max().item() < 1e-5
    torch.save({"weights": object()}, tmp_path / "pytorch_model.bin")  # a pickle with code in it
    with pytest.raises(ValueError, match="refused, it holds more than tensors"):
        load_hf_model(tmp_path)


def test_sample_cli_prints_the_greedy_completion(imported, capsys):
    _, base = imported
    model_dir = base / "model"
    result = cli("gpt2core.sample", model_dir, "--prompt", "The parser", "--greedy", "--max-new-tokens", "10")
    assert result.returncode == 0, result.stderr
    tokenizer = load_tokenizer(model_dir)
    tokens = generate(
        load_model(model_dir), [tokenizer.encode("The parser")], 10, greedy=True, eos_id=tokenizer.eos_id
    )[0].tokens
    assert result.stdout == tokenizer.decode(tokens) + "\n"
    seeded = [
        cli(
            "gpt2core.sample",
            model_dir,
            "--prompt",
            "A",
            "--seed",
            "3",
            "--top-k",
            "20",
            "--max-new-tokens",
            "8",
        )
        for _ in range(2)
    ]
    assert seeded[0].returncode == 0 and seeded[0].stdout == seeded[1].stdout


@pytest.mark.parametrize(
    "command, message",
    [
        (["gpt2core.hf", "from-hf", "{llama}", "{out}"], "model_type 'llama' is not GPT-2"),
        (["gpt2core.hf", "from-hf", "{missing}", "{out}"], "no config.json"),
        (["gpt2core.hf", "to-hf", "{hf}", "{out}"], "a Hugging Face config"),
        (["gpt2core.sample", "{model}", "--prompt", "the parser " * 40], "prompt 0 has"),
        (["gpt2core.sample", "{model}", "--prompt", ""], "prompt 0 is empty"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(imported, tmp_path, capsys, command, message):
    _, base = imported
    llama = tmp_path / "llama"
    write_hf_dir(llama, with_tokenizer=False)
    edit_config(llama, model_type="llama")
    paths = dict(
        llama=llama, missing=tmp_path / "nope", out=tmp_path / "out", hf=base / "hf", model=base / "model"
    )
    code, _, err = run_main(capsys, *[arg.format(**paths) for arg in command])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"activation_function": "relu"}, "activation_function='relu' is not supported"),
        ({"n_inner": 100}, "n_inner=100 is not supported"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings=False is not supported"),
    ],
)
def test_gpt2_variants_that_gpt2core_cannot_represent_are_refused(tmp_path, change, message):
    from gpt2core.hf import load_hf_model

    write_hf_dir(tmp_path, with_tokenizer=False)
    edit_config(tmp_path, **change)
    with pytest.raises(ValueError, match=message):
        load_hf_model(tmp_path)


def test_a_failing_command_exits_2_in_a_fresh_interpreter(tmp_path):
    result = cli("gpt2core.hf", "to-hf", tmp_path, tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path}: not a model directory (no config.json)"
