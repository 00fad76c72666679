"""The run directory contract: metrics.jsonl, predictions.json, summary.json, checkpoint/.

Files are written atomically (a temporary file renamed into place), so a crash never leaves
a half-written result behind; metrics.jsonl is rewritten whole, one line per recorded epoch.
Each result records the epoch it holds (checkpoint/qaexp_epoch.json, and summary.json's
checkpoint_epoch / predictions_epoch), so a resumed run can bring them back in line with its
state (see the crash model in the README).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qaexp.config import CheckpointPolicy
from qaexp.evaluation import SQUAD_V2_KEYS, EvalResult
from qaexp.faults import crash_point

METRICS_FILE = "metrics.jsonl"
PREDICTIONS_FILE = "predictions.json"
SUMMARY_FILE = "summary.json"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_EPOCH_FILE = "qaexp_epoch.json"  # in checkpoint/: the epoch its weights are from
ANSWERS_FILE = "answers.jsonl"  # the best epoch's answers, one line per question
LAST_ANSWERS_FILE = "answers-last.jsonl"  # the last epoch's, when it is not the best
ANALYSIS_FILES = ("analysis.md", "analysis.json")  # the best epoch's answers by slice
NULL_ODDS_FILE = "null_odds.json"  # SQuAD v2.0: id -> null odds, the official na-prob file
# SQuAD v2.0: the checkpoint's "no answer" threshold, read by qaexp.pipeline and predict.
NULL_THRESHOLD_FILE = "null_threshold.json"
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


class AnswerSheet(Protocol):
    """The evaluation questions an epoch's answers are scored and labelled against
    (qaexp.analysis.QuestionSet, built by the training code from the run's data)."""

    def rows(
        self,
        epoch: int,
        predictions: dict,
        null_odds: dict | None,
        span_logits: dict | None = None,
    ) -> list[dict]:
        """answers.jsonl's rows: one per question."""

    def jsonl(self, rows: list[dict]) -> str:
        """answers.jsonl's text."""

    def report(self, rows: list[dict]) -> tuple[str, dict]:
        """analysis.md's text and analysis.json's content for the rows."""


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
    removed when it fails (a failed write raises an OSError naming `path`). A reader (or a
    crash) sees the old file or the new one, never a part. The temporary name is the
    process's own, so concurrent writers (jobs of a sweep) never share one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        crash_point(f"rename {path.name}")
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def removed_on_failure(folder: Path, what: str) -> Iterator[Path]:
    """Write `what` into the staging `folder`. When a write fails (a full disk, a file-size
    limit, whatever the library raises for it), the folder is removed at once, not at the next
    resume, and an OSError names the file that was being written and its errno."""
    folder = Path(folder)
    try:
        yield folder
    except Exception as err:
        code, file = _failed_write(err, folder)
        shutil.rmtree(folder, ignore_errors=True)
        reason = (err.strerror if isinstance(err, OSError) else None) or (
            os.strerror(code) if code else f"{type(err).__name__}: {err}"
        )
        raise OSError(
            code, f"{reason}, writing {what} (its unfinished {folder.name} was removed)", str(file)
        ) from err


def _failed_write(err: Exception, folder: Path) -> tuple[int | None, Path]:
    """The errno of a failed write into `folder` and the file it was writing, as far as the
    writer tells: an OSError names both (or the file is the last one written); safetensors
    gives the errno in its message and removes the file it could not finish (then the folder
    is named); torch.save gives neither but leaves its partial file, the last one written,
    and one more byte after its last block shows the errno (ENOSPC on a full disk, EFBIG past
    a size limit)."""
    for cause in (err, err.__cause__, err.__context__):
        if isinstance(cause, OSError) and cause.errno:
            return cause.errno, Path(cause.filename) if cause.filename else _last_written(folder)
    found = re.search(r"os error (\d+)", str(err))
    if found:
        return int(found.group(1)), folder
    file = _last_written(folder)
    try:
        with open(file, "r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            block = os.fstat(fh.fileno()).st_blksize or 4096
            os.pwrite(fh.fileno(), b"\0", -(-size // block) * block)  # needs a new block
    except OSError as probe:
        if probe.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            return probe.errno, file
    return None, file


def _last_written(folder: Path) -> Path:
    """The file in `folder` written last (file times tick every few milliseconds, so among
    equally new files the largest: the long write that was cut), else the folder."""
    try:
        files = [(f.stat(), f) for f in folder.rglob("*") if f.is_file()]
    except OSError:
        return folder
    return max(files, key=lambda s: (s[0].st_mtime_ns, s[0].st_size))[1] if files else folder


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, flushed to disk before the rename."""
    with replaced_atomically(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def write_json_atomic(path: Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False))


# The job's composed config, which Hydra writes when the job starts.
JOB_CONFIG = Path(".hydra") / "config.yaml"


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
    predictions, the best checkpoint, and the summary at the end.

    An epoch is first evaluated (`add_epoch`, in memory), then published (`publish`): the
    checkpoint when it improved, predictions.json, and metrics.jsonl last. The Accelerate loop
    saves its state between the two, so a resumed run can always publish again what its state
    covers (`restore`, `reconcile_checkpoint`)."""

    def __init__(
        self,
        run_dir: Path,
        accelerator: Accelerator,
        config: dict,
        counts: dict[str, int],
        data: dict | None = None,
        questions: AnswerSheet | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.questions = questions  # main process: what answers.jsonl is scored against
        # the best epoch's {epoch, predictions, null_odds, span_logits}
        self.best_answers: dict | None = None
        self.epoch_rows: list[dict] | None = None  # rows of the last published epoch
        self.accelerator = accelerator
        self.is_main = accelerator.is_main_process
        self.config = config
        self.counts = counts
        self.data = data  # split -> {source, examples, sha256}: the data the run used
        self.history: list[dict] = []  # the published epochs
        self.predictions: dict[str, str] | None = None  # of the last published epoch
        self.null_odds: dict[str, float] | None = None  # SQuAD v2.0: of the same epoch
        self.span_logits: dict[str, float | None] | None = None  # of the same epoch
        self.checkpoint_epoch: int | None = None
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def reset(self) -> None:
        """A run that starts from scratch: no result of an earlier attempt in this run dir
        survives (a kill before the first state was saved leaves nothing to continue)."""
        if not self.is_main:
            return
        remove_temporary_files(self.run_dir)
        answer_files = (ANSWERS_FILE, LAST_ANSWERS_FILE, *ANALYSIS_FILES)
        for name in (METRICS_FILE, PREDICTIONS_FILE, NULL_ODDS_FILE, SUMMARY_FILE, *answer_files):
            (self.run_dir / name).unlink(missing_ok=True)
        checkpoint = self.run_dir / CHECKPOINT_DIR
        model = str(self.config.get("model", {}).get("name_or_path", ""))
        evaluated_here = model and Path(model).expanduser().resolve() == checkpoint.resolve()
        for folder in (checkpoint, _hidden(checkpoint, "tmp"), _hidden(checkpoint, "old")):
            if folder.exists() and not evaluated_here:
                shutil.rmtree(folder)

    def restore(
        self, history: list[dict], state_dir: Path | None, answers: dict | None = None
    ) -> None:
        """Continue a resumed run: its epochs so far, their last answers (predictions, null
        odds, span logits) and (from another run directory) its best checkpoint (then
        `reconcile_checkpoint`, `republish`). Without a state: start clean (`reset`)."""
        if state_dir is None:
            self.reset()
            return
        self.history = list(history)
        self.predictions = (answers or {}).get("predictions")
        self.null_odds = (answers or {}).get("null_odds")
        self.span_logits = (answers or {}).get("span_logits")  # None: a state saved before
        self.best_answers = (answers or {}).get("best")
        best = self.best
        if best is not None and best is self.history[-1] and self.predictions is not None:
            self.best_answers = self._epoch_answers(
                best["epoch"], self.predictions, self.null_odds, self.span_logits
            )
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
        last = self.history[-1] if self.history else None
        if last is not None and self.predictions is not None:
            self._write_question_answers(
                last, self.predictions, self.null_odds, self.span_logits, self.best, republish=True
            )
        self._write_answers(self.predictions, self.null_odds)
        write_metrics(self.run_dir, self.history)

    def _write_answers(
        self, predictions: dict[str, str] | None, null_odds: dict[str, float] | None
    ) -> None:
        if null_odds is not None:
            write_json_atomic(self.run_dir / NULL_ODDS_FILE, null_odds)
        if predictions is not None:
            write_json_atomic(self.run_dir / PREDICTIONS_FILE, predictions)

    @staticmethod
    def _epoch_answers(
        epoch: int, predictions: dict, null_odds: dict | None, span_logits: dict | None
    ) -> dict:
        return {
            "epoch": epoch,
            "predictions": predictions,
            "null_odds": null_odds,
            "span_logits": span_logits,
        }

    @property
    def answers(self) -> dict:
        """The last published epoch's answers, as a state saves them (with the best epoch's,
        for answers.jsonl, when that is an earlier one)."""
        best = self.best_answers
        last = self.history[-1]["epoch"] if self.history else None
        return {
            "predictions": self.predictions,
            "null_odds": self.null_odds,
            "span_logits": self.span_logits,
            "best": best if best and best["epoch"] != last else None,
        }

    def best_rows(self) -> list[dict] | None:
        """answers.jsonl's rows of the best epoch (main process; None when unknown)."""
        best = self.best_answers
        if self.questions is None or best is None:
            return None
        return self._rows(best)

    def _rows(self, answers: dict) -> list[dict]:
        """answers.jsonl's rows of one epoch's answers (`_epoch_answers`; a state saved
        before span logits were kept has none)."""
        return self.questions.rows(
            answers["epoch"],
            answers["predictions"],
            answers["null_odds"],
            answers.get("span_logits"),
        )

    def answers_after(self, record: dict, result: EvalResult) -> dict:
        """`answers` as they will be once the evaluated epoch `record` is published."""
        improved = self.best is None or record["f1"] > self.best["f1"]
        best = None if improved else self.best_answers
        return {
            "predictions": result.predictions,
            "null_odds": result.null_odds,
            "span_logits": result.span_logits,
            "best": best,
        }

    def _write_question_answers(
        self,
        record: dict,
        predictions: dict[str, str],
        null_odds: dict[str, float] | None,
        span_logits: dict[str, float | None] | None,
        best: dict,
        republish: bool = False,
    ) -> None:
        """The per-question files of epoch `record`, `best` being the best epoch once it is
        published: answers.jsonl, analysis.md and analysis.json of the best epoch (written
        when `record` is the best, or again on `republish`), and answers-last.jsonl of
        `record` when it is not the best (removed when it is). A resumed run whose state
        lacks the best epoch's answers keeps the files it has."""
        if self.questions is None:
            return
        epoch, last_file = record["epoch"], self.run_dir / LAST_ANSWERS_FILE
        if best["epoch"] == epoch:
            self.best_answers = self._epoch_answers(epoch, predictions, null_odds, span_logits)
            self.epoch_rows = self._write_best_answers(self.best_answers)
            last_file.unlink(missing_ok=True)
            return
        known = self.best_answers is not None and self.best_answers["epoch"] == best["epoch"]
        if republish and known:
            self._write_best_answers(self.best_answers)
        self.epoch_rows = self.questions.rows(epoch, predictions, null_odds, span_logits)
        write_text_atomic(last_file, self.questions.jsonl(self.epoch_rows))

    def _write_best_answers(self, best: dict) -> list[dict]:
        """answers.jsonl, analysis.md and analysis.json of the best epoch; returns the rows."""
        rows = self._rows(best)
        write_text_atomic(self.run_dir / ANSWERS_FILE, self.questions.jsonl(rows))
        text, payload = self.questions.report(rows)
        write_text_atomic(self.run_dir / ANALYSIS_FILES[0], text)
        write_json_atomic(self.run_dir / ANALYSIS_FILES[1], payload)
        return rows

    def reconcile_checkpoint(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, policy: CheckpointPolicy
    ) -> None:
        """After a resume: when the state's last epoch is the one `policy` keeps (the best, or
        the last) but checkpoint/ does not hold it (the run stopped between saving the state
        and the checkpoint), save it from `model`, which holds exactly that epoch's weights."""
        if policy == CheckpointPolicy.best:
            kept = self.best
        else:
            kept = self.history[-1] if self.history else None
        stale = [
            self.is_main
            and policy != CheckpointPolicy.none
            and bool(kept)
            and kept is self.history[-1]
            and self.checkpoint_epoch != kept["epoch"]
        ]
        if self.accelerator.num_processes > 1:  # the main process knows; all must save
            broadcast_object_list(stale, from_process=0)
        if stale[0]:
            self.save_checkpoint(model, tokenizer, kept["epoch"], null_threshold_record(kept))

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
            **(result.squad_v2 or {}),
        }

    def publish(
        self,
        record: dict,
        result: EvalResult,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        policy: CheckpointPolicy,
    ) -> None:
        """Write an evaluated epoch: the checkpoint as `policy` says, the answers (null odds,
        then predictions), metrics last."""
        improved = self.best is None or record["f1"] > self.best["f1"]
        if keeps_checkpoint(policy, improved):
            self.save_checkpoint(model, tokenizer, record["epoch"], null_threshold_record(record))
        if self.is_main:
            best = record if improved else self.best
            self._write_question_answers(
                record, result.predictions, result.null_odds, result.span_logits, best
            )
            self._write_answers(result.predictions, result.null_odds)
            write_metrics(self.run_dir, [*self.history, record])
        self.history.append(record)
        self.predictions, self.null_odds = result.predictions, result.null_odds
        self.span_logits = result.span_logits
        crash_point("published")

    def save_checkpoint(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        epoch: int,
        null_threshold: dict | None = None,
    ) -> None:
        """model + tokenizer as a plain save_pretrained folder with the epoch it holds (and
        the SQuAD v2.0 null threshold when given), swapped in whole."""
        self.accelerator.wait_for_everyone()
        if self.is_main:
            target = self.run_dir / CHECKPOINT_DIR
            staged = _hidden(target, "tmp")
            if staged.exists():
                shutil.rmtree(staged)
            with removed_on_failure(staged, f"the checkpoint of epoch {epoch}"):
                self.accelerator.unwrap_model(model).save_pretrained(
                    staged, save_function=self.accelerator.save
                )
                tokenizer.save_pretrained(staged)
                if null_threshold is not None:
                    write_json_atomic(staged / NULL_THRESHOLD_FILE, null_threshold)
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
            "data_fingerprint": self.data,
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
