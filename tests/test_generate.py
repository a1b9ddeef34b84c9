"""KV-cache generation: greedy decoding equals transformers' generate, left padding is invisible,
EOS stops one sequence, seeds reproduce, and each sampling knob does what it says."""

from __future__ import annotations

import pytest
import torch
from gpt2_reference import VOCAB, hf_and_gpt2core

from gpt2core.checkpoint import PlacementError, inference_placement
from gpt2core.config import preset
from gpt2core.generate import Sampling, generate, next_tokens
from gpt2core.model import GPT

PROMPTS = [[5, 6, 7, 8, 9], [1, 2], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [42]]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return hf_and_gpt2core(tmp_path_factory.mktemp("hf"), seed=1)


def hf_generate(hf, prompts, max_new_tokens, **kwargs) -> list[list[int]]:
    """transformers' generate on a left-padded batch; returns the new tokens per prompt."""
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = hf.generate(
        ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=0, eos_token_id=None, **kwargs
    )
    return out[:, width:].tolist()


def test_greedy_matches_transformers_generate(pair):
    hf, ours = pair
    results = generate(ours, PROMPTS, 24, greedy=True)
    assert [r.tokens for r in results] == hf_generate(hf, PROMPTS, 24, do_sample=False)
    assert all(r.finish_reason == "length" and len(r.tokens) == 24 for r in results)


def test_repetition_penalty_matches_transformers(pair):
    hf, ours = pair
    results = generate(ours, PROMPTS[:1], 20, greedy=True, repetition_penalty=1.8)
    expected = hf_generate(hf, PROMPTS[:1], 20, do_sample=False, repetition_penalty=1.8)
    assert [r.tokens for r in results] == expected
    plain = generate(ours, PROMPTS[:1], 20, greedy=True)[0].tokens
    assert len(set(results[0].tokens)) > len(set(plain))  # the penalty breaks greedy loops


def test_left_padded_batch_equals_each_prompt_alone(pair):
    _, ours = pair
    batch = generate(ours, PROMPTS, 16, greedy=True)
    for prompt, result in zip(PROMPTS, batch):
        assert generate(ours, [prompt], 16, greedy=True)[0].tokens == result.tokens


def test_eos_stops_only_its_sequence(pair):
    _, ours = pair
    free = [r.tokens for r in generate(ours, PROMPTS, 12, greedy=True)]
    eos = free[0][3]  # a token the first sequence produces at step 4
    results = generate(ours, PROMPTS, 12, greedy=True, eos_id=eos)
    for tokens, result in zip(free, results):
        if eos in tokens:
            assert result.finish_reason == "eos"
            assert result.tokens == tokens[: tokens.index(eos)]
        else:
            assert result.finish_reason == "length" and result.tokens == tokens
    assert results[0].finish_reason == "eos" and len(results[0].tokens) <= 3


def test_same_seed_same_samples(pair):
    _, ours = pair
    kwargs = dict(temperature=1.0, top_k=50, top_p=0.95)
    first = generate(ours, PROMPTS, 20, seed=123, **kwargs)
    again = generate(ours, PROMPTS, 20, seed=123, **kwargs)
    other = generate(ours, PROMPTS, 20, seed=124, **kwargs)
    assert [r.tokens for r in first] == [r.tokens for r in again]
    assert [r.tokens for r in first] != [r.tokens for r in other]


def test_degenerate_sampling_settings_reduce_to_greedy(pair):
    _, ours = pair
    greedy = [r.tokens for r in generate(ours, PROMPTS, 10, greedy=True)]
    for kwargs in (dict(top_k=1), dict(top_p=1e-6), dict(temperature=0.0)):
        sampled = generate(ours, PROMPTS, 10, seed=0, **kwargs)
        assert [r.tokens for r in sampled] == greedy, kwargs


def draw(logits: list[float], n: int = 4000, **kwargs) -> torch.Tensor:
    """n samples from one row of logits with the given settings (fixed seed)."""
    batch = torch.tensor([logits] * n)
    generator = torch.Generator().manual_seed(0)
    return next_tokens(batch, None, Sampling(**kwargs), generator)


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log().tolist() + [-9.0] * 4
    assert set(draw(logits, top_k=3).tolist()) == {0, 1, 2}
    assert set(draw(logits, top_p=0.65).tolist()) == {0, 1}  # 0.4 + 0.3 is the smallest set >= 0.65
    assert set(draw(logits, top_p=0.71).tolist()) == {0, 1, 2}


def test_temperature_sharpens_and_flattens():
    logits = torch.tensor([0.4, 0.3, 0.2, 0.1]).log().tolist()
    share = {t: (draw(logits, temperature=t) == 0).float().mean().item() for t in (0.5, 1.0, 2.0)}
    assert share[0.5] > share[1.0] > share[2.0]
    assert abs(share[1.0] - 0.4) < 0.03  # at T=1 the samples follow softmax(logits)


def test_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([[2.0, 1.9, -1.0, -1.1]])
    seen = torch.tensor([[True, False, False, True]])
    assert next_tokens(logits, seen, Sampling(greedy=True, repetition_penalty=1.0), None).item() == 0
    assert next_tokens(logits, seen, Sampling(greedy=True, repetition_penalty=1.2), None).item() == 1


def test_context_limit_and_padding_ids_are_respected():
    torch.manual_seed(0)
    model = GPT(preset("tiny", VOCAB, block_size=32))
    with torch.no_grad():  # padding rows that would win every argmax if they were sampled
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[VOCAB:] = 10.0
    results = generate(model, [[1] * 29, [2] * 3], 10, greedy=True)
    assert [len(r.tokens) for r in results] == [3, 10]  # the first sequence fills its context
    assert all(r.finish_reason == "length" for r in results)
    sampled = generate(model, [[3] * 4] * 8, 20, seed=0, temperature=2.0)
    assert max(max(r.tokens) for r in results + sampled) < VOCAB


def test_bf16_model_and_training_mode_are_handled(pair):
    _, ours = pair
    model = GPT(ours.config)
    model.load_state_dict(ours.state_dict())
    model = model.to(torch.bfloat16).train()
    results = generate(model, PROMPTS, 8, greedy=True)
    assert all(len(r.tokens) == 8 for r in results)
    assert model.training  # restored after generating in eval mode


@pytest.mark.parametrize(
    "prompts, kwargs, message",
    [
        ([[1] * 64], {}, "prompt 0 has 64 tokens; the context holds 64"),
        ([[1], []], {}, "prompt 1 is empty"),
        ([[VOCAB]], {}, r"prompt 0 has token ids outside \[0, 300\)"),
        ([[1]], {"top_p": 0.0}, "top_p must be in"),
        ([[1]], {"top_k": 0}, "top_k must be >= 1"),
        ([[1]], {"temperature": -1.0}, "temperature must be >= 0"),
        ([[1]], {"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ],
)
def test_bad_input_is_one_line(pair, prompts, kwargs, message):
    _, ours = pair
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=message) as err:
        generate(ours, prompts, **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "cuda, bf16, asked, expected",
    [
        (False, False, ("auto", "auto"), ("cpu", torch.float32)),
        (True, True, ("auto", "auto"), ("cuda", torch.bfloat16)),
        (True, False, ("auto", "auto"), ("cuda", torch.float32)),  # a GPU without bf16
        (True, True, ("cpu", "auto"), ("cpu", torch.float32)),  # a GPU host asked for CPU
        (False, False, ("cpu", "bf16"), ("cpu", torch.bfloat16)),
        (True, True, ("cuda:1", "fp16"), ("cuda:1", torch.float16)),
    ],
)
def test_device_and_dtype_for_generation(monkeypatch, cuda, bf16, asked, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    device, dtype = inference_placement(*asked)
    assert (str(device), dtype) == expected


@pytest.mark.parametrize(
    "cuda, bf16, asked, setting, message",
    [
        (False, False, ("cpu", "fp16"), "dtype", "dtype 'fp16' needs a CUDA device, not cpu"),
        (False, False, ("auto", "fp16"), "dtype", "dtype 'fp16' needs a CUDA device"),
        (False, False, ("cuda", "auto"), "device", "device 'cuda': torch sees no CUDA device"),
        (True, False, ("cuda", "bf16"), "dtype", "dtype 'bf16': this CUDA device lacks it"),
        (False, False, ("gpu", "auto"), "device", "device 'gpu': not a torch device"),
        (False, False, ("cpu", "int8"), "dtype", "dtype 'int8': expected auto, fp32, bf16, fp16"),
    ],
)
def test_device_and_dtype_that_cannot_run_name_their_setting(
    monkeypatch, cuda, bf16, asked, setting, message
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16)
    with pytest.raises(PlacementError, match=f"^{message}") as err:
        inference_placement(*asked)
    assert err.value.setting == setting and "\n" not in str(err.value)
