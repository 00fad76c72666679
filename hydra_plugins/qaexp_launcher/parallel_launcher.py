"""`hydra/launcher=parallel`: a sweep's jobs as concurrent subprocesses on this machine.

Jobs wait in a queue and run `jobs` at a time, each in a slot of its own: `gpus_per_job` GPUs
from `devices` (CUDA_VISIBLE_DEVICES set per job; the next job starts when a slot frees up)
or, without GPUs, `cpus_per_job` threads. Each job runs through Hydra's `run_job` in a
process of its own (the same output folder, .hydra/ files, logging and callbacks as the basic
launcher), so a failed job never stops the others: a fresh interpreter for a GPU slot, a fork
of this process (imports done once) for a CPU slot unless `start_method=spawn`. See
jobqueue.py for Ctrl-C / SIGTERM.
"""

import functools
import logging
import os
import sys
import tempfile
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
        with tempfile.TemporaryDirectory(prefix="qaexp-launcher-") as tmp:
            jobs = [
                self._queued_job(initial_job_idx + i, list(overrides), Path(tmp), str(sweep_dir))
                for i, overrides in enumerate(job_overrides)
            ]
            queue = JobQueue(slots, float(p["stop_timeout_s"]))
            stopped = queue.run(jobs, lambda job: results.__setitem__(job.index, self._ended(job)))
        if stopped is not None:
            sys.exit(128 + stopped)
        return [results[job.index] for job in jobs]

    def _queued_job(self, index: int, overrides: list[str], tmp: Path, sweep_dir: str) -> QueuedJob:
        """Compose the job's config here (bad overrides fail before anything starts) and
        write what its process needs."""
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
        files = (tmp / f"{index}.pkl", tmp / f"{index}.result")  # what the job reads, writes
        files[0].write_bytes(cloudpickle.dumps(payload))
        argv = [sys.executable, "-m", "hydra_plugins.qaexp_launcher.job", *map(str, files)]
        fork = None
        if self.params["start_method"] == StartMethod.auto:
            fork = functools.partial(run_forked, *map(str, files))
        job = QueuedJob(index, argv, child_env(), os.getcwd(), fork=fork)
        job.extra.update(config=config, overrides=overrides, result=files[1])
        return job

    def _ended(self, job: QueuedJob) -> JobReturn:
        """The job's JobReturn. A job that wrote none (stopped by a signal, killed, crashed)
        gets a failed one here, and the job-end callbacks its process never reached."""
        import pickle

        result: Path = job.extra["result"]
        if result.is_file():
            ret = pickle.loads(result.read_bytes())
            log.info("#%d %s (exit %d)", job.index, ret.status.name.lower(), job.returncode)
            return ret
        config = job.extra["config"]
        output_dir = Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)
        error = RuntimeError(
            f"Sweep job #{job.index} ({' '.join(job.extra['overrides'])}) ended with exit code "
            f"{job.returncode} before reporting a result; see {output_dir / 'qaexp.log'}."
        )
        log.warning("%s", error)
        ret = JobReturn(
            overrides=job.extra["overrides"],
            working_dir=os.getcwd(),
            status=JobStatus.FAILED,
            _return_value=error,
        )
        with read_write(config), open_dict(config):
            config.hydra.runtime.output_dir = str(output_dir.resolve())
        self.hydra_context.callbacks.on_job_end(config=config, job_return=ret)
        return ret


def run_forked(payload_path: str, result_path: str) -> int:
    """A job in a process forked from the launcher: what `python -m ...job` runs."""
    from hydra_plugins.qaexp_launcher.job import main

    return main(payload_path, result_path)


def child_env() -> dict[str, str]:
    """This process's environment, with the folder this process imported its code from
    first on the job's path (as under `python -m`, where it is the current folder)."""
    env = dict(os.environ)
    first = sys.path[0] if sys.path and sys.path[0] else os.getcwd()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [first, env.get("PYTHONPATH")]))
    return env
