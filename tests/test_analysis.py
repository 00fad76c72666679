"""qaexp.analysis on hand-made data: every slice rule on questions with known labels, the
per-question scores against the SQuAD metrics (to the last digit), the bootstrap against the
exact distribution and a direct loop, flip counts against a loop, and bad answers files."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import datasets
import numpy as np
import pytest

from qaexp.analysis import (
    QuestionSet,
    answers_text,
    flips,
    pair_analysis,
    paired_test,
    percent,
    question_scores,
    read_answers,
    run_report,
)
from qaexp.analysis.answers import Answers
from qaexp.analysis.bootstrap import resampled_means
from qaexp.analysis.slices import (
    answer_words,
    question_word,
    slice_labels,
    tertile_labels,
    word_overlap,
)
from qaexp.errors import QAExpError
from qaexp.metrics import squad_metrics, squad_v2_metrics


@pytest.mark.parametrize(
    ("question", "label"),
    [
        ("What is the capital of France?", "what"),
        ("Who founded the city?", "who"),
        ("Whom did the king marry?", "who"),
        ("Whose horse won?", "who"),
        ("When was the bridge built?", "when"),
        ("Where is the tower?", "where"),
        ("In which year did it open?", "which"),
        ("Why did the empire fall?", "why"),
        ("How many moons does Mars have?", "how many/much"),
        ("How much did it cost?", "how many/much"),
        ("How did the war end?", "how"),
        ("The bridge was designed by whom?", "who"),
        ("Name the longest river.", "other"),
        ("", "other"),
        ("What, in 1931, did Clara Holm design - and how?", "what"),  # the first one counts
    ],
)
def test_question_word(question, label):
    assert question_word(question) == label


@pytest.mark.parametrize(
    ("golds", "label"),
    [
        (["Paris"], "1"),
        (["New York"], "2"),
        (["the Eiffel Tower"], "3-4"),
        (["one two three four"], "3-4"),
        (["a b c d e"], "5+"),
        (["Paris", "the city of Paris"], "1"),  # the first gold answer
        ([], "none"),
    ],
)
def test_answer_words(golds, label):
    assert answer_words(golds) == label


def test_word_overlap_counts_distinct_question_words_without_articles():
    # question words {who, founded, city, of, rome}; in the context: founded, rome
    assert word_overlap("Who founded the city of Rome?", "Rome was founded by Romulus.") == 0.4
    assert word_overlap("Rome, Rome?", "ROME.") == 1.0
    assert word_overlap("?", "anything") == 0.0


def test_tertiles_split_at_the_thirds():
    labels = tertile_labels(np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]))
    assert Counter(labels.tolist()) == {"low": 3, "mid": 3, "high": 3}
    assert labels[0] == "low" and labels[-1] == "high"


def hand_made(unanswerable: bool = False) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Five questions with windows whose context spans are set by hand (None: question
    tokens). Context characters 0-70; each question's answer and windows:
    q1: one window [0, 50), answer [10, 15)                -> windows 1, first window
    q2: windows [0, 30) [20, 50), answer [35, 40)          -> windows 2, later window
    q3: windows [0, 30) [20, 50), answer [25, 29)          -> windows 2, first window
    q4: windows [0, 30) [20, 50) [40, 70), answer [28, 33) -> windows 3+, across windows
    q5: one window, no answer                              -> windows 1, none
    """
    context = "".join(chr(ord("a") + i % 26) for i in range(70))

    def window(qid, start, end):
        tokens = [None, None] + [[i, i + 5] for i in range(start, end, 5)] + [None]
        return {"example_id": qid, "offset_mapping": tokens}

    rows = [
        ("q1", (10, 15), [(0, 50)]),
        ("q2", (35, 40), [(0, 30), (20, 50)]),
        ("q3", (25, 29), [(0, 30), (20, 50)]),
        ("q4", (28, 33), [(0, 30), (20, 50), (40, 70)]),
        ("q5", None, [(0, 50)]),
    ]
    examples = datasets.Dataset.from_list(
        [
            {
                "id": qid,
                "question": "What is it?",
                "context": context,
                "answers": {
                    "text": [context[span[0] : span[1]]] if span else [],
                    "answer_start": [span[0]] if span else [],
                },
            }
            for qid, span, _ in rows
        ]
    )
    windows = datasets.Dataset.from_list(
        [window(qid, a, b) for qid, _, spans in rows for a, b in spans]
    )
    return examples, windows


def test_windows_and_answer_position():
    examples, windows = hand_made()
    labels = slice_labels(examples, windows, unanswerable=True)
    assert labels["windows"].tolist() == ["1", "2", "2", "3+", "1"]
    assert labels["answer position"].tolist() == [
        "first window",
        "later window",
        "first window",
        "across windows",
        "none",
    ]
    assert labels["answerable"].tolist() == ["answerable"] * 4 + ["unanswerable"]
    assert labels["answer words"].tolist() == ["1"] * 4 + ["none"]


def test_windows_in_any_order_and_windows_of_other_questions():
    examples, windows = hand_made()
    shuffled = windows.select([3, 0, 5, 1, 2, 4, 7, 6])
    extra = datasets.Dataset.from_list([{"example_id": "zz", "offset_mapping": [[0, 5]]}])
    both = datasets.concatenate_datasets([shuffled, extra.cast(windows.features)])
    labels = slice_labels(examples, both)
    assert labels["windows"].tolist() == ["1", "2", "2", "3+", "1"]
    assert labels["answer position"][:4].tolist() == [
        "first window",
        "later window",
        "first window",
        "across windows",
    ]
    assert "answerable" not in labels  # only SQuAD v2.0 data gets that family


# --- per-question scores against the metrics ------------------------------------------


def perturbed(golds: list[str], rng: np.random.Generator) -> str:
    """A prediction near the gold answer: exact, a word more or less, a case change, empty."""
    gold = golds[0] if golds else "nothing here"
    words = gold.split()
    choice = rng.integers(6)
    return [
        gold,
        gold.upper() + ".",
        " ".join(words[:-1]),
        gold + " and more words",
        "",
        "the " + " ".join(reversed(words)),
    ][choice]


@pytest.fixture(scope="module")
def references() -> dict[str, list[str]]:
    rng = np.random.default_rng(3)
    vocabulary = ["Clara", "Holm", "1931", "bridge", "the", "river", "a", "of", "Oslo", "x"]
    refs = {}
    for i in range(300):
        count = rng.integers(0, 4)  # 0: unanswerable
        refs[f"q{i}"] = [" ".join(rng.choice(vocabulary, rng.integers(1, 6))) for _ in range(count)]
    return refs


def test_v1_scores_average_to_squad_metrics_to_the_last_digit(references):
    rng = np.random.default_rng(0)
    answerable = {qid: golds for qid, golds in references.items() if golds}
    predictions = {qid: perturbed(golds, rng) for qid, golds in answerable.items()}
    scores = [question_scores(predictions[qid], golds) for qid, golds in answerable.items()]
    official = squad_metrics(predictions, answerable)
    assert percent(np.array([e for e, _ in scores])) == official["exact_match"]
    assert percent(np.array([f for _, f in scores])) == official["f1"]
    assert 0 < official["exact_match"] < official["f1"] < 100


def test_v2_scores_average_to_squad_v2_metrics_to_the_last_digit(references):
    rng = np.random.default_rng(1)
    predictions = {qid: perturbed(golds, rng) for qid, golds in references.items()}
    scores = [question_scores(predictions[q], g, unanswerable=True) for q, g in references.items()]
    official = squad_v2_metrics(predictions, references)
    assert percent(np.array([e for e, _ in scores])) == official["exact"]
    assert percent(np.array([f for _, f in scores])) == official["f1"]
    assert official["NoAns_total"] > 0 and 0 < official["NoAns_exact"] < 100


def test_question_set_rows_and_report_whole_set_equal_the_metrics():
    examples, windows = hand_made()
    questions = QuestionSet.build(examples, windows, unanswerable=True)
    context = examples[0]["context"]
    predictions = {"q1": context[10:15], "q2": context[35:38], "q3": "", "q4": "zz", "q5": ""}
    rows = questions.rows(3, predictions, dict.fromkeys(predictions, 0.5))
    assert [(r["exact"], r["f1"]) for r in rows][:2] == [(1.0, 1.0), (0.0, 0.0)]
    assert rows[4]["exact"] == 1.0 and rows[0]["null_odds"] == 0.5
    assert rows[0]["slices"]["answer position"] == "first window"
    refs = {r["id"]: r["gold"] for r in rows}
    official = squad_v2_metrics(predictions, refs)
    _, payload = run_report(Answers.from_rows("x", rows), "run")
    assert payload["slices"]["all"]["exact_match"] == official["exact"]
    assert payload["slices"]["all"]["f1"] == official["f1"]
    unanswerable = payload["slices"]["answerable"][1]
    assert (unanswerable["slice"], unanswerable["n"], unanswerable["f1"]) == (
        "unanswerable",
        1,
        100.0,
    )


def scored_rows() -> list[dict]:
    """Hand-made answers with span logits: q2 (7.0) wrong, q1 (5.0) right, q4 (3.0) wrong,
    q3 (1.0) right, q5 no valid span (None) and wrong."""
    examples, windows = hand_made()
    context = examples[0]["context"]
    predictions = {"q1": context[10:15], "q2": "x", "q3": context[25:29], "q4": "zz", "q5": ""}
    logits = {"q1": 5.0, "q2": 7.0, "q3": 1.0, "q4": 3.0, "q5": None}
    return QuestionSet.build(examples, windows).rows(2, predictions, None, logits)


def test_rows_carry_each_answers_span_logit_and_read_back(tmp_path):
    rows = scored_rows()
    assert [r["span_logit"] for r in rows] == [5.0, 7.0, 1.0, 3.0, None]
    answers = read_answers(write_rows(tmp_path / "answers.jsonl", rows))
    assert answers.span_logits[:4].tolist() == [5.0, 7.0, 1.0, 3.0]
    assert np.isnan(answers.span_logits[4])
    examples, windows = hand_made()
    unscored = QuestionSet.build(examples, windows).rows(2, {"q1": "x"})
    assert "span_logit" not in unscored[0]  # a run without logits (e.g. an old state)
    assert Answers.from_rows("x", unscored).span_logits is None


def test_confidence_thirds_and_confidently_wrong_by_hand():
    text, payload = run_report(Answers.from_rows("x", scored_rows()), "run")
    table = payload["confidence"]
    # Ranked q2, q1 | q4 | q3 (4 questions with a logit in 3 parts: 2, 1, 1).
    assert [(t["n"], t["exact_match"]) for t in table["thirds"]] == [
        (2, 50.0),
        (1, 0.0),
        (1, 100.0),
    ]
    assert [(t["span_logit_min"], t["span_logit_max"]) for t in table["thirds"]] == [
        (5.0, 7.0),
        (3.0, 3.0),
        (1.0, 1.0),
    ]
    assert table["no_span"] == 1
    assert [q["id"] for q in table["confidently_wrong"]] == ["q2", "q4"]
    assert "## Confidence (span logit)" in text and "| most sure third | 2 | 5.00 to 7.00 |" in text
    examples, windows = hand_made()
    old = QuestionSet.build(examples, windows).rows(2, {"q1": "x"})
    text, payload = run_report(Answers.from_rows("x", old), "run")
    assert "confidence" not in payload and "Confidence" not in text


# --- bootstrap ------------------------------------------------------------------------


def test_resampled_means_have_the_exact_bootstrap_distribution():
    """Five distinct values (four counted by multinomial draws, one drawn one by one): the
    frequencies of the resampled sums match the 5^5 equally likely resamples."""
    values = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    exact = Counter(round(sum(c) * 4) for c in itertools.product(values, repeat=5))
    draws = 200_000
    means = resampled_means(values, draws, np.random.default_rng(0))
    seen = Counter(np.round(means * 5 * 4).astype(int).tolist())
    distance = sum(abs(seen[k] / draws - exact[k] / 5**5) for k in exact | seen) / 2
    assert distance < 0.01  # total variation; a wrong sampler is off by far more


def direct_paired_bootstrap(a, b, resamples, rng):
    """The textbook paired bootstrap, one resample at a time."""
    d = np.asarray(b) - np.asarray(a)
    means = []
    for _ in range(resamples):
        idx = rng.integers(0, len(d), len(d))
        means.append(d[idx].mean())
    means = np.array(means)
    low, high = np.percentile(means, [2.5, 97.5])
    p = (1 + np.count_nonzero(np.abs(means - d.mean()) >= abs(d.mean()))) / (1 + resamples)
    return d.mean(), low, high, p


def test_paired_bootstrap_agrees_with_a_direct_loop():
    rng = np.random.default_rng(5)
    n = 400
    a = rng.choice([0.0, 1.0, 0.5, 0.8], n, p=[0.3, 0.5, 0.1, 0.1])
    b = a.copy()
    changed = rng.choice(n, 60, replace=False)
    b[changed] = rng.choice([0.0, 1.0, 1.0, 0.9, 0.66], 60)
    mean, low, high, p = direct_paired_bootstrap(a, b, 20_000, np.random.default_rng(1))
    test = paired_test(a, b, 20_000, np.random.default_rng(2), scale=1.0)
    assert test.difference == pytest.approx(mean, abs=1e-12)
    width = high - low
    assert abs(test.low - low) < 0.05 * width and abs(test.high - high) < 0.05 * width
    assert abs(test.p - p) < 0.02
    assert 0.001 < p < 0.9  # a case where the p-value is neither 0 nor 1


def test_flip_counts_agree_with_a_loop():
    rng = np.random.default_rng(7)
    exact_a, exact_b = rng.integers(0, 2, 500), rng.integers(0, 2, 500)
    f1_a = np.where(exact_a == 1, 1.0, rng.choice([0.0, 0.5], 500))
    f1_b = np.where(exact_b == 1, 1.0, rng.choice([0.0, 0.25], 500))
    counted = flips(exact_a, exact_b, f1_a, f1_b)
    right_to_wrong = wrong_to_right = both_right = both_wrong = changed = 0
    gained = lost = 0.0
    for ea, eb, fa, fb in zip(exact_a, exact_b, f1_a, f1_b, strict=True):
        right_to_wrong += ea == 1 and eb == 0
        wrong_to_right += ea == 0 and eb == 1
        both_right += ea == 1 and eb == 1
        both_wrong += ea == 0 and eb == 0
        changed += fa != fb
        gained += max(fb - fa, 0.0)
        lost += max(fa - fb, 0.0)
    assert (counted.right_to_wrong, counted.wrong_to_right) == (right_to_wrong, wrong_to_right)
    assert (counted.both_right, counted.both_wrong, counted.f1_changed) == (
        both_right,
        both_wrong,
        changed,
    )
    assert counted.f1_gained == pytest.approx(100 * gained / 500)
    assert counted.f1_lost == pytest.approx(100 * lost / 500)


# --- answers files --------------------------------------------------------------------


def write_rows(path, rows):
    path.write_text(answers_text(rows))
    return path


@pytest.fixture
def rows():
    examples, windows = hand_made()
    context = examples[0]["context"]
    return QuestionSet.build(examples, windows).rows(1, {"q1": context[10:15], "q2": "x"})


def test_answers_round_trip(tmp_path, rows):
    answers = read_answers(write_rows(tmp_path / "answers.jsonl", rows))
    assert answers.ids == ["q1", "q2", "q3", "q4", "q5"] and answers.epoch == 1
    assert answers.exact.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert rows[2]["prediction"] is None  # a question without a prediction scores 0


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda text: text[: len(text) // 2], "line 3"),  # cut in the middle of a line
        (lambda text: "", "is empty"),
        (lambda text: text.replace('"f1": ', '"F1": '), "no f1"),
        (lambda text: text.replace('"epoch": 1', '"epoch": 2', 1), "mixes the answers"),
        (
            lambda text: text.replace('"prediction": ', '"span_logit": "high", "prediction": ', 1),
            "line 1",
        ),
    ],
)
def test_damaged_answers_are_one_paragraph_naming_the_file(tmp_path, rows, damage, says):
    path = tmp_path / "answers.jsonl"
    path.write_text(damage(answers_text(rows)))
    with pytest.raises(QAExpError) as err:
        read_answers(path)
    message = str(err.value)
    assert str(path) in message and says in message and "trainer.epochs=0" in message
    assert "\n" not in message


def test_missing_answers_say_how_to_get_them(tmp_path):
    with pytest.raises(QAExpError, match="trainer.epochs=0 model.name_or_path="):
        read_answers(tmp_path / "answers.jsonl")


def test_runs_on_other_questions_are_not_paired(tmp_path, rows):
    a = read_answers(write_rows(tmp_path / "a.jsonl", rows))
    other = [dict(row, id=f"other-{row['id']}") for row in rows]
    b = read_answers(write_rows(tmp_path / "b.jsonl", other))
    with pytest.raises(QAExpError, match="different evaluation questions"):
        pair_analysis(a, b, "a", "b")
    pair = pair_analysis(a, a, "a", "a")
    assert pair["paired_f1"]["p"] == 1.0 and pair["flips"]["f1_changed"] == 0
    json.dumps(pair)  # the report is plain JSON


def test_wandb_table_holds_one_row_per_question_with_slices(rows, monkeypatch):
    from qaexp.tracking.wandb_tracker import ANSWERS_TABLE, WandbTracker

    logged = []

    class Run:
        def log(self, values):
            logged.append(values)

    WandbTracker(Run()).log_answers(rows)
    (values,) = logged
    table = values[ANSWERS_TABLE]
    assert table.columns[:3] == ["id", "epoch", "question"] and "answer position" in table.columns
    assert [row[0] for row in table.data] == ["q1", "q2", "q3", "q4", "q5"]
    assert table.data[0][table.columns.index("f1")] == 1.0
    assert "span_logit" not in table.columns  # rows without it (an older run's)
    WandbTracker(Run()).log_answers(scored_rows())
    table = logged[-1][ANSWERS_TABLE]
    assert [row[table.columns.index("span_logit")] for row in table.data] == [
        5.0,
        7.0,
        1.0,
        3.0,
        None,
    ]


def test_slice_scalars_pass_to_the_trackers():
    from qaexp.tracking import epoch_metrics

    record = {"f1": 60.0, "eval/slice/question_word/what": 55.0, "other": 1}
    assert epoch_metrics(record) == {"eval/f1": 60.0, "eval/slice/question_word/what": 55.0}
