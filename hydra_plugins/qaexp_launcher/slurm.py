"""`hydra/launcher=slurm`: Hydra's submitit SLURM launcher, with what a sweep on a real cluster
needs on top: the job's tasks other than rank 0 write nothing into the shared run directory,
the signal delay fits the time limit, the console says what the jobs wait for, a requeued job
starts again without SLURM's begin-time delay, and a job that ends without a result (cancelled,
out of requeues, killed) is one paragraph with the command that resumes the sweep, not a
traceback. Hydra imports plugin modules at start, so this stays light (no torch).

No `from __future__ import annotations` here: Hydra's plugin scan runs a module before it is in
sys.modules, and a dataclass with string annotations then fails to build (dataclasses looks
the module up), which broke every fresh interpreter that scans the plugins."""

import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)
from omegaconf import OmegaConf

log = logging.getLogger(__name__)

# What ranks other than 0 of one job add to their Hydra overrides (as qaexp.__main__ does
# under torchrun/srun): no `.hydra/` and no log file of their own in the shared run
# directory, only warnings on their console.
OTHER_RANK_OVERRIDES = (
    "hydra.output_subdir=null",
    "hydra.job_logging.root.handlers=[console]",
    "hydra.job_logging.root.level=WARNING",
)

# The signal delay by default: SLURM's usual 120 s, but never more than a quarter of the time
# limit, so a short job still trains for most of its limit before it saves and is requeued.
SIGNAL_DELAY_S = 120
SIGNAL_DELAY_SHARE = 4

# SLURM states in which a job will not run again (a requeued job passes through REQUEUED and
# PENDING instead).
ENDED_STATES = {
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "REVOKED", "TIMEOUT",
}  # fmt: skip
# How long a job that SLURM shows ended may take to make its result file visible here (a
# shared file system lags), as submitit allows.
RESULT_GRACE_S = 15.0

# The sweep jobs that ended without a result in the last sweep this process launched (its
# entry point exits 2 on them).
UNFINISHED_JOBS: list[str] = []


def fitting_signal_delay(timeout_min: int) -> int:
    """`${qaexp.signal_delay_s:${.timeout_min}}`: how long before the time limit SLURM sends
    SIGUSR2 (min(120 s, a quarter of the limit))."""
    return max(1, min(SIGNAL_DELAY_S, int(timeout_min) * 60 // SIGNAL_DELAY_SHARE))


if not OmegaConf.has_resolver("qaexp.signal_delay_s"):
    OmegaConf.register_new_resolver("qaexp.signal_delay_s", fitting_signal_delay)


def signal_delay_problem(signal_delay_s: int, timeout_min: int) -> str | None:
    """Why a signal delay does not fit the time limit (None when it does)."""
    if 0 < signal_delay_s < timeout_min * 60:
        return None
    return (
        f"hydra.launcher.signal_delay_s={signal_delay_s} does not fit the time limit "
        f"hydra.launcher.timeout_min={timeout_min} ({timeout_min * 60} s): SLURM sends SIGUSR2 "
        "that many seconds before the limit, so a run could never save its state before it "
        "is killed. Set a delay between 1 and the limit in seconds (leave it out for "
        f"{fitting_signal_delay(timeout_min)} s, the smaller of 120 s and a quarter of the "
        "limit)."
    )


@dataclass
class JobRecord:
    """What `scontrol show job` says about one job (one task of an array)."""

    state: str
    reason: str = ""
    restarts: int = 0


def parse_job_records(shown: str) -> dict[str, JobRecord]:
    """`scontrol -o show job ID` output by job id: `ID` for a plain job, `ARRAY_TASK` for the
    tasks of an array (a pending range of tasks, `ArrayTaskId=1-3,5`, gives each of them)."""
    records: dict[str, JobRecord] = {}
    for line in shown.splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if "JobState" not in fields:
            continue
        record = JobRecord(
            state=fields["JobState"],
            reason=fields.get("Reason", "None"),
            restarts=int(fields.get("Restarts", "0") or 0),
        )
        array, tasks = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
        if array and tasks:
            for task in array_tasks(tasks):
                records[f"{array}_{task}"] = record
        else:
            records[fields.get("JobId", "")] = record
    return records


def array_tasks(spec: str) -> list[int]:
    """`0-3,7%2` -> [0, 1, 2, 3, 7]."""
    tasks: list[int] = []
    for part in spec.split("%")[0].split(","):
        first, _, last = part.partition("-")
        if first.isdigit():
            tasks.extend(range(int(first), int(last or first) + 1))
    return tasks


def show_jobs(job_ids: list[str]) -> dict[str, JobRecord]:
    """The SLURM records of `job_ids`, one `scontrol` call per array (or plain job)."""
    records: dict[str, JobRecord] = {}
    for root in dict.fromkeys(job_id.partition("_")[0] for job_id in job_ids):
        shown = subprocess.run(
            ["scontrol", "-o", "show", "job", root], capture_output=True, text=True, check=False
        )
        records.update(parse_job_records(shown.stdout))
    return records


def waiting_line(states: dict[int, tuple[str, str]]) -> str:
    """One console line for the jobs still waiting: `#0 running; #1 #2 pending (Resources)`."""
    groups: dict[str, list[str]] = {}
    for index, (state, why) in sorted(states.items()):
        groups.setdefault(f"{state.lower()}{f' ({why})' if why else ''}", []).append(f"#{index}")
    return "; ".join(f"{' '.join(jobs)} {what}" for what, jobs in groups.items())


def release_requeued(job_id: str) -> bool:
    """Let a requeued job start now instead of after its begin-time delay. SLURM holds a
    requeued job back for its credential lifetime (CredExpire, 120 s by default) so that the
    old instance's processes are gone before the new one starts; once the job shows PENDING
    again they are, so qaexp moves its begin time to now (as `scontrol update` allows any
    user for their own pending job). Returns whether SLURM accepted."""
    updated = subprocess.run(
        ["scontrol", "update", f"JobId={job_id}", "StartTime=now"],
        capture_output=True,
        text=True,
        check=False,
    )
    if updated.returncode != 0:
        log.warning(
            "Could not release requeued SLURM job %s (%s): it starts after SLURM's begin-time "
            "delay.",
            job_id,
            updated.stderr.strip(),
        )
    return updated.returncode == 0


class SlurmLauncher(SubmititSlurmLauncher):
    """Hydra's submitit SLURM launcher, with the job's tasks other than rank 0 writing no
    `.hydra/` and no log lines into the shared run directory, and a sweep that waits for its
    jobs the way a user can follow (see the module's docstring)."""

    poll_s = 2.0

    def __call__(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
        if os.environ.get("SLURM_PROCID", "0") != "0":
            sweep_overrides = [*sweep_overrides, *OTHER_RANK_OVERRIDES]
        return super().__call__(sweep_overrides, *args, **kwargs)

    def setup(self, **kwargs: Any) -> None:
        """Refuse a signal delay that does not fit the time limit before anything is
        submitted or written."""
        super().setup(**kwargs)
        problem = signal_delay_problem(
            int(self.params["signal_delay_s"]), int(self.params["timeout_min"])
        )
        if problem:
            print(f"[qaexp][ERROR] - {problem}", file=sys.stderr)
            sys.exit(2)

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        """Submit the jobs as one array, follow them until each has ended, and return their
        JobReturns; a job that ended without a result gets a NaN result here and is named, with
        the resume command, at the end (of this batch, for a sweeper that launches several)."""
        unfinished_before = len(UNFINISHED_JOBS)
        executor = self._executor()
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info("Submitting %d SLURM jobs; the sweep folder is %s", len(job_overrides), sweep_dir)
        indices, job_params = [], []
        for offset, overrides in enumerate(job_overrides):
            index = initial_job_idx + offset
            log.info("\t#%d : %s", index, " ".join(filter_overrides(overrides)))
            indices.append(index)
            job_params.append(
                (
                    list(overrides),
                    "hydra.sweep.dir",
                    index,
                    f"job_id_for_{index}",
                    Singleton.get_state(),
                )
            )
        jobs = executor.map_array(self, *zip(*job_params, strict=True))
        ended = self._follow(dict(zip(indices, jobs, strict=True)))
        returns = [
            self._job_return(index, list(overrides), job, ended[index])
            for index, overrides, job in zip(indices, job_overrides, jobs, strict=True)
        ]
        if len(UNFINISHED_JOBS) > unfinished_before:
            unfinished = UNFINISHED_JOBS[unfinished_before:]
            log.error("%s", self._unfinished_paragraph(sweep_dir, unfinished))
        return returns

    def _executor(self) -> Any:
        """submitit's SLURM executor with this launcher's parameters (as the base launcher
        builds it: SLURM-specific keys get submitit's `slurm_` prefix)."""
        import submitit

        params = dict(self.params)
        executor = submitit.AutoExecutor(
            cluster=self._EXECUTOR,
            folder=params.pop("submitit_folder"),
            slurm_max_num_timeout=params.pop("max_num_timeout"),
        )
        shared = set(OmegaConf.structured(BaseQueueConf).keys())
        executor.update_parameters(
            **{k if k in shared else f"{self._EXECUTOR}_{k}": v for k, v in params.items()}
        )
        return executor

    def _follow(self, jobs: dict[int, Any]) -> dict[int, str]:
        """Wait until every job has its result file or SLURM shows it ended; return the state
        each ended in. A line on the console whenever what the jobs wait for changes; a
        requeued job is released from SLURM's begin-time delay."""
        ended: dict[int, str] = {}
        ended_at: dict[int, float] = {}
        released: dict[int, int] = {}
        seen_requeued: set[tuple[int, int]] = set()
        last_line = ""
        while len(ended) < len(jobs):
            waiting = {i: job for i, job in jobs.items() if i not in ended}
            records = show_jobs([job.job_id for job in waiting.values()])
            states: dict[int, tuple[str, str]] = {}
            for index, job in waiting.items():
                record = records.get(job.job_id)
                if job.paths.result_pickle.exists():
                    ended[index] = record.state if record else "COMPLETED"
                    continue
                if record is None:  # unknown to scontrol: ask submitit (sacct)
                    if job.done():
                        ended[index] = job.state
                    continue
                if record.state in ENDED_STATES:
                    since = ended_at.setdefault(index, time.monotonic())
                    if time.monotonic() - since > RESULT_GRACE_S:
                        ended[index] = record.state
                    continue
                why = record.reason if record.reason not in ("None", "(null)") else ""
                if record.state == "PENDING" and record.restarts:
                    why = f"requeued {record.restarts}x, {why or 'waiting'}"
                    # Released on the second look: the requeue has settled by then.
                    key = (index, record.restarts)
                    if key in seen_requeued and released.get(index) != record.restarts:
                        released[index] = record.restarts
                        if release_requeued(job.job_id):
                            why = f"requeued {record.restarts}x, released"
                    seen_requeued.add(key)
                states[index] = (record.state, why)
            line = waiting_line(states)
            if line and line != last_line:
                log.info("SLURM: %s", line)
                last_line = line
            if len(ended) < len(jobs):
                time.sleep(self.poll_s)
        return ended

    def _job_return(self, index: int, overrides: list[str], job: Any, state: str) -> JobReturn:
        """The job's JobReturn; one without a result (cancelled, out of requeues, killed) is
        recorded in UNFINISHED_JOBS and counts as a NaN result (as a failed job does)."""
        from submitit.core.utils import FailedJobError, UncompletedJobError

        if job.paths.result_pickle.exists():  # rank 0's; a job of several tasks waits for all
            try:
                return job.results()[0]
            except (FailedJobError, UncompletedJobError) as err:  # outside qaexp's boundary
                log.error("Sweep job #%d failed outside the run: %s", index, err)
                UNFINISHED_JOBS.append(self._unfinished_line(index, overrides, job, state))
        else:
            UNFINISHED_JOBS.append(self._unfinished_line(index, overrides, job, state))
        return JobReturn(
            overrides=overrides,
            working_dir=os.getcwd(),
            status=JobStatus.COMPLETED,
            _return_value=float("nan"),
        )

    def _unfinished_line(self, index: int, overrides: list[str], job: Any, state: str) -> str:
        """`#0 (trainer.epochs=3): SLURM job 12_0 CANCELLED, run folder interrupted (state
        saved)`, from SLURM's state and the job's summary.json."""
        import json

        run_dir = Path(str(self.config.hydra.sweep.dir)) / str(index)
        summary = run_dir / "summary.json"
        status = json.loads(summary.read_text()).get("status") if summary.is_file() else None
        folder = {
            "interrupted": "interrupted with its state saved",
            None: f"without a result (its output: {job.paths.stderr})",
        }.get(status, status)
        settings = " ".join(filter_overrides(overrides)) or "defaults"
        return f"#{index} ({settings}): SLURM job {job.job_id} {state}, run folder {folder}"

    def _unfinished_paragraph(self, sweep_dir: Path, unfinished: list[str]) -> str:
        """One paragraph: which jobs did not finish, and the command that resumes the sweep."""
        args = [
            a
            for a in sys.argv[1:]
            if not a.startswith(("hydra.sweep.dir=", "trainer.resume=", "--multirun", "-m"))
        ]
        command = shlex.join(
            [
                "python", "-m", "qaexp", "--multirun", *args,
                f"hydra.sweep.dir={sweep_dir.resolve()}", "trainer.resume=true",
            ]
        )  # fmt: skip
        max_requeues = self.params.get("max_num_timeout")
        return (
            f"{len(unfinished)} sweep job(s) did not finish: {'; '.join(unfinished)}. "
            "A job ends so when it is cancelled (scancel), runs out of requeues after time "
            f"limits (hydra.launcher.max_num_timeout={max_requeues}) or is killed. Resume the "
            f"sweep with: {command} (stopped jobs continue from their state, finished ones keep "
            "their results)."
        )
