"""One typed config for the whole workflow: a YAML file and repeatable `--set a.b=c` overrides
(loading.py), in sections that forbid unknown keys (sections.py). Each stage's fingerprint is
computed from the sections it declares (see workflow.Stage)."""

from pipelines.config.loading import load_config, section_dict
from pipelines.config.sections import (
    Config,
    CorpusConfig,
    FinetuneConfig,
    GenerateConfig,
    LoopConfig,
    MlflowConfig,
    ModelConfig,
    RayConfig,
    RefreshConfig,
    RegistryConfig,
    Section,
    ShardsConfig,
    TokenizerConfig,
    TrainConfig,
    key_error,
    lora_rank_problem,
)

__all__ = [
    "load_config",
    "section_dict",
    "Section",
    "key_error",
    "lora_rank_problem",
    "RayConfig",
    "MlflowConfig",
    "CorpusConfig",
    "TokenizerConfig",
    "ShardsConfig",
    "ModelConfig",
    "LoopConfig",
    "TrainConfig",
    "FinetuneConfig",
    "GenerateConfig",
    "RefreshConfig",
    "RegistryConfig",
    "Config",
]
