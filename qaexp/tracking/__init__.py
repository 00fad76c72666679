"""Tracking: where a run's numbers go. The run directory files are always written
(`qaexp.tracking.rundir`); trackers (wandb, TensorBoard) are extra destinations, chosen by
the `logger` config group and created on the main process only."""

from __future__ import annotations

from pathlib import Path

from qaexp.config import LoggerName, QAExpConfig
from qaexp.tracking.base import (
    RunLabels,
    Tracker,
    epoch_metrics,
    summary_metrics,
)

__all__ = [
    "RunLabels",
    "Tracker",
    "epoch_metrics",
    "make_trackers",
    "resolve_labels",
    "summary_metrics",
]


def resolve_labels(cfg: QAExpConfig, run_dir: Path, labels: RunLabels | None) -> RunLabels:
    """`logger.group` / `logger.run_name` when set, else the launcher's labels, else the run
    directory's name (a run started from Python, outside Hydra)."""
    fallback = labels or RunLabels(group=Path(run_dir).name, name=Path(run_dir).name)
    return RunLabels(
        group=cfg.logger.group or fallback.group, name=cfg.logger.run_name or fallback.name
    )


def make_trackers(
    cfg: QAExpConfig,
    run_dir: Path,
    config: dict,
    is_main: bool,
    labels: RunLabels | None = None,
    resume_step: int | None = None,
) -> list[Tracker]:
    """The trackers named by `logger.name` (none on processes other than the main one).

    `config` is the resolved, nested config as the run recorded it; `labels` come from the
    launcher (qaexp.__main__ derives them from Hydra); `resume_step`: the optimizer step a
    job resuming its own state continues from (its dashboard run continues there).
    """
    if not is_main or cfg.logger.name == LoggerName.none:
        return []
    if cfg.logger.name == LoggerName.wandb:
        from qaexp.tracking.wandb_tracker import start_wandb  # imports wandb only when used

        labels = resolve_labels(cfg, run_dir, labels)
        tracker = start_wandb(cfg.logger, run_dir, config, labels, resume_step)
        return [tracker] if tracker else []
    from qaexp.tracking.tensorboard_tracker import TensorBoardTracker

    return [TensorBoardTracker(run_dir, config, resume_step)]
