"""One dashboard run per job: a job stopped by SIGTERM and resumed with trainer.resume=true
continues its wandb run (same id, steps continuing) and its TensorBoard folder."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from qaexp.errors import RunInterrupted
from qaexp.tracking import RunLabels
from qaexp.tracking.tensorboard_tracker import TensorBoardTracker
from qaexp.tracking.wandb_tracker import RUN_ID_FILE, WandbTracker
from tests.conftest import read_jsonl, small_config
from tests.wandb_records import read_offline_run

RUN = ["trainer.epochs=2", "trainer.log_every_n_steps=1", "trainer.save_checkpoint=none"]
OFFLINE_WANDB = ["logger=wandb", "logger.mode=offline"]
STOP_AT = 3  # the optimizer step after which the job gets SIGTERM
LABELS = RunLabels("resume", "job")


def stopped_then_resumed(monkeypatch, tracker: type, run_dir: Path, *overrides: str) -> None:
    """Train until `tracker` logged step STOP_AT, send this process SIGTERM there (the run
    saves its state and stops), then resume the same run directory to the end."""
    from qaexp.training import train

    log_step = tracker.log_step

    def log_then_stop(self, step, metrics):
        log_step(self, step, metrics)
        if step == STOP_AT:
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(tracker, "log_step", log_then_stop)
        with pytest.raises(RunInterrupted):
            train(small_config(*RUN, *overrides), run_dir, LABELS)
    train(small_config(*RUN, *overrides, "trainer.resume=true"), run_dir, LABELS)


def offline_runs(run_dir: Path) -> list:
    """The job's offline wandb runs, read once wandb's service has written them out."""
    import wandb

    wandb.teardown()  # the service may still be closing the last run's file after finish()
    return [read_offline_run(p) for p in sorted((run_dir / "wandb").glob("offline-run-*"))]


def test_resumed_job_continues_its_wandb_run(monkeypatch, tmp_path):
    run_dir = tmp_path / "run"
    stopped_then_resumed(monkeypatch, WandbTracker, run_dir, *OFFLINE_WANDB)
    first, second = offline_runs(run_dir)
    stored = (run_dir / "wandb" / RUN_ID_FILE).read_text()
    assert first.run_id == stored, (first.run_id, stored)
    assert second.run_id == stored  # one run: `wandb sync` joins both parts
    assert (second.group, second.name) == ("resume", "job")
    assert (first.exit_code, second.exit_code) == (130, 0)

    def steps(run):
        return [h["global_step"] for h in run.history if "train/loss" in h]

    last = read_jsonl(run_dir / "metrics.jsonl")[-1]["step"]
    assert steps(first) == [1, 2, 3]
    assert steps(second) == list(range(4, last + 1))
    # wandb's own step counter continues too (each row at its optimizer step)
    assert [h["_step"] for h in first.history] == [1, 2, 3]
    assert [h["_step"] for h in second.history] == list(range(4, last + 1))
    assert [h["epoch"] for h in second.history if "eval/f1" in h] == [1, 2]


def test_a_new_run_in_the_same_folder_gets_a_new_wandb_run(tmp_path):
    """Without resuming (a rerun from scratch), the job is a new wandb run."""
    from qaexp.training import train

    run_dir = tmp_path / "run"
    for _ in range(2):
        train(small_config(*OFFLINE_WANDB, "trainer.save_checkpoint=none"), run_dir, LABELS)
    runs = offline_runs(run_dir)
    assert len({r.run_id for r in runs}) == 2
    assert (run_dir / "wandb" / RUN_ID_FILE).read_text() == runs[-1].run_id


def test_resumed_job_continues_its_tensorboard_folder(monkeypatch, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    stopped_then_resumed(monkeypatch, TensorBoardTracker, run_dir, "logger=tensorboard")
    folder = run_dir / "tensorboard"
    assert len(list(folder.glob("events.out.tfevents.*"))) > 1  # both segments, one folder
    assert not [p for p in folder.iterdir() if p.is_dir()]
    events = EventAccumulator(str(folder)).Reload()
    last = read_jsonl(run_dir / "metrics.jsonl")[-1]["step"]
    assert [s.step for s in events.Scalars("train/loss")] == list(range(1, last + 1))
    assert [s.step for s in events.Scalars("eval/f1")] == [1, 2]
