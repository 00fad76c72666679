"""SQuAD v1.1 metrics: hand-computed scores, and agreement with the official script's formulas."""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qaexp.metrics import exact_match_score, f1_score, normalize_answer, squad_metrics

# --------------------------------------------------------------------------------------------
# Hand-computed cases


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("The Eiffel Tower", "eiffel tower"),
        ("  an apple\ta  day\n", "apple day"),
        ("Theater, anarchy and athens!", "theater anarchy and athens"),  # not whole words
        ("U.S.A.", "usa"),
        ("state-of-the-art", "stateoftheart"),  # hyphens go first, so no word boundary
        ("t.he end", "end"),  # "t.he" becomes "the" once punctuation is gone
        ("the’s", "’s"),  # ’ is not in string.punctuation but is a word boundary
        ("A", ""),
        ("", ""),
        ("ÉCOLE Normale", "école normale"),
    ],
)
def test_normalize_answer(raw, normalised):
    assert normalize_answer(raw) == normalised


def test_exact_match_ignores_case_punctuation_articles_and_spacing():
    assert exact_match_score("the Eiffel  Tower.", "Eiffel tower")
    assert not exact_match_score("Eiffel Tower", "Eiffel")
    assert exact_match_score("", "the")  # both normalise to ""


def test_f1_partial_overlap():
    # pred tokens [big, red, dog], gold [red, dog, barked]: overlap 2, P = R = 2/3.
    assert f1_score("the big red dog", "a red dog barked") == pytest.approx(2 / 3)
    # pred [red], gold [red, dog, barked]: P = 1, R = 1/3 -> F1 = 2 * (1/3) / (4/3) = 1/2.
    assert f1_score("Red!", "red dog barked") == pytest.approx(0.5)


def test_f1_counts_repeated_tokens_once_per_occurrence():
    # pred [dog, dog, dog], gold [dog]: overlap 1, P = 1/3, R = 1 -> F1 = 1/2.
    assert f1_score("dog dog dog", "dog") == pytest.approx(0.5)
    # pred [dog, dog], gold [dog, dog, cat]: overlap 2, P = 1, R = 2/3 -> F1 = 0.8.
    assert f1_score("dog dog", "dog dog cat") == pytest.approx(0.8)


def test_f1_of_empty_answers_is_zero_as_in_the_official_script():
    assert f1_score("", "Paris") == 0.0
    assert f1_score("Paris", "") == 0.0
    assert f1_score("", "") == 0.0
    assert f1_score("The", "an") == 0.0  # both empty after normalisation


def test_squad_metrics_averages_best_gold_over_all_references():
    references = {
        "q1": ["Denver Broncos", "The Broncos"],  # exact with the second gold
        "q2": ["red dog barked loudly", "big red cat"],  # partial: best F1 from one gold
        "q3": ["Paris"],  # no prediction: scores 0
        "q4": ["Carolina Panthers"],  # wrong
    }
    predictions = {
        "q1": "broncos",
        "q2": "the big red dog",
        "q4": "Santa Clara",
        "unknown": "ignored",
    }
    # q2: pred [big, red, dog]; gold 1 [red, dog, barked, loudly]: overlap 2, P 2/3, R 1/2,
    # F1 4/7; gold 2 [big, red, cat]: overlap 2, P 2/3, R 2/3, F1 2/3 -> best 2/3.
    scores = squad_metrics(predictions, references)
    assert scores["exact_match"] == pytest.approx(100 * 1 / 4)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0 + 0) / 4)


def test_squad_metrics_perfect_and_empty_predictions():
    references = {"a": ["x y"], "b": ["z"]}
    assert squad_metrics({"a": "X  y.", "b": "z"}, references) == {
        "exact_match": 100.0,
        "f1": 100.0,
    }
    assert squad_metrics({"a": "", "b": ""}, references) == {"exact_match": 0.0, "f1": 0.0}
    assert squad_metrics({}, references) == {"exact_match": 0.0, "f1": 0.0}


def test_squad_metrics_rejects_bad_references():
    with pytest.raises(ValueError, match="empty"):
        squad_metrics({"a": "x"}, {})
    with pytest.raises(TypeError, match="list of answer texts"):
        squad_metrics({"a": "x"}, {"a": "x"})


# --------------------------------------------------------------------------------------------
# Agreement with the official evaluation script's formulas, written out plainly


def official_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def official_f1(prediction, gold):
    prediction_tokens = official_normalize(prediction).split()
    gold_tokens = official_normalize(gold).split()
    common = Counter(prediction_tokens) & Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_scores(predictions, references):
    exact = f1 = 0.0
    for qid, golds in references.items():
        if qid not in predictions:
            continue
        pred = predictions[qid]
        exact += max(official_normalize(pred) == official_normalize(g) for g in golds)
        f1 += max(official_f1(pred, g) for g in golds)
    return {"exact_match": 100.0 * exact / len(references), "f1": 100.0 * f1 / len(references)}


# Words that exercise articles, punctuation, case, Unicode word boundaries and repeats.
WORDS = st.sampled_from(
    [
        "the",
        "The",
        "a",
        "A",
        "an",
        "AN",
        "then",
        "ant",
        "t.he",
        "a,",
        "(the)",
        "cat",
        "cat's",
        "dog",
        "dog!",
        "Été",
        "’s",
        "the’s",
        "—",
        "x_y",
        "4",
        "4.5",
        "",
        "a-b",
    ]
)
SEPARATORS = st.sampled_from([" ", "  ", "\t", "\n", "", "-", ", "])


@st.composite
def answers(draw):
    words = draw(st.lists(WORDS, max_size=6))
    seps = draw(st.lists(SEPARATORS, min_size=len(words), max_size=len(words)))
    return "".join(w + s for w, s in zip(words, seps, strict=True))


@settings(max_examples=400, deadline=None)
@given(answers(), answers())
def test_helpers_match_the_official_formulas(prediction, gold):
    assert normalize_answer(prediction) == official_normalize(prediction)
    assert exact_match_score(prediction, gold) == (
        official_normalize(prediction) == official_normalize(gold)
    )
    assert f1_score(prediction, gold) == pytest.approx(official_f1(prediction, gold))


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([f"q{i}" for i in range(8)]),
        st.lists(answers(), min_size=1, max_size=4),
        min_size=1,
    ),
    st.dictionaries(st.sampled_from([f"q{i}" for i in range(10)]), answers()),
)
def test_squad_metrics_matches_the_official_formulas(references, predictions):
    assert squad_metrics(predictions, references) == pytest.approx(
        official_scores(predictions, references)
    )


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_helpers_match_the_official_formulas_on_any_text(prediction, gold):
    assert normalize_answer(prediction) == official_normalize(prediction)
    assert f1_score(prediction, gold) == pytest.approx(official_f1(prediction, gold))


# --------------------------------------------------------------------------------------------
# The evaluate-library API


def test_squad_v1_metric_in_the_evaluate_api():
    pytest.importorskip("evaluate")
    from qaexp.metrics import SquadV1Metric

    predictions = [
        {"id": "q1", "prediction_text": "Denver Broncos"},
        {"id": "q2", "prediction_text": "the big red dog"},
    ]
    references = [
        {"id": "q1", "answers": {"text": ["Denver Broncos", "Broncos"], "answer_start": [0, 7]}},
        {"id": "q2", "answers": {"text": ["big red cat"], "answer_start": [3]}},
        {"id": "q3", "answers": {"text": ["Paris"], "answer_start": [0]}},
    ]
    # evaluate pairs predictions with references row by row; q3's row has an empty prediction.
    predictions.append({"id": "q3", "prediction_text": ""})
    metric = SquadV1Metric(keep_in_memory=True)
    scores = metric.compute(predictions=predictions, references=references)
    assert scores == pytest.approx({"exact_match": 100 / 3, "f1": 100 * (1 + 2 / 3) / 3})

    # Batches accumulate as with any evaluate metric.
    metric.add_batch(predictions=predictions[:1], references=references[:1])
    metric.add_batch(predictions=predictions[1:], references=references[1:])
    assert metric.compute() == pytest.approx(scores)
