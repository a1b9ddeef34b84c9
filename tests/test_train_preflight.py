"""Bad input to the pretrain stage: each a one-line UserError naming the key or file, before any worker
starts (no checkpoint directory, no Ray Train run)."""

from __future__ import annotations

import shutil

import pytest
from prepared_workspace import run_pretrain_job

from pipelines.core.workflow import Runner
from pipelines.errors import UserError
from pipelines.training.launch import LAYOUT_KEYS, RESUME_KEYS, check_resumable
from pipelines.training.pretrain import pretrain_stage


def run_stage(pw, workspace, *overrides: str) -> None:
    cfg = pw.config(*pw.train_overrides(workspace, "mlflow.experiment=preflight", *overrides))
    Runner(cfg, [pretrain_stage()], log=lambda m: None).run()


def refused(pw, workspace, *overrides: str) -> str:
    with pytest.raises(UserError) as info:
        run_stage(pw, workspace, *overrides)
    message = str(info.value)
    assert "\n" not in message
    assert not (workspace / "checkpoints").exists() or not any(
        (workspace / "checkpoints").rglob("checkpoint_*")
    )
    return message


@pytest.fixture
def copied(prepared_workspace, tmp_path):
    """A copy of the prepared shards and tokenizer, in the same layout, to damage."""
    pw = prepared_workspace
    root = tmp_path / "copy"
    for src in (pw.shards_dir, pw.tokenizer_dir):
        shutil.copytree(src, root / src.relative_to(pw.workspace))
    return root / pw.shards_dir.relative_to(pw.workspace), root / pw.tokenizer_dir.relative_to(pw.workspace)


@pytest.fixture
def env(prepared_workspace, mlflow_env, ray_local, tmp_path):
    return prepared_workspace, tmp_path / "ws"


def test_missing_shards_dir(env, tmp_path):
    pw, ws = env
    message = refused(pw, ws, f"train.shards={tmp_path / 'nowhere'}")
    assert "train.shards" in message and "does not exist" in message


def test_shards_dir_without_manifest(env, copied):
    pw, ws = env
    shards, _ = copied
    (shards / "manifest.json").unlink()
    message = refused(pw, ws, f"train.shards={shards}")
    assert "train.shards" in message and "incomplete" in message


def test_shards_dir_missing_a_file(env, copied):
    pw, ws = env
    shards, _ = copied
    next(shards.glob("train-*.arrow")).unlink()
    message = refused(pw, ws, f"train.shards={shards}")
    assert str(shards) in message and "incomplete or damaged" in message


def test_shards_whose_tokenizer_file_differs(env, copied):
    pw, ws = env
    shards, tokenizer = copied
    (tokenizer / "spm.model").write_bytes(b"not the model the shards were made with")
    message = refused(pw, ws, f"train.shards={shards}")
    assert "tokenizer" in message and "does not match" in message


def test_init_model_with_another_tokenizer(env, tmp_path):
    from gpt2core.checkpoint import save_model
    from gpt2core.config import preset
    from gpt2core.model import GPT

    pw, ws = env
    model_dir = tmp_path / "other-model"
    save_model(GPT(preset("tiny", 512, block_size=64)), model_dir)  # no spm.model: not our tokenizer
    message = refused(pw, ws, f"train.init_from={model_dir}")
    assert "train.init_from" in message and "tokenizer" in message


def test_init_from_a_directory_that_is_not_a_model(env, tmp_path):
    pw, ws = env
    message = refused(pw, ws, f"train.init_from={tmp_path}")
    assert "train.init_from" in message and "config.json" in message


@pytest.mark.parametrize(
    "overrides, key",
    [
        (("train.num_workers=3", "train.global_batch_size=24"), "train.num_workers"),
        (("train.cpus_per_worker=4",), "train.num_workers"),
        (("train.use_gpu=true",), "train.use_gpu"),
        (("train.zero_stage=1", "train.offload_params=true"), "train.offload_params"),
    ],
)
def test_what_the_cluster_or_deepspeed_cannot_do(env, overrides, key):
    pw, ws = env
    message = refused(pw, ws, *overrides)
    assert key in message


def test_val_split_too_small_for_the_context(env):
    pw, ws = env
    message = refused(pw, ws, "model.block_size=4096")
    assert "val split" in message and "model.block_size" in message


def test_indivisible_global_batch_fails_on_the_command_line(prepared_workspace, tmp_path):
    proc = run_pretrain_job(prepared_workspace, tmp_path / "ws", "train.global_batch_size=20")
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert "train" in line and "global_batch_size=20" in line and "micro_batch_size*num_workers=8" in line


def test_resuming_checkpoints_of_another_model_or_tokenizer_is_refused_and_a_new_layout_is_not():
    record = {"gpt": {"n_layer": 2}, "num_workers": 2, "zero_stage": 1, "micro_batch_size": 4}
    record |= {"global_batch_size": 16, "tokenizer_sha256": "abc"}
    assert set(record) == {*RESUME_KEYS, *LAYOUT_KEYS}
    assert check_resumable(record, dict(record), "run", "train") == {}  # same: fine
    assert check_resumable(None, dict(record), "run", "train") == {}  # no record: nothing to compare
    with pytest.raises(UserError, match=r"'train\.run_name'.*another model shape and tokenizer"):
        check_resumable(record, {**record, "gpt": {"n_layer": 4}, "tokenizer_sha256": "def"}, "run", "train")
    with pytest.raises(UserError, match=r"'finetune\.run_name'.*another tokenizer; choose a new finetune"):
        check_resumable(record, {**record, "tokenizer_sha256": "def"}, "run", "finetune")
    # checkpoints reshard: another number of workers, ZeRO stage or batch split is a logged change
    changed = check_resumable(record, {**record, "num_workers": [1, 2], "zero_stage": 2}, "run", "train")
    assert changed == {"num_workers": (2, [1, 2]), "zero_stage": (1, 2)}
