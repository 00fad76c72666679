"""qaexp.compare on hand-built run folders: ranking, differing overrides, failed runs, the
three output files, the command line and the Hydra callback."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from qaexp.compare import SweepComparison, load_runs, main
from tests.conftest import REPO, run_qaexp

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(
    folder: Path, overrides: list[str], f1: list[float], status: str | None = "completed"
) -> Path:
    """A run folder as qaexp writes it: one metrics.jsonl line per F1 value (EM = F1 - 10,
    10 s of training at 50 windows/s per epoch), summary.json unless status is None."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    epochs = [
        {
            "epoch": i + 1,
            "step": 10 * (i + 1),
            "exact_match": v - 10,
            "f1": v,
            "train_seconds": 10.0,
            "train_samples_per_second": 50.0,
        }
        for i, v in enumerate(f1)
    ]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    if status is not None:
        (folder / "summary.json").write_text(json.dumps({"status": status}))
    return folder


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A 2x2 grid where job 2 is best, plus job 4 that failed and job 5 that wrote no summary."""
    root = tmp_path / "multirun"
    grid = [
        ("64", "256", [70.0, 75.0]),
        ("128", "256", [60.0, 65.0]),
        ("64", "384", [80.0, 78.0]),
        ("128", "384", [55.0, 58.0]),
    ]
    for i, (stride, length, f1) in enumerate(grid):
        make_run(root / str(i), ["model=tiny", f"stride={stride}", f"max_length={length}"], f1)
    make_run(root / "4", ["model=tiny", "stride=64", "max_length=512"], [90.0], status="failed")
    make_run(root / "5", ["model=tiny", "stride=128", "max_length=512"], [], status=None)
    (root / "multirun.yaml").write_text("hydra: {}\n")  # sweep-level files are not runs
    return root


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_table_ranks_completed_runs_by_best_f1_then_failed_runs(sweep, capsys):
    assert main([str(sweep)]) == 0
    rows = read_csv(sweep / "comparison.csv")
    assert [r["run"] for r in rows] == ["2", "0", "1", "3", "4", "5"]
    assert [r["status"] for r in rows] == ["completed"] * 4 + ["failed", "failed"]
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("| ")]
    assert [line.split("|")[1].strip() for line in lines[1:]] == ["2", "0", "1", "3", "4", "5"]


def test_only_the_overrides_that_differ_are_columns(sweep):
    main([str(sweep)])
    header = list(read_csv(sweep / "comparison.csv")[0])
    assert header[:3] == ["run", "max_length", "stride"]  # model=tiny is the same everywhere
    assert "model" not in header


def test_best_final_epoch_time_and_throughput(sweep):
    main([str(sweep)])
    row = next(r for r in read_csv(sweep / "comparison.csv") if r["run"] == "2")
    assert (float(row["best F1"]), float(row["best EM"]), row["best epoch"]) == (80.0, 70.0, "1")
    assert (float(row["final F1"]), float(row["final EM"])) == (78.0, 68.0)
    assert float(row["train s"]) == 20.0 and float(row["windows/s"]) == 50.0
    no_summary = next(r for r in read_csv(sweep / "comparison.csv") if r["run"] == "5")
    assert no_summary["best F1"] == "" and no_summary["status"] == "failed"


def test_throughput_weights_epochs_by_their_time(tmp_path):
    run = make_run(tmp_path / "r", [], [1.0, 2.0])
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    lines[1].update(train_seconds=30.0, train_samples_per_second=10.0)
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    (result,) = load_runs([run])
    assert result.windows_per_second == pytest.approx((10 * 50 + 30 * 10) / 40)


def test_a_truncated_metrics_file_does_not_stop_the_comparison(sweep, caplog):
    with open(sweep / "3" / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 3, "f1"')  # the job was killed while appending
    assert main([str(sweep)]) == 0
    row = next(r for r in read_csv(sweep / "comparison.csv") if r["run"] == "3")
    assert row["best F1"] == "" and "metrics.jsonl: unreadable" in caplog.text


def test_markdown_and_png_are_written(sweep):
    main([str(sweep)])
    markdown = (sweep / "comparison.md").read_text()
    assert "6 runs" in markdown and "2 run(s) did not complete" in markdown
    assert "| 2   | 384        | 64     | completed | 80.00" in markdown
    png = (sweep / "comparison.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 10_000


def test_several_run_folders_and_out(tmp_path):
    a = make_run(tmp_path / "runs" / "a", ["optimizer.lr=3e-5"], [40.0])
    b = make_run(tmp_path / "runs" / "b", ["optimizer.lr=1e-4"], [50.0])
    assert main([str(a), str(b), "--out", str(tmp_path / "report")]) == 0
    rows = read_csv(tmp_path / "report" / "comparison.csv")
    assert [(r["run"], r["optimizer.lr"]) for r in rows] == [(str(b), "1e-4"), (str(a), "3e-5")]
    assert (tmp_path / "report" / "comparison.png").is_file()


def test_many_runs_and_long_sampled_values_stay_readable(tmp_path):
    rates = [1e-5 * (i + 1.123456789) for i in range(14)]  # as an Optuna search samples them
    for i, lr in enumerate(rates):
        make_run(tmp_path / str(i), [f"optimizer.lr={lr}"], [float(i)])
    assert main([str(tmp_path)]) == 0
    markdown = (tmp_path / "comparison.md").read_text()
    assert f"{rates[-1]:.4g}" in markdown and str(rates[-1]) not in markdown
    assert str(rates[-1]) in (tmp_path / "comparison.csv").read_text()  # the CSV keeps all
    assert (tmp_path / "comparison.png").read_bytes()[:8] == PNG_MAGIC


def test_missing_folder_and_folder_without_runs_fail_clearly(tmp_path, caplog):
    assert main([str(tmp_path / "nope")]) == 2
    assert "nope: no such folder" in caplog.text
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "No runs found in" in caplog.text and "metrics.jsonl" in caplog.text
    assert not (tmp_path / "empty" / "comparison.csv").exists()


def test_command_line_entry_point(sweep):
    result = run_qaexp([str(sweep)], cwd=sweep.parent, timeout=120, module="qaexp.compare")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[2].startswith("| 2 ")
    assert "Wrote comparison.csv" in result.stderr


def test_callback_writes_into_the_sweep_dir_and_never_fails_the_sweep(sweep, tmp_path):
    SweepComparison().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert len(read_csv(sweep / "comparison.csv")) == 6
    empty = tmp_path / "empty_sweep"
    empty.mkdir()
    SweepComparison().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(empty)}}}))
    assert not (empty / "comparison.csv").exists()


# --- seeds as replicates ---------------------------------------------------------------


@pytest.fixture
def seed_sweep(tmp_path) -> Path:
    """stride=64 x 3 seeds (F1 about 70, sd 1) and stride=128 x 3 seeds (about 60), plus a
    stride=32 setting with one seed done and one failed."""
    root = tmp_path / "seeds"
    f1 = {"64": [69.0, 70.0, 71.0], "128": [59.0, 61.0, 60.0]}
    i = 0
    for stride, values in f1.items():
        for seed, best in zip((1, 2, 3), values, strict=True):
            make_run(root / str(i), [f"seed={seed}", f"stride={stride}"], [best - 5, best])
            i += 1
    make_run(root / str(i), ["seed=1", "stride=32"], [50.0])
    make_run(root / str(i + 1), ["seed=2", "stride=32"], [], status="failed")
    return root


def test_seeds_of_one_setting_are_one_row_with_mean_sd_and_n(seed_sweep):
    assert main([str(seed_sweep)]) == 0
    rows = read_csv(seed_sweep / "comparison.csv")
    assert [(r["runs"], r["stride"], r["n"]) for r in rows] == [
        ("0,1,2", "64", "3"),
        ("3,4,5", "128", "3"),
        ("6,7", "32", "1"),
    ]
    assert "seed" not in rows[0]
    assert float(rows[0]["best F1"]) == pytest.approx(70.0)
    assert float(rows[0]["best F1 sd"]) == pytest.approx(1.0)
    assert float(rows[1]["final EM"]) == pytest.approx(50.0)
    assert rows[2]["status"] == "1 completed, 1 failed" and rows[2]["best F1 sd"] == ""
    markdown = (seed_sweep / "comparison.md").read_text()
    assert "70.00 ± 1.00" in markdown and "60.00 ± 1.00" in markdown


def test_differences_are_tested_against_the_seed_noise(seed_sweep, tmp_path):
    from scipy import stats

    main([str(seed_sweep)])
    rows = read_csv(seed_sweep / "comparison.csv")
    expected = stats.ttest_ind([59.0, 61.0, 60.0], [69.0, 70.0, 71.0], equal_var=False).pvalue
    assert rows[0]["vs top"] == "top"
    assert float(rows[1]["p vs top"]) == pytest.approx(expected)
    assert float(rows[1]["best F1 difference vs top"]) == pytest.approx(-10.0)
    assert rows[1]["vs top"].endswith("beyond seed noise")
    assert rows[2]["vs top"] == "no noise estimate (n < 2)"
    markdown = (seed_sweep / "comparison.md").read_text()
    assert "stride=64 vs stride=128: +10.00 F1" in markdown
    assert "(the Welch test above does)" in markdown  # the paired section points to it
    # Overlapping seeds: the same small difference is within the noise.
    close = tmp_path / "close"
    for i, (stride, best) in enumerate(
        [("64", 70.0), ("64", 72.0), ("64", 68.0), ("128", 69.0), ("128", 71.5), ("128", 67.0)]
    ):
        make_run(close / str(i), [f"seed={i % 3}", f"stride={stride}"], [best])
    main([str(close)])
    assert read_csv(close / "comparison.csv")[1]["vs top"].endswith("within seed noise")


def test_a_single_seed_sweep_says_it_has_no_noise_estimate(sweep):
    main([str(sweep)])
    markdown = (sweep / "comparison.md").read_text()
    assert "One seed per setting: these differences have no noise estimate" in markdown


def test_seed_plot_shows_the_spread(seed_sweep):
    main([str(seed_sweep)])
    png = (seed_sweep / "comparison.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 10_000


def test_welch_p_without_scipy_matches_scipy():
    from scipy import stats

    from qaexp.analysis.seeds import _t_two_sided_p

    for t, df in [(0.1, 2.0), (2.5, 3.3), (10.0, 1.5), (1.96, 1000.0), (4.0, 7.7), (0.0, 4.0)]:
        assert _t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(t, df), abs=1e-9)


def test_the_plot_module_does_not_import_the_comparison_module():
    """plot sits below compare: importing it must not import qaexp.analysis.compare."""
    code = "import sys, qaexp.analysis.plot; print('qaexp.analysis.compare' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert result.stdout.strip() == "False", result.stderr


def test_plot_is_skipped_when_no_run_has_metrics(tmp_path, caplog):
    for i in range(3):
        make_run(tmp_path / "sw" / str(i), [f"stride={64 * (i + 1)}"], [], status="failed")
    with caplog.at_level("INFO"):
        assert main([str(tmp_path / "sw")]) == 0
    assert not (tmp_path / "sw" / "comparison.png").exists()
    assert "No comparison plot" in caplog.text


def test_plot_labels_say_what_differs():
    from qaexp.analysis.plot import run_label
    from qaexp.analysis.runs import RunResult

    run = RunResult("3", {"stride": "64", "seed": "1"}, "completed", [])
    assert run_label(run, ["stride"]) == "3: stride=64"
    twin = RunResult("output", {}, "completed", [])
    assert run_label(twin, [], position=2) == "output (#2)"


# --- what each run's files say: running, damaged summaries, settings as parsed ----------------


def with_results(run: Path, epochs: int, checkpoint_epoch: int | None) -> Path:
    """Give a make_run folder its composed config (trainer.epochs) and a checkpoint."""
    config = {"trainer": {"epochs": epochs, "save_checkpoint": "best"}, "seed": 0}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    if checkpoint_epoch is not None:
        (run / "checkpoint").mkdir()
        (run / "checkpoint" / "qaexp_epoch.json").write_text(json.dumps({"epoch": 1}))
    return run


def test_a_complete_run_with_a_damaged_summary_is_named_and_still_ranked(sweep, caplog):
    damaged = with_results(sweep / "2", epochs=2, checkpoint_epoch=1)
    (damaged / "summary.json").write_text('{"status": "compl')  # torn by a bad disk
    assert main([str(sweep)]) == 0
    rows = read_csv(sweep / "comparison.csv")
    assert [(r["run"], r["status"]) for r in rows][:2] == [
        ("2", "summary damaged"),
        ("0", "completed"),
    ]
    assert float(rows[0]["best F1"]) == 80.0  # ranked on its complete metrics
    message = f"{damaged / 'summary.json'} cannot be read"
    assert message in caplog.text and "results are complete" in caplog.text
    assert "restore the file from a backup" in caplog.text
    markdown = (sweep / "comparison.md").read_text()
    assert "## Damaged run files" in markdown and message in markdown
    assert "2 run(s) did not complete: 4 (failed), 5 (failed)" in markdown


def test_an_incomplete_run_with_a_damaged_summary_is_not_counted_complete(sweep, caplog):
    from qaexp.analysis.compare import failed_jobs

    damaged = with_results(sweep / "1", epochs=3, checkpoint_epoch=1)  # 2 of 3 epochs
    (damaged / "state").mkdir()
    (damaged / "summary.json").write_bytes(b"\x00" * 40)
    [run] = load_runs([damaged])
    assert run.status == "summary damaged" and not run.completed
    assert "2 of 3 epoch(s)" in run.note and "trainer.resume=true" in run.note
    assert "#1 " in " ".join(failed_jobs(sweep))


@pytest.mark.processes
def test_a_running_job_is_running_until_its_process_ends(sweep):
    """A job is running while a live process holds its run-folder lock (the lock is a POSIX
    lock: held by another process, as a job is)."""
    with_results(sweep / "5", epochs=2, checkpoint_epoch=None)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from qaexp.tracking.lock import run_folder_lock\n"
            f"with run_folder_lock({str(sweep / '5')!r}):\n"
            "    print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        [run] = load_runs([sweep / "5"])
        assert run.status == "running" and not run.completed
        main([str(sweep)])
        assert (
            "2 run(s) did not complete: 4 (failed), 5 (running)"
            in (sweep / "comparison.md").read_text()
        )
    finally:
        holder.communicate("", timeout=60)
    [run] = load_runs([sweep / "5"])
    assert run.status == "failed"  # stopped without a summary: killed


@pytest.mark.slow  # a real job in a subprocess (torch's import dominates)
@pytest.mark.processes
def test_a_real_job_is_running_while_it_trains(tmp_path):
    import time

    from tests.conftest import SMALL_RUN, start_qaexp

    job = start_qaexp([*SMALL_RUN, "hydra.run.dir=run"], cwd=tmp_path)
    seen = []
    try:
        deadline = time.monotonic() + 120
        while job.poll() is None and "running" not in seen and time.monotonic() < deadline:
            if (tmp_path / "run" / ".hydra" / "overrides.yaml").is_file():
                seen += [run.status for run in load_runs([tmp_path / "run"])]
            time.sleep(0.05)
    finally:
        _, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-2000:]
    assert "running" in seen and "failed" not in seen[seen.index("running") :]
    [run] = load_runs([tmp_path / "run"])
    assert run.status == "completed"


def test_values_are_compared_as_hydra_parses_them(tmp_path):
    spellings = [
        ["trainer.resume=true", "optimizer.lr=1e-4", "data.num_proc=1"],
        ["trainer.resume=True", "optimizer.lr=0.0001", "data.num_proc=1.0"],
    ]
    root = tmp_path / "sweep"
    for i, seed in enumerate((1, 2, 3)):
        for j, spelled in enumerate(spellings):
            make_run(root / str(2 * i + j), [*spelled, f"seed={seed}"], [60.0 + i + j])
    make_run(root / "6", ["trainer.resume=false", "optimizer.lr=1e-4", "seed=1"], [50.0])
    make_run(root / "7", ["trainer.resume=false", "optimizer.lr=1e-4", "seed=2"], [52.0])
    assert main([str(root)]) == 0
    rows = read_csv(root / "comparison.csv")
    assert [(r["runs"], r["n"]) for r in rows] == [("0,1,2,3,4,5", "6"), ("6,7", "2")]
    assert "optimizer.lr" not in rows[0]  # 1e-4 and 0.0001 are one value


def test_typed_config_values_decide_what_differs(tmp_path):
    """`optimizer.lr=1` and `optimizer.lr=1.0` both ran with lr 1.0 (the config is typed)."""
    runs = []
    for name, text in (("a", "1"), ("b", "1.0"), ("c", "2")):
        run = make_run(tmp_path / name, [f"optimizer.lr={text}"], [50.0])
        value = float(text)
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimizer": {"lr": value}}))
        runs.append(run)
    loaded = load_runs(runs)
    assert loaded[0].settings == loaded[1].settings != loaded[2].settings
