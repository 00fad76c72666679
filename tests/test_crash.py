"""Crash consistency: a run killed with SIGKILL at any instant resumes to exactly the files of
an uninterrupted run (tests/crash_driver.py does the killing), and a multi-process run stopped
by SIGTERM keeps the single-process exit contract."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, TINY_RUN, read_jsonl, run_qaexp, start_qaexp

TIMING_KEYS = {
    "train_seconds",
    "train_windows_per_second",
    "train_tokens_per_second",
    "eval_seconds",
    "eval_windows_per_second",
    "wall_seconds",
    "seconds",
}
STATE_FILES = ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl")


def without_timing(value):
    """`value` with every timing entry (which differs between runs) left out, recursively."""
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def assert_equal_objects(a, b, where: str) -> None:
    """Tensors, arrays and nested containers equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_objects(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal_objects(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def load_any(path: Path):
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, weights_only=False)


def assert_same_run(run: Path, reference: Path) -> None:
    """metrics, predictions, summary, every checkpoint and state tensor as in `reference`."""
    assert without_timing(read_jsonl(run / "metrics.jsonl")) == without_timing(
        read_jsonl(reference / "metrics.jsonl")
    )
    for name in ("predictions.json", "summary.json", "state/progress.json", "analysis.json"):
        a, b = (json.loads((d / name).read_text()) for d in (run, reference))
        assert without_timing(a) == without_timing(b), name
    for name in ("answers.jsonl", "answers-last.jsonl", "analysis.md"):
        assert (run / name).exists() == (reference / name).exists(), name
        if (reference / name).exists():
            assert (run / name).read_text() == (reference / name).read_text(), name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["checkpoint_epoch"] == summary["best_epoch"]
    assert summary["predictions_epoch"] == summary["epochs"]
    for name in ("checkpoint/model.safetensors", *(f"state/{f}" for f in STATE_FILES)):
        assert_equal_objects(load_any(run / name), load_any(reference / name), name)
    leftovers = [str(p.relative_to(run)) for p in run.rglob(".*")]
    assert not leftovers, f"temporary files left behind: {leftovers}"


@pytest.mark.slow
def test_sigkill_at_every_crash_point_resumes_to_the_uninterrupted_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    driver = subprocess.run(
        [sys.executable, "-m", "tests.crash_driver", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    report = json.loads(driver.stdout.strip().splitlines()[-1])
    log = (tmp_path / "attempts.log").read_text(errors="replace")
    assert report["straight"] == report["final"] == report["timed_final"] == "exit 0", log[-3000:]
    killed = [o for o in report["outcomes"] if o[1] == "signal 9"]
    assert len(killed) >= 30, report["outcomes"]
    assert "Traceback" not in log, log[log.index("Traceback") :][:3000]
    assert_same_run(tmp_path / "chain", tmp_path / "straight")
    assert_same_run(tmp_path / "timed", tmp_path / "straight")


TWO_PROCESSES = [
    *TINY_RUN,
    "hardware.num_processes=2",
    "trainer.epochs=3",
    "data.synthetic.train_size=64",
    "data.synthetic.eval_size=16",
    "trainer.train_batch_size=4",
]


def step_losses(run_dir: Path) -> dict[int, float]:
    """The train/loss the main process logged at every optimizer step (TensorBoard)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    return {s.step: s.value for s in events.Scalars("train/loss")}


@pytest.mark.slow
def test_two_process_sigterm_mid_epoch_resumes_to_the_same_numbers(tmp_path):
    """A stop inside epoch 2 (a check point at every step, so the stop lands mid-epoch):
    exit 143 with the resume command, and the resumed run records exactly the uninterrupted
    run's numbers: every metrics field, the summary, the predictions and the loss logged at
    every step, since each process continues its own loss sums."""
    args = [*TWO_PROCESSES, "trainer.log_every_n_steps=1", "logger=tensorboard"]
    straight = run_qaexp([*args, "hydra.run.dir=straight"], cwd=tmp_path, timeout=900)
    assert straight.returncode == 0, straight.stderr[-3000:]

    proc = start_qaexp([*args, "hydra.run.dir=run"], tmp_path)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and not metrics.exists():
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 143, stderr[-3000:]
    assert "trainer.resume=true" in stderr and "Traceback" not in stderr, stderr[-3000:]
    progress = json.loads((tmp_path / "run" / "state" / "progress.json").read_text())
    assert progress["epoch"] == 2 and progress["batches_done"] > 0  # stopped mid-epoch
    assert len(progress["rank_sums"]) == 2  # each process's own sums
    shutil.copytree(tmp_path / "run", tmp_path / "one")
    resumed = run_qaexp([*args, "hydra.run.dir=run", "trainer.resume=true"], tmp_path, 900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert without_timing(read_jsonl(metrics)) == without_timing(
        read_jsonl(straight / "metrics.jsonl")
    )
    assert step_losses(run) == step_losses(straight)
    predictions = [json.loads((d / "predictions.json").read_text()) for d in (run, straight)]
    assert predictions[0] == predictions[1]
    summaries = (json.loads((d / "summary.json").read_text()) for d in (run, straight))
    a, b = ({k: v for k, v in without_timing(s).items() if k != "config"} for s in summaries)
    assert a == b  # the configs differ only by trainer.resume=true

    # On one process the same state resumes too, every process from the mean of the sums.
    one = [*args, "hardware.num_processes=1", "hydra.run.dir=one", "trainer.resume=true"]
    resumed = run_qaexp(one, tmp_path, 900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "saved by 2 processes and this run has 1" in (tmp_path / "one" / "qaexp.log").read_text()
    records = read_jsonl(tmp_path / "one" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["train_loss"]) for r in records)
