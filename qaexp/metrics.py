"""SQuAD v1.1 metrics: answer texts -> exact match and token F1, in percent.

The numbers equal the official evaluation script (``evaluate-v1.1.py``, Rajpurkar et al. 2016,
also the ``squad`` metric of the ``evaluate`` library): answers are normalised (lowercase,
drop ``string.punctuation``, drop the whole words a/an/the, collapse whitespace); EM is string
equality and F1 the harmonic mean of token precision and recall with multiset overlap; each
question takes its best score over its gold answers; the average runs over all reference ids,
and a question without a prediction scores 0, as in the official script.

``SquadV1Metric`` wraps the same computation as an ``evaluate.Metric`` that works offline
(``evaluate.load("squad")`` needs the Hub). It is built on first access, because importing
``evaluate`` takes seconds.
"""

from __future__ import annotations

import functools
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

# SquadV1Metric is also public; it is left out of __all__ so `import *` does not import evaluate.
__all__ = [
    "exact_match_score",
    "f1_score",
    "normalize_answer",
    "squad_metrics",
]

# Deletes every character of string.punctuation, as the official script's
# `"".join(ch for ch in text if ch not in exclude)`; a character class is ~2.5x faster than
# str.translate on SQuAD answers.
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")
# The official pattern; `\b` is Unicode-aware for str patterns in both.
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")


def _tokens(text: str) -> list[str]:
    """Tokens of the normalised answer: lower, no punctuation, no articles, split on spaces."""
    return _ARTICLES.sub(" ", _PUNCTUATION.sub("", text.lower())).split()


def normalize_answer(s: str) -> str:
    """Normalise an answer as the official SQuAD v1.1 script does."""
    return " ".join(_tokens(s))


@functools.lru_cache(maxsize=1 << 17)
def _gold(text: str) -> tuple[tuple[str, ...], dict[str, int]]:
    """Normalised tokens of a gold answer and their counts (read-only).

    Cached: the same references are scored after every epoch.
    """
    tokens = tuple(_tokens(text))
    return tokens, dict(Counter(tokens))


def _f1(
    prediction: Mapping[str, int], n_prediction: int, gold: Mapping[str, int], n_gold: int
) -> float:
    """Token F1 from token counts: the multiset overlap is the official script's
    ``sum((Counter(prediction) & Counter(gold)).values())``."""
    overlap = 0
    for token, count in gold.items():
        overlap += min(count, prediction.get(token, 0))
    if overlap == 0:  # also when both are empty: the official script scores that 0
        return 0.0
    precision = overlap / n_prediction
    recall = overlap / n_gold
    return 2 * precision * recall / (precision + recall)


def exact_match_score(prediction: str, gold: str) -> bool:
    """Whether the normalised prediction equals the normalised gold answer."""
    return _tokens(prediction) == _tokens(gold)


def f1_score(prediction: str, gold: str) -> float:
    """Token F1 (0-1) between the normalised prediction and gold answer."""
    predicted, gold_tokens = _tokens(prediction), _tokens(gold)
    return _f1(Counter(predicted), len(predicted), Counter(gold_tokens), len(gold_tokens))


def squad_metrics(
    predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """``{"exact_match", "f1"}`` in percent over every id of `references` (id -> gold texts).

    A reference id missing from `predictions` scores 0; predictions for ids that are not in
    `references` are ignored.
    """
    if not references:
        raise ValueError("references is empty: no question to score")
    exact = f1 = 0.0
    for qid, golds in references.items():
        if isinstance(golds, str):
            raise TypeError(f"references[{qid!r}] must be a list of answer texts, not a str")
        prediction = predictions.get(qid)
        if prediction is None:  # unanswered: scores 0, as in the official script
            continue
        predicted = tuple(_tokens(prediction))
        counts = Counter(predicted)
        best_exact = best_f1 = 0.0
        for gold in golds:
            gold_tokens, gold_counts = _gold(gold)
            if predicted == gold_tokens:
                best_exact = 1.0
            best_f1 = max(best_f1, _f1(counts, len(predicted), gold_counts, len(gold_tokens)))
        exact += best_exact
        f1 += best_f1
    total = len(references)
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total}


def _squad_v1_metric_class() -> type:
    import datasets
    import evaluate

    class SquadV1Metric(evaluate.Metric):
        """The SQuAD v1.1 metric in the ``evaluate`` API, computed by `squad_metrics`.

        Inputs are those of ``evaluate.load("squad")``: predictions
        ``[{"id", "prediction_text"}]`` and references
        ``[{"id", "answers": {"text": [...], "answer_start": [...]}}]``.
        """

        def _info(self) -> evaluate.MetricInfo:
            string_value = datasets.Value("string")
            return evaluate.MetricInfo(
                description="SQuAD v1.1 exact match and F1 (official script semantics).",
                citation="Rajpurkar et al., SQuAD: 100,000+ Questions for Machine "
                "Comprehension of Text, EMNLP 2016.",
                inputs_description="predictions: [{id, prediction_text}]; "
                "references: [{id, answers: {text, answer_start}}]",
                features=datasets.Features(
                    {
                        "predictions": {"id": string_value, "prediction_text": string_value},
                        "references": {
                            "id": string_value,
                            "answers": {
                                "text": datasets.List(string_value),
                                "answer_start": datasets.List(datasets.Value("int32")),
                            },
                        },
                    }
                ),
            )

        def _compute(self, predictions: list[dict], references: list[dict]) -> dict[str, Any]:
            return squad_metrics(
                {p["id"]: p["prediction_text"] for p in predictions},
                {r["id"]: list(r["answers"]["text"]) for r in references},
            )

    SquadV1Metric.__module__ = __name__
    return SquadV1Metric


def __getattr__(name: str) -> Any:
    # Module-level lazy attribute (PEP 562): `import evaluate` costs seconds, so the class is
    # only built when someone asks for it.
    if name == "SquadV1Metric":
        cls = _squad_v1_metric_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
