"""qaexp on a real single-node SLURM: sweeps through the submitit launcher with the default
folders, requeues and SIGUSR2 that resume to the same result as an uninterrupted run, and
plain `srun` with two tasks. A requeued job waits about two minutes (SLURM's begin-time
delay) before it runs again, so each test requeues once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    REPO,
    SMALL_RUN,
    assert_run_dir_contract,
    read_jsonl,
    run_qaexp,
)
from tests.test_resume import RESUME_RUN, comparable, weights

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.processes]


def cluster_env(slurm) -> dict:
    return {**slurm.env, "PYTHONPATH": str(REPO), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def start_sweep(slurm, args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "qaexp", "--multirun", "hydra/launcher=slurm", *args],
        cwd=cwd, env=cluster_env(slurm), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def sweep_folders(cwd: Path) -> list[Path]:
    return [p for p in (cwd / "outputs" / "multirun").glob("*/*") if p.is_dir()]


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def test_sweep_with_default_folders_lands_in_one_sweep_folder(slurm, tmp_path):
    """Two jobs, the launcher's default folder: both jobs write into the launcher's sweep
    folder and the comparison is written there."""
    proc = start_sweep(slurm, [*SMALL_RUN, "max_length=128", "stride=24,32"], tmp_path)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    (sweep,) = sweep_folders(tmp_path)
    for job in ("0", "1"):
        assert_run_dir_contract(sweep / job, epochs=[1])
    assert (sweep / "comparison.md").is_file()
    assert "No runs found" not in stderr


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("straight")
    result = run_qaexp([*RESUME_RUN, "hydra.run.dir=run"], cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd / "run"


@pytest.mark.parametrize("interrupt", ["scontrol requeue", "scancel --signal=USR2"])
def test_interrupted_job_resumes_to_the_uninterrupted_result(
    slurm, uninterrupted, tmp_path, interrupt
):
    """Interrupted in epoch 2, the job is requeued (by SLURM, or after SIGUSR2 by qaexp through
    submitit), runs again in the same folder, resumes from the state, and ends bit-equal."""
    proc = start_sweep(slurm, RESUME_RUN, tmp_path)
    metrics = tmp_path / "outputs" / "multirun" / "*" / "*" / "0" / "metrics.jsonl"

    def epoch_one_recorded() -> bool:
        found = list(tmp_path.glob(str(metrics.relative_to(tmp_path))))
        return bool(found) and found[0].read_text().count("\n") >= 1

    wait_for(epoch_one_recorded, proc)
    (sweep,) = sweep_folders(tmp_path)
    (job_id,) = [p.name for p in (sweep / ".submitit").iterdir() if p.name.isdigit()]
    slurm.run(*interrupt.split(), job_id)
    run_dir = sweep / "0"
    wait_for(lambda: (run_dir / "summary.json").is_file() and json.loads(
        (run_dir / "summary.json").read_text())["status"] == "interrupted", proc)  # fmt: skip
    first_segment = json.loads((run_dir / "summary.json").read_text())["wall_seconds"]
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    log = (run_dir / "qaexp.log").read_text()
    assert "Resuming from" in log
    if "USR2" in interrupt:
        assert "SIGUSR2 received" in log and "Requeueing SLURM job" in log
    summary = assert_run_dir_contract(run_dir, epochs=[1, 2, 3])
    assert comparable(read_jsonl(run_dir / "metrics.jsonl")) == comparable(
        read_jsonl(uninterrupted / "metrics.jsonl")
    )
    a, b = weights(run_dir), weights(uninterrupted)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    # wall_seconds covers both segments: the first, then at least epoch 3 of the second
    epoch_three = read_jsonl(run_dir / "metrics.jsonl")[-1]
    assert summary["wall_seconds"] > first_segment + epoch_three["train_seconds"]
    assert [p.name for p in sweep_folders(tmp_path)] == [sweep.name]


def test_srun_with_two_tasks_writes_one_run_dir(slurm, tmp_path):
    """Plain `srun -n2 python -m qaexp` (no submitit): both tasks join one process group and
    write one run dir, named after the job without a date; rank 1 writes no Hydra files."""
    srun = subprocess.run(
        ["srun", "-n2", sys.executable, "-m", "qaexp", *SMALL_RUN, "max_length=128",
         "stride=32", "logger=none"],
        cwd=tmp_path, env=cluster_env(slurm), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert srun.returncode == 0, srun.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert run_dir.name.startswith("slurm-")
    summary = assert_run_dir_contract(run_dir, epochs=[1])
    assert summary["num_processes"] == 2
    log = (run_dir / "qaexp.log").read_text()
    assert log.count("- epoch 1:") == 1
    assert log.count("Joining an external launch") == 1  # rank 1 logs into its console only
