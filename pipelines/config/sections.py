"""The config's sections: every one forbids unknown keys, so a typo fails loudly (exit 2) instead of
being ignored, and checks across keys run at load time, before any worker starts."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def key_error(key: str, message: str, value: Any) -> ValidationError:
    """A validation error at `key` (dotted, below the model validated): a check of several keys names one."""
    detail = InitErrorDetails(type=PydanticCustomError("value_error", message), loc=tuple(key.split(".")))
    return ValidationError.from_exception_data("Config", [{**detail, "input": value}])


def lora_rank_problem(rank: int, n_embd: int, model: str) -> str | None:
    """Why finetune.lora_rank does not fit a model n_embd wide (None: it fits): n_embd is the narrower
    side of every projection LoRA adapts (gpt2core/lora.py); a higher rank adds parameters, not rank."""
    if rank > n_embd:
        return f"finetune.lora_rank={rank} is above the n_embd={n_embd} of {model}; use at most {n_embd}"
    return None


class RayConfig(Section):
    address: str | None = None  # a cluster to join; else RAY_ADDRESS; else a new local cluster
    num_cpus: int | None = Field(None, ge=1)  # local cluster only; None = all cores
    object_store_memory_mb: int | None = Field(None, ge=75)  # local cluster only
    # Local cluster only; binds 127.0.0.1. Its State API is what Ray Train's placement-group cleaner
    # polls each second for the controller's liveness: without it, each poll fails with a warning
    # and a crashed controller's placement group would never be removed.
    include_dashboard: bool = True


class MlflowConfig(Section):
    tracking_uri: str | None = None  # else MLFLOW_TRACKING_URI; else sqlite:///<workspace>/mlflow.db
    experiment: str = "gpt2"
    registered_model: str = "gpt2"


class CorpusConfig(Section):
    inputs: list[str] = Field(default_factory=list)  # paths, globs or URIs; `demo:pydoc` builds one
    # Reading
    text_field: str = "text"  # JSONL/Parquet field with the document text
    id_field: str | None = "id"  # JSONL/Parquet field with a record id (stable doc ids); else position
    url_field: str | None = "url"  # JSONL/Parquet field with the page URL
    max_doc_bytes: int = Field(2_000_000, ge=1024)  # larger raw documents are rejected (too_large)
    # Extraction and normalisation
    extractor: Literal["resiliparse", "trafilatura"] = "resiliparse"  # resiliparse: ~20x faster
    extract_timeout_s: float = Field(5.0, ge=0)  # per-document limit; 0 = none
    max_replacement_ratio: float = Field(0.001, ge=0, le=1)  # U+FFFD per char above this: invalid_utf8
    # Language: keep these fastText lid.176 codes at or above the score ([] keeps every language)
    languages: list[str] = Field(default_factory=lambda: ["en"])
    min_lang_score: float = Field(0.65, ge=0, le=1)
    # Quality filters, applied in this order (gopher_repetition, gopher_quality, c4, length) with the
    # published defaults of pipelines/corpus/filters.py, overridden per filter by filter_params,
    # e.g. {c4: {filter_curly_bracket: false}, length: {min_chars: 500}}
    filters: list[str] = Field(
        default_factory=lambda: ["gopher_repetition", "gopher_quality", "c4", "length"]
    )
    filter_params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    pii_redaction: bool = False  # replace e-mail and IP addresses with placeholders
    # Decontamination: evaluation texts (paths, globs or URIs of JSONL with `text_field`, or .txt
    # files, one document each); a document sharing one word n-gram with any is dropped
    # (`contaminated`). The n is also that of the sampled n-gram index (index/ngrams).
    decontaminate: list[str] = Field(default_factory=list)
    decontaminate_ngram: int = Field(13, ge=1)  # the GPT-3 paper's 13-grams
    # Dedup: exact on the normalised text, fuzzy by MinHash LSH over word n-grams
    exact_dedup: bool = True
    fuzzy_dedup: bool = True
    ngram: int = Field(5, ge=1)
    bands: int = Field(14, ge=1)
    rows: int = Field(8, ge=1)  # bands x rows permutations (FineWeb: 14 x 8)
    similarity_threshold: float = Field(0.75, ge=0, le=1)  # candidate pairs merge only at or above
    minhash_seed: int = 1
    partitions: int = Field(8, ge=1, le=1024)  # hash partitions of the dedup shuffles and of index/
    batch_docs: int = Field(64, ge=1)  # documents per Ray Data batch

    @model_validator(mode="after")
    def _known_filters(self):
        from pipelines.corpus.filters import make_filters  # stdlib-only module: cheap to import

        make_filters(self.filters, self.filter_params)  # ValueError names the unknown filter or key
        return self


class TokenizerConfig(Section):
    vocab_size: int = Field(32000, ge=300)  # includes 256 byte pieces and the special pieces
    model_type: Literal["bpe", "unigram"] = "bpe"
    sample_docs: int = Field(200_000, ge=1)  # documents sampled from the corpus to train on
    seed: int = 0  # picks the sample: same corpus + seed => same sample => same tokenizer
    # Share of characters that get their own piece; rarer ones are written as UTF-8 byte pieces
    character_coverage: float = Field(0.9995, gt=0.0, le=1.0)
    # CPUs of the Ray task that trains it, and so its threads: a fixed count, not the host's (a pod
    # sees the host's cores), and the same model on any node.
    num_cpus: int = Field(2, ge=1)


class ShardsConfig(Section):
    val_fraction: float = Field(0.005, ge=0.0, lt=1.0)  # by a stable hash of the document id
    # ...except a val candidate with at least this share of its word n-grams in the other
    # documents: it goes to train (pipelines/shards/val_split.py); null: the hash alone decides
    val_max_overlap: float | None = Field(0.5, gt=0, le=1)
    shard_tokens: int = Field(100_000_000, ge=1000)  # target tokens per shard file
    num_actors: int | None = Field(None, ge=1)  # tokenizer actors; None = one per cluster CPU
    # CPUs of the Ray task that writes the shard files (the encoded blocks stream to it, not to the
    # driver). 0 fits a laptop, where the encoders need every CPU; on a cluster whose head takes no
    # tasks (num-cpus 0) give it 1, so the token stream lands on a worker node, not the head pod.
    writer_cpus: float = Field(0, ge=0)


class ModelConfig(Section):
    preset: Literal["tiny", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"] = "gpt2"
    # Overrides of the preset; None keeps the preset's value.
    n_layer: int | None = Field(None, ge=1)
    n_head: int | None = Field(None, ge=1)
    n_embd: int | None = Field(None, ge=1)
    block_size: int | None = Field(None, ge=8)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    activation_checkpointing: bool = False
    compile: bool = False

    def resolved(self, name: str) -> int:
        """An architecture field as the model gets it: this section's override, else the preset's."""
        from gpt2core.config import PRESETS  # pure Python: cheap to import

        value = getattr(self, name)
        return PRESETS[self.preset][name] if value is None else value

    @model_validator(mode="after")
    def _heads_divide(self):
        n_embd, n_head = self.resolved("n_embd"), self.resolved("n_head")
        if n_embd % n_head:
            key = "n_head" if self.n_head is not None else "n_embd"
            raise key_error(
                key, f"model.n_embd={n_embd} is not a multiple of model.n_head={n_head}", getattr(self, key)
            )
        return self


class LoopConfig(Section):
    """What pretraining and fine-tuning share: one training loop, one set of knobs."""

    # A number, or [min, max]: elastic - Ray Train starts as many as it can place, down to min,
    # restarts on fewer when a node is lost and grows again when capacity returns.
    num_workers: int | tuple[int, int] = 2
    use_gpu: bool = False
    cpus_per_worker: int = Field(1, ge=1)
    # How long to wait for the autoscaler to start the nodes the workers need (a GPU node boots in
    # minutes); a cluster that can never host them is refused at once.
    placement_timeout_s: int = Field(1800, ge=0)
    zero_stage: Literal[0, 1, 2, 3] = 1
    offload_optimizer: bool = False
    offload_params: bool = False
    # auto: bf16 on GPUs that have it and on CPUs whose bf16 matmuls measure faster (training/precision.py)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    micro_batch_size: int = Field(8, ge=1)  # sequences per worker per forward pass
    global_batch_size: int = Field(32, ge=1)  # sequences per optimizer step, all workers
    max_steps: int = Field(1000, ge=1)
    # A wall-clock budget instead (90s, 10m, 2h, 1h30m): the run trains until it, the rate decays
    # over the time, and the final evaluation and checkpoint fit inside (training/budget.py)
    time_budget: str | None = None
    lr: float = Field(6e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    warmup_steps: int = Field(100, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = Field(1.0, ge=0)
    eval_interval: int = Field(100, ge=1)
    eval_batches: int = Field(20, ge=1)  # an evaluation covers eval_batches x global_batch_size windows
    log_interval: int = Field(10, ge=1)
    checkpoint_interval: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(3, ge=-1)  # -1: retry forever
    seed: int = 1337
    run_name: str | None = None  # stable name => a resubmitted job resumes; default from fingerprint
    init_from: str | None = None  # models:/name@alias, models:/name/version, a model dir, an HF dir

    @property
    def min_workers(self) -> int:
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[0]

    @property
    def max_workers(self) -> int:
        return self.num_workers if isinstance(self.num_workers, int) else self.num_workers[1]

    @field_validator("time_budget")
    @classmethod
    def _a_duration(cls, value):
        from pipelines.core.duration import parse_duration

        if value is not None:
            parse_duration(value)
        return value

    @field_validator("num_workers")
    @classmethod
    def _workers_range(cls, value):
        low, high = (value, value) if isinstance(value, int) else value
        if not 1 <= low <= high:
            raise ValueError(f"needs a number >= 1 or [min, max] with 1 <= min <= max, got {value}")
        return value

    @model_validator(mode="after")
    def _batch_divides(self):
        # Every world size the run may get must split the global batch into whole micro-batches:
        # the gradient accumulation is recomputed for it, the global batch stays.
        for workers in range(self.min_workers, self.max_workers + 1):
            per_step = self.micro_batch_size * workers
            if self.global_batch_size % per_step:
                raise ValueError(
                    f"global_batch_size={self.global_batch_size} is not a multiple of "
                    f"micro_batch_size*num_workers={per_step}"
                    + (
                        f" (at {workers} of num_workers={list(self.num_workers)})"
                        if workers != self.num_workers
                        else ""
                    )
                )
        return self

    @model_validator(mode="after")
    def _bf16_has_masters(self):
        # Without ZeRO, DeepSpeed's bf16 path (DDP_BFLOAT16) steps the bf16 weights themselves, with
        # no fp32 master copy: small updates round away. On an H200 its 8-step loss curve strayed
        # 1.7x the fp32 loss drop (ZeRO 2: 0.02x; bench/gpu_smoke.py). ZeRO 1 keeps fp32 masters
        # (BF16_Optimizer) at the same communication volume.
        bf16 = self.precision == "bf16" or (self.precision == "auto" and self.use_gpu)
        if bf16 and self.zero_stage == 0:
            raise ValueError(
                f"zero_stage=0 with precision={self.precision}"
                + (" (bf16 on GPUs)" if self.precision == "auto" else "")
                + " would train bf16 weights without fp32 master weights; use zero_stage >= 1 or precision=fp32"
            )
        return self


class TrainConfig(LoopConfig):
    shards: str | None = None  # a shards directory; default: the pipeline's `shards` output


class FinetuneConfig(LoopConfig):
    """init_from (LoopConfig): models:/name@alias, models:/name/version, a models/<run>/ directory or a
    Hugging Face GPT-2 directory; None = the pipeline's own `pretrain` output."""

    enabled: bool = True
    # A JSONL prompt/completion file (*.jsonl; loss on the completion only), a text file (continued
    # pretraining), `demo:corpus-pairs` (pairs made from the pipeline's corpus), or None = the
    # pipeline's shards (continued pretraining, as `train` reads them)
    data: str | None = None
    val_fraction: float = Field(0.1, gt=0, lt=1)  # pairs: by a stable hash of the pair; text: the tail
    demo_pairs: int = Field(2000, ge=10)  # demo:corpus-pairs: at most this many pairs
    lora_rank: int = Field(0, ge=0)  # > 0: train only LoRA adapters of this rank (merged on export)
    lora_alpha: float = Field(16.0, gt=0)  # adapter output scale = lora_alpha / lora_rank
    early_stop_patience: int = Field(0, ge=0)  # evaluations without a better val loss; 0 = never stop

    @model_validator(mode="after")
    def _lora_zero(self):
        if self.lora_rank and self.zero_stage == 3:
            raise ValueError(
                "lora_rank > 0 needs zero_stage 0, 1 or 2 (ZeRO-3 partitions the frozen weights)"
            )
        return self


class GenerateConfig(Section):
    prompts: str | None = None  # JSONL/Parquet (prompt_field, id_field) or text (a prompt a line)
    prompt_field: str = "prompt"
    id_field: str | None = "id"  # a record's prompt id; else its position in the file
    model_uri: str | None = None  # default models:/<registered_model>@champion, resolved to its version
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.8, ge=0)  # 0 = greedy
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int = 0  # with the same prompts and settings, the same output (any actor count)
    num_actors: int = Field(2, ge=1)  # Ray Data actors, each loads the model once
    cpus_per_actor: float = Field(1, gt=0)
    use_gpu: bool = False  # each actor generates on a GPU of its own (or a share of one)
    # An actor uses one device, so at most 1; below 1, several actors share a GPU (0.25: four).
    num_gpus_per_actor: float = Field(1, gt=0, le=1)
    # auto: bf16 on a GPU that has it, else fp32 (fp32 on CPU: the tokens of the saved fp32 model);
    # fp16 needs use_gpu. A seed gives the same output on the same device type and dtype only.
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Prompts per generate() call (and per seeded chunk, so changing it changes the samples). Its KV
    # cache is batch_size x context (<= block_size) x n_layer x 2 (keys, values) x n_embd values of
    # the dtype: 36 MiB a prompt for GPT-2 124M (1024 x 12 x 2 x 768, bf16). 16 suits CPUs; on a
    # GPU raise it (64-256) until the cache and the weights fill what the actor's share holds.
    batch_size: int = Field(16, ge=1)
    # Prompts longer than block_size - max_new_tokens tokens: keep their last tokens, or reject them
    long_prompts: Literal["truncate", "reject"] = "truncate"


class RefreshConfig(Section):
    # The corpus version to refresh (its 12-hex id, or corpus/<id>); default: the newest version of
    # the lineage, i.e. built with the same corpus settings apart from corpus.inputs.
    parent: str | None = None
    # A lock whose holder's heartbeat (rewritten every min(30 s, this / 4) while it runs) is older
    # than this is stale and taken over; a holder on this host that is no longer running, at once.
    lock_stale_seconds: int = Field(900, ge=1)


class RegistryConfig(Section):
    """What registering a pretrained version checks before `champion` moves to it."""

    # Evaluation sets (paths, globs, URIs of JSONL with corpus.text_field, or text files) whose
    # overlap with the training split is measured besides the val split's
    contamination_sets: list[str] = Field(default_factory=list)
    # champion moves only when at most this share of val (and of each set's) documents are
    # contaminated: at least contaminated_doc_share of their n-grams in the training split
    # (pipelines/lineage/contamination.py)
    max_contamination: float = Field(0.01, ge=0, le=1)
    contaminated_doc_share: float = Field(0.5, gt=0, le=1)


class Config(Section):
    workspace: str = "./workspace"
    ray: RayConfig = Field(default_factory=RayConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)
    corpus: CorpusConfig = Field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    shards: ShardsConfig = Field(default_factory=ShardsConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    refresh: RefreshConfig = Field(default_factory=RefreshConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)

    def section(self, name: str) -> Any:
        return getattr(self, name)

    @model_validator(mode="after")
    def _lora_fits(self):
        # Without init_from the model fine-tuned has the `model` section's shape (else: stage pre-flight)
        f = self.finetune
        if f.enabled and not f.init_from and not self.train.init_from:
            problem = lora_rank_problem(f.lora_rank, self.model.resolved("n_embd"), "the model section")
            if problem:
                raise key_error("finetune.lora_rank", problem, f.lora_rank)
        return self
