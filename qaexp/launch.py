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
import signal
import sys
from functools import cache
from pathlib import Path

import torch

from qaexp.config import HardwareConfig, QAExpConfig, as_dict, from_dict
from qaexp.errors import QAExpError, RunInterrupted
from qaexp.tracking import RunLabels
from qaexp.training import train
from qaexp.training.runtime import resolve_device
from qaexp.training.setup import prepare_data

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
    """Under srun (e.g. the submitit SLURM launcher with one task per GPU) set the env://
    variables torch.distributed reads, from SLURM's own."""
    if "RANK" in os.environ or "SLURM_PROCID" not in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export()


@cache
def agreed_run_stamp() -> str:
    """A DATE/TIME stamp for the run directory, the same on every rank of one launch.

    Under torchrun/accelerate launch the ranks agree through the elastic agent's store (the
    first rank to ask sets it); under SLURM the job and step ids name the run. A process
    started on its own uses its own clock.
    """
    now = datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    if external_world_size() == 1:
        return now
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true":
        store = torch.distributed.TCPStore(
            os.environ["MASTER_ADDR"],
            int(os.environ["MASTER_PORT"]),
            is_master=False,
            timeout=datetime.timedelta(seconds=60),
        )
        key = f"qaexp/run_stamp/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
        return store.compare_set(key, "", now).decode()
    if "SLURM_JOB_ID" in os.environ:
        return (
            f"{now[:10]}/slurm-{os.environ['SLURM_JOB_ID']}-{os.environ.get('SLURM_STEP_ID', '0')}"
        )
    return now


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
    handlers = [logging.StreamHandler()]
    if rank == 0:
        handlers.append(logging.FileHandler(Path(run_dir) / "qaexp.log"))
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, handlers=handlers, force=True)
    quiet_other_ranks(rank)
    try:
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


def run_job(cfg: QAExpConfig, run_dir: Path, labels: RunLabels | None = None) -> dict:
    """Run one job here, in workers, or as one rank of an external launch. `labels` name
    the run on dashboards (see qaexp.tracking)."""
    world = external_world_size()
    if world > 1:
        export_slurm_env()
        quiet_other_ranks(external_rank())
        log.info("Joining an external launch of %d processes", world)
        return train(cfg, run_dir, labels)
    processes = requested_processes(cfg.hardware)
    if processes == 1:
        return train(cfg, run_dir, labels)
    # Validate and build (or load cached) features once, before any worker starts.
    prepare_data(cfg)
    return launch_workers(run_dir, as_dict(cfg), processes, labels)
