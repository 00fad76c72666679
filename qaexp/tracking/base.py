"""What every tracker shares: the hooks, the metric names, and how runs are labelled.

Every tracker uses the same metric names: `train/*` per optimizer step (x axis
`global_step`), `eval/*` and `epoch/*` per epoch (x axis `epoch`).
"""

from __future__ import annotations

from dataclasses import dataclass

from qaexp.evaluation import SQUAD_V2_KEYS

# metrics.jsonl key -> tracker key, for the per-epoch record.
EPOCH_METRICS = {
    "exact_match": "eval/exact_match",
    "f1": "eval/f1",
    "eval_seconds": "eval/seconds",
    "eval_windows_per_second": "eval/windows_per_second",
    "train_loss": "epoch/train_loss",
    "train_seconds": "epoch/train_seconds",
    "train_windows_per_second": "epoch/train_windows_per_second",
    "train_tokens_per_second": "epoch/train_tokens_per_second",
    # SQuAD v2.0 runs only (HasAns_f1, NoAns_exact, best_f1, best_f1_thresh, ...)
    **{key: f"eval/{key}" for key in SQUAD_V2_KEYS if key != "exact"},
}
# summary.json keys a tracker's run summary carries (config and versions are logged elsewhere).
SUMMARY_KEYS = (
    "status",
    "best_epoch",
    "best_exact_match",
    "best_f1",
    "final_exact_match",
    "final_f1",
    "epochs",
    "train_examples",
    "train_windows",
    "eval_examples",
    "eval_windows",
    "train_seconds",
    "wall_seconds",
    "null_score_diff_threshold",  # SQuAD v2.0: the threshold saved with the checkpoint
)


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

    def log_answers(self, rows: list[dict]) -> None:
        """Once, at the run's end: the best epoch's per-question rows (answers.jsonl)."""

    def finish(self, status: str, summary: dict) -> None:
        """Always called once, also when the run fails (status 'failed' or 'interrupted')."""


SLICE_PREFIX = "eval/slice/"  # eval/slice/<family>/<slice>: F1 per slice (qaexp.analysis)


def epoch_metrics(record: dict) -> dict[str, float]:
    """A metrics.jsonl record under tracker names (`eval/f1`, `epoch/train_loss`, ...), with
    the per-slice F1s (`eval/slice/<family>/<slice>`) passed on as they are."""
    named = {
        name: record[key] for key, name in EPOCH_METRICS.items() if record.get(key) is not None
    }
    named.update({k: v for k, v in record.items() if k.startswith(SLICE_PREFIX)})
    return named


def summary_metrics(summary: dict) -> dict:
    """The summary.json values a dashboard shows for a finished run (SQuAD v2.0 runs add the
    best epoch's v2.0 metrics as `squad_v2/KEY`)."""
    values = {key: summary[key] for key in SUMMARY_KEYS if summary.get(key) is not None}
    v2 = summary.get("squad_v2") or {}
    values.update({f"squad_v2/{k}": v for k, v in v2.items() if v is not None})
    return values
