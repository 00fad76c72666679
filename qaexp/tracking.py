"""Tracking: send a run's config, per-step and per-epoch numbers to experiment trackers.

The run directory files are always written (qaexp.rundir); trackers are extra destinations,
chosen by the `logger` config group and created on the main process only.
"""

from __future__ import annotations

from pathlib import Path

from qaexp.config import QAExpConfig
from qaexp.errors import QAExpError


class Tracker:
    """Receives a run's numbers; a subclass sends them somewhere. Every hook is optional."""

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        """Per optimizer step (every trainer.log_every_n_steps): train loss, lr, throughput."""

    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        """After each epoch's evaluation: the metrics.jsonl record of that epoch."""

    def finish(self, status: str, summary: dict) -> None:
        """Always called once, also when the run fails (status 'failed' or 'interrupted')."""


def make_trackers(cfg: QAExpConfig, run_dir: Path, config: dict, is_main: bool) -> list[Tracker]:
    """The trackers named by `logger.name` (none on processes other than the main one)."""
    if not is_main or cfg.logger.name == "none":
        return []
    raise QAExpError(f"logger.name={cfg.logger.name}: unknown logger; use logger=none.")
