"""Evaluation: run the model over eval windows on every process, gather the logits in feature
order (exactly one row per window), post-process them into answers and score them."""

from __future__ import annotations

import time
from dataclasses import dataclass

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from qaexp.batching import FEATURE_INDEX
from qaexp.metrics import squad_metrics
from qaexp.postprocess import postprocess_predictions


@dataclass
class EvalResult:
    exact_match: float
    f1: float
    predictions: dict[str, str]
    seconds: float
    features_per_second: float


def predict_logits(
    model: torch.nn.Module,
    loader: DataLoader,
    accelerator: Accelerator,
    num_features: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(num_features, width) start and end logits, row i for window i, padding at -inf."""
    start = np.full((num_features, width), -np.inf, dtype=np.float32)
    end = np.full((num_features, width), -np.inf, dtype=np.float32)
    seen = np.zeros(num_features, dtype=np.int64)
    model.eval()
    bar = tqdm(loader, desc="evaluate", disable=not accelerator.is_local_main_process, leave=False)
    with torch.inference_mode():
        for batch in bar:
            index = batch.pop(FEATURE_INDEX)
            out = model(**batch)
            # (batch, width, 2): the batch dimension first, as gathering concatenates on it.
            logits = torch.stack([out.start_logits, out.end_logits], dim=-1).float()
            # Batches differ in width across processes: pad before gathering.
            logits = accelerator.pad_across_processes(logits, dim=1, pad_index=float("-inf"))
            # gather_for_metrics drops the rows the sampler repeated to even out the last batch.
            logits, index = accelerator.gather_for_metrics((logits, index))
            index = index.cpu().numpy()
            logits = logits.cpu().numpy()
            w = min(logits.shape[1], width)
            start[index, :w] = logits[:, :w, 0]
            end[index, :w] = logits[:, :w, 1]
            np.add.at(seen, index, 1)
    if not (seen == 1).all():
        missing, repeated = int((seen == 0).sum()), int((seen > 1).sum())
        raise RuntimeError(
            f"Distributed evaluation lost {missing} and repeated {repeated} of {num_features} "
            "windows; predictions would be wrong."
        )
    return start, end


def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    accelerator: Accelerator,
    examples: datasets.Dataset,
    features: datasets.Dataset,
    references: dict[str, list[str]],
    width: int,
    n_best: int,
    max_answer_length: int,
) -> EvalResult:
    """EM/F1 of the model on the examples (SQuAD v1.1 metric over all gold answers)."""
    began = time.perf_counter()
    start, end = predict_logits(model, loader, accelerator, len(features), width)
    predictions = postprocess_predictions(
        examples, features, start, end, n_best=n_best, max_answer_length=max_answer_length
    )
    scores = squad_metrics(predictions, references)
    seconds = time.perf_counter() - began
    return EvalResult(
        exact_match=scores["exact_match"],
        f1=scores["f1"],
        predictions=predictions,
        seconds=seconds,
        features_per_second=len(features) / seconds if seconds else float("nan"),
    )
