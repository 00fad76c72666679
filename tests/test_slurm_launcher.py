"""The SLURM launcher and qaexp's SLURM functions without a SLURM: the signal delay that fits
the time limit, the documented keys, the console lines and the paragraph of a sweep whose jobs
did not finish, out-of-requeues, the CPU share of srun tasks and the hints of a failed run.
tests/cluster runs the same on a real SLURM."""

from __future__ import annotations

import logging
import os
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from hydra_plugins.qaexp_launcher import slurm as launcher
from tests.conftest import CONF_DIR, REPO, SINGLE_RUN, SMALL_RUN, run_cli


def launcher_config(*overrides: str):
    """The composed `hydra.launcher` node of `hydra/launcher=slurm` with `overrides`."""
    import qaexp.__main__  # noqa: F401  (registers the schema and resolvers)

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(
            config_name="config",
            overrides=["hydra/launcher=slurm", *overrides],
            return_hydra_config=True,
        )
    return cfg.hydra.launcher


@pytest.mark.parametrize("timeout_min, delay", [(60, 120), (8, 120), (5, 75), (2, 30), (1, 15)])
def test_signal_delay_fits_the_time_limit(timeout_min, delay):
    """By default SIGUSR2 comes 120 s before the limit, or a quarter of a shorter limit."""
    cfg = launcher_config(f"hydra.launcher.timeout_min={timeout_min}")
    assert cfg.signal_delay_s == delay
    assert cfg.signal_delay_s < timeout_min * 60


def test_explicit_signal_delay_is_kept():
    cfg = launcher_config("hydra.launcher.timeout_min=5", "hydra.launcher.signal_delay_s=200")
    assert cfg.signal_delay_s == 200


def test_signal_delay_beyond_the_time_limit_is_refused(tmp_path):
    """A delay not below the limit: one paragraph naming both keys, exit 2, nothing written
    and nothing submitted."""
    args = ["--multirun", "hydra/launcher=slurm", *SMALL_RUN, "max_length=128", "stride=24,32"]
    args += ["hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=90"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "hydra.launcher.signal_delay_s=90 does not fit" in result.stderr
    assert "hydra.launcher.timeout_min=1 (60 s)" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_docs_name_every_launcher_key():
    """docs/clusters.md names every key of `hydra/launcher=slurm` (array_parallelism too)."""
    docs = (REPO / "docs" / "clusters.md").read_text()
    keys = [k for k in launcher_config() if k != "_target_"]
    assert "array_parallelism" in keys
    missing = [k for k in keys if f"`hydra.launcher.{k}`" not in docs]
    assert not missing, f"docs/clusters.md lacks {missing}"


def test_scontrol_records_of_a_job_array():
    shown = (
        "JobId=12 ArrayJobId=11 ArrayTaskId=1-2,4%2 JobState=PENDING Reason=Resources Restarts=0\n"
        "JobId=11 ArrayJobId=11 ArrayTaskId=0 JobState=RUNNING Reason=None Restarts=1\n"
        "JobId=20 JobState=COMPLETED Reason=None Restarts=0\n"
    )
    records = launcher.parse_job_records(shown)
    assert sorted(records) == ["11_0", "11_1", "11_2", "11_4", "20"]
    assert records["11_0"] == launcher.JobRecord("RUNNING", "None", 1)
    assert records["11_4"].reason == "Resources"


class FakeJob:
    """What the launcher reads of a submitit job: its id, its result file, its output."""

    def __init__(self, job_id: str, folder: Path):
        self.job_id = job_id
        self.paths = SimpleNamespace(
            result_pickle=folder / f"{job_id}_result.pkl", stderr=folder / f"{job_id}.err"
        )

    def results(self):
        return ["the job's JobReturn"]


def fake_launcher(tmp_path: Path, argv_sweep_dir: Path) -> launcher.SlurmLauncher:
    from omegaconf import OmegaConf

    slurm = launcher.SlurmLauncher(max_num_timeout=3, timeout_min=60, signal_delay_s=120)
    slurm.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(argv_sweep_dir)}}})
    slurm.poll_s = 0
    return slurm


def test_waiting_requeued_and_unfinished_jobs(tmp_path, monkeypatch, caplog):
    """Job 0 waits for resources, runs and leaves its result; job 1 is requeued (released from
    SLURM's begin-time delay on the second look), then cancelled without a result: the
    console follows both, and the sweep ends with one paragraph naming job 1 and the
    command that resumes the sweep; job 1 counts as NaN."""
    sweep = tmp_path / "sweep"
    (sweep / "1").mkdir(parents=True)
    (sweep / "1" / "summary.json").write_text('{"status": "interrupted"}')
    jobs = {0: FakeJob("7_0", tmp_path), 1: FakeJob("7_1", tmp_path)}
    timeline = [
        {"7_0": ("PENDING", "Resources", 0), "7_1": ("RUNNING", "None", 0)},
        {"7_0": ("RUNNING", "None", 0), "7_1": ("PENDING", "BeginTime", 1)},
        {"7_0": ("RUNNING", "None", 0), "7_1": ("PENDING", "BeginTime", 1)},
        {"7_0": ("COMPLETED", "None", 0), "7_1": ("CANCELLED", "None", 1)},
    ]
    polls, released = [], []

    def show_jobs(job_ids):
        step = timeline[min(len(polls), len(timeline) - 1)]
        polls.append(job_ids)
        if len(polls) == len(timeline):
            jobs[0].paths.result_pickle.write_bytes(b"done")
        return {i: launcher.JobRecord(*step[i]) for i in job_ids}

    monkeypatch.setattr(launcher, "show_jobs", show_jobs)
    monkeypatch.setattr(launcher, "release_requeued", lambda job_id: released.append(job_id) or 1)
    monkeypatch.setattr(launcher, "RESULT_GRACE_S", 0)
    monkeypatch.setattr("sys.argv", ["qaexp", "--multirun", "hydra/launcher=slurm", "seed=1,2"])
    slurm = fake_launcher(tmp_path, sweep)
    caplog.set_level(logging.INFO, logger=launcher.__name__)
    ended = slurm._follow(jobs)
    assert ended == {0: "COMPLETED", 1: "CANCELLED"}
    assert released == ["7_1"]  # once, on the second look at the requeued job
    lines = [r.getMessage() for r in caplog.records]
    assert "SLURM: #0 pending (Resources); #1 running" in lines
    assert "SLURM: #0 running; #1 pending (requeued 1x, BeginTime)" in lines
    assert "SLURM: #0 running; #1 pending (requeued 1x, released)" in lines

    launcher.UNFINISHED_JOBS.clear()
    returns = [slurm._job_return(i, [f"seed={i + 1}"], jobs[i], ended[i]) for i in (0, 1)]
    assert returns[0] == "the job's JobReturn"
    assert returns[1].return_value != returns[1].return_value  # NaN, as a failed job
    assert launcher.UNFINISHED_JOBS == [
        "#1 (seed=2): SLURM job 7_1 CANCELLED, run folder interrupted with its state saved"
    ]
    paragraph = slurm._unfinished_paragraph(sweep, launcher.UNFINISHED_JOBS)
    assert "\n" not in paragraph
    command = re.search(r"Resume the sweep with: (.*?) \(stopped", paragraph)[1]
    assert command == (
        f"python -m qaexp --multirun hydra/launcher=slurm seed=1,2 "
        f"hydra.sweep.dir={sweep.resolve()} trainer.resume=true"
    )
    launcher.UNFINISHED_JOBS.clear()


@pytest.fixture
def restore_sigusr2():
    handler = signal.getsignal(signal.SIGUSR2)
    yield
    signal.signal(signal.SIGUSR2, handler)


def test_out_of_requeues_ends_the_job(monkeypatch, restore_sigusr2, caplog):
    """When submitit's SIGUSR2 handler finds the job out of requeues (it raises), the job is
    not requeued: requeue_after_stop says so and returns False, so the run gets its resume
    hint and a non-zero exit (SLURM: FAILED), instead of the error escaping as a
    traceback and the job ending COMPLETED."""
    from submitit.core.utils import UncompletedJobError

    from qaexp.launch import requeue_after_stop

    def out_of_requeues(signum, frame):
        raise UncompletedJobError("Job not requeued because: timed-out too many times.")

    signal.signal(signal.SIGUSR2, out_of_requeues)
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    assert requeue_after_stop(signal.SIGUSR2) is False
    assert "SLURM job 41 is not requeued (timed-out too many times)" in caplog.text
    assert "Requeueing" not in caplog.text


def test_srun_tasks_get_their_share_of_cpu_threads(monkeypatch):
    """Each task of a 2-task srun sets OMP_NUM_THREADS (SLURM_CPUS_PER_TASK) before
    Accelerate looks, so no rank prints Accelerate's OMP_NUM_THREADS warning."""
    from qaexp.launch import export_slurm_env

    slurm_env = {
        "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "5",
        "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0",
        "SLURM_STEP_ID": "0", "SLURM_CPUS_PER_TASK": "1",
    }  # fmt: skip
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for key, value in slurm_env.items():
        monkeypatch.setenv(key, value)
    threads = torch.get_num_threads()
    try:
        export_slurm_env()
        assert os.environ["OMP_NUM_THREADS"] == "1"
        assert os.environ["RANK"] == "1" and os.environ["WORLD_SIZE"] == "2"
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR"):
            os.environ.pop(key, None)


def fail_in_training(monkeypatch):
    def run_job(*args, **kwargs):
        raise RuntimeError("the collective timed out")

    monkeypatch.setattr("qaexp.launch.run_job", run_job)


def test_failed_run_hint_carries_its_run_dir(tmp_path, monkeypatch):
    """A run that fails (as under srun, where a new job would start a new run folder) says
    how to continue it with its own hydra.run.dir."""
    fail_in_training(monkeypatch)
    run_dir = tmp_path / "run"
    result = run_cli([*SINGLE_RUN, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 1
    assert f"hydra.run.dir={run_dir} trainer.resume=true" in result.stderr
    assert "python -m qaexp debug=tiny" in result.stderr


def test_other_rank_failure_lands_in_the_log_it_names(tmp_path, monkeypatch):
    """Rank 1 of an external launch logs to its console only; when it fails, its traceback
    goes into the run's qaexp.log, which its message names."""
    fail_in_training(monkeypatch)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "qaexp.log").write_text("[rank 0's lines]\n")
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    result = run_cli([*SINGLE_RUN, f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert f"The full traceback is in {run_dir / 'qaexp.log'}" in result.stderr
    assert "Traceback" not in result.stderr
    log = (run_dir / "qaexp.log").read_text()
    assert log.startswith("[rank 0's lines]\n[rank 1] Traceback")
    assert "RuntimeError: the collective timed out" in log
