"""Tracking: wandb mode choice (never a prompt), dashboard labels, and real runs read back
from the files wandb and TensorBoard wrote: a 2x2 --multirun, a failing job, an Optuna sweep."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from omegaconf import DictConfig, OmegaConf

from qaexp.__main__ import dir_label, run_labels
from qaexp.config import LoggerMode
from qaexp.errors import QAExpError
from qaexp.tracking import RunLabels, epoch_metrics, make_trackers, resolve_labels
from qaexp.tracking.wandb_tracker import resolve_mode
from tests.conftest import (
    SMALL_RUN,
    compose,
    read_jsonl,
    run_cli,
    small_config,
)
from tests.wandb_records import read_offline_run

OFFLINE_WANDB = ["logger=wandb", "logger.mode=offline", "trainer.log_every_n_steps=1"]
NO_CHECKPOINT = "trainer.save_checkpoint=none"  # sweeps here need metrics, not weights


@pytest.fixture
def no_wandb_credentials(monkeypatch, tmp_path):
    """An environment where wandb finds no API key: no variables, an empty netrc and home."""
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def offline_run_dirs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*"))


# --- mode: auto is online only with credentials, and never prompts ----------------------


def test_auto_is_offline_without_credentials(no_wandb_credentials):
    assert resolve_mode(LoggerMode.auto) == "offline"


def test_auto_is_online_with_an_api_key(no_wandb_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(LoggerMode.auto) == "online"


def test_auto_finds_netrc_credentials(no_wandb_credentials):
    from urllib.parse import urlparse

    from wandb.sdk import wandb_setup

    host = urlparse(wandb_setup.singleton().settings.base_url).hostname
    (no_wandb_credentials / "netrc").write_text(
        f"machine {host}\n  login user\n  password {'k' * 40}\n"
    )
    assert resolve_mode(LoggerMode.auto) == "online"


def test_wandb_mode_variable_wins_over_auto(no_wandb_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(LoggerMode.auto) == "disabled"


def test_online_without_credentials_fails_instead_of_prompting(no_wandb_credentials):
    with pytest.raises(QAExpError, match="logger.mode=online") as err:
        resolve_mode(LoggerMode.online)
    assert "wandb login" in str(err.value) and "logger.mode=offline" in str(err.value)


def test_disabled_starts_no_tracker(tmp_path):
    cfg = OmegaConf.to_object(compose(["logger=wandb", "logger.mode=disabled"]))
    assert make_trackers(cfg, tmp_path, {}, is_main=True) == []
    assert not (tmp_path / "wandb").exists()


def test_wandb_is_the_default_logger():
    cfg = OmegaConf.to_object(compose([]))
    assert (cfg.logger.name, cfg.logger.project, cfg.logger.mode) == ("wandb", "qaexp", "auto")
    assert cfg.logger.group is None and cfg.logger.run_name is None


def test_only_the_main_process_tracks(tmp_path):
    cfg = OmegaConf.to_object(compose(["logger=tensorboard"]))
    assert make_trackers(cfg, tmp_path, {}, is_main=False) == []


def test_unknown_logger_names_the_choices():
    """logger.name is a closed choice: a typo fails when the config is composed, before any
    data is loaded, and the message lists the loggers."""
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        compose(["logger.name=mlflow"])
    message = str(err.value.__cause__ or err.value)
    assert "mlflow" in message and "wandb" in message and "tensorboard" in message


# --- labels: one group per sweep, names from overrides ----------------------------------


def hydra_node(mode: str, overrides: str = "", cwd: str = "/work") -> DictConfig:
    return OmegaConf.create(
        {
            "mode": mode,
            "runtime": {"cwd": cwd},
            "run": {"dir": "outputs/runs/2025-01-31/12-00-00"},
            "sweep": {"dir": "outputs/multirun/2025-01-31/12-30-00"},
            "job": {"override_dirname": overrides},
        }
    )


def test_jobs_of_a_multirun_share_the_sweep_group():
    from hydra.types import RunMode

    first = run_labels(hydra_node(RunMode.MULTIRUN, "max_length=256,stride=64"))
    second = run_labels(hydra_node(RunMode.MULTIRUN, "max_length=384,stride=64"))
    assert first.group == second.group == "multirun_2025-01-31_12-30-00"
    assert (first.name, second.name) == ("max_length=256,stride=64", "max_length=384,stride=64")


def test_a_single_run_gets_its_own_group_and_a_clean_name():
    from hydra.types import RunMode

    labels = run_labels(hydra_node(RunMode.RUN))
    assert labels == RunLabels(group="runs_2025-01-31_12-00-00", name="defaults")


def test_dir_label_is_relative_to_the_launch_folder():
    assert dir_label("/work/outputs/multirun/d/t", "/work") == "multirun_d_t"
    assert dir_label("sweeps/lr", "/work") == "sweeps_lr"
    assert dir_label("/scratch/a/b/c/d", "/work") == "b_c_d"


def test_logger_settings_override_the_derived_labels(tmp_path):
    cfg = OmegaConf.to_object(compose(["logger.group=ablation", "logger.run_name=baseline"]))
    derived = RunLabels(group="multirun_x", name="stride=64")
    assert resolve_labels(cfg, tmp_path, derived) == RunLabels("ablation", "baseline")
    plain = OmegaConf.to_object(compose([]))
    assert resolve_labels(plain, tmp_path / "run7", None) == RunLabels("run7", "run7")


def test_epoch_metrics_use_the_dashboard_names():
    record = {"epoch": 2, "exact_match": 50.0, "f1": 60.0, "eval_seconds": 1.5, "train_loss": None}
    assert epoch_metrics(record) == {"eval/exact_match": 50.0, "eval/f1": 60.0, "eval/seconds": 1.5}


# --- a real 2x2 sweep, read back from the files wandb wrote -----------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """`--multirun stride=32,48 max_length=96,128` with offline wandb."""
    cwd = tmp_path_factory.mktemp("sweep")
    args = [
        "--multirun",
        *SMALL_RUN,
        *OFFLINE_WANDB,
        NO_CHECKPOINT,
        "max_length=96,128",
        "stride=32,48",
        "hydra.sweep.dir=multirun/grid",
    ]
    result = run_cli(args, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    return cwd / "multirun" / "grid", result


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit())


def expected_name(job_dir: Path) -> str:
    """hydra.job.override_dirname: the job's overrides sorted, logger.* and debug excluded."""
    overrides = yaml.safe_load((job_dir / ".hydra" / "overrides.yaml").read_text())
    return ",".join(sorted(o for o in overrides if not o.startswith(("logger", "debug="))))


@pytest.mark.slow
def test_sweep_writes_one_offline_wandb_run_per_job(sweep):
    sweep_dir, _ = sweep
    jobs = job_dirs(sweep_dir)
    assert [j.name for j in jobs] == ["0", "1", "2", "3"]
    runs = [read_offline_run(*offline_run_dirs(job)) for job in jobs]
    assert len({r.run_id for r in runs}) == 4
    assert {r.group for r in runs} == {"multirun_grid"}
    assert all(r.job_type == "train" and r.project == "qaexp" for r in runs)
    assert all(r.exit_code == 0 for r in runs)
    assert [r.name for r in runs] == [expected_name(job) for job in jobs]
    assert {(r.config["max_length"], r.config["stride"]) for r in runs} == {
        (96, 32),
        (96, 48),
        (128, 32),
        (128, 48),
    }


@pytest.mark.slow
def test_wandb_config_is_the_resolved_nested_config(sweep):
    sweep_dir, _ = sweep
    for job in job_dirs(sweep_dir):
        run = read_offline_run(*offline_run_dirs(job))
        recorded = json.loads((job / "summary.json").read_text())["config"]
        assert {k: v for k, v in run.config.items() if k != "_wandb"} == recorded
        assert run.config["optimizer"]["lr"] == 2e-5  # nested, filterable as optimizer.lr
        assert "${" not in json.dumps(run.config)  # interpolations resolved
        assert run.config["logger"]["group"] is None  # derived labels stay out of the config


@pytest.mark.slow
def test_wandb_summary_and_history_match_the_run_dir(sweep):
    sweep_dir, _ = sweep
    for job in job_dirs(sweep_dir):
        run = read_offline_run(*offline_run_dirs(job))
        summary = json.loads((job / "summary.json").read_text())
        epochs = read_jsonl(job / "metrics.jsonl")
        assert run.summary["eval/f1"] == {"max": pytest.approx(summary["best_f1"])}
        assert run.summary["eval/exact_match"] == {
            "max": pytest.approx(summary["best_exact_match"])
        }
        assert run.summary["status"] == "completed"
        assert run.summary["best_f1"] == pytest.approx(summary["best_f1"])
        logged = [h for h in run.history if "eval/f1" in h]
        assert [h["epoch"] for h in logged] == [e["epoch"] for e in epochs]
        assert all("eval/seconds" in h for h in logged)
        steps = [h for h in run.history if "train/loss" in h]
        assert [h["global_step"] for h in steps] == list(range(1, epochs[-1]["step"] + 1))
        assert all(h["train/lr"] >= 0 and h["train/windows_per_second"] > 0 for h in steps)


@pytest.mark.slow
def test_offline_jobs_log_one_sync_line_and_no_wandb_banner(sweep):
    sweep_dir, result = sweep
    for job in job_dirs(sweep_dir):
        (offline,) = offline_run_dirs(job)
        lines = [line for line in (job / "qaexp.log").read_text().splitlines() if "wandb" in line]
        assert len(lines) == 1 and lines[0].endswith(f"wandb sync {offline.resolve()}")
    assert "wandb:" not in result.stdout + result.stderr


@pytest.mark.slow
def test_sweep_end_writes_the_comparison(sweep):
    sweep_dir, _ = sweep
    with open(sweep_dir / "comparison.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    assert {(r["max_length"], r["stride"]) for r in rows} == {
        ("96", "32"),
        ("96", "48"),
        ("128", "32"),
        ("128", "48"),
    }
    best = [float(r["best F1"]) for r in rows]
    assert best == sorted(best, reverse=True)
    assert (sweep_dir / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| max_length" in (sweep_dir / "comparison.md").read_text()


# --- failures, TensorBoard, Optuna ------------------------------------------------------


def test_failing_job_finishes_its_wandb_run_as_failed(tmp_path, monkeypatch):
    from qaexp.training import train
    from qaexp.training.loop import EpochRunner

    def broken_epoch(*args, **kwargs):
        raise RuntimeError("training broke")

    monkeypatch.setattr(EpochRunner, "run", broken_epoch)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="training broke"):
        train(small_config(*OFFLINE_WANDB), run_dir, RunLabels("g", "failing"))
    (offline,) = offline_run_dirs(run_dir)
    run = read_offline_run(offline)
    assert run.exit_code == 1
    assert run.summary["status"] == "failed"
    assert (run.group, run.name) == ("g", "failing")
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_tensorboard_logs_steps_epochs_and_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from qaexp.training import train

    run_dir = tmp_path / "run"
    train(small_config("logger=tensorboard", "trainer.log_every_n_steps=1"), run_dir)
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    epochs = read_jsonl(run_dir / "metrics.jsonl")
    assert [s.value for s in events.Scalars("eval/f1")] == pytest.approx([e["f1"] for e in epochs])
    assert [s.step for s in events.Scalars("train/loss")] == list(range(1, epochs[-1]["step"] + 1))
    hparams = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert "hparam/best_f1" in hparams.Tags()["scalars"]


@pytest.mark.slow
def test_optuna_search_runs_three_trials(tmp_path):
    args = [
        *SMALL_RUN,
        NO_CHECKPOINT,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=3",
        "max_length=96,128",
        "stride=32",
        "trainer.train_batch_size=16",
        "hydra.sweep.dir=search",
    ]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    search = tmp_path / "search"
    jobs = job_dirs(search)
    assert [j.name for j in jobs] == ["0", "1", "2"]
    best = [json.loads((j / "summary.json").read_text())["best_f1"] for j in jobs]
    results = yaml.safe_load((search / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(best))  # the app's return value
    # searched: the space's lr, and max_length from the command line; the keys the command
    # line fixes (batch size, epochs, stride) leave the search space
    assert results["best_params"].keys() == {"optimizer.lr", "max_length"}
    sampled = [yaml.safe_load((j / ".hydra" / "overrides.yaml").read_text()) for j in jobs]
    assert all(any(o.startswith("optimizer.lr=") for o in trial) for trial in sampled)


def test_optuna_search_space_is_documented_and_maximises():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", ["hparams_search=optuna"], return_hydra_config=True)
    sweeper = cfg.hydra.sweeper
    assert "OptunaSweeper" in sweeper._target_ and sweeper.direction == "maximize"
    assert set(sweeper.params) == {
        "optimizer.lr",
        "trainer.epochs",
        "trainer.train_batch_size",
        "stride",
        "max_length",
    }
