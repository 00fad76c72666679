"""Launch: where a run executes. Decides devices and precision, builds the Accelerator, and
starts the worker processes of a multi-process run.

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
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, DynamoBackend, TorchDynamoPlugin

from qaexp.config import Device, HardwareConfig, MixedPrecision, QAExpConfig
from qaexp.errors import QAExpError
from qaexp.tracking import RunLabels

log = logging.getLogger(__name__)

LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def resolve_device(cfg: HardwareConfig) -> str:
    """'cpu' or 'gpu'; hardware.device=gpu without a visible CUDA device is an error."""
    cuda = torch.cuda.is_available()
    if cfg.device == Device.gpu and not cuda:
        raise QAExpError(
            "hardware=gpu (hardware.device=gpu) but no CUDA device is visible to PyTorch "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). Use "
            "hardware=cpu, or hardware=auto to pick the GPU only when there is one."
        )
    if cfg.device == Device.auto:
        return "gpu" if cuda else "cpu"
    return cfg.device.value


def resolve_mixed_precision(cfg: HardwareConfig, device: str) -> str:
    """'no', 'fp16' or 'bf16' for the device; an impossible request is an error."""
    wanted = cfg.mixed_precision
    if wanted == MixedPrecision.auto:
        if device == "cpu":
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device == "cpu" and wanted == MixedPrecision.fp16:
        raise QAExpError(
            "hardware.mixed_precision=fp16 is not available on the CPU (fp16 autocast and loss "
            "scaling need a GPU). Use hardware.mixed_precision=no, or bf16 on a CPU that "
            "supports it, or run on a GPU (hardware=gpu)."
        )
    if device == "gpu" and wanted == MixedPrecision.bf16 and not torch.cuda.is_bf16_supported():
        raise QAExpError(
            f"hardware.mixed_precision=bf16 but this GPU ({torch.cuda.get_device_name()}) does "
            "not support bfloat16; use hardware.mixed_precision=fp16."
        )
    return wanted.value


def dataloader_workers(cfg: HardwareConfig, device: str) -> int:
    """hardware.dataloader_workers, or by default none on the CPU (a worker would take a core
    from the model's maths) and up to 4 per GPU process (collating overlaps GPU compute)."""
    if cfg.dataloader_workers is not None:
        return cfg.dataloader_workers
    if device == "cpu":
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(4, (cpus or 1) // (2 * cfg.num_processes))


def compile_plugin(backend: str, dynamic: bool | None) -> TorchDynamoPlugin:
    """Accelerate's torch.compile settings (``prepare`` compiles the model with them)."""
    try:
        plugin = TorchDynamoPlugin(backend=backend, dynamic=dynamic)
    except ValueError as err:
        choices = ", ".join(b.value.lower() for b in DynamoBackend if b != DynamoBackend.NO)
        raise QAExpError(
            f"trainer.compile_backend={backend} is not a torch.compile backend that Accelerate "
            f"knows; use one of: {choices} (inductor is the default and the fast one)."
        ) from err
    log.info("torch.compile: backend %s, dynamic=%s", backend, dynamic)
    return plugin


def make_accelerator(
    cfg: HardwareConfig,
    gradient_accumulation_steps: int,
    compile_model: bool = False,
    compile_dynamic: bool | None = None,
    compile_backend: str = "inductor",
) -> Accelerator:
    """The Accelerator for this hardware: precision, TF32, non-blocking copies from pinned
    memory on GPU, and torch.compile (applied by ``prepare``) when ``compile_model`` is set."""
    device = resolve_device(cfg)
    precision = resolve_mixed_precision(cfg, device)
    if device == "gpu" and cfg.tf32:
        # TF32 tensor cores for fp32 matmuls (Ampere+): ~same accuracy, several times faster.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dynamo = compile_plugin(compile_backend, compile_dynamic) if compile_model else None
    return Accelerator(
        cpu=device == "cpu",
        mixed_precision=precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        # Pinned host batches only overlap with compute when the copy does not block.
        dataloader_config=DataLoaderConfiguration(non_blocking=device == "gpu"),
        dynamo_plugin=dynamo,
    )


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


def agreed_run_stamp() -> str:
    """The run directory's name below outputs/runs (or outputs/multirun), the same on every
    rank and every restart of one launch. Hydra calls it once per launch and caches it in the
    config (the resolver is registered with use_cache=True), so the jobs of a sweep, submitit's
    job processes and requeued jobs all reuse the launcher's value.

    - torchrun / accelerate launch: the first rank to ask sets it in the elastic agent's store,
      which outlives worker restarts (--max-restarts), so restarted workers find it again;
    - several SLURM tasks (srun): `slurm-JOBID-STEPID`, without a date, so a requeue (the same
      ids, maybe after midnight) lands in the same folder;
    - otherwise DATE/TIME from this process's clock.
    """
    now = datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    if external_world_size() == 1:
        return now
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true":
        store = torch.distributed.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
            timeout=datetime.timedelta(seconds=60),
        )  # fmt: skip
        return store.compare_set("qaexp/run_stamp", "", now).decode()
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
    log.warning("Requeueing SLURM job %s: it resumes from the saved state", job_id)
    submitit_handler = signal.getsignal(signal.SIGUSR2)
    if callable(submitit_handler):
        submitit_handler(signal.SIGUSR2, None)  # checkpoints, requeues, exits
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
    from omegaconf import OmegaConf

    from qaexp.train import train

    rank = int(os.environ.get("RANK", "0"))
    handlers = [logging.StreamHandler()]
    if rank == 0:
        handlers.append(logging.FileHandler(Path(run_dir) / "qaexp.log"))
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, handlers=handlers, force=True)
    quiet_other_ranks(rank)
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(QAExpConfig), config))
    return train(cfg, Path(run_dir), labels)


def launch_workers(
    run_dir: Path, config: dict, num_processes: int, labels: RunLabels | None = None
) -> dict:
    """Start `num_processes` workers on this machine and return rank 0's summary.

    The rendezvous store listens on a free loopback port picked by the OS, so concurrent
    jobs never collide, and the port and processes are gone when this returns.
    """
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
    except ChildFailedError as err:
        rank, failure = next(iter(sorted(err.failures.items())))
        raise RuntimeError(
            f"Worker rank {rank} of {num_processes} failed (exit code {failure.exitcode}); "
            f"see its traceback above and the log in {run_dir}."
        ) from None
    return results[0]


def run_job(cfg: QAExpConfig, run_dir: Path, labels: RunLabels | None = None) -> dict:
    """Run one job here, in workers, or as one rank of an external launch. `labels` name
    the run on dashboards (see qaexp.tracking)."""
    from qaexp.train import prepare_data, resolved_config, train

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
    return launch_workers(run_dir, resolved_config(cfg), processes, labels)
