"""Recording a run, shared by both engines: after every epoch, EM/F1 on the eval windows,
one log line, the run-directory files and the trackers (and, in an Optuna search, the trial's
report, which may stop the run: status "pruned"); at the end (also on failure) the summary
with the run's status."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader

from qaexp.config import QAExpConfig, as_dict
from qaexp.errors import RunInterrupted
from qaexp.evaluation import evaluate
from qaexp.tracking import RunLabels, Tracker, make_trackers
from qaexp.tracking.rundir import EpochStats, RunRecorder
from qaexp.tracking.trial import TrialPruned, TrialReporter, in_search
from qaexp.training.setup import RunData
from qaexp.training.state import PROGRESS_FILE, STATE_DIR

log = logging.getLogger(__name__)


@dataclass
class RecordedRun:
    """One run's evaluation and records (see the module doc)."""

    cfg: QAExpConfig
    data: RunData
    accelerator: Accelerator
    eval_loader: DataLoader
    recorder: RunRecorder
    trackers: list[Tracker]
    summary: dict | None = None  # set when the run ends, also when it fails
    trial: TrialReporter | None = None  # the Optuna trial this job runs for (main process)

    def announce(self, steps_per_epoch: int) -> None:
        """Log what will run: data, world size, devices, precision, batch sizes, steps."""
        cfg, counts, acc = self.cfg, self.data.counts, self.accelerator
        where = f"{acc.device}, precision {acc.mixed_precision}, {acc.num_processes} process(es)"
        if not cfg.trainer.epochs:
            log.info(
                "Evaluating %s on %d windows (%d examples) without training (trainer.epochs=0); %s",
                cfg.model.name_or_path,
                counts["eval_windows"],
                counts["eval_examples"],
                where,
            )
            return
        accumulation = cfg.trainer.gradient_accumulation_steps
        log.info(
            "Training %s on %d windows (%d examples), evaluating on %d windows (%d examples); "
            "engine %s",
            cfg.model.name_or_path,
            counts["train_windows"],
            counts["train_examples"],
            counts["eval_windows"],
            counts["eval_examples"],
            cfg.trainer.engine.value,
        )
        log.info(
            "%s; batch %d per device x %d process(es) x %d accumulation = %d effective; "
            "%d epochs x %d optimizer steps",
            where,
            cfg.trainer.train_batch_size,
            acc.num_processes,
            accumulation,
            cfg.trainer.train_batch_size * acc.num_processes * accumulation,
            cfg.trainer.epochs,
            steps_per_epoch,
        )

    def end_epoch(self, epoch: int, step: int, stats: EpochStats, model: torch.nn.Module) -> dict:
        """Evaluate `model` after `epoch` and record the result; return the metrics record."""
        cfg, data = self.cfg, self.data
        result = evaluate(
            model,
            self.eval_loader,
            self.accelerator,
            data.raw["validation"],
            data.eval_windows,
            data.references,
            width=cfg.max_length,
            n_best=cfg.n_best,
            max_answer_length=cfg.max_answer_length,
        )
        log.info(
            "epoch %d: loss %.4f  EM %.2f  F1 %.2f  (train %.0fs, %.1f windows/s; eval %.1fs)",
            epoch,
            stats.loss,
            result.exact_match,
            result.f1,
            stats.seconds,
            stats.windows / max(stats.seconds, 1e-9),
            result.seconds,
        )
        record = self.recorder.record_epoch(
            epoch, step, stats, result, model, data.tokenizer, cfg.trainer.save_checkpoint
        )
        for tracker in self.trackers:
            tracker.log_epoch(epoch, step, record)
        if self.pruned(epoch, record["f1"]):
            raise TrialPruned(f"pruned after epoch {epoch}")
        return record

    def pruned(self, epoch: int, f1: float) -> bool:
        """In an Optuna search: report the epoch's F1 to the trial and return the pruner's
        verdict, agreed by every process (only the main one talks to the study)."""
        if not in_search():
            return False
        last = epoch >= self.cfg.trainer.epochs
        verdict = [self.trial.report(epoch, f1, last) if self.trial else False]
        if self.accelerator.num_processes > 1:
            broadcast_object_list(verdict)
        return bool(verdict[0])


def continued_step(run_dir: Path, state_dir: Path | None) -> int | None:
    """The optimizer step a job continues from when it resumes its own run directory's state
    (trainer.resume, a requeue): its dashboard runs continue there. None for a new run, or one
    continued from another run directory (a new job)."""
    if state_dir is None or Path(state_dir).resolve() != (Path(run_dir) / STATE_DIR).resolve():
        return None
    return json.loads((Path(state_dir) / PROGRESS_FILE).read_text())["global_step"]


@contextmanager
def recorded_run(
    cfg: QAExpConfig,
    run_dir: Path,
    data: RunData,
    accelerator: Accelerator,
    eval_loader: DataLoader,
    began: float,
    labels: RunLabels | None = None,
    history: list[dict] = (),
    state_dir: Path | None = None,
) -> Iterator[RecordedRun]:
    """Record a run that started at `began` (time.time()), continuing `history` when resumed
    from `state_dir`; on exit (also on failure) write summary.json with the run's status and
    finish the trackers. A trial pruned by an Optuna search ends here with status "pruned"."""
    config = as_dict(cfg)
    recorder = RunRecorder(run_dir, accelerator, config=config, counts=data.counts)
    recorder.restore(list(history), state_dir)
    trackers = make_trackers(
        cfg,
        run_dir,
        config,
        accelerator.is_main_process,
        labels,
        resume_step=continued_step(run_dir, state_dir),
    )
    run = RecordedRun(cfg, data, accelerator, eval_loader, recorder, trackers)
    if accelerator.is_main_process:
        run.trial = TrialReporter.from_env()
    status = "failed"
    try:
        yield run
        status = "completed"
    except TrialPruned:
        status = "pruned"  # a normal end for a search's trial: the job returns its best F1
    except (KeyboardInterrupt, RunInterrupted):
        status = "interrupted"
        raise
    finally:
        run.summary = recorder.finish(wall_seconds=time.time() - began, status=status)
        for tracker in trackers:
            tracker.finish(status, run.summary)
