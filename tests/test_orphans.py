"""No process of a sweep outlives it, and every stop ends the same way: jobs die with a killed
launcher and leave no temporary files; a job killed from outside is a failed job of the sweep
(exit 2, named, with the resume command); a second Ctrl-C while the state is saved still
ends in one paragraph and the resume command; a killed Optuna trial runs again at once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest

from tests.conftest import REPO, STARTED_SUBPROCESS, TINY_RUN, run_cli, run_qaexp
from tests.test_optuna_search import SEARCH
from tests.test_parallel_launcher import JOB, SLOTS
from tests.test_resume import assert_same_training

pytestmark = pytest.mark.processes  # starts processes: the leak guard scans the host

# Jobs long enough to be caught while they train (tens of seconds on 2 busy cores).
LONG_JOB = [*JOB, "data.synthetic.train_size=300", "trainer.epochs=2"]


def start(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """`python -m qaexp args` in the background, its console into cwd/console.txt (a file:
    a pipe would stay open while any job holds it)."""
    STARTED_SUBPROCESS[0] = True
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        **(env or {}),
    }
    with open(cwd / "console.txt", "w") as console:
        return subprocess.Popen(
            [sys.executable, "-m", "qaexp", *args],
            cwd=cwd,
            env=env,
            stdout=console,
            stderr=subprocess.STDOUT,
        )


def wait_until_training(proc: subprocess.Popen, logs: list[Path], timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if all(log.exists() and "Training " in log.read_text() for log in logs):
            return
        time.sleep(0.05)
    raise AssertionError(f"no training seen in {logs} (exit {proc.poll()})")


@pytest.mark.parametrize("slots", sorted(SLOTS))
def test_jobs_die_with_a_killed_launcher_and_leave_no_temporary_files(tmp_path, slots):
    """SIGKILL to the parallel launcher while its jobs train (forked on CPU slots, fresh
    interpreters on the fake GPU slots): the jobs are gone within seconds, and nothing the
    launcher made is left in the temporary folder."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    args = ["--multirun", *LONG_JOB, *SLOTS[slots], "stride=24,32", "hydra.sweep.dir=sw"]
    proc = start(args, tmp_path, env={"TMPDIR": str(tmp)})
    wait_until_training(proc, [tmp_path / "sw" / str(i) / "qaexp.log" for i in (0, 1)])
    jobs = psutil.Process(proc.pid).children(recursive=True)
    assert len(jobs) >= 2
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(jobs, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    assert not list(tmp.iterdir())


def test_a_job_killed_from_outside_is_a_failed_job_with_the_resume_command(tmp_path):
    """SIGKILL to one job of a parallel sweep: the other job completes, the sweep ends with
    exit 2 naming the killed job and the command that resumes the sweep, no traceback."""
    args = ["--multirun", *LONG_JOB, *SLOTS["cpu_slots"], "stride=24,32", "hydra.sweep.dir=sw"]
    proc = start(args, tmp_path)
    wait_until_training(proc, [tmp_path / "sw" / "0" / "qaexp.log"])
    console = tmp_path / "console.txt"
    (pid,) = re.findall(r"#0 started in slot \d+ .*pid (\d+)", console.read_text())
    os.kill(int(pid), signal.SIGKILL)
    assert proc.wait(timeout=600) == 2
    text = console.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "1 job(s) failed: #0 (stride=24)" in text
    assert f"hydra.sweep.dir={tmp_path / 'sw'} trainer.resume=true" in text
    assert "SIGKILL" in text
    summary = json.loads((tmp_path / "sw" / "0" / "summary.json").read_text())
    assert summary["status"] == "failed" and "SIGKILL" in summary["error"]
    assert json.loads((tmp_path / "sw" / "1" / "summary.json").read_text())["status"] == (
        "completed"
    )


def test_a_second_sigint_during_the_state_save_ends_with_one_paragraph(tmp_path):
    """Ctrl-C at a step, and again while the state of that step is being written: the save
    completes, one paragraph and the resume command, exit 130, no KeyboardInterrupt; the
    resume ends equal to a run that was never stopped."""
    run = [
        *TINY_RUN,
        "trainer.epochs=2",
        "trainer.train_batch_size=8",
        "data.synthetic.train_size=40",
    ]
    straight = run_cli([*run, "hydra.run.dir=straight"], cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-3000:]
    signals = {"QAEXP_CRASH_AT": "step@2#3,state saved@2#1", "QAEXP_CRASH_SIGNAL": "SIGINT"}
    stopped = run_qaexp([*run, "hydra.run.dir=run"], cwd=tmp_path, env=signals)
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and "KeyboardInterrupt" not in stopped.stderr
    assert "Resume with: python -m qaexp" in stopped.stderr
    assert "trainer.resume=true" in stopped.stderr
    progress = json.loads((tmp_path / "run" / "state" / "progress.json").read_text())
    assert (progress["epoch"], progress["batches_done"]) == (2, 3)
    resumed = run_cli([*run, "hydra.run.dir=run", "trainer.resume=true"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_training(tmp_path / "run", tmp_path / "straight")


def test_a_killed_optuna_trial_runs_again_on_an_immediate_resume(tmp_path):
    """SIGKILL to a search while its trial trains, then the same command at once (well within
    the heartbeat grace): the trial whose process is gone is failed, its point runs again
    as the next trial, and the search ends with no failed job."""
    search = [a for a in SEARCH if not a.startswith("data.synthetic.train_size")]
    args = [*search, "data.synthetic.train_size=300", "hydra.sweeper.n_trials=1"]
    proc = start(args, tmp_path)
    wait_until_training(proc, [tmp_path / "search" / "0" / "qaexp.log"])
    proc.kill()
    proc.wait()
    resumed = run_qaexp(args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = optuna.load_study(
        study_name="qaexp", storage=f"sqlite:///{tmp_path / 'search' / 'optuna.db'}"
    )
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == trials[0].params
    killed = json.loads((tmp_path / "search" / "0" / "summary.json").read_text())
    assert killed["status"] == "interrupted"
    assert json.loads((tmp_path / "search" / "1" / "summary.json").read_text())["status"] == (
        "completed"
    )


# --- a second stop signal, in this process (no training) ------------------------------------


def test_a_second_sigint_outside_a_save_stops_at_once_as_a_stopped_run():
    from qaexp.errors import RunInterrupted
    from qaexp.training.preemption import GracefulStop

    with pytest.raises(RunInterrupted, match="second SIGINT") as stopped, GracefulStop() as stop:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGTERM)  # repeated: only asks again
        assert stop.requested
        signal.raise_signal(signal.SIGINT)
        raise AssertionError("the second Ctrl-C should have stopped the run")
    assert stopped.value.exit_code == 128 + signal.SIGTERM  # the first signal's


def test_a_second_sigint_during_a_save_waits_for_it():
    from qaexp.errors import RunInterrupted
    from qaexp.training.preemption import GracefulStop

    written = []
    with pytest.raises(RunInterrupted) as stopped, GracefulStop() as stop:
        signal.raise_signal(signal.SIGINT)
        with stop.saving():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            written.append("state")
        raise AssertionError("the run should stop once the state is written")
    assert written == ["state"]
    assert stopped.value.exit_code == 128 + signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
