"""DeepSpeed ZeRO stages 0-3 (and offload, and bf16) train the tiny model on 2 CPU workers.

One TorchTrainer run trains every variant in turn inside its worker function, with the loop's own
building blocks (make_engine, train_step, consolidated_weights) on the real shards, and rank 0 writes
each variant's loss curve and consolidated weights for the test to compare.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipelines.config import LoopConfig
from pipelines.errors import UserError
from pipelines.training.deepspeed import check_combination, deepspeed_config

ROOT = Path(__file__).resolve().parents[1]

STEPS = 20
BF16_STEPS = 12  # enough to show it trains along the fp32 curve
# name -> LoopConfig overrides; "zero0" is the reference every fp32 variant must match.
VARIANTS = {
    "zero0": {"zero_stage": 0},
    "zero1": {"zero_stage": 1},
    "zero2": {"zero_stage": 2},
    "zero3": {"zero_stage": 3},
    "zero2_offload_optimizer": {"zero_stage": 2, "offload_optimizer": True},
    "zero3_offload_params": {"zero_stage": 3, "offload_optimizer": True, "offload_params": True},
    "zero2_bf16": {"zero_stage": 2, "precision": "bf16"},
    "zero3_bf16": {"zero_stage": 3, "precision": "bf16"},
    "zero1_bf16": {"zero_stage": 1, "precision": "bf16"},  # DeepSpeed's BF16_Optimizer (fp32 masters)
    "lora_zero2_bf16": {"zero_stage": 2, "precision": "bf16"},  # with LORA: frozen base weights
}
LORA = {"lora_zero2_bf16"}


def train_variants(config: dict) -> None:
    """Ray Train worker: each variant from the same seed, STEPS steps; rank 0 saves the results."""
    import ray.train
    import ray.train.torch
    from safetensors.torch import save_file

    from gpt2core.lora import LoraConfig
    from pipelines.training.engine import LoopSpec, consolidated_weights, make_engine, train_step
    from pipelines.training.task import PretrainTask

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    task: PretrainTask = config["task"]
    results = {}
    for name, overrides in VARIANTS.items():
        loop = LoopConfig(**{**config["loop"], **overrides})
        lora = LoraConfig(rank=4) if name in LORA else None
        spec = LoopSpec(loop=loop, gpt=config["gpt"], task=task, lora=lora)
        engine, choice = make_engine(spec, world, device)
        source = task.train_source(rank, world, config["gpt"]["block_size"], loop.seed)
        losses, norms = [], []
        for _ in range(BF16_STEPS if loop.precision == "bf16" else STEPS):
            loss, norm, _ = train_step(engine, source, loop.micro_batch_size, loop.lr, device)
            losses.append(loss)
            norms.append(norm)
        weights = consolidated_weights(engine, spec, rank)
        if rank == 0:
            save_file(weights, f"{config['out']}/{name}.safetensors")
            results[name] = {"losses": losses, "norms": norms, "precision": choice.precision}
    if rank == 0:
        with open(f"{config['out']}/results.json", "w") as f:
            json.dump(results, f)


@pytest.fixture(scope="module")
def variants(prepared_workspace, ray_module, tmp_path_factory):
    import sys

    from ray import cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from gpt2core.config import preset
    from pipelines.training.task import PretrainTask

    out = tmp_path_factory.mktemp("zero")
    pw = prepared_workspace
    loop = {"num_workers": 2, "micro_batch_size": 4, "global_batch_size": 16, "lr": 3e-3, "precision": "fp32"}
    task = PretrainTask(str(pw.shards_dir), str(pw.tokenizer_dir), pw.tokenizer_sha256, 512)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import test modules
    TorchTrainer(
        train_variants,
        train_loop_config={
            "loop": loop,
            "gpt": preset("tiny", 512, block_size=64).to_dict(),
            "task": task,
            "out": str(out),
        },
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name="zero-variants", storage_path=str(out / "ray")),
    ).fit()
    results = json.loads((out / "results.json").read_text())
    weights = {name: load_file(str(out / f"{name}.safetensors")) for name in VARIANTS}
    return results, weights


@pytest.mark.slow
def test_zero_stages_0_to_3_train_with_the_same_loss_curve(variants):
    results, _ = variants
    reference = results["zero0"]["losses"]
    assert reference[-1] < reference[0] - 0.5  # it learns
    for name in ("zero1", "zero2", "zero3"):
        diffs = [abs(a - b) for a, b in zip(results[name]["losses"], reference)]
        assert max(diffs) < 1e-3, (name, max(diffs))


@pytest.mark.slow
def test_grad_norm_is_reported_for_every_stage_and_agrees(variants):
    results, _ = variants
    reference = results["zero0"]["norms"]
    assert all(n is not None and n > 0 for n in reference)
    for name in ("zero1", "zero2", "zero3"):
        assert max(abs(a - b) / b for a, b in zip(results[name]["norms"], reference)) < 1e-3, name


@pytest.mark.slow
def test_consolidated_weights_agree_across_stages_including_zero3(variants):
    from gpt2core.config import preset
    from gpt2core.model import GPT

    _, weights = variants
    reference = weights["zero0"]
    for name in ("zero1", "zero2", "zero3", "zero2_offload_optimizer", "zero3_offload_params"):
        assert weights[name].keys() == reference.keys(), name
        for key, tensor in reference.items():
            assert weights[name][key].shape == tensor.shape, (name, key)
            assert weights[name][key].dtype == torch.float32
            assert torch.allclose(weights[name][key], tensor, atol=1e-4), (name, key)
    # the weights are the trained ones, not the (seeded, identical on every rank) initialisation
    torch.manual_seed(LoopConfig().seed)
    initial = GPT(preset("tiny", 512, block_size=64)).state_dict()
    for name in ("zero0", "zero3"):
        assert not torch.allclose(
            weights[name]["transformer.h.0.mlp.c_fc.weight"], initial["transformer.h.0.mlp.c_fc.weight"]
        )


@pytest.mark.slow
def test_optimizer_and_parameter_offload_train_like_zero0(variants):
    results, _ = variants
    reference = results["zero0"]["losses"]
    for name in ("zero2_offload_optimizer", "zero3_offload_params"):
        losses = results[name]["losses"]
        assert len(losses) == STEPS and losses[-1] < losses[0] - 0.5, name
        # DeepSpeed's CPU Adam is another AdamW implementation: the same curve to rounding
        assert max(abs(a - b) for a, b in zip(losses, reference)) < 1e-3, name


@pytest.mark.slow
def test_bf16_trains_on_cpu_at_every_zero_stage_it_is_allowed(variants):
    results, _ = variants
    reference = results["zero0"]["losses"]
    for name in ("zero1_bf16", "zero2_bf16", "zero3_bf16"):  # zero_stage 0: refused in bf16 (test_config)
        assert results[name]["precision"] == "bf16", name
        losses = results[name]["losses"]
        assert losses[-1] < losses[0] - 0.5, name
        assert max(abs(a - b) for a, b in zip(losses, reference)) < 0.1, name  # bf16 rounding, same path


@pytest.mark.slow
def test_lora_in_bf16_exports_the_fp32_base_weights_unrounded(variants):
    from gpt2core.config import preset
    from gpt2core.model import GPT

    results, weights = variants
    assert results["lora_zero2_bf16"]["precision"] == "bf16"
    torch.manual_seed(LoopConfig().seed)
    initial = GPT(preset("tiny", 512, block_size=64)).state_dict()
    exported = weights["lora_zero2_bf16"]
    base = exported["transformer.h.0.mlp.c_fc.base.weight"]
    assert base.dtype == torch.float32 and torch.equal(base, initial["transformer.h.0.mlp.c_fc.weight"])
    assert not torch.equal(base, base.bfloat16().float())  # what the bf16 module copy would give
    assert exported["transformer.h.0.mlp.c_fc.lora_B"].abs().sum() > 0  # the adapters did train


def test_tf32_is_allowed_for_fp32_matmuls_on_cuda_only():
    from pipelines.training.engine import allow_tf32

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.allow_tf32, cudnn.allow_tf32  # torch's own switches: no monkeypatch can undo them
    try:
        matmul.allow_tf32 = cudnn.allow_tf32 = False
        allow_tf32("cpu")
        assert not matmul.allow_tf32 and not cudnn.allow_tf32
        allow_tf32("cuda")
        assert matmul.allow_tf32 and cudnn.allow_tf32
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = before


# --- the generated DeepSpeed config (no workers) -------------------------------------------------
def loop(**overrides) -> LoopConfig:
    return LoopConfig(**{"num_workers": 2, "micro_batch_size": 4, "global_batch_size": 32, **overrides})


def test_deepspeed_config_follows_ours():
    config = deepspeed_config(
        loop(zero_stage=3, offload_optimizer=True, offload_params=True, grad_clip=0.5), 2, "bf16", "cuda"
    )
    assert config["train_batch_size"] == 32
    assert config["train_micro_batch_size_per_gpu"] == 4
    assert config["gradient_accumulation_steps"] == 4  # 32 / (4 * 2)
    assert config["gradient_clipping"] == 0.5
    assert config["zero_optimization"]["stage"] == 3
    assert config["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert config["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": True}
    assert config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    assert config["data_types"] == {"grad_accum_dtype": "fp32"}  # ZeRO adds bf16 gradients in fp32
    plain = deepspeed_config(loop(zero_stage=0), 2, "fp32", "cpu")
    assert plain["zero_optimization"] == {"stage": 0}
    assert not plain["bf16"]["enabled"] and not plain["fp16"]["enabled"]
    assert deepspeed_config(loop(), 4, "fp32", "cpu")["gradient_accumulation_steps"] == 2


def deepspeeds_optimizer_path(config: dict) -> str | None:
    """DeepSpeed's own choice of optimizer wrapper for a config (its engine's sanity check, run on a
    bare engine holding only the parsed config): raises where initialize() would, for every rank."""
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.runtime.engine import DeepSpeedEngine

    engine = object.__new__(DeepSpeedEngine)  # no __init__: no process group, no model
    for key, value in {
        "_config": DeepSpeedConfig(config),
        "global_rank": 0,
        "pipeline_parallelism": False,
    }.items():
        object.__setattr__(engine, key, value)
    return engine._do_optimizer_sanity_check(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))]))


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_every_stage_and_precision_is_refused_up_front_or_accepted_by_deepspeed(
    zero_stage, precision, device
):
    settings = dict(zero_stage=zero_stage, precision=precision, use_gpu=device == "cuda", num_workers=1)
    if precision == "bf16" and zero_stage == 0:  # DeepSpeed would step bf16 weights, no fp32 masters
        with pytest.raises(ValueError, match="without fp32 master weights"):
            loop(**settings)
        return
    cfg = loop(**settings)
    if precision == "fp16" and device == "cpu":
        with pytest.raises(UserError, match=r"train\.precision"):
            check_combination(cfg)
        return
    check_combination(cfg)
    config = deepspeed_config(cfg, 1, precision, device)
    if zero_stage == 0:  # DeepSpeed's own decision
        assert deepspeeds_optimizer_path(config) == {"fp32": None, "fp16": "fp16"}[precision]
    elif precision == "bf16":  # ZeRO adds bf16 micro-batch gradients into fp32 (its masters)
        assert config["data_types"] == {"grad_accum_dtype": "fp32"}


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"offload_params": True, "zero_stage": 2}, "train.offload_params"),
        ({"offload_optimizer": True, "zero_stage": 0}, "train.offload_optimizer"),
        ({"precision": "fp16"}, "train.precision"),
    ],
)
def test_combinations_deepspeed_rejects_are_one_line_errors(overrides, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as info:
        check_combination(loop(**overrides))
    assert "\n" not in str(info.value)


ENGINE_START = """
import os, sys, torch
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
torch.distributed.init_process_group("gloo")
from pipelines.config import LoopConfig
from pipelines.training.engine import LoopSpec, make_engine
gpt = {"vocab_size": 64, "n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 8}
loop = LoopConfig(num_workers=1, zero_stage=1, precision="bf16", micro_batch_size=2, global_batch_size=2)
engine, choice = make_engine(LoopSpec(loop=loop, gpt=gpt, task=None), 1, torch.device("cpu"))
print("optimizer:", type(engine.optimizer).__name__)
"""


def test_deepspeeds_bf16_optimizer_starts_without_its_memory_reports():
    """engine.lighten_deepspeed_start: DeepSpeed's bf16 optimizer would print memory reports, each
    after a full garbage collection (1.8 s of a demo worker's start)."""
    from pipelines.runtime.ray import free_port

    done = subprocess.run(
        [sys.executable, "-c", ENGINE_START, str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "optimizer: BF16_Optimizer" in done.stdout  # the path the memory reports were on
    assert "begin bf16_optimizer" not in done.stdout and "CPU Virtual Memory" not in done.stdout
