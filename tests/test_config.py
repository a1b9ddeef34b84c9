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
