"""The Accelerate engine: optimise for an epoch, evaluate EM/F1, record, repeat.

The step never waits for the device: the loss sum, the count of non-finite losses and the
token count stay on the device, and the host reads them (one sync) only at check points:
every `trainer.log_every_n_steps` optimizer steps, at a stop request and at the epoch's end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from qaexp.batching import make_train_loader
from qaexp.config import QAExpConfig, as_dict
from qaexp.errors import QAExpError, RunInterrupted
from qaexp.faults import crash_point, set_epoch
from qaexp.modeling import load_model
from qaexp.tracking import RunLabels, Tracker
from qaexp.tracking.rundir import EpochStats
from qaexp.training.optimizer import make_optimizer, make_scheduler, optimizer_steps_per_epoch
from qaexp.training.preemption import GracefulStop
from qaexp.training.recording import RecordedRun, recorded_run
from qaexp.training.runtime import loader_options, make_accelerator
from qaexp.training.setup import (
    RunData,
    eval_loader,
    prepare_data_once,
    warn_if_qa_head_untrained,
)
from qaexp.training.state import (
    STATE_DIR,
    Progress,
    discard_state,
    drop_finished_state,
    find_state,
    load_state,
    recover_state,
    save_state,
    saved_answers,
)

log = logging.getLogger(__name__)


class NonFiniteLoss(QAExpError):
    """The loss became NaN/inf without fp16 loss scaling to absorb it."""


def step_metrics(mean_loss: float, lr: float, windows: int, seconds: float) -> dict[str, float]:
    """What trackers get every trainer.log_every_n_steps optimizer steps (the epoch so far)."""
    return {
        "train/loss": mean_loss,
        "train/lr": lr,
        "train/windows_per_second": windows / max(seconds, 1e-9),
    }


@dataclass
class DeviceTally:
    """This epoch's sums kept on the device, so that a step queues work without waiting:
    the finite losses, the non-finite ones (skipped by fp16 loss scaling) and real tokens."""

    loss_sum: torch.Tensor
    nonfinite: torch.Tensor
    tokens: torch.Tensor

    @classmethod
    def start(cls, progress: Progress, accelerator: Accelerator) -> DeviceTally:
        # Sums continue from a resumed epoch: each process's own loss and skip counts (see
        # Progress.own_sums), the token count a sum over processes (on the main one).
        loss_sum, nonfinite = progress.own_sums(
            accelerator.process_index, accelerator.num_processes
        )
        device = accelerator.device
        return cls(
            loss_sum=torch.tensor(loss_sum, device=device),
            nonfinite=torch.tensor(nonfinite, device=device),
            tokens=torch.tensor(
                progress.tokens if accelerator.is_main_process else 0, device=device
            ),
        )

    def add(self, loss: torch.Tensor, attention_mask: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach())
        self.loss_sum += torch.where(finite, loss.detach(), 0.0)
        self.nonfinite += (~finite).to(self.nonfinite.dtype)
        self.tokens += attention_mask.sum()


@dataclass
class EpochRunner:
    """Trains the rest of one epoch; checks the device tallies only at check points."""

    model: torch.nn.Module
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    accelerator: Accelerator
    cfg: QAExpConfig
    stop: GracefulStop
    trackers: list[Tracker] = field(default_factory=list)

    def check(self, progress: Progress, tally: DeviceTally) -> bool:
        """One host sync: agree on a stop across processes and refuse a non-finite loss that
        no loss scaler absorbs. Returns True when the epoch must stop here."""
        acc = self.accelerator
        stop = torch.tensor(int(self.stop.requested), device=tally.nonfinite.device)
        flags = torch.stack([tally.nonfinite, stop])
        if acc.num_processes > 1:
            flags = acc.reduce(flags.to(acc.device), reduction="sum")
        nonfinite, stop = (int(v) for v in flags.tolist())
        if nonfinite and acc.mixed_precision != "fp16":
            raise NonFiniteLoss(
                f"The training loss became NaN or infinite in epoch {progress.epoch} before "
                f"step {progress.global_step + 1}. Lower optimizer.lr, clip gradients with "
                "optimizer.max_grad_norm=1.0, or use hardware.mixed_precision=bf16/no. The "
                "last complete epoch's state is saved: fix the setting and rerun with "
                "trainer.resume=true."
            )
        return bool(stop)

    def step(self, batch: dict, tally: DeviceTally) -> None:
        """Forward, backward and (when gradients sync) an optimizer step; no host sync."""
        with self.accelerator.accumulate(self.model):
            loss = self.model(**batch).loss
            tally.add(loss, batch["attention_mask"])
            self.accelerator.backward(loss)  # fp16: the scaler skips steps with inf gradients
            max_norm = self.cfg.optimizer.max_grad_norm
            if self.accelerator.sync_gradients and max_norm:
                self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)

    def run(self, progress: Progress) -> bool:
        """Train the rest of `progress.epoch` (from batch `progress.batches_done`); update
        `progress` in place. Returns False when a stop was requested before the epoch ended."""
        self.model.train()
        acc = self.accelerator
        tally = DeviceTally.start(progress, acc)
        windows = progress.windows if acc.is_main_process else 0
        skip = progress.batches_done
        batches = acc.skip_first_batches(self.loader, skip) if skip else self.loader
        began, done_before = time.perf_counter(), progress.seconds
        bar = tqdm(
            batches,
            desc=f"epoch {progress.epoch}",
            initial=skip,
            total=len(self.loader),
            disable=not acc.is_local_main_process,
        )
        stopped = False
        for batch in bar:
            self.step(batch, tally)
            crash_point("step")
            progress.batches_done += 1
            windows += batch["input_ids"].shape[0]
            at_check = acc.sync_gradients and self._count_step(progress)
            if at_check:
                self._log_step(bar, progress, tally, windows, began)
            # A single process sees its own stop request at once; several agree at checks.
            if (at_check or (acc.num_processes == 1 and self.stop.requested)) and self.check(
                progress, tally
            ):
                stopped = True
                break
        if not stopped:
            self.check(progress, tally)  # the epoch's last steps
        progress.seconds = done_before + time.perf_counter() - began
        self._store(progress, tally, windows)
        return not stopped

    def _count_step(self, progress: Progress) -> bool:
        """Count an optimizer step; True at a check point."""
        progress.global_step += 1
        return progress.global_step % self.cfg.trainer.log_every_n_steps == 0

    def _log_step(self, bar, progress: Progress, tally: DeviceTally, windows: int, began: float):
        trained = max(progress.batches_done - int(tally.nonfinite), 1)
        metrics = step_metrics(
            tally.loss_sum.item() / trained,
            self.scheduler.get_last_lr()[0],
            windows,
            time.perf_counter() - began,
        )
        metrics["train/epoch"] = progress.epoch - 1 + progress.batches_done / len(self.loader)
        bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", lr=f"{metrics['train/lr']:.2e}")
        for tracker in self.trackers:
            tracker.log_step(progress.global_step, metrics)

    def _store(self, progress: Progress, tally: DeviceTally, windows: int) -> None:
        """The epoch's tallies into `progress`, reduced over processes: counts summed, the
        loss sum and skipped steps averaged (each process trained as many batches), and each
        process's own loss sum and skips kept beside them, so that a resume continues every
        process from its own sums rather than from the mean, which rounds differently."""
        acc = self.accelerator
        counts = torch.stack([torch.tensor(windows, device=acc.device), tally.tokens])
        progress.windows, progress.tokens = (int(c) for c in acc.reduce(counts, "sum").tolist())
        own = torch.stack([tally.loss_sum.float(), tally.nonfinite.float()])
        progress.rank_sums = [[s, int(n)] for s, n in acc.gather(own[None]).tolist()]
        loss_sum, skipped = acc.reduce(own, reduction="mean").tolist()
        progress.loss_sum, progress.skipped_steps = loss_sum, round(skipped)


@dataclass
class Engine:
    """The prepared objects of one Accelerate run."""

    model: torch.nn.Module
    train_loader: DataLoader | None
    eval_loader: DataLoader
    optimizer: torch.optim.Optimizer | None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    order: torch.Generator  # the training order's generator, reseeded every epoch


def build_engine(cfg: QAExpConfig, data: RunData, accelerator: Accelerator) -> Engine:
    """Model, loaders, optimizer and schedule, prepared by Accelerate."""
    model = load_model(cfg.model)
    options = loader_options(cfg.hardware, accelerator.device)
    order = torch.Generator()
    train_loader = optimizer = scheduler = None
    if data.train_windows is not None:
        train_loader = make_train_loader(
            data.train_windows, data.tokenizer, cfg.trainer, cfg.max_length, order, **options
        )
        optimizer = make_optimizer(model, cfg.optimizer)
        # Counted before `prepare` shards the loader: Accelerate's scheduler wrapper steps
        # once per process for every optimizer step.
        steps = optimizer_steps_per_epoch(
            len(train_loader), cfg.trainer.gradient_accumulation_steps
        )
        scheduler = make_scheduler(optimizer, cfg.optimizer, steps * cfg.trainer.epochs)
    else:
        warn_if_qa_head_untrained(model, cfg)
    evaluation = eval_loader(data, cfg, accelerator.device)
    model, optimizer, train_loader, evaluation, scheduler = accelerator.prepare(
        model, optimizer, train_loader, evaluation, scheduler
    )
    return Engine(model, train_loader, evaluation, optimizer, scheduler, order)


def resume_point(cfg: QAExpConfig, run_dir: Path, accelerator: Accelerator) -> Path | None:
    """The saved state this run continues from, after recovering one caught mid-swap; None
    to start from scratch (an earlier attempt's state in the run dir is then dropped)."""
    if accelerator.is_main_process:
        recover_state(run_dir)
    accelerator.wait_for_everyone()
    state_dir = find_state(run_dir, cfg.trainer.resume, cfg.trainer.resume_from)
    if not cfg.trainer.epochs:
        return None
    if state_dir is None and accelerator.is_main_process:
        discard_state(run_dir)
    return state_dir


def train_with_accelerate(cfg: QAExpConfig, run_dir: Path, labels: RunLabels | None = None) -> dict:
    """Fine-tune with the Accelerate loop and evaluate after every epoch (or, with
    trainer.epochs=0, evaluate the model as loaded); return the run summary."""
    began = time.time()
    set_seed(cfg.seed)
    set_epoch(0)
    accelerator = make_accelerator(cfg.hardware, cfg.trainer)
    data = prepare_data_once(cfg, accelerator.main_process_first())
    run_dir = Path(run_dir)
    state_dir = resume_point(cfg, run_dir, accelerator)
    engine = build_engine(cfg, data, accelerator)
    progress = Progress(config=as_dict(cfg))
    if state_dir is not None:
        progress = load_state(accelerator, state_dir, progress.config, data.fingerprint)
        set_epoch(progress.epoch - 1)  # a resume first publishes its state's last epoch
        began -= progress.wall_seconds  # wall_seconds covers every segment of the run
    batches = len(engine.train_loader) if engine.train_loader else 0
    accumulation = cfg.trainer.gradient_accumulation_steps
    answers = saved_answers(state_dir) if state_dir is not None else None
    # The stop handlers outlast the recorded run: a second Ctrl-C while the summary is
    # written ends the run as a stop, too.
    with (
        GracefulStop() as stop,
        recorded_run(
            cfg,
            run_dir,
            data,
            accelerator,
            engine.eval_loader,
            began,
            labels,
            progress.history,
            state_dir,
            answers,
        ) as run,
    ):
        if state_dir is not None:
            republish(run, engine.model)
        run.announce(optimizer_steps_per_epoch(batches, accumulation))
        epochs = range(progress.epoch, cfg.trainer.epochs + 1) if cfg.trainer.epochs else [0]
        for epoch in epochs:  # trainer.epochs=0 evaluates the model as loaded (epoch 0)
            set_epoch(epoch)
            progress.epoch = epoch
            if epoch:
                train_epoch(engine, run, progress, stop, run_dir, began)
            commit = None
            if epoch and cfg.trainer.save_state and not final_state_dropped(cfg, epoch):
                commit = stop.saved_by(
                    partial(
                        save_state, accelerator, run_dir, progress, began, data=data.fingerprint
                    )
                )
            finish_epoch(run, engine.model, progress, commit)
    if not cfg.trainer.keep_state:
        drop_finished_state(accelerator, run_dir)
    return run.summary


def final_state_dropped(cfg: QAExpConfig, epoch: int) -> bool:
    """The last epoch's state would be dropped at once by a completed run: skip saving it (a
    crash before the run completes resumes from the previous epoch's state)."""
    return epoch == cfg.trainer.epochs and not cfg.trainer.keep_state


def republish(run: RecordedRun, model: torch.nn.Module) -> None:
    """A resumed run first publishes what its state covers, in `publish`'s order: the
    checkpoint (when the state's last epoch is the one trainer.save_checkpoint keeps and
    checkpoint/ lacks it), the answers, the metrics."""
    run.recorder.reconcile_checkpoint(model, run.data.tokenizer, run.cfg.trainer.save_checkpoint)
    run.recorder.republish()


def train_epoch(
    engine: Engine,
    run: RecordedRun,
    progress: Progress,
    stop: GracefulStop,
    run_dir: Path,
    began: float,
) -> None:
    """Train `progress.epoch`; on a stop request save the state and raise RunInterrupted.
    `began`: when the run began (earlier segments of a resumed run included)."""
    cfg = run.cfg
    engine.order.manual_seed(cfg.seed * 1_000 + progress.epoch)  # the same order on resume
    runner = EpochRunner(
        engine.model,
        engine.train_loader,
        engine.optimizer,
        engine.scheduler,
        run.accelerator,
        cfg,
        stop,
        run.trackers,
    )
    if runner.run(progress):
        return
    with stop.saving():  # a second Ctrl-C waits for the state
        save_state(
            run.accelerator, run_dir, progress, began, run.recorder.answers, run.data.fingerprint
        )
    raise RunInterrupted(
        f"Stopped by {stop.signal_name or 'a stop request'} in epoch {progress.epoch} after "
        f"{progress.batches_done} batches; the training state is saved in "
        f"{run_dir / STATE_DIR}.",
        stop.exit_code,
    )


def finish_epoch(
    run: RecordedRun,
    model: torch.nn.Module,
    progress: Progress,
    commit: Callable[[dict], object] | None = None,
) -> None:
    """Evaluate the epoch, move `progress` to the next one, save the state through
    `commit(answers)` when given, and only then publish the epoch's files: whatever
    instant a run stops at, its saved state covers every epoch the run dir shows, or a resume
    publishes them again from it."""
    trained = progress.batches_done - progress.skipped_steps
    stats = EpochStats(
        loss=progress.loss_sum / trained if progress.epoch and trained else float("nan"),
        steps=progress.global_step,
        seconds=progress.seconds,
        windows=progress.windows,
        tokens=progress.tokens,
    )
    record, result = run.evaluate_epoch(progress.epoch, progress.global_step, stats, model)
    progress.history = [*run.recorder.history, record]
    progress.start_next_epoch()
    if commit is not None:
        commit(run.recorder.answers_after(record, result))
    run.publish(record, result, model)
