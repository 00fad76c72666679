"""Faults a hostile user (or a bad disk) brings: broken checkpoints, damaged caches, odd
records, unwritable outputs, full disks. Each gets one paragraph naming the file or field and
a non-zero exit, with no traceback on stderr; damaged caches are rebuilt."""

from __future__ import annotations

import errno
import json
import logging
import shutil

import pytest

from qaexp.errors import QAExpError
from tests.conftest import SMALL_RUN, read_jsonl, run_qaexp

# --- broken checkpoints ----------------------------------------------------------------------


@pytest.fixture
def broken(tmp_path, tiny_qa_checkpoint):
    """A copy of the tiny QA checkpoint, to break."""
    folder = tmp_path / "broken"
    shutil.copytree(tiny_qa_checkpoint, folder)
    return folder


def without_tokenizer(folder):
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)


def with_three_labels(folder):
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): f"L{i}" for i in range(3)}
    config["label2id"] = {f"L{i}": i for i in range(3)}
    (folder / "config.json").write_text(json.dumps(config))


def garbled_weights(folder):
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[:64] = b"\xff" * 64
    (folder / "model.safetensors").write_bytes(bytes(data))


def truncated_weights(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])


def without_weights(folder):
    (folder / "model.safetensors").unlink()


BREAKAGES = {
    "no tokenizer files": (without_tokenizer, "tokenizer.json"),
    "a 3-label head": (with_three_labels, "3 outputs"),
    "garbled weights": (garbled_weights, "not a loadable"),
    "truncated weights": (truncated_weights, "not a loadable"),
    "no weights": (without_weights, "model.safetensors"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_broken_checkpoint_is_refused_by_the_pipeline(broken, breakage):
    from qaexp import pipeline

    breaks, expected = BREAKAGES[breakage]
    breaks(broken)
    with pytest.raises(QAExpError, match=expected) as err:
        pipeline(str(broken))
    assert str(broken) in str(err.value)


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(tiny_qa_checkpoint):
    from transformers import AutoConfig

    from qaexp.modeling import check_tokenizer_fits

    config = AutoConfig.from_pretrained(tiny_qa_checkpoint)
    tiny_vocab = type("Fallback", (), {"__len__": lambda self: 5})()
    with pytest.raises(QAExpError, match="5 tokens"):
        check_tokenizer_fits(tiny_vocab, config, "ckpt", "checkpoint")


@pytest.mark.parametrize("breakage", ["no tokenizer files", "a 3-label head", "garbled weights"])
def test_broken_checkpoint_cli_exit_2(broken, tmp_path, breakage):
    """predict, evaluate-only and training: one paragraph, exit 2, no traceback."""
    breaks, expected = BREAKAGES[breakage]
    breaks(broken)
    model = [f"model.name_or_path={broken}", "model.init=pretrained"]
    commands = [
        (["checkpoint=" + str(broken), "question=Who?", "context=Ada wrote it."], "qaexp.predict"),
        ([*SMALL_RUN, *model, "trainer.epochs=0"], "qaexp"),
        ([*SMALL_RUN, *model], "qaexp"),
    ]
    for args, module in commands:
        result = run_qaexp(args, cwd=tmp_path, module=module)
        assert result.returncode == 2, (module, args, result.stderr[-2000:])
        assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]


# --- odd records -----------------------------------------------------------------------------


def squad(question="Who wrote it?", context="Ada wrote it.", text="Ada", start=0, qid="q1"):
    qa = {"id": qid, "question": question, "answers": [{"text": text, "answer_start": start}]}
    return {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": [qa]}]}]}


@pytest.mark.parametrize(
    "document,expected",
    [
        (squad(context=None), "paragraphs[0].context must be a str"),
        (squad(question=None), "qas[0].question must be a str"),
        (squad(question=["Who?"]), "qas[0].question must be a str"),
        (squad(text=None), "answers[0].text must be a str"),
        (squad(start="0"), "answers[0].answer_start must be a int"),
        (squad(qid=None), "qas[0].id must be a string or an integer"),
        (squad(qid=1.0), "qas[0].id must be a string or an integer"),
        ({"data": [{"paragraphs": None}]}, "data[0].paragraphs must be a list"),
        ({"data": [{"paragraphs": [{"context": "x", "qas": None}]}]}, "qas must be a list"),
    ],
)
def test_wrongly_typed_fields_name_their_place(tmp_path, document, expected):
    from qaexp.data import load_squad_json

    path = tmp_path / "odd.json"
    path.write_text(json.dumps(document))
    with pytest.raises(QAExpError, match="odd.json") as err:
        load_squad_json(str(path), "data.train_file", cache_dir=str(tmp_path / "cache"))
    assert expected in str(err.value)


def test_ids_that_collide_after_conversion_are_refused(tmp_path):
    import datasets

    from qaexp.data import check_examples, load_squad_json

    doc = squad(qid=1)
    doc["data"][0]["paragraphs"][0]["qas"].append(
        {**squad(qid="1")["data"][0]["paragraphs"][0]["qas"][0]}
    )
    path = tmp_path / "ids.json"
    path.write_text(json.dumps(doc))
    rows = load_squad_json(str(path), "data.validation_file", cache_dir=str(tmp_path / "c"))
    with pytest.raises(QAExpError, match="duplicate question id"):
        check_examples(datasets.DatasetDict({"validation": rows}))


def _split(rows):
    import datasets

    from qaexp.data import SQUAD_FEATURES

    table = {k: [r[k] for r in rows] for k in ("id", "title", "context", "question", "answers")}
    return datasets.Dataset.from_dict(table, features=SQUAD_FEATURES)


def _row(i, question="Who?", context="Ada wrote it.", text="Ada", start=0):
    return {
        "id": f"q{i}",
        "title": "t",
        "context": context,
        "question": question,
        "answers": {"text": [text], "answer_start": [start]},
    }


def test_blank_or_misplaced_training_examples_are_counted_and_dropped():
    import datasets

    from qaexp.data import check_examples

    rows = [
        _row(0),
        _row(1, question="   "),
        _row(2, context=""),
        _row(3, start=-13),  # a negative start that Python slicing would accept
        _row(4, text="", start=3),  # an empty answer "found" anywhere
        _row(5, start=40),  # past the end of the context
        _row(6),
    ]
    raw = datasets.DatasetDict({"train": _split(rows), "validation": _split([_row(9)])})
    cleaned, report = check_examples(raw)
    assert cleaned["train"]["id"] == ["q0", "q6"]
    assert report["train_blank_questions"] == 2 and report["train_misplaced_answers"] == 3


@pytest.mark.parametrize("field", ["question", "context"])
def test_blank_evaluation_questions_are_refused(field):
    import datasets

    from qaexp.data import check_examples

    raw = datasets.DatasetDict(
        {"train": _split([_row(0)]), "validation": _split([_row(1, **{field: " \n"})])}
    )
    with pytest.raises(QAExpError, match="empty or null question or context.*'q1'"):
        check_examples(raw)


def test_blank_question_to_the_pipeline_is_refused():
    from qaexp.data.checks import question_record

    with pytest.raises(QAExpError, match="empty 'question'"):
        question_record({"question": "  ", "context": "Ada wrote it."}, "question 0")


# --- damaged caches ---------------------------------------------------------------------------

CACHE_RUN = [*SMALL_RUN, "trainer.epochs=0", "model=minilm", "hydra.run.dir=run"]


def damage(file, how):
    data = file.read_bytes()
    if how == "garbled":
        middle = len(data) // 2
        file.write_bytes(
            data[:middle]
            + bytes(b ^ 0x5A for b in data[middle : middle + 256])
            + data[middle + 256 :]
        )
    elif how == "truncated":
        file.write_bytes(data[: len(data) // 2])
    else:
        file.write_bytes(b"")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["garbled", "truncated", "empty"])
def test_damaged_caches_are_rebuilt_to_the_same_numbers(tmp_path, how):
    cache = tmp_path / "cache"
    args = [*CACHE_RUN, f"data.cache_dir={cache}"]
    (tmp_path / "clean").mkdir()
    clean = run_qaexp(args, cwd=tmp_path / "clean")
    assert clean.returncode == 0, clean.stderr[-2000:]
    expected = read_jsonl(tmp_path / "clean" / "run" / "metrics.jsonl")
    files = sorted(cache.rglob("*.arrow"))
    assert any("cache-" in f.name for f in files) and any("generator" in f.name for f in files)
    for file in files:  # every cached Arrow file: the raw data and the windows
        damage(file, how)
    (tmp_path / "again").mkdir()
    again = run_qaexp(args, cwd=tmp_path / "again")
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Rebuilding it" in again.stderr
    got = read_jsonl(tmp_path / "again" / "run" / "metrics.jsonl")
    assert [(r["exact_match"], r["f1"]) for r in got] == [
        (r["exact_match"], r["f1"]) for r in expected
    ]
    assert json.loads((tmp_path / "again" / "run" / "predictions.json").read_text()) == json.loads(
        (tmp_path / "clean" / "run" / "predictions.json").read_text()
    )


# --- the error boundary -----------------------------------------------------------------------


def test_a_failed_write_names_the_path_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import os

    from qaexp.tracking import rundir

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir.os, "fsync", full)
    with pytest.raises(OSError) as err:
        rundir.write_json_atomic(tmp_path / "summary.json", {"a": 1})
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "summary.json")
    assert os.listdir(tmp_path) == []


def test_disk_full_is_one_line_naming_errno_and_path():
    from qaexp.__main__ import describe_failure

    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/summary.json")
        except OSError as inner:
            raise RuntimeError("saving failed") from inner
    except RuntimeError as err:
        line = describe_failure(err)
    assert "ENOSPC" in line and "/runs/x/summary.json" in line


def test_an_unexpected_error_is_one_paragraph_and_the_run_dir_is_marked_failed(tmp_path):
    (tmp_path / "not-a-folder").write_text("")  # the datasets cache cannot be made here
    args = [
        *SMALL_RUN,
        f"data.cache_dir={tmp_path / 'not-a-folder' / 'cache'}",
        "hydra.run.dir=run",
    ]
    result = run_qaexp(args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "not-a-folder" in result.stderr and "qaexp.log" in result.stderr
    assert "Traceback" in (tmp_path / "run" / "qaexp.log").read_text()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "failed"
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_predict_refuses_an_unwritable_output_before_answering(
    tmp_path, tiny_qa_checkpoint, caplog
):
    from qaexp.predict import main

    (tmp_path / "q.json").write_text(
        json.dumps([{"id": "a", "question": "Who?", "context": "Ada wrote it."}])
    )
    (tmp_path / "file").write_text("")
    args = [
        f"checkpoint={tiny_qa_checkpoint}",
        f"input={tmp_path / 'q.json'}",
        f"output={tmp_path / 'file' / 'out.json'}",
    ]
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    assert "cannot write there" in caplog.text and "Answering" not in caplog.text
