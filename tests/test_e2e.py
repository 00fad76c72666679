"""End to end: real runs of `python -m qaexp` on CPU, checked through the run directory."""

from __future__ import annotations

import json

import pytest

from qaexp.metrics import squad_metrics
from tests.conftest import TINY_RUN, assert_run_dir_contract, read_jsonl, run_qaexp


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("tiny")
    result = run_qaexp([*TINY_RUN, "hydra.run.dir=run"], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "run", result


def test_run_dir_contract(tiny_run):
    run_dir, _ = tiny_run
    summary = assert_run_dir_contract(run_dir, epochs=[1, 2])
    assert summary["eval_examples"] == 40 and summary["train_examples"] == 120
    assert summary["train_features"] >= 120
    assert summary["config"]["max_length"] == 128  # the resolved config as run
    assert summary["num_processes"] == 1


def test_predictions_score_to_the_logged_metrics(tiny_run):
    from qaexp.config import DataConfig, DataSource, SyntheticConfig
    from qaexp.data import load_raw_datasets

    run_dir, _ = tiny_run
    predictions = json.loads((run_dir / "predictions.json").read_text())
    raw = load_raw_datasets(
        DataConfig(
            source=DataSource.synthetic, synthetic=SyntheticConfig(train_size=120, eval_size=40)
        )
    )
    references = {r["id"]: r["answers"]["text"] for r in raw["validation"]}
    assert predictions.keys() == references.keys()
    final = read_jsonl(run_dir / "metrics.jsonl")[-1]
    scores = squad_metrics(predictions, references)
    assert scores["exact_match"] == pytest.approx(final["exact_match"])
    assert scores["f1"] == pytest.approx(final["f1"])


def test_checkpoint_is_a_plain_transformers_folder(tiny_run):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    run_dir, _ = tiny_run
    model = AutoModelForQuestionAnswering.from_pretrained(run_dir / "checkpoint")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "checkpoint")
    assert model.config.hidden_size == 64
    out = model(**tokenizer("Who?", "Ada did.", return_tensors="pt"))
    assert out.start_logits.shape[-1] == out.end_logits.shape[-1]


def test_log_reports_each_epoch(tiny_run):
    run_dir, _result = tiny_run
    log = (run_dir / "qaexp.log").read_text()
    assert "epoch 1:" in log and "epoch 2:" in log and "F1" in log


@pytest.mark.slow
def test_minilm_learns_the_synthetic_task(tmp_path):
    """The trained model answers far better than the same model before training."""
    common = [
        "model=minilm", "data=synthetic", "hardware=cpu", "data.synthetic.train_size=500",
        "data.synthetic.eval_size=80", "data.synthetic.long_context_fraction=0",
        "max_length=192", "stride=64", "optimizer.lr=1e-4", "trainer.train_batch_size=16",
        "logger=none",
    ]  # fmt: skip
    before = run_qaexp([*common, "trainer.epochs=0", "hydra.run.dir=before"], cwd=tmp_path)
    assert before.returncode == 0, before.stderr[-3000:]
    after = run_qaexp([*common, "trainer.epochs=2", "hydra.run.dir=after"], cwd=tmp_path)
    assert after.returncode == 0, after.stderr[-3000:]
    untrained = read_jsonl(tmp_path / "before" / "metrics.jsonl")
    trained = read_jsonl(tmp_path / "after" / "metrics.jsonl")
    assert [e["epoch"] for e in untrained] == [0]
    assert untrained[0]["exact_match"] < 15
    assert trained[-1]["exact_match"] > untrained[0]["exact_match"] + 30
