"""Training: one run of one job, with the engine that `trainer.engine` names.

setup.py      checks, tokenizer, validated data, windows, the eval loader
runtime.py    devices, precision, the Accelerator
optimizer.py  AdamW, its schedule, steps per epoch
loop.py       the Accelerate engine (the default)
hf_engine.py  the transformers.Trainer engine (trainer.engine=hf)
recording.py  evaluation and records after every epoch, shared by both engines
state.py      the resumable training state; preemption.py: stop signals
"""

from __future__ import annotations

from pathlib import Path

from qaexp.config import QAExpConfig, TrainerEngine
from qaexp.tracking import RunLabels
from qaexp.tracking.share import share_run

__all__ = ["train"]


def train(cfg: QAExpConfig, run_dir: Path, labels: RunLabels | None = None) -> dict:
    """Run one job with the engine that `trainer.engine` names, then write the model card
    and push to the Hub when asked; return the run summary. `labels` group and name the run
    on tracker dashboards (qaexp.__main__ derives them from Hydra).

    Evaluate-only runs (trainer.epochs=0) take the same evaluation path with either engine.
    """
    if cfg.trainer.engine == TrainerEngine.hf and cfg.trainer.epochs:
        from qaexp.training.hf_engine import train_with_hf_trainer

        summary = train_with_hf_trainer(cfg, run_dir, labels)
    else:
        from qaexp.training.loop import train_with_accelerate

        summary = train_with_accelerate(cfg, run_dir, labels)
    share_run(cfg, run_dir, summary)
    return summary
