"""gpt2core's GPT-2 held against transformers' GPT2LMHeadModel (the llm.c habit), plus its own
properties: config validation, padding, init, activation checkpointing, bf16, optimizer helpers,
FLOPs, and the no-Ray/no-MLflow rule."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from gpt2_reference import VOCAB, hf_and_gpt2core, make_hf_model, random_batch

from gpt2core.config import PRESETS, GPTConfig, preset
from gpt2core.flops import flops_per_token, measure_peak_flops, mfu
from gpt2core.hf import load_hf_model
from gpt2core.model import GPT
from gpt2core.optim import lr_at, param_groups

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same random weights as a transformers model and as a gpt2core model."""
    return hf_and_gpt2core(tmp_path_factory.mktemp("hf"), seed=0)


def tiny(**overrides) -> GPTConfig:
    return preset("tiny", VOCAB, **overrides)


# --- equivalence with transformers ------------------------------------------------------------


def test_logits_match_transformers_fp32(pair):
    hf, ours = pair
    idx = random_batch(3, 50)
    with torch.no_grad():
        expected = hf(idx).logits
        logits, loss = ours(idx)
    assert loss is None
    assert logits.shape == expected.shape == (3, 50, VOCAB)
    assert (logits - expected).abs().max().item() < 1e-5


def test_loss_matches_transformers_with_ignored_targets(pair):
    hf, ours = pair
    idx = random_batch(2, 40, seed=1)
    labels = idx.clone()
    labels[0, :15] = -100  # a prompt masked out, as fine-tuning does
    with torch.no_grad():
        expected = hf(idx, labels=labels).loss
        # HF shifts internally; gpt2core takes targets already shifted (the next token at each place).
        targets = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], dim=1)
        _, loss = ours(idx, targets)
    assert abs(loss.item() - expected.item()) < 1e-5


def test_ten_adamw_steps_follow_the_same_loss_curve(tmp_path):
    hf = make_hf_model(seed=3).train()
    hf.save_pretrained(tmp_path)
    ours = load_hf_model(tmp_path).train()
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=1e-3, weight_decay=0.1)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-3, weight_decay=0.1)
    curves = ([], [])
    idx = random_batch(4, 32, seed=100)  # one batch, memorised: the loss must fall
    for _ in range(10):
        loss_hf = hf(idx, labels=idx).loss
        _, loss_ours = ours(idx[:, :-1], idx[:, 1:])
        for loss, opt, curve in ((loss_hf, opt_hf, curves[0]), (loss_ours, opt_ours, curves[1])):
            opt.zero_grad()
            loss.backward()
            opt.step()
            curve.append(loss.item())
    assert curves[0][-1] < curves[0][0]  # it trained, so the curve is a real comparison
    assert max(abs(a - b) for a, b in zip(*curves)) < 1e-4


# --- the model's own properties ---------------------------------------------------------------


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="n_embd=100 is not divisible by n_head=3") as err:
        GPTConfig(vocab_size=10, n_layer=1, n_head=3, n_embd=100, block_size=8)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown model preset"):
        preset("gpt5", 100)
    with pytest.raises(ValueError, match="vocab_size"):
        preset("tiny", 0)
    with pytest.raises(ValueError, match="unknown keys"):
        GPTConfig.from_dict({**tiny().to_dict(), "n_ctx": 5})
    cfg = preset("gpt2", 50257, block_size=256, n_layer=None)
    assert (cfg.n_layer, cfg.block_size, cfg.padded_vocab_size) == (12, 256, 50304)
    assert GPTConfig.from_dict(cfg.to_dict()) == cfg
    assert set(PRESETS) == {"tiny", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"}


def test_parameter_counts_match_transformers():
    from transformers import GPT2Config, GPT2LMHeadModel

    for name in ("gpt2", "gpt2-medium"):
        cfg = preset(name, 50257)
        with torch.device("meta"):
            ours = GPT(cfg)
            hf = GPT2LMHeadModel(
                GPT2Config(
                    vocab_size=50257,
                    n_positions=1024,
                    n_embd=cfg.n_embd,
                    n_layer=cfg.n_layer,
                    n_head=cfg.n_head,
                )
            )
        padding = (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd
        assert ours.num_params() - padding == hf.num_parameters()
    assert ours.num_params(exclude_position_embeddings=True) == ours.num_params() - 1024 * cfg.n_embd


def test_gpt2_initialisation_and_weight_tying():
    torch.manual_seed(0)
    cfg = preset("tiny", VOCAB, n_layer=8, n_embd=128)
    model = GPT(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight
    blocks = model.transformer.h
    proj_std = torch.cat([b.attn.c_proj.weight.flatten() for b in blocks]).std().item()
    fc_std = torch.cat([b.mlp.c_fc.weight.flatten() for b in blocks]).std().item()
    assert math.isclose(proj_std, 0.02 / math.sqrt(2 * cfg.n_layer), rel_tol=0.05)
    assert math.isclose(fc_std, 0.02, rel_tol=0.05)
    assert all((b.attn.c_attn.bias == 0).all() for b in blocks)
    assert (model.transformer.wte.weight[VOCAB:] == 0).all()


def test_padding_logits_never_win():
    model = GPT(tiny()).eval()
    with torch.no_grad():  # make the padding rows the best match for every final hidden state
        model.transformer.ln_f.bias.fill_(1.0)
        model.transformer.wte.weight[VOCAB:] = 10.0
    idx = random_batch(2, 16)
    with torch.no_grad():
        logits, _ = model(idx)
        _, loss = model(idx, idx)
        padded = torch.nn.Linear.forward(model.lm_head, model.transformer.ln_f(torch.randn(2, 16, 64)))
    assert padded.argmax(-1).min() >= VOCAB  # unmasked, the padding columns would win everywhere
    assert logits.shape[-1] == VOCAB
    reference = F.cross_entropy(logits.reshape(-1, VOCAB), idx.reshape(-1))
    assert torch.isfinite(loss) and abs(loss.item() - reference.item()) < 1e-4


def test_chunked_loss_gradients_match_plain_cross_entropy():
    from gpt2core.loss import linear_cross_entropy

    gen = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=gen, requires_grad=True)
    w = torch.randn(64, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 50, (37,), generator=gen)
    targets[::4] = -100
    loss = linear_cross_entropy(h, w, targets, vocab_size=50, chunk_rows=5)  # uneven chunks
    loss.backward()
    grads = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    reference = F.cross_entropy((h @ w.t())[:, :50], targets)
    reference.backward()
    assert abs(loss.item() - reference.item()) < 1e-5
    assert torch.allclose(grads[0], h.grad, atol=1e-6)
    assert torch.allclose(grads[1], w.grad, atol=1e-6)
    everything_ignored = linear_cross_entropy(h, w, torch.full((37,), -100), 50)
    assert everything_ignored.item() == 0.0


# 2**16 is DeepSpeed's first fp16 loss scale here (initial_scale_power=16), 2**15 its first halving.
@pytest.mark.parametrize("scale", [2.0**15, 2.0**16])
def test_fp16_loss_scale_reaches_the_chunked_loss_gradients(scale):
    """DeepSpeed's fp16 path: fp16 weights and activations, (loss * scale).backward(). The mean over
    16k tokens puts the head's gradients near 1e-6, below fp16's normal range (6e-5): unless the
    scale applies before the cast to fp16 they come back as subnormal noise (defect 4), and the
    scale itself must not pass through fp16 (2**16 is inf there)."""
    from gpt2core.loss import linear_cross_entropy

    gen = torch.Generator().manual_seed(0)
    n, n_embd, vocab = 16 * 1024, 64, 512
    h = torch.randn(n, n_embd, generator=gen).half().requires_grad_()
    w = (0.02 * torch.randn(vocab, n_embd, generator=gen)).half().requires_grad_()  # GPT-2's init
    targets = torch.randint(0, vocab, (n,), generator=gen)
    targets[::7] = -100
    (linear_cross_entropy(h, w, targets, vocab) * scale).backward()
    # The reference: the same fp16-rounded values, in fp32 throughout.
    h32, w32 = (t.detach().float().requires_grad_() for t in (h, w))
    F.cross_entropy(h32 @ w32.t(), targets).backward()
    assert h.grad.dtype == w.grad.dtype == torch.float16
    for grad, reference in ((h.grad, h32.grad), (w.grad, w32.grad)):
        error = (grad.float() / scale - reference).norm() / reference.norm()
        assert error < 2e-3  # fp16's own rounding is 5e-4 relative; flushed subnormals cost 1e-2 and more


def test_chunk_rows_follow_the_device():
    from gpt2core.loss import LOGITS_PER_CHUNK, chunk_rows_for

    micro_batch, vocab = 16 * 1024, 50304  # 16 x 1024 tokens at GPT-2's padded vocabulary
    cuda = chunk_rows_for("cuda", micro_batch, vocab)
    cpu = chunk_rows_for("cpu", micro_batch, vocab)
    assert (cuda, math.ceil(micro_batch / cuda)) == (4096, 4)  # 4 equal chunks of 2.1 GB scratch
    assert math.ceil(micro_batch / cpu) == 50 and cpu * vocab <= LOGITS_PER_CHUNK["cpu"]
    assert chunk_rows_for("mps", micro_batch, vocab) == cpu  # unknown devices: the small budget
    assert chunk_rows_for("cuda", 100, vocab) == 100  # one chunk when everything fits
    assert chunk_rows_for("cpu", 1000, 10**7) == 16  # a huge vocabulary still takes 16 rows a chunk
    assert chunk_rows_for("cpu", 0, vocab) >= 1  # an empty batch never makes a zero-step range


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = GPT(tiny(dropout=0.1)).train()
    recomputed = GPT(tiny(dropout=0.1, activation_checkpointing=True)).train()
    recomputed.load_state_dict(plain.state_dict())
    idx = random_batch(2, 32)
    grads = []
    for model in (plain, recomputed):
        torch.manual_seed(7)  # same dropout masks; checkpointing replays the RNG state
        _, loss = model(idx, idx)
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-6), name


def test_bf16_autocast_is_close_to_fp32_and_trains():
    torch.manual_seed(0)
    model = GPT(tiny()).train()
    idx = random_batch(4, 64)
    _, loss32 = model(idx, idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(idx)
        _, loss16 = model(idx, idx)
    assert logits.dtype == torch.bfloat16
    assert loss16.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) < 2e-2
    loss16.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.lm_head.weight.grad.dtype == torch.float32


def test_sequence_longer_than_context_is_refused():
    model = GPT(tiny(block_size=16))
    with pytest.raises(ValueError, match="exceeds block_size=16"):
        model(random_batch(1, 17))


def test_compiled_blocks_give_the_same_logits():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    idx = random_batch(2, 16)
    with torch.no_grad():
        expected, _ = model(idx)
        # Graph capture without graph breaks is what this code controls; inductor's C++ build (a
        # minute on two cores) is torch's business, so the eager-AOT backend stands in for it.
        model.compile_blocks(backend="aot_eager", fullgraph=True)
        actual, _ = model(idx)
    assert torch.allclose(actual, expected, atol=1e-5)


# --- optimizer helpers and FLOPs --------------------------------------------------------------


def test_param_groups_decay_only_matmul_weights():
    model = GPT(tiny())
    decay, no_decay = param_groups(model, weight_decay=0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed == {
        n for n in names.values() if n.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
    }
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert model.transformer.wte.weight in no_decay["params"]


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, max_lr=1.0, warmup_steps=10, max_steps=100, min_lr_ratio=0.1) for s in range(120)]
    assert lrs[:10] == sorted(lrs[:10]) and lrs[9] == 1.0
    assert all(a >= b for a, b in zip(lrs[10:100], lrs[11:101]))
    assert abs(lrs[55] - 0.55) < 1e-9  # the cosine's midpoint sits halfway between max and min
    assert lrs[100] == lrs[119] == pytest.approx(0.1)


def test_flops_per_token_matches_the_flop_counter():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = preset("tiny", 256)  # a multiple of 64: no padding columns that the counter would count
    model = GPT(cfg)
    idx = random_batch(2, 32, vocab=256)
    # The math backend runs attention as matmuls, which the counter sees (fused CPU kernels it does not).
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(idx)
    assert counter.get_total_flops() / idx.numel() == flops_per_token(cfg, 32, training=False)
    assert flops_per_token(cfg, 32) == 3 * flops_per_token(cfg, 32, training=False)


def test_peak_and_mfu():
    peak = measure_peak_flops(size=256, repeats=2)
    assert peak > 1e8
    assert mfu(tokens_per_second=peak / 100, flops_per_token_=50, peak_flops=peak) == pytest.approx(0.5)


# --- layering ---------------------------------------------------------------------------------


def test_gpt2core_imports_no_platform_code():
    forbidden = {"ray", "mlflow", "pipelines", "transformers"}
    for path in sorted((ROOT / "gpt2core").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            assert not {n.split(".")[0] for n in names} & forbidden, f"{path.name} imports {names}"
    modules = [p.stem for p in (ROOT / "gpt2core").glob("*.py") if p.stem != "__init__"]
    code = (
        "import sys, importlib\n"
        f"for m in {modules!r}: importlib.import_module('gpt2core.' + m)\n"
        f"print(sorted(m for m in {sorted(forbidden)!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
