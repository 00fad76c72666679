"""TensorBoard: scalars and the run's hyperparameters in `RUN_DIR/tensorboard/`.

`tensorboard --logdir outputs/multirun/DATE/TIME` then shows every job of a sweep, and its
HParams tab compares them by the resolved config and best EM/F1. A resumed job (trainer.resume,
a SLURM requeue) writes into the same folder from the optimizer step where it continues;
steps logged after that point by the interrupted segment are purged, so each step shows once.
"""

from __future__ import annotations

from pathlib import Path

from qaexp.config import flatten
from qaexp.errors import QAExpError
from qaexp.tracking.base import Tracker, epoch_metrics

TENSORBOARD_DIR = "tensorboard"


def flat_hparams(config: dict) -> dict[str, int | float | str | bool]:
    """The nested config as dotted keys with the scalar types TensorBoard's HParams accepts
    (None and lists as text)."""
    return {
        key: value if isinstance(value, int | float | str | bool) else str(value)
        for key, value in flatten(config).items()
    }


class TensorBoardTracker(Tracker):
    """Writes a run's scalars with torch's SummaryWriter."""

    def __init__(self, run_dir: Path, config: dict, resume_step: int | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise QAExpError(
                "logger=tensorboard needs the `tensorboard` package: `pip install tensorboard` "
                "(or `pip install qaexp[tensorboard]`); or use logger=wandb or logger=none."
            ) from err
        # purge_step: TensorBoard hides this folder's events at or after the step where the
        # resumed run continues (train/* steps are optimizer steps).
        self.writer = SummaryWriter(
            log_dir=str(Path(run_dir) / TENSORBOARD_DIR),
            purge_step=None if resume_step is None else resume_step + 1,
        )
        self.config = config

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        for key, value in epoch_metrics(metrics).items():
            self.writer.add_scalar(key, value, epoch)

    def finish(self, status: str, summary: dict) -> None:
        try:
            best = {
                f"hparam/{key}": summary[key]
                for key in ("best_f1", "best_exact_match")
                if summary.get(key) is not None
            }
            self.writer.add_hparams(
                {**flat_hparams(self.config), "status": status}, best, run_name="."
            )
        finally:
            self.writer.close()
