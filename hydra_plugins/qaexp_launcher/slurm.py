"""`hydra/launcher=slurm`: Hydra's submitit SLURM launcher, with one change for jobs of
several tasks. Hydra imports plugin modules at start, so this stays light (no torch)."""

from __future__ import annotations

import os
from typing import Any

from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)

# What ranks other than 0 of one job add to their Hydra overrides (as qaexp.__main__ does
# under torchrun/srun): no `.hydra/` and no log file of their own in the shared run
# directory, only warnings on their console.
OTHER_RANK_OVERRIDES = (
    "hydra.output_subdir=null",
    "hydra.job_logging.root.handlers=[console]",
    "hydra.job_logging.root.level=WARNING",
)


class SlurmLauncher(SubmititSlurmLauncher):
    """Hydra's submitit SLURM launcher, with the job's tasks other than rank 0 writing no
    `.hydra/` and no log lines into the shared run directory."""

    def __call__(self, sweep_overrides: list[str], *args: Any, **kwargs: Any) -> Any:
        if os.environ.get("SLURM_PROCID", "0") != "0":
            sweep_overrides = [*sweep_overrides, *OTHER_RANK_OVERRIDES]
        return super().__call__(sweep_overrides, *args, **kwargs)
