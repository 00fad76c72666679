"""Feature building: windows, labels, offsets; hand-built contexts and the real SQuAD files."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from qaexp.features import build_features, prepare_eval_features, prepare_train_features


def batch(*items):
    """Examples in the squad schema from (question, context, answer_text[, occurrence])."""
    out = {"id": [], "question": [], "context": [], "answers": []}
    for i, (question, context, answer, *occurrence) in enumerate(items):
        start = [m.start() for m in re.finditer(re.escape(answer), context)][
            occurrence[0] if occurrence else 0
        ]
        out["id"].append(f"q{i}")
        out["question"].append(question)
        out["context"].append(context)
        out["answers"].append({"text": [answer], "answer_start": [start]})
    return out


def reference_labels(examples, tokenizer, max_length, stride):
    """A plain per-token loop over each window, as the original recipe writes it."""
    pad_right = tokenizer.padding_side == "right"
    questions = [q.strip() for q in examples["question"]]
    first, second = (
        (questions, examples["context"]) if pad_right else (examples["context"], questions)
    )
    enc = tokenizer(
        first,
        second,
        max_length=max_length,
        truncation="only_second" if pad_right else "only_first",
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    context_id = 1 if pad_right else 0
    labels = []
    for i, offsets in enumerate(enc["offset_mapping"]):
        answer = examples["answers"][enc["overflow_to_sample_mapping"][i]]
        start_char = answer["answer_start"][0]
        end_char = start_char + len(answer["text"][0])
        seq = enc.sequence_ids(i)
        idx = 0
        while seq[idx] != context_id:
            idx += 1
        ctx_start = idx
        while idx < len(seq) and seq[idx] == context_id:
            idx += 1
        ctx_end = idx - 1
        if offsets[ctx_start][0] > start_char or offsets[ctx_end][1] < end_char:
            labels.append((0, 0))
            continue
        idx = ctx_start
        while idx <= ctx_end and offsets[idx][0] <= start_char:
            idx += 1
        start = idx - 1
        idx = ctx_end
        while idx >= ctx_start and offsets[idx][1] >= end_char:
            idx -= 1
        labels.append((start, idx + 1))
    return labels


def labels_of(features):
    return list(zip(features["start_positions"], features["end_positions"], strict=True))


def decoded_answers(features, tokenizer):
    return [
        tokenizer.decode(ids[s : e + 1]).strip() if s else None
        for ids, s, e in zip(
            features["input_ids"],
            features["start_positions"],
            features["end_positions"],
            strict=True,
        )
    ]


CONTEXT = (
    "Marie Curie was born in Warsaw in 1867. She moved to Paris in 1891 to study physics. "
    "In 1903 she shared the Nobel Prize in Physics with Pierre Curie and Henri Becquerel. "
    "She later founded the Radium Institute, which opened in 1914. "
    "Her daughter Irene Joliot-Curie also won a Nobel Prize, in 1935."
)


@pytest.fixture(scope="module")
def roberta_like():
    """A byte-level BPE tokenizer with RoBERTa's pair template and no token_type_ids."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    corpus = [CONTEXT, "When was she born? Where did she move? Who won a prize?"] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
    )
    return fast


def test_single_window_label_decodes_to_answer(minilm_tokenizer):
    ex = batch(("When was Marie Curie born?", CONTEXT, "1867"))
    feats = prepare_train_features(ex, minilm_tokenizer, max_length=384, stride=128)
    assert len(feats["input_ids"]) == 1
    assert decoded_answers(feats, minilm_tokenizer) == ["1867"]
    assert labels_of(feats) == reference_labels(ex, minilm_tokenizer, 384, 128)


def test_several_windows_only_those_holding_the_whole_answer_are_labelled(minilm_tokenizer):
    ex = batch(("What did her daughter win?", CONTEXT, "a Nobel Prize", 0))
    feats = prepare_train_features(ex, minilm_tokenizer, max_length=40, stride=16)
    assert len(feats["input_ids"]) > 2
    answers = decoded_answers(feats, minilm_tokenizer)
    assert "a nobel prize" in answers  # uncased vocabulary
    assert all(a in (None, "a nobel prize") for a in answers)
    assert any(a is None for a in answers)
    assert labels_of(feats) == reference_labels(ex, minilm_tokenizer, 40, 16)
    # windows respect max_length and share `stride` context tokens with their neighbour
    assert max(len(ids) for ids in feats["input_ids"]) <= 40


def unanswerable(examples, *rows):
    """`examples` with the answers of the given rows emptied (SQuAD v2.0 unanswerable)."""
    out = copy.deepcopy(examples)
    for row in rows:
        out["answers"][row] = {"text": [], "answer_start": []}
    return out


@pytest.mark.parametrize("max_length,stride", [(384, 128), (40, 16)])
def test_unanswerable_question_labels_every_window_with_cls(minilm_tokenizer, max_length, stride):
    items = [
        ("What did her daughter win?", CONTEXT, "a Nobel Prize", 0),
        ("Where did she move in 1891?", CONTEXT, "Paris"),
        ("When was Marie Curie born?", CONTEXT, "1867"),
    ]
    answerable = batch(*items)
    feats = prepare_train_features(
        unanswerable(answerable, 1), minilm_tokenizer, max_length=max_length, stride=stride
    )
    full = prepare_train_features(answerable, minilm_tokenizer, max_length, stride)
    assert feats["input_ids"] == full["input_ids"]  # the answers change labels only
    counts = [
        len(prepare_train_features(batch(item), minilm_tokenizer, max_length, stride)["input_ids"])
        for item in items
    ]
    first, second = counts[0], counts[0] + counts[1]
    labels = labels_of(feats)
    want = reference_labels(answerable, minilm_tokenizer, max_length, stride)
    assert labels[first:second] == [(0, 0)] * counts[1]
    assert want[first:second] != [(0, 0)] * counts[1]  # answerable, the same rows are labelled
    assert labels[:first] == want[:first] and labels[second:] == want[second:]


def test_a_batch_of_unanswerable_questions_only(minilm_tokenizer):
    ex = unanswerable(batch(("What did she found?", CONTEXT, "Radium Institute")), 0)
    feats = prepare_train_features(ex, minilm_tokenizer, max_length=40, stride=16)
    assert len(feats["input_ids"]) > 2
    assert labels_of(feats) == [(0, 0)] * len(feats["input_ids"])


def test_answer_at_window_edge_and_cut_by_truncation(minilm_tokenizer):
    # Scan every window size/stride pair in a range so the answer lands at the first and last
    # context token of some window and is cut in half by others.
    ex = batch(("Which institute did she found?", CONTEXT, "Radium Institute"))
    saw_cut = saw_edge = False
    for max_length in range(24, 60, 3):
        feats = prepare_train_features(ex, minilm_tokenizer, max_length=max_length, stride=8)
        labels = labels_of(feats)
        assert labels == reference_labels(ex, minilm_tokenizer, max_length, 8)
        for ids, (s, e) in zip(feats["input_ids"], labels, strict=True):
            if s:
                assert minilm_tokenizer.decode(ids[s : e + 1]) == "radium institute"
                saw_edge |= e == len(ids) - 2 or s == ids.index(minilm_tokenizer.sep_token_id) + 1
        text = [minilm_tokenizer.decode(ids) for ids in feats["input_ids"]]
        saw_cut |= any("radium" in t and "institute" not in t.split("radium")[-1] for t in text)
    assert saw_edge and saw_cut


def test_left_padding_puts_context_first(minilm_tokenizer):
    left = copy.deepcopy(minilm_tokenizer)
    left.padding_side = "left"
    ex = batch(("When did she move to Paris?", CONTEXT, "1891"))
    feats = prepare_train_features(ex, left, max_length=48, stride=16)
    assert labels_of(feats) == reference_labels(ex, left, 48, 16)
    assert "1891" in decoded_answers(feats, left)
    evals = prepare_eval_features(ex, left, max_length=48, stride=16)
    for ids, offsets in zip(evals["input_ids"], evals["offset_mapping"], strict=True):
        assert len(ids) == len(offsets)
        context_positions = [i for i, o in enumerate(offsets) if o is not None]
        # the context comes first, right after [CLS]
        assert context_positions[0] == 1


def test_left_padding_labels_when_windows_differ_in_length(minilm_tokenizer):
    # Several examples in one batch, answers late in the context: the last window of each is
    # shorter than the others, and labels must count from its own first token, not from the
    # left padding a batch-wide width would put before it.
    left = copy.deepcopy(minilm_tokenizer)
    left.padding_side = "left"
    ex = batch(
        ("Who won in 1935?", CONTEXT, "Irene Joliot-Curie"),
        ("What did she found?", CONTEXT, "the Radium Institute"),
        ("When was she born?", CONTEXT[:40], "1867"),
    )
    feats = prepare_train_features(ex, left, max_length=40, stride=8)
    assert len({len(ids) for ids in feats["input_ids"]}) > 1
    assert labels_of(feats) == reference_labels(ex, left, 40, 8)
    answers = decoded_answers(feats, left)
    assert {"irene joliot - curie", "the radium institute", "1867"} <= set(answers)


def test_tokenizer_without_token_type_ids(roberta_like):
    ex = batch(("Who shared the prize?", CONTEXT, "Pierre Curie"))
    feats = prepare_train_features(ex, roberta_like, max_length=32, stride=8)
    assert "token_type_ids" not in feats
    assert labels_of(feats) == reference_labels(ex, roberta_like, 32, 8)
    assert "Pierre Curie" in decoded_answers(feats, roberta_like)
    evals = prepare_eval_features(ex, roberta_like, max_length=32, stride=8)
    assert "token_type_ids" not in evals
    assert evals["example_id"] == ["q0"] * len(evals["input_ids"])


def test_eval_offsets_mark_only_context_tokens(minilm_tokenizer):
    ex = batch(
        ("Where was she born?", CONTEXT, "Warsaw"),
        ("Who won in 1935?", CONTEXT, "Irene Joliot-Curie"),
    )
    feats = prepare_eval_features(ex, minilm_tokenizer, max_length=64, stride=16)
    assert sorted(set(feats["example_id"])) == ["q0", "q1"]
    for ids, offsets, ex_id in zip(
        feats["input_ids"], feats["offset_mapping"], feats["example_id"], strict=True
    ):
        context = CONTEXT
        sep = ids.index(minilm_tokenizer.sep_token_id)
        assert all(o is None for o in offsets[: sep + 1])  # [CLS] question [SEP]
        assert offsets[-1] is None  # final [SEP]
        spans = [context[o[0] : o[1]].lower() for o in offsets if o is not None]
        pieces = [minilm_tokenizer.convert_ids_to_tokens(i).removeprefix("##") for i in ids]
        assert spans == [p for p, o in zip(pieces, offsets, strict=True) if o is not None]
        assert ex_id in {"q0", "q1"}


def test_question_whitespace_is_stripped(minilm_tokenizer):
    a = prepare_train_features(
        batch(("  Where was she born?\n", CONTEXT, "Warsaw")), minilm_tokenizer, 64, 16
    )
    b = prepare_train_features(
        batch(("Where was she born?", CONTEXT, "Warsaw")), minilm_tokenizer, 64, 16
    )
    assert a == b


def test_pad_to_max_length_keeps_labels(minilm_tokenizer):
    ex = batch(("Where was she born?", CONTEXT, "Warsaw"))
    padded = prepare_train_features(ex, minilm_tokenizer, 64, 16, pad_to_max_length=True)
    plain = prepare_train_features(ex, minilm_tokenizer, 64, 16)
    assert {len(ids) for ids in padded["input_ids"]} == {64}
    assert labels_of(padded) == labels_of(plain)


def test_build_features_is_cached(minilm_tokenizer, tmp_path):
    import datasets

    rows = batch(("Where was she born?", CONTEXT, "Warsaw"), ("When?", CONTEXT, "1914"))
    rows["title"] = ["t", "t"]
    ds = datasets.Dataset.from_dict(rows)
    path = tmp_path / "examples"
    ds.save_to_disk(path)
    ds = datasets.load_from_disk(path)
    first = build_features(ds, minilm_tokenizer, 64, 16, train=True)
    second = build_features(ds, minilm_tokenizer, 64, 16, train=True)
    assert first.cache_files and first.cache_files == second.cache_files
    other = build_features(ds, minilm_tokenizer, 64, 24, train=True)
    assert other.cache_files != first.cache_files


def test_parallel_build_gives_the_same_windows(minilm_tokenizer):
    import datasets

    rows = batch(
        *[
            (f"Question {i}?", CONTEXT, answer)
            for i, answer in enumerate(["Warsaw", "1891", "Pierre Curie", "1914", "1935", "Paris"])
        ]
    )
    rows["title"] = ["t"] * len(rows["id"])
    ds = datasets.Dataset.from_dict(rows)
    serial = build_features(ds, minilm_tokenizer, 48, 16, train=False)
    parallel = build_features(ds, minilm_tokenizer, 48, 16, train=False, num_proc=2)
    assert parallel.to_dict() == serial.to_dict()


# --- the real SQuAD v1.1 files -------------------------------------------------------------


@pytest.mark.squad
def test_dev_window_count_matches_reference(squad_dev, minilm_tokenizer):
    feats = build_features(squad_dev, minilm_tokenizer, 384, 128, train=False)
    assert len(squad_dev) == 10_570
    assert len(feats) == 10_784
    lengths = np.array([len(ids) for ids in feats["input_ids"]])
    assert 150 < lengths.mean() < 200  # dev mean ~176 real tokens per window


@pytest.mark.squad
def test_train_labels_decode_to_answers(squad_train, minilm_tokenizer):
    from qaexp.metrics import normalize_answer

    examples = squad_train.select(range(3000))
    feats = build_features(examples, minilm_tokenizer, 384, 128, train=True)
    ex_rows = examples[:]
    reference = reference_labels(ex_rows, minilm_tokenizer, 384, 128)
    assert labels_of(feats[:]) == reference
    enc = minilm_tokenizer(
        [q.strip() for q in ex_rows["question"]],
        ex_rows["context"],
        max_length=384,
        truncation="only_second",
        stride=128,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    owner = enc["overflow_to_sample_mapping"]
    matched = labelled = 0
    for offsets, s, e, i in zip(
        enc["offset_mapping"], feats["start_positions"], feats["end_positions"], owner, strict=True
    ):
        if s == 0:
            continue
        labelled += 1
        span = ex_rows["context"][i][offsets[s][0] : offsets[e][1]]
        gold = ex_rows["answers"][i]["text"][0]
        matched += normalize_answer(span) == normalize_answer(gold)
    # Tokens cover whole word pieces, so the few answers that end inside a token ("1860s"
    # labelled from "1860") map to a slightly longer span; nearly all map exactly.
    assert labelled > 2900
    assert matched / labelled > 0.98


# --- properties on random contexts ---------------------------------------------------------

from hypothesis import HealthCheck, given, reject, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from qaexp.checks import check_windows  # noqa: E402
from qaexp.errors import QAExpError  # noqa: E402

WORDS = [
    "alpha",
    "beta",
    "Gamma",
    "delta-epsilon",
    "1987",
    "U.S.",
    "naïve",
    "x",
    "long-word",
    "(paren)",
    "42,000",
]


@st.composite
def windowed_example(draw):
    words = draw(st.lists(st.sampled_from(WORDS), min_size=3, max_size=80))
    context = " ".join(words)
    first = draw(st.integers(0, len(words) - 1))
    last = draw(st.integers(first, min(first + 4, len(words) - 1)))
    start = len(" ".join(words[:first])) + (1 if first else 0)
    answer = " ".join(words[first : last + 1])
    question = " ".join(draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=6)))
    max_length = draw(st.integers(24, 96))
    stride = draw(st.integers(1, 8))
    return (
        {
            "id": ["q"],
            "question": [question],
            "context": [context],
            "answers": [{"text": [answer], "answer_start": [start]}],
        },
        max_length,
        stride,
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=windowed_example())
def test_labels_always_decode_to_the_answer_or_are_zero(minilm_tokenizer, case):
    ex, max_length, stride = case
    try:  # only settings qaexp accepts: a run refuses the others before building windows
        check_windows(ex["question"], minilm_tokenizer, max_length, stride, "question")
    except QAExpError:
        reject()
    feats = prepare_train_features(ex, minilm_tokenizer, max_length, stride)
    evals = prepare_eval_features(ex, minilm_tokenizer, max_length, stride)
    assert labels_of(feats) == reference_labels(ex, minilm_tokenizer, max_length, stride)
    answer, start = ex["answers"][0]["text"][0], ex["answers"][0]["answer_start"][0]
    context = ex["context"][0]
    assert len(feats["input_ids"]) == len(evals["offset_mapping"])
    for (s, e), offsets in zip(labels_of(feats), evals["offset_mapping"], strict=True):
        assert all(len(ids) <= max_length for ids in feats["input_ids"])
        if (s, e) == (0, 0):
            continue
        assert offsets[s] is not None and offsets[e] is not None and s <= e
        # the labelled tokens cover the answer and stay inside the word pieces around it
        assert offsets[s][0] <= start and offsets[e][1] >= start + len(answer)
        assert answer in context[offsets[s][0] : offsets[e][1]]
