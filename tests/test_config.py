"""Config: YAML + --set overrides, and one-line errors that name the key or file."""

import pytest

from pipelines.config import load_config
from pipelines.errors import UserError


def test_yaml_then_overrides_parsed_as_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("workspace: /data/ws\ntrain:\n  lr: 0.001\n  max_steps: 5\n")
    cfg = load_config(path, ["train.lr=3e-4", "corpus.inputs=[a.jsonl, 'b/*.warc.gz']", "ray.address=auto"])
    assert cfg.workspace == "/data/ws"
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.max_steps == 5
    assert cfg.corpus.inputs == ["a.jsonl", "b/*.warc.gz"]
    assert cfg.ray.address == "auto"


def test_defaults_without_file():
    cfg = load_config(None, [])
    assert cfg.workspace == "./workspace"
    assert cfg.mlflow.tracking_uri is None


@pytest.mark.parametrize(
    "override, names",
    [
        ("train.lr=abc", "'train.lr'"),
        ("nosuch.key=1", "'nosuch'"),
        ("train.lrr=1", "'train.lrr'"),
        ("train.lr.x=1", "'train.lr.x'"),
        ("model.preset=gpt5", "'model.preset'"),
    ],
)
def test_bad_override_names_the_key(override, names):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert names in message
    assert "\n" not in message


def test_typo_suggests_the_real_key():
    with pytest.raises(UserError, match="did you mean 'train.lr'"):
        load_config(None, ["train.lrr=1"])


def test_unknown_key_in_yaml_names_key_and_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 1\n")
    with pytest.raises(UserError, match=r"'train.learning_rate' in .*c.yaml is unknown"):
        load_config(path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+ is not valid YAML"):
        load_config(bad)


def test_micro_batch_must_divide_global_batch():
    with pytest.raises(UserError, match="global_batch_size=32 is not a multiple of"):
        load_config(None, ["train.micro_batch_size=3"])


def test_bf16_without_zero_is_refused_where_it_would_lose_the_fp32_masters():
    for overrides in (["train.precision=bf16"], ["finetune.use_gpu=true"]):  # auto: bf16 on GPUs
        section = overrides[0].split(".")[0]
        with pytest.raises(UserError, match=f"{section}.*zero_stage=0 with precision=.* without fp32 master"):
            load_config(None, [*overrides, f"{section}.zero_stage=0"])
    assert load_config(None, ["train.zero_stage=0", "train.precision=fp32", "train.use_gpu=true"])
    assert load_config(None, ["train.zero_stage=0"]).train.precision == "auto"  # fp32 on CPUs


def test_elastic_num_workers_is_a_range_whose_every_size_splits_the_global_batch():
    cfg = load_config(
        None, ["train.num_workers=[1,4]", "train.micro_batch_size=2", "train.global_batch_size=24"]
    )
    assert (cfg.train.min_workers, cfg.train.max_workers) == (1, 4)
    assert cfg.model_dump(mode="json")["train"]["num_workers"] == [1, 4]
    assert load_config(None, ["train.num_workers=4"]).train.max_workers == 4
    with pytest.raises(UserError, match=r"at 3 of num_workers=\[1, 3\]"):
        load_config(
            None, ["train.num_workers=[1,3]", "train.micro_batch_size=4", "train.global_batch_size=16"]
        )
    for bad in ("[2,1]", "[0,2]", "0"):
        with pytest.raises(UserError, match=r"'train\.num_workers'.*1 <= min <= max"):
            load_config(None, [f"train.num_workers={bad}"])


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["model.n_head=5"], "model.n_head"),  # the gpt2 preset's 768 channels
        (["model.preset=tiny", "model.n_embd=100", "model.n_head=3"], "model.n_head"),
        (["model.preset=gpt2-xl", "model.n_embd=1010"], "model.n_embd"),  # the preset's 25 heads
    ],
)
def test_heads_must_split_the_width_and_the_key_set_is_named(overrides, key):
    with pytest.raises(UserError) as err:
        load_config(None, overrides)
    message = str(err.value)
    assert "\n" not in message and f"config key '{key}' (from --set)" in message
    assert "model.n_embd=" in message and "model.n_head=" in message and "not a multiple" in message
    assert load_config(None, ["model.preset=tiny", "model.n_head=4"]).model.resolved("n_head") == 4


def test_lora_rank_above_the_width_of_the_pipelines_own_model():
    with pytest.raises(UserError) as err:
        load_config(None, ["model.preset=tiny", "finetune.lora_rank=65"])
    message = str(err.value)
    assert "\n" not in message and message.startswith("config key 'finetune.lora_rank' (from --set)")
    assert "n_embd=64" in message
    assert load_config(None, ["model.preset=tiny", "finetune.lora_rank=64"]).finetune.lora_rank == 64
    # An imported model's width is its own (the finetune stage's pre-flight checks it); a disabled
    # fine-tuning has no model to fit.
    load_config(None, ["model.preset=tiny", "finetune.lora_rank=65", "finetune.init_from=/some/model"])
    load_config(None, ["model.preset=tiny", "finetune.lora_rank=65", "train.init_from=models:/m@a"])
    load_config(None, ["model.preset=tiny", "finetune.lora_rank=65", "finetune.enabled=false"])


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
@pytest.mark.parametrize(
    "override, key",
    [("model.n_head=5", "model.n_head"), ("finetune.lora_rank=256", "finetune.lora_rank")],
)
def test_config_errors_end_the_job_with_one_line_naming_the_key(override, key, dry_run, tmp_path):
    from tests.conftest import run_job

    args = ["jobs/pipeline.py", "--config", "configs/demo.yaml", "--set", f"workspace={tmp_path}"]
    proc = run_job(*args, "--set", override, *(["--dry-run"] if dry_run else []), timeout=120)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: config key '{key}' (from --set)"), line
    assert {p.name for p in tmp_path.iterdir()} <= {
        "logs"
    }  # nothing started: no MLflow database, no checkpoints
