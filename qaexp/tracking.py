"""Tracking: send a run's config, per-step and per-epoch numbers to experiment trackers.

The run directory files are always written (qaexp.rundir); trackers are extra destinations,
chosen by the `logger` config group and created on the main process only. Every tracker
uses the same metric names: `train/*` per optimizer step (x axis `global_step`), `eval/*`
and `epoch/*` per epoch (x axis `epoch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qaexp.config import QAExpConfig
from qaexp.errors import QAExpError

# metrics.jsonl key -> tracker key, for the per-epoch record.
EPOCH_METRICS = {
    "exact_match": "eval/exact_match",
    "f1": "eval/f1",
    "eval_seconds": "eval/seconds",
    "eval_samples_per_second": "eval/features_per_second",
    "train_loss": "epoch/train_loss",
    "train_seconds": "epoch/train_seconds",
    "train_samples_per_second": "epoch/train_features_per_second",
    "train_tokens_per_second": "epoch/train_tokens_per_second",
}
# summary.json keys a tracker's run summary carries (config and versions are logged elsewhere).
SUMMARY_KEYS = (
    "status", "best_epoch", "best_exact_match", "best_f1", "final_exact_match", "final_f1",
    "epochs", "train_examples", "train_features", "eval_examples", "eval_features",
    "train_seconds", "wall_seconds",
)  # fmt: skip


@dataclass(frozen=True)
class RunLabels:
    """How a run is grouped and named on a dashboard. Derived from the launcher (Hydra's sweep
    dir and the job's overrides), so it is passed beside the config, never written into it."""

    group: str
    name: str


class Tracker:
    """Receives a run's numbers; a subclass sends them somewhere. Every hook is optional."""

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        """Per optimizer step (every trainer.log_every_n_steps): train loss, lr, throughput."""

    def log_epoch(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        """After each epoch's evaluation: the metrics.jsonl record of that epoch."""

    def finish(self, status: str, summary: dict) -> None:
        """Always called once, also when the run fails (status 'failed' or 'interrupted')."""


def epoch_metrics(record: dict) -> dict[str, float]:
    """A metrics.jsonl record under tracker names (`eval/f1`, `epoch/train_loss`, ...)."""
    return {name: record[key] for key, name in EPOCH_METRICS.items() if record.get(key) is not None}


def summary_metrics(summary: dict) -> dict:
    """The summary.json values a dashboard shows for a finished run."""
    return {key: summary[key] for key in SUMMARY_KEYS if summary.get(key) is not None}


def resolve_labels(cfg: QAExpConfig, run_dir: Path, labels: RunLabels | None) -> RunLabels:
    """`logger.group` / `logger.run_name` when set, else the launcher's labels, else the run
    directory's name (a run started from Python, outside Hydra)."""
    fallback = labels or RunLabels(group=Path(run_dir).name, name=Path(run_dir).name)
    return RunLabels(
        group=cfg.logger.group or fallback.group, name=cfg.logger.run_name or fallback.name
    )


def make_trackers(
    cfg: QAExpConfig, run_dir: Path, config: dict, is_main: bool, labels: RunLabels | None = None
) -> list[Tracker]:
    """The trackers named by `logger.name` (none on processes other than the main one).

    `config` is the resolved, nested config as the run recorded it; `labels` come from the
    launcher (qaexp.__main__ derives them from Hydra).
    """
    if not is_main or cfg.logger.name == "none":
        return []
    if cfg.logger.name == "wandb":
        from qaexp.wandb_tracker import start_wandb

        tracker = start_wandb(cfg.logger, run_dir, config, resolve_labels(cfg, run_dir, labels))
        return [tracker] if tracker else []
    if cfg.logger.name == "tensorboard":
        from qaexp.tensorboard_tracker import TensorBoardTracker

        return [TensorBoardTracker(run_dir, config)]
    raise QAExpError(
        f"logger.name={cfg.logger.name}: unknown logger; use logger=wandb, logger=tensorboard "
        "or logger=none (the options in conf/logger/)."
    )
