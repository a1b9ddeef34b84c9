"""The training state in a form any world size and ZeRO stage can load: what a checkpoint holds.

DeepSpeed's own checkpoints are tied to the layout that wrote them: each ZeRO partition file holds
one rank's slice of flattened parameter groups, so they load only on the same number of ranks and
the same stage (its universal-checkpoint converter lifts that offline for ZeRO 1-3, not for ZeRO 0,
by reading every rank's files on one node). Here every rank writes, at each checkpoint and without
any collective, the pieces of the fp32 master weights and AdamW moments it owns, each keyed by the
parameter's name and its element offset in the full parameter:

    state/rank-00003.safetensors   "<param>/<fp32|exp_avg|exp_avg_sq>/<offset>" -> 1-D fp32 tensor
    state/meta.json                (rank 0) optimizer step, layout, parameter shapes, loss scaler

Loading reads every rank's pieces, lays each parameter out whole, and hands it to DeepSpeed's own
setters (`safe_set_full_fp32_param` / `safe_set_full_optimizer_state`), which keep the slice the
loading rank owns under its layout; the low-precision module weights are then refreshed from the
masters. So a run of 8 workers at ZeRO-2 resumes on 7 at ZeRO-1, or on 1 at ZeRO-0, with the same
weights, moments and step, bit for bit; the same layout restores bit for bit as well, through the
same code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATE_DIR = "state"
META = f"{STATE_DIR}/meta.json"
KEYS = ("fp32", "exp_avg", "exp_avg_sq")  # the master weight and AdamW's two moments
FORMAT = 1
LOSS_SCALER_FIELDS = ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis")  # fp16 only


def rank_file(rank: int) -> str:
    return f"{STATE_DIR}/rank-{rank:05d}.safetensors"


# --- saving --------------------------------------------------------------------------------------
def save(engine: Any, directory: str | Path, rank: int, world_size: int, step: int, precision: str) -> None:
    """This rank's pieces into `directory` (its own staging directory); rank 0 adds the meta."""
    from safetensors.torch import save_file

    directory = Path(directory)
    (directory / STATE_DIR).mkdir(parents=True, exist_ok=True)
    pieces = {f"{name}/{key}/{offset}": t for name, key, offset, t in local_pieces(engine, rank)}
    save_file(pieces, str(directory / rank_file(rank)))
    if rank == 0:
        meta = {
            "format": FORMAT,
            "step": step,
            "optimizer_step": _optimizer_step(engine),
            "world_size": world_size,
            "zero_stage": engine.zero_optimization_stage(),
            "precision": precision,
            "params": {
                n: list(p.ds_shape if hasattr(p, "ds_shape") else p.shape) for n, p in _trained(engine)
            },
            "loss_scaler": _loss_scaler_state(engine),
        }
        (directory / META).write_text(json.dumps(meta, indent=1))


def local_pieces(engine: Any, rank: int):
    """(name, key, offset, fp32 CPU tensor) for every piece of the state this rank owns."""
    stage = engine.zero_optimization_stage()
    _link_optimizer_state(engine)
    masters = _zero0_masters(engine)
    for name, param in _trained(engine):
        for key in KEYS:
            if stage == 3:
                piece, offset = _z3_piece(param, key)
            elif hasattr(param, "_hp_mapping"):  # ZeRO 1-2, and DeepSpeed's bf16 optimizer
                piece, offset = _hp_piece(param, key)
            elif rank == 0:  # ZeRO 0: every rank holds it whole
                piece, offset = _whole_piece(engine, masters, param, key), 0
            else:
                piece = None
            if piece is not None and piece.numel():
                yield name, key, offset, piece.detach().reshape(-1).float().cpu().clone()


def _hp_piece(param, key: str):
    mapping = param._hp_mapping
    if mapping is None:  # none of this parameter lies in this rank's partition
        return None, 0
    piece = mapping.get_hp_fragment(None if key == "fp32" else key)
    return piece, mapping.lp_fragment_address.start


def _z3_piece(param, key: str):
    optimizer = param._z3_optimizer
    piece = optimizer.get_local_fp32_param(param, None if key == "fp32" else key)
    # ZeRO-3 gives rank r elements [r * partition, (r + 1) * partition) of the flattened parameter,
    # the last one padded; the piece holds only the real elements.
    offset = optimizer._get_param_partition_rank(param) * param.ds_tensor.ds_numel
    return piece, offset


def _whole_piece(engine, masters: dict, param, key: str):
    master = masters.get(id(param), param)
    if key == "fp32":
        return master
    return _base_optimizer(engine).state.get(master, {}).get(key)  # None before the first step


def _zero0_masters(engine) -> dict[int, Any]:
    """ZeRO 0: {id(module parameter): its fp32 master}. In bf16/fp16 DeepSpeed's unfused optimizer
    steps fp32 copies (its fp32_groups); in fp32 the module parameter is its own master."""
    optimizer = engine.optimizer
    if engine.zero_optimization_stage() or not hasattr(optimizer, "fp32_groups"):
        return {}
    return {
        id(lp): hp
        for lp_group, hp_group in zip(optimizer.fp16_groups, optimizer.fp32_groups)
        for lp, hp in zip(lp_group, hp_group)
    }


# --- loading -------------------------------------------------------------------------------------
class PortableStateError(ValueError):
    """A checkpoint's state is missing, incomplete or does not fit the model."""


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META
    if not path.is_file():
        raise PortableStateError(f"checkpoint {directory} has no {META}")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise PortableStateError(
            f"checkpoint {directory}: state format {meta.get('format')}, expected {FORMAT}"
        )
    return meta


def full_state(directory: str | Path, meta: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{name: {key: full fp32 tensor}} from every rank's pieces; every element must be covered."""
    import torch
    from safetensors.torch import load_file

    directory = Path(directory)
    shapes = meta["params"]
    full = {n: {k: torch.zeros(_numel(s), dtype=torch.float32) for k in KEYS} for n, s in shapes.items()}
    covered = {n: {k: 0 for k in KEYS} for n in shapes}
    for rank in range(meta["world_size"]):
        path = directory / rank_file(rank)
        if not path.is_file():
            raise PortableStateError(f"checkpoint {directory} lacks {rank_file(rank)}")
        for label, piece in load_file(str(path)).items():
            name, key, offset = label.rsplit("/", 2)
            offset = int(offset)
            full[name][key][offset : offset + piece.numel()] = piece
            covered[name][key] += piece.numel()
    for name, keys in covered.items():
        for key, count in keys.items():
            if count != _numel(shapes[name]) and not (
                key != "fp32" and count == 0 and meta["optimizer_step"] == 0
            ):
                raise PortableStateError(
                    f"checkpoint {directory}: {name}/{key} has {count} of {_numel(shapes[name])} elements"
                )
    return {n: {k: t.view(shapes[n]) for k, t in keys.items()} for n, keys in full.items()}


def load(engine: Any, directory: str | Path) -> dict[str, Any]:
    """Collective (ZeRO 1-2 refresh the module weights with an all-gather): set the engine's master
    weights, moments, optimizer step and loss scale from the checkpoint. Returns its meta."""
    meta = read_meta(directory)
    mine = dict(_trained(engine))
    if set(mine) != set(meta["params"]):
        raise PortableStateError(f"checkpoint {directory} holds other parameters than this model")
    state = full_state(directory, meta)
    stage = engine.zero_optimization_stage()
    _init_optimizer_state(engine, meta["optimizer_step"])
    device = next(engine.module.parameters()).device
    masters = _zero0_masters(engine)
    for name, param in mine.items():
        values = {k: v.to(device) for k, v in state[name].items()}
        if stage == 3 or hasattr(param, "_hp_mapping"):
            from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

            safe_set_full_fp32_param(param, values["fp32"])
            for key in KEYS[1:]:
                safe_set_full_optimizer_state(param, values[key], key)
        else:
            master = masters.get(id(param), param)
            master.data.copy_(values["fp32"])
            param.data.copy_(values["fp32"].to(param.dtype))
            slot = _base_optimizer(engine).state[master]
            for key in KEYS[1:]:
                slot[key].copy_(values[key])
    _refresh_module_weights(engine, stage)
    _set_loss_scaler_state(engine, meta.get("loss_scaler") or {})
    return meta


def _init_optimizer_state(engine, step: int) -> None:
    """AdamW's state for every tensor it steps, at `step` and zero moments (filled in next): the
    optimizer creates it lazily at its first step, which a resumed run has not taken yet."""
    import torch

    optimizer = _base_optimizer(engine)
    for tensor in _stepped_tensors(engine):
        slot = optimizer.state[tensor]
        # torch's AdamW counts steps in a float tensor, DeepSpeed's CPU Adam in an int
        slot["step"] = step if _int_steps(optimizer) else torch.tensor(float(step))
        for key in KEYS[1:]:
            slot[key] = torch.zeros_like(tensor, memory_format=torch.preserve_format)
    _link_optimizer_state(engine)


def _stepped_tensors(engine) -> list[Any]:
    """The tensors AdamW keeps state for: the flat fp32 partitions under ZeRO 1-3 and the bf16
    optimizer, the fp32 masters (or the parameters themselves) at ZeRO 0."""
    optimizer = engine.optimizer
    for flat in (
        "fp32_partitioned_groups_flat",
        "single_partition_of_fp32_groups",
        "fp32_groups_flat_partition",
    ):
        if hasattr(optimizer, flat):  # ZeRO 3, ZeRO 1-2, bf16 optimizer
            return list(getattr(optimizer, flat))
    masters = _zero0_masters(engine)
    return [masters.get(id(p), p) for _, p in _trained(engine)]


def _link_optimizer_state(engine) -> None:
    """ZeRO 1-2 and the bf16 optimizer: point each parameter's fragment mapping at AdamW's current
    state tensors. DeepSpeed links them once, and can link before the state exists (then empty)."""
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        engine.optimizer._hp_optimizer_states_linked = False
        link()


def _refresh_module_weights(engine, stage: int) -> None:
    """The module's (possibly low-precision) weights from the masters just set."""
    optimizer = engine.optimizer
    if stage == 3:
        for group in range(len(optimizer.fp16_partitioned_groups_flat)):
            optimizer._reassign_or_swap_out_partitioned_parameters(group)
    elif hasattr(optimizer, "update_lp_params"):
        optimizer.update_lp_params()


def _trained(engine):
    """The parameters the optimizer steps (LoRA's frozen base weights are rebuilt, not saved)."""
    return [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]


def _base_optimizer(engine):
    """The torch optimizer under DeepSpeed's wrappers (ZeRO, bf16), or the engine's own at ZeRO 0."""
    optimizer = engine.optimizer
    return getattr(optimizer, "optimizer", optimizer)


def _optimizer_step(engine) -> int:
    """AdamW's own step count (its bias correction), which need not be the training step: DeepSpeed's
    unfused bf16 optimizer, for one, steps once more while it starts."""
    steps = [slot["step"] for slot in _base_optimizer(engine).state.values() if "step" in slot]
    return int(max(float(s) for s in steps)) if steps else 0


def _int_steps(optimizer) -> bool:
    return type(optimizer).__name__ == "DeepSpeedCPUAdam"


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def _loss_scaler_state(engine) -> dict[str, Any]:
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    return {f: getattr(scaler, f) for f in LOSS_SCALER_FIELDS if hasattr(scaler, f)} if scaler else {}


def _set_loss_scaler_state(engine, state: dict[str, Any]) -> None:
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    for field, value in state.items():
        if scaler is not None and hasattr(scaler, field):
            setattr(scaler, field, value)
