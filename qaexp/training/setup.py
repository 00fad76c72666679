"""Run setup: every check and every piece of data a run needs, before any training compute.

Both engines start here: the config and Hub checks, the tokenizer, the validated raw
examples, the (cached) windows, and the eval loader.
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import datasets
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from qaexp.batching import make_eval_loader
from qaexp.caches import content_fingerprint
from qaexp.checks import validate_settings, validate_windows
from qaexp.config import (
    CheckpointPolicy,
    DataConfig,
    DataSource,
    ModelInit,
    QAExpConfig,
    TrainerEngine,
)
from qaexp.data import SPLITS, check_answers, check_examples, load_raw_datasets
from qaexp.data.sources import FILE_SPLIT_KEYS
from qaexp.errors import QAExpError
from qaexp.features import LABEL_CHECK_COLUMNS, build_features
from qaexp.modeling import (
    EXPORT_RECORD,
    check_max_length,
    describe_model,
    is_export,
    is_qa_checkpoint,
    load_tokenizer,
)
from qaexp.tracking.share import check_push_settings
from qaexp.training.labels import (
    LabelCheck,
    check_eval_reachability,
    check_train_labels,
    require_label_recovery,
)
from qaexp.training.runtime import loader_options

log = logging.getLogger(__name__)


@dataclass
class RunData:
    """Tokenizer, validated raw examples and their windows (no train split when evaluating
    only)."""

    tokenizer: PreTrainedTokenizerBase
    raw: datasets.DatasetDict
    train_windows: datasets.Dataset | None
    eval_windows: datasets.Dataset
    unanswerable: bool = False  # SQuAD v2.0: questions without an answer are scored as such
    # split -> {source, examples, sha256}: what the run trains and evaluates on (`fingerprint`)
    fingerprint: dict = field(default_factory=dict)
    labels: LabelCheck | None = None  # the label check (training/labels.py)

    @property
    def counts(self) -> dict[str, int | float | None]:
        labels = self.labels or LabelCheck()
        return {
            "train_examples": len(self.raw["train"]) if "train" in self.raw else 0,
            "train_windows": len(self.train_windows) if self.train_windows else 0,
            "eval_examples": len(self.raw["validation"]),
            "eval_windows": len(self.eval_windows),
            "label_recovery": labels.recovery,
            "eval_answers_reachable": labels.reachability,
        }

    @property
    def references(self) -> dict[str, list[str]]:
        """Gold answer texts of every evaluation question, by id."""
        validation = self.raw["validation"]
        texts = (a["text"] for a in validation["answers"])
        return dict(zip(validation["id"], texts, strict=True))


def check_run_settings(cfg: QAExpConfig) -> None:
    """Checks that need only the config and the environment (run once, before any data)."""
    validate_settings(cfg)
    check_export_run(cfg)
    check_push_settings(cfg)  # a missing Hub token fails here, not after training


def check_export_run(cfg: QAExpConfig) -> None:
    """An ONNX export (`python -m qaexp.export`) is evaluated, in one process, by the
    Accelerate loop; it has no PyTorch weights to train, keep or upload."""
    name = cfg.model.name_or_path
    if not is_export(name):
        return
    source = f"its source checkpoint (source_checkpoint in {name}/{EXPORT_RECORD})"
    refusals = [
        (
            cfg.trainer.epochs > 0,
            f"trainer.epochs={cfg.trainer.epochs} trains PyTorch weights, which an export has "
            f"not: set trainer.epochs=0 to evaluate the export, or train {source}",
        ),
        (
            cfg.model.init == ModelInit.random,
            "model.init=random would replace the export's weights: use model.init=pretrained",
        ),
        (
            cfg.trainer.engine != TrainerEngine.accelerate,
            "trainer.engine=hf: the Trainer takes PyTorch models only; use "
            "trainer.engine=accelerate",
        ),
        (
            cfg.trainer.save_checkpoint == CheckpointPolicy.last,
            "trainer.save_checkpoint=last would copy PyTorch weights the export has not; the "
            "export folder is already the model (use best or none)",
        ),
        (cfg.hub.push, f"hub.push=true uploads PyTorch weights: push {source} instead"),
        (
            cfg.hardware.num_processes != 1,
            f"hardware.num_processes={cfg.hardware.num_processes}: an ONNX Runtime session "
            "answers on this machine's CPU, in one process (use 1)",
        ),
    ]
    for refused, why in refusals:
        if refused:
            raise QAExpError(f"model.name_or_path={name} is an ONNX export; {why}.")


def load_inputs(cfg: QAExpConfig) -> tuple[PreTrainedTokenizerBase, datasets.DatasetDict, bool]:
    """The settings checks, the tokenizer, the validated raw examples and whether they hold
    unanswerable questions: every input a run shares with the other jobs of a sweep over
    window or optimizer settings."""
    check_run_settings(cfg)
    splits = SPLITS if cfg.trainer.epochs else ("validation",)
    tokenizer = load_tokenizer(cfg.model)
    check_max_length(cfg.model, cfg.max_length)
    raw = load_raw_datasets(cfg.data, splits)
    unanswerable = check_answers(cfg.data, raw)
    raw, _ = check_examples(raw, allow_unanswerable=unanswerable)
    return tokenizer, raw, unanswerable


def prepare_data(cfg: QAExpConfig) -> RunData:
    """Tokenizer, validated raw data and (cached) train/eval windows. Evaluate-only runs
    (trainer.epochs=0) neither load nor window the training split."""
    tokenizer, raw, unanswerable = load_inputs(cfg)
    validate_windows(cfg, tokenizer, raw)
    kwargs = {"max_length": cfg.max_length, "stride": cfg.stride, "num_proc": cfg.data.num_proc}
    train = (
        build_features(raw["train"], tokenizer, train=True, **kwargs) if "train" in raw else None
    )
    evaluation = build_features(raw["validation"], tokenizer, train=False, **kwargs)
    labels = LabelCheck()
    if train is not None:
        labels = check_train_labels(train, raw["train"])
        require_label_recovery(labels, cfg.data.min_label_recovery)
        train = train.remove_columns(list(LABEL_CHECK_COLUMNS))
    check_eval_reachability(evaluation, raw["validation"], labels)
    return RunData(
        tokenizer, raw, train, evaluation, unanswerable, fingerprint(cfg.data, raw), labels
    )


def fingerprint(cfg: DataConfig, raw: datasets.DatasetDict) -> dict:
    """Per split: where the examples come from, how many, and a sha256 of their content (from
    the checksums the caches compute), saved with the state and in summary.json, so a resume
    on changed data is noticed."""
    return {
        split: {
            "source": describe_source(cfg, split),
            "examples": len(examples),
            "sha256": content_fingerprint(examples),
        }
        for split, examples in raw.items()
    }


def describe_source(cfg: DataConfig, split: str) -> str:
    """The key and file (or Hub dataset, or generator) a split comes from."""
    if cfg.source in (DataSource.json, DataSource.files):
        file = cfg.train_file if split == "train" else cfg.validation_file
        return f"{FILE_SPLIT_KEYS[split]}={file}"
    if cfg.source == DataSource.hub:
        name = cfg.train_split if split == "train" else cfg.validation_split
        return f"{cfg.hub_id} split {name}"
    return f"the synthetic {split} split"


def prepare_data_once(cfg: QAExpConfig, main_first: AbstractContextManager) -> RunData:
    """`prepare_data` on the main process first (it fills the caches), then on the others."""
    with main_first:
        return prepare_data(cfg)


def eval_loader(data: RunData, cfg: QAExpConfig, device: torch.device) -> DataLoader:
    """The evaluation loader both engines use (windows in order, carrying their index)."""
    trainer = cfg.trainer
    return make_eval_loader(
        data.eval_windows,
        data.tokenizer,
        trainer.eval_batch_size,
        cfg.max_length,
        trainer.pad_to_max_length,
        trainer.pad_to_multiple_of,
        **loader_options(cfg.hardware, device),
    )


def warn_if_qa_head_untrained(model: torch.nn.Module, cfg: QAExpConfig) -> None:
    """Evaluate-only runs: say so when the scores will measure random weights."""
    if cfg.model.init == ModelInit.random:
        log.warning(
            "model.init=random: evaluating randomly initialised weights. To evaluate a "
            "checkpoint, use model.init=pretrained model.name_or_path=PATH."
        )
    elif not is_qa_checkpoint(model):
        log.warning(
            "%s was not saved as a question-answering model: its QA head is freshly "
            "initialised, so these scores are those of a random head.",
            describe_model(cfg.model),
        )
