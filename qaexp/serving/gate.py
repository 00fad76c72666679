"""The accuracy gate of an export: the PyTorch checkpoint and the exported model are
evaluated on the same questions by the evaluation path that runs use (the same windows,
`collect_logits`, `score_logits`); EM/F1 of both, the share of identical answers, and whether
F1 dropped by more than allowed."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from qaexp.checks import check_windows
from qaexp.config import (
    ANSWER_BATCH_SIZE,
    MAX_ANSWER_LENGTH,
    MAX_LENGTH,
    N_BEST,
    STRIDE,
    from_dict,
)
from qaexp.data import load_raw_datasets, load_squad_json
from qaexp.errors import QAExpError
from qaexp.evaluation import AnswerSearch, EvalResult, answer_windows, score_logits
from qaexp.tracking.rundir import read_null_threshold

log = logging.getLogger(__name__)

RUN_SUMMARY = "summary.json"  # beside a run's checkpoint/: the run's config (its eval data)


@dataclass
class GateData:
    """The questions the gate asks (with gold answers) and how they are windowed and searched."""

    examples: datasets.Dataset
    source: str  # where the questions come from, for export.json and messages
    max_length: int
    stride: int
    search: AnswerSearch


def gate_data(
    checkpoint: Path, tokenizer: PreTrainedTokenizerBase, data: str | None, limit: int | None
) -> GateData:
    """`data` (an official SQuAD JSON file) with the pipeline's default settings, else the
    evaluation split and settings of the checkpoint's run (its summary.json config)."""
    gate = file_data(checkpoint, tokenizer, data) if data is not None else run_eval_data(checkpoint)
    if limit is not None and limit < len(gate.examples):
        gate.examples = gate.examples.select(range(limit))
        gate.source += f" (first {limit})"
    if len(gate.examples) == 0:
        raise QAExpError(f"The accuracy gate's data ({gate.source}) holds no questions.")
    check_windows(gate.examples["question"], tokenizer, gate.max_length, gate.stride, "data")
    return gate


def file_data(checkpoint: Path, tokenizer: PreTrainedTokenizerBase, data: str) -> GateData:
    examples = load_squad_json(str(Path(data).expanduser()), "data")
    limit = getattr(tokenizer, "model_max_length", None) or MAX_LENGTH
    max_length = min(MAX_LENGTH, limit)
    threshold = read_null_threshold(checkpoint)
    search = AnswerSearch(
        N_BEST,
        MAX_ANSWER_LENGTH,
        unanswerable=threshold is not None or any(not t for t in examples["answers"]),
        null_score_diff_threshold=threshold or 0.0,
    )
    return GateData(examples, f"data={data}", max_length, min(max_length // 2, STRIDE), search)


def run_eval_data(checkpoint: Path) -> GateData:
    summary = checkpoint.parent / RUN_SUMMARY
    try:
        config = json.loads(summary.read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise QAExpError(
            f"checkpoint={checkpoint} is not inside a qaexp run (no readable {summary} with the "
            "run's config), so the accuracy gate has no evaluation data: pass data=FILE (an "
            "official SQuAD JSON file with answers)."
        ) from None
    cfg = from_dict(config)
    examples = load_raw_datasets(cfg.data, ("validation",))["validation"]
    recorded = read_null_threshold(checkpoint)
    search = AnswerSearch(
        cfg.n_best,
        cfg.max_answer_length,
        unanswerable=recorded is not None or any(not a["text"] for a in examples["answers"]),
        null_score_diff_threshold=recorded
        if recorded is not None
        else cfg.null_score_diff_threshold,
    )
    source = f"the run's evaluation data ({summary})"
    return GateData(examples, source, cfg.max_length, cfg.stride, search)


def evaluate_model(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, data: GateData
) -> EvalResult:
    """EM/F1 and answers of `model` on the gate's questions (CPU), as evaluation computes them."""
    features, start, end = answer_windows(
        model, tokenizer, data.examples, data.max_length, data.stride, ANSWER_BATCH_SIZE
    )
    references = {r["id"]: r["answers"]["text"] for r in data.examples}
    return score_logits(data.examples, features, start, end, references, data.search)


@dataclass
class GateResult:
    source: str
    examples: int
    torch: dict  # exact_match, f1
    onnx: dict
    identical_answers: float  # percent of questions answered the same by both
    f1_drop: float  # torch f1 - onnx f1, in points
    max_f1_drop: float

    @property
    def passed(self) -> bool:
        return self.f1_drop <= self.max_f1_drop

    def record(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def figures(self) -> str:
        return (
            f"on {self.examples} questions of {self.source}: PyTorch EM "
            f"{self.torch['exact_match']:.2f} F1 {self.torch['f1']:.2f}, ONNX EM "
            f"{self.onnx['exact_match']:.2f} F1 {self.onnx['f1']:.2f} (F1 drop "
            f"{self.f1_drop:.2f} points, allowed {self.max_f1_drop:g}); identical answers "
            f"{self.identical_answers:.1f}%"
        )


def run_gate(
    reference: torch.nn.Module,
    exported: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    data: GateData,
    max_f1_drop: float,
) -> GateResult:
    """Evaluate the PyTorch model `reference` and `exported` (an ONNX model) on `data`."""
    log.info("Accuracy gate: %d questions of %s, PyTorch first", len(data.examples), data.source)
    before = evaluate_model(reference, tokenizer, data)
    log.info("Accuracy gate: the exported model")
    after = evaluate_model(exported, tokenizer, data)
    ids = list(before.predictions)
    same = sum(before.predictions[i] == after.predictions[i] for i in ids)
    return GateResult(
        source=data.source,
        examples=len(ids),
        torch={"exact_match": before.exact_match, "f1": before.f1},
        onnx={"exact_match": after.exact_match, "f1": after.f1},
        identical_answers=100.0 * same / len(ids),
        f1_drop=before.f1 - after.f1,
        max_f1_drop=max_f1_drop,
    )
