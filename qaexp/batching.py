"""Batching: data loaders that pad each batch to its own longest window (or, for the seed's
behaviour, to max_length), group training windows of similar length, and evaluate in
length order."""

from __future__ import annotations

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler, Sampler, SequentialSampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from qaexp.config import TrainerConfig

MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")
LABEL_COLUMNS = ("start_positions", "end_positions")
WINDOW_INDEX = "window_index"


def window_lengths(features: datasets.Dataset) -> np.ndarray:
    """Token count of every window, read from the Arrow column without decoding rows."""
    import pyarrow.compute as pc

    column = features.with_format("arrow")[:]["input_ids"]
    return pc.list_value_length(column).to_numpy(zero_copy_only=False)


class LengthGroupedSampler(Sampler[int]):
    """Training order in shuffled batches of similar length.

    Every epoch: a random permutation, cut into groups of ``group_batches`` batches; each group
    is sorted by length and cut into batches; then the batches are shuffled, the one holding
    the longest window first (an out-of-memory error shows at step 1, not hours in). Sorting
    within a random group keeps padding low; shuffling the batches keeps the order random
    (transformers' sampler of the same name walks each group from long to short windows).
    """

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        generator: torch.Generator,
        group_batches: int = 50,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.generator = generator
        self.group_size = group_batches * batch_size

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[np.ndarray]:
        """One epoch's batches of window indices, in training order."""
        order = torch.randperm(len(self.lengths), generator=self.generator).numpy()
        if not len(order):
            return []
        batches = []
        for begin in range(0, len(order), self.group_size):
            group = order[begin : begin + self.group_size]
            group = group[np.argsort(-self.lengths[group], kind="stable")]
            batches += [
                group[i : i + self.batch_size] for i in range(0, len(group), self.batch_size)
            ]
        # Groups hold whole batches, so only the very last batch can be short: it stays last,
        # so that the loader's consecutive slices of batch_size are exactly these batches.
        short = [batches.pop()] if len(batches[-1]) < self.batch_size else []
        batches = [batches[i] for i in torch.randperm(len(batches), generator=self.generator)]
        if batches:
            longest = int(np.argmax([self.lengths[b].max() for b in batches]))
            batches[0], batches[longest] = batches[longest], batches[0]
        return batches + short

    def __iter__(self):
        batches = self.batches()
        return iter(np.concatenate(batches).tolist() if batches else [])


def make_collator(
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    pad_to_max_length: bool = False,
    pad_to_multiple_of: int = 8,
) -> DataCollatorWithPadding:
    """Pads a batch to its longest window (rounded up to `pad_to_multiple_of`), or every
    window to `max_length`."""
    if pad_to_max_length:
        return DataCollatorWithPadding(tokenizer, padding="max_length", max_length=max_length)
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of)


def _model_view(features: datasets.Dataset, extra: tuple[str, ...]) -> datasets.Dataset:
    keep = [c for c in (*MODEL_COLUMNS, *extra) if c in features.column_names]
    return features.select_columns(keep)


def _worker_options(num_workers: int, pin_memory: bool) -> dict:
    """DataLoader worker settings; workers live across epochs (no respawn every epoch)."""
    return {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "persistent_workers": num_workers > 0,
    }


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
    if cfg.group_by_length and not cfg.pad_to_max_length:
        sampler = LengthGroupedSampler(window_lengths(features), cfg.train_batch_size, generator)
    else:
        sampler = RandomSampler(range(len(features)), generator=generator)
    return DataLoader(
        _model_view(features, LABEL_COLUMNS),
        batch_size=cfg.train_batch_size,
        sampler=sampler,
        # The loader's own base seed is drawn from `generator` too, never from the global RNG,
        # so dropout masks after a resume match those of an uninterrupted run.
        generator=generator,
        collate_fn=make_collator(
            tokenizer, max_length, cfg.pad_to_max_length, cfg.pad_to_multiple_of
        ),
        **_worker_options(num_workers, pin_memory),
    )


def make_eval_loader(
    features: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    max_length: int,
    pad_to_max_length: bool = False,
    pad_to_multiple_of: int = 8,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """Evaluation batches in length order (least padding); each row carries its window
    index so logits can be put back in window order after gathering."""
    view = _model_view(features, ())
    view = view.add_column(WINDOW_INDEX, np.arange(len(view), dtype=np.int64))
    if not pad_to_max_length:
        order = np.argsort(window_lengths(features), kind="stable")
        view = view.select(order)
    return DataLoader(
        view,
        batch_size=batch_size,
        sampler=SequentialSampler(view),
        generator=torch.Generator().manual_seed(0),  # keeps the global RNG untouched
        collate_fn=make_collator(tokenizer, max_length, pad_to_max_length, pad_to_multiple_of),
        **_worker_options(num_workers, pin_memory),
    )
