"""`hydra/launcher=parallel`: a sweep's jobs as concurrent subprocesses on this machine.

Jobs wait in a queue and run `jobs` at a time, each in a slot of its own: `gpus_per_job` GPUs
from `devices` (CUDA_VISIBLE_DEVICES set per job; the next job starts when a slot frees up)
or, without GPUs, `cpus_per_job` threads. Each job runs through Hydra's `run_job` in a
process of its own (the same output folder, .hydra/ files, logging and callbacks as the basic
launcher), so a failed job never stops the others: a fresh interpreter for a GPU slot, a fork
of this process (imports done once) for a CPU slot unless `start_method=spawn`. See
jobqueue.py for Ctrl-C / SIGTERM, and for what holds when the launcher itself is killed.

A job that ends without a result while the launcher is not stopping it (killed from outside,
stopped by a signal of its own, crashed) is a failed job of the sweep: its paragraph says how
it ended and how to resume the sweep, its summary.json is marked failed, the other jobs run,
and the sweep's end names it (exit 2), as for a job that fails on its own.
"""

import json
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hydra_plugins.qaexp_launcher.jobqueue import JobQueue, QueuedJob
from hydra_plugins.qaexp_launcher.slots import available_cpus, plan_slots
from qaexp.tracking.rundir import SUMMARY_FILE, write_json_atomic

log = logging.getLogger(__name__)


class StartMethod(Enum):
    auto = "auto"  # jobs on CPU slots forked from the launcher, GPU jobs a fresh interpreter
    spawn = "spawn"  # every job a fresh interpreter


@dataclass
class ParallelLauncherConf:
    _target_: str = "hydra_plugins.qaexp_launcher.parallel_launcher.ParallelLauncher"
    jobs: int | None = None  # at most this many at once (default: as many as there are slots)
    gpus_per_job: int = 1
    devices: list[str] | None = None  # GPU ids to use (default: the visible ones; [] = CPU)
    cpus_per_job: int | None = None  # threads per job (default: the cores shared evenly)
    stop_timeout_s: float = 120.0  # after SIGTERM, how long jobs get to save state and exit
    start_method: StartMethod = StartMethod.auto


ConfigStore.instance().store(
    group="hydra/launcher", name="qaexp_parallel", node=ParallelLauncherConf, provider="qaexp"
)


class ParallelLauncher(Launcher):
    def __init__(self, **params: Any) -> None:
        self.params = {
            k: OmegaConf.to_object(v) if OmegaConf.is_config(v) else v for k, v in params.items()
        }
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Any, initial_job_idx: int) -> list[JobReturn]:
        """Run the jobs; return their JobReturns in order. After a stop signal: exit 128+sig
        once every job has stopped (the comparison is refreshed as each one ends)."""
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        p = self.params
        slots = plan_slots(
            p["devices"], p["gpus_per_job"], p["jobs"], p["cpus_per_job"], available_cpus()
        )
        log.info(
            "Launching %d jobs, %d at a time, into %s", len(job_overrides), len(slots), sweep_dir
        )
        results: dict[int, JobReturn] = {}
        jobs = [
            self._queued_job(initial_job_idx + i, list(overrides), str(sweep_dir))
            for i, overrides in enumerate(job_overrides)
        ]
        queue = JobQueue(slots, float(p["stop_timeout_s"]))
        stopped = queue.run(jobs, lambda job: results.__setitem__(job.index, self._ended(job)))
        if stopped is not None:
            sys.exit(128 + stopped)
        return [results[job.index] for job in jobs]

    def _queued_job(self, index: int, overrides: list[str], sweep_dir: str) -> QueuedJob:
        """Compose the job's config here (bad overrides fail before anything starts) and
        pickle what its process needs."""
        import cloudpickle

        from hydra_plugins.qaexp_launcher.job import task_reference

        log.info("\t#%d : %s", index, " ".join(filter_overrides(overrides)))
        config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(config), read_write(config):
            config.hydra.job.id = index
            config.hydra.job.num = index
            # Resolved here: a job process would re-run `${now:}`-style resolvers at its own time.
            config.hydra.sweep.dir = sweep_dir
        payload = {
            "hydra_context": self.hydra_context,
            "config": config,
            "task": task_reference(self.task_function),
            "singletons": Singleton.get_state(),
        }
        argv = [sys.executable, "-m", "hydra_plugins.qaexp_launcher.job"]
        fork = run_forked if self.params["start_method"] == StartMethod.auto else None
        job = QueuedJob(index, cloudpickle.dumps(payload), argv, child_env(), os.getcwd(), fork)
        job.extra.update(config=config, overrides=overrides)
        return job

    def _ended(self, job: QueuedJob) -> JobReturn:
        """The job's JobReturn. A job that wrote none gets one here, and the job-end
        callbacks its process never reached: failed when the launcher stopped it (the
        launcher then exits 128+signal); otherwise the job is a failed job of the sweep, as
        one that fails on its own (a NaN result, summary.json marked failed)."""
        ret = read_result(job.result)
        if ret is not None:
            log.info("#%d %s (exit %d)", job.index, ret.status.name.lower(), job.returncode)
            return ret
        config = job.extra["config"]
        output_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        what = f"Sweep job #{job.index} ({' '.join(job.extra['overrides'])})"
        if job.signalled:
            error: Exception = RuntimeError(
                f"{what} ended with exit code {job.returncode} before reporting a result; see "
                f"{output_dir / 'qaexp.log'}."
            )
            log.warning("%s", error)
            ret = JobReturn(
                overrides=job.extra["overrides"], status=JobStatus.FAILED, _return_value=error
            )
        else:
            message = (
                f"{what} was {describe_end(job.returncode)} before it finished; its log is "
                f"{output_dir / 'qaexp.log'}, its run folder is marked failed. The other jobs "
                "go on; resume the sweep afterwards by running its command again with "
                f"hydra.sweep.dir={Path(str(config.hydra.sweep.dir)).absolute()} "
                "trainer.resume=true (finished jobs keep their results; this one continues "
                "from its last saved state)."
            )
            log.error("%s", message)
            mark_failed(output_dir, message)
            # What qaexp's entry point returns for a job that fails on its own.
            ret = JobReturn(
                overrides=job.extra["overrides"], status=JobStatus.COMPLETED, _return_value=math.nan
            )
        ret.working_dir = os.getcwd()
        with read_write(config), open_dict(config):
            config.hydra.runtime.output_dir = str(output_dir.resolve())
        self.hydra_context.callbacks.on_job_end(config=config, job_return=ret)
        return ret


def read_result(data: bytes) -> JobReturn | None:
    """The JobReturn a job wrote; None when it wrote none, or was killed while writing it."""
    import pickle

    try:
        return pickle.loads(data) if data else None
    except Exception:
        return None


def describe_end(returncode: int | None) -> str:
    """`killed by SIGKILL`, `stopped by SIGTERM (exit 143)`, `ended with exit code 1`."""
    try:
        if returncode is not None and returncode < 0:
            return f"killed by {signal.Signals(-returncode).name}"
        if returncode is not None and returncode > 128:
            return f"stopped by {signal.Signals(returncode - 128).name} (exit {returncode})"
    except ValueError:  # not a signal's number
        pass
    return f"ended with exit code {returncode}"


def mark_failed(run_dir: Path, message: str) -> None:
    """The job's summary.json says it failed (what it had recorded kept), so the comparison
    and the sweep's end name it (also a job killed before it made its run folder)."""
    summary_path = run_dir / SUMMARY_FILE
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    except (OSError, ValueError):
        summary = {}
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(summary_path, {**summary, "status": "failed", "error": message})
    except OSError as err:
        log.error("Could not mark %s failed: %s", summary_path, err)


def run_forked(payload_fd: int, result_fd: int) -> int:
    """A job in a process forked from the launcher: what `python -m ...job` runs."""
    from hydra_plugins.qaexp_launcher.job import main

    return main(payload_fd, result_fd)


def child_env() -> dict[str, str]:
    """This process's environment, with the folder of its main module first on the job's
    path (as under `python -m`, where it is the current folder), then the folder this
    launcher was imported from: a fresh job runs the launcher's own code, also when another
    copy is installed (a worktree beside an editable install)."""
    env = dict(os.environ)
    first = sys.path[0] if sys.path and sys.path[0] else os.getcwd()
    code = str(Path(__file__).resolve().parents[2])  # the folder holding hydra_plugins/
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [first, code, env.get("PYTHONPATH")]))
    return env
