"""Answer checks of raw examples (squad schema), and SQuAD v2.0 detection.

Kept apart from `qaexp.data.checks.check_examples` (ids, empty splits, misplaced answers):
these refuse records no scoring can use (an empty context, more answer texts than starts) and
decide whether unanswerable questions are on (``data.allow_unanswerable``).
"""

from __future__ import annotations

import logging

import datasets

from qaexp.config import DataConfig
from qaexp.errors import QAExpError

log = logging.getLogger(__name__)

ALLOW_KEY = "data.allow_unanswerable"


def _first_ids(examples: datasets.Dataset, rows: list[int]) -> str:
    return ", ".join(repr(i) for i in examples.select(rows[:3])["id"])


def check_answer_records(raw: datasets.DatasetDict) -> None:
    """Refuse examples with an empty context, or with answer texts and starts that do not
    pair up (each answer text needs its start)."""
    for split, examples in raw.items():
        contexts = examples["context"]
        empty = [row for row, c in enumerate(contexts) if not (c or "").strip()]
        if empty:
            raise QAExpError(
                f"{len(empty)} {split} example(s) have an empty context (first ids: "
                f"{_first_ids(examples, empty)}); a question needs a paragraph to answer from. "
                "Fix or remove those records."
            )
        unpaired = [
            row
            for row, a in enumerate(examples["answers"])
            if len(a["text"] or []) != len(a["answer_start"] or [])
        ]
        if unpaired:
            row = unpaired[0]
            answers = examples[row]["answers"]
            raise QAExpError(
                f"{len(unpaired)} {split} example(s) have answers with a different number of "
                f"texts and starts (first: id {examples[row]['id']!r}, "
                f"{len(answers['text'])} texts, {len(answers['answer_start'])} starts); each "
                "answer text needs its answer_start."
            )


def count_unanswerable(raw: datasets.DatasetDict) -> dict[str, int]:
    """Questions without any answer text (SQuAD v2.0 unanswerable), per split."""
    return {
        split: sum(not a["text"] for a in examples["answers"]) for split, examples in raw.items()
    }


def resolve_unanswerable(cfg: DataConfig, raw: datasets.DatasetDict) -> bool:
    """Whether the run treats questions without answers as SQuAD v2.0 unanswerable ones:
    ``data.allow_unanswerable`` when set, else whether the data has such questions. Data that
    has them with the key set to false is refused (v1.1 scoring would give a wrong number)."""
    counts = count_unanswerable(raw)
    found = {split: n for split, n in counts.items() if n}
    described = ", ".join(f"{n} of {len(raw[s])} {s} questions" for s, n in found.items())
    if cfg.allow_unanswerable is False and found:
        raise QAExpError(
            f"{ALLOW_KEY}=false, but the data has questions without an answer ({described}): "
            "SQuAD v2.0 data scored as v1.1 gives a wrong number. Set "
            f"{ALLOW_KEY}=true (or leave it null to detect it from the data) to train and "
            "score with unanswerable questions."
        )
    unanswerable = bool(found) if cfg.allow_unanswerable is None else cfg.allow_unanswerable
    if unanswerable:
        log.info(
            "Unanswerable questions are on (%s=%s): %s; SQuAD v2.0 scoring",
            ALLOW_KEY,
            cfg.allow_unanswerable,
            described or "none in this data",
        )
    return unanswerable


def check_answers(cfg: DataConfig, raw: datasets.DatasetDict) -> bool:
    """`check_answer_records`, then `resolve_unanswerable`: whether v2.0 scoring is on."""
    check_answer_records(raw)
    return resolve_unanswerable(cfg, raw)
