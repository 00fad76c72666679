"""`python -m qaexp.predict`: arguments, input files, outputs and errors (in process; the
command-line run against a trained checkpoint is in test_e2e.py)."""

from __future__ import annotations

import json
import logging
import re

import pytest

from qaexp.errors import QAExpError
from qaexp.predict import main, parse_args, read_questions

CONTEXT = "The bridge was designed by Clara Holm and opened in 1931, after six years of work."
QUESTION = {
    "id": "b1",
    "question": "Who designed the bridge?",
    "answers": [{"text": "Clara Holm", "answer_start": 27}],
}
SQUAD = {
    "version": "1.1",
    "data": [{"title": "B", "paragraphs": [{"context": CONTEXT, "qas": [QUESTION]}]}],
}


def test_text_is_read_verbatim():
    cfg = parse_args(
        ["checkpoint=ck", 'question=Who, if anyone: "x"?', "context=a=b, ${c} [d]", "top_k=3"]
    )
    assert cfg.question == 'Who, if anyone: "x"?'
    assert cfg.context == "a=b, ${c} [d]"
    assert cfg.top_k == 3 and cfg.max_length == 384


@pytest.mark.parametrize(
    "argv, match",
    [
        (["question=a", "context=b"], "checkpoint=PATH is required"),
        (["checkpoint=c"], "either question= and context=, or input=FILE"),
        (["checkpoint=c", "question=a", "context=b", "input=f"], "either question="),
        (["checkpoint=c", "question=a"], "needs a context="),
        (["checkpoint=c", "input=f", "top_k=three"], "top_k=three: must be an integer"),
        (["checkpoint=c", "qestion=a"], "'qestion=a' is not a known"),
        (["checkpoint=c", "input"], "'input' is not a known"),
    ],
)
def test_bad_arguments_are_named(argv, match):
    with pytest.raises(QAExpError, match=re.escape(match)):
        parse_args(argv)


def write(path, payload) -> str:
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return str(path)


def test_reads_a_json_list_with_and_without_ids(tmp_path):
    records = [
        {"question": "Who?", "context": CONTEXT},
        {"id": "q7", "question": "When?", "context": CONTEXT},
    ]
    examples = read_questions(write(tmp_path / "q.json", records))
    assert examples["id"] == ["0", "q7"]
    assert examples["question"] == ["Who?", "When?"]


def test_reads_json_lines(tmp_path):
    lines = "\n".join(json.dumps({"id": i, "question": "Who?", "context": CONTEXT}) for i in (4, 5))
    examples = read_questions(write(tmp_path / "q.jsonl", lines + "\n\n"))
    assert examples["id"] == ["4", "5"]


def test_reads_official_squad_json_with_answers(tmp_path):
    examples = read_questions(write(tmp_path / "dev.json", SQUAD))
    assert examples["id"] == ["b1"]
    assert examples[0]["answers"]["text"] == ["Clara Holm"]


@pytest.mark.parametrize(
    "name, payload, match",
    [
        ("bad.json", '[{"question": "Who?",\n "context": }]', "not valid JSON (line 2"),
        ("bad.jsonl", '{"question": "a", "context": "b"}\n\n{oops}\n', "line 3 is not valid JSON"),
        ("nc.jsonl", '{"question": "a", "context": "b"}\n{"question": "c"}\n', "line 2 needs"),
        ("nq.json", [{"question": "Who?", "context": "x"}, {"context": "x"}], "record 1 needs"),
        ("dup.json", [{"id": 1, "question": "a", "context": "b"}] * 2, "unique"),
        ("empty.json", [], "holds no questions"),
        ("obj.json", {"question": "a", "context": "b"}, "expected a JSON list"),
    ],
)
def test_malformed_files_get_a_clear_error(tmp_path, name, payload, match):
    with pytest.raises(QAExpError, match=re.escape(match)):
        read_questions(write(tmp_path / name, payload))


def test_missing_input_exits_2_before_loading_the_model(tmp_path, caplog):
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        main([f"checkpoint={tmp_path}/no/such/checkpoint", f"input={tmp_path}/none.json"])
    assert exit_.value.code == 2
    assert "none.json: no such file" in caplog.text  # the input is read first


def test_missing_checkpoint_exits_2(tmp_path, caplog):
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_:
        main([f"checkpoint={tmp_path}/runs/x/checkpoint", "question=Who?", f"context={CONTEXT}"])
    assert exit_.value.code == 2
    assert "no such folder" in caplog.text


def test_one_question_prints_answer_score_and_span(tiny_qa_checkpoint, capsys):
    main([f"checkpoint={tiny_qa_checkpoint}", "question=Who designed it?", f"context={CONTEXT}"])
    out = capsys.readouterr().out
    answer = re.search(r"^answer: (.*)$", out, re.M).group(1)
    score, start, end = re.search(r"score: ([\d.]+)  span: characters (\d+)-(\d+)", out).groups()
    assert CONTEXT[int(start) : int(end)] == answer != ""
    assert 0 < float(score) <= 1


def test_answers_a_file_like_the_pipeline_and_writes_nbest(tiny_qa_checkpoint, tmp_path):
    import qaexp

    records = [
        {"id": "a", "question": "Who designed it?", "context": CONTEXT},
        {"id": "b", "question": "When did it open?", "context": CONTEXT * 6},  # several windows
    ]
    source = write(tmp_path / "questions.json", records)
    args = ["max_length=64", "stride=16", "top_k=3"]
    main([f"checkpoint={tiny_qa_checkpoint}", f"input={source}", *args])

    predictions = json.loads((tmp_path / "questions.predictions.json").read_text())
    nbest = json.loads((tmp_path / "questions.nbest.json").read_text())
    assert predictions.keys() == nbest.keys() == {"a", "b"}
    qa = qaexp.pipeline(tiny_qa_checkpoint, device="cpu", max_length=64, stride=16, top_k=3)
    for record in records:
        ranked = nbest[record["id"]]
        assert 1 <= len(ranked) <= 3
        assert ranked[0]["answer"] == predictions[record["id"]]
        assert ranked == qa(question=record["question"], context=record["context"])


def test_scores_a_squad_file_against_its_answers(tiny_qa_checkpoint, tmp_path, caplog):
    source = write(tmp_path / "dev.json", SQUAD)
    output = tmp_path / "out" / "answers.json"
    with caplog.at_level(logging.INFO):
        main([f"checkpoint={tiny_qa_checkpoint}", f"input={source}", f"output={output}"])
    assert json.loads(output.read_text()).keys() == {"b1"}
    assert not (tmp_path / "out" / "answers.nbest.json").exists()  # top_k=1: no n-best file
    assert "Against the file's answers (1 questions): EM" in caplog.text
