"""Tests for the synthetic SQuAD-style data generator."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qaexp.data import synthetic
from qaexp.data.synthetic import generate_examples, iter_annotated_examples, iter_examples

NUM_EXAMPLES = 3000
FIRST_WINDOW_WORDS = 300  # a 384-token window holds roughly this many words of context
YEAR = re.compile(r"\b(1[0-9]{3}|20[0-9]{2})\b")
NUMBER_WITH_UNIT = re.compile(
    r"^[0-9][0-9,.]* (people|residents|metres|kilograms|million dollars|billion dollars)$"
)
STOPWORDS = {
    "In",
    "On",
    "At",
    "The",
    "Of",
    "To",
    "Since",
    "Where",
    "When",
    "What",
    "Which",
    "Who",
    "How",
}


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return generate_examples(NUM_EXAMPLES, seed=0, split="train")


@pytest.fixture(scope="module")
def validation() -> list[dict]:
    return generate_examples(NUM_EXAMPLES, seed=0, split="validation")


@pytest.fixture(scope="module")
def annotated() -> list[tuple[dict, str]]:
    return list(iter_annotated_examples(NUM_EXAMPLES, seed=1, split="train"))


def words(text: str) -> int:
    return len(text.split())


def unique_contexts(records: list[dict]) -> list[str]:
    return list(dict.fromkeys(record["context"] for record in records))


def sentence_around(context: str, start: int, end: int) -> str:
    """The sentence of `context` that holds the span [start, end)."""
    left = context.rfind(". ", 0, start)
    right = context.find(". ", end)
    return context[left + 2 if left >= 0 else 0 : right if right >= 0 else len(context)]


def key_tokens(question: str) -> set[str]:
    """Names and numbers in a question: what ties it to one fact of the context."""
    tokens = [token.strip("?,").removesuffix("'s") for token in question.split()[1:]]
    return {t for t in tokens if t and (t[0].isupper() or t[0].isdigit()) and t not in STOPWORDS}


def check_record(record: dict, split: str) -> None:
    assert set(record) == {"id", "title", "context", "question", "answers"}
    assert all(
        isinstance(record[key], str) and record[key]
        for key in ("id", "title", "context", "question")
    )
    assert all(text.isascii() for text in (record["context"], record["question"], record["title"]))
    answers = record["answers"]
    assert set(answers) == {"text", "answer_start"}
    assert len(answers["text"]) == len(answers["answer_start"]) >= 1
    assert len(answers["text"]) == 1 if split == "train" else len(answers["text"]) <= 3
    for text, start in zip(answers["text"], answers["answer_start"], strict=True):
        assert isinstance(start, int) and start >= 0
        assert text and record["context"][start : start + len(text)] == text


# ----------------------------------------------------------------------------------------------
# Determinism and identity
# ----------------------------------------------------------------------------------------------


def test_same_arguments_give_identical_records():
    assert generate_examples(400, seed=7) == generate_examples(400, seed=7)


def test_different_seed_gives_different_records():
    first, second = generate_examples(200, seed=7), generate_examples(200, seed=8)
    assert not set(unique_contexts(first)) & set(unique_contexts(second))


def test_train_and_validation_share_no_context(train, validation):
    assert not set(unique_contexts(train)) & set(unique_contexts(validation))


def test_fewer_examples_give_a_prefix():
    assert generate_examples(57, seed=3) == generate_examples(300, seed=3)[:57]


def test_iter_examples_matches_generate_examples():
    assert list(iter_examples(120, 5, "validation", 0.2)) == generate_examples(
        120, 5, "validation", 0.2
    )


def test_output_does_not_depend_on_python_hash_seed():
    code = (
        "import hashlib, json; from qaexp.data.synthetic import generate_examples; "
        "print(hashlib.sha256(json.dumps(generate_examples(300, 4, 'validation')).encode()).hexdigest())"
    )
    repo_root = str(Path(__file__).resolve().parents[1])
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": repo_root}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        digests.add(result.stdout.strip())
    local = hashlib.sha256(json.dumps(generate_examples(300, 4, "validation")).encode()).hexdigest()
    assert digests == {local}


@pytest.mark.parametrize("num_examples", [0, 1, 4, 7, 250])
def test_requested_count_and_unique_stable_ids(num_examples):
    records = generate_examples(num_examples, seed=2, split="dev")
    assert len(records) == num_examples
    assert [record["id"] for record in records] == [f"syn-dev-{i:06d}" for i in range(num_examples)]


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_examples": -1}, "num_examples"),
        ({"long_context_fraction": 1.5}, "long_context_fraction"),
        ({"split": ""}, "split"),
    ],
)
def test_bad_arguments_raise_with_the_name(kwargs, key):
    arguments = {
        "num_examples": 5,
        "seed": 0,
        "split": "train",
        "long_context_fraction": 0.1,
        **kwargs,
    }
    with pytest.raises(ValueError, match=key):
        generate_examples(**arguments)


# ----------------------------------------------------------------------------------------------
# Schema and answer spans
# ----------------------------------------------------------------------------------------------


def test_train_records_have_schema_and_one_exact_answer(train):
    for record in train:
        check_record(record, "train")


def test_validation_records_have_schema_and_exact_answer_variants(validation):
    for record in validation:
        check_record(record, "validation")
    with_variants = sum(len(record["answers"]["text"]) > 1 for record in validation)
    assert with_variants > len(validation) // 4


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    num_examples=st.integers(min_value=0, max_value=40),
    fraction=st.floats(min_value=0.0, max_value=1.0),
    split=st.sampled_from(["train", "validation"]),
)
def test_any_arguments_give_valid_records(seed, num_examples, fraction, split):
    records = generate_examples(num_examples, seed, split, fraction)
    assert len(records) == num_examples
    assert len({record["id"] for record in records}) == num_examples
    for record in records:
        check_record(record, split)


def test_answer_sits_in_the_sentence_about_the_question(train, validation):
    """The answer span lies in a sentence naming the question's entities, even for repeats."""
    checked = repeated = 0
    for record in train + validation:
        tokens = key_tokens(record["question"])
        start = record["answers"]["answer_start"][0]
        text = record["answers"]["text"][0]
        if not tokens:
            continue
        sentence = sentence_around(record["context"], start, start + len(text))
        assert tokens & set(re.findall(r"[\w-]+", sentence)), (record["question"], sentence)
        checked += 1
        repeated += record["context"].count(text) > 1
    assert checked > len(train)
    assert repeated > 50  # the check did cover answers whose text occurs more than once


def test_answer_text_is_not_in_the_question(train):
    for record in train:
        assert record["answers"]["text"][0].lower() not in record["question"].lower()


# ----------------------------------------------------------------------------------------------
# Lengths and positions
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3])
def test_fraction_of_long_contexts_is_close_to_requested(fraction):
    contexts = unique_contexts(
        generate_examples(NUM_EXAMPLES, seed=9, long_context_fraction=fraction)
    )
    long_share = sum(words(context) > 450 for context in contexts) / len(contexts)
    assert abs(long_share - fraction) < 0.04


def test_context_lengths_are_short_or_one_to_two_windows(train):
    lengths = [words(context) for context in unique_contexts(train)]
    assert all(50 <= n <= 150 or 450 <= n <= 720 for n in lengths)
    short = [n for n in lengths if n <= 150]
    assert 70 <= sum(short) / len(short) <= 120


def test_some_answers_lie_beyond_the_first_window(train):
    long_records = [record for record in train if words(record["context"]) > 450]
    late = [
        record
        for record in long_records
        if words(record["context"][: record["answers"]["answer_start"][0]]) > FIRST_WINDOW_WORDS
    ]
    assert len(late) > len(long_records) // 5


def test_answers_appear_at_beginning_middle_and_end(train):
    thirds = collections.Counter(
        min(int(3 * record["answers"]["answer_start"][0] / len(record["context"])), 2)
        for record in train
    )
    assert all(thirds[third] > len(train) // 5 for third in range(3))


def test_paragraphs_have_titles_and_several_questions(train):
    questions_per_context = collections.Counter(record["context"] for record in train)
    counts = list(questions_per_context.values())[:-1]  # the last paragraph may be cut short
    assert all(1 <= n <= 5 for n in counts) and sum(counts) / len(counts) >= 3
    titles = {record["context"]: record["title"] for record in train}
    assert all(" " not in title for title in titles.values())


# ----------------------------------------------------------------------------------------------
# Reading comprehension: varied answers, distractors, unpredictable questions
# ----------------------------------------------------------------------------------------------


def test_answers_are_of_many_kinds(annotated):
    kinds = collections.Counter(kind for _, kind in annotated)
    assert len(kinds) >= 12
    assert max(kinds.values()) < 0.3 * len(annotated)
    texts = [record["answers"]["text"][0] for record, _ in annotated]
    assert sum(bool(YEAR.fullmatch(text)) for text in texts) > 100
    assert sum(bool(NUMBER_WITH_UNIT.match(text)) for text in texts) > 100
    assert (
        sum(
            bool(re.search(r"[A-Z][a-z]+ [0-9]{1,2}, [0-9]{4}|[0-9]{1,2} [A-Z][a-z]+ [0-9]{4}", t))
            for t in texts
        )
        > 10
    )
    assert sum(len(text.split()) >= 3 for text in texts) > 100
    assert len(set(texts)) > len(texts) // 3


def other_same_kind_present(record: dict, kind: str) -> bool:
    """Whether the context names a different entity of the answer's kind."""
    context, answer = record["context"], record["answers"]["text"][0]
    if kind == "year":
        return bool(set(YEAR.findall(context)) - {answer})
    if kind == "person":
        surname = answer.split()[-1]
        return any(
            name != surname and re.search(rf"\b{name}\b", context) for name in synthetic._SURNAMES
        )
    if kind == "city":
        return any(city != answer and city in context for city, _ in synthetic._CITIES)
    if kind in ("population", "employees", "elevation", "revenue", "weight"):
        unit = answer.split()[-1]  # "dollars" covers both "million dollars" and "billion dollars"
        return len(set(re.findall(rf"[0-9][0-9,.]* (?:\w+ )?{unit}", context))) >= 2
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind", ["year", "person", "city", "population", "employees", "elevation", "revenue", "weight"]
)
def test_context_names_a_distractor_of_the_answers_kind(annotated, kind):
    records = [record for record, record_kind in annotated if record_kind == kind]
    assert len(records) > 20
    with_distractor = sum(other_same_kind_present(record, kind) for record in records)
    assert with_distractor >= 0.75 * len(records)


def test_same_question_has_different_answers_across_paragraphs(train):
    answers_by_question = collections.defaultdict(set)
    for record in train:
        answers_by_question[record["question"]].add(record["answers"]["text"][0])
    repeated = [question for question, answers in answers_by_question.items() if len(answers) > 1]
    assert len(repeated) >= 30


def test_each_fact_is_asked_in_several_phrasings(train):
    birthplace_questions = {
        re.sub(r"[A-Z]\w+( [A-Z]\w+)*", "X", record["question"])
        for record in train
        if "born" in record["question"] and not record["question"].startswith("Who")
    }
    assert len(birthplace_questions) >= 6


# ----------------------------------------------------------------------------------------------
# Unanswerable questions (SQuAD v2.0)
# ----------------------------------------------------------------------------------------------

NO_ANSWER = {"text": [], "answer_start": []}


@pytest.fixture(scope="module")
def with_unanswerable() -> list[tuple[dict, str]]:
    return list(
        iter_annotated_examples(2000, seed=0, split="validation", unanswerable_fraction=0.3)
    )


def pool_names(text: str) -> set[str]:
    """Entity names of the generator's pools (people's name parts, cities, companies) in text."""
    names = {*synthetic._FIRST_NAMES, *synthetic._SURNAMES, *synthetic._ORG_STEMS}
    names |= {city for city, _ in synthetic._CITIES}
    return {name for name in names if re.search(rf"\b{re.escape(name)}\b", text)}


def statement_regex(statement: str, slot: str, names: set[str]) -> str:
    """A statement template as a regex: `slot` filled with one of `names`, other slots any text."""
    regex = re.escape(statement)
    for _, name in synthetic._parse(statement):
        if name:
            fill = "(?:" + "|".join(map(re.escape, names)) + ")" if name == slot else ".+?"
            regex = regex.replace(re.escape(f"{{{name}}}"), fill, 1)
    return regex


def stated_about(question: str, context: str) -> bool | None:
    """For a question asking a fact type about one named subject: whether the context states a
    fact of that type about it (a statement template of some fact type whose question template
    gives this question matches the context). None when no question template gives it."""
    verdicts = []
    for fact_type in synthetic._FACT_TYPES.values():
        for slot, templates in fact_type.questions.items():
            for template in templates:
                subjects = [name for _, name in synthetic._parse(template) if name]
                if len(subjects) != 1 or subjects[0] == slot:
                    continue
                pattern = re.escape(template).replace(re.escape(f"{{{subjects[0]}}}"), "(.+)")
                found = re.fullmatch(pattern, question[0].lower() + question[1:], re.I)
                if found is None:
                    continue
                names = {found.group(1)}
                if subjects[0] == "person":  # later mentions may use the surname alone
                    names.add(found.group(1).rsplit(" ", 1)[-1])
                verdicts.append(
                    any(
                        re.search(statement_regex(statement, subjects[0], names), context, re.I)
                        for statement in fact_type.statements
                    )
                )
    return any(verdicts) if verdicts else None


def test_no_unanswerable_share_by_default_and_the_same_output_with_zero():
    assert generate_examples(300, 5, "validation", 0.2, unanswerable_fraction=0.0) == (
        generate_examples(300, 5, "validation", 0.2)
    )
    assert all(record["answers"]["text"] for record in generate_examples(300, 5))


@pytest.mark.parametrize("split", ["train", "validation"])
def test_unanswerable_questions_replace_questions_and_leave_the_rest(split):
    plain = generate_examples(600, 11, split)
    mixed = generate_examples(600, 11, split, unanswerable_fraction=0.4)
    assert mixed == generate_examples(600, 11, split, unanswerable_fraction=0.4)  # deterministic
    assert mixed[:100] == generate_examples(100, 11, split, unanswerable_fraction=0.4)  # prefix
    replaced = 0
    for before, after in zip(plain, mixed, strict=True):
        assert {k: after[k] for k in ("id", "title", "context")} == {
            k: before[k] for k in ("id", "title", "context")
        }
        if after["answers"] == NO_ANSWER:
            replaced += 1
            assert after["question"] != before["question"]
        else:
            assert after == before
    assert 0.33 * len(plain) <= replaced <= 0.47 * len(plain)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 1.0])
def test_share_of_unanswerable_questions_is_close_to_requested(fraction):
    records = generate_examples(1000, 3, "train", unanswerable_fraction=fraction)
    share = sum(record["answers"] == NO_ANSWER for record in records) / len(records)
    assert abs(share - fraction) < 0.05


def test_unanswerable_questions_ask_about_an_unstated_fact_or_an_unmentioned_entity(
    with_unanswerable,
):
    kinds = collections.Counter()
    for record, kind in with_unanswerable:
        if record["answers"] != NO_ANSWER:
            assert kind != synthetic.UNANSWERABLE
            continue
        assert kind == synthetic.UNANSWERABLE
        question, context = record["question"], record["context"]
        assert question.endswith("?") and question[0].isupper()
        if pool_names(question) - pool_names(context):
            kinds["unmentioned entity"] += 1
            continue
        # Every name in the question is in the context: it must ask an unstated fact.
        assert stated_about(question, context) is False, (question, context)
        kinds["unstated fact"] += 1
    assert kinds["unmentioned entity"] > 150 and kinds["unstated fact"] > 150


def test_stated_about_recognises_answerable_questions(annotated):
    # The checker above must be able to fail: on answerable questions about one named
    # subject, it finds the stating sentence.
    checked = [
        stated_about(record["question"], record["context"])
        for record, _ in annotated
        if len(pool_names(record["question"])) == 1
    ]
    judged = [result for result in checked if result is not None]
    assert len(judged) > 300
    assert all(judged)


def test_bad_unanswerable_fraction_raises_with_the_name():
    with pytest.raises(ValueError, match="unanswerable_fraction"):
        generate_examples(5, 0, unanswerable_fraction=1.5)
