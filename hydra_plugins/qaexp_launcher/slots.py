"""Device slots of the parallel launcher: which GPUs and how many CPU threads each concurrent
job gets, and the environment that confines a job to them."""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

from qaexp.tracking.rundir import JOB_DEVICES_ENV  # the job records it in summary.json


class SlotError(ValueError):
    """A launcher setting that cannot be satisfied (names the key and what to do)."""


@dataclass(frozen=True)
class Slot:
    """One place a job can run: its GPUs (empty on a CPU-only machine) and its threads."""

    index: int
    gpus: tuple[str, ...]
    threads: int

    def describe(self) -> dict:
        return {
            "slot": self.index,
            "cuda_visible_devices": ",".join(self.gpus) or None,
            "threads": self.threads,
        }

    def env(self) -> dict[str, str]:
        """Environment overrides that confine a job to this slot."""
        threads = str(self.threads)
        env = {
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "RAYON_NUM_THREADS": threads,  # the Rust thread pool of the fast tokenizers
            "TOKENIZERS_PARALLELISM": "true" if self.threads > 1 else "false",
            JOB_DEVICES_ENV: json.dumps(self.describe()),
        }
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpus)
        return env


def visible_gpus() -> list[str]:
    """The GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else every device torch
    counts (through NVML, without creating a CUDA context in the launcher)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def available_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def plan_slots(
    devices: Sequence[str | int] | None,
    gpus_per_job: int,
    jobs: int | None,
    cpus_per_job: int | None,
    cpus: int,
) -> list[Slot]:
    """The slots jobs run in. With GPUs, each slot holds `gpus_per_job` of `devices`
    (at most `jobs` slots); without, `jobs` slots (default: one per `cpus_per_job` cores).
    Threads per job: `cpus_per_job`, default the cores shared evenly among the slots."""
    gpus = [str(d) for d in (visible_gpus() if devices is None else devices)]
    for key, value in (
        ("gpus_per_job", gpus_per_job),
        ("jobs", jobs),
        ("cpus_per_job", cpus_per_job),
    ):
        if value is not None and value < 1:
            raise SlotError(f"hydra.launcher.{key}={value}: must be a positive integer.")
    if gpus:
        if gpus_per_job > len(gpus):
            raise SlotError(
                f"hydra.launcher.gpus_per_job={gpus_per_job} but only {len(gpus)} GPU(s) are "
                f"available ({','.join(gpus)}); lower gpus_per_job or list more "
                "hydra.launcher.devices."
            )
        count = len(gpus) // gpus_per_job if jobs is None else min(jobs, len(gpus) // gpus_per_job)
        groups = [tuple(gpus[i * gpus_per_job : (i + 1) * gpus_per_job]) for i in range(count)]
    else:
        count = jobs or max(1, cpus // (cpus_per_job or 1))
        groups = [()] * count
    threads = cpus_per_job or max(1, cpus // count)
    return [Slot(i, group, threads) for i, group in enumerate(groups)]
