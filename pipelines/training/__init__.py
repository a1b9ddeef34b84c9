"""Stages `pretrain` and `finetune`: Ray Train V2 + DeepSpeed ZeRO, one loop for both.

Reads token shards (or fine-tuning rows) and an optional initial model; writes checkpoints under
<ws>/checkpoints/<run>/ (Ray Train's storage), the consolidated model under <ws>/models/<run>/,
an MLflow run and a registered model version.

    pretrain.py   the pretrain stage: data, tokenizer and model resolved and checked on the driver
    launch.py     the driver: the TorchTrainer, resume from the latest checkpoint, publish
    loop.py       the per-worker loop (engine.py builds its parts; checkpoint.py saves and restores)
    task.py       what a loop trains on (pretraining's shards); finetune/ has fine-tuning's
    metrics.py    rank 0's MLflow metrics and progress line
    deepspeed.py  the DeepSpeed config of a run
    finetune/     the finetune stage: its initial model, data and Task, on the same machinery

Open pretrain.py first, then launch.py and loop.py.
"""
