"""Recording a run, shared by both engines: after every epoch, EM/F1 on the eval windows,
one log line, the run-directory files and the trackers (and, in an Optuna search, the trial's
report, which may stop the run: status "pruned"); at the end (also on failure) the summary
with the run's status. An epoch is evaluated first and published after the Accelerate loop
has saved its state (see training/loop.py's finish_epoch)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch.utils.data import DataLoader

from qaexp.analysis import QuestionSet, slice_scalars
from qaexp.config import CheckpointPolicy, DataSource, QAExpConfig, as_dict
from qaexp.errors import RunInterrupted
from qaexp.evaluation import AnswerSearch, EvalResult, evaluate
from qaexp.modeling import describe_inputs, describe_model
from qaexp.tracking import RunLabels, Tracker, make_trackers
from qaexp.tracking.rundir import EpochStats, RunRecorder
from qaexp.tracking.trial import TrialPruned, TrialReporter, in_search
from qaexp.training.runtime import describe_precision
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
        """Log one block of what runs: model, data and windows, devices, batch and steps."""
        cfg, counts, acc = self.cfg, self.data.counts, self.accelerator
        processes = plural(acc.num_processes, "process", "processes")
        lines = [
            f"{'Evaluating' if not cfg.trainer.epochs else 'Training'} {describe_model(cfg.model)}"
            f" ({cfg.trainer.engine.value} engine)",
            f"  data     {describe_data(cfg)}",
            f"  windows  {cfg.max_length} tokens, stride {cfg.stride}: "
            + (
                f"{counts['train_windows']} train ({counts['train_examples']} examples), "
                if cfg.trainer.epochs
                else ""
            )
            + f"{counts['eval_windows']} eval ({counts['eval_examples']} examples)",
            f"  cost     {window_cost(counts, cfg.max_length)}",
            f"  model    {describe_inputs(cfg.model)}",
            f"  labels   {self.data.labels.describe() if self.data.labels else 'not checked'}",
            f"  devices  {acc.device}, precision "
            f"{describe_precision(acc.mixed_precision, acc.device)}, {processes}",
        ]
        if cfg.trainer.epochs:
            accumulation = cfg.trainer.gradient_accumulation_steps
            effective = cfg.trainer.train_batch_size * acc.num_processes * accumulation
            lines.append(
                f"  batch    {cfg.trainer.train_batch_size} per device x {processes} x "
                f"{accumulation} accumulation = {effective}; "
                f"{plural(cfg.trainer.epochs, 'epoch')} x {steps_per_epoch} optimizer steps"
            )
        else:
            lines.append("  (trainer.epochs=0: evaluating the model as loaded, without training)")
        log.info("\n".join(lines))

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
            search=answer_search(cfg, data.unanswerable),
        )
        log.info("%s", epoch_line(epoch, stats, result))
        if result.squad_v2 is not None:
            log_squad_v2(epoch, result.squad_v2)
        return self.recorder.add_epoch(epoch, step, stats, result), result

    def publish(self, record: dict, result: EvalResult, model: torch.nn.Module) -> None:
        """Write an evaluated epoch into the run directory and the trackers; in an Optuna
        search, report it to the trial, which may stop the run here (TrialPruned)."""
        epoch = record["epoch"]
        policy = checkpoint_policy(self.cfg, epoch)
        self.recorder.publish(record, result, model, self.data.tokenizer, policy)
        scalars = epoch_slice_scalars(self.recorder.epoch_rows) if self.trackers else {}
        for tracker in self.trackers:
            tracker.log_epoch(epoch, record["step"], {**record, **scalars})
        if self.pruned(epoch, record["f1"]):
            raise TrialPruned(f"pruned after epoch {epoch}")

    def end_epoch(self, epoch: int, step: int, stats: EpochStats, model: torch.nn.Module) -> dict:
        """Evaluate `model` after `epoch` and record the result; return the metrics record."""
        record, result = self.evaluate_epoch(epoch, step, stats, model)
        self.publish(record, result, model)
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


def epoch_slice_scalars(rows: list[dict] | None) -> dict[str, float]:
    """The published epoch's F1 per slice (`eval/slice/...`) for the trackers."""
    if not rows:
        return {}
    exact = np.array([row["exact"] for row in rows])
    f1 = np.array([row["f1"] for row in rows])
    families = {
        family: np.array([row["slices"][family] for row in rows], dtype=object)
        for family in rows[0]["slices"]
    }
    return slice_scalars(exact, f1, families)


def continued_step(run_dir: Path, state_dir: Path | None) -> int | None:
    """The optimizer step a job continues from when it resumes its own run directory's state
    (trainer.resume, a requeue): its dashboard runs continue there. None for a new run, or one
    continued from another run directory (a new job)."""
    if state_dir is None or Path(state_dir).resolve() != (Path(run_dir) / STATE_DIR).resolve():
        return None
    return json.loads((Path(state_dir) / PROGRESS_FILE).read_text())["global_step"]


def answer_search(cfg: QAExpConfig, unanswerable: bool) -> AnswerSearch:
    """The run's answer-search settings (SQuAD v2.0's null rule when `unanswerable`)."""
    return AnswerSearch(
        n_best=cfg.n_best,
        max_answer_length=cfg.max_answer_length,
        unanswerable=unanswerable,
        null_score_diff_threshold=cfg.null_score_diff_threshold,
    )


def log_squad_v2(epoch: int, scores: dict) -> None:
    """One line of the SQuAD v2.0 parts: answerable, unanswerable, best threshold."""

    def pct(key: str) -> str:
        return "n/a" if scores.get(key) is None else f"{scores[key]:.2f}"

    log.info(
        "epoch %d (SQuAD v2.0): HasAns EM %s F1 %s  NoAns EM %s  best F1 %s at "
        "null_score_diff_threshold %s",
        epoch,
        pct("HasAns_exact"),
        pct("HasAns_f1"),
        pct("NoAns_exact"),
        pct("best_f1"),
        "n/a" if scores.get("best_f1_thresh") is None else f"{scores['best_f1_thresh']:.4g}",
    )


def checkpoint_policy(cfg: QAExpConfig, epoch: int) -> CheckpointPolicy:
    """trainer.save_checkpoint for this epoch. Evaluate-only (epoch 0) keeps no second copy of
    the weights it loaded, unless asked for (`last`) or needed to push them (hub.push)."""
    policy = cfg.trainer.save_checkpoint
    if epoch or policy == CheckpointPolicy.none:
        return policy
    return (
        CheckpointPolicy.last
        if cfg.hub.push or policy == CheckpointPolicy.last
        else CheckpointPolicy.none
    )


def plural(count: int, word: str, words: str | None = None) -> str:
    """`1 epoch`, `2 epochs`."""
    return f"{count} {word if count == 1 else (words or word + 's')}"


def describe_data(cfg: QAExpConfig) -> str:
    """The data source in a few words, without local folders: what trains and what evaluates
    (an evaluate-only run names its evaluation data only)."""
    data = cfg.data
    if data.source == DataSource.hub:
        splits = (data.train_split if cfg.trainer.epochs else None, data.validation_split)
        return f"{data.hub_id} from the Hub: " + _roles(splits, " split")
    if data.source == DataSource.synthetic:
        return "synthetic (qaexp's generator)"
    kind = "SQuAD JSON" if data.source == DataSource.json else "files"
    names = (data.train_file if cfg.trainer.epochs else None, data.validation_file)
    return f"{kind} " + _roles([Path(f).name if f else None for f in names])


def _roles(names: tuple | list, suffix: str = "") -> str:
    """`train.jsonl (training), dev.jsonl (evaluation)` for (training, evaluation) names."""
    return ", ".join(
        f"{name}{suffix} ({role})"
        for name, role in zip(names, ("training", "evaluation"), strict=True)
        if name
    )


def window_cost(counts: dict, max_length: int) -> str:
    """Windows per evaluation question and the attention they cost: self-attention scores
    every pair of tokens in a window, so at most max_length² pairs per window (a longer
    window means fewer windows but quadratically more pairs in each)."""
    per_question = counts["eval_windows"] / max(counts["eval_examples"], 1)
    pairs = per_question * max_length**2
    return (
        f"{per_question:.2f} windows per eval question, at most {pairs / 1e6:.2f}M attention "
        f"pairs per question and layer ({max_length}² per window)"
    )


def epoch_line(epoch: int, stats: EpochStats, result: EvalResult) -> str:
    """One epoch's console line; an evaluate-only run (epoch 0) has no training to report."""
    scores = f"EM {result.exact_match:.2f}  F1 {result.f1:.2f}"
    if not epoch:
        return f"evaluation: {scores}  (eval {result.seconds:.1f}s)"
    speed = stats.windows / max(stats.seconds, 1e-9)
    return (
        f"epoch {epoch}: loss {stats.loss:.4f}  {scores}  "
        f"(train {stats.seconds:.0f}s, {speed:.1f} windows/s; eval {result.seconds:.1f}s)"
    )


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
    answers: dict | None = None,
) -> Iterator[RecordedRun]:
    """Record a run that started at `began` (time.time()), continuing `history` (and the
    last epoch's `answers`) when resumed from `state_dir`; on exit (also on failure) write
    summary.json with the run's status and finish the trackers. Without `state_dir` the run
    dir starts clean. A trial pruned by an Optuna search ends here with status "pruned"."""
    config = as_dict(cfg)
    questions = None
    if accelerator.is_main_process:  # the main process writes answers.jsonl
        questions = QuestionSet.build(data.raw["validation"], data.eval_windows, data.unanswerable)
    recorder = RunRecorder(
        run_dir, accelerator, config, data.counts, data=data.fingerprint, questions=questions
    )
    recorder.restore(list(history), state_dir, answers)
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
        try:
            run.summary = recorder.finish(wall_seconds=time.time() - began, status=status)
        except OSError as err:
            if status == "completed":
                raise
            log.error("Could not write the %s run's summary.json: %s", status, err)
        rows = recorder.best_rows() if trackers else None
        for tracker in trackers:
            try:
                if rows:
                    tracker.log_answers(rows)
            finally:
                tracker.finish(status, run.summary or {"status": status})
