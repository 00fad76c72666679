"""The run directory contract: metrics.jsonl, predictions.json, summary.json, checkpoint/.

Files are written atomically (a temporary file renamed into place), so a crash never leaves
a half-written result behind; metrics.jsonl gains one complete line per epoch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qaexp.config import CheckpointPolicy
from qaexp.evaluation import SQUAD_V2_KEYS, EvalResult

METRICS_FILE = "metrics.jsonl"
PREDICTIONS_FILE = "predictions.json"
NULL_ODDS_FILE = "null_odds.json"  # SQuAD v2.0: id -> null odds, the official na-prob file
# SQuAD v2.0: the checkpoint's "no answer" threshold, read by qaexp.pipeline and predict.
NULL_THRESHOLD_FILE = "null_threshold.json"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoint"
# Set by the parallel sweep launcher (hydra/launcher=parallel): the job's devices, as JSON.
JOB_DEVICES_ENV = "QAEXP_JOB_DEVICES"

# Names that run directories written by earlier versions used for the same quantities.
RENAMED_KEYS = {
    "train_samples_per_second": "train_windows_per_second",
    "eval_samples_per_second": "eval_windows_per_second",
    "train_features": "train_windows",
    "eval_features": "eval_windows",
}

TRACKED_PACKAGES = (
    "qaexp",
    "torch",
    "transformers",
    "datasets",
    "accelerate",
    "hydra-core",
    "omegaconf",
    "tokenizers",
    "numpy",
    "wandb",
)


@dataclass
class EpochStats:
    """One epoch's training, as the run records it."""

    loss: float
    steps: int
    seconds: float
    windows: int
    tokens: int


@contextmanager
def replaced_atomically(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; renamed onto `path` when the block succeeds,
    removed when it fails. A reader (or a crash) sees the old file or the new one, never a
    part. The temporary name is the process's own, so concurrent writers never share one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, flushed to disk before the rename."""
    with replaced_atomically(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False))


def null_threshold_record(record: dict) -> dict | None:
    """What checkpoint/null_threshold.json holds for an epoch's metrics record (SQuAD v2.0):
    the threshold that reached best_f1 on the evaluation set; None for v1.1 runs."""
    if record.get("best_f1_thresh") is None:
        return None
    return {
        "null_score_diff_threshold": record["best_f1_thresh"],
        "chosen_by": "best_f1_thresh: the threshold on the null odds that reached best_f1 on "
        "the evaluation set",
        "epoch": record["epoch"],
        "best_f1": record["best_f1"],
        "f1": record["f1"],
    }


def read_null_threshold(checkpoint: Path) -> float | None:
    """The null_score_diff_threshold recorded with a checkpoint, or None (none recorded)."""
    path = Path(checkpoint) / NULL_THRESHOLD_FILE
    if not path.is_file():
        return None
    return float(json.loads(path.read_text())["null_score_diff_threshold"])


def upgrade_record(record: dict) -> dict:
    """A metrics.jsonl or summary.json record under today's key names."""
    return {RENAMED_KEYS.get(key, key): value for key, value in record.items()}


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [upgrade_record(json.loads(line)) for line in lines if line.strip()]


def replace_dir_atomic(staged: Path, target: Path) -> None:
    """Move a fully written folder into place, replacing any previous one."""
    old = target.with_name(f".{target.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(staged, target)
    if old.exists():
        shutil.rmtree(old)


def job_devices() -> dict | None:
    """The GPUs and threads a sweep launcher gave this job; None when started on its own."""
    given = os.environ.get(JOB_DEVICES_ENV)
    return json.loads(given) if given else None


def package_versions() -> dict[str, str]:
    found = {}
    for name in TRACKED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def git_commit() -> str | None:
    """The qaexp source checkout's commit (with '-dirty' when modified), if it is one."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def keeps_checkpoint(policy: CheckpointPolicy, improved: bool) -> bool:
    """Whether this epoch's weights go into checkpoint/ under trainer.save_checkpoint."""
    return policy == CheckpointPolicy.last or (policy == CheckpointPolicy.best and improved)


class RunRecorder:
    """Writes the run directory from the main process: one line per epoch, the latest
    predictions, the best checkpoint, and the summary at the end."""

    def __init__(
        self, run_dir: Path, accelerator: Accelerator, config: dict, counts: dict[str, int]
    ):
        self.run_dir = Path(run_dir)
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        self.config = config
        self.counts = counts
        self.history: list[dict] = []
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def restore(self, history: list[dict], state_dir: Path | None) -> None:
        """Continue a resumed run: its epochs so far, and (from another run directory) its
        best checkpoint. metrics.jsonl is rewritten to hold exactly those epochs."""
        self.history = list(history)
        if not self.is_main or state_dir is None:
            return
        lines = "".join(json.dumps(r) + "\n" for r in self.history)
        write_text_atomic(self.run_dir / METRICS_FILE, lines)
        source = Path(state_dir).resolve().parent / CHECKPOINT_DIR
        target = self.run_dir / CHECKPOINT_DIR
        if source.is_dir() and source.resolve() != target.resolve():
            shutil.copytree(source, target, dirs_exist_ok=True)

    @property
    def best(self) -> dict | None:
        return max(self.history, key=lambda r: r["f1"], default=None)

    def record_epoch(
        self,
        epoch: int,
        step: int,
        stats: EpochStats,
        result: EvalResult,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        save_checkpoint: CheckpointPolicy,
    ) -> dict:
        record = {
            "epoch": epoch,
            "step": step,
            "train_loss": stats.loss if math.isfinite(stats.loss) else None,
            "exact_match": result.exact_match,
            "f1": result.f1,
            "train_seconds": stats.seconds,
            "train_windows_per_second": stats.windows / stats.seconds if stats.seconds else None,
            "train_tokens_per_second": stats.tokens / stats.seconds if stats.seconds else None,
            "eval_seconds": result.seconds,
            "eval_windows_per_second": result.windows_per_second,
        }
        if result.squad_v2 is not None:
            record.update(result.squad_v2)
        improved = self.best is None or record["f1"] > self.best["f1"]
        self.history.append(record)
        if keeps_checkpoint(save_checkpoint, improved):
            self.save_checkpoint(model, tokenizer, null_threshold_record(record))
        if self.is_main:
            write_json_atomic(self.run_dir / PREDICTIONS_FILE, result.predictions)
            if result.null_odds is not None:
                write_json_atomic(self.run_dir / NULL_ODDS_FILE, result.null_odds)
            append_jsonl(self.run_dir / METRICS_FILE, record)
        return record

    def save_checkpoint(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        null_threshold: dict | None = None,
    ) -> None:
        """model + tokenizer as a plain save_pretrained folder (with the SQuAD v2.0 null
        threshold when given), swapped in whole."""
        self.accelerator.wait_for_everyone()
        if self.is_main:
            staged = self.run_dir / f".{CHECKPOINT_DIR}.tmp"
            if staged.exists():
                shutil.rmtree(staged)
            self.accelerator.unwrap_model(model).save_pretrained(
                staged, save_function=self.accelerator.save
            )
            tokenizer.save_pretrained(staged)
            if null_threshold is not None:
                write_json_atomic(staged / NULL_THRESHOLD_FILE, null_threshold)
            replace_dir_atomic(staged, self.run_dir / CHECKPOINT_DIR)
        self.accelerator.wait_for_everyone()

    def finish(self, wall_seconds: float, status: str = "completed") -> dict:
        best, final = self.best, (self.history[-1] if self.history else None)
        summary = {
            "status": status,
            "best_epoch": best["epoch"] if best else None,
            "best_exact_match": best["exact_match"] if best else None,
            "best_f1": best["f1"] if best else None,
            "final_exact_match": final["exact_match"] if final else None,
            "final_f1": final["f1"] if final else None,
            "epochs": len(self.history),
            **self.counts,
            "train_seconds": sum(r["train_seconds"] for r in self.history),
            "wall_seconds": wall_seconds,
            "num_processes": self.accelerator.num_processes,
            "mixed_precision": self.accelerator.mixed_precision,
            "device": str(self.accelerator.device),
            "job_devices": job_devices(),
            "versions": package_versions(),
            "git_commit": git_commit(),
            "config": self.config,
            **squad_v2_summary(best),
        }
        if self.is_main:
            write_json_atomic(self.run_dir / SUMMARY_FILE, summary)
        return summary


def squad_v2_summary(best: dict | None) -> dict:
    """summary.json's SQuAD v2.0 part: the best epoch's v2.0 metrics under `squad_v2` (the
    summary's own best_f1 is the best epoch's F1) and the threshold saved with its
    checkpoint; nothing for v1.1 runs."""
    if best is None or "best_f1_thresh" not in best:
        return {}
    return {
        "squad_v2": {key: best.get(key) for key in ("f1", *SQUAD_V2_KEYS)},
        "null_score_diff_threshold": best.get("best_f1_thresh"),
    }
