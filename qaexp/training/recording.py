"""Recording a run, shared by both engines: after every epoch, EM/F1 on the eval windows,
one log line, the run-directory files and the trackers; at the end (also on failure) the
summary with the run's status."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from qaexp.config import QAExpConfig, as_dict
from qaexp.errors import RunInterrupted
from qaexp.evaluation import EvalResult, evaluate
from qaexp.tracking import RunLabels, Tracker, make_trackers
from qaexp.tracking.rundir import EpochStats, RunRecorder
from qaexp.training.setup import RunData

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

    def evaluate_epoch(
        self, epoch: int, step: int, stats: EpochStats, model: torch.nn.Module
    ) -> tuple[dict, EvalResult]:
        """Evaluate `model` after `epoch` and log it; return its metrics record and result
        (nothing is written yet: see `publish`)."""
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
        return self.recorder.add_epoch(epoch, step, stats, result), result

    def publish(self, record: dict, result: EvalResult, model: torch.nn.Module) -> None:
        """Write an evaluated epoch into the run directory and the trackers."""
        self.recorder.publish(
            record, result.predictions, model, self.data.tokenizer, self.cfg.trainer.save_checkpoint
        )
        for tracker in self.trackers:
            tracker.log_epoch(record["epoch"], record["step"], record)

    def end_epoch(self, epoch: int, step: int, stats: EpochStats, model: torch.nn.Module) -> dict:
        """Evaluate `model` after `epoch` and record the result; return the metrics record."""
        record, result = self.evaluate_epoch(epoch, step, stats, model)
        self.publish(record, result, model)
        return record


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
    predictions: dict[str, str] | None = None,
) -> Iterator[RecordedRun]:
    """Record a run that started at `began` (time.time()), continuing `history` when resumed
    from `state_dir`; on exit (also on failure) write summary.json with the run's status and
    finish the trackers. Without `state_dir` the run dir starts clean."""
    config = as_dict(cfg)
    recorder = RunRecorder(run_dir, accelerator, config=config, counts=data.counts)
    recorder.restore(list(history), state_dir, predictions)
    trackers = make_trackers(cfg, run_dir, config, accelerator.is_main_process, labels)
    run = RecordedRun(cfg, data, accelerator, eval_loader, recorder, trackers)
    status = "failed"
    try:
        yield run
        status = "completed"
    except (KeyboardInterrupt, RunInterrupted):
        status = "interrupted"
        raise
    finally:
        try:
            run.summary = recorder.finish(wall_seconds=time.time() - began, status=status)
        except OSError as err:
            if status == "completed":
                raise
            log.error("Could not write the %s run's summary.json: %s", status, err)
        for tracker in trackers:
            tracker.finish(status, run.summary or {"status": status})
