"""Training state: everything needed to continue a run (model, optimizer, scheduler, RNG of
every process, position in the data, metrics so far), saved into the run directory at the
end of every epoch and when a run is stopped.

The state is written into a hidden folder (progress.json last: a folder holding it is
complete) and swapped into place; `recover_state` adopts the complete copy when a crash fell
between the swap's two renames, so one complete state is always reachable.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate import Accelerator

from qaexp.config import flatten
from qaexp.errors import QAExpError
from qaexp.faults import crash_point
from qaexp.tracking.rundir import (
    SUMMARY_FILE,
    recover_dir,
    replace_dir_atomic,
    upgrade_record,
    write_json_atomic,
)

log = logging.getLogger(__name__)

STATE_DIR = "state"
PROGRESS_FILE = "progress.json"
# The files of the last recorded epoch (predictions, SQuAD v2.0 null odds), so a resume can
# publish them again.
ANSWERS_FILE = "last_answers.json"

# Keys that may change between the interrupted run and its continuation.
RESUMABLE_CHANGES = (
    "trainer.resume",
    "trainer.resume_from",
    "trainer.eval_batch_size",
    "trainer.log_every_n_steps",
    "trainer.keep_state",
    "hardware",
    "logger",
    "data.num_proc",
    "data.cache_dir",
)


@dataclass
class Progress:
    """Where training stands. Sums are global (over all processes) at save time; each
    process's own partial sums travel beside them (`rank_sums`)."""

    epoch: int = 1  # the epoch in progress (1-based)
    batches_done: int = 0  # batches of that epoch already trained
    global_step: int = 0  # optimizer steps so far
    loss_sum: float = 0.0  # train loss summed over this epoch's batches (mean over processes)
    windows: int = 0  # windows trained this epoch (all processes)
    tokens: int = 0  # real tokens trained this epoch (all processes)
    seconds: float = 0.0  # training seconds this epoch
    skipped_steps: int = 0  # batches skipped for a non-finite loss
    wall_seconds: float = 0.0  # wall time of the run so far (all segments of a resumed run)
    # Each process's own sums of this epoch by rank, [loss sum, non-finite losses], as the
    # device held them: a resume on as many processes continues each one exactly there.
    rank_sums: list[list[float]] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)  # metrics.jsonl records so far
    config: dict = field(default_factory=dict)

    @classmethod
    def from_saved(cls, saved: dict) -> Progress:
        """A saved progress.json, also one written before windows were called windows."""
        saved = dict(saved)
        if "features" in saved:
            saved["windows"] = saved.pop("features")
        saved["history"] = [upgrade_record(r) for r in saved.get("history", [])]
        return cls(**saved)

    def own_sums(self, rank: int, processes: int) -> tuple[float, int]:
        """(loss sum, non-finite losses) that process `rank` of `processes` continues this
        epoch from: its own when the state was saved by as many processes, so the resumed
        run records the uninterrupted run's losses to the last digit. With another process
        count (or a state saved without per-process sums) every process continues from the
        mean over the processes that saved it, so the epoch's loss is still the mean loss
        of its batches, rounded differently."""
        if len(self.rank_sums) == processes:
            loss_sum, nonfinite = self.rank_sums[rank]
            return loss_sum, int(nonfinite)
        if self.rank_sums and rank == 0:
            log.warning(
                "The state was saved by %d processes and this run has %d: every process "
                "continues epoch %d from the mean of the saved loss sums, so its train_loss "
                "is the mean batch loss of both segments, not one process count's to the digit",
                len(self.rank_sums),
                processes,
                self.epoch,
            )
        return self.loss_sum, self.skipped_steps

    def start_next_epoch(self) -> None:
        self.epoch += 1
        self.batches_done = self.windows = self.tokens = self.skipped_steps = 0
        self.loss_sum = self.seconds = 0.0
        self.rank_sums = []


def save_state(
    accelerator: Accelerator,
    run_dir: Path,
    progress: Progress,
    run_began: float,
    answers: dict | None = None,
) -> Path:
    """Save the full training state into run_dir/state (all processes must call this), with
    the answers of the last recorded epoch ({"predictions": ..., "null_odds": ...}), so a
    resume can publish them again. `run_began`: when the run began, earlier segments of a
    resumed run included."""
    progress.wall_seconds = time.time() - run_began
    target = Path(run_dir) / STATE_DIR
    staged = Path(run_dir) / f".{STATE_DIR}.tmp"
    if accelerator.is_main_process and staged.exists():
        shutil.rmtree(staged)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staged), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        crash_point("state saved")
        if answers is not None:
            write_json_atomic(staged / ANSWERS_FILE, answers)
        write_json_atomic(staged / PROGRESS_FILE, asdict(progress))  # last: marks it complete
        replace_dir_atomic(staged, target)
    accelerator.wait_for_everyone()
    return target


def drop_finished_state(accelerator: Accelerator, run_dir: Path) -> None:
    """A completed run needs no resume state: remove its state/ folder (the main process;
    trainer.keep_state=true skips this call). Interrupted and failed runs never get here."""
    accelerator.wait_for_everyone()
    target = Path(run_dir) / STATE_DIR
    if accelerator.is_main_process and target.is_dir():
        shutil.rmtree(target)


def recover_state(run_dir: Path) -> None:
    """Bring back the state after a crash mid-save (main process only, before `find_state`)."""
    recover_dir(Path(run_dir) / STATE_DIR, lambda folder: (folder / PROGRESS_FILE).is_file())


def discard_state(run_dir: Path) -> None:
    """A run that starts from scratch drops the state of an earlier attempt in its run dir
    (main process only), so a later resume can only continue this run."""
    for folder in (Path(run_dir) / STATE_DIR, Path(run_dir) / f".{STATE_DIR}.tmp"):
        if folder.exists():
            shutil.rmtree(folder)


def saved_answers(state_dir: Path) -> dict | None:
    """The answers saved with a state (None for states written before they were)."""
    path = Path(state_dir) / ANSWERS_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def find_state(run_dir: Path, resume: bool, resume_from: str | None) -> Path | None:
    """The state folder to continue from, or None to start from scratch.

    trainer.resume_from=PATH names a state folder or a run directory holding one;
    trainer.resume=true continues this run directory's own state when there is one (so a
    requeued job with nothing saved yet simply starts). A SLURM requeue
    (SLURM_RESTART_COUNT > 0) or a torchrun restart (TORCHELASTIC_RESTART_COUNT > 0) resumes
    as if trainer.resume=true.
    """
    if resume_from:
        path = Path(resume_from).expanduser()
        for candidate in (path, path / STATE_DIR):
            if (candidate / PROGRESS_FILE).is_file():
                return candidate
        raise QAExpError(
            f"trainer.resume_from={resume_from}: no saved training state there (looked for "
            f"{path / PROGRESS_FILE} and {path / STATE_DIR / PROGRESS_FILE}). Point it at a run "
            "directory of an interrupted run, or at its state/ folder."
        )
    own = Path(run_dir) / STATE_DIR
    if (resume or restarted()) and (own / PROGRESS_FILE).is_file():
        return own
    if resume:
        log.info("trainer.resume=true but %s holds no saved state: starting from scratch", own)
    return None


def restarted() -> bool:
    """This process runs a job again: a SLURM requeue or a torchrun restart."""
    return any(
        int(os.environ.get(count, "0")) > 0
        for count in ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")
    )


def completed_summary(run_dir: Path, resume: bool, config: dict) -> dict | None:
    """The summary of a run that already completed in `run_dir`, when this job continues it
    (trainer.resume=true, a SLURM requeue, a torchrun restart): such a job has nothing left
    to do, whether or not the run kept its state (trainer.keep_state). Resuming a sweep in its
    folder thus leaves finished jobs as they are. None when there is something to run."""
    if not (resume or restarted()):
        return None
    summary_file = Path(run_dir) / SUMMARY_FILE
    try:
        summary = json.loads(summary_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("status") != "completed":
        return None
    check_same_config(summary.get("config", {}), config, summary_file)
    return summary


def check_same_config(saved: dict, current: dict, state_dir: Path) -> None:
    """Continuing with a different recipe would give a silently wrong result: refuse."""
    before, now = flatten(saved), flatten(current)
    changed = sorted(
        key
        for key in before.keys() | now.keys()
        if before.get(key) != now.get(key)
        and not any(key == k or key.startswith(f"{k}.") for k in RESUMABLE_CHANGES)
    )
    if changed:
        details = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5])
        raise QAExpError(
            f"Cannot resume from {state_dir}: the config differs from the one that run was "
            f"started with ({details}). Resume with the same settings, or start a new run."
        )


def load_state(accelerator: Accelerator, state_dir: Path, config: dict) -> Progress:
    """Restore model, optimizer, scheduler and RNG; return the saved progress."""
    progress = Progress.from_saved(json.loads((state_dir / PROGRESS_FILE).read_text()))
    check_same_config(progress.config, config, state_dir)
    accelerator.load_state(str(state_dir))
    log.info(
        "Resuming from %s: epoch %d, %d batches done, step %d",
        state_dir,
        progress.epoch,
        progress.batches_done,
        progress.global_step,
    )
    return progress
