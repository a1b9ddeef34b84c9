"""What a training worker builds and runs, one piece each: the model (fresh or from a model
directory, LoRA, compile), AdamW, the DeepSpeed engine on Ray's process group, one optimizer step,
an evaluation, the full fp32 weights (any ZeRO stage) and the consolidated model directory.
The loop (loop.py) strings them together; tests and benchmarks use them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from pipelines.config import LoopConfig
from pipelines.core.cache import DirRef, as_local
from pipelines.core.faults import FaultHook

if TYPE_CHECKING:
    from gpt2core.lora import LoraConfig
    from pipelines.training.precision import Choice
    from pipelines.training.task import Task


@dataclass
class LoopSpec:
    """Everything a worker needs; built by the launcher, pickled by Ray to every worker."""

    loop: LoopConfig
    gpt: dict[str, Any]  # gpt2core GPTConfig fields (vocab and architecture resolved)
    task: Task
    init_model_dir: str | DirRef | None = None  # initial weights (model directory); None = GPT-2 init
    compile: bool = False
    tracking_uri: str | None = None
    mlflow_run_id: str | None = None
    params: dict[str, str] = field(default_factory=dict)  # logged by rank 0 when the run starts fresh
    fault: FaultHook | None = None
    label: str = "pretrain"
    section: str = "train"  # the config section, for one-line errors naming its keys
    lora: LoraConfig | None = None  # train only low-rank adapters, merged into the export
    early_stop_patience: int = 0  # evaluations without a better val loss before stopping; 0 = never
    async_upload: bool = False  # object-store storage: upload checkpoints while training goes on


def build_model(spec: LoopSpec):
    """The GPT on CPU: GPT-2 init from the seed (identical on every rank), or the init weights."""
    import torch
    from safetensors.torch import load_file

    from gpt2core.checkpoint import WEIGHTS_FILE, build_model
    from gpt2core.config import GPTConfig
    from gpt2core.model import GPT

    torch.manual_seed(spec.loop.seed)
    config = GPTConfig.from_dict(spec.gpt)
    if spec.init_model_dir is None:
        model = GPT(config)
    else:
        weights = Path(as_local(spec.init_model_dir)) / WEIGHTS_FILE
        model = build_model(config, load_file(str(weights)), weights).float()
    if spec.lora is not None:
        from gpt2core.lora import apply_lora

        model = apply_lora(model, spec.lora)
    return model.compile_blocks() if spec.compile else model


def make_optimizer(model, loop: LoopConfig):
    """AdamW on gpt2core's decay / no-decay groups; DeepSpeed's CPU Adam when the optimizer is offloaded."""
    import torch

    from gpt2core.optim import param_groups

    groups = param_groups(model, loop.weight_decay)
    betas = (loop.beta1, loop.beta2)
    if loop.offload_optimizer:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=loop.lr, betas=betas, eps=1e-8, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=loop.lr, betas=betas, eps=1e-8)


def allow_tf32(device_type: str) -> None:
    """fp32 matmuls and convolutions on TF32 tensor cores (Ampere and later): ~8x the fp32 rate at
    a 10-bit mantissa, which training tolerates (nanoGPT, torchtitan do the same). Off on CPU."""
    import torch

    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def lighten_deepspeed_start() -> None:
    """DeepSpeed's bf16 optimizer reports memory at 6 points of its set-up, each after a full
    gc.collect(): 1.8 s of rank 0's 5.8 s in deepspeed.initialize on the demo model (bench_fixed_cost),
    for 30 lines in the worker log. The report is replaced by nothing; tests/test_train_zero.py checks
    that the name still exists in the installed DeepSpeed and that the set-up stays quiet."""
    import deepspeed.runtime.bf16_optimizer as bf16_optimizer

    assert callable(bf16_optimizer.see_memory_usage)  # the name this replaces
    bf16_optimizer.see_memory_usage = lambda message, force=False: None


def make_engine(spec: LoopSpec, world_size: int, device) -> tuple[Any, Choice]:
    """(DeepSpeed engine, the precision chosen and why). deepspeed.initialize finds Ray's process
    group already initialised and uses it (gloo on CPU, NCCL on GPUs)."""
    import deepspeed

    from pipelines.training.deepspeed import deepspeed_config
    from pipelines.training.precision import resolve

    loop = spec.loop
    choice = resolve(
        loop.precision,
        loop.zero_stage,
        device,
        spec.gpt["n_embd"],
        loop.micro_batch_size * spec.gpt["block_size"],
    )
    precision = choice.precision
    allow_tf32(device.type)
    config = deepspeed_config(spec.loop, world_size, precision, device.type)
    model = build_model(spec)
    optimizer = make_optimizer(model, spec.loop)  # before partitioning: the groups go by parameter shape
    if spec.loop.zero_stage == 3:
        # Partition on the host, a parameter at a time: handed over whole, DeepSpeed would first move
        # the full model to the device, which a model that needs ZeRO-3 (or param offload) may not fit.
        deepspeed.zero.Init(module=model, config_dict_or_path=config)
    else:
        model = model.to(device)
    lighten_deepspeed_start()
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine, choice


class StepResult(NamedTuple):
    loss: float  # averaged over micro-batches and ranks
    grad_norm: float | None
    data_digest: int  # this rank's share of the step's data digest (gpt2core.data.batch_digest)


def train_step(engine, source, micro_batch_size: int, lr: float, device) -> StepResult:
    """One optimizer step over all micro-batches."""
    import torch

    from gpt2core.data import batch_digest

    for group in engine.optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), dtype=torch.float32, device=device)
    digest = torch.zeros((), dtype=torch.int64, device=device)
    steps = engine.gradient_accumulation_steps()
    norm = None
    for micro in range(steps):
        x, y = source.next_batch(micro_batch_size)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        digest += batch_digest(x)
        _, loss = engine(x, y)
        engine.backward(loss)
        total += loss.detach().float()
        if micro == steps - 1 and engine.zero_optimization_stage() == 0:
            norm = _unreduced_grad_norm(engine)  # stage 0 keeps full, already all-reduced gradients
        engine.step()
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
        total /= torch.distributed.get_world_size()
    ds_norm = engine.get_global_grad_norm()
    norm = float(ds_norm) if ds_norm is not None else norm
    return StepResult(float(total) / steps, norm, int(digest))


def _unreduced_grad_norm(engine) -> float | None:
    import torch

    grads = [p.grad.detach().float().norm() for p in engine.module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(grads))) if grads else None


def full_state_dict(engine, rank: int) -> dict[str, Any]:
    """Collective: the full fp32 weights on rank 0 (empty elsewhere), whatever the ZeRO stage.

    DeepSpeed assembles each parameter's fp32 master copy across the ranks' partitions; without a
    master copy (ZeRO 0 in fp32) the module parameter is the full weight."""
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, param in engine.module.named_parameters():
        full = safe_get_full_fp32_param(param)
        if rank == 0:
            tensor = full if full is not None else param
            state[name] = tensor.detach().float().cpu().clone()
    return state


def consolidated_weights(engine, spec: LoopSpec, rank: int) -> dict[str, Any]:
    """Collective: full_state_dict, with the frozen parameters (LoRA's base weights) from their fp32
    source. In bf16/fp16 the engine holds a frozen parameter in that dtype only - nothing trains it,
    so there is no fp32 master to gather - and exporting it would round the base model. Frozen means
    unchanged since build_model, so rank 0 rebuilds them from there, bit for bit."""
    import torch

    state = full_state_dict(engine, rank)
    frozen = [name for name, p in engine.module.named_parameters() if not p.requires_grad]
    if rank == 0 and frozen:
        with torch.random.fork_rng(devices=[]):  # build_model reseeds: keep this process's RNG as it was
            source = dict(build_model(spec).named_parameters())
        state.update({name: source[name].detach().float().clone() for name in frozen})
    return state


def eval_windows(loop: LoopConfig) -> int:
    """How many val windows (or rows) an evaluation covers: eval_batches global batches. Not a
    function of the world size, so a run resumed on other workers (or an elastic one) keeps one val
    curve; the champion gate evaluates the same windows."""
    return loop.eval_batches * loop.global_batch_size


def evaluate_engine(engine, spec: LoopSpec, rank: int, world_size: int, device, tokens_per_byte):
    import torch

    from gpt2core.evaluate import evaluate, model_loss_fn

    loop = spec.loop
    batches = spec.task.eval_batches(
        rank, world_size, spec.gpt["block_size"], loop.micro_batch_size, eval_windows(loop)
    )
    engine.eval()
    try:
        return evaluate(
            model_loss_fn(engine), batches, tokens_per_byte, device, torch.distributed.is_initialized()
        )
    finally:
        engine.train()


MODEL_DIR = "model"  # inside the final checkpoint: the consolidated model, as models/<run>/ gets it


def write_model(state_dict: dict[str, Any], spec: LoopSpec, target: str | Path) -> None:
    """config.json + model.safetensors + the tokenizer files into `target`."""
    from gpt2core.checkpoint import save_state_dict
    from gpt2core.config import GPTConfig
    from gpt2core.tokenizer import load_tokenizer

    if spec.lora is not None:
        from gpt2core.lora import merged_state_dict

        state_dict = merged_state_dict(state_dict, spec.lora)
    save_state_dict(state_dict, GPTConfig.from_dict(spec.gpt), target)
    load_tokenizer(as_local(spec.task.tokenizer_dir)).save_to(target)
