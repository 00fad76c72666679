"""SQuAD v1.1 and v2.0 metrics: answer texts -> exact match and token F1, in percent.

The numbers equal the official evaluation script (``evaluate-v1.1.py``, Rajpurkar et al. 2016,
also the ``squad`` metric of the ``evaluate`` library): answers are normalised (lowercase,
drop ``string.punctuation``, drop the whole words a/an/the, collapse whitespace); EM is string
equality and F1 the harmonic mean of token precision and recall with multiset overlap; each
question takes its best score over its gold answers; the average runs over all reference ids,
and a question without a prediction scores 0, as in the official script.

``squad_v2_metrics`` follows the official v2.0 script (``evaluate-v2.0.py``, Rajpurkar, Jia
and Liang 2018) with the same normalisation: an unanswerable question's gold is [""], so only
an answer that normalises to "" matches it; F1 against an empty side is 1 if both are empty;
HasAns/NoAns split the questions by whether their answer list is empty; with the null odds
(the script's na-prob file) it adds the best EM/F1 over all thresholds (``find_best_thresh``).

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

import numpy as np

# SquadV1Metric is also public; it is left out of __all__ so `import *` does not import evaluate.
__all__ = [
    "exact_match_score",
    "f1_score",
    "normalize_answer",
    "squad_metrics",
    "squad_v2_metrics",
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


# ------------------------------------------------------------------------------- SQuAD v2.0


def _v2_raw_scores(prediction: str, golds: Sequence[str]) -> tuple[int, float]:
    """Exact (0/1) and F1 (0-1) of one prediction as the official v2.0 script scores them:
    golds that normalise to nothing are dropped, none left means [""] (no answer), the best
    gold counts, and F1 against an empty side is 1 when both sides are empty, else 0."""
    predicted = tuple(_tokens(prediction))
    counts = Counter(predicted)
    references = [_gold(g) for g in golds if _gold(g)[0]] or [_gold("")]
    exact, f1 = 0, 0.0
    for gold_tokens, gold_counts in references:
        exact = max(exact, int(predicted == gold_tokens))
        if not gold_tokens or not predicted:
            f1 = max(f1, float(gold_tokens == predicted))
        else:
            f1 = max(f1, _f1(counts, len(predicted), gold_counts, len(gold_tokens)))
    return exact, f1


def _best_threshold(
    scores: dict[str, float],
    null_odds: Mapping[str, float],
    has_answer: dict[str, bool],
    predictions: Mapping[str, str],
) -> tuple[float, float]:
    """The official ``find_best_thresh`` sweep: (best score in percent, its threshold).

    Start from answering every question "" (each unanswerable one scores 1); walk the
    questions by rising null odds (stable: ties keep `null_odds` order), switching each to
    its prediction; keep the first running total that beats every earlier one.
    """
    ids = [qid for qid in null_odds if qid in scores]
    odds = np.array([null_odds[qid] for qid in ids], dtype=np.float64)
    gains = [scores[qid] if has_answer[qid] else (-1 if predictions[qid] else 0) for qid in ids]
    order = np.argsort(odds, kind="stable")
    start = sum(not has for has in has_answer.values())
    running = np.cumsum(np.array([start, *gains], dtype=np.float64)[np.r_[0, order + 1]])
    best = int(np.argmax(running))  # the first maximum: a later tie does not move it
    threshold = float(odds[order[best - 1]]) if best else 0.0
    return 100.0 * float(running[best]) / len(scores), threshold


def _require_ids(ids: Mapping[str, object], references: Mapping, name: str) -> None:
    missing = [qid for qid in references if qid not in ids]
    if missing:
        raise ValueError(
            f"{name} lacks {len(missing)} of the {len(references)} reference ids (first: "
            f"{missing[:3]}); the official SQuAD v2.0 script cannot score without them"
        )


def squad_v2_metrics(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    null_odds: Mapping[str, float] | None = None,
    na_prob_thresh: float = 1.0,
) -> dict[str, float]:
    """The official SQuAD v2.0 metrics in percent over every id of `references`.

    `references` maps id -> gold texts (``[]`` for an unanswerable question); `predictions`
    maps id -> text ("" for no answer) and must cover every reference id. With `null_odds`
    (the na-prob file: id -> score, higher = more likely unanswerable), a question whose odds
    exceed `na_prob_thresh` (the script's ``--na-prob-thresh``, default 1.0) counts as
    answered "", and ``best_exact``/``best_f1`` with their thresholds come from the sweep.
    Keys, as the script prints them: exact, f1, total, HasAns_* / NoAns_* (exact, f1, total;
    only when that subset is not empty), and with `null_odds` best_exact, best_exact_thresh,
    best_f1, best_f1_thresh.
    """
    if not references:
        raise ValueError("references is empty: no question to score")
    _require_ids(predictions, references, "predictions")
    if null_odds is not None:
        _require_ids(null_odds, references, "null_odds")
    has_answer = {qid: bool(golds) for qid, golds in references.items()}
    raw = {qid: _v2_raw_scores(predictions[qid], golds) for qid, golds in references.items()}
    exact_raw = {qid: e for qid, (e, _) in raw.items()}
    f1_raw = {qid: f for qid, (_, f) in raw.items()}
    odds = null_odds if null_odds is not None else dict.fromkeys(references, 0.0)
    thresholded = [
        {
            qid: float(not has_answer[qid]) if odds[qid] > na_prob_thresh else score
            for qid, score in scores.items()
        }
        for scores in (exact_raw, f1_raw)
    ]
    result = _v2_subset(*thresholded, list(references), "")
    for prefix, wanted in (("HasAns_", True), ("NoAns_", False)):
        subset = [qid for qid, has in has_answer.items() if has is wanted]
        if subset:
            result.update(_v2_subset(*thresholded, subset, prefix))
    if null_odds is not None:
        for name, scores in (("exact", exact_raw), ("f1", f1_raw)):
            best, threshold = _best_threshold(scores, null_odds, has_answer, predictions)
            result[f"best_{name}"], result[f"best_{name}_thresh"] = best, threshold
    return result


def _v2_subset(
    exact: dict[str, float], f1: dict[str, float], ids: list[str], prefix: str
) -> dict[str, float]:
    """exact, f1 (percent) and total over `ids`, keys prefixed (the script's make_eval_dict)."""
    total = len(ids)
    return {
        f"{prefix}exact": 100.0 * sum(exact[qid] for qid in ids) / total,
        f"{prefix}f1": 100.0 * sum(f1[qid] for qid in ids) / total,
        f"{prefix}total": total,
    }


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
