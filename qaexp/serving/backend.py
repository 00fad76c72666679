"""An exported model (a folder written by `python -m qaexp.export`) as a logit source:
an ONNX Runtime session behind the ``model(**batch)`` call that
`qaexp.evaluation.collect_logits` makes, so the pipeline, predict and the export's gate
answer from it with the windows, batching and n-best search they use for PyTorch models."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from qaexp.errors import QAExpError
from qaexp.modeling import EXPORT_RECORD, is_export

MODEL_FILE = "model.onnx"
OUTPUT_NAMES = ("start_logits", "end_logits")
# backend= values: which model answers. auto: an exported folder through ONNX Runtime, a
# checkpoint through PyTorch; onnx / onnx-int8: the export beside the checkpoint.
BACKENDS = ("auto", "torch", "onnx", "onnx-int8")
# The folder `python -m qaexp.export` writes beside a checkpoint, by quantization.
EXPORT_SUFFIX = {"none": "-onnx", "int8": "-onnx-int8"}


def missing_packages(extra: tuple[str, ...] = ()) -> list[str]:
    """The packages of the `onnx` extra (onnxruntime, and `extra`) that cannot be imported."""
    missing = []
    for name in ("onnxruntime", *extra):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def require_onnx(purpose: str, extra: tuple[str, ...] = ()) -> None:
    """Refuse with the install command when the `onnx` extra is missing."""
    missing = missing_packages(extra)
    if missing:
        raise QAExpError(
            f"{purpose} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} "
            'not installed. Install qaexp\'s onnx extra: pip install -e ".[onnx]" (or pip '
            f"install {' '.join(missing)}), then run the command again."
        )


def export_folder(checkpoint: str | Path, quantize: str) -> Path:
    """Where `python -m qaexp.export` puts the export of `checkpoint` (beside it)."""
    path = Path(checkpoint).expanduser()
    return path.with_name(path.name + EXPORT_SUFFIX[quantize])


def serving_folder(checkpoint: str | Path, backend: str) -> Path | None:
    """The exported folder that answers for (`checkpoint`, `backend`), or None for PyTorch."""
    if backend not in BACKENDS:
        raise QAExpError(f"backend={backend}: must be one of {', '.join(BACKENDS)}.")
    exported = is_export(checkpoint)
    if backend == "torch":
        if exported:
            raise QAExpError(
                f"backend=torch, but {checkpoint} is an ONNX export (it holds {EXPORT_RECORD}); "
                f"point at its source checkpoint (named in {EXPORT_RECORD}) or use backend=auto."
            )
        return None
    if backend == "auto" or exported:
        return Path(checkpoint).expanduser() if exported else None
    folder = export_folder(checkpoint, "int8" if backend == "onnx-int8" else "none")
    if not is_export(folder):
        quantize = " quantize=int8" if backend == "onnx-int8" else ""
        raise QAExpError(
            f"backend={backend}: {checkpoint} has no export beside it ({folder} holds no "
            f"{EXPORT_RECORD}). Write it with: python -m qaexp.export checkpoint={checkpoint}"
            f"{quantize}"
        )
    return folder


class OnnxQuestionAnswering(torch.nn.Module):
    """An ONNX Runtime session answering the call a QA model answers: ``model(**batch)`` with
    the tokenizer's inputs, returning start and end logits. It has no parameters; its batches
    stay on the CPU, where the session runs. `config`: the source model's (config.json)."""

    def __init__(self, session, input_names: list[str], config=None):
        super().__init__()
        self.session = session
        self.input_names = input_names
        self.config = config

    def forward(self, **batch: torch.Tensor) -> QuestionAnsweringModelOutput:
        feeds = {name: batch[name].cpu().numpy().astype(np.int64) for name in self.input_names}
        start, end = self.session.run(list(OUTPUT_NAMES), feeds)
        return QuestionAnsweringModelOutput(
            start_logits=torch.from_numpy(start), end_logits=torch.from_numpy(end)
        )


def open_session(model_file: Path, threads: int | None = None):
    """An ONNX Runtime CPU session for `model_file` (`threads`: intra-op threads, None: the
    runtime's choice, one per physical core)."""
    require_onnx(f"Answering with the ONNX model {model_file}")
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No busy-waiting between runs: spinning intra-op threads hold the cores for a while
    # after each call, taken from whatever else runs on a small shared CPU (tokenization and
    # post-processing between batches, other processes).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own types for unreadable models
        raise QAExpError(
            f"{model_file} could not be loaded by ONNX Runtime ({str(err).strip()[:300]}). "
            "Export the checkpoint again with python -m qaexp.export."
        ) from err


def export_model(folder: str | Path, threads: int | None = None) -> OnnxQuestionAnswering:
    """The exported model of `folder`: what a run evaluating the export loads
    (qaexp.modeling.serve_exports_with)."""
    folder = Path(folder).expanduser()
    model_file = folder / MODEL_FILE
    if not model_file.is_file():
        raise QAExpError(
            f"{folder} holds {EXPORT_RECORD} but no {MODEL_FILE}; export the checkpoint again "
            "with python -m qaexp.export."
        )
    session = open_session(model_file, threads)
    config = AutoConfig.from_pretrained(str(folder))
    return OnnxQuestionAnswering(session, [i.name for i in session.get_inputs()], config)


def load_export(
    folder: str | Path, threads: int | None = None
) -> tuple[OnnxQuestionAnswering, PreTrainedTokenizerBase]:
    """The exported model of `folder` and its tokenizer, which yields exactly the graph's
    inputs (no token_type_ids for a model that has none)."""
    folder = Path(folder).expanduser()
    model = export_model(folder, threads)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise QAExpError(
            f"{folder}: its tokenizer files could not be read ({err}); export the checkpoint "
            "again with python -m qaexp.export."
        ) from err
    produced = set(tokenizer.model_input_names)
    if not set(model.input_names) <= produced:
        raise QAExpError(
            f"{folder / MODEL_FILE} takes {model.input_names}, but its tokenizer gives "
            f"{sorted(produced)}; export the checkpoint again with python -m qaexp.export."
        )
    tokenizer.model_input_names = [n for n in tokenizer.model_input_names if n in model.input_names]
    return model, tokenizer
