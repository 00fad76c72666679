"""Training state: everything needed to continue a run (model, optimizer, scheduler, RNG of
every process, position in the data, metrics so far), saved into the run directory at the
end of every epoch and when a run is stopped.

The state is written into a hidden folder (progress.json last: a folder holding it is
complete) and swapped into place; `recover_state` adopts the complete copy when a crash fell
between the swap's two renames, so one complete state is always reachable. Before
progress.json, manifest.json records a checksum of every other file and the fingerprint of the
data trained on; a resume checks both before anything is loaded (`load_state`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from qaexp.caches import file_digest
from qaexp.config import flatten
from qaexp.errors import QAExpError
from qaexp.faults import crash_point
from qaexp.tracking.rundir import (
    CHECKPOINT_DIR,
    SUMMARY_FILE,
    checkpoint_epoch,
    recover_dir,
    removed_on_failure,
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
# A checksum of every other file of the state, and the data it was trained on.
MANIFEST_FILE = "manifest.json"

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
    "trainer.allow_data_change",
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
    data: dict | None = None,
) -> Path:
    """Save the full training state into run_dir/state (all processes must call this), with
    the answers of the last recorded epoch ({"predictions", "null_odds", "span_logits"}), so a
    resume can publish them again, and the fingerprint of the `data` trained on (RunData's).
    `run_began`: when the run began, earlier segments of a resumed run included."""
    progress.wall_seconds = time.time() - run_began
    target = Path(run_dir) / STATE_DIR
    staged = Path(run_dir) / f".{STATE_DIR}.tmp"
    if accelerator.is_main_process and staged.exists():
        shutil.rmtree(staged)
    accelerator.wait_for_everyone()
    what = "the training state"
    with removed_on_failure(staged, what):
        accelerator.save_state(str(staged), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        crash_point("state saved")
        with removed_on_failure(staged, what):
            if answers is not None:
                write_json_atomic(staged / ANSWERS_FILE, answers)
            write_json_atomic(staged / MANIFEST_FILE, state_manifest(staged, data))
            write_json_atomic(staged / PROGRESS_FILE, asdict(progress))  # last: complete
        replace_dir_atomic(staged, target)
    accelerator.wait_for_everyone()
    return target


def state_manifest(folder: Path, data: dict | None) -> dict:
    """manifest.json of a state folder: size and sha256 of every file in it (but progress.json,
    written after it), and the fingerprint of the data trained on."""
    files = sorted(
        p
        for p in Path(folder).rglob("*")
        if p.is_file() and p.name not in (PROGRESS_FILE, MANIFEST_FILE)
    )
    return {
        "files": {str(p.relative_to(folder)): file_digest(p) for p in files},
        "data": data,
    }


class DamagedState(QAExpError):
    """A saved state fails its checksums or cannot be read: refused before anything loads."""


def read_manifest(state_dir: Path) -> dict | None:
    """A state's manifest.json; None for a state written before states carried one."""
    path = Path(state_dir) / MANIFEST_FILE
    if not path.exists():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ValueError("no list of files")
    return manifest


def state_damage(state_dir: Path) -> str | None:
    """What is wrong with a saved state's files (missing, a checksum that does not match, an
    unreadable manifest.json or progress.json), or None when every file is as it was saved."""
    state_dir = Path(state_dir)
    try:
        manifest = read_manifest(state_dir)
    except (OSError, ValueError) as err:
        return f"{state_dir / MANIFEST_FILE} cannot be read ({err})"
    if manifest is None:
        log.warning(
            "%s was saved by a qaexp that wrote no checksums: it cannot be verified.", state_dir
        )
    for name, expected in (manifest or {"files": {}})["files"].items():
        file = state_dir / name
        try:
            found = file_digest(file)
        except OSError as err:
            return f"{file} cannot be read ({err.strerror or err})"
        if found != expected:
            return (
                f"{file} does not match the checksum written with it ({found['bytes']} bytes, "
                f"saved with {expected.get('bytes')})"
            )
    try:
        Progress.from_saved(json.loads((state_dir / PROGRESS_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as err:
        return f"{state_dir / PROGRESS_FILE} cannot be read ({type(err).__name__}: {err})"
    return None


def damaged_state_message(state_dir: Path, damage: str) -> str:
    """The refusal paragraph for a damaged state, with what the user can do instead."""
    checkpoint = Path(state_dir).resolve().parent / CHECKPOINT_DIR
    epoch = checkpoint_epoch(checkpoint)
    again = (
        "start the run again from scratch without trainer.resume/trainer.resume_from (a run "
        "started from scratch in its folder drops the damaged state)."
    )
    if epoch is not None:
        todo = (
            f"{checkpoint} holds the weights of epoch {epoch}: a new run can start from them "
            f"with model.init=pretrained model.name_or_path={checkpoint} (its optimizer and "
            f"learning-rate schedule start afresh), or {again}"
        )
    else:
        todo = again[0].upper() + again[1:]
    return (
        f"The saved training state {state_dir} is damaged: {damage}. Resuming from it would "
        "continue with other numbers than the run it belongs to, so it is refused before "
        f"anything is loaded. {todo}"
    )


def data_changes(saved: dict | None, current: dict | None) -> list[str]:
    """The splits whose data differs from the fingerprint saved with a state, described."""
    if not saved or not current:
        return []
    changed = []
    for split, before in saved.items():
        now = current.get(split)
        if now is None or now.get("sha256") == before.get("sha256"):
            continue
        changed.append(
            f"{now.get('source', split)} (sha256 {before.get('sha256', '?')[:12]}... "
            f"then, {now.get('sha256', '?')[:12]}... now; {before.get('examples')} -> "
            f"{now.get('examples')} examples)"
        )
    return changed


def check_same_data(manifest: dict | None, data: dict | None, config: dict, state_dir: Path):
    """Continuing on other data than the state was trained on matches neither dataset's run:
    refuse, unless trainer.allow_data_change=true asks for it (then warn)."""
    changed = data_changes((manifest or {}).get("data"), data)
    if not changed:
        return
    details = "; ".join(changed)
    if config.get("trainer", {}).get("allow_data_change"):
        log.warning(
            "The data changed since %s was saved: %s. Continuing on the changed data as "
            "trainer.allow_data_change=true asks: the result matches neither dataset's run.",
            state_dir,
            details,
        )
        return
    raise QAExpError(
        f"Cannot resume from {state_dir}: the data changed since that state was saved: "
        f"{details}. The continued run would match neither dataset's run. Resume with the "
        "data the run was trained on, start a new run, or set trainer.allow_data_change=true "
        "to continue on the changed data anyway."
    )


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


def agreed(accelerator: Accelerator, find: Callable[[], str | None]) -> str | None:
    """`find()` on the main process, the same answer on every process."""
    answer = [find() if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(answer, from_process=0)
    return answer[0]


def load_state(
    accelerator: Accelerator, state_dir: Path, config: dict, data: dict | None = None
) -> Progress:
    """Check the state's files against their checksums (on the main process), the config and
    the `data` fingerprint against the saved ones; then restore model, optimizer, scheduler
    and RNG and return the saved progress."""
    damage = agreed(accelerator, lambda: state_damage(state_dir))
    if damage:
        raise DamagedState(damaged_state_message(state_dir, damage))
    progress = Progress.from_saved(json.loads((state_dir / PROGRESS_FILE).read_text()))
    check_same_config(progress.config, config, state_dir)
    check_same_data(read_manifest(state_dir), data, config, state_dir)
    with random_states_fallback() as fallback:
        accelerator.load_state(str(state_dir))
    if agreed(accelerator, lambda: "failed" if fallback else None):
        raise DamagedState(
            damaged_state_message(
                state_dir,
                "Accelerate could not restore the random states from "
                f'{Path(state_dir) / "random_states_0.pkl"} (it logged "Could not load random '
                'states" and would have trained on with other random numbers), although the '
                "file matches its checksum (saved by another torch or numpy version?)",
            )
        )
    log.info(
        "Resuming from %s: epoch %d, %d batches done, step %d",
        state_dir,
        progress.epoch,
        progress.batches_done,
        progress.global_step,
    )
    return progress


class _Collect(logging.Handler):
    def __init__(self, found: list[str]):
        super().__init__(logging.INFO)
        self.found = found

    def emit(self, record: logging.LogRecord) -> None:
        if "Could not load random states" in record.getMessage():
            self.found.append(record.getMessage())


@contextmanager
def random_states_fallback() -> Iterator[list[str]]:
    """Accelerate's load_state only logs "Could not load random states" (at INFO, on the main
    process) and carries on with other random numbers: collect that line, so the resume can
    refuse to go on."""
    logger = logging.getLogger("accelerate.checkpointing")
    found: list[str] = []
    handler, level = _Collect(found), logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
