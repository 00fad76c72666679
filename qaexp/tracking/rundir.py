"""The run directory contract: metrics.jsonl, predictions.json, summary.json, checkpoint/.

Files are written atomically (a temporary file renamed into place), so a crash never leaves
a half-written result behind; metrics.jsonl is rewritten whole, one line per recorded epoch.
Each result records the epoch it holds (checkpoint/qaexp_epoch.json, and summary.json's
checkpoint_epoch / predictions_epoch), so a resumed run can bring them back in line with its
state (see the crash model in the README).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qaexp.evaluation import EvalResult
from qaexp.faults import crash_point

METRICS_FILE = "metrics.jsonl"
PREDICTIONS_FILE = "predictions.json"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_EPOCH_FILE = "qaexp_epoch.json"  # in checkpoint/: the epoch its weights are from

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


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, flush it to disk, rename it into place:
    a reader (or a crash) sees the old file or the new one, never a part. The temporary name
    is the process's own, so concurrent writers (jobs of a sweep) never share one. A failed
    write (a full disk, say) removes its temporary file and raises an OSError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        crash_point(f"rename {path.name}")
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False))


def upgrade_record(record: dict) -> dict:
    """A metrics.jsonl or summary.json record under today's key names."""
    return {RENAMED_KEYS.get(key, key): value for key, value in record.items()}


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """metrics.jsonl holding exactly `history`, one line per epoch (rewritten whole, so it
    never holds a torn line or an epoch that the run's state does not cover)."""
    write_text_atomic(Path(run_dir) / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [upgrade_record(json.loads(line)) for line in lines if line.strip()]


def _hidden(target: Path, suffix: str) -> Path:
    return target.with_name(f".{target.name}.{suffix}")


def replace_dir_atomic(staged: Path, target: Path) -> None:
    """Move a fully written folder into place, replacing any previous one. Between the two
    renames neither name holds a folder; `recover_dir` finds the complete copy again."""
    old = _hidden(target, "old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    crash_point(f"swap {target.name}")
    os.replace(staged, target)
    crash_point(f"swapped {target.name}")
    if old.exists():
        shutil.rmtree(old)


def recover_dir(target: Path, is_complete) -> None:
    """After a crash in `replace_dir_atomic` or while staging: if `target` is gone, adopt the
    newest complete hidden copy (the staged one, else the old one); then remove both."""
    staged, old = _hidden(target, "tmp"), _hidden(target, "old")
    if not target.exists():
        for candidate in (staged, old):
            if candidate.is_dir() and is_complete(candidate):
                os.replace(candidate, target)
                break
    for leftover in (staged, old):
        if leftover.exists():
            shutil.rmtree(leftover)


def remove_temporary_files(folder: Path) -> None:
    """Temporary files of `write_text_atomic` left in `folder` by a killed process."""
    for tmp in Path(folder).glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)


def checkpoint_epoch(folder: Path) -> int | None:
    """The epoch whose weights a checkpoint folder holds (None: unknown or incomplete)."""
    try:
        return json.loads((Path(folder) / CHECKPOINT_EPOCH_FILE).read_text())["epoch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


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


class RunRecorder:
    """Writes the run directory from the main process: one line per epoch, the latest
    predictions, the best checkpoint, and the summary at the end.

    An epoch is first evaluated (`add_epoch`, in memory), then published (`publish`): the
    checkpoint when it improved, predictions.json, and metrics.jsonl last. The Accelerate loop
    saves its state between the two, so a resumed run can always publish again what its state
    covers (`restore`, `reconcile_checkpoint`)."""

    def __init__(
        self, run_dir: Path, accelerator: Accelerator, config: dict, counts: dict[str, int]
    ):
        self.run_dir = Path(run_dir)
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        self.config = config
        self.counts = counts
        self.history: list[dict] = []  # the published epochs
        self.predictions: dict[str, str] | None = None  # of the last published epoch
        self.checkpoint_epoch: int | None = None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def reset(self) -> None:
        """A run that starts from scratch: no result of an earlier attempt in this run dir
        survives (a kill before the first state was saved leaves nothing to continue)."""
        if not self.is_main:
            return
        remove_temporary_files(self.run_dir)
        for name in (METRICS_FILE, PREDICTIONS_FILE, SUMMARY_FILE):
            (self.run_dir / name).unlink(missing_ok=True)
        checkpoint = self.run_dir / CHECKPOINT_DIR
        model = str(self.config.get("model", {}).get("name_or_path", ""))
        evaluated_here = model and Path(model).expanduser().resolve() == checkpoint.resolve()
        for folder in (checkpoint, _hidden(checkpoint, "tmp"), _hidden(checkpoint, "old")):
            if folder.exists() and not evaluated_here:
                shutil.rmtree(folder)

    def restore(
        self, history: list[dict], state_dir: Path | None, predictions: dict | None = None
    ) -> None:
        """Continue a resumed run: its epochs so far, their last predictions and (from another
        run directory) its best checkpoint (then `reconcile_checkpoint`, `republish`).
        Without a state: start clean (`reset`)."""
        if state_dir is None:
            self.reset()
            return
        self.history, self.predictions = list(history), predictions
        if not self.is_main:
            return
        remove_temporary_files(self.run_dir)
        target = self.run_dir / CHECKPOINT_DIR
        recover_dir(target, lambda folder: checkpoint_epoch(folder) is not None)
        remove_temporary_files(target)  # e.g. of the model card, written at the run's end
        source = Path(state_dir).resolve().parent / CHECKPOINT_DIR
        if source.is_dir() and source.resolve() != target.resolve():
            shutil.copytree(source, target, dirs_exist_ok=True)
        self.checkpoint_epoch = checkpoint_epoch(target)

    def republish(self) -> None:
        """After `restore` (and `reconcile_checkpoint`): predictions.json and metrics.jsonl
        rewritten to hold exactly what the state covers, in the order `publish` writes them."""
        if not self.is_main:
            return
        if self.predictions is not None:
            write_json_atomic(self.run_dir / PREDICTIONS_FILE, self.predictions)
        write_metrics(self.run_dir, self.history)

    def reconcile_checkpoint(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
    ) -> None:
        """After a resume: when the last epoch of the state is the best one but checkpoint/
        does not hold it (the run stopped between saving the state and the checkpoint), save
        it from `model`, which holds exactly that epoch's weights."""
        best = self.best
        stale = [
            self.is_main
            and best is not None
            and best is self.history[-1]
            and self.checkpoint_epoch != best["epoch"]
        ]
        if self.accelerator.num_processes > 1:  # the main process knows; all must save
            broadcast_object_list(stale, from_process=0)
        if stale[0]:
            self.save_checkpoint(model, tokenizer, best["epoch"])

    @property
    def best(self) -> dict | None:
        return max(self.history, key=lambda r: r["f1"], default=None)

    def add_epoch(self, epoch: int, step: int, stats: EpochStats, result: EvalResult) -> dict:
        """The metrics record of an evaluated epoch (nothing is written yet)."""
        return {
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

    def publish(
        self,
        record: dict,
        predictions: dict[str, str],
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        save_checkpoint: bool,
    ) -> None:
        """Write an evaluated epoch: the checkpoint if it improved, predictions, metrics."""
        improved = self.best is None or record["f1"] > self.best["f1"]
        if save_checkpoint and improved:
            self.save_checkpoint(model, tokenizer, record["epoch"])
        if self.is_main:
            write_json_atomic(self.run_dir / PREDICTIONS_FILE, predictions)
            write_metrics(self.run_dir, [*self.history, record])
        self.history.append(record)
        self.predictions = predictions
        crash_point("published")

    def record_epoch(
        self,
        epoch: int,
        step: int,
        stats: EpochStats,
        result: EvalResult,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        save_checkpoint: bool,
    ) -> dict:
        """`add_epoch` and `publish` in one go (engines without a state of their own)."""
        record = self.add_epoch(epoch, step, stats, result)
        self.publish(record, result.predictions, model, tokenizer, save_checkpoint)
        return record

    def save_checkpoint(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, epoch: int
    ) -> None:
        """model + tokenizer as a plain save_pretrained folder with the epoch it holds,
        swapped in whole."""
        self.accelerator.wait_for_everyone()
        if self.is_main:
            target = self.run_dir / CHECKPOINT_DIR
            staged = _hidden(target, "tmp")
            if staged.exists():
                shutil.rmtree(staged)
            self.accelerator.unwrap_model(model).save_pretrained(
                staged, save_function=self.accelerator.save
            )
            tokenizer.save_pretrained(staged)
            crash_point("checkpoint staged")
            write_json_atomic(staged / CHECKPOINT_EPOCH_FILE, {"epoch": epoch})
            replace_dir_atomic(staged, target)
            self.checkpoint_epoch = epoch
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
            "checkpoint_epoch": self.checkpoint_epoch,
            "predictions_epoch": final["epoch"] if final and self.predictions else None,
            **self.counts,
            "train_seconds": sum(r["train_seconds"] for r in self.history),
            "wall_seconds": wall_seconds,
            "num_processes": self.accelerator.num_processes,
            "mixed_precision": self.accelerator.mixed_precision,
            "device": str(self.accelerator.device),
            "versions": package_versions(),
            "git_commit": git_commit(),
            "config": self.config,
        }
        if self.is_main:
            write_json_atomic(self.run_dir / SUMMARY_FILE, summary)
        return summary
