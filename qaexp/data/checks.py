"""Checks of the input records: training/evaluation splits, and the questions given to the
pipeline or to predict. Bad records get one paragraph naming the record and the field."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import datasets

from qaexp.errors import QAExpError

log = logging.getLogger(__name__)


def question_record(item: object, where: str) -> dict[str, str]:
    """A {question, context} record with both fields strings, or a QAExpError naming `where`."""
    if not isinstance(item, Mapping):
        raise QAExpError(f"{where} must be a dict with 'question' and 'context', got {item!r:.80}.")
    for key in ("question", "context"):
        if not isinstance(item.get(key), str):
            raise QAExpError(f"{where} needs a string {key!r}, got {item.get(key)!r:.80}.")
    return {"question": item["question"], "context": item["context"]}


def _answer_problems(
    examples: datasets.Dataset, allow_unanswerable: bool = False
) -> tuple[list[int], list[int]]:
    """Rows without any answer (none when unanswerable questions are allowed), and rows with
    an answer whose answer_start does not point at its text in the context."""
    contexts = examples["context"]
    answers = examples["answers"]
    missing, misplaced = [], []
    for row, (context, answer) in enumerate(zip(contexts, answers, strict=True)):
        texts, starts = answer["text"], answer["answer_start"]
        if allow_unanswerable and not texts and not starts:
            continue
        if not texts or len(texts) != len(starts):
            missing.append(row)
        elif any(context[s : s + len(t)] != t for t, s in zip(texts, starts, strict=True)):
            misplaced.append(row)
    return missing, misplaced


def _duplicate_ids(examples: datasets.Dataset) -> list[str]:
    seen, repeated = set(), []
    for example_id in examples["id"]:
        if example_id in seen:
            repeated.append(example_id)
        seen.add(example_id)
    return repeated


def check_examples(
    raw: datasets.DatasetDict, allow_unanswerable: bool = False
) -> tuple[datasets.DatasetDict, dict[str, int]]:
    """Refuse duplicate ids and empty splits; leave training examples with a missing or
    misplaced answer out of training (counted and reported, never trained on). With
    `allow_unanswerable` (SQuAD v2.0) a question without answers is kept, not missing."""
    report: dict[str, int] = {}
    for split, examples in raw.items():
        if len(examples) == 0:
            raise QAExpError(f"The {split} split has no examples; check the data settings.")
        repeated = _duplicate_ids(examples)
        if repeated:
            raise QAExpError(
                f"The {split} split has {len(repeated)} duplicate question id(s) (first: "
                f"{repeated[0]!r}); every question needs its own id for predictions and scores."
            )
        missing, misplaced = _answer_problems(examples, allow_unanswerable)
        report[f"{split}_without_answer"] = len(missing)
        report[f"{split}_misplaced_answers"] = len(misplaced)
        if split == "train" and (missing or misplaced):
            bad = set(missing) | set(misplaced)
            log.warning(
                "Leaving %d of %d training examples out: %d without an answer, %d whose "
                "answer_start does not point at the answer text (first ids: %s)",
                len(bad),
                len(examples),
                len(missing),
                len(misplaced),
                ", ".join(examples.select(sorted(bad)[:3])["id"]),
            )
            raw[split] = examples.select([i for i in range(len(examples)) if i not in bad])
        elif split != "train" and missing:
            raise QAExpError(
                f"{len(missing)} {split} question(s) have no gold answer (first id: "
                f"{examples[missing[0]]['id']!r}); SQuAD v1.1 scoring needs at least one."
            )
        elif misplaced:
            log.warning(
                "%d %s answers' answer_start does not point at their text; scoring uses the "
                "texts only, so the scores are unaffected",
                len(misplaced),
                split,
            )
    return raw, report
