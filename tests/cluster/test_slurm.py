"""qaexp on a real single-node SLURM: sweeps through the submitit launcher with the default
folders, requeues (of 1- and 2-task jobs) and SIGUSR2 that resume to the same result as an
uninterrupted run, a cancelled sweep and a job out of requeues resumed with the command the
sweep prints, and plain `srun` with two tasks. The launcher releases a requeued job from
SLURM's begin-time delay (about two minutes) itself."""

from __future__ import annotations

import json
import re
import shlex
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
from tests.test_resume import RESUME_RUN, assert_same_training, result_files

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
    """The uninterrupted runs to compare with, by number of processes (started on demand)."""
    runs: dict[int, Path] = {}

    def run(processes: int) -> Path:
        if processes not in runs:
            cwd = tmp_path_factory.mktemp(f"straight{processes}")
            args = [*RESUME_RUN, "hydra.run.dir=run", f"hardware.num_processes={processes}"]
            result = run_qaexp(args, cwd=cwd)
            assert result.returncode == 0, result.stderr[-3000:]
            runs[processes] = cwd / "run"
        return runs[processes]

    return run


def epochs_recorded(root: Path, job: str = "0") -> int:
    """Epochs in the metrics of the sweep's job (default folders; 0 before it has any)."""
    found = list(root.glob(f"outputs/multirun/*/*/{job}/metrics.jsonl"))
    return found[0].read_text().count("\n") if found else 0


def submitted_job_ids(sweep: Path) -> list[str]:
    """SLURM ids of the sweep's jobs in job order: `ID` for one job, `ARRAY_TASK` for several
    (submitit submits a job array)."""
    names = [p.name for p in (sweep / ".submitit").iterdir()]
    tasks = [n for n in names if re.fullmatch(r"\d+_\d+", n)]
    if tasks:
        return sorted(tasks, key=lambda n: int(n.partition("_")[2]))
    return [n for n in names if n.isdigit()]


def status_of(run_dir: Path) -> str | None:
    summary = run_dir / "summary.json"
    return json.loads(summary.read_text())["status"] if summary.is_file() else None


def assert_equals_uninterrupted(run_dir: Path, straight: Path) -> dict:
    """Epochs 1-3 recorded once each, metrics and every weight equal to the straight run."""
    summary = assert_run_dir_contract(run_dir, epochs=[1, 2, 3])
    assert_same_training(run_dir, straight)
    return summary


@pytest.mark.parametrize(
    "interrupt, tasks",
    [("scontrol requeue", 1), ("scontrol requeue", 2), ("scancel --signal=USR2", 1)],
)
def test_interrupted_job_resumes_to_the_uninterrupted_result(
    slurm, uninterrupted, tmp_path, interrupt, tasks
):
    """Interrupted in epoch 2, the job is requeued (by SLURM, or after SIGUSR2 by qaexp through
    submitit), runs again in the same folder, resumes from the state, and ends bit-equal to an
    uninterrupted run with as many processes."""
    straight = uninterrupted(tasks)
    proc = start_sweep(slurm, [*RESUME_RUN, f"hydra.launcher.tasks_per_node={tasks}"], tmp_path)
    wait_for(lambda: epochs_recorded(tmp_path) >= 1, proc)
    (sweep,) = sweep_folders(tmp_path)
    (job_id,) = submitted_job_ids(sweep)
    slurm.run(*interrupt.split(), job_id)
    run_dir = sweep / "0"
    wait_for(lambda: status_of(run_dir) == "interrupted", proc)
    first_segment = json.loads((run_dir / "summary.json").read_text())["wall_seconds"]
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    # the sweep's console followed the job, and the launcher let the requeued job start now
    assert "SLURM: #0 running" in stderr
    assert "SLURM: #0 pending (requeued 1x, released)" in stderr
    assert slurm.job_field(job_id, "Restarts") == "1"
    log = (run_dir / "qaexp.log").read_text()
    assert "Resuming from" in log
    if "USR2" in interrupt:
        assert "SIGUSR2 received" in log and "Requeueing SLURM job" in log
    summary = assert_equals_uninterrupted(run_dir, straight)
    assert summary["num_processes"] == tasks
    # wall_seconds covers both segments: the first, then at least epoch 3 of the second
    epoch_three = read_jsonl(run_dir / "metrics.jsonl")[-1]
    assert summary["wall_seconds"] > first_segment + epoch_three["train_seconds"]
    assert [p.name for p in sweep_folders(tmp_path)] == [sweep.name]


def resume_command(stderr: str) -> list[str]:
    """The arguments of the resume command the sweep's paragraph prints (after `-m qaexp`)."""
    found = re.search(r"Resume the sweep with: python -m qaexp (.*?) \(stopped jobs", stderr)
    assert found, stderr[-3000:]
    return shlex.split(found[1])


def assert_one_paragraph_for_unfinished(proc: subprocess.Popen, stderr: str, sweep: Path) -> None:
    """Exit 2, no traceback, one paragraph naming job 0 and the resume command."""
    assert proc.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr and "UncompletedJobError" not in stderr
    (paragraph,) = [line for line in stderr.splitlines() if "did not finish" in line]
    assert "#0 (" in paragraph and "run folder interrupted with its state saved" in paragraph
    assert f"hydra.sweep.dir={sweep.resolve()} trainer.resume=true" in paragraph


def test_cancelled_sweep_resumes_with_the_command_it_prints(slurm, uninterrupted, tmp_path):
    """`scancel --signal=TERM` in epoch 2 of job 0 while job 1 has completed: job 0 saves its
    state and ends (a cancel is not requeued); the sweep ends with exit 2 and one paragraph
    (no traceback) naming job 0 and the command that resumes the sweep. That command, run
    as printed, continues job 0 to the uninterrupted result and leaves job 1's results as
    they were."""
    straight = uninterrupted(1)
    args = [*RESUME_RUN, "trainer.epochs=3,1"]
    proc = start_sweep(slurm, args, tmp_path)
    wait_for(lambda: epochs_recorded(tmp_path) >= 1, proc)
    (sweep,) = sweep_folders(tmp_path)
    wait_for(lambda: status_of(sweep / "1") == "completed", proc)
    finished = result_files(sweep / "1")
    job_ids = submitted_job_ids(sweep)
    assert len(job_ids) == 2
    slurm.run("scancel", "--signal=TERM", job_ids[0])
    _, stderr = proc.communicate(timeout=600)
    assert_one_paragraph_for_unfinished(proc, stderr, sweep)
    assert f"SLURM job {job_ids[0]} FAILED" in stderr  # exit 143: not COMPLETED
    run_dir = sweep / "0"
    assert status_of(run_dir) == "interrupted"
    log = (run_dir / "qaexp.log").read_text()
    assert "Stopped by SIGTERM" in log and "Requeueing" not in log
    resume = resume_command(stderr)
    assert resume[0] == "--multirun" and "hydra/launcher=slurm" in resume
    proc = subprocess.Popen(
        [sys.executable, "-m", "qaexp", *resume], cwd=tmp_path, env=cluster_env(slurm),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-3000:]
    assert_equals_uninterrupted(run_dir, straight)
    assert "already completed: nothing to resume" in (sweep / "1" / "qaexp.log").read_text()
    assert result_files(sweep / "1") == finished
    assert (sweep / "comparison.md").is_file()


def test_job_out_of_requeues_fails_consistently(slurm, tmp_path):
    """A 3-minute job with no requeue left (max_num_timeout=0) and more training than fits:
    SLURM sends SIGUSR2 45 s before the limit (a quarter of it, not the 120 s default), the
    run saves its state and the job ends FAILED in SLURM (not COMPLETED), `interrupted` in
    its run folder, and the sweep ends with exit 2 and one paragraph with the resume
    command, without a traceback."""
    # Far more epochs than 3 minutes hold on any machine (an epoch takes about 2 s here).
    args = [*RESUME_RUN, "trainer.epochs=1000", "hydra.launcher.timeout_min=3"]
    proc = start_sweep(slurm, [*args, "hydra.launcher.max_num_timeout=0"], tmp_path)
    wait_for(lambda: len(sweep_folders(tmp_path)) == 1, proc)
    (sweep,) = sweep_folders(tmp_path)
    wait_for(lambda: any((sweep / ".submitit").rglob("*submission.sh")), proc)
    script = next((sweep / ".submitit").rglob("*submission.sh"))
    assert "--signal=USR2@45" in script.read_text()
    _, stderr = proc.communicate(timeout=600)
    assert_one_paragraph_for_unfinished(proc, stderr, sweep)
    (job_id,) = submitted_job_ids(sweep)
    assert slurm.job_state(job_id) == "FAILED"
    assert f"SLURM job {job_id} FAILED" in stderr
    assert status_of(sweep / "0") == "interrupted"
    log = (sweep / "0" / "qaexp.log").read_text()
    assert "SIGUSR2 received" in log
    assert f"SLURM job {job_id} is not requeued (timed-out too many times)" in log
    assert "Requeueing" not in log and "Traceback" not in log


def test_srun_with_two_tasks_writes_one_run_dir(slurm, tmp_path):
    """Plain `srun -n2 python -m qaexp` (no submitit): both tasks join one process group and
    write one run dir, named after the job without a date; rank 1 writes no Hydra files."""
    srun = subprocess.run(
        ["srun", "-n2", sys.executable, "-m", "qaexp", *SMALL_RUN, "max_length=128",
         "stride=32", "logger=none"],
        cwd=tmp_path, env=cluster_env(slurm), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert srun.returncode == 0, srun.stderr[-3000:]
    assert "OMP_NUM_THREADS" not in srun.stderr  # no rank prints Accelerate's warning
    (run_dir,) = (tmp_path / "outputs" / "runs").iterdir()
    assert run_dir.name.startswith("slurm-")
    summary = assert_run_dir_contract(run_dir, epochs=[1])
    assert summary["num_processes"] == 2
    log = (run_dir / "qaexp.log").read_text()
    assert log.count("- epoch 1:") == 1
    assert log.count("Joining an external launch") == 1  # rank 1 logs into its console only
