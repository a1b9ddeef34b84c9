"""The DeepSpeed config, generated from ours (LoopConfig): one place that knows DeepSpeed's keys.

Pure Python (no torch import): the launcher validates the combination before any worker starts, and
each worker builds the same dict for its device.
"""

from __future__ import annotations

from typing import Any

from pipelines.config import LoopConfig
from pipelines.errors import UserError

# Never let DeepSpeed print its own per-step lines: rank 0 prints ours.
_QUIET_STEPS = 10**9


def check_combination(loop: LoopConfig, section: str = "train") -> None:
    """One-line UserErrors for combinations DeepSpeed would reject (or accept and then misbehave)."""
    if loop.offload_params and loop.zero_stage != 3:
        raise UserError(
            f"config key '{section}.offload_params' needs {section}.zero_stage=3 (got {loop.zero_stage})"
        )
    if loop.offload_optimizer and loop.zero_stage == 0:
        raise UserError(f"config key '{section}.offload_optimizer' needs {section}.zero_stage >= 1")
    if loop.precision == "fp16" and not loop.use_gpu:
        raise UserError(
            f"config key '{section}.precision': fp16 needs GPUs ({section}.use_gpu=true); use fp32 or bf16"
        )


def gradient_accumulation_steps(loop: LoopConfig, world_size: int) -> int:
    return loop.global_batch_size // (loop.micro_batch_size * world_size)


def deepspeed_config(loop: LoopConfig, world_size: int, precision: str, device_type: str) -> dict[str, Any]:
    """The dict for `deepspeed.initialize(config=...)`; precision is already resolved (fp32/bf16/fp16)."""
    cuda = device_type == "cuda"
    zero: dict[str, Any] = {"stage": loop.zero_stage}
    if loop.zero_stage:
        zero.update(
            contiguous_gradients=True,
            overlap_comm=cuda,  # overlapping needs a second stream; on CPU it only costs memory
            reduce_bucket_size=int(5e7),
        )
    if loop.zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    if loop.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    if loop.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cuda}
    config: dict[str, Any] = {
        "train_batch_size": loop.global_batch_size,
        "train_micro_batch_size_per_gpu": loop.micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps(loop, world_size),
        "gradient_clipping": loop.grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        # Our AdamW (torch's, or DeepSpeedCPUAdam when offloading) with our parameter groups.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": _QUIET_STEPS,
        "wall_clock_breakdown": False,
    }
    if precision == "bf16" and loop.zero_stage:
        # Accumulate micro-batch gradients in fp32 (ZeRO keeps fp32 masters to add them into).
        # Without ZeRO, DeepSpeed supports only gradients in the model's dtype (its DDP bf16 path)
        # and raises NotImplementedError for fp32 accumulation, in every worker: ZeRO-0 bf16
        # accumulates in bf16.
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return config
