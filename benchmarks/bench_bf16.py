"""bf16 autocast vs fp32 on the CPU: MiniLM training and evaluation throughput, side by side.

    python benchmarks/bench_bf16.py                 # needs a CPU with avx512_bf16 or amx_bf16
    python benchmarks/bench_bf16.py --emulated      # run anyway, to see what emulation costs

Two copies of the embedded MiniLM-L6 (same initial weights, qaexp's fused AdamW, gradient
clipping at 1.0) train on the same random SQuAD dev windows through qaexp's training loader
(max_length 384, stride 128, length-grouped, dynamic padding), one in fp32 and one under
``torch.autocast("cpu", dtype=torch.bfloat16)`` as ``hardware.mixed_precision=bf16`` runs
it; turns alternate, so a change in the machine's load hits both. Then both evaluate the same
dev windows. Reported: windows/s of each, the bf16/fp32 ratio, and the mean training loss of
each (a first look at accuracy; F1 needs whole runs: see docs/speed.md, "bf16 on CPU").

On a CPU without bf16 instructions it refuses (exit 2) and names the flags it lacks, as
``python -m qaexp`` does: there oneDNN emulates bf16, which measures the emulation, not bf16.
A timing never fails.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch
from bench_training import (
    MAX_LENGTH,
    STRIDE,
    FlopModel,
    Runner,
    alternate,
    build_model,
    qaexp_batches,
    qaexp_eval_batches,
)
from common import (
    DEFAULT_SQUAD_DIR,
    DEV_FILE,
    load_examples,
    machine,
    minilm_tokenizer,
    print_json,
    print_table,
    squad_file,
)

from qaexp.training.runtime import cpu_bf16_instructions

PRECISIONS = ("fp32", "bf16")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16, help="timed optimizer steps each")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps each first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--round-steps", type=int, default=2, help="steps per turn")
    parser.add_argument("--eval-windows", type=int, default=256)
    parser.add_argument("--eval-batch-size", type=int, default=64)
    parser.add_argument("--squad-dir", type=Path, default=DEFAULT_SQUAD_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--emulated",
        action="store_true",
        help="measure even without bf16 instructions (the cost of emulation)",
    )
    return parser.parse_args(argv)


def dev_windows(args, tokenizer):
    """Training windows (with labels) and evaluation windows of the SQuAD dev set."""
    from qaexp.features import build_features

    path = squad_file(args.squad_dir, DEV_FILE)
    if path is None:
        return None
    examples = load_examples(path)
    windows = {"max_length": MAX_LENGTH, "stride": STRIDE}
    train = build_features(examples, tokenizer, train=True, **windows)
    dev = build_features(examples, tokenizer, train=False, **windows)
    return train, dev


def side_by_side(args, train, dev, tokenizer) -> dict:
    rng = np.random.default_rng(args.seed)
    pool = rng.choice(len(train), (args.warmup + args.steps) * args.batch_size, replace=False)
    warm, timed = np.split(pool, [args.warmup * args.batch_size])
    eval_rows = np.sort(rng.choice(len(dev), min(args.eval_windows, len(dev)), replace=False))
    eval_batches = qaexp_eval_batches(dev.select(eval_rows), tokenizer, args.eval_batch_size)
    cpu = torch.device("cpu")
    base = build_model("minilm", cpu)
    flops = FlopModel.of(base)
    runners = {
        "fp32": Runner(copy.deepcopy(base), cpu, "fp32", False, fused=True),
        "bf16": Runner(base, cpu, "bf16", False, fused=True),
    }

    def jobs(windows):
        return {
            n: (r.train_step, qaexp_batches(train, windows, tokenizer, args.batch_size))
            for n, r in runners.items()
        }

    print(f"Warming up ({args.warmup} steps each), then {args.steps} timed steps each ...")
    alternate(jobs(warm), args.round_steps, cpu, flops.train_flops)
    trained = alternate(jobs(timed), args.round_steps, cpu, flops.train_flops)
    evaluated = alternate(
        {n: (r.eval_step, eval_batches) for n, r in runners.items()}, 1, cpu, flops.eval_flops
    )
    return {"trained": trained, "evaluated": evaluated, "eval_windows": len(eval_rows)}


def make_record(args, measured: dict, flags: list[str]) -> dict:
    trained, evaluated = measured["trained"], measured["evaluated"]
    record = {
        "bench": "bf16_cpu",
        **machine(),
        "cpu_bf16_instructions": flags,
        "emulated": not flags,
        "batch_size": args.batch_size,
        "max_length": MAX_LENGTH,
        "train": {n: trained[n].summary(None, None) for n in PRECISIONS},
        "eval": {n: evaluated[n].summary(None, None) for n in PRECISIONS},
        "eval_windows": measured["eval_windows"],
        "mean_loss": {n: round(float(np.mean(trained[n].losses)), 4) for n in PRECISIONS},
    }
    for stage in ("train", "eval"):
        ratio = record[stage]["bf16"]["windows_per_s"] / record[stage]["fp32"]["windows_per_s"]
        record[f"{stage}_bf16_over_fp32"] = round(ratio, 2)
    return record


def report(record: dict) -> None:
    where = f"{record['cpus']} CPUs (load {record['load_average']} at the end)"
    kind = ", ".join(record["cpu_bf16_instructions"]) or "none: emulated"
    rows = [
        [
            n,
            record["train"][n]["windows_per_s"],
            record["eval"][n]["windows_per_s"],
            record["mean_loss"][n],
        ]
        for n in PRECISIONS
    ]
    rows.append(
        [
            "bf16 / fp32",
            f"{record['train_bf16_over_fp32']:.2f}x",
            f"{record['eval_bf16_over_fp32']:.2f}x",
            "",
        ]
    )
    print_table(
        f"MiniLM-L6 on {where}, bf16 instructions: {kind}; training batch "
        f"{record['batch_size']} ({record['train']['fp32']['steps']} steps each), evaluation "
        f"{record['eval_windows']} dev windows",
        ["precision", "train windows/s", "eval windows/s", "mean train loss"],
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flags = cpu_bf16_instructions()
    if not flags and not args.emulated:
        name = torch.cpu.get_capabilities().get("cpu_name") or "This CPU"
        print(
            f"{name} has no bf16 instructions (PyTorch finds neither avx512_bf16 nor amx_bf16, "
            "nor bf16 on Arm): bf16 autocast would be emulated, so there is no bf16 to "
            "measure here. Run this on a CPU whose lscpu lists avx512_bf16 or amx_bf16, or "
            "pass --emulated to measure what emulation costs.",
            file=sys.stderr,
        )
        return 2
    import datasets

    datasets.disable_progress_bars()
    tokenizer = minilm_tokenizer()
    loaded = dev_windows(args, tokenizer)
    if loaded is None:
        return 0
    record = make_record(args, side_by_side(args, *loaded, tokenizer), flags)
    report(record)
    print_json(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
