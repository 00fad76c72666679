"""The Trainer engine (`trainer.engine=hf`): train with transformers.Trainer + TrainingArguments.

This is the seed's first training path. The Trainer owns the loop: its own Accelerator,
sampler, learning-rate schedule, mixed precision and gradient clipping. qaexp supplies all
the rest, so that the two engines differ only in the loop: the same windows and references
(`prepare_data`), the same collator, the same AdamW parameter groups (`make_optimizer`), and
after every epoch the same evaluation and records (`RecordedRun.end_epoch`: qaexp's
post-processing and SQuAD metric, the run directory files, the trackers). The Trainer's own
evaluation and checkpointing are off (`eval_strategy="no"`, `save_strategy="no"`).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path

import datasets
import torch
from accelerate.utils import set_seed
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import LengthGroupedSampler

from qaexp.batching import make_collator, window_lengths
from qaexp.config import QAExpConfig
from qaexp.modeling import load_model
from qaexp.tracking import RunLabels
from qaexp.tracking.rundir import EpochStats
from qaexp.training.optimizer import make_optimizer, optimizer_steps_per_epoch
from qaexp.training.recording import RecordedRun, recorded_run
from qaexp.training.runtime import dataloader_workers, resolve_device, resolve_mixed_precision
from qaexp.training.setup import eval_loader, prepare_data_once

log = logging.getLogger(__name__)

# The Trainer's output_dir inside the run dir; nothing is saved there (save_strategy="no"),
# and it is removed at the end when it stayed empty.
TRAINER_DIR = "hf_trainer"


def training_arguments(cfg: QAExpConfig, output_dir: Path) -> TrainingArguments:
    """qaexp's trainer/optimizer/hardware settings as TrainingArguments (transformers 5)."""
    device = resolve_device(cfg.hardware)
    precision = resolve_mixed_precision(cfg.hardware, device)
    t, o = cfg.trainer, cfg.optimizer
    return TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=t.epochs,
        per_device_train_batch_size=t.train_batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=o.lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.betas[0],
        adam_beta2=o.betas[1],
        adam_epsilon=o.eps,
        lr_scheduler_type=o.scheduler.value,
        warmup_steps=float(o.warmup_ratio),  # a float in [0, 1) is a ratio of all steps
        max_grad_norm=o.max_grad_norm or 0.0,  # 0 disables clipping
        eval_strategy="no",  # qaexp evaluates after every epoch (EpochEndEvaluation)
        save_strategy="no",  # qaexp saves the best epoch's checkpoint (RunRecorder)
        report_to="none",  # qaexp's trackers get the numbers
        logging_strategy="steps",
        logging_steps=t.log_every_n_steps,
        use_cpu=device == "cpu",
        fp16=precision == "fp16",
        bf16=precision == "bf16",
        tf32=cfg.hardware.tf32 if device == "gpu" else None,
        seed=cfg.seed,
        dataloader_num_workers=dataloader_workers(cfg.hardware, device),
        dataloader_pin_memory=device == "gpu",
    )


class QATrainer(Trainer):
    """A Trainer that tallies what qaexp records per epoch (mean loss, windows, tokens) and
    groups training windows by length from the Arrow column (the stock sampler decodes every
    row in Python to measure it)."""

    def __init__(self, *args, group_by_length: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.group_by_length = group_by_length
        self.reset_tally()

    def reset_tally(self) -> None:
        self.loss_sum = torch.zeros(())
        self.batches = self.windows = self.tokens = 0

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if model.training:
            loss = result[0] if return_outputs else result
            self.loss_sum = self.loss_sum.to(loss.device) + loss.detach().float()
            self.batches += 1
            self.windows += inputs["input_ids"].shape[0]
            self.tokens += int(inputs["attention_mask"].sum())
        return result

    def epoch_stats(self, seconds: float, steps: int) -> EpochStats:
        """This epoch's tally, reduced over processes as the Accelerate loop does."""
        acc = self.accelerator
        mean = acc.reduce(self.loss_sum.to(acc.device) / max(self.batches, 1), reduction="mean")
        counts = acc.reduce(torch.tensor([self.windows, self.tokens], device=acc.device), "sum")
        return EpochStats(mean.item(), steps, seconds, int(counts[0]), int(counts[1]))

    # Overrides the Trainer's (private) sampler hook; its signature is that of transformers 5.
    def _get_train_sampler(self, train_dataset: datasets.Dataset | None = None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if not self.group_by_length:
            return super()._get_train_sampler(train_dataset)
        return LengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=window_lengths(dataset).tolist(),
        )


class EpochEndEvaluation(TrainerCallback):
    """After every epoch: EM/F1 and the records through qaexp (`RecordedRun.end_epoch`);
    per logging step: the loss and learning rate to the trackers."""

    def __init__(self, trainer: QATrainer, run: RecordedRun):
        self.trainer, self.run = trainer, run
        self.epoch = self.first_step = 0
        self.began = time.perf_counter()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.epoch += 1
        self.first_step = state.global_step
        self.trainer.reset_tally()
        self.began = time.perf_counter()

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        seconds = time.perf_counter() - self.began
        stats = self.trainer.epoch_stats(seconds, state.global_step - self.first_step)
        self.run.end_epoch(self.epoch, state.global_step, stats, model)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        metrics = {"train_loss": logs.get("loss"), "lr": logs.get("learning_rate")}
        metrics = {k: float(v) for k, v in metrics.items() if v is not None}
        if metrics:
            for tracker in self.run.trackers:
                tracker.log_step(state.global_step, metrics)


def train_with_hf_trainer(cfg: QAExpConfig, run_dir: Path, labels: RunLabels | None = None) -> dict:
    """Fine-tune with transformers.Trainer, evaluating and recording after every epoch as the
    Accelerate engine does; return the run summary. The Trainer's Accelerator is the run's
    only one."""
    began = time.time()
    set_seed(cfg.seed)
    output_dir = Path(run_dir) / TRAINER_DIR
    args = training_arguments(cfg, output_dir)
    data = prepare_data_once(cfg, args.main_process_first(desc="qaexp windows"))
    model = load_model(cfg.model)
    trainer = QATrainer(
        model=model,
        args=args,
        train_dataset=data.train_windows,
        data_collator=make_collator(
            data.tokenizer,
            cfg.max_length,
            cfg.trainer.pad_to_max_length,
            cfg.trainer.pad_to_multiple_of,
        ),
        processing_class=data.tokenizer,
        optimizers=(make_optimizer(model, cfg.optimizer), None),
        group_by_length=cfg.trainer.group_by_length and not cfg.trainer.pad_to_max_length,
    )
    accelerator = trainer.accelerator
    evaluation = accelerator.prepare(eval_loader(data, cfg, accelerator.device))
    batches = math.ceil(
        len(data.train_windows) / (cfg.trainer.train_batch_size * accelerator.num_processes)
    )
    with recorded_run(cfg, run_dir, data, accelerator, evaluation, began, labels) as run:
        trainer.add_callback(EpochEndEvaluation(trainer, run))
        run.announce(optimizer_steps_per_epoch(batches, cfg.trainer.gradient_accumulation_steps))
        trainer.train()
    if accelerator.is_main_process and output_dir.is_dir() and not any(output_dir.iterdir()):
        shutil.rmtree(output_dir)
    return run.summary
