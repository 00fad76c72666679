"""Training: the Accelerate loop. Optimise for an epoch, evaluate EM/F1, record, repeat."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, get_scheduler
from transformers.trainer_pt_utils import get_parameter_names

from qaexp.batching import make_eval_loader, make_train_loader
from qaexp.config import ModelInit, OptimizerConfig, QAExpConfig, TrainerEngine
from qaexp.data import SPLITS, load_raw_datasets
from qaexp.errors import QAExpError, RunInterrupted
from qaexp.evaluation import evaluate
from qaexp.features import build_features
from qaexp.launch import dataloader_workers, make_accelerator
from qaexp.modeling import is_qa_checkpoint, load_model, load_tokenizer
from qaexp.preemption import GracefulStop
from qaexp.rundir import RunRecorder
from qaexp.share import check_push_settings, share_run
from qaexp.state import STATE_DIR, Progress, find_state, load_state, save_state
from qaexp.tracking import RunLabels, Tracker, make_trackers
from qaexp.validation import check_examples, validate_settings, validate_windows

log = logging.getLogger(__name__)


@dataclass
class EpochStats:
    loss: float
    steps: int
    seconds: float
    features: int
    tokens: int


class NonFiniteLoss(QAExpError):
    """The loss became NaN/inf without fp16 loss scaling to absorb it."""


def make_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay applies to weight matrices, never to biases or LayerNorm weights.

    PyTorch's fused AdamW kernel runs on CPU and GPU: one step over MiniLM's 22M parameters
    takes 0.02 s instead of 0.14 s on a 2-core CPU, a tenth of a training step at batch 8.
    """
    if cfg.name != "adamw":
        raise QAExpError(f"optimizer.name={cfg.name}: only 'adamw' is available.")
    decay = set(get_parameter_names(model, [torch.nn.LayerNorm]))
    decay = {n for n in decay if not n.endswith("bias")}
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n in decay], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=True)


def step_metrics(mean_loss: float, lr: float, features: int, seconds: float) -> dict[str, float]:
    """What trackers get every trainer.log_every_n_steps optimizer steps (the epoch so far)."""
    return {
        "train/loss": mean_loss,
        "train/lr": lr,
        "train/features_per_second": features / max(seconds, 1e-9),
    }


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    accelerator: Accelerator,
    cfg: QAExpConfig,
    progress: Progress,
    stop: GracefulStop,
    trackers: list[Tracker] = (),
) -> bool:
    """Train the rest of `progress.epoch` (from batch `progress.batches_done`); update
    `progress` in place. Returns False when a stop was requested before the epoch ended."""
    model.train()
    # Sums continue from a resumed epoch: the global sums live on the main process only.
    main = accelerator.is_main_process
    loss_sum = torch.tensor(progress.loss_sum, device=accelerator.device)
    features, tokens = (progress.features, progress.tokens) if main else (0, 0)
    tokens = torch.tensor(tokens, device=accelerator.device)  # summed on device: no sync per step
    skip = progress.batches_done
    batches = accelerator.skip_first_batches(loader, skip) if skip else loader
    began = time.perf_counter()
    done_before = progress.seconds
    bar = tqdm(
        batches, desc=f"epoch {progress.epoch}", initial=skip, total=len(loader),
        disable=not accelerator.is_local_main_process,
    )  # fmt: skip
    stopped = False
    for batch in bar:
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            nonfinite, stopped = _agree(
                accelerator, not torch.isfinite(loss).item(), stop.requested
            )
            if nonfinite and accelerator.mixed_precision != "fp16":
                raise NonFiniteLoss(
                    f"The training loss became {loss.item()} at epoch {progress.epoch}, step "
                    f"{progress.global_step + 1}. Lower optimizer.lr, clip gradients with "
                    "optimizer.max_grad_norm=1.0, or use hardware.mixed_precision=bf16/no. The "
                    "last complete epoch's state is saved: fix the setting and rerun with "
                    "trainer.resume=true."
                )
            accelerator.backward(loss)  # fp16: the loss scaler skips steps with inf gradients
            if accelerator.sync_gradients and cfg.optimizer.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optimizer.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        progress.skipped_steps += int(nonfinite)
        if not nonfinite:
            loss_sum += loss.detach()
        progress.batches_done += 1
        features += batch["input_ids"].shape[0]
        tokens += batch["attention_mask"].sum()
        if accelerator.sync_gradients:
            progress.global_step += 1
            if progress.global_step % cfg.trainer.log_every_n_steps == 0:
                _log_step(
                    bar, trackers, progress, loss_sum, features, began, scheduler, len(loader)
                )
        if stopped:
            break
    progress.seconds = done_before + time.perf_counter() - began
    progress.loss_sum = accelerator.reduce(loss_sum, reduction="mean").item()
    counts = torch.stack([torch.tensor(features, device=accelerator.device), tokens])
    counts = accelerator.reduce(counts, "sum")
    progress.features, progress.tokens = int(counts[0]), int(counts[1])
    return not stopped


def _agree(accelerator: Accelerator, nonfinite: bool, stop: bool) -> tuple[bool, bool]:
    """All processes take the same decision (a rank that skips backward would hang DDP)."""
    if accelerator.num_processes == 1:
        return nonfinite, stop
    flags = torch.tensor([nonfinite, stop], dtype=torch.int32, device=accelerator.device)
    flags = accelerator.reduce(flags, reduction="sum")
    return bool(flags[0]), bool(flags[1])


def _log_step(bar, trackers, progress, loss_sum, features, began, scheduler, num_batches) -> None:
    metrics = step_metrics(
        loss_sum.item() / max(progress.batches_done - progress.skipped_steps, 1),
        scheduler.get_last_lr()[0],
        features,
        time.perf_counter() - began,
    )
    metrics["train/epoch"] = progress.epoch - 1 + progress.batches_done / num_batches
    bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", lr=f"{metrics['train/lr']:.2e}")
    for tracker in trackers:
        tracker.log_step(progress.global_step, metrics)


def _build_features(
    raw: datasets.DatasetDict, tokenizer: PreTrainedTokenizerBase, cfg: QAExpConfig
) -> tuple[datasets.Dataset | None, datasets.Dataset]:
    kwargs = {"max_length": cfg.max_length, "stride": cfg.stride, "num_proc": cfg.data.num_proc}
    train = (
        build_features(raw["train"], tokenizer, train=True, **kwargs) if "train" in raw else None
    )
    evaluation = build_features(raw["validation"], tokenizer, train=False, **kwargs)
    return train, evaluation


@dataclass
class RunSetup:
    """Everything a run needs, built and validated before any training compute."""

    accelerator: Accelerator
    tokenizer: PreTrainedTokenizerBase
    raw: datasets.DatasetDict  # no "train" split in evaluate-only runs
    train_features: datasets.Dataset | None  # None in evaluate-only runs
    eval_features: datasets.Dataset
    references: dict[str, list[str]]

    @property
    def counts(self) -> dict[str, int]:
        return {
            "train_examples": len(self.raw["train"]) if "train" in self.raw else 0,
            "train_features": len(self.train_features) if self.train_features else 0,
            "eval_examples": len(self.raw["validation"]),
            "eval_features": len(self.eval_features),
        }


def prepare_data(
    cfg: QAExpConfig,
) -> tuple[
    PreTrainedTokenizerBase, datasets.DatasetDict, datasets.Dataset | None, datasets.Dataset
]:
    """Tokenizer, validated raw data and (cached) train/eval windows. Evaluate-only runs
    (trainer.epochs=0) neither load nor window the training split."""
    validate_settings(cfg)
    check_push_settings(cfg)  # a missing Hub token fails here, not after training
    tokenizer = load_tokenizer(cfg.model)
    splits = SPLITS if cfg.trainer.epochs else ("validation",)  # evaluate-only: no train split
    raw, _ = check_examples(load_raw_datasets(cfg.data, splits))
    validate_windows(cfg, tokenizer, raw)
    train_features, eval_features = _build_features(raw, tokenizer, cfg)
    return tokenizer, raw, train_features, eval_features


def prepare_run(cfg: QAExpConfig) -> RunSetup:
    """Devices, tokenizer, validated data and (cached) features."""
    set_seed(cfg.seed)
    accelerator = make_accelerator(
        cfg.hardware, cfg.trainer.gradient_accumulation_steps,
        compile_model=cfg.trainer.compile, compile_dynamic=cfg.trainer.compile_dynamic,
        compile_backend=cfg.trainer.compile_backend,
    )  # fmt: skip
    with accelerator.main_process_first():
        tokenizer, raw, train_features, eval_features = prepare_data(cfg)
    validation = raw["validation"]
    references = dict(
        zip(validation["id"], (a["text"] for a in validation["answers"]), strict=True)
    )
    return RunSetup(accelerator, tokenizer, raw, train_features, eval_features, references)


def resolved_config(cfg: QAExpConfig) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)


@dataclass
class RecordedRun:
    """One run's evaluation and records, shared by both engines: after every epoch, EM/F1
    on the eval windows, one log line, the run-directory files and the trackers."""

    cfg: QAExpConfig
    setup: RunSetup
    accelerator: Accelerator
    eval_loader: DataLoader
    recorder: RunRecorder
    trackers: list[Tracker]
    summary: dict | None = None  # set when the run ends, also when it fails

    def announce(self, steps_per_epoch: int) -> None:
        """Log what will run: data, world size, devices, precision, batch sizes, steps."""
        cfg, counts, acc = self.cfg, self.setup.counts, self.accelerator
        where = f"{acc.device}, precision {acc.mixed_precision}, {acc.num_processes} process(es)"
        if not cfg.trainer.epochs:
            log.info(
                "Evaluating %s on %d windows (%d examples) without training "
                "(trainer.epochs=0); %s",
                cfg.model.name_or_path, counts["eval_features"], counts["eval_examples"], where,
            )  # fmt: skip
            return
        accumulation = cfg.trainer.gradient_accumulation_steps
        log.info(
            "Training %s on %d windows (%d examples), evaluating on %d windows (%d examples); "
            "engine %s",
            cfg.model.name_or_path, counts["train_features"], counts["train_examples"],
            counts["eval_features"], counts["eval_examples"], cfg.trainer.engine.value,
        )  # fmt: skip
        log.info(
            "%s; batch %d per device x %d process(es) x %d accumulation = %d effective; "
            "%d epochs x %d optimizer steps",
            where, cfg.trainer.train_batch_size, acc.num_processes, accumulation,
            cfg.trainer.train_batch_size * acc.num_processes * accumulation,
            cfg.trainer.epochs, steps_per_epoch,
        )  # fmt: skip

    def end_epoch(self, epoch: int, step: int, stats: EpochStats, model: torch.nn.Module) -> dict:
        """Evaluate `model` after `epoch` and record the result; return the metrics record."""
        cfg, setup = self.cfg, self.setup
        result = evaluate(
            model, self.eval_loader, self.accelerator, setup.raw["validation"],
            setup.eval_features, setup.references, width=cfg.max_length, n_best=cfg.n_best,
            max_answer_length=cfg.max_answer_length,
        )  # fmt: skip
        log.info(
            "epoch %d: loss %.4f  EM %.2f  F1 %.2f  (train %.0fs, %.1f windows/s; eval %.1fs)",
            epoch, stats.loss, result.exact_match, result.f1, stats.seconds,
            stats.features / max(stats.seconds, 1e-9), result.seconds,
        )  # fmt: skip
        record = self.recorder.record_epoch(
            epoch, step, stats, result, model, setup.tokenizer, cfg.trainer.save_checkpoint
        )
        for tracker in self.trackers:
            tracker.log_epoch(epoch, step, record)
        return record


@contextmanager
def recorded_run(
    cfg: QAExpConfig,
    run_dir: Path,
    setup: RunSetup,
    accelerator: Accelerator,
    eval_loader: DataLoader,
    run_began: float,
    labels: RunLabels | None = None,
    history: list[dict] = (),
    state_dir: Path | None = None,
) -> Iterator[RecordedRun]:
    """Record a run (continuing `history` when resumed from `state_dir`); on exit (also on
    failure) write summary.json with the run's status and finish the trackers."""
    config = resolved_config(cfg)
    recorder = RunRecorder(run_dir, accelerator, config=config, counts=setup.counts)
    recorder.restore(list(history), state_dir)
    trackers = make_trackers(cfg, run_dir, config, accelerator.is_main_process, labels)
    run = RecordedRun(cfg, setup, accelerator, eval_loader, recorder, trackers)
    status = "failed"
    try:
        yield run
        status = "completed"
    except (KeyboardInterrupt, RunInterrupted):
        status = "interrupted"
        raise
    finally:
        run.summary = recorder.finish(wall_seconds=time.time() - run_began, status=status)
        for tracker in trackers:
            tracker.finish(status, run.summary)


def warn_if_qa_head_untrained(model: torch.nn.Module, cfg: QAExpConfig) -> None:
    """Evaluate-only runs: say so when the scores will measure random weights."""
    if cfg.model.init == ModelInit.random:
        log.warning(
            "model.init=random: evaluating randomly initialised weights. To evaluate a "
            "checkpoint, use model.init=pretrained model.name_or_path=PATH."
        )
    elif not is_qa_checkpoint(model):
        log.warning(
            "%s was not saved as a question-answering model: its QA head is freshly "
            "initialised, so these scores are those of a random head.",
            cfg.model.name_or_path,
        )


def train_with_accelerate(cfg: QAExpConfig, run_dir: Path, labels: RunLabels | None = None) -> dict:
    """Fine-tune with the Accelerate loop and evaluate after every epoch (or, with
    trainer.epochs=0, evaluate the model as loaded); return the run summary."""
    run_began = time.time()
    setup = prepare_run(cfg)
    accelerator = setup.accelerator
    run_dir = Path(run_dir)
    state_dir = find_state(run_dir, cfg.trainer.resume, cfg.trainer.resume_from)
    model = load_model(cfg.model)
    on_gpu = accelerator.device.type == "cuda"
    workers = dataloader_workers(cfg.hardware, "gpu" if on_gpu else "cpu")
    loader_kwargs = {"num_workers": workers, "pin_memory": on_gpu}
    order = torch.Generator()
    train_loader = optimizer = scheduler = None
    accumulation = cfg.trainer.gradient_accumulation_steps
    if setup.train_features is not None:
        train_loader = make_train_loader(
            setup.train_features, setup.tokenizer, cfg.trainer, cfg.max_length, order,
            **loader_kwargs,
        )  # fmt: skip
        optimizer = make_optimizer(model, cfg.optimizer)
        # Counted before `prepare` shards the loader: Accelerate's scheduler wrapper steps
        # once per process for every optimizer step.
        total_steps = math.ceil(len(train_loader) / accumulation) * cfg.trainer.epochs
        scheduler = get_scheduler(
            cfg.optimizer.scheduler,
            optimizer=optimizer,
            num_warmup_steps=int(cfg.optimizer.warmup_ratio * total_steps),
            num_training_steps=total_steps,
        )
    else:
        warn_if_qa_head_untrained(model, cfg)
    eval_loader = make_eval_loader(
        setup.eval_features, setup.tokenizer, cfg.trainer, cfg.max_length, **loader_kwargs
    )
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler
    )
    progress = Progress(config=resolved_config(cfg))
    if state_dir is not None and cfg.trainer.epochs:
        progress = load_state(accelerator, state_dir, progress.config)
        run_began -= progress.wall_seconds  # wall_seconds covers every segment of the run
    steps_per_epoch = math.ceil(len(train_loader) / accumulation) if train_loader else 0

    with (
        recorded_run(
            cfg, run_dir, setup, accelerator, eval_loader, run_began, labels,
            progress.history, state_dir,
        ) as run,
        GracefulStop() as stop,
    ):  # fmt: skip
        run.announce(steps_per_epoch)
        # trainer.epochs=0 evaluates the checkpoint as it is (recorded as epoch 0).
        epochs = range(progress.epoch, cfg.trainer.epochs + 1) if cfg.trainer.epochs else [0]
        for epoch in epochs:
            progress.epoch = epoch
            if epoch:
                order.manual_seed(cfg.seed * 1_000 + epoch)  # the same order after a resume
                finished = train_one_epoch(
                    model, train_loader, optimizer, scheduler, accelerator, cfg, progress,
                    stop, run.trackers,
                )  # fmt: skip
                if not finished:
                    save_state(accelerator, run_dir, progress, run_began)
                    raise RunInterrupted(
                        f"Stopped by {stop.signal_name} in epoch {epoch} after "
                        f"{progress.batches_done} batches; the training state is saved in "
                        f"{run_dir / STATE_DIR}.",
                        stop.exit_code,
                    )
            _finish_epoch(run, model, progress)
            if epoch and cfg.trainer.save_state:
                save_state(accelerator, run_dir, progress, run_began)
    return run.summary


def _finish_epoch(run: RecordedRun, model: torch.nn.Module, progress: Progress) -> None:
    """Evaluate and record the epoch, then move `progress` to the next epoch."""
    trained = progress.batches_done - progress.skipped_steps
    stats = EpochStats(
        loss=progress.loss_sum / trained if progress.epoch and trained else float("nan"),
        steps=progress.global_step,
        seconds=progress.seconds,
        features=progress.features,
        tokens=progress.tokens,
    )
    run.end_epoch(progress.epoch, progress.global_step, stats, model)
    progress.history = list(run.recorder.history)
    progress.epoch += 1
    progress.batches_done = progress.features = progress.tokens = 0
    progress.loss_sum = progress.seconds = 0.0
    progress.skipped_steps = 0


def train(cfg: QAExpConfig, run_dir: Path, labels: RunLabels | None = None) -> dict:
    """Run one job with the engine that `trainer.engine` names, then write the model card
    and push to the Hub when asked; return the run summary. `labels` group and name the run
    on tracker dashboards (qaexp.__main__ derives them from Hydra).

    Evaluate-only runs (trainer.epochs=0) take the same evaluation path with either engine.
    """
    if cfg.trainer.engine == TrainerEngine.hf and cfg.trainer.epochs:
        from qaexp.engine_hf import train_with_hf_trainer

        summary = train_with_hf_trainer(cfg, run_dir, labels)
    else:
        summary = train_with_accelerate(cfg, run_dir, labels)
    share_run(cfg, run_dir, summary)
    return summary
