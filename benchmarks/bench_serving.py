"""Side by side in one process: a fine-tuned MiniLM answering real SQuAD dev questions with
PyTorch fp32 (eager), ONNX Runtime fp32 and ONNX Runtime int8 (`python -m qaexp.export`).
Prints questions/s over N questions (batched, as predict answers a file; the backends take
turns 20 questions at a time), p50/p95 latency of one question at a time (batch 1; they take
turns question by question), model size on disk, and EM/F1 of each. Taking turns makes a
change of load on a shared machine hit all three alike.

    python -m qaexp experiment=quickstart                     # a fine-tuned MiniLM
    python benchmarks/bench_serving.py --checkpoint outputs/runs/DATE/TIME/checkpoint
    python benchmarks/bench_serving.py --checkpoint ... --n 200 --latency-n 50

The exports are written beside the checkpoint when missing (the export's own accuracy gate
runs on the first --gate-n dev questions). Goal: int8 >= 2.5x PyTorch's
questions/s with F1 within 1 point. Compare the rows of one run, not runs on different days.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_SQUAD_DIR, DEV_FILE, load_examples, machine, print_json, print_table
from common import squad_file as find_squad_file

from qaexp.answering import pipeline
from qaexp.metrics import squad_metrics
from qaexp.serving.backend import MODEL_FILE, export_folder, is_export
from qaexp.serving.export import ExportConfig, run

BACKENDS = {"pytorch fp32": "torch", "onnx fp32": "onnx", "onnx int8": "onnx-int8"}
QUANTIZE = {"onnx": "none", "onnx-int8": "int8"}


def ensure_exports(checkpoint: Path, dev: Path, gate_n: int) -> None:
    for backend, quantize in QUANTIZE.items():
        if not is_export(export_folder(checkpoint, quantize)):
            print(f"exporting {backend} (gate on {gate_n} dev questions)")
            run(ExportConfig(str(checkpoint), quantize, str(dev), max_examples=gate_n))


def model_bytes(checkpoint: Path, backend: str) -> int:
    if backend == "torch":
        return sum(p.stat().st_size for p in checkpoint.glob("*.safetensors"))
    return (export_folder(checkpoint, QUANTIZE[backend]) / MODEL_FILE).stat().st_size


def throughputs(qas: dict, examples, chunk: int = 20) -> dict[str, tuple[float, dict]]:
    """Questions/s of each pipeline answering every example in batches, and the answers'
    EM/F1. The pipelines take turns chunk by chunk, so a change of load on a shared machine
    hits all of them alike."""
    seconds = dict.fromkeys(qas, 0.0)
    predictions: dict[str, dict] = {name: {} for name in qas}
    for begin in range(0, len(examples), chunk):
        part = examples.select(range(begin, min(begin + chunk, len(examples))))
        for name, qa in qas.items():
            began = time.perf_counter()
            ranked = qa.answer(part)
            seconds[name] += time.perf_counter() - began
            predictions[name].update({i: (a[0]["answer"] if a else "") for i, a in ranked.items()})
    references = {r["id"]: r["answers"]["text"] for r in examples}
    return {
        name: (
            len(examples) / seconds[name],
            {"predictions": predictions[name], **squad_metrics(predictions[name], references)},
        )
        for name in qas
    }


def latencies(qas: dict, examples) -> dict[str, np.ndarray]:
    """Seconds per question at batch 1, the backends taking turns on each question."""
    times: dict[str, list[float]] = {name: [] for name in qas}
    for record in examples:
        for name, qa in qas.items():
            began = time.perf_counter()
            qa(question=record["question"], context=record["context"])
            times[name].append(time.perf_counter() - began)
    return {name: np.array(t) for name, t in times.items()}


# int8 recipes beside the one the export uses (MatMul and fused Attention weights, per channel,
# 7 bits): the Attention left fp32, 8-bit weights, per-tensor scales, and the embedding tables
# (Gather) quantized too. All start from the fp32 export (fused for ONNX Runtime).
INT8_VARIANTS = {  # op types, per channel, reduce_range (7-bit weights)
    "int8 MatMul+Attention per-channel 7-bit (the export's)": (["MatMul", "Attention"], True, True),
    "int8 MatMul per-channel 7-bit (Attention fp32)": (["MatMul"], True, True),
    "int8 MatMul per-channel 8-bit": (["MatMul"], True, False),
    "int8 MatMul per-tensor 8-bit": (["MatMul"], False, False),
    "int8 MatMul+Gather per-channel 7-bit": (["MatMul", "Gather"], True, True),
}


def int8_variants(checkpoint: Path, examples, folder: Path) -> list[list]:
    """Questions/s, F1 and size of each INT8_VARIANTS recipe applied to the fp32 export."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from qaexp.answering import QuestionAnsweringPipeline
    from qaexp.serving.backend import OnnxQuestionAnswering, open_session

    fp32 = pipeline(checkpoint, device="cpu", backend="onnx")
    qas, sizes = {}, {}
    for name, (ops, per_channel, reduce_range) in INT8_VARIANTS.items():
        path = folder / f"variant{len(qas)}.onnx"
        quantize_dynamic(
            export_folder(checkpoint, "none") / MODEL_FILE,
            path,
            op_types_to_quantize=ops,
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # the fused ops' outputs
        )
        model = OnnxQuestionAnswering(open_session(path), fp32.model.input_names)
        qas[name] = QuestionAnsweringPipeline(model, fp32.tokenizer, fp32.device, fp32.settings)
        qas[name].answer(examples.select(range(8)))
        sizes[name] = path.stat().st_size / 1e6
    measured = throughputs(qas, examples)  # a first pass, then the measured one
    measured = throughputs(qas, examples)
    return [
        [name, rate, sizes[name], scores["exact_match"], scores["f1"]]
        for name, (rate, scores) in measured.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--n", type=int, default=1000, help="dev questions for questions/s")
    parser.add_argument("--latency-n", type=int, default=100, help="questions at batch 1")
    parser.add_argument("--gate-n", type=int, default=1000, help="the exports' gate questions")
    parser.add_argument("--squad-dir", type=Path, default=DEFAULT_SQUAD_DIR)
    parser.add_argument(
        "--int8-variants", action="store_true", help="also compare int8 recipes (INT8_VARIANTS)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # not the quantizer's pre-processing advice
    dev = find_squad_file(args.squad_dir, DEV_FILE)
    if dev is None:
        return
    ensure_exports(args.checkpoint, dev, args.gate_n)
    examples = load_examples(dev).select(range(args.n))
    qas = {name: pipeline(args.checkpoint, device="cpu", backend=b) for name, b in BACKENDS.items()}
    # Every figure is of a second pass over the same questions. PyTorch's first pass runs
    # much slower: oneDNN prepares its kernels for each new input shape (a batch of a new
    # width), and per-batch padding makes many widths; measured on 30 questions at batch 1,
    # p50 927 ms in the first pass, 56 ms in the second. The first pass is in the JSON line.
    cold = throughputs(qas, examples)
    measured = throughputs(qas, examples)
    rates = {name: rate for name, (rate, _) in measured.items()}
    scores = {name: answers for name, (_, answers) in measured.items()}
    few = examples.select(range(min(args.latency_n, args.n)))
    latencies(qas, few)
    latency = latencies(qas, few)
    reference = scores["pytorch fp32"]["predictions"]
    rows, record = [], {"machine": machine(), "n": args.n, "latency_n": len(latency["onnx int8"])}
    record["first_pass_questions_per_s"] = {name: rate for name, (rate, _) in cold.items()}
    for name, backend in BACKENDS.items():
        same = np.mean([scores[name]["predictions"][i] == reference[i] for i in reference])
        row = {
            "questions_per_s": rates[name],
            "speedup": rates[name] / rates["pytorch fp32"],
            "p50_ms": 1000 * float(np.percentile(latency[name], 50)),
            "p95_ms": 1000 * float(np.percentile(latency[name], 95)),
            "size_mb": model_bytes(args.checkpoint, backend) / 1e6,
            "exact_match": scores[name]["exact_match"],
            "f1": scores[name]["f1"],
            "same_answers_pct": 100 * float(same),
        }
        record[name] = row
        rows.append([name, *row.values()])
    header = ["backend", "q/s", "x pytorch", "p50 ms", "p95 ms", "MB", "EM", "F1", "same %"]
    print_table(f"{args.n} SQuAD dev questions, {args.checkpoint}", header, rows)
    if args.int8_variants:
        with tempfile.TemporaryDirectory() as folder:
            variants = int8_variants(args.checkpoint, examples, Path(folder))
        print_table("int8 recipes", ["recipe", "q/s", "MB", "EM", "F1"], variants)
        record["int8_variants"] = {
            r[0]: dict(zip(["q/s", "MB", "EM", "F1"], r[1:], strict=True)) for r in variants
        }
    print_json(record)


if __name__ == "__main__":
    main()
