"""The label check of every training run: the train windows' start/end labels decoded back
through the tokenizer's offsets must give the gold answers (SQuAD normalisation), and the
evaluation answers must lie in some window. Offsets that overlap or carry spaces (a tokenizer
bug, an offset normalisation switched off) show here before any compute goes to them."""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from qaexp.errors import QAExpError
from qaexp.features import (
    BROKEN_LABEL,
    LABEL_END_CHAR,
    LABEL_START_CHAR,
    NO_LABEL,
    first_answers,
)
from qaexp.metrics import normalize_answer

SHOWN_MISSES = 3  # examples named when the check fails


@dataclass
class LabelCheck:
    """Labelled train windows whose labels decode to the gold answer, and evaluation
    questions whose (first) gold answer lies wholly inside one of their windows."""

    labelled: int = 0
    recovered: int = 0
    misses: list[tuple[str, str, str]] = field(default_factory=list)  # id, gold, decoded
    answerable_eval: int = 0
    reachable_eval: int = 0

    @property
    def recovery(self) -> float | None:
        return self.recovered / self.labelled if self.labelled else None

    @property
    def reachability(self) -> float | None:
        return self.reachable_eval / self.answerable_eval if self.answerable_eval else None

    def describe(self) -> str:
        """The run block's line."""
        parts = []
        if self.labelled:
            parts.append(
                f"{self.recovery:.2%} of {self.labelled} labelled train windows decode to "
                "their gold answer"
            )
        if self.answerable_eval:
            parts.append(
                f"{self.reachability:.2%} of {self.answerable_eval} eval answers lie in a window"
            )
        return "; ".join(parts) or "no answers to check"


def _column(windows: datasets.Dataset, name: str) -> pa.Array:
    return windows.with_format("arrow")[:][name].combine_chunks()


def _example_rows(windows: datasets.Dataset, examples: datasets.Dataset) -> np.ndarray:
    """The examples' row of every window (through their ids)."""
    ids = pa.array(examples["id"], type=pa.string())
    return pc.index_in(_column(windows, "example_id"), value_set=ids).to_numpy(zero_copy_only=False)


def check_train_labels(
    windows: datasets.Dataset, examples: datasets.Dataset, shown: int = SHOWN_MISSES
) -> LabelCheck:
    """Decode each labelled window (features.LABEL_CHECK_COLUMNS) and compare it with the gold
    answer: the same characters, or the same text after SQuAD normalisation. The first
    `shown` misses are kept to name them."""
    start = _column(windows, LABEL_START_CHAR).to_numpy()
    end = _column(windows, LABEL_END_CHAR).to_numpy()
    labelled = start != NO_LABEL
    rows = _example_rows(windows, examples)
    gold_start, gold_length = first_answers(examples["answers"])
    gold_end = gold_start + gold_length
    exact = labelled & (start == gold_start[rows]) & (end == gold_end[rows])
    check = LabelCheck(labelled=int(labelled.sum()), recovered=int(exact.sum()))
    contexts = examples["context"] if (labelled & ~exact).any() else []
    for window in np.flatnonzero(labelled & ~exact):  # only windows that differ: few
        row = rows[window]
        gold = examples[int(row)]["answers"]["text"][0]
        broken = start[window] == BROKEN_LABEL
        decoded = "" if broken else contexts[row][start[window] : end[window]]
        if not broken and normalize_answer(decoded) == normalize_answer(gold):
            check.recovered += 1
        elif len(check.misses) < shown:
            got = "labels whose tokens overlap their neighbours" if broken else repr(decoded)
            check.misses.append((examples[int(row)]["id"], gold, got))
    return check


def check_eval_reachability(
    windows: datasets.Dataset, examples: datasets.Dataset, check: LabelCheck
) -> None:
    """Count the answerable evaluation questions whose first gold answer lies wholly inside
    the context of one of their windows (the offsets of eval windows)."""
    offsets = _column(windows, "offset_mapping")
    lengths = pc.fill_null(pc.list_value_length(offsets), 0).to_numpy(zero_copy_only=False)
    tokens = pc.list_flatten(offsets)
    window_of_token = np.repeat(np.arange(len(lengths)), lengths)
    context = tokens.is_valid().to_numpy(zero_copy_only=False)
    pairs = pc.list_flatten(tokens).to_numpy(zero_copy_only=False).reshape(-1, 2)
    owner = window_of_token[context]
    lowest = np.full(len(lengths), np.iinfo(np.int64).max)
    highest = np.full(len(lengths), -1)
    np.minimum.at(lowest, owner, pairs[:, 0])
    np.maximum.at(highest, owner, pairs[:, 1])
    rows = _example_rows(windows, examples)
    gold_start, gold_length = first_answers(examples["answers"])
    gold_end = gold_start + gold_length
    inside = (lowest <= gold_start[rows]) & (highest >= gold_end[rows])
    reachable = np.zeros(len(examples), dtype=bool)
    np.logical_or.at(reachable, rows, inside)
    answerable = gold_start >= 0
    check.answerable_eval = int(answerable.sum())
    check.reachable_eval = int((reachable & answerable).sum())


def require_label_recovery(check: LabelCheck, threshold: float) -> None:
    """Stop the run when fewer labelled windows than `threshold` decode to their answer."""
    if check.recovery is None or check.recovery >= threshold:
        return
    shown = "; ".join(f"{i}: gold {gold!r}, labels give {got}" for i, gold, got in check.misses)
    raise QAExpError(
        f"Label check failed: only {check.recovery:.2%} of the {check.labelled} labelled "
        f"training windows decode back to their gold answer through the tokenizer's offsets "
        f"(data.min_label_recovery={threshold}). For example {shown}. Either the tokenizer's "
        "offsets do not line up with the context (offsets that overlap or include spaces), "
        "or the answers begin or end inside words the tokenizer keeps whole, or their "
        "answer_start points at the wrong place; check model.tokenizer and the data, or "
        "lower data.min_label_recovery to train on these labels anyway."
    )
