"""`train.init_from`: a registered model (models:/name/version, models:/name@alias) or a model
directory initialises the workers' weights; its architecture wins over the `model` section; its
tokenizer must be the shards' tokenizer."""

from __future__ import annotations

import mlflow
import pytest
import torch
from prepared_workspace import make_model_dir
from safetensors.torch import load_file

from pipelines.config import LoopConfig
from pipelines.errors import UserError
from pipelines.registry import models as registry
from pipelines.training.engine import LoopSpec, build_model
from pipelines.training.pretrain import resolve_init, resolve_model

NAME = "init-from-test"


@pytest.fixture(scope="module")
def trained(prepared_workspace, tmp_path_factory):
    pw = prepared_workspace
    return make_model_dir(tmp_path_factory.mktemp("init") / "model", pw.tokenizer_dir, 512, 10, pw.shards_dir)


def test_init_from_a_registry_alias_loads_that_models_weights(
    prepared_workspace, trained, mlflow_env, tmp_path
):
    pw = prepared_workspace
    mlflow.set_experiment("init-from")
    with mlflow.start_run():
        version = registry.register(registry.log_model(trained), NAME)
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version)
    loop = LoopConfig(
        num_workers=2, micro_batch_size=4, global_batch_size=16, init_from=f"models:/{NAME}@champion"
    )
    init_dir = resolve_init(loop, "train")
    assert (init_dir / "config.json").is_file()  # downloaded on the driver; stage_init shares it
    # the model section asks for another architecture: the initial model's wins, dropout is ours
    cfg = pw.config("model.n_layer=6", "model.dropout=0.1")
    gpt = resolve_model(cfg, 512, pw.tokenizer_sha256, init_dir)
    assert gpt["n_layer"] == 2 and gpt["block_size"] == 64 and gpt["dropout"] == 0.1
    model = build_model(LoopSpec(loop=loop, gpt=gpt, task=None, init_model_dir=str(init_dir)))
    saved = load_file(str(trained / "model.safetensors"))
    state = model.state_dict()
    for key, tensor in saved.items():
        assert torch.equal(state[key], tensor), key
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied


def test_init_from_a_model_with_another_vocabulary_is_refused(prepared_workspace, trained):
    pw = prepared_workspace
    with pytest.raises(UserError, match=r"train\.init_from.*vocab 512.*vocab 1000"):
        resolve_model(pw.config(), 1000, pw.tokenizer_sha256, trained)


def test_init_from_a_missing_registry_version_names_the_key(mlflow_env, tmp_path):
    loop = LoopConfig(
        num_workers=2, micro_batch_size=4, global_batch_size=16, init_from=f"models:/{NAME}/404"
    )
    with pytest.raises(UserError, match=r"train\.init_from.*cannot download"):
        resolve_init(loop, "train")
