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
from qaexp.errors import QAExpError
from qaexp.evaluation import evaluate
from qaexp.features import build_features
from qaexp.launch import make_accelerator
from qaexp.modeling import is_qa_checkpoint, load_model, load_tokenizer
from qaexp.rundir import RunRecorder
from qaexp.share import check_push_settings, share_run
from qaexp.tracking import Tracker, make_trackers
from qaexp.validation import validate_config

log = logging.getLogger(__name__)


@dataclass
class EpochStats:
    loss: float
    steps: int
    seconds: float
    features: int
    tokens: int


def make_optimizer(
    model: torch.nn.Module, cfg: OptimizerConfig, fused: bool
) -> torch.optim.Optimizer:
    """AdamW; weight decay applies to weight matrices, never to biases or LayerNorm weights."""
    if cfg.name != "adamw":
        raise QAExpError(f"optimizer.name={cfg.name}: only 'adamw' is available.")
    decay = set(get_parameter_names(model, [torch.nn.LayerNorm]))
    decay = {n for n in decay if not n.endswith("bias")}
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n in decay], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, **({"fused": True} if fused else {})
    )


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    accelerator: Accelerator,
    cfg: QAExpConfig,
    epoch: int,
    trackers: list[Tracker] = (),
    first_step: int = 0,
) -> EpochStats:
    model.train()
    loss_sum = torch.zeros((), device=accelerator.device)
    batches = steps = features = tokens = 0
    began = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not accelerator.is_local_main_process)
    for batch in bar:
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.optimizer.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optimizer.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
        batches += 1
        features += batch["input_ids"].shape[0]
        tokens += int(batch["attention_mask"].sum())
        if accelerator.sync_gradients:
            steps += 1
            if steps % cfg.trainer.log_every_n_steps == 0:
                bar.set_postfix(
                    loss=f"{loss_sum.item() / batches:.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}"
                )
    seconds = time.perf_counter() - began
    mean_loss = accelerator.reduce(loss_sum / max(batches, 1), reduction="mean").item()
    counts = accelerator.reduce(torch.tensor([features, tokens], device=accelerator.device), "sum")
    return EpochStats(mean_loss, steps, seconds, int(counts[0]), int(counts[1]))


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


def prepare_run(cfg: QAExpConfig) -> RunSetup:
    """Devices, tokenizer, validated data and (cached) features. Evaluate-only runs
    (trainer.epochs=0) neither load nor window the training split."""
    set_seed(cfg.seed)
    check_push_settings(cfg)  # a missing Hub token fails here, not after training
    accelerator = make_accelerator(cfg.hardware, cfg.trainer.gradient_accumulation_steps)
    tokenizer = load_tokenizer(cfg.model)
    raw = load_raw_datasets(cfg.data, SPLITS if cfg.trainer.epochs else ("validation",))
    validate_config(cfg, tokenizer, raw)
    with accelerator.main_process_first():
        train_features, eval_features = _build_features(raw, tokenizer, cfg)
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
        cfg, counts, acc = self.cfg, self.setup.counts, self.accelerator
        where = f"{acc.device}, precision {acc.mixed_precision}, {acc.num_processes} process(es)"
        if not cfg.trainer.epochs:
            log.info(
                "Evaluating %s on %d windows (%d examples) without training "
                "(trainer.epochs=0); %s",
                cfg.model.name_or_path, counts["eval_features"], counts["eval_examples"], where,
            )  # fmt: skip
            return
        log.info(
            "Training %s on %d windows (%d examples), evaluating on %d windows (%d examples): "
            "%d epochs x %d optimizer steps, %s, engine %s",
            cfg.model.name_or_path, counts["train_features"], counts["train_examples"],
            counts["eval_features"], counts["eval_examples"], cfg.trainer.epochs,
            steps_per_epoch, where, cfg.trainer.engine.value,
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
) -> Iterator[RecordedRun]:
    """Record a run; on exit (also on failure) write summary.json with the run's status and
    finish the trackers."""
    config = resolved_config(cfg)
    recorder = RunRecorder(run_dir, accelerator, config=config, counts=setup.counts)
    trackers = make_trackers(cfg, run_dir, config, accelerator.is_main_process)
    run = RecordedRun(cfg, setup, accelerator, eval_loader, recorder, trackers)
    status = "failed"
    try:
        yield run
        status = "completed"
    except KeyboardInterrupt:
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


def train_with_accelerate(cfg: QAExpConfig, run_dir: Path) -> dict:
    """Fine-tune with the Accelerate loop and evaluate after every epoch (or, with
    trainer.epochs=0, evaluate the model as loaded); return the run summary."""
    run_began = time.time()
    setup = prepare_run(cfg)
    accelerator = setup.accelerator
    model = load_model(cfg.model)
    on_gpu = accelerator.device.type == "cuda"
    loader_kwargs = {"num_workers": cfg.hardware.dataloader_workers, "pin_memory": on_gpu}
    train_loader = optimizer = scheduler = None
    steps_per_epoch = 0
    if setup.train_features is not None:
        train_loader = make_train_loader(
            setup.train_features, setup.tokenizer, cfg.trainer, cfg.max_length, cfg.seed,
            **loader_kwargs,
        )  # fmt: skip
        optimizer = make_optimizer(model, cfg.optimizer, fused=on_gpu)
        steps_per_epoch = math.ceil(len(train_loader) / cfg.trainer.gradient_accumulation_steps)
        total_steps = steps_per_epoch * cfg.trainer.epochs
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
    with recorded_run(cfg, run_dir, setup, accelerator, eval_loader, run_began) as run:
        run.announce(steps_per_epoch)
        global_step = 0
        # trainer.epochs=0 evaluates the checkpoint as it is (recorded as epoch 0).
        for epoch in range(1, cfg.trainer.epochs + 1) if cfg.trainer.epochs else [0]:
            if epoch:
                stats = train_one_epoch(
                    model, train_loader, optimizer, scheduler, accelerator, cfg, epoch,
                    run.trackers, global_step,
                )  # fmt: skip
            else:
                stats = EpochStats(loss=float("nan"), steps=0, seconds=0.0, features=0, tokens=0)
            global_step += stats.steps
            run.end_epoch(epoch, global_step, stats, model)
    return run.summary


def train(cfg: QAExpConfig, run_dir: Path) -> dict:
    """Run one job with the engine that `trainer.engine` names, then write the model card
    and push to the Hub when asked; return the run summary.

    Evaluate-only runs (trainer.epochs=0) take the same evaluation path with either engine.
    """
    if cfg.trainer.engine == TrainerEngine.hf and cfg.trainer.epochs:
        from qaexp.engine_hf import train_with_hf_trainer

        summary = train_with_hf_trainer(cfg, run_dir)
    else:
        summary = train_with_accelerate(cfg, run_dir)
    share_run(cfg, run_dir, summary)
    return summary
