"""The small all-reduces the training loop's ranks agree through: one per step (preemption notice,
data digest, rank 0's stop verdict and schedule share), and flags at a (re)start."""

from __future__ import annotations

from pipelines.training import preemption

SHARE_UNITS = 10**9  # a share of the schedule, as an integer in the step's all-reduce


def agree(notice: int, digest: int, device, stop: bool = False, share: float = 0.0) -> tuple:
    """Collective, once per step: (the strongest preemption notice of any rank, the step's data
    digest over all ranks, rank 0's stop verdict, rank 0's share of the schedule done), in one
    small all-reduce (only rank 0 passes a verdict and a share; the others pass False and 0)."""
    import torch

    from gpt2core.data import DIGEST_MOD

    values = [int(notice == preemption.TERMINATING), int(notice == preemption.DRAINING), digest]
    values += [int(stop), round(share * SHARE_UNITS)]
    if torch.distributed.is_initialized():
        tensor = torch.tensor(values, dtype=torch.int64, device=device)
        torch.distributed.all_reduce(tensor)
        values = tensor.tolist()
    strongest = preemption.TERMINATING if values[0] else preemption.DRAINING if values[1] else preemption.NONE
    return strongest, values[2] % DIGEST_MOD, bool(values[3]), values[4] / SHARE_UNITS


def rank0_says(flag: bool, device) -> bool:
    """Collective: rank 0's flag, on every rank (the others' do not count)."""
    import torch

    if not torch.distributed.is_initialized():
        return flag
    value = torch.tensor([int(flag) if torch.distributed.get_rank() == 0 else 0], device=device)
    torch.distributed.all_reduce(value)
    return bool(value.item())


def everyone(flag: bool, device) -> bool:
    """Collective: the flag holds on every rank."""
    import torch

    if not torch.distributed.is_initialized():
        return flag
    value = torch.tensor([int(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
    return bool(value.item())
