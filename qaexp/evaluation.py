"""Evaluation: run the model over eval windows on every process, gather the logits in window
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

from qaexp.batching import WINDOW_INDEX, make_eval_loader
from qaexp.features import prepare_eval_features
from qaexp.metrics import squad_metrics, squad_v2_metrics
from qaexp.postprocess import postprocess_answers

# The SQuAD v2.0 metrics a run records beside exact_match/f1 (the official script's keys).
# A key whose subset is empty (no answerable or no unanswerable question) is recorded as null.
SQUAD_V2_KEYS = (
    "exact",
    "total",
    "HasAns_exact",
    "HasAns_f1",
    "HasAns_total",
    "NoAns_exact",
    "NoAns_f1",
    "NoAns_total",
    "best_exact",
    "best_exact_thresh",
    "best_f1",
    "best_f1_thresh",
)


@dataclass
class EvalResult:
    exact_match: float
    f1: float
    predictions: dict[str, str]
    seconds: float
    windows_per_second: float
    # SQuAD v2.0 only: every SQUAD_V2_KEYS value, and id -> null odds (the na-prob file)
    squad_v2: dict[str, float | None] | None = None
    null_odds: dict[str, float] | None = None
    # id -> start_logit + end_logit of the best span (None: no valid span); see
    # qaexp.postprocess.ScoredAnswers
    span_logits: dict[str, float | None] | None = None


@dataclass(frozen=True)
class AnswerSearch:
    """How logits become answers: the n-best search, and SQuAD v2.0's "no answer" rule."""

    n_best: int
    max_answer_length: int
    unanswerable: bool = False
    null_score_diff_threshold: float = 0.0


def answer_windows(
    model: torch.nn.Module,
    tokenizer,
    examples: datasets.Dataset,
    max_length: int,
    stride: int,
    batch_size: int,
) -> tuple[datasets.Dataset, np.ndarray, np.ndarray]:
    """`examples` (columns id, question, context) cut into eval windows, and every window's
    start and end logits from `model`: what the pipeline and an export's gate search."""
    columns = examples.select_columns(["id", "question", "context"]).to_dict()
    features = datasets.Dataset.from_dict(
        prepare_eval_features(columns, tokenizer, max_length, stride)
    )
    loader = make_eval_loader(features, tokenizer, batch_size, max_length)
    start, end = collect_logits(model, loader, len(features), max_length)
    return features, start, end


def collect_logits(
    model: torch.nn.Module,
    loader: DataLoader,
    num_windows: int,
    width: int,
    accelerator: Accelerator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(num_windows, width) start and end logits, row i for window i, padding at -inf.

    With an `accelerator` every process runs its shard and the logits are gathered; without
    one, batches go to the model's device. Either way every window must arrive exactly once.
    """
    start = np.full((num_windows, width), -np.inf, dtype=np.float32)
    end = np.full((num_windows, width), -np.inf, dtype=np.float32)
    seen = np.zeros(num_windows, dtype=np.int64)
    # A model without parameters (an ONNX Runtime session, qaexp.serving) takes CPU batches.
    device = next(model.parameters(), torch.empty(0)).device
    model.eval()
    show = accelerator is not None and accelerator.is_local_main_process
    with torch.inference_mode():
        for batch in tqdm(loader, desc="evaluate", disable=not show, leave=False):
            index = batch.pop(WINDOW_INDEX)
            if accelerator is None:
                batch = batch.to(device)
            out = model(**batch)
            # (batch, width, 2): the batch dimension first, as gathering concatenates on it.
            logits = torch.stack([out.start_logits, out.end_logits], dim=-1).float()
            if accelerator is not None:
                logits, index = _gather(accelerator, logits, index)
            index, logits = index.cpu().numpy(), logits.cpu().numpy()
            w = min(logits.shape[1], width)
            start[index, :w] = logits[:, :w, 0]
            end[index, :w] = logits[:, :w, 1]
            np.add.at(seen, index, 1)
    _check_each_window_once(seen)
    return start, end


def _gather(
    accelerator: Accelerator, logits: torch.Tensor, index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    # Batches differ in width across processes: pad before gathering.
    logits = accelerator.pad_across_processes(logits, dim=1, pad_index=float("-inf"))
    # gather_for_metrics drops the rows the sampler repeated to even out the last batch.
    return accelerator.gather_for_metrics((logits, index))


def _check_each_window_once(seen: np.ndarray) -> None:
    if not (seen == 1).all():
        missing, repeated = int((seen == 0).sum()), int((seen > 1).sum())
        raise RuntimeError(
            f"Evaluation lost {missing} and repeated {repeated} of {len(seen)} windows; "
            "predictions would be wrong."
        )


def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    accelerator: Accelerator,
    examples: datasets.Dataset,
    features: datasets.Dataset,
    references: dict[str, list[str]],
    width: int,
    search: AnswerSearch,
) -> EvalResult:
    """EM/F1 of the model on the examples: the SQuAD v1.1 metric over all gold answers, or
    with `search.unanswerable` the SQuAD v2.0 metrics (exact_match/f1 are then v2.0's
    exact/f1 over all questions)."""
    began = time.perf_counter()
    start, end = collect_logits(model, loader, len(features), width, accelerator)
    result = score_logits(examples, features, start, end, references, search)
    result.seconds = time.perf_counter() - began
    result.windows_per_second = len(features) / result.seconds if result.seconds else float("nan")
    return result


def score_logits(
    examples: datasets.Dataset,
    features: datasets.Dataset,
    start: np.ndarray,
    end: np.ndarray,
    references: dict[str, list[str]],
    search: AnswerSearch,
) -> EvalResult:
    """Answers and scores from window logits (timings left at 0)."""
    answers = postprocess_answers(
        examples,
        features,
        start,
        end,
        search.n_best,
        search.max_answer_length,
        search.unanswerable,
        search.null_score_diff_threshold,
    )
    predictions, logits = answers.predictions, answers.span_logits
    if not search.unanswerable:
        scores = squad_metrics(predictions, references)
        return EvalResult(
            scores["exact_match"], scores["f1"], predictions, 0.0, 0.0, None, None, logits
        )
    # The official script counts odds above --na-prob-thresh (1.0 by default) as "no answer":
    # a threshold above 1.0 is passed on, so the numbers are those of the predictions written.
    na_prob_thresh = max(1.0, search.null_score_diff_threshold)
    scores = squad_v2_metrics(predictions, references, answers.null_odds, na_prob_thresh)
    squad_v2 = {key: scores.get(key) for key in SQUAD_V2_KEYS}
    return EvalResult(
        scores["exact"], scores["f1"], predictions, 0.0, 0.0, squad_v2, answers.null_odds, logits
    )
