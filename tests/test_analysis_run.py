"""Per-question answers through real tiny runs: a 2-job sweep writes answers.jsonl and
analysis.md in every run (their whole-set EM/F1 equal metrics.jsonl to the last digit), the
slice F1s reach TensorBoard, the sweep's comparison shows slices and the paired test, and
`python -m qaexp.analyze` reports one run or a pair, refusing bad input with one paragraph."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from qaexp.analysis import percent, read_answers
from tests.conftest import SMALL_RUN, read_jsonl, run_cli

SWEEP = [
    *SMALL_RUN,
    "trainer.epochs=2",
    "optimizer.lr=1e-3",
    "max_length=128",
    "stride=32,48",
    "logger=tensorboard",
    "hydra.sweep.dir=sweep",
]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("analysis")
    result = run_cli(["--multirun", *SWEEP], cwd=cwd)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return cwd / "sweep"


def test_answers_whole_set_equals_the_metrics_to_the_last_digit(sweep):
    for run in (sweep / "0", sweep / "1"):
        epochs = read_jsonl(run / "metrics.jsonl")
        summary = json.loads((run / "summary.json").read_text())
        best = next(e for e in epochs if e["epoch"] == summary["best_epoch"])
        answers = read_answers(run / "answers.jsonl")
        assert answers.epoch == best["epoch"] and len(answers) == summary["eval_examples"]
        assert percent(answers.exact) == best["exact_match"]
        assert percent(answers.f1) == best["f1"]
        last = run / "answers-last.jsonl"
        assert last.exists() == (best is not epochs[-1])
        if last.exists():
            assert percent(read_answers(last).f1) == epochs[-1]["f1"]
        report = json.loads((run / "analysis.json").read_text())
        assert report["slices"]["all"]["f1"] == best["f1"]
        assert report["slices"]["all"]["exact_match"] == best["exact_match"]
        assert "| answer position: first window |" in (run / "analysis.md").read_text()
        assert not list(run.glob(".*tmp"))


def test_each_answer_carries_the_pipelines_top_span_logit(sweep):
    """answers.jsonl's span_logit of every question is the logit of the n-best search's top
    span when the pipeline answers it from the run's checkpoint (the best epoch, as
    answers.jsonl holds): same windows, same answer, same logit up to float32 batching noise."""
    import datasets
    from omegaconf import OmegaConf

    import qaexp
    from qaexp.data import load_raw_datasets
    from qaexp.features import prepare_eval_features
    from qaexp.postprocess import postprocess_nbest
    from qaexp.tracking.rundir import checkpoint_epoch
    from tests.conftest import compose

    run = sweep / "0"
    answers = read_answers(run / "answers.jsonl")
    assert checkpoint_epoch(run / "checkpoint") == answers.epoch
    job = OmegaConf.load(run / ".hydra" / "overrides.yaml")
    cfg = OmegaConf.to_object(compose(list(job)))
    examples = load_raw_datasets(cfg.data, ("validation",))["validation"]
    assert list(examples["id"]) == answers.ids
    qa = qaexp.pipeline(
        run / "checkpoint", device="cpu", max_length=cfg.max_length, stride=cfg.stride
    )
    batch = examples.select_columns(["id", "question", "context"]).to_dict()
    features = datasets.Dataset.from_dict(
        prepare_eval_features(batch, qa.tokenizer, cfg.max_length, cfg.stride)
    )
    start, end = qa.window_logits(features, 16, cfg.max_length)
    nbest = postprocess_nbest(examples, features, start, end, cfg.n_best, cfg.max_answer_length)
    for row in answers.rows:
        top = nbest[row["id"]][0]
        assert row["prediction"] == top["text"], row["id"]
        assert row["span_logit"] == pytest.approx(top["logit"], rel=1e-5, abs=1e-5), row["id"]
    assert "## Confidence (span logit)" in (run / "analysis.md").read_text()


def test_slice_f1s_reach_tensorboard(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = sweep / "0"
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    tags = [tag for tag in events.Tags()["scalars"] if tag.startswith("eval/slice/")]
    assert "eval/slice/question_word/what" in tags and "eval/slice/windows/1" in tags
    last = (
        read_answers(run / "answers-last.jsonl") if (run / "answers-last.jsonl").exists() else None
    )
    answers = last or read_answers(run / "answers.jsonl")
    what = answers.slices["question word"] == "what"
    assert events.Scalars("eval/slice/question_word/what")[-1].value == pytest.approx(
        percent(answers.f1[what])
    )


def test_comparison_shows_slices_and_the_paired_test(sweep):
    markdown = (sweep / "comparison.md").read_text()
    assert "## F1 by slice" in markdown and "| question word: what" in markdown
    assert "## Against the best run, question by question" in markdown
    assert "EM flips" in markdown and "Paired bootstrap" in markdown
    # Every run is named with its setting, and the direction of each number is spelled out.
    assert re.search(
        r"\| F1 run [01] \(stride=(32|48)\) +\| F1 run [01] \(stride=(32|48)\)", markdown
    )
    line = re.search(
        r"- run (\d) \(stride=\d+\) vs run (\d) \(stride=\d+\): F1 \S+ \((.*?)\)", markdown
    )
    assert line and line[3] == f"run {line[1]} - run {line[2]}"
    assert f"right only in run {line[1]}" in markdown and f"right only in run {line[2]}" in markdown
    assert "add seed=1,2,3 to the sweep" in markdown and "Welch test above" not in markdown
    header = (sweep / "comparison.csv").read_text().splitlines()[0]
    assert "F1 windows: 1" in header


def test_analyze_one_run_and_a_pair(sweep, tmp_path):
    one = run_cli([str(sweep / "0"), "--out", str(tmp_path / "one")], tmp_path, "qaexp.analyze")
    assert one.returncode == 0, one.stderr
    assert "| all questions |" in one.stdout
    assert (tmp_path / "one" / "analysis.json").is_file()
    pair = run_cli([str(sweep / "0"), str(sweep / "1")], tmp_path, "qaexp.analyze")
    assert pair.returncode == 0, pair.stderr
    report = json.loads((tmp_path / "pair-analysis.json").read_text())
    a, b = (read_answers(sweep / name / "answers.jsonl") for name in ("0", "1"))
    assert report["f1_b"] - report["f1_a"] == pytest.approx(report["paired_f1"]["difference"])
    assert report["flips"]["wrong_to_right"] == int(((a.exact == 0) & (b.exact == 1)).sum())
    assert "## Paired test (B - A)" in pair.stdout


def copy_run(sweep: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(sweep / "0", target, ignore=shutil.ignore_patterns("checkpoint", "tensorboard"))
    return target


def damage_answers(run: Path) -> None:
    text = (run / "answers.jsonl").read_text()
    (run / "answers.jsonl").write_text(text[: len(text) // 2])


def other_dataset(run: Path) -> None:
    rows = read_jsonl(run / "answers.jsonl")
    lines = [json.dumps(dict(row, id=f"elsewhere-{row['id']}")) for row in rows]
    (run / "answers.jsonl").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda run: (run / "answers.jsonl").unlink(), "does not exist"),
        (damage_answers, "not an answers.jsonl row"),
        (lambda run: (run / "summary.json").unlink(), "still running"),
        (other_dataset, "different evaluation questions"),
    ],
)
def test_analyze_refuses_bad_input_with_one_paragraph(sweep, tmp_path, spoil, says):
    run = copy_run(sweep, tmp_path, "spoilt")
    spoil(run)
    out = tmp_path / "out"
    result = run_cli([str(sweep / "1"), str(run), "--out", str(out)], tmp_path, "qaexp.analyze")
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()  # nothing written


def test_old_runs_without_answers_still_compare(sweep, tmp_path):
    old = tmp_path / "old"
    for name in ("0", "1"):
        copy_run(sweep, old, name)
    (old / "1" / "answers.jsonl").unlink()
    shutil.copytree(sweep / "1" / ".hydra", old / "1" / ".hydra", dirs_exist_ok=True)
    result = run_cli([str(old)], tmp_path, "qaexp.compare")
    assert result.returncode == 0, result.stderr
    markdown = (old / "comparison.md").read_text()
    assert "Without per-question answers" in markdown and "trainer.epochs=0" in markdown


def test_comparison_says_why_a_run_on_other_questions_is_not_paired(sweep, tmp_path):
    mixed = tmp_path / "mixed"
    copy_run(sweep, mixed, "0")
    other = copy_run(sweep, mixed, "1")
    other_dataset(other)
    (other / ".hydra" / "overrides.yaml").write_text("- data.synthetic.seed=7\n")
    result = run_cli([str(mixed)], tmp_path, "qaexp.compare")
    assert result.returncode == 0, result.stderr
    markdown = (mixed / "comparison.md").read_text()
    assert "not paired" in markdown and "different evaluation questions" in markdown


V2_RUN = [
    *SMALL_RUN,
    "optimizer.lr=1e-3",
    "data.synthetic.unanswerable_fraction=0.3",
    "data.synthetic.train_size=16",
    "max_length=128",
    "stride=32",
    "hydra.run.dir=v2",
]


def test_squad_v2_answers_equal_the_v2_metrics_to_the_last_digit(tmp_path):
    result = run_cli(V2_RUN, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    run = tmp_path / "v2"
    (epoch,) = read_jsonl(run / "metrics.jsonl")
    answers = read_answers(run / "answers.jsonl")
    assert percent(answers.exact) == epoch["exact_match"] == epoch["exact"]
    assert percent(answers.f1) == epoch["f1"]
    unanswerable = answers.slices["answerable"] == "unanswerable"
    assert percent(answers.f1[unanswerable]) == epoch["NoAns_f1"]
    assert percent(answers.f1[~unanswerable]) == epoch["HasAns_f1"]
    assert all("null_odds" in row for row in answers.rows)
    assert set(answers.slices["answer position"][unanswerable]) == {"none"}
