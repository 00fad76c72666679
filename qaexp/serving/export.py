"""Export a checkpoint to ONNX (optionally int8), behind an accuracy gate.

    python -m qaexp.export checkpoint=RUN/checkpoint [quantize=int8] [data=DEV.json]
        [max_f1_drop=0.5] [max_examples=N] [output=FOLDER]

Writes a folder beside the checkpoint (``RUN/checkpoint-onnx``, or ``-onnx-int8``): model.onnx,
the tokenizer, config.json, null_threshold.json when the checkpoint has one, and export.json
(source checkpoint, opset, quantization, inputs, and the gate's figures). The gate answers the
checkpoint's own evaluation questions (its run's summary.json config; ``data=`` an official
SQuAD JSON file instead) with PyTorch and with the exported model, and refuses the export
(exit 2, nothing left behind) when F1 drops by more than ``max_f1_drop`` points. Everything
is written to a staging folder that is renamed into place only when the gate passes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import math
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from qaexp.console import ConsoleFilter, quiet_libraries
from qaexp.errors import QAExpError
from qaexp.modeling import EXPORT_RECORD, is_export, load_qa_checkpoint
from qaexp.serving.backend import (
    MODEL_FILE,
    OUTPUT_NAMES,
    OnnxQuestionAnswering,
    export_folder,
    open_session,
    require_onnx,
)
from qaexp.serving.fusion import FusionReport, fuse
from qaexp.serving.gate import GateResult, gate_data, run_gate
from qaexp.tracking.lock import process_exists
from qaexp.tracking.rundir import NULL_THRESHOLD_FILE, write_json_atomic

log = logging.getLogger("qaexp.export")

USAGE = (
    "usage: python -m qaexp.export checkpoint=PATH [quantize=none|int8] [data=SQUAD_JSON] "
    "[max_f1_drop=0.5] [max_examples=N] [output=FOLDER]"
)
QUANTIZATIONS = ("none", "int8")
# The int8 recipe (measured in benchmarks/bench_serving.py): dynamic quantization of the
# MatMul weights and of the fused Attention's query/key/value weights (QAttention), QInt8 with
# one scale per output channel; activations are quantized per batch at run time. Embedding
# lookups (Gather) stay fp32: quantizing them saves size, not time.
# reduce_range: 7-bit weights. Without VNNI (AVX2 CPUs such as this project's) the u8 x s8
# products saturate in 16 bits (onnxruntime's quantize_dynamic docstring: "may improve the
# accuracy ... on non-VNNI machine, especially for per-channel mode"): with MatMul weights
# alone (before the graph was fused) the quickstart MiniLM kept F1 32.99 vs fp32 32.53 on 100
# SQuAD dev questions with it, 30.05 without (75% of answers identical instead of 80%);
# per-tensor scales reached 29.64 (25.25 with 7 bits). With QAttention too: F1 42.0 vs 41.8 on
# 1,000 questions (docs/speed.md).
INT8_OPS = ["MatMul", "Attention"]
INT8_PER_CHANNEL = True
INT8_REDUCE_RANGE = True
# What to try when the gate refuses an export.
REFUSED_ADVICE = {
    "int8": "Export without quantize=int8, or allow a larger drop with max_f1_drop=X.",
    "none": "An fp32 export should answer as PyTorch does: please report this, with the "
    "checkpoint's model type; max_f1_drop=X allows a larger drop.",
}
# Tries at putting the export in place while other exports of the checkpoint do the same.
RENAME_ATTEMPTS = 5
# The torch.onnx (dynamo) exporter's ONNX opset.
OPSET = 18
# The exported graph takes these inputs (those of them the tokenizer gives).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclasses.dataclass
class ExportConfig:
    checkpoint: str | None = None
    quantize: str = "none"
    data: str | None = None  # official SQuAD JSON; default: the run's evaluation data
    max_f1_drop: float = 0.5  # F1 points the export may lose against PyTorch
    max_examples: int | None = None  # gate on the first N questions (default: all)
    output: str | None = None  # default: beside the checkpoint


def parse_args(argv: list[str]) -> ExportConfig:
    keys = {f.name for f in dataclasses.fields(ExportConfig)}
    values: dict[str, object] = {}
    for word in argv:
        key, sep, value = word.partition("=")
        if not sep or key not in keys:
            raise QAExpError(f"{word!r} is not a known key=value argument. {USAGE}")
        values[key] = _typed(key, value)
    cfg = ExportConfig(**values)
    if not cfg.checkpoint:
        raise QAExpError(f"checkpoint=PATH is required. {USAGE}")
    if cfg.quantize not in QUANTIZATIONS:
        raise QAExpError(f"quantize={cfg.quantize}: must be one of {', '.join(QUANTIZATIONS)}.")
    return cfg


def _typed(key: str, value: str) -> object:
    """The numbers checked (max_f1_drop may be negative: a gate that always refuses)."""
    if key == "max_f1_drop":
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise QAExpError(f"{key}={value}: must be a finite number of F1 points.")
        return number
    if key == "max_examples" and (not value.isdigit() or int(value) < 1):
        raise QAExpError(f"{key}={value}: must be a whole number of at least 1.")
    return int(value) if key == "max_examples" else value


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """The exporter's and the quantizer's progress lines and warnings (pass by pass, node by
    node) stay out of the log; their failures still raise."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


class _Logits(torch.nn.Module):
    """The QA model with named tensor inputs and a (start, end) logits tuple out: what the
    exporter traces."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        out = self.model(**inputs)
        return out.start_logits, out.end_logits


def graph_inputs(tokenizer) -> list[str]:
    names = list(tokenizer.model_input_names)
    unknown = [n for n in names if n not in MODEL_INPUTS]
    if unknown or "input_ids" not in names or "attention_mask" not in names:
        raise QAExpError(
            f"The tokenizer gives {names}; the export supports models taking input_ids and "
            "attention_mask (and token_type_ids)."
        )
    return names


def export_onnx(model: torch.nn.Module, tokenizer, path: Path) -> list[str]:
    """Write `model` as ONNX to `path` (weights inside), batch and sequence axes dynamic,
    inputs exactly the tokenizer's; returns the input names."""
    names = graph_inputs(tokenizer)
    sample = tokenizer(
        ["What is exported?", "Which axes are dynamic?"],
        ["The model is exported to ONNX.", "Batch and sequence axes are dynamic in the graph."],
        padding=True,
        return_tensors="pt",
    )
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with silenced():
        program = torch.onnx.export(
            _Logits(model).eval(),
            (),
            kwargs={n: sample[n] for n in names},
            input_names=names,
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes={n: {0: batch, 1: sequence} for n in names},
            opset_version=OPSET,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    return names


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantization of `source`'s MatMul and Attention weights into `target`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with silenced():
        quantize_dynamic(
            source,
            target,
            op_types_to_quantize=INT8_OPS,
            per_channel=INT8_PER_CHANNEL,
            reduce_range=INT8_REDUCE_RANGE,
            weight_type=QuantType.QInt8,
            # The fused ops' outputs (com.microsoft domain) have no inferred type: float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def fused_export(source: Path, target: Path, inputs: list[str], vocab_size: int) -> FusionReport:
    """`source` fused for ONNX Runtime into `target`. The fusions are a speed-up, not a
    requirement: when onnxscript cannot fuse a graph, the export goes on unfused and says so
    (the accuracy gate checks whatever is served)."""
    try:
        with silenced():
            return fuse(source, target, inputs, vocab_size)
    except Exception as err:  # a library's failure on an unfamiliar graph: any type
        log.warning("The ONNX Runtime fusions failed (%s); exporting the graph unfused.", err)
        shutil.copy2(source, target)
        return FusionReport({}, False, f"fusions failed: {str(err)[:300]}")


def opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def write_export(cfg: ExportConfig, staging: Path) -> GateResult:
    """Fill `staging` with the export and run the gate (export.json is written last)."""
    checkpoint = Path(cfg.checkpoint).expanduser()
    model, tokenizer = load_qa_checkpoint(str(checkpoint), "checkpoint")
    model.eval()
    data = gate_data(checkpoint, tokenizer, cfg.data, cfg.max_examples)  # before any writing
    try:
        staging.mkdir(parents=True)
    except OSError as err:
        raise QAExpError(
            f"{staging.parent}: cannot write the export there ({err.strerror or err}). Choose "
            "a folder you can write to with output=FOLDER."
        ) from err
    raw, fp32 = staging / "exported.onnx", staging / "fused.onnx"
    log.info("Exporting %s to ONNX (torch.onnx, dynamo exporter, opset %d)", checkpoint, OPSET)
    inputs = export_onnx(model, tokenizer, raw)
    fusion = fused_export(raw, fp32, inputs, model.config.vocab_size)
    raw.unlink()
    log.info("Fused for ONNX Runtime: %s", fusion_summary(fusion))
    if cfg.quantize == "int8":
        log.info("Quantizing to int8 (dynamic, %s weights per channel, 7 bits)", "/".join(INT8_OPS))
        quantize_int8(fp32, staging / MODEL_FILE)
        fp32.unlink()
    else:
        fp32.rename(staging / MODEL_FILE)
    tokenizer.save_pretrained(staging)
    model.config.save_pretrained(staging)
    if (checkpoint / NULL_THRESHOLD_FILE).is_file():
        shutil.copy2(checkpoint / NULL_THRESHOLD_FILE, staging / NULL_THRESHOLD_FILE)
    exported = OnnxQuestionAnswering(open_session(staging / MODEL_FILE), inputs)
    result = run_gate(model, exported, tokenizer, data, cfg.max_f1_drop)
    record = export_record(cfg, staging, inputs, fusion, result)
    write_json_atomic(staging / EXPORT_RECORD, record)
    return result


def fusion_summary(report: FusionReport) -> str:
    fused = ", ".join(f"{name} {n}" for name, n in report.fusions.items()) or "nothing fused"
    mask = "attention mask as mask_index" if report.mask_index else report.note
    return f"{fused}; {mask}" if mask else fused


def export_record(
    cfg: ExportConfig, staging: Path, inputs: list[str], fusion: FusionReport, result: GateResult
) -> dict:
    """export.json: where the model comes from, how it was exported, and the accuracy check."""
    int8 = {
        "op_types": INT8_OPS,
        "per_channel": INT8_PER_CHANNEL,
        "reduce_range": INT8_REDUCE_RANGE,
        "weights": "QInt8",
    }
    return {
        "source_checkpoint": str(Path(cfg.checkpoint).expanduser().resolve()),
        "opset": opset_of(staging / MODEL_FILE),
        "quantization": cfg.quantize,
        "int8": int8 if cfg.quantize == "int8" else None,
        "inputs": inputs,
        "outputs": list(OUTPUT_NAMES),
        "exporter": f"torch.onnx dynamo (torch {torch.__version__})",
        "onnxruntime_fusion": fusion.record(),
        "model_bytes": (staging / MODEL_FILE).stat().st_size,
        "accuracy_check": result.record(),
    }


def check_source(cfg: ExportConfig) -> Path:
    checkpoint = Path(cfg.checkpoint).expanduser()
    if not checkpoint.is_dir():
        raise QAExpError(
            f"checkpoint={cfg.checkpoint}: no such folder ({checkpoint.resolve()}). Point it at a "
            "checkpoint folder written by save_pretrained, e.g. outputs/runs/DATE/TIME/checkpoint."
        )
    if is_export(checkpoint):
        raise QAExpError(
            f"checkpoint={cfg.checkpoint} is already an ONNX export ({EXPORT_RECORD}); export "
            "its source checkpoint instead."
        )
    return Path(cfg.output).expanduser() if cfg.output else export_folder(checkpoint, cfg.quantize)


def run(cfg: ExportConfig) -> Path:
    """Export, gate, and move the export into place; returns its folder."""
    require_onnx("python -m qaexp.export", extra=("onnx", "onnxscript"))
    target = check_source(cfg)
    remove_stale_staging(target)
    staging = target.with_name(f".{target.name}.staging-{os.getpid()}")
    try:
        result = write_export(cfg, staging)
        if not result.passed:
            raise QAExpError(
                f"Export refused: the exported model loses too much accuracy {result.figures()}. "
                f"Nothing was written. {REFUSED_ADVICE[cfg.quantize]}"
            )
        replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("Accuracy check passed %s", result.figures())
    log.info("Wrote %s", target)
    return target


def replace_folder(staging: Path, target: Path) -> None:
    """Put `staging` at `target`: a rename; an older export there is set aside first and
    removed after. Two exports of one checkpoint finishing together both succeed, the later
    one's folder staying (they hold the same export): when the other puts its folder at
    `target` between the two renames, it is set aside in turn."""
    for attempt in range(RENAME_ATTEMPTS):
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{attempt}")
        with contextlib.suppress(FileNotFoundError):  # another export moved it first
            target.rename(old)
        try:
            staging.rename(target)
        except OSError as err:
            if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
            continue
        finally:
            shutil.rmtree(old, ignore_errors=True)
        return
    raise QAExpError(
        f"{target}: another process kept writing an export there; run the export again."
    )


def remove_stale_staging(target: Path) -> None:
    """The staging and set-aside folders of exports that were killed (their process is gone):
    hidden folders beside `target` named after the process."""
    for folder in target.parent.glob(f".{target.name}.*-*"):
        kind, _, rest = folder.name[len(target.name) + 2 :].partition("-")
        pid = rest.split("-")[0]
        if kind in ("staging", "old") and pid.isdigit() and not process_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip() + "\n\n" + USAGE)
        return
    console_logging()
    try:
        run(parse_args(argv))
    except QAExpError as err:
        log.error("%s", err)
        sys.exit(2)


def console_logging() -> None:
    """qaexp's lines on the console; the libraries' only from warnings up, no progress bars."""
    handler = logging.StreamHandler()
    handler.addFilter(ConsoleFilter())
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    quiet_libraries()
