"""End to end: real runs of `python -m qaexp` on CPU (in the test process: `run_cli`),
checked through the run directory.

Every run-directory check runs for both training engines (trainer.engine=accelerate and hf);
evaluate-only and `python -m qaexp.predict` are checked against the checkpoints they write.
"""

from __future__ import annotations

import json

import pytest

from qaexp.metrics import squad_metrics
from tests.conftest import TINY_RUN, assert_run_dir_contract, read_jsonl, run_cli

ENGINES = ["accelerate", "hf"]
# A learning rate at which the tiny model learns within two epochs, so epochs differ and
# evaluate-only has a particular F1 to reproduce.
TINY_TRAINING = [*TINY_RUN, "optimizer.lr=1e-3"]


def cached_runs(tmp_path_factory, args_for) -> callable:
    """engine -> (run dir, CompletedProcess) of `python -m qaexp args_for(engine)`, each run
    made once, when first asked for."""
    runs = {}

    def run(engine: str):
        if engine not in runs:
            cwd = tmp_path_factory.mktemp(engine)
            result = run_cli([*args_for(engine), "hydra.run.dir=run"], cwd=cwd)
            assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
            runs[engine] = (cwd / "run", result)
        return runs[engine]

    return run


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory):
    """Tiny training runs, by engine."""
    return cached_runs(
        tmp_path_factory, lambda engine: [*TINY_TRAINING, f"trainer.engine={engine}"]
    )


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory, engine_runs):
    """Evaluate-only runs of each engine's checkpoint on the same eval data, as a user checks
    a QA checkpoint: the default model group with model.name_or_path=PATH, trainer.epochs=0."""
    return cached_runs(
        tmp_path_factory,
        lambda engine: [
            *TINY_RUN,
            "model=bert-base-cased",  # the default model group, pointed at the checkpoint
            f"model.name_or_path={engine_runs(engine)[0] / 'checkpoint'}",
            "trainer.epochs=0",
        ],
    )


@pytest.fixture(scope="module", params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def tiny_run(engine, engine_runs):
    return engine_runs(engine)


def tiny_eval_examples():
    """The validation examples of TINY_RUN (synthetic, 40 examples)."""
    from qaexp.config import DataConfig, DataSource, SyntheticConfig
    from qaexp.data import load_raw_datasets

    data = DataConfig(
        source=DataSource.synthetic, synthetic=SyntheticConfig(train_size=120, eval_size=40)
    )
    return load_raw_datasets(data, ("validation",))["validation"]


def test_run_dir_contract(tiny_run):
    run_dir, _ = tiny_run
    summary = assert_run_dir_contract(run_dir, epochs=[1, 2])
    assert summary["eval_examples"] == 40 and summary["train_examples"] == 120
    assert summary["train_windows"] >= 120
    assert summary["config"]["max_length"] == 128  # the resolved config as run
    assert summary["num_processes"] == 1
    assert (run_dir / "checkpoint" / "README.md").is_file()  # the model card
    assert not (run_dir / "hf_trainer").exists()  # the Trainer engine leaves nothing else


def test_predictions_score_to_the_logged_metrics(tiny_run):
    run_dir, _ = tiny_run
    predictions = json.loads((run_dir / "predictions.json").read_text())
    references = {r["id"]: r["answers"]["text"] for r in tiny_eval_examples()}
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


def test_both_engines_train_the_same_way(engine_runs):
    """Same windows, same optimizer steps per epoch, both scored by the same evaluation. Their
    F1 is not compared: on a tiny random model two loops' different sampling orders move it
    by several points (README, "Training engines", has numbers from a real model)."""
    summaries = {e: json.loads((engine_runs(e)[0] / "summary.json").read_text()) for e in ENGINES}
    epochs = {e: read_jsonl(engine_runs(e)[0] / "metrics.jsonl") for e in ENGINES}
    counts = ("train_examples", "train_windows", "eval_examples", "eval_windows")
    assert {k: summaries["hf"][k] for k in counts} == {
        k: summaries["accelerate"][k] for k in counts
    }
    assert [e["step"] for e in epochs["hf"]] == [e["step"] for e in epochs["accelerate"]]
    assert summaries["hf"]["config"]["trainer"]["engine"] == "hf"
    for engine in ENGINES:
        losses = [e["train_loss"] for e in epochs[engine]]
        assert losses[-1] < losses[0]  # both learn at this learning rate


def test_evaluate_only_reproduces_the_best_epoch(engine, tiny_run, evaluations):
    run_dir, _ = tiny_run
    evaluated, _ = evaluations(engine)
    trained = json.loads((run_dir / "summary.json").read_text())
    [epoch] = read_jsonl(evaluated / "metrics.jsonl")
    assert (epoch["epoch"], epoch["step"], epoch["train_loss"]) == (0, 0, None)
    assert epoch["f1"] == pytest.approx(trained["best_f1"], abs=1e-9)
    assert epoch["exact_match"] == pytest.approx(trained["best_exact_match"], abs=1e-9)
    summary = json.loads((evaluated / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["best_epoch"] == 0
    assert (summary["train_examples"], summary["train_windows"]) == (0, 0)  # never loaded
    assert summary["eval_windows"] == trained["eval_windows"]
    assert not (evaluated / "checkpoint").exists()  # no second copy of the loaded weights
    log = (evaluated / "qaexp.log").read_text()
    assert "without training" in log
    assert "evaluation: EM" in log and "loss nan" not in log and "windows/s" not in log
    assert "freshly initialised" not in log  # the checkpoint's trained QA head was loaded


def test_predict_agrees_with_evaluation(engine_runs, evaluations, tmp_path):
    """`python -m qaexp.predict` on the eval questions gives the answers evaluation gave."""
    checkpoint = engine_runs("accelerate")[0] / "checkpoint"
    evaluated, _ = evaluations("accelerate")
    questions = tmp_path / "eval.jsonl"
    questions.write_text(
        "".join(
            json.dumps({k: r[k] for k in ("id", "question", "context")}) + "\n"
            for r in tiny_eval_examples()
        )
    )
    result = run_cli(
        [
            f"checkpoint={checkpoint}",
            f"input={questions}",
            "max_length=128",
            "stride=32",
            "top_k=3",
            "device=cpu",
        ],
        cwd=tmp_path,
        module="qaexp.predict",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = json.loads((tmp_path / "eval.predictions.json").read_text())
    assert predictions == json.loads((evaluated / "predictions.json").read_text())
    nbest = json.loads((tmp_path / "eval.nbest.json").read_text())
    assert {qid: ranked[0]["answer"] for qid, ranked in nbest.items() if ranked} == {
        qid: text for qid, text in predictions.items() if text
    }


@pytest.mark.slow
def test_minilm_learns_the_synthetic_task(tmp_path):
    """The trained model answers far better than the same model before training."""
    common = [
        "model=minilm",
        "data=synthetic",
        "hardware=cpu",
        "data.synthetic.train_size=500",
        "data.synthetic.eval_size=80",
        "data.synthetic.long_context_fraction=0",
        "max_length=192",
        "stride=64",
        "optimizer.lr=1e-4",
        "trainer.train_batch_size=16",
        "logger=none",
    ]
    before = run_cli([*common, "trainer.epochs=0", "hydra.run.dir=before"], cwd=tmp_path)
    assert before.returncode == 0, before.stderr[-3000:]
    after = run_cli([*common, "trainer.epochs=2", "hydra.run.dir=after"], cwd=tmp_path)
    assert after.returncode == 0, after.stderr[-3000:]
    untrained = read_jsonl(tmp_path / "before" / "metrics.jsonl")
    trained = read_jsonl(tmp_path / "after" / "metrics.jsonl")
    assert [e["epoch"] for e in untrained] == [0]
    assert untrained[0]["exact_match"] < 5
    # Measured on this CPU: untrained EM 0.0 / F1 5.1, after one epoch EM 7.5 / F1 15.6.
    best = max(trained, key=lambda e: e["f1"])
    assert best["exact_match"] >= untrained[0]["exact_match"] + 5
    assert best["f1"] >= untrained[0]["f1"] + 8
    assert trained[-1]["train_loss"] < 4.5  # an untrained head starts near ln(192) = 5.3
