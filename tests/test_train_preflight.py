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


# --- at planning time: what the published inputs tell, in a dry run and a real run alike ----------
def planned(pw, workspace, stage, *overrides: str, dry_run: bool) -> list:
    cfg = pw.config(*pw.train_overrides(workspace, "mlflow.experiment=preflight", *overrides))
    return Runner(cfg, [stage], log=lambda m: None).run(dry_run=dry_run)


def refused_at_planning(pw, workspace, stage, *overrides: str, dry_run: bool) -> str:
    with pytest.raises(UserError) as info:
        planned(pw, workspace, stage, *overrides, dry_run=dry_run)
    message = str(info.value)
    assert "\n" not in message
    assert not workspace.exists() or not any(workspace.iterdir())  # no MLflow run, no checkpoints
    return message


def val_windows(pw) -> int:
    """Windows of the prepared val split at the tests' 64-token context."""
    import json

    return json.loads((pw.shards_dir / "manifest.json").read_text())["splits"]["val"]["tokens"] // 65


def micro_batch(section: str, micro: int) -> tuple[str, str]:
    return f"{section}.micro_batch_size={micro}", f"{section}.global_batch_size={2 * micro}"


def tiny_model_dir(path, block_size: int, hf: bool = False):
    """A tiny model's config.json (the pre-flight reads nothing else): gpt2core's, or Hugging Face's."""
    import json

    from gpt2core.checkpoint import save_model
    from gpt2core.config import preset
    from gpt2core.model import GPT

    if not hf:
        return save_model(GPT(preset("tiny", 512, block_size=block_size)), path)
    path.mkdir(parents=True)
    config = {"model_type": "gpt2", "vocab_size": 512, "n_layer": 2, "n_head": 2, "n_embd": 64}
    (path / "config.json").write_text(json.dumps({**config, "n_positions": block_size}))
    return path


def pairs_file(tmp_path) -> str:
    """finetune.data: a pairs file, which only the stage run reads (tokenizes)."""
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n')
    return f"finetune.data={path}"


def test_the_val_split_must_fill_an_evaluation_batch_on_every_worker():
    from pipelines.config import LoopConfig
    from pipelines.training.pretrain import check_windows

    manifest = {"splits": {"train": {"tokens": 10**6}, "val": {"tokens": 16 * 65 + 64}}}  # 16 windows
    check_windows(
        manifest, "s", 64, LoopConfig(num_workers=2, micro_batch_size=8, global_batch_size=16), "train"
    )
    elastic = LoopConfig(num_workers=[1, 3], micro_batch_size=6, global_batch_size=36)  # 18 at 3 workers
    with pytest.raises(UserError, match=r"^config key 'train\.micro_batch_size': .* 16 windows .*\(18\)"):
        check_windows(manifest, "s", 64, elastic, "train")


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_micro_batch_above_the_val_windows_of_the_shards(prepared_workspace, tmp_path, dry_run):
    from pipelines.training.finetune.stage import finetune_stage

    pw, ws, windows = prepared_workspace, tmp_path / "ws", val_windows(prepared_workspace)
    fits = micro_batch("train", windows // 2)  # 2 workers: windows // 2 each
    assert [s.action for s in planned(pw, ws, pretrain_stage(), *fits, dry_run=True)] == ["run"]
    message = refused_at_planning(
        pw, ws, pretrain_stage(), *micro_batch("train", windows // 2 + 1), dry_run=dry_run
    )
    assert message.startswith("config key 'train.micro_batch_size'") and f"{windows} windows" in message
    # fine-tuning on the shards (finetune.data unset), from a model of their 64-token context
    model = f"finetune.init_from={tiny_model_dir(tmp_path / 'model', 64)}"
    big = micro_batch("finetune", windows // 2 + 1)
    message = refused_at_planning(
        pw, ws, finetune_stage(), model, "finetune.data=null", *big, dry_run=dry_run
    )
    assert message.startswith("config key 'finetune.micro_batch_size'")


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize("kind", ["model-dir", "hf-dir"])
def test_imported_model_shorter_than_the_context_or_narrower_than_the_lora_rank(
    prepared_workspace, tmp_path, kind, dry_run
):
    from pipelines.training.finetune.stage import finetune_stage

    pw, ws, data = prepared_workspace, tmp_path / "ws", pairs_file(tmp_path)
    short = f"finetune.init_from={tiny_model_dir(tmp_path / 'short', 32, hf=kind == 'hf-dir')}"
    message = refused_at_planning(
        pw, ws, finetune_stage(), short, data, dry_run=dry_run
    )  # model.block_size=64
    assert message.startswith("config key 'model.block_size': 64 is more than the 32 positions")
    fits = f"finetune.init_from={tiny_model_dir(tmp_path / 'fits', 64, hf=kind == 'hf-dir')}"
    lora = "finetune.lora_rank=65"
    message = refused_at_planning(pw, ws, finetune_stage(), fits, data, lora, dry_run=dry_run)
    assert message.startswith("config key 'finetune.lora_rank'") and "n_embd=64" in message
    # the imported model's n_embd, not the model section's (128 in configs/demo.yaml), is the limit
    planned(pw, ws, finetune_stage(), fits, data, "finetune.lora_rank=64", dry_run=True)


def test_registered_model_shorter_than_the_context(prepared_workspace, mlflow_env, tmp_path):
    """A registry URI: only the version's MLmodel and config.json are read, in a dry run too."""
    from finetune_inputs import register_model

    from gpt2core.tokenizer import load_tokenizer
    from pipelines.training.finetune.stage import finetune_stage

    pw, ws = prepared_workspace, tmp_path / "ws"
    model = tiny_model_dir(tmp_path / "short", 32)
    load_tokenizer(pw.tokenizer_dir).save_to(model)
    import mlflow

    mlflow.set_experiment("preflight")
    register_model(model, "preflight-short", alias="champion")
    init = "finetune.init_from=models:/preflight-short@champion"
    for dry_run in (True, False):
        message = refused_at_planning(pw, ws, finetune_stage(), init, pairs_file(tmp_path), dry_run=dry_run)
        assert message.startswith("config key 'model.block_size': 64 is more than the 32 positions")


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_published_input_errors_end_the_job_with_one_line_naming_the_key(
    prepared_workspace, tmp_path, dry_run
):
    from tests.conftest import run_job

    pw, ws = prepared_workspace, tmp_path / "ws"
    cases = [
        ("pretrain", micro_batch("train", val_windows(pw) // 2 + 1), "train.micro_batch_size"),
        (
            "finetune",
            [f"finetune.init_from={tiny_model_dir(tmp_path / 'hf', 32, hf=True)}"],
            "model.block_size",
        ),
    ]
    for stage, overrides, key in cases:
        sets = [a for item in pw.train_overrides(ws, *overrides) for a in ("--set", item)]
        args = ["jobs/pipeline.py", "--config", "configs/demo.yaml", *sets, "--stages", stage]
        proc = run_job(*args, *(["--dry-run"] if dry_run else []), timeout=300)
        assert proc.returncode == 2, proc.stderr[-3000:]
        [line] = proc.stderr.strip().splitlines()
        assert line.startswith(f"error: config key '{key}'"), line
        # no worker, no checkpoint, no MLflow run: at most the job's console log
        assert not ws.exists() or {p.name for p in ws.iterdir()} <= {"logs"}
