"""The evaluation questions of a run with their slices: what every epoch's answers are scored
and labelled against, and how the run directory gets answers.jsonl and analysis.md/.json
from them (the `AnswerSheet` of qaexp.tracking.rundir)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from qaexp.analysis.answers import ANSWERS_FILE, Answers, answers_text, excerpt, question_scores
from qaexp.analysis.report import run_report
from qaexp.analysis.slices import slice_labels


@dataclass
class QuestionSet:
    """The evaluation questions of a run with their slices: what every epoch's answers are
    scored and labelled against. Built once per run from the gold data and the windows."""

    ids: list[str]
    questions: list[str]
    excerpts: list[str]
    golds: list[list[str]]
    slices: dict[str, np.ndarray]
    unanswerable: bool = False

    @classmethod
    def build(
        cls, examples: datasets.Dataset, windows: datasets.Dataset, unanswerable: bool = False
    ) -> QuestionSet:
        answers = examples["answers"]
        excerpts = [
            excerpt(c, a["answer_start"][0], a["answer_start"][0] + len(a["text"][0]))
            if a["text"]
            else excerpt(c, -1, -1)
            for c, a in zip(examples["context"], answers, strict=True)
        ]
        return cls(
            ids=list(examples["id"]),
            questions=list(examples["question"]),
            excerpts=excerpts,
            golds=[list(a["text"]) for a in answers],
            slices=slice_labels(examples, windows, unanswerable),
            unanswerable=unanswerable,
        )

    def rows(
        self,
        epoch: int,
        predictions: Mapping[str, str],
        null_odds: Mapping[str, float] | None = None,
        span_logits: Mapping[str, float | None] | None = None,
    ) -> list[dict]:
        """answers.jsonl's rows for one epoch's predictions (a missing one scores 0), with
        each answer's `span_logit` when `span_logits` is given."""
        rows = []
        families = list(self.slices)
        for i, qid in enumerate(self.ids):
            prediction = predictions.get(qid)
            exact, f1 = (
                question_scores(prediction, self.golds[i], self.unanswerable)
                if prediction is not None
                else (0.0, 0.0)
            )
            row = {
                "id": qid,
                "epoch": epoch,
                "question": self.questions[i],
                "context": self.excerpts[i],
                "gold": self.golds[i],
                "prediction": prediction,
                **({"span_logit": span_logits.get(qid)} if span_logits is not None else {}),
                "exact": exact,
                "f1": f1,
                "slices": {family: str(self.slices[family][i]) for family in families},
            }
            if null_odds is not None:
                row["null_odds"] = null_odds.get(qid)
            rows.append(row)
        return rows

    def jsonl(self, rows: list[dict]) -> str:
        return answers_text(rows)

    def report(self, rows: list[dict]) -> tuple[str, dict]:
        """analysis.md and analysis.json of the rows."""
        return run_report(Answers.from_rows(Path(ANSWERS_FILE), rows), "this run")
