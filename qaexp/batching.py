"""Batching: data loaders that pad each batch to its own longest window (or, for the seed's
behaviour, to max_length), group training windows of similar length, and evaluate in
length order."""

from __future__ import annotations

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase
from transformers.trainer_pt_utils import LengthGroupedSampler

from qaexp.config import TrainerConfig

MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")
LABEL_COLUMNS = ("start_positions", "end_positions")
FEATURE_INDEX = "feature_index"


def window_lengths(features: datasets.Dataset) -> np.ndarray:
    """Token count of every window, read from the Arrow column without decoding rows."""
    import pyarrow.compute as pc

    column = features.with_format("arrow")[:]["input_ids"]
    return pc.list_value_length(column).to_numpy(zero_copy_only=False)


def make_collator(
    tokenizer: PreTrainedTokenizerBase, cfg: TrainerConfig, max_length: int
) -> DataCollatorWithPadding:
    if cfg.pad_to_max_length:
        return DataCollatorWithPadding(tokenizer, padding="max_length", max_length=max_length)
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=cfg.pad_to_multiple_of)


def _model_view(features: datasets.Dataset, extra: tuple[str, ...]) -> datasets.Dataset:
    keep = [c for c in (*MODEL_COLUMNS, *extra) if c in features.column_names]
    return features.select_columns(keep)


def make_train_loader(
    features: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    cfg: TrainerConfig,
    max_length: int,
    generator: torch.Generator,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Shuffled training batches; with group_by_length, shuffled groups of similar length so
    little compute goes to padding while the order stays random. The order follows
    `generator` (seed it per epoch for an order that survives a resume)."""
    view = _model_view(features, LABEL_COLUMNS)
    if cfg.group_by_length and not cfg.pad_to_max_length:
        lengths = window_lengths(features).tolist()
        sampler = LengthGroupedSampler(cfg.train_batch_size, lengths=lengths, generator=generator)
    else:
        sampler = RandomSampler(view, generator=generator)
    return DataLoader(
        view,
        batch_size=cfg.train_batch_size,
        sampler=sampler,
        # The loader's own base seed is drawn from `generator` too, never from the global RNG,
        # so dropout masks after a resume match those of an uninterrupted run.
        generator=generator,
        collate_fn=make_collator(tokenizer, cfg, max_length),
        num_workers=num_workers,
        pin_memory=pin_memory,
    )


def make_eval_loader(
    features: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    cfg: TrainerConfig,
    max_length: int,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Evaluation batches in length order (least padding); each row carries its feature
    index so logits can be put back in feature order after gathering."""
    view = _model_view(features, ())
    view = view.add_column(FEATURE_INDEX, np.arange(len(view), dtype=np.int64))
    if not cfg.pad_to_max_length:
        order = np.argsort(window_lengths(features), kind="stable")
        view = view.select(order)
    return DataLoader(
        view,
        batch_size=cfg.eval_batch_size,
        sampler=SequentialSampler(view),
        generator=torch.Generator().manual_seed(0),  # keeps the global RNG untouched
        collate_fn=make_collator(tokenizer, cfg, max_length),
        num_workers=num_workers,
        pin_memory=pin_memory,
    )
