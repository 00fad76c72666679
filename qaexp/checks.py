"""Checks of the settings, alone and against the tokenizer and the data, before any compute."""

from __future__ import annotations

import logging
import math

import datasets
import numpy as np
from transformers import PreTrainedTokenizerBase

from qaexp.config import QAExpConfig
from qaexp.errors import QAExpError

log = logging.getLogger(__name__)

POSITIVE_KEYS = (
    "max_length",
    "stride",
    "n_best",
    "max_answer_length",
    "trainer.epochs",
    "trainer.train_batch_size",
    "trainer.eval_batch_size",
    "trainer.gradient_accumulation_steps",
    "trainer.pad_to_multiple_of",
)


def _get(cfg: QAExpConfig, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def validate_settings(cfg: QAExpConfig) -> None:
    """Checks that need only the config."""
    for key in POSITIVE_KEYS:
        value = _get(cfg, key)
        if value < 1 and not (key == "trainer.epochs" and value == 0):
            raise QAExpError(f"{key}={value}: must be a positive integer.")
    if cfg.hardware.num_processes < 0:
        raise QAExpError(
            f"hardware.num_processes={cfg.hardware.num_processes}: use a positive number of "
            "processes, or 0 for one per visible GPU."
        )
    if cfg.optimizer.lr <= 0:
        raise QAExpError(f"optimizer.lr={cfg.optimizer.lr}: must be positive.")
    if not 0 <= cfg.optimizer.warmup_ratio < 1:
        raise QAExpError(f"optimizer.warmup_ratio={cfg.optimizer.warmup_ratio}: must be in [0, 1).")
    workers = cfg.hardware.dataloader_workers
    if workers is not None and workers < 0:
        raise QAExpError(
            f"hardware.dataloader_workers={workers}: must be 0 or more worker processes, or "
            "null for the default (0 on the CPU, a few per GPU)."
        )
    if not 0 <= cfg.data.min_label_recovery <= 1:
        raise QAExpError(
            f"data.min_label_recovery={cfg.data.min_label_recovery}: must be a share in [0, 1] "
            "(0.99: stop when more than 1% of the training labels miss their answer)."
        )
    warn_static_compile(cfg)
    for key in ("data.max_train_samples", "data.max_eval_samples"):
        value = _get(cfg, key)
        if value is not None and value < 1:
            raise QAExpError(f"{key}={value}: must be a positive number of examples, or null.")


def warn_static_compile(cfg: QAExpConfig) -> None:
    """torch.compile with static shapes compiles one graph per batch width; past torch's
    recompile limit the rest runs uncompiled, so say so before minutes go to compiling."""
    trainer = cfg.trainer
    if not trainer.compile or trainer.compile_dynamic is not False or trainer.pad_to_max_length:
        return
    import torch._dynamo

    widths = math.ceil(cfg.max_length / trainer.pad_to_multiple_of)
    limit = torch._dynamo.config.recompile_limit
    if widths > limit:
        log.warning(
            "trainer.compile_dynamic=false with max_length=%d and trainer.pad_to_multiple_of=%d "
            "allows %d batch widths, more than torch's recompile limit (%d): widths past it run "
            "uncompiled. Use trainer.pad_to_multiple_of=%d, or trainer.compile_dynamic=null.",
            cfg.max_length,
            trainer.pad_to_multiple_of,
            widths,
            limit,
            max(64, math.ceil(cfg.max_length / limit)),
        )


def validate_windows(
    cfg: QAExpConfig, tokenizer: PreTrainedTokenizerBase, raw: datasets.DatasetDict
) -> None:
    """Every split's questions fit a window of max_length with stride (see check_windows)."""
    for split, examples in raw.items():
        check_windows(examples["question"], tokenizer, cfg.max_length, cfg.stride, split)


def check_windows(
    questions: list[str],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    stride: int,
    label: str,
) -> None:
    """The longest question must leave room for context, and the stride must be smaller
    than that room (the tokenizer cannot slide a window otherwise: it panics)."""
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit < 100_000 and max_length > limit:
        raise QAExpError(
            f"max_length={max_length} is longer than the model accepts ({limit} tokens, "
            f"its position embeddings); use max_length={limit} or less."
        )
    specials = tokenizer.num_special_tokens_to_add(pair=True)
    stripped = [q.strip() for q in questions]
    lengths = np.array(
        [len(ids) for ids in tokenizer(stripped, add_special_tokens=False)["input_ids"]]
    )
    room = max_length - specials - int(lengths.max())
    if room < 1:
        too_long = int((lengths + specials >= max_length).sum())
        raise QAExpError(
            f"max_length={max_length} leaves no room for context: {too_long} {label} "
            f"question(s) take {int(lengths.max())} tokens or more (plus {specials} special "
            "tokens). Raise max_length or drop those questions."
        )
    if stride >= room:
        raise QAExpError(
            f"stride={stride} must be smaller than the room left for context in a "
            f"window: max_length={max_length} minus the longest {label} question "
            f"({int(lengths.max())} tokens) minus {specials} special tokens = {room}. Use "
            f"stride={max(room // 2, 1)} or raise max_length."
        )
