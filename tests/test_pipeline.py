"""qaexp.pipeline: the old question-answering pipeline's interface on qaexp's windows and
post-processing. A marker model (start logit high on "zebra", end logit high on "violin")
makes the right answer known, wherever the windowing puts it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from qaexp.errors import QAExpError
from tests.conftest import REPO

FILLER = "The committee met on a grey morning and talked about budgets for a while. "
ANSWER = "zebra played the violin"


class MarkerQA(torch.nn.Module):
    """Start logits peak on `start_id`, end logits on `end_id`; everything else is flat."""

    def __init__(self, start_id: int, end_id: int):
        super().__init__()
        self.start_id, self.end_id = start_id, end_id
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # so .to(device) has a tensor to move

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        start = (input_ids == self.start_id).float() * 10 + self.anchor
        end = (input_ids == self.end_id).float() * 10 + self.anchor
        return SimpleNamespace(start_logits=start, end_logits=end)


@pytest.fixture(scope="module")
def qa(minilm_tokenizer):
    from qaexp.answering import pipeline

    ids = minilm_tokenizer(["zebra", "violin"], add_special_tokens=False)["input_ids"]
    assert [len(i) for i in ids] == [1, 1]  # single-token markers
    model = MarkerQA(ids[0][0], ids[1][0])
    return pipeline(model, tokenizer=minilm_tokenizer, device="cpu", max_length=64, stride=16)


def long_context(repeats_before: int, repeats_after: int = 2) -> str:
    return FILLER * repeats_before + f"Then a {ANSWER} loudly. " + FILLER * repeats_after


def test_answer_in_a_late_window_is_found_with_its_character_span(qa, minilm_tokenizer):
    context = long_context(repeats_before=8)
    windows = minilm_tokenizer(
        "Who played?",
        context,
        max_length=64,
        stride=16,
        truncation="only_second",
        return_overflowing_tokens=True,
    )["input_ids"]
    assert len(windows) >= 4  # the answer is far from the first window
    result = qa(question="Who played?", context=context)
    assert set(result) == {"answer", "score", "start", "end"}
    assert result["answer"] == ANSWER
    assert context[result["start"] : result["end"]] == ANSWER
    assert result["start"] == context.index(ANSWER)
    assert 0.5 < result["score"] <= 1.0


def test_top_k_gives_ranked_distinct_spans(qa):
    context = long_context(repeats_before=3)
    results = qa(question="Who played?", context=context, top_k=4)
    assert isinstance(results, list) and len(results) == 4
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-9
    assert results[0]["answer"] == ANSWER
    assert len({(r["start"], r["end"]) for r in results}) == 4
    for r in results:
        assert context[r["start"] : r["end"]] == r["answer"]


def test_input_shapes_follow_the_old_pipeline(qa):
    context = long_context(repeats_before=1)
    single = qa({"question": "Who?", "context": context})
    assert isinstance(single, dict) and single["answer"] == ANSWER
    listed = qa([{"question": "Who?", "context": context}])
    assert listed == [single]  # a list in, a list out (also of one)
    pairs = qa(question=["Who?", "Who played?"], context=[context, FILLER])
    assert len(pairs) == 2 and pairs[0]["answer"] == ANSWER
    assert FILLER[pairs[1]["start"] : pairs[1]["end"]] == pairs[1]["answer"]
    broadcast = qa(question=["Who?", "Which one?"], context=context)
    assert [b["answer"] for b in broadcast] == [ANSWER, ANSWER]
    nested = qa(question=["Who?"], context=[context], top_k=2)
    assert isinstance(nested, list) and isinstance(nested[0], list) and len(nested[0]) == 2
    assert qa([]) == []


def test_results_do_not_depend_on_batch_size(qa):
    contexts = [long_context(repeats_before=n) for n in (0, 2, 5, 9)]
    questions = ["Who played?"] * len(contexts)
    one = qa(question=questions, context=contexts, batch_size=1, top_k=3)
    many = qa(question=questions, context=contexts, batch_size=64, top_k=3)
    assert [[r["answer"] for r in rs] for rs in one] == [[r["answer"] for r in rs] for rs in many]
    for a, b in zip(one, many, strict=True):
        assert [r["score"] for r in a] == pytest.approx([r["score"] for r in b], rel=1e-5)


def test_max_answer_len_bounds_the_span(qa, minilm_tokenizer):
    context = "Then a zebra " + "slowly " * 12 + "played the violin. " + FILLER
    loose = qa(question="Who?", context=context, max_answer_len=30)
    assert loose["answer"].startswith("zebra") and loose["answer"].endswith("violin")
    tight = qa(question="Who?", context=context, max_answer_len=4)
    tokens = minilm_tokenizer(tight["answer"], add_special_tokens=False)["input_ids"]
    assert 1 <= len(tokens) <= 4


def test_old_argument_names_are_aliases(qa):
    context = long_context(repeats_before=6)
    new = qa(question="Who?", context=context, max_length=48, stride=8, top_k=2)
    old = qa(question="Who?", context=context, max_seq_len=48, doc_stride=8, topk=2)
    assert new == old


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda qa: qa(question="Who?"), "context"),
        (lambda qa: qa(question=["a", "b", "c"], context=["x", "y"]), "3 questions and 2"),
        (lambda qa: qa({"question": "Who?"}), "context"),
        (lambda qa: qa("Who?"), "dict"),
        (lambda qa: qa(question="Who?", context="x", top_k=0), "top_k=0"),
        (lambda qa: qa(question="Who?", context="x", max_length=64, stride=60), "stride=60"),
        (lambda qa: qa(question="word " * 80, context="x", max_length=64), "no room"),
    ],
)
def test_bad_input_gets_a_clear_error(qa, call, match):
    with pytest.raises(QAExpError, match=match):
        call(qa)


def test_unknown_argument_is_a_type_error(qa):
    with pytest.raises(TypeError, match="max_answer_len"):
        qa(question="Who?", context="x", max_answer=3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_a_missing_gpu_fails_clearly(minilm_tokenizer):
    from qaexp.answering import pipeline

    with pytest.raises(QAExpError, match="no CUDA device"):
        pipeline(MarkerQA(1, 2), tokenizer=minilm_tokenizer, device="cuda")


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory, tiny_qa_checkpoint):
    """The tiny checkpoint's encoder saved without its QA head (as a plain BertModel)."""
    from transformers import AutoModel, AutoTokenizer

    folder = tmp_path_factory.mktemp("base") / "checkpoint"
    AutoModel.from_pretrained(tiny_qa_checkpoint).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_qa_checkpoint).save_pretrained(folder)
    return folder


def test_loads_a_checkpoint_folder(tiny_qa_checkpoint, caplog):
    import qaexp

    with caplog.at_level(logging.WARNING):
        qa = qaexp.pipeline(str(tiny_qa_checkpoint), device=-1)
    assert "freshly initialised" not in caplog.text
    context = long_context(repeats_before=4)
    result = qa(question="Who played?", context=context)
    assert context[result["start"] : result["end"]] == result["answer"] != ""
    assert qa.device.type == "cpu"


def test_warns_when_the_checkpoint_has_no_qa_head(base_checkpoint, caplog):
    from qaexp.answering import pipeline

    with caplog.at_level(logging.WARNING):
        pipeline(base_checkpoint, device="cpu")
    assert "freshly initialised" in caplog.text


def test_missing_local_checkpoint_names_the_path(tmp_path):
    from qaexp.answering import pipeline

    with pytest.raises(QAExpError, match="no such folder"):
        pipeline(str(tmp_path / "runs" / "nope" / "checkpoint"))


def test_import_qaexp_stays_light():
    """`qaexp.pipeline` is resolved on first use; `import qaexp` pulls in no torch."""
    probe = "import sys, qaexp; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.stdout.split() == ["False", "False"], out.stderr[-2000:]
