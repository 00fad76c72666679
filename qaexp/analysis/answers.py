"""Per-question answers: EM/F1 of every question as the run's metrics score it, the text of
answers.jsonl (its rows come from qaexp.analysis.questions), and reading it back.

One row per evaluation question, in the eval set's order:
`{"id", "epoch", "question", "context", "gold", "prediction", "exact", "f1", "slices"}`
(`context`: the text around the first gold answer; `exact` 0/1, `f1` 0-1), plus
`span_logit` (the start + end logit of the answer's best span, as the n-best search scored
it; null when the question has no valid span; absent in runs made before it was kept) and
`null_odds` for SQuAD v2.0 runs. The mean of `exact`/`f1` over all rows, summed in row order, is the
epoch's exact_match/f1 in metrics.jsonl to the last digit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qaexp.errors import QAExpError
from qaexp.metrics import exact_match_score, f1_score, normalize_answer
from qaexp.tracking.rundir import ANSWERS_FILE, LAST_ANSWERS_FILE

__all__ = ["ANSWERS_FILE", "LAST_ANSWERS_FILE", "Answers", "read_answers"]

EXCERPT_CHARS = 120  # context shown on each side of the gold answer
ROW_KEYS = ("id", "epoch", "question", "context", "gold", "prediction", "exact", "f1", "slices")


def question_scores(
    prediction: str, golds: Sequence[str], unanswerable: bool = False
) -> tuple[float, float]:
    """(EM 0/1, F1 0-1) of one answer, as squad_metrics (v1.1) or, with `unanswerable`,
    squad_v2_metrics (v2.0: golds that normalise to nothing are dropped, none left means
    "no answer", and F1 against an empty side is 1 when both are empty) score it."""
    if unanswerable:
        golds = [g for g in golds if normalize_answer(g)] or [""]
        predicted = normalize_answer(prediction)
        exact = max(float(predicted == normalize_answer(g)) for g in golds)
        f1 = max(
            float(predicted == normalize_answer(g))
            if not predicted or not normalize_answer(g)
            else f1_score(prediction, g)
            for g in golds
        )
        return exact, f1
    exact = max((float(exact_match_score(prediction, g)) for g in golds), default=0.0)
    return exact, max((f1_score(prediction, g) for g in golds), default=0.0)


def percent(values: np.ndarray) -> float:
    """100 x the mean, summed in order as the SQuAD metrics sum (the same last digit)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan")
    return 100.0 * float(np.add.accumulate(values)[-1]) / len(values)


def excerpt(context: str, start: int, end: int, chars: int = EXCERPT_CHARS) -> str:
    """The context around characters [start, end) (its opening for no answer), "..." where cut."""
    if start < 0:
        start = end = 0
    a, b = max(0, start - chars), min(len(context), end + chars)
    return ("..." if a else "") + context[a:b] + ("..." if b < len(context) else "")


def answers_text(rows: list[dict]) -> str:
    """answers.jsonl's text: one JSON object per line."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


@dataclass
class Answers:
    """A run's answers.jsonl as columns (row order kept)."""

    path: Path
    epoch: int
    ids: list[str]
    rows: list[dict]
    exact: np.ndarray
    f1: np.ndarray
    slices: dict[str, np.ndarray]
    span_logits: np.ndarray | None = None  # NaN where a row's is null; None: no row has one

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_rows(cls, path: Path, rows: list[dict]) -> Answers:
        families = list(rows[0]["slices"]) if rows else []
        return cls(
            path=Path(path),
            epoch=rows[0]["epoch"] if rows else None,
            ids=[row["id"] for row in rows],
            rows=rows,
            exact=np.array([row["exact"] for row in rows], dtype=np.float64),
            f1=np.array([row["f1"] for row in rows], dtype=np.float64),
            slices={
                family: np.array([row["slices"].get(family, "") for row in rows], dtype=object)
                for family in families
            },
            span_logits=span_logit_column(rows),
        )


def span_logit_column(rows: list[dict]) -> np.ndarray | None:
    """The rows' span logits as floats (NaN for null), or None when the rows have none."""
    if not rows or "span_logit" not in rows[0]:
        return None
    values = [row.get("span_logit") for row in rows]
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def read_answers(path: Path) -> Answers:
    """answers.jsonl read and checked; a missing, empty or damaged file raises a QAExpError
    naming it, the line and what to do."""
    path = Path(path)
    fix = (
        "Evaluate the run's checkpoint again to write it: python -m qaexp <the run's "
        f"overrides> trainer.epochs=0 model.name_or_path={path.parent / 'checkpoint'}."
    )
    if not path.is_file():
        raise QAExpError(
            f"{path} does not exist: the run was made before qaexp wrote per-question answers, "
            f"or it has not finished an epoch. {fix}"
        )
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
                missing = [k for k in ROW_KEYS if k not in row]
                if missing:
                    raise ValueError(f"no {', '.join(missing)}")
                float(row["exact"]), float(row["f1"])
                if row.get("span_logit") is not None:
                    float(row["span_logit"])
            except (ValueError, TypeError) as err:
                raise QAExpError(
                    f"{path}, line {number}: not an answers.jsonl row ({err}); the file is "
                    f"damaged (a run killed while writing it leaves none: was it edited or "
                    f"copied in part?). {fix}"
                ) from None
            rows.append(row)
    if not rows:
        raise QAExpError(f"{path} is empty: it holds no answers. {fix}")
    epochs = {row["epoch"] for row in rows}
    if len(epochs) > 1:
        raise QAExpError(
            f"{path} mixes the answers of epochs {sorted(epochs)}; the file is damaged. {fix}"
        )
    return Answers.from_rows(path, rows)
