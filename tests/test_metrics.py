"""SQuAD v1.1 and v2.0 metrics: hand-computed scores, and agreement with the official scripts'
formulas."""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qaexp.metrics import (
    exact_match_score,
    f1_score,
    normalize_answer,
    squad_metrics,
    squad_v2_metrics,
)

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
# SQuAD v2.0: hand-computed cases


def test_v2_scores_answerable_and_unanswerable_questions():
    references = {"a": ["Paris"], "b": [], "c": ["big red dog", "a dog"], "d": [], "e": ["Rome"]}
    predictions = {"a": "paris.", "b": "", "c": "red dog", "d": "London", "e": ""}
    # a: 1/1; b: "" on no answer 1/1; c: [red, dog] vs [big, red, dog] P 1, R 2/3, F1 0.8,
    # vs [dog] F1 2/3 -> 0.8, exact 0; d: a text on no answer 0/0; e: "" on an answer 0/0.
    got = squad_v2_metrics(predictions, references)
    want = {"exact": 100 * 2 / 5, "f1": 100 * 2.8 / 5, "total": 5}
    want |= {"HasAns_exact": 100 / 3, "HasAns_f1": 100 * 1.8 / 3, "HasAns_total": 3}
    want |= {"NoAns_exact": 50.0, "NoAns_f1": 50.0, "NoAns_total": 2}
    assert got == pytest.approx(want)
    assert "best_f1" not in got  # the sweep needs null odds


def test_v2_gold_that_normalises_to_nothing_counts_as_no_answer_text():
    # The official script drops golds that normalise to "", leaving [""]: only "" matches,
    # yet the question still counts as answerable (its answer list is not empty).
    got = squad_v2_metrics({"q": ""}, {"q": ["The"]})
    assert (got["exact"], got["f1"], got["HasAns_total"]) == (100.0, 100.0, 1)
    assert "NoAns_total" not in got
    # A prediction that normalises to "" scores as "" (but the sweep sees a text: -1).
    got = squad_v2_metrics({"q": "The."}, {"q": []}, {"q": -1.0})
    assert (got["exact"], got["f1"], got["best_exact"]) == (100.0, 100.0, 100.0)
    got = squad_v2_metrics({"q": "The.", "r": ""}, {"q": [], "r": []}, {"q": -1.0, "r": -2.0})
    assert (got["exact"], got["best_exact"]) == (100.0, 100.0)  # start 2; r +0, q -1


def v2_sweep_case():
    references = {"q1": ["Paris"], "q2": [], "q3": ["Rome"], "q4": []}
    predictions = {"q1": "Paris", "q2": "London", "q3": "Rome", "q4": ""}
    return references, predictions


def test_v2_best_threshold_sweep():
    references, predictions = v2_sweep_case()
    odds = {"q1": -3.0, "q2": -1.0, "q3": -1.5, "q4": 2.0}
    # Start at 2 (every no-answer question right); by rising odds: q1 +1 -> 3, q3 +1 -> 4
    # (best, threshold -1.5), q2 -1 -> 3 (a wrong answer to a no-answer question), q4 +0.
    got = squad_v2_metrics(predictions, references, odds)
    assert got["exact"] == 75.0  # q4's odds 2 > 1.0 count it as "", which it is anyway
    assert (got["best_exact"], got["best_exact_thresh"]) == (100.0, -1.5)
    assert (got["best_f1"], got["best_f1_thresh"]) == (100.0, -1.5)
    # A later equal total does not move the threshold: only a strictly better one does.
    odds["q3"] = -0.5  # now q1 -> 3 (best, -3), q2 -> 2, q3 -> 3 (a tie), q4 -> 3
    got = squad_v2_metrics(predictions, references, odds)
    assert (got["best_exact"], got["best_exact_thresh"]) == (75.0, -3.0)
    # Nothing beats answering every question "": threshold 0.0.
    # Start at 1 (b right as ""); b's wrong text -1 -> 0; a's wrong text +0 -> 0.
    got = squad_v2_metrics({"a": "x", "b": "London"}, {"a": ["y"], "b": []}, {"a": 5.0, "b": 1.0})
    assert (got["best_exact"], got["best_exact_thresh"]) == (50.0, 0.0)


def test_v2_na_prob_thresh_counts_high_odds_as_no_answer():
    references, predictions = v2_sweep_case()
    odds = {"q1": -3.0, "q2": -1.0, "q3": -1.5, "q4": 2.0}
    # At -2: q2 (a wrong text, no answer) and q3 (right, answerable) count as answered "".
    got = squad_v2_metrics(predictions, references, odds, na_prob_thresh=-2.0)
    assert (got["exact"], got["HasAns_exact"], got["NoAns_exact"]) == (75.0, 50.0, 100.0)
    assert got["best_exact"] == 100.0  # the sweep reads the raw scores


def test_v2_refuses_what_the_official_script_cannot_score():
    with pytest.raises(ValueError, match="predictions lacks 1 of the 2"):
        squad_v2_metrics({"a": "x"}, {"a": ["x"], "b": []})
    with pytest.raises(ValueError, match="null_odds lacks 1 of the 2"):
        squad_v2_metrics({"a": "x", "b": ""}, {"a": ["x"], "b": []}, {"a": 0.0})
    with pytest.raises(ValueError, match="empty"):
        squad_v2_metrics({}, {})


# --------------------------------------------------------------------------------------------
# SQuAD v2.0: agreement with the official v2.0 script's definitions, written out plainly


def official_v2_tokens(s):
    return official_normalize(s).split() if s else []


def official_v2_f1(gold, prediction):
    gold_toks, pred_toks = official_v2_tokens(gold), official_v2_tokens(prediction)
    num_same = sum((Counter(gold_toks) & Counter(pred_toks)).values())
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return int(gold_toks == pred_toks)  # no answer on either side: 1 if both agree
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(pred_toks)
    recall = 1.0 * num_same / len(gold_toks)
    return (2 * precision * recall) / (precision + recall)


def official_v2_best_thresh(preds, scores, na_probs, qid_to_has_ans):
    cur_score = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    best_score, best_thresh = cur_score, 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            cur_score += scores[qid]
        elif preds[qid]:
            cur_score += -1
        if cur_score > best_score:
            best_score, best_thresh = cur_score, na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def official_v2(preds, references, na_probs=None, na_prob_thresh=1.0):
    has_ans = {qid: bool(golds) for qid, golds in references.items()}
    exact_raw, f1_raw = {}, {}
    for qid, golds in references.items():
        gold_answers = [a for a in golds if official_normalize(a)] or [""]
        exact_raw[qid] = max(
            int(official_normalize(a) == official_normalize(preds[qid])) for a in gold_answers
        )
        f1_raw[qid] = max(official_v2_f1(a, preds[qid]) for a in gold_answers)
    probs = na_probs if na_probs is not None else {k: 0.0 for k in preds}

    def threshold(scores):
        return {
            qid: float(not has_ans[qid]) if probs[qid] > na_prob_thresh else s
            for qid, s in scores.items()
        }

    exact, f1 = threshold(exact_raw), threshold(f1_raw)

    def make(ids, prefix):
        return {
            prefix + "exact": 100.0 * sum(exact[k] for k in ids) / len(ids),
            prefix + "f1": 100.0 * sum(f1[k] for k in ids) / len(ids),
            prefix + "total": len(ids),
        }

    out = make(list(exact), "")
    for prefix, wanted in (("HasAns_", True), ("NoAns_", False)):
        ids = [k for k, v in has_ans.items() if v is wanted]
        if ids:
            out.update(make(ids, prefix))
    if na_probs is not None:
        for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
            best, thresh = official_v2_best_thresh(preds, raw, na_probs, has_ans)
            out[f"best_{name}"], out[f"best_{name}_thresh"] = best, thresh
    return out


@st.composite
def v2_case(draw):
    n = draw(st.integers(1, 12))
    ids = [f"q{i}" for i in range(n)]
    references = {
        qid: draw(st.one_of(st.just([]), st.lists(answers(), min_size=1, max_size=3)))
        for qid in ids
    }
    predictions = {
        qid: draw(st.one_of(st.just(""), answers(), st.sampled_from(golds or [""])))
        for qid, golds in references.items()
    }
    odds_values = st.one_of(
        st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0]),  # many ties
        st.floats(-20, 20, allow_nan=False),
    )
    na_probs = None
    if draw(st.booleans()):
        extra = draw(st.lists(st.sampled_from(["x1", "x2"]), unique=True))  # not references
        order = draw(st.permutations([*ids, *extra]))
        na_probs = {qid: draw(odds_values) for qid in order}
    thresh = draw(st.one_of(st.just(1.0), st.just(0.0), st.floats(-5, 5, allow_nan=False)))
    return predictions, references, na_probs, thresh


@settings(max_examples=400, deadline=None)
@given(v2_case())
def test_v2_metrics_equal_the_official_definitions(case):
    predictions, references, na_probs, thresh = case
    got = squad_v2_metrics(predictions, references, na_probs, thresh)
    want = official_v2(predictions, references, na_probs, thresh)
    assert got == want  # exactly: same sums in the same order
    assert list(got) == list(want)


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
