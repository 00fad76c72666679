"""Bad input: one clear paragraph naming the key or file, a non-zero exit, and no run
directory left behind."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from qaexp.errors import QAExpError
from tests.conftest import TINY_RUN, compose, run_cli, run_qaexp


def settings(overrides: list[str]):
    return OmegaConf.to_object(compose(overrides))


@pytest.mark.parametrize(
    "override,key",
    [
        ("trainer.epochs=-1", "trainer.epochs=-1"),
        ("trainer.train_batch_size=0", "trainer.train_batch_size=0"),
        ("trainer.eval_batch_size=-8", "trainer.eval_batch_size=-8"),
        ("n_best=0", "n_best=0"),
        ("max_answer_length=0", "max_answer_length=0"),
        ("trainer.gradient_accumulation_steps=0", "trainer.gradient_accumulation_steps=0"),
        ("optimizer.lr=0", "optimizer.lr=0"),
        ("optimizer.warmup_ratio=1.5", "optimizer.warmup_ratio=1.5"),
        ("hardware.num_processes=-2", "hardware.num_processes=-2"),
        ("data.max_train_samples=0", "data.max_train_samples=0"),
    ],
)
def test_non_positive_settings(override, key):
    from qaexp.checks import validate_settings

    with pytest.raises(QAExpError, match=key.replace(".", r"\.")):
        validate_settings(settings(["model=tiny", "data=synthetic", override]))


def test_fp16_on_cpu():
    from qaexp.training.runtime import resolve_mixed_precision

    cfg = settings(["hardware=cpu", "hardware.mixed_precision=fp16"])
    with pytest.raises(QAExpError, match="mixed_precision=fp16"):
        resolve_mixed_precision(cfg.hardware, "cpu")


def test_gpu_without_cuda(monkeypatch):
    import torch

    from qaexp.training.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(QAExpError, match="hardware=gpu"):
        resolve_device(settings(["hardware=gpu"]).hardware)


def _raw(rows):
    import datasets

    from qaexp.data import SQUAD_FEATURES

    table = {k: [r[k] for r in rows] for k in ("id", "title", "context", "question", "answers")}
    return datasets.Dataset.from_dict(table, features=SQUAD_FEATURES)


def _row(i, answer_start=0, text="Ada", question="Who?"):
    return {
        "id": f"q{i}",
        "title": "t",
        "context": "Ada wrote it.",
        "question": question,
        "answers": {"text": [text], "answer_start": [answer_start]},
    }


def test_duplicate_ids_are_refused():
    import datasets

    from qaexp.data import check_examples

    raw = datasets.DatasetDict({"train": _raw([_row(0), _row(0)]), "validation": _raw([_row(1)])})
    with pytest.raises(QAExpError, match="duplicate question id.*'q0'"):
        check_examples(raw)


def test_empty_split_is_refused():
    import datasets

    from qaexp.data import check_examples

    raw = datasets.DatasetDict({"train": _raw([_row(0)]), "validation": _raw([_row(1)]).select([])})
    with pytest.raises(QAExpError, match="validation split has no examples"):
        check_examples(raw)


def test_misplaced_answers_are_left_out_of_training():
    import datasets

    from qaexp.data import check_examples

    rows = [
        _row(0),
        _row(1, answer_start=4),
        _row(2),
        {**_row(3), "answers": {"text": [], "answer_start": []}},
    ]
    raw = datasets.DatasetDict({"train": _raw(rows), "validation": _raw([_row(9)])})
    cleaned, report = check_examples(raw)
    assert cleaned["train"]["id"] == ["q0", "q2"]
    assert report["train_misplaced_answers"] == 1 and report["train_without_answer"] == 1


def test_stride_too_large_for_the_room_left(minilm_tokenizer):
    import datasets

    from qaexp.checks import validate_windows

    cfg = settings(["model=tiny", "max_length=32", "stride=30"])
    raw = datasets.DatasetDict(
        {
            "train": _raw([_row(0, question="Who wrote it then, and why?")]),
            "validation": _raw([_row(1)]),
        }
    )
    with pytest.raises(QAExpError, match=r"stride=30 must be smaller .* max_length=32") as err:
        validate_windows(cfg, minilm_tokenizer, raw)
    assert "Use stride=" in str(err.value)


def test_max_length_beyond_position_embeddings(minilm_tokenizer):
    import datasets

    from qaexp.checks import validate_windows

    cfg = settings(["model=tiny", "max_length=4096"])
    raw = datasets.DatasetDict({"train": _raw([_row(0)]), "validation": _raw([_row(1)])})
    with pytest.raises(QAExpError, match="max_length=4096 is longer than the model accepts"):
        validate_windows(cfg, minilm_tokenizer, raw)


@pytest.mark.parametrize(
    "content,expected",
    [
        ('{"data": [', "line 1, column"),
        ('{"version": "1.1"}', "is not official SQuAD JSON"),
        (
            '{"data": [{"title": "a", "paragraphs": [{"qas": []}]}]}',
            "data[0].paragraphs[0] has no field 'context'",
        ),
        (
            '{"data": [{"paragraphs": [{"context": "x", "qas": [{"id": "1", "answers": []}]}]}]}',
            "has no field 'question'",
        ),
    ],
)
def test_malformed_squad_json_names_the_place(tmp_path, content, expected):
    from qaexp.data import load_squad_json

    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(QAExpError, match="bad.json") as err:
        load_squad_json(str(path), "data.train_file", cache_dir=str(tmp_path / "cache"))
    assert expected in str(err.value)


@pytest.mark.parametrize(
    "args,message",
    [
        (
            [
                "data=squad_json",
                "data.train_file=/nope/train.json",
                "data.validation_file=/nope/dev.json",
            ],
            "data.train_file=/nope/train.json",
        ),
        (["stride=200"], "stride=200 must be smaller"),
        (["trainer.epochs=-1"], "trainer.epochs=-1"),
        (["--multirun", "seed=1,2", "--cfg", "job"], "--cfg and --multirun cannot be given"),
    ],
)
def test_cli_bad_input_exits_2_and_leaves_no_run_dir(tmp_path, args, message):
    result = run_cli([*TINY_RUN, *args], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    runs = list((tmp_path / "outputs").glob("runs/*/*")) if (tmp_path / "outputs").exists() else []
    assert runs == []


def test_offline_hub_fails_fast_with_the_options(tmp_path):
    # An endpoint that refuses connections stands for an unreachable Hub on any machine.
    result = run_qaexp(
        ["model=bert-base-cased", "data=synthetic", "hardware=cpu"],
        cwd=tmp_path,
        timeout=120,
        env={"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 2
    assert "model=minilm" in result.stderr and "data=squad_json" in result.stderr
    assert "Traceback" not in result.stderr
