"""Checks of the input records: training/evaluation splits, and the questions given to the
pipeline or to predict. Bad records get one paragraph naming the record and the field.

Text is brought to Unicode NFC (composed characters) before any answer offset is checked:
the same accented letter may be one code point or a letter plus a combining mark, and an
answer_start counted on one form points elsewhere in the other."""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Mapping

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from qaexp.errors import QAExpError

log = logging.getLogger(__name__)


def question_record(item: object, where: str) -> dict[str, str]:
    """A {question, context} record with both fields strings, or a QAExpError naming `where`."""
    if not isinstance(item, Mapping):
        raise QAExpError(f"{where} must be a dict with 'question' and 'context', got {item!r:.80}.")
    for key in ("question", "context"):
        if not isinstance(item.get(key), str):
            raise QAExpError(f"{where} needs a string {key!r}, got {item.get(key)!r:.80}.")
        if not item[key].strip():
            raise QAExpError(f"{where} has an empty {key!r}: there is nothing to answer.")
    return {"question": item["question"], "context": item["context"]}


def _is_text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _points_at(context: str, text: object, start: object) -> bool:
    """answer_start inside the context, pointing at a non-empty answer text."""
    return (
        _is_text(text)
        and isinstance(start, int)
        and 0 <= start
        and start + len(text) <= len(context)
        and context[start : start + len(text)] == text
    )


def _nfc(text: str | None) -> str | None:
    return unicodedata.normalize("NFC", text) if isinstance(text, str) else text


def _composed_start(context: str, composed: str, text: str, start: int) -> int:
    """An answer_start moved into the NFC `composed` context: counted on `context` as given
    (the NFC of the text before it gives the new start), or else already counted on the
    composed text (kept). A start that fits neither is kept for the checks to report."""
    if not isinstance(start, int) or start < 0 or not isinstance(text, str):
        return start
    before = _nfc(context[:start])
    if composed.startswith(before) and composed.startswith(_nfc(text), len(before)):
        return len(before)
    return start


def _compose_batch(batch: dict) -> dict:
    """One batch of records with context, question and answer texts in NFC (Dataset.map)."""
    answers = []
    for context, answer in zip(batch["context"], batch["answers"], strict=True):
        texts = (answer or {}).get("text") or []
        starts = (answer or {}).get("answer_start") or []
        composed = _nfc(context) or ""
        if len(texts) == len(starts):  # unpaired answers are refused by check_answer_records
            starts = [
                _composed_start(context or "", composed, t, s)
                for t, s in zip(texts, starts, strict=True)
            ]
        answers.append({"text": [_nfc(t) for t in texts], "answer_start": starts})
    return {
        "context": [_nfc(c) for c in batch["context"]],
        "question": [_nfc(q) for q in batch["question"]],
        "answers": answers,
    }


def _not_composed(values: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Which of the strings are not in NFC (nulls are not)."""
    differs = pc.not_equal(pc.utf8_normalize(values, form="NFC"), values)
    return pc.fill_null(differs, False).to_numpy(zero_copy_only=False)


def _decomposed_rows(examples: datasets.Dataset) -> list[int]:
    """Rows whose context, question or an answer text is not in NFC (Arrow columns, read
    once, compared with their NFC form)."""
    table = examples.with_format("arrow")[:]
    texts = pc.struct_field(table["answers"].combine_chunks(), "text")
    bad = _not_composed(table["context"]) | _not_composed(table["question"])
    parents = pc.list_parent_indices(texts).to_numpy()
    bad[parents[_not_composed(pc.list_flatten(texts))]] = True
    return np.flatnonzero(bad).tolist()


def compose_unicode(examples: datasets.Dataset, split: str) -> datasets.Dataset:
    """`examples` with context, question and answer texts in Unicode NFC and every
    answer_start moved to the same character of the composed context (see
    `_composed_start`); unchanged (the same Dataset) when the text already is NFC."""
    rows = _decomposed_rows(examples)
    if not rows:
        return examples
    composed = examples.map(
        _compose_batch, batched=True, features=examples.features, desc=f"Unicode NFC ({split})"
    )
    before, after = examples.select(rows)["answers"], composed.select(rows)["answers"]
    moved = sum(b["answer_start"] != a["answer_start"] for b, a in zip(before, after, strict=True))
    log.info(
        "Brought the %s text to Unicode NFC (composed accents): %d of %d examples had "
        "decomposed text, %d examples' answer_start moved to the same character of the composed "
        "context; offsets are checked and windows built on the NFC text",
        split,
        len(rows),
        len(examples),
        moved,
    )
    return composed


def _answer_problems(
    examples: datasets.Dataset, allow_unanswerable: bool = False
) -> tuple[list[int], list[int], list[int]]:
    """Rows whose question or context is missing or blank; rows without any answer (none when
    unanswerable questions are allowed); rows with an answer whose answer_start lies outside
    the context or does not point at its (non-empty) text."""
    blank, missing, misplaced = [], [], []
    rows = zip(examples["question"], examples["context"], examples["answers"], strict=True)
    for row, (question, context, answer) in enumerate(rows):
        texts = (answer or {}).get("text") or []
        starts = (answer or {}).get("answer_start") or []
        if not _is_text(question) or not _is_text(context):
            blank.append(row)
        elif allow_unanswerable and not texts and not starts:
            continue
        elif not texts or len(texts) != len(starts):
            missing.append(row)
        elif not all(_points_at(context, t, s) for t, s in zip(texts, starts, strict=True)):
            misplaced.append(row)
    return blank, missing, misplaced


def _id_problems(examples: datasets.Dataset) -> list[str]:
    """Ids that are null or blank."""
    return [repr(i) for i in examples["id"] if not _is_text(i)]


def _duplicate_ids(examples: datasets.Dataset) -> list[str]:
    seen, repeated = set(), []
    for example_id in examples["id"]:
        if example_id in seen:
            repeated.append(example_id)
        seen.add(example_id)
    return repeated


def _drop_training_rows(
    examples: datasets.Dataset, blank: list[int], missing: list[int], misplaced: list[int]
) -> datasets.Dataset:
    """Training examples without a usable question, context or answer: counted, reported and
    left out (never trained on)."""
    bad = set(blank) | set(missing) | set(misplaced)
    if len(bad) == len(examples):
        raise QAExpError(
            f"The train split has nothing to train on: every one of the {len(examples)} "
            f"training examples is unusable ({len(blank)} with an empty question or context, "
            f"{len(missing)} without an answer, {len(misplaced)} whose answer_start lies "
            "outside the context or does not point at the answer text; first ids: "
            f"{', '.join(map(str, examples.select(sorted(bad)[:3])['id']))}). answer_start "
            "is the character offset of the answer text in its context; it is checked after "
            "both are brought to Unicode NFC (an offset counted on the text as given, or on "
            "its NFC form, is accepted). Check how the offsets were computed and fix the data."
        )
    log.warning(
        "Leaving %d of %d training examples out: %d with an empty question or context, %d "
        "without an answer, %d whose answer_start lies outside the context or does not point "
        "at the answer text (first ids: %s)",
        len(bad),
        len(examples),
        len(blank),
        len(missing),
        len(misplaced),
        ", ".join(map(str, examples.select(sorted(bad)[:3])["id"])),
    )
    return examples.select([i for i in range(len(examples)) if i not in bad])


def check_examples(
    raw: datasets.DatasetDict, allow_unanswerable: bool = False
) -> tuple[datasets.DatasetDict, dict[str, int]]:
    """Refuse duplicate, null or empty ids and empty splits, and evaluation questions with an
    empty question or context; leave training examples with an empty question or context, or
    a missing or misplaced answer, out of training (counted and reported, never trained on),
    and refuse a training split left empty. Text is first brought to Unicode NFC
    (`compose_unicode`). With `allow_unanswerable` (SQuAD v2.0) a question without answers
    is kept, not missing."""
    report: dict[str, int] = {}
    for split, examples in raw.items():
        examples = raw[split] = compose_unicode(examples, split)
        if len(examples) == 0:
            raise QAExpError(f"The {split} split has no examples; check the data settings.")
        repeated = _duplicate_ids(examples)
        if repeated:
            raise QAExpError(
                f"The {split} split has {len(repeated)} duplicate question id(s) (first: "
                f"{repeated[0]!r}); every question needs its own id for predictions and scores."
            )
        bad_ids = _id_problems(examples)
        if bad_ids:
            raise QAExpError(
                f"The {split} split has {len(bad_ids)} question(s) with a null or empty id "
                f"(first: {bad_ids[0]}); every question needs its own id."
            )
        blank, missing, misplaced = _answer_problems(examples, allow_unanswerable)
        report[f"{split}_blank_questions"] = len(blank)
        report[f"{split}_without_answer"] = len(missing)
        report[f"{split}_misplaced_answers"] = len(misplaced)
        if split == "train" and (blank or missing or misplaced):
            raw[split] = _drop_training_rows(examples, blank, missing, misplaced)
        elif blank:
            raise QAExpError(
                f"{len(blank)} {split} question(s) have an empty or null question or context "
                f"(first id: {examples[blank[0]]['id']!r}); they cannot be answered."
            )
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
