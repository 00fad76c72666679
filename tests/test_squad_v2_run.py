"""SQuAD v2.0 through a whole run: a tiny training run on synthetic data with unanswerable
questions writes every file and the v2.0 metrics per epoch; the checkpoint's threshold drives
the pipeline; the official v2.0 dev set loads with its counts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from qaexp.errors import QAExpError
from qaexp.evaluation import SQUAD_V2_KEYS
from qaexp.metrics import squad_v2_metrics
from tests.conftest import SQUAD_DIR, TINY_RUN, assert_run_dir_contract, read_jsonl, run_qaexp

SQUAD2_DEV = SQUAD_DIR.parent / "squad2" / "dev-v2.0.json"
V2_RUN = [*TINY_RUN, "optimizer.lr=1e-3", "data.synthetic.unanswerable_fraction=0.3"]


@pytest.fixture(scope="module")
def v2_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("v2")
    result = run_qaexp([*V2_RUN, "hydra.run.dir=run"], cwd=cwd)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "SQuAD v2.0" in result.stderr  # the per-epoch v2.0 log line
    return cwd / "run"


@pytest.fixture(scope="module")
def references() -> dict[str, list[str]]:
    """The run's evaluation questions and gold texts, regenerated from the same settings."""
    from omegaconf import OmegaConf

    from qaexp.data import load_raw_datasets
    from tests.conftest import compose

    cfg = OmegaConf.to_object(compose(V2_RUN))
    validation = load_raw_datasets(cfg.data, ("validation",))["validation"]
    return {r["id"]: r["answers"]["text"] for r in validation}


def test_run_writes_every_file_and_v2_metrics_per_epoch(v2_run, references):
    summary = assert_run_dir_contract(v2_run, epochs=[1, 2])
    records = read_jsonl(v2_run / "metrics.jsonl")
    assert {tuple(r) for r in records} == {tuple(records[0])}  # every line the same keys
    assert set(records[0]) >= set(SQUAD_V2_KEYS)
    no_answer = sum(not golds for golds in references.values())
    assert 0 < no_answer < len(references)
    predictions = json.loads((v2_run / "predictions.json").read_text())
    null_odds = json.loads((v2_run / "null_odds.json").read_text())
    assert set(null_odds) == set(predictions) == set(references)
    # The last epoch's files, scored as the official v2.0 script scores them, give its line.
    official = squad_v2_metrics(predictions, references, null_odds)
    last = records[-1]
    assert last["exact_match"] == last["exact"] == official["exact"]
    assert last["f1"] == official["f1"]
    assert last["NoAns_total"] == no_answer
    for key in SQUAD_V2_KEYS:
        assert last[key] == official.get(key), key
    best = max(records, key=lambda r: r["f1"])
    assert summary["squad_v2"]["best_f1"] == best["best_f1"]
    threshold = json.loads((v2_run / "checkpoint" / "null_threshold.json").read_text())
    assert threshold["null_score_diff_threshold"] == best["best_f1_thresh"]
    assert summary["null_score_diff_threshold"] == best["best_f1_thresh"]
    card = (v2_run / "checkpoint" / "README.md").read_text()
    assert "Unanswerable questions (SQuAD v2.0)" in card
    assert str(best["best_f1_thresh"]) in card


def test_comparison_shows_v2_columns(v2_run):
    from qaexp.compare import load_runs, table_rows

    header, rows = table_rows(load_runs([v2_run]))
    assert header[-4:] == ["HasAns F1", "NoAns EM", "v2 best F1", "null thresh"]
    best = max(read_jsonl(v2_run / "metrics.jsonl"), key=lambda r: r["f1"])
    assert rows[0][-2:] == [best["best_f1"], best["best_f1_thresh"]]


@pytest.fixture(scope="module")
def eval_examples(v2_run):
    from omegaconf import OmegaConf

    from qaexp.data import load_raw_datasets
    from tests.conftest import compose

    cfg = OmegaConf.to_object(compose(V2_RUN))
    return load_raw_datasets(cfg.data, ("validation",))["validation"]


def test_pipeline_answers_as_the_run_did(v2_run, eval_examples):
    """With the run's threshold (0.0) the pipeline gives predictions.json exactly, "" included."""
    import qaexp

    qa = qaexp.pipeline(v2_run / "checkpoint", device="cpu", max_length=128, stride=32)
    answers = qa(list(eval_examples), null_score_diff_threshold=0.0)
    predictions = json.loads((v2_run / "predictions.json").read_text())
    assert [a["answer"] for a in answers] == [predictions[i] for i in eval_examples["id"]]
    assert "" in predictions.values()


def test_pipeline_uses_the_recorded_threshold(v2_run, eval_examples):
    """By default "" wins exactly where the null odds exceed the checkpoint's threshold."""
    import qaexp

    recorded = json.loads((v2_run / "checkpoint" / "null_threshold.json").read_text())
    threshold = recorded["null_score_diff_threshold"]
    odds = json.loads((v2_run / "null_odds.json").read_text())
    qa = qaexp.pipeline(v2_run / "checkpoint", device="cpu", max_length=128, stride=32)
    answers = dict(zip(eval_examples["id"], qa(list(eval_examples)), strict=True))
    clear = [i for i in odds if abs(odds[i] - threshold) > 1e-3]  # float noise at the edge
    empty = [i for i in clear if odds[i] > threshold]
    assert empty, "the checkpoint judges no question unanswerable"
    for i in clear:
        assert (answers[i]["answer"] == "") == (i in empty), i
    unanswered = answers[empty[0]]
    assert (unanswered["start"], unanswered["end"]) == (0, 0) and 0 < unanswered["score"] <= 1
    off = qa(list(eval_examples), handle_impossible_answer=False)
    assert all(a["answer"] for a in off)


def test_no_answer_entry_ranking():
    from qaexp.answering import with_no_answer

    spans = [{"answer": "a", "score": 0.6, "start": 0, "end": 1}]
    spans.append({"answer": "b", "score": 0.4, "start": 2, "end": 3})
    null_wins = with_no_answer(spans, null_odds=1.0, threshold=0.0, top_k=3)
    assert null_wins[0]["answer"] == ""
    # p_null / p_best = e^1, and the three scores sum to one.
    assert null_wins[0]["score"] / null_wins[1]["score"] == pytest.approx(math.e)
    assert sum(a["score"] for a in null_wins) == pytest.approx(1.0)
    span_wins = with_no_answer(spans, null_odds=1.0, threshold=2.0, top_k=3)
    assert [a["answer"] for a in span_wins] == ["a", "", "b"]
    assert with_no_answer(spans, null_odds=-1.0, threshold=0.0, top_k=1)[0]["answer"] == "a"
    assert with_no_answer([], null_odds=math.inf, threshold=0.0, top_k=1)[0]["answer"] == ""


def test_v2_data_with_v1_settings_exits_2(tmp_path):
    result = run_qaexp(
        [*V2_RUN, "data.allow_unanswerable=false", "hydra.run.dir=run"], cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "data.allow_unanswerable=false" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def squad2_dev():
    if not SQUAD2_DEV.is_file():
        pytest.skip(f"SQuAD v2.0 dev not found at {SQUAD2_DEV}")
    from qaexp.data import load_squad_json

    return load_squad_json(str(SQUAD2_DEV), "data.validation_file")


def test_squad2_dev_counts(squad2_dev):
    import datasets

    from qaexp.config import DataConfig
    from qaexp.data import check_answers, count_unanswerable

    raw = datasets.DatasetDict({"validation": squad2_dev})
    assert len(squad2_dev) == 11873
    assert count_unanswerable(raw) == {"validation": 5945}
    assert check_answers(DataConfig(), raw) is True
    with pytest.raises(QAExpError, match="5945 of 11873 validation questions"):
        check_answers(DataConfig(allow_unanswerable=False), raw)


def test_split_script_splits_by_article(tmp_path, squad2_dev):
    import subprocess
    import sys

    from qaexp.data import load_squad_json
    from tests.conftest import REPO

    script = REPO / "benchmarks" / "squad2_split.py"
    subprocess.run([sys.executable, script, tmp_path, "--dev", SQUAD2_DEV], check=True)
    train = load_squad_json(str(tmp_path / "train-first25.json"), "data.train_file")
    evaluation = load_squad_json(str(tmp_path / "eval-last10.json"), "data.validation_file")
    assert len(train) + len(evaluation) == len(squad2_dev) == 11873
    assert not set(train["title"]) & set(evaluation["title"])
    assert 0 < sum(not a["text"] for a in evaluation["answers"]) < len(evaluation)


def test_predict_cli_uses_the_recorded_threshold(v2_run, eval_examples, tmp_path):
    import qaexp
    from qaexp.predict import main

    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "".join(
            json.dumps({"id": r["id"], "question": r["question"], "context": r["context"]}) + "\n"
            for r in eval_examples
        )
    )
    out = tmp_path / "answers.json"
    main([f"checkpoint={v2_run / 'checkpoint'}", f"input={questions}", f"output={out}"])
    written = json.loads(out.read_text())
    qa = qaexp.pipeline(v2_run / "checkpoint", device="cpu")
    expected = [a["answer"] for a in qa(list(eval_examples))]
    assert list(written.values()) == expected and "" in expected
    main(
        [
            f"checkpoint={v2_run / 'checkpoint'}",
            f"input={questions}",
            f"output={out}",
            "handle_impossible_answer=false",
        ]
    )
    assert all(json.loads(out.read_text()).values())
