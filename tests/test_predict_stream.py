"""`python -m qaexp.predict input=FILE` streamed: JSON lines and CSV read lazily, answers
appended as they come, a killed or interrupted run continued by running it again."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from qaexp import faults
from qaexp.predict import journal_path
from tests.conftest import run_cli, run_qaexp

CONTEXT = "The bridge was designed by Clara Holm and opened in 1931, after six years of work."
QUESTIONS = [
    "Who designed the bridge?",
    "When did it open?",
    "How long did the work take?",
    "What opened in 1931?",
    'Who, if anyone, said "bridge"?',  # a comma and quotes: CSV must quote them
    "Which year?",
    "By whom?",
    "What was built?",
    "How many years?",
]
# Several windows for some questions at max_length=64 (the context repeated).
RECORDS = [
    {"id": f"q{i}", "question": q, "context": CONTEXT * (1 + i % 3)}
    for i, q in enumerate(QUESTIONS)
]
SETTINGS = ["max_length=64", "stride=16", "chunk_size=2", "top_k=2", "device=cpu"]


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def write_csv(path, records, columns=("id", "question", "context")) -> str:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows({c: r[c] for c in columns} for r in records)
    return str(path)


def predict(checkpoint, source, cwd, *extra, output=None):
    args = [f"checkpoint={checkpoint}", f"input={source}", *SETTINGS, *extra]
    if output:
        args.append(f"output={output}")
    return run_cli(args, cwd=cwd, module="qaexp.predict")


def journal_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def crash_counts(monkeypatch):
    """Fresh crash points: an in-process run counts its points from 1 and in epoch 0, as a
    process does (an earlier in-process training run in this worker leaves its last epoch)."""
    monkeypatch.setattr(faults, "_hits", Counter())
    monkeypatch.setitem(faults._state, "epoch", 0)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_qa_checkpoint):
    """An uninterrupted run over RECORDS as JSON lines: (predictions, journal lines)."""
    folder = tmp_path_factory.mktemp("straight")
    result = predict(tiny_qa_checkpoint, write_jsonl(folder / "q.jsonl", RECORDS), folder)
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads((folder / "q.predictions.json").read_text())
    return predictions, journal_lines(folder / "q.predictions.jsonl"), folder


def test_jsonl_and_csv_answer_as_the_pipeline_does(straight, tiny_qa_checkpoint, tmp_path):
    import qaexp

    predictions, lines, folder = straight
    header, answers = lines[0], lines[1:]
    assert header["qaexp_answers"] == 1 and header["top_k"] == 2
    assert [a["id"] for a in answers] == [r["id"] for r in RECORDS]  # one line each, in order
    qa = qaexp.pipeline(tiny_qa_checkpoint, device="cpu", max_length=64, stride=16, top_k=2)
    for record, line in zip(RECORDS, answers, strict=True):
        expected = qa(question=record["question"], context=record["context"])
        assert [a["answer"] for a in line["answers"]] == [a["answer"] for a in expected]
        assert [a["score"] for a in line["answers"]] == pytest.approx(
            [a["score"] for a in expected], rel=1e-5
        )
        assert predictions[record["id"]] == expected[0]["answer"]
    nbest = json.loads((folder / "q.nbest.json").read_text())
    assert nbest == {line["id"]: line["answers"] for line in answers}

    source = write_csv(tmp_path / "q.csv", RECORDS)
    result = predict(tiny_qa_checkpoint, source, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "questions/s" in result.stderr
    assert "answering:" not in result.stderr  # no progress bar when stderr is not a terminal
    assert json.loads((tmp_path / "q.predictions.json").read_text()) == predictions


def test_csv_without_ids_numbers_its_rows(straight, tiny_qa_checkpoint, tmp_path):
    source = write_csv(tmp_path / "q.csv", RECORDS, columns=("question", "context"))
    assert predict(tiny_qa_checkpoint, source, tmp_path).returncode == 0
    by_position = json.loads((tmp_path / "q.predictions.json").read_text())
    assert by_position == {str(i): straight[0][r["id"]] for i, r in enumerate(RECORDS)}


@pytest.mark.parametrize(
    "crash_at, kept",
    [
        ("answer_chunk@0#2", 4),  # killed after two chunks were on disk
        ("answer_line@0#5", 5),  # killed in the middle of the third chunk
    ],
)
def test_killed_run_continues_to_the_same_answers(
    straight, tiny_qa_checkpoint, tmp_path, crash_counts, crash_at, kept
):
    source = write_jsonl(tmp_path / "q.jsonl", RECORDS)
    args = [f"checkpoint={tiny_qa_checkpoint}", f"input={source}", *SETTINGS]
    killed = run_qaexp(args, cwd=tmp_path, module="qaexp.predict", env={"QAEXP_CRASH_AT": crash_at})
    assert killed.returncode == -9, killed.stderr[-3000:]  # SIGKILL
    journal = tmp_path / "q.predictions.jsonl"
    assert len(journal_lines(journal)) == 1 + kept
    assert not (tmp_path / "q.predictions.json").exists()
    with journal.open("a") as fh:  # the kill came in the middle of writing the next line
        fh.write('{"id": "q9", "answers": [{"ans')

    result = predict(tiny_qa_checkpoint, source, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f"Continuing: {kept} of {len(RECORDS)} questions already answered" in log
    assert "torn line" in log
    predictions, lines, _ = straight
    assert json.loads((tmp_path / "q.predictions.json").read_text()) == predictions
    continued = journal_lines(journal)
    assert [line["id"] for line in continued[1:]] == [r["id"] for r in RECORDS]  # none twice
    if crash_at.startswith("answer_chunk"):  # the same chunks, so the very same numbers
        assert continued[1:] == lines[1:]


def test_ctrl_c_says_where_to_continue(straight, tiny_qa_checkpoint, tmp_path, crash_counts):
    source = write_jsonl(tmp_path / "q.jsonl", RECORDS)
    ctrl_c = {"QAEXP_CRASH_AT": "answer_chunk@0#1", "QAEXP_CRASH_SIGNAL": "SIGINT"}
    args = [f"checkpoint={tiny_qa_checkpoint}", f"input={source}", *SETTINGS]
    result = run_cli(args, cwd=tmp_path, module="qaexp.predict", env=ctrl_c)
    assert result.returncode == 130
    log = result.stdout + result.stderr
    assert f"Stopped after 2 of {len(RECORDS)} questions" in log
    assert "continue after id 'q1' (input=" in log and "q.jsonl: line 2)" in log
    assert len(journal_lines(tmp_path / "q.predictions.jsonl")) == 3

    again = predict(tiny_qa_checkpoint, source, tmp_path)
    assert again.returncode == 0
    assert json.loads((tmp_path / "q.predictions.json").read_text()) == straight[0]


def test_a_finished_command_runs_again_without_answering(tiny_qa_checkpoint, tmp_path):
    source = write_jsonl(tmp_path / "q.jsonl", RECORDS[:2])
    assert predict(tiny_qa_checkpoint, source, tmp_path).returncode == 0
    journal = (tmp_path / "q.predictions.jsonl").read_text()
    (tmp_path / "q.predictions.json").unlink()
    again = predict(tiny_qa_checkpoint, source, tmp_path)
    assert again.returncode == 0
    assert "All 2 questions are already answered" in again.stderr
    assert (tmp_path / "q.predictions.jsonl").read_text() == journal  # nothing appended
    assert json.loads((tmp_path / "q.predictions.json").read_text()).keys() == {"q0", "q1"}

    # Other settings after a finished command answer again, as a new command replaces an
    # output file; the journal then holds the new command's answers only.
    other = predict(tiny_qa_checkpoint, source, tmp_path, "max_answer_length=5")
    assert other.returncode == 0, other.stderr[-3000:]
    assert "finished answers of another command (max_answer_length 30 there, 5 now)" in (
        other.stderr
    )
    lines = journal_lines(tmp_path / "q.predictions.jsonl")
    assert lines[0]["max_answer_length"] == 5 and [r["id"] for r in lines[1:]] == ["q0", "q1"]


def test_unfinished_answers_of_other_settings_are_not_mixed(tiny_qa_checkpoint, tmp_path):
    source = write_jsonl(tmp_path / "q.jsonl", RECORDS[:2])
    assert predict(tiny_qa_checkpoint, source, tmp_path).returncode == 0
    write_jsonl(tmp_path / "q.jsonl", RECORDS)  # the file grew: 2 questions are answered
    journal = (tmp_path / "q.predictions.jsonl").read_text()
    other = predict(tiny_qa_checkpoint, source, tmp_path, "max_answer_length=5")
    assert other.returncode == 2
    assert "unfinished answers of another command (max_answer_length 30 there, 5 now)" in (
        other.stderr
    )
    assert (tmp_path / "q.predictions.jsonl").read_text() == journal
    same = predict(tiny_qa_checkpoint, source, tmp_path)
    assert same.returncode == 0, same.stderr[-3000:]
    assert f"Continuing: 2 of {len(RECORDS)} questions already answered" in same.stderr


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("bad.jsonl", '{"question": "a", "context": "b"}\n\n{oops\n', "line 3 is not valid JSON"),
        (
            "dup.jsonl",
            '{"id": 1, "question": "a", "context": "b"}\n{"id": "1", "question": "c", '
            '"context": "d"}\n',
            "line 2: id '1' appears earlier too",
        ),
        ("cols.csv", "id,query,context\n1,a,b\n", "needs a 'question' and a 'context' column"),
        ("cells.csv", "question,context\na,b\nc,d,e\n", "line 3 has more cells"),
        ("empty.csv", "question,context\nwho?,\n", "line 2 has an empty 'context'"),
    ],
)
def test_malformed_line_exits_2_naming_it_before_anything_is_written(
    tiny_qa_checkpoint, tmp_path, name, text, message
):
    source = tmp_path / name
    source.write_text(text)
    result = predict(tiny_qa_checkpoint, source, tmp_path)
    assert result.returncode == 2
    errors = [line for line in (result.stdout + result.stderr).splitlines() if "[ERROR]" in line]
    assert len(errors) == 1 and message in errors[0]  # one paragraph
    output = tmp_path / f"{source.stem}.predictions.json"
    assert not output.exists() and not journal_path(output).exists()
