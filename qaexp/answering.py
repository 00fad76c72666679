"""The question-answering pipeline that transformers 5 removed, in qaexp.

    import qaexp
    qa = qaexp.pipeline("outputs/runs/DATE/TIME/checkpoint")
    qa(question="Who wrote it?", context="It was written by Ada Lovelace.")
    # {"answer": "Ada Lovelace", "score": 0.97, "start": 18, "end": 30}

The interface is that of the transformers 4.x ``question-answering`` pipeline: keyword
``question``/``context`` (strings or lists), a dict or a list of dicts, ``top_k``,
``max_answer_len``, ``max_seq_len``/``doc_stride`` (here also ``max_length``/``stride``),
``batch_size``, ``device`` (the GPU when there is one) and ``handle_impossible_answer``. Answers agree with qaexp's
evaluation by construction: contexts are cut into the same windows
(`qaexp.features.prepare_eval_features`), batched by the same collator
(`qaexp.batching.make_eval_loader`), and searched by the same n-best post-processing
(`qaexp.postprocess.postprocess_nbest`).

Shapes: one question gives one result, a list gives a list of results in input order; a
result is a dict, or with ``top_k`` > 1 a list of up to ``top_k`` dicts, best first. (The old
pipeline also returned a bare dict for a list of one question, and for top_k > 1 when only one
span was possible; here the shape depends on the call alone, never on the data.) ``score`` is
the softmax of start + end logits over all valid spans of the example, in all its windows;
``start``/``end`` are character offsets, ``context[start:end] == answer``.

SQuAD v2.0 (``handle_impossible_answer``, on by default for a checkpoint trained with
unanswerable questions, whose ``null_threshold.json`` holds the threshold chosen on its
evaluation set): the answer is ``""`` with ``start == end == 0`` when the null score (CLS
start + end) beats the best span by more than ``null_score_diff_threshold``, as in the old
pipeline. Its ``score`` is the probability of "no answer" in the softmax over the null score
and every span, and the spans' scores are rescaled to share that softmax.

``qaexp.pipeline`` is this module's `pipeline`, imported on first use (see qaexp/__init__.py).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from qaexp.batching import make_eval_loader
from qaexp.checks import check_windows
from qaexp.config import ANSWER_BATCH_SIZE, MAX_ANSWER_LENGTH, MAX_LENGTH, N_BEST, STRIDE
from qaexp.data import question_record
from qaexp.errors import QAExpError
from qaexp.evaluation import answer_windows, collect_logits
from qaexp.modeling import load_qa_checkpoint
from qaexp.postprocess import postprocess_nbest, postprocess_predictions_v2
from qaexp.serving.backend import load_export, serving_folder
from qaexp.tracking.rundir import read_null_threshold

__all__ = ["AnswerSettings", "QuestionAnsweringPipeline", "pipeline"]

log = logging.getLogger(__name__)

# The old pipeline's argument names, and qaexp's config names, for the same settings.
ALIASES = {
    "max_seq_len": "max_length",
    "doc_stride": "stride",
    "max_answer_length": "max_answer_len",
    "topk": "top_k",
}
NO_ANSWER = {"answer": "", "score": 0.0, "start": 0, "end": 0}


@dataclasses.dataclass(frozen=True)
class AnswerSettings:
    """How answers are searched; every field can be set per pipeline and per call."""

    top_k: int = 1  # answers per question
    max_answer_len: int = MAX_ANSWER_LENGTH  # longest answer, in tokens (max_answer_length)
    max_length: int | None = None  # tokens per window; None: min(the model's limit, 384)
    stride: int | None = None  # tokens shared by windows; None: min(max_length // 2, 128)
    n_best: int = N_BEST  # start/end candidates per window (raised to top_k when smaller)
    batch_size: int = ANSWER_BATCH_SIZE  # windows per forward pass
    # SQuAD v2.0: may the answer be "" (no answer)? None: when the checkpoint recorded a
    # null threshold (trained with unanswerable questions).
    handle_impossible_answer: bool | None = None
    # "" when null score - best span score exceeds this; None: the checkpoint's, else 0.0
    null_score_diff_threshold: float | None = None

    def updated(self, **overrides: Any) -> AnswerSettings:
        """A copy with `overrides` applied (old names accepted), checked."""
        names = {f.name for f in dataclasses.fields(self)}
        changes = {}
        for key, value in overrides.items():
            name = ALIASES.get(key, key)
            if name not in names:
                raise TypeError(
                    f"unknown argument {key!r}; the pipeline takes {sorted(names | set(ALIASES))}"
                )
            changes[name] = value
        settings = dataclasses.replace(self, **changes)
        settings.check()
        return settings

    def check(self) -> None:
        _check_null_settings(self.handle_impossible_answer, self.null_score_diff_threshold)
        for f in dataclasses.fields(self):
            if f.name in NULL_SETTINGS:
                continue
            value = getattr(self, f.name)
            optional = f.name in ("max_length", "stride")
            if value is None and optional:
                continue
            smallest = 0 if f.name == "stride" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
                raise QAExpError(
                    f"{f.name}={value!r}: must be an integer of at least {smallest}"
                    f"{' (or None for the default)' if optional else ''}."
                )

    def windows(self, tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
        """max_length and stride, with the old pipeline's defaults for the ones left None."""
        limit = getattr(tokenizer, "model_max_length", None) or MAX_LENGTH
        max_length = self.max_length or min(limit, MAX_LENGTH)
        stride = self.stride if self.stride is not None else min(max_length // 2, STRIDE)
        return max_length, stride


NULL_SETTINGS = ("handle_impossible_answer", "null_score_diff_threshold")


def _check_null_settings(handle: object, threshold: object) -> None:
    if handle is not None and not isinstance(handle, bool):
        raise QAExpError(f"handle_impossible_answer={handle!r}: must be True, False or None.")
    number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
    if threshold is not None and not (number and math.isfinite(threshold)):
        raise QAExpError(
            f"null_score_diff_threshold={threshold!r}: must be a finite number (or None for "
            "the checkpoint's recorded threshold, else 0.0)."
        )


def with_no_answer(
    candidates: list[dict], null_odds: float, threshold: float, top_k: int
) -> list[dict]:
    """`candidates` (best first) with the "no answer" entry added: first when `null_odds`
    (null score - best span score) exceeds `threshold`, else after the spans that score
    higher. Scores become one softmax over the null score and the spans."""
    if not candidates or null_odds == math.inf:
        return [dict(NO_ANSWER, score=1.0)]
    # p_null / p_best = exp(null_odds) in the joint softmax, so p_null = sigmoid(log_ratio).
    log_ratio = math.log(max(candidates[0]["score"], 1e-300)) + null_odds
    p_null = 1.0 / (1.0 + math.exp(-log_ratio)) if log_ratio > -700 else 0.0
    spans = [dict(c, score=c["score"] * (1.0 - p_null)) for c in candidates]
    place = 0
    if null_odds <= threshold:  # a span wins; "" goes after the spans that score higher
        place = 1
        while place < len(spans) and spans[place]["score"] >= p_null:
            place += 1
    spans.insert(place, dict(NO_ANSWER, score=p_null))
    return spans[:top_k]


def inference_device(device: str | int | torch.device | None) -> torch.device:
    """None/"auto": the first GPU when there is one, else the CPU; an int is a CUDA index
    (-1: the CPU), as in the old pipeline; "gpu" means "cuda"."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, int):
        return torch.device("cpu") if device < 0 else torch.device("cuda", device)
    try:
        resolved = torch.device("cuda" if device == "gpu" else device)
    except (RuntimeError, TypeError) as err:
        raise QAExpError(
            f"device={device!r} is not a device (use auto, cpu, cuda or cuda:N)."
        ) from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise QAExpError(f"device={device!r}, but PyTorch sees no CUDA device; use device=cpu.")
    return resolved


def as_records(
    args: tuple, question: str | Sequence[str] | None, context: str | Sequence[str] | None
) -> tuple[list[dict[str, str]], bool]:
    """The call's inputs as question/context records, and whether it asked one question."""
    if args:
        if len(args) > 1 or question is not None or context is not None:
            raise QAExpError(
                "Pass the inputs one way: question=... and context=..., or one dict, or one "
                "list of dicts with 'question' and 'context'."
            )
        data = args[0]
        if isinstance(data, Mapping):
            return [question_record(data, "the input")], True
        if isinstance(data, (list, tuple)):
            return [question_record(d, f"input {i}") for i, d in enumerate(data)], False
        raise QAExpError(f"Expected a dict or a list of dicts, got {type(data).__name__}.")
    if question is None or context is None:
        raise QAExpError("Both question= and context= are needed.")
    if isinstance(question, str) and isinstance(context, str):
        return [question_record({"question": question, "context": context}, "the input")], True
    questions = [question] if isinstance(question, str) else list(question)
    contexts = [context] if isinstance(context, str) else list(context)
    if len(questions) == 1 < len(contexts):
        questions *= len(contexts)  # one question about several contexts
    elif len(contexts) == 1 < len(questions):
        contexts *= len(questions)  # several questions about one context
    if len(questions) != len(contexts):
        raise QAExpError(
            f"{len(questions)} questions and {len(contexts)} contexts: pass one context per "
            "question, or one context for all of them."
        )
    pairs = zip(questions, contexts, strict=True)
    return [
        question_record({"question": q, "context": c}, f"input {i}")
        for i, (q, c) in enumerate(pairs)
    ], False


class QuestionAnsweringPipeline:
    """Answers questions about contexts with an extractive QA model (see the module doc)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        device: torch.device,
        settings: AnswerSettings,
        null_threshold: float | None = None,
    ):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.settings = settings
        self.null_threshold = null_threshold  # recorded with the checkpoint (SQuAD v2.0)

    def __call__(
        self,
        *args: Any,
        question: str | Sequence[str] | None = None,
        context: str | Sequence[str] | None = None,
        **settings: Any,
    ) -> dict | list:
        chosen = self.settings.updated(**settings)
        records, single = as_records(args, question, context)
        ids = [str(i) for i in range(len(records))]
        examples = datasets.Dataset.from_dict(
            {
                "id": ids,
                "question": [r["question"] for r in records],
                "context": [r["context"] for r in records],
            }
        )
        answers = self.answer(examples, chosen)
        results = [answers[i] if chosen.top_k > 1 else (answers[i] or [NO_ANSWER])[0] for i in ids]
        return results[0] if single else results

    def answer(
        self, examples: datasets.Dataset, settings: AnswerSettings | None = None
    ) -> dict[str, list[dict]]:
        """The best `top_k` answers of every example (columns id, question, context), by id:
        lists of ``{"answer", "score", "start", "end"}``, best first, ``[]`` when none."""
        s = settings or self.settings
        if len(examples) == 0:
            return {}
        max_length, stride = s.windows(self.tokenizer)
        check_windows(examples["question"], self.tokenizer, max_length, stride, "input")
        features, start, end = answer_windows(
            self.model, self.tokenizer, examples, max_length, stride, s.batch_size
        )
        nbest = postprocess_nbest(
            examples,
            features,
            start,
            end,
            n_best=max(s.n_best, s.top_k),
            max_answer_length=s.max_answer_len,
            top_k=s.top_k,
        )
        ranked = {
            example_id: [
                {"answer": c["text"], "score": c["score"], "start": c["start"], "end": c["end"]}
                for c in candidates
            ]
            for example_id, candidates in nbest.items()
        }
        if not self.handles_impossible(s):
            return ranked
        threshold = self.threshold(s)
        _, odds = postprocess_predictions_v2(
            examples, features, start, end, s.n_best, s.max_answer_len, threshold
        )
        return {i: with_no_answer(r, odds[i], threshold, s.top_k) for i, r in ranked.items()}

    def handles_impossible(self, settings: AnswerSettings) -> bool:
        """Whether "" (no answer) may win: the setting, else whether the checkpoint recorded
        a null threshold."""
        if settings.handle_impossible_answer is not None:
            return settings.handle_impossible_answer
        return self.null_threshold is not None

    def threshold(self, settings: AnswerSettings) -> float:
        if settings.null_score_diff_threshold is not None:
            return float(settings.null_score_diff_threshold)
        return self.null_threshold if self.null_threshold is not None else 0.0

    def window_logits(
        self, features: datasets.Dataset, batch_size: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(windows, width) start and end logits, row i for window i, padding at -inf."""
        loader = make_eval_loader(features, self.tokenizer, batch_size, width)
        return collect_logits(self.model, loader, len(features), width)


def pipeline(
    checkpoint: str | PathLike | torch.nn.Module,
    tokenizer: str | PreTrainedTokenizerBase | None = None,
    device: str | int | torch.device | None = None,
    backend: str = "auto",
    **settings: Any,
) -> QuestionAnsweringPipeline:
    """A question-answering pipeline for `checkpoint`: a folder written by save_pretrained (a
    qaexp run's checkpoint/), a Hub id, or a loaded QA model (then pass its `tokenizer`).

    An exported folder (`python -m qaexp.export`) answers through ONNX Runtime on the CPU;
    `backend`: auto (that, else PyTorch), torch, onnx or onnx-int8 (the export written
    beside `checkpoint`).

    `settings` are the defaults of every call: top_k, max_answer_len, max_length (or
    max_seq_len), stride (or doc_stride), n_best, batch_size, handle_impossible_answer,
    null_score_diff_threshold; see `AnswerSettings`. A checkpoint folder's
    null_threshold.json (written by runs with unanswerable questions) turns
    handle_impossible_answer on with its threshold.
    """
    chosen = AnswerSettings().updated(**settings)
    if isinstance(checkpoint, torch.nn.Module):
        if tokenizer is None:
            raise QAExpError("A model object needs its tokenizer: pipeline(model, tokenizer=...).")
        model = checkpoint
    elif (exported := serving_folder(checkpoint, backend)) is not None:
        model, loaded = load_export(exported)
        tokenizer, checkpoint = tokenizer or loaded, exported
        device = onnx_device(device)
    else:
        model, loaded = load_qa_checkpoint(str(checkpoint), "checkpoint")
        tokenizer = tokenizer or loaded
    if isinstance(tokenizer, str):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    recorded = None
    if not isinstance(checkpoint, torch.nn.Module) and Path(checkpoint).is_dir():
        recorded = read_null_threshold(Path(checkpoint))
    return QuestionAnsweringPipeline(model, tokenizer, inference_device(device), chosen, recorded)


def onnx_device(device: str | int | torch.device | None) -> str:
    """An exported model runs on the CPU (ONNX Runtime's CPU provider): auto means cpu."""
    if device is None or device == "auto" or inference_device(device).type == "cpu":
        return "cpu"
    raise QAExpError(
        f"device={device}: exported (ONNX) models answer on the CPU here; use device=cpu, or "
        "the PyTorch checkpoint (backend=torch) on the GPU."
    )
