"""Launch: where a run executes, and how its processes agree on one run directory.

Three ways a run executes:
- one process (``hardware.num_processes=1``): the Hydra job trains in-process;
- N workers started here (``hardware.num_processes=N``, or all visible GPUs with
  ``hardware=multi_gpu``): the Hydra job resolves the config and builds the features once,
  then starts N workers through torch's elastic launcher (the engine behind torchrun and
  ``accelerate launch``). Workers never run Hydra; they receive the resolved config and share
  the job's run directory;
- an external launch (torchrun, ``accelerate launch``, SLURM ``srun``/submitit with several
  tasks): every process already is a rank, so each joins the process group in-process.
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from qaexp.config import HardwareConfig, QAExpConfig, as_dict, from_dict
from qaexp.console import ConsoleFilter, quiet_libraries
from qaexp.errors import QAExpError, RunInterrupted
from qaexp.tracking import RunLabels
from qaexp.tracking.lock import Role, RunFolderLock, run_folder_lock
from qaexp.training import train
from qaexp.training.runtime import resolve_device
from qaexp.training.setup import prepare_data
from qaexp.training.state import completed_summary

log = logging.getLogger(__name__)

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


# --- external launches ----------------------------------------------------------------------


def external_world_size() -> int:
    """World size of a launch that started this process as one rank (torchrun, accelerate
    launch, srun); 1 when this process was started on its own."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return int(os.environ["WORLD_SIZE"])
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ["SLURM_NTASKS"])
    return 1


def external_rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def export_slurm_env() -> None:
    """Under srun (plain, or the submitit launcher's tasks) set the env:// variables
    torch.distributed reads from SLURM's own: rank 0 hosts the store on the job's first node,
    on a port derived from the job and step ids (the same in every task)."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    from submitit.slurm.slurm import SlurmJobEnvironment  # parses SLURM's node lists

    job = SlurmJobEnvironment()
    step = os.environ.get("SLURM_STEP_ID", "0")
    port = random.Random(f"{job.job_id}.{step}").randint(20_000, 60_000)
    os.environ["MASTER_ADDR"] = job.hostnames[0]
    os.environ.setdefault("MASTER_PORT", str(port))
    os.environ["RANK"] = str(job.global_rank)
    os.environ["WORLD_SIZE"] = str(job.num_tasks)
    os.environ["LOCAL_RANK"] = str(job.local_rank)
    os.environ["LOCAL_WORLD_SIZE"] = str(job.num_tasks // job.num_nodes)
    if job.num_tasks > 1:
        share_cpu_threads(job.num_tasks // job.num_nodes)


def share_cpu_threads(tasks_per_node: int) -> None:
    """Give each task of a node its share of the CPU threads (SLURM_CPUS_PER_TASK, else the
    cores this process may use shared by the node's tasks), as Accelerate would, but set
    before Accelerate looks, so that no rank prints its OMP_NUM_THREADS warning."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    threads = int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))
    threads = threads or max(1, len(os.sched_getaffinity(0)) // tasks_per_node)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def check_rank_has_its_gpu(cfg: HardwareConfig) -> None:
    """Each rank of an external launch trains on GPU number LOCAL_RANK of those it sees. SLURM
    with --gpus-per-task binds each task to its own GPU(s), so local rank 1 sees one GPU and
    would fail deep inside CUDA: say what to ask for instead."""
    if resolve_device(cfg) != "gpu":
        return
    local_rank, visible = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if local_rank < visible:
        return
    raise QAExpError(
        f"This process is local rank {local_rank} of its node but sees {visible} GPU(s) "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): every "
        "process of a node must see all of the node's GPUs and takes the one at its local "
        "rank. Under SLURM ask for --gpus-per-node=N with --ntasks-per-node=N (with "
        "--gpus-per-task add --gpu-bind=none); with the submitit launcher set "
        "hydra.launcher.gpus_per_node=N and hydra.launcher.tasks_per_node=N."
    )


def uses_agent_store() -> bool:
    """Started by torchrun (or accelerate launch) whose elastic agent hosts the store."""
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"


def agent_store(timeout_s: float = 60) -> torch.distributed.TCPStore:
    return torch.distributed.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def join_elastic_process_group() -> None:
    """Under torchrun, join the process group through the agent's store with a prefix for
    this restart. The agent keeps one store for all restarts (--max-restarts) and torch's own
    env:// join adds no such prefix, so restarted workers would read the addresses the
    previous workers left there and fail to connect (pytorch/pytorch#135712, #167288).
    No backend is named: torch picks gloo for CPU tensors and NCCL for CUDA ones, and the
    Accelerator then uses this group."""
    if not uses_agent_store() or torch.distributed.is_initialized():
        return
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    torch.distributed.init_process_group(
        store=torch.distributed.PrefixStore(f"qaexp/attempt_{attempt}", agent_store()),
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
    )


def agreed_run_stamp() -> str:
    """The run directory's name below outputs/runs (or outputs/multirun), the same on every
    rank and every restart of one launch. Hydra calls it once per launch and caches it in the
    config (the resolver is registered with use_cache=True), so the jobs of a sweep, submitit's
    job processes and requeued jobs all reuse the launcher's value.

    - torchrun / accelerate launch: the first rank to ask sets it in the elastic agent's store,
      which outlives worker restarts (--max-restarts), so restarted workers find it again;
      with one process too (--nproc_per_node=1), whose restarts resume in the same folder;
    - several SLURM tasks (srun): `slurm-JOBID-STEPID`, without a date, so a requeue (the same
      ids, maybe after midnight) lands in the same folder;
    - otherwise DATE/TIME from this process's clock.
    """
    now = datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    if uses_agent_store():
        return agent_store().compare_set("qaexp/run_stamp", "", now).decode()
    if external_world_size() == 1:
        return now
    if "SLURM_JOB_ID" in os.environ:
        return f"slurm-{os.environ['SLURM_JOB_ID']}-{os.environ.get('SLURM_STEP_ID', '0')}"
    return now


def requeue_after_stop(signum: int) -> bool:
    """After SIGUSR2 (what SLURM sends, when asked with --signal=USR2@SECONDS as submitit does,
    before a time limit or a preemption) stopped a run with its state saved: put the SLURM job
    back in the queue, where it resumes from that state. Returns True when requeued.

    Rank 0 asks; SLURM then stops every task. Under the submitit launcher its own handler
    does it (it counts timeouts against hydra.launcher.max_num_timeout and exits); otherwise
    `scontrol requeue`. Any other signal (SIGTERM: scancel, or a preemption that SLURM
    requeues itself) only stops the run.
    """
    job_id = os.environ.get("SLURM_JOB_ID")
    if signum != signal.SIGUSR2 or job_id is None:
        return False
    if external_rank() != 0:
        return True
    submitit_handler = signal.getsignal(signal.SIGUSR2)
    if callable(submitit_handler):
        from submitit.core.utils import UncompletedJobError

        try:
            submitit_handler(signal.SIGUSR2, None)  # checkpoints, requeues, exits
        except UncompletedJobError as err:  # out of requeues (hydra.launcher.max_num_timeout)
            log.warning(
                "SLURM job %s is not requeued (%s): it ends here with its state saved.",
                job_id,
                str(err).removeprefix("Job not requeued because: ").rstrip("."),
            )
            return False
        except SystemExit:  # requeued: the handler exits once SLURM has taken the job back
            log.warning("Requeueing SLURM job %s: it resumes from the saved state", job_id)
            raise
    log.warning("Requeueing SLURM job %s: it resumes from the saved state", job_id)
    requeued = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if requeued.returncode != 0:
        log.warning("scontrol requeue %s failed: %s", job_id, requeued.stderr.strip())
    return requeued.returncode == 0


def quiet_other_ranks(rank: int) -> None:
    """Only the main process logs below WARNING."""
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("qaexp").setLevel(logging.WARNING)


# --- workers started here -------------------------------------------------------------------


def requested_processes(cfg: HardwareConfig) -> int:
    """How many workers to start: hardware.num_processes, or (0 = all) the visible GPUs."""
    if cfg.num_processes == 0:
        return max(torch.cuda.device_count(), 1) if resolve_device(cfg) == "gpu" else 1
    return cfg.num_processes


def _worker(config: dict, run_dir: str, labels: RunLabels | None) -> dict:
    """Entry point of one worker: rebuild the typed config and train (no Hydra here)."""
    rank = int(os.environ.get("RANK", "0"))
    quiet_libraries()
    console = logging.StreamHandler()
    console.addFilter(ConsoleFilter())
    handlers = [console]
    if rank == 0:
        handlers.append(logging.FileHandler(Path(run_dir) / "qaexp.log"))
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, handlers=handlers, force=True)
    quiet_other_ranks(rank)
    try:
        # Rank 0 holds the run folder's training lock, so workers that outlive a killed
        # launcher still keep a second run out of the folder.
        with run_folder_lock(Path(run_dir), Role.training) if rank == 0 else nullcontext():
            return train(from_dict(config), Path(run_dir), labels)
    except RunInterrupted as err:  # the parent prints the resume command
        sys.exit(err.exit_code)
    except QAExpError as err:
        if rank == 0:
            log.error("%s", err)
        sys.exit(2)


def launch_workers(
    run_dir: Path, config: dict, num_processes: int, labels: RunLabels | None = None
) -> dict:
    """Start `num_processes` workers on this machine and return rank 0's summary.

    The rendezvous store listens on a free loopback port picked by the OS, so concurrent
    jobs never collide, and the port and processes are gone when this returns.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    launch_config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=num_processes,
        run_id=f"qaexp-{os.getpid()}-{run_dir.name}",
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    log.info("Starting %d worker processes (torch elastic launcher)", num_processes)
    try:
        results = elastic_launch(launch_config, _worker)(config, str(run_dir), labels)
    except SignalException as err:  # the launcher was stopped; it stopped the workers
        raise _interrupted(signal.Signals(err.sigval), run_dir) from None
    except ChildFailedError as err:
        raise _worker_failure(err.failures, num_processes, run_dir) from None
    return results[0]


def _worker_failure(failures: dict, num_processes: int, run_dir: Path) -> Exception:
    """What the parent raises when workers ended early: a stop (every worker exited 143/130
    after saving the state), one of qaexp's own errors (exit 2, already reported by the
    worker), or a crash."""
    rank, failure = next(iter(sorted(failures.items())))
    codes = {f.exitcode for f in failures.values()}
    stops = {128 + int(s): s for s in (signal.SIGTERM, signal.SIGINT)}
    if codes <= set(stops) | {-int(s) for s in stops.values()}:
        return _interrupted(stops.get(failure.exitcode, signal.SIGTERM), run_dir)
    if codes == {2}:
        return QAExpError(f"Worker rank {rank} of {num_processes} stopped: see its message above.")
    return RuntimeError(
        f"Worker rank {rank} of {num_processes} failed (exit code {failure.exitcode}); "
        f"see its traceback above and the log in {run_dir}."
    )


def _interrupted(sig: signal.Signals, run_dir: Path) -> RunInterrupted:
    """A stop signal ended a multi-process run: the exit contract of a single process."""
    return RunInterrupted(
        f"Stopped by {sig.name}: the workers saved the training state in "
        f"{run_dir / 'state'} at their last safe point.",
        128 + int(sig),
    )


@contextmanager
def hold_run_folder(run_dir: Path) -> Iterator[RunFolderLock | None]:
    """The run folder's lock (qaexp.tracking.lock) for the job: taken by its process, or by
    rank 0 of an external launch (the other ranks share the folder with it)."""
    if external_world_size() > 1 and external_rank() != 0:
        yield None
        return
    with run_folder_lock(run_dir) as lock:
        yield lock


def run_job(cfg: QAExpConfig, run_dir: Path, labels: RunLabels | None = None) -> dict:
    """Run one job here, in workers, or as one rank of an external launch, holding the run
    folder's lock: a second process for the same folder is refused (RunFolderBusy). `labels`
    name the run on dashboards (see qaexp.tracking). A job continuing a run that already
    completed (trainer.resume=true, a requeue) returns that run's summary and changes
    nothing."""
    with hold_run_folder(run_dir) as lock:
        return _run_job(cfg, run_dir, labels, lock)


def _run_job(
    cfg: QAExpConfig, run_dir: Path, labels: RunLabels | None, lock: RunFolderLock | None
) -> dict:
    if not cfg.trainer.resume_from:
        done = completed_summary(run_dir, cfg.trainer.resume, as_dict(cfg))
        if done is not None:
            log.info(
                "%s already completed: nothing to resume, its results stay as they are", run_dir
            )
            return done
    world = external_world_size()
    if world > 1:
        export_slurm_env()
        check_rank_has_its_gpu(cfg.hardware)
        join_elastic_process_group()
        quiet_other_ranks(external_rank())
        log.info("Joining an external launch of %d processes", world)
        return train(cfg, run_dir, labels)
    processes = requested_processes(cfg.hardware)
    if processes == 1:
        return train(cfg, run_dir, labels)
    # Validate and build (or load cached) features once, before any worker starts.
    prepare_data(cfg)
    if lock is not None:
        lock.hand_training_to_workers()
    return launch_workers(run_dir, as_dict(cfg), processes, labels)
