"""Resume: a run stopped by a real SIGTERM continues to the same result as a run that was
never interrupted; the state on disk is always complete; the same seed gives the same run."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import (
    TINY_RUN,
    assert_run_dir_contract,
    read_jsonl,
    run_qaexp,
    start_qaexp,
)

pytestmark = pytest.mark.processes  # starts processes: the leak guard scans the host

RESUME_RUN = [
    *TINY_RUN,
    "trainer.epochs=3",
    "data.synthetic.train_size=200",
    "trainer.train_batch_size=8",
]
TIMING_KEYS = {
    "train_seconds",
    "train_windows_per_second",
    "train_tokens_per_second",
    "eval_seconds",
    "eval_windows_per_second",
}


def comparable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def weights(run_dir):
    return load_file(run_dir / "checkpoint" / "model.safetensors")


def assert_same_training(run_dir: Path, straight: Path) -> None:
    """Metrics (timings aside) and every checkpoint weight equal to the uninterrupted run's."""
    assert comparable(read_jsonl(run_dir / "metrics.jsonl")) == comparable(
        read_jsonl(straight / "metrics.jsonl")
    )
    a, b = weights(run_dir), weights(straight)
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a)


def result_files(run_dir: Path) -> dict[str, bytes]:
    """Every file a run wrote, but its log and the .hydra/ files Hydra writes at each launch."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in run_dir.rglob("*")
        if p.is_file() and p.name != "qaexp.log" and ".hydra" not in p.parts
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("straight")
    # keep_state: test_resume_from_another_run_dir continues this completed run's state
    result = run_qaexp([*RESUME_RUN, "hydra.run.dir=run", "trainer.keep_state=true"], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "run"


@pytest.mark.slow
def test_sigterm_then_resume_matches_an_uninterrupted_run(uninterrupted, tmp_path):
    proc = start_qaexp([*RESUME_RUN, "hydra.run.dir=run"], tmp_path)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "trainer.resume=true" in stderr  # the message says how to resume
    state = tmp_path / "run" / "state"
    assert (state / "progress.json").is_file()
    progress = json.loads((state / "progress.json").read_text())
    assert progress["epoch"] in (1, 2, 3) and len(progress["history"]) >= 1
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted"

    resumed = run_qaexp([*RESUME_RUN, "hydra.run.dir=run", "trainer.resume=true"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in (tmp_path / "run" / "qaexp.log").read_text()
    assert_run_dir_contract(tmp_path / "run", epochs=[1, 2, 3])
    assert_same_training(tmp_path / "run", uninterrupted)
    assert json.loads((tmp_path / "run" / "predictions.json").read_text()) == json.loads(
        (uninterrupted / "predictions.json").read_text()
    )


@pytest.mark.slow
def test_resume_from_another_run_dir(uninterrupted, tmp_path):
    """resume_from continues a finished state (epoch 3 done) with nothing left to train."""
    result = run_qaexp(
        [*RESUME_RUN, "hydra.run.dir=copy", f"trainer.resume_from={uninterrupted}"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert comparable(read_jsonl(tmp_path / "copy" / "metrics.jsonl")) == comparable(
        read_jsonl(uninterrupted / "metrics.jsonl")
    )
    assert (tmp_path / "copy" / "checkpoint" / "model.safetensors").is_file()


def test_resume_with_a_different_recipe_is_refused(uninterrupted, tmp_path):
    result = run_qaexp(
        [
            *RESUME_RUN,
            "optimizer.lr=1e-3",
            "hydra.run.dir=other",
            f"trainer.resume_from={uninterrupted}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "optimizer.lr" in result.stderr and "Cannot resume" in result.stderr


def test_resume_from_a_missing_path_names_it(tmp_path):
    result = run_qaexp([*TINY_RUN, "trainer.resume_from=/nonexistent/run"], cwd=tmp_path)
    assert result.returncode == 2
    assert "trainer.resume_from=/nonexistent/run" in result.stderr


def test_same_seed_same_run(uninterrupted, tmp_path):
    again = run_qaexp([*RESUME_RUN, "hydra.run.dir=again"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert comparable(read_jsonl(tmp_path / "again" / "metrics.jsonl")) == comparable(
        read_jsonl(uninterrupted / "metrics.jsonl")
    )


def test_state_is_replaced_atomically(tmp_path):
    """A crash while saving leaves the previous complete state in place."""
    from qaexp.tracking.rundir import replace_dir_atomic

    target, staged = tmp_path / "state", tmp_path / ".state.tmp"
    target.mkdir()
    (target / "progress.json").write_text('{"epoch": 2}')
    staged.mkdir()
    (staged / "progress.json").write_text('{"epoch": 3}')
    replace_dir_atomic(staged, target)
    assert json.loads((target / "progress.json").read_text()) == {"epoch": 3}
    assert not staged.exists() and not (tmp_path / ".state.old").exists()


def test_resuming_a_completed_run_changes_nothing(tmp_path):
    """trainer.resume=true (what resuming a sweep passes to every job) on a run that already
    completed, with no state kept: nothing runs again and every file stays as it was; with a
    changed recipe the resume is refused, naming the key."""
    args = [*TINY_RUN, "trainer.epochs=1", "hydra.run.dir=run"]
    assert run_qaexp(args, cwd=tmp_path).returncode == 0
    run_dir = tmp_path / "run"
    assert not (run_dir / "state").exists()
    before = result_files(run_dir)
    again = run_qaexp([*args, "trainer.resume=true"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert result_files(run_dir) == before
    assert "already completed: nothing to resume" in (run_dir / "qaexp.log").read_text()

    longer = run_qaexp([*args, "trainer.resume=true", "trainer.epochs=2"], cwd=tmp_path)
    assert longer.returncode == 2
    assert "trainer.epochs: 1 -> 2" in longer.stderr and "Cannot resume" in longer.stderr
    assert result_files(run_dir) == before


def test_each_process_continues_its_own_loss_sums():
    """A state saved by two processes mid-epoch: resumed on two, each continues its own
    sums; on another process count (or from a state saved before per-process sums), every
    process continues from their mean, so the epoch still records the mean batch loss."""
    from qaexp.training.state import Progress

    saved = {"epoch": 2, "batches_done": 3, "loss_sum": 13.5, "skipped_steps": 1}
    progress = Progress.from_saved({**saved, "rank_sums": [[13.25, 1], [13.75, 1]]})
    assert [progress.own_sums(rank, 2) for rank in (0, 1)] == [(13.25, 1), (13.75, 1)]
    assert progress.own_sums(0, 1) == progress.own_sums(2, 4) == (13.5, 1)
    assert Progress.from_saved(saved).own_sums(1, 2) == (13.5, 1)
    progress.start_next_epoch()
    assert progress.rank_sums == [] and progress.own_sums(0, 2) == (0.0, 0)
