"""Training and evaluation throughput on real SQuAD windows: the seed's fixed padding vs qaexp,
side by side in one run.

    python benchmarks/bench_training.py                     # CPU: MiniLM-L6 (embedded)
    python benchmarks/bench_training.py --device cuda       # GPU: bert-base-sized, bf16, MFU

Both methods train copies of the same model (same initial weights, same AdamW settings,
same precision, SDPA attention, gradient clipping at 1.0) on the same randomly drawn training
windows (MiniLM tokenizer, max_length 384, stride 128), for the same number of optimizer steps:

- seed: the windows in random order, every one padded to max_length (384), PyTorch's default
  AdamW;
- qaexp: the same windows through qaexp's training loader (length-grouped batches, each padded
  to its longest window rounded up to a multiple of 8), fused AdamW as qaexp uses it.

Steps alternate between the methods in rounds, so a change in the machine's load hits both.
Evaluation throughput is measured the same way (the seed's in-order padded batches vs qaexp's
length-sorted ones). Reported: windows/s, real tokens/s, the share of computed tokens that
are real, useful model FLOP/s and, on a GPU with a known peak, model FLOPs utilisation (MFU),
and the projected time for 2 epochs over the whole SQuAD train set. A timing never fails.

FLOPs per trained window of n real tokens: 6 * N * n + 12 * layers * hidden * n^2, where N is
the number of non-embedding parameters (forward + backward of every weight, PaLM appendix B,
as in nanoGPT's estimate_mfu) and the second term is attention's QK^T and AV products. MFU
counts only real tokens: padding is work the GPU does, not progress.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from common import (
    DEFAULT_SQUAD_DIR,
    DEV_FILE,
    TRAIN_FILE,
    load_examples,
    machine,
    minilm_tokenizer,
    print_json,
    print_table,
    squad_file,
)

MAX_LENGTH = 384
STRIDE = 128
EPOCHS = 2

# Dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets, without sparsity), matched
# against torch.cuda.get_device_name() in order: the first key contained in the name wins.
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.0,  # SXM
    "H200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "RTX A6000": 155.0,
    "A10": 125.0,
    "RTX 4090": 165.0,  # with FP32 accumulation
}


def peak_tflops(name: str | None, override: float | None) -> float | None:
    if override:
        return override
    for key, peak in PEAK_BF16_TFLOPS.items():
        if name and key in name:
            return peak
    return None


# ------------------------------------------------------------------ model and FLOPs


def build_model(kind: str, device: torch.device) -> torch.nn.Module:
    """minilm: the embedded MiniLM-L6 checkpoint; bert-base: BertConfig() with random weights
    (the bert-base architecture; the MiniLM tokenizer shares its 30,522-token vocabulary)."""
    from transformers import AutoModelForQuestionAnswering, BertConfig

    from qaexp.config import embedded_model_path

    if kind == "minilm":
        model = AutoModelForQuestionAnswering.from_pretrained(
            embedded_model_path(), attn_implementation="sdpa"
        )
    else:
        torch.manual_seed(0)
        model = AutoModelForQuestionAnswering.from_config(BertConfig(), attn_implementation="sdpa")
    return model.to(device)


@dataclass
class FlopModel:
    non_embedding_params: int
    layers: int
    hidden: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> FlopModel:
        params = sum(p.numel() for n, p in model.named_parameters() if ".embeddings." not in n)
        config = model.config
        return cls(params, config.num_hidden_layers, config.hidden_size)

    def train_flops(self, lengths: np.ndarray) -> float:
        """Training FLOPs for windows of these token counts (forward + backward)."""
        lengths = lengths.astype(np.float64)
        return float(
            (
                6 * self.non_embedding_params * lengths
                + 12 * self.layers * self.hidden * lengths**2
            ).sum()
        )

    def eval_flops(self, lengths: np.ndarray) -> float:
        return self.train_flops(lengths) / 3  # forward only


# ------------------------------------------------------------------ batches


def seed_batches(features, pool: np.ndarray, tokenizer, batch_size: int) -> list[dict]:
    """The pool in its (random) order, every window padded to max_length."""
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=MAX_LENGTH)
    rows = features.select(pool).select_columns(_columns(features)).to_list()
    return [collate(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


def qaexp_batches(features, pool: np.ndarray, tokenizer, batch_size: int) -> list[dict]:
    """The same windows through qaexp's own training loader."""
    from qaexp.batching import make_train_loader
    from qaexp.config import TrainerConfig

    cfg = TrainerConfig(train_batch_size=batch_size)
    order = torch.Generator().manual_seed(0)
    return list(make_train_loader(features.select(pool), tokenizer, cfg, MAX_LENGTH, order))


def seed_eval_batches(features, tokenizer, batch_size: int) -> list[dict]:
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=MAX_LENGTH)
    rows = features.select_columns(_columns(features, labels=False)).to_list()
    return [collate(rows[i : i + batch_size]) for i in range(0, len(rows), batch_size)]


def qaexp_eval_batches(features, tokenizer, batch_size: int) -> list[dict]:
    from qaexp.batching import WINDOW_INDEX, make_eval_loader

    batches = list(make_eval_loader(features, tokenizer, batch_size, MAX_LENGTH))
    for batch in batches:
        batch.pop(WINDOW_INDEX)
    return batches


def _columns(features, labels: bool = True) -> list[str]:
    names = ["input_ids", "attention_mask", "token_type_ids"]
    names += ["start_positions", "end_positions"] if labels else []
    return [n for n in names if n in features.column_names]


def grouped_padding_share(lengths: np.ndarray, batch_size: int) -> float:
    """Real tokens / computed tokens for one epoch of qaexp's sampler over all these windows
    (no model involved): how representative the benchmark's pool is of a real epoch."""
    from qaexp.batching import LengthGroupedSampler

    sampler = LengthGroupedSampler(lengths, batch_size, torch.Generator().manual_seed(0))
    widths = [math.ceil(lengths[b].max() / 8) * 8 * len(b) for b in sampler.batches()]
    return float(lengths.sum() / sum(widths))


# ------------------------------------------------------------------ timing


@dataclass
class Meter:
    seconds: float = 0.0
    windows: int = 0
    real_tokens: int = 0
    computed_tokens: int = 0
    useful_flops: float = 0.0
    steps: int = 0
    losses: list[float] = field(default_factory=list)

    def count(self, batch: dict, flops: float) -> None:
        mask = batch["attention_mask"]
        self.windows += mask.shape[0]
        self.real_tokens += int(mask.sum())
        self.computed_tokens += mask.numel()
        self.useful_flops += flops
        self.steps += 1

    def summary(self, peak: float | None, train_windows: int | None) -> dict:
        per_s = self.windows / self.seconds
        out = {
            "steps": self.steps,
            "seconds": round(self.seconds, 3),
            "windows_per_s": round(per_s, 2),
            "real_tokens_per_s": round(self.real_tokens / self.seconds, 1),
            "real_token_share": round(self.real_tokens / self.computed_tokens, 3),
            "useful_tflops_per_s": round(self.useful_flops / self.seconds / 1e12, 4),
            "mfu": round(self.useful_flops / self.seconds / (peak * 1e12), 4) if peak else None,
        }
        if train_windows:
            out["projected_2_epochs_s"] = round(EPOCHS * train_windows / per_s, 1)
        return out


class Runner:
    """One method's model copy, optimizer and step function."""

    def __init__(self, model, device, precision: str, compile_model: bool, fused: bool):
        self.device = device
        self.model = torch.compile(model) if compile_model else model
        # qaexp steps with PyTorch's fused AdamW kernel (CPU and GPU); the seed with the default.
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=fused or None)
        self.autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else nullcontext()
        )

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def train_step(self, batch: dict) -> torch.Tensor:
        self.model.train()
        with self.autocast:
            loss = self.model(**self._to_device(batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    @torch.inference_mode()
    def eval_step(self, batch: dict) -> None:
        self.model.eval()
        with self.autocast:
            self.model(**self._to_device(batch))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def alternate(jobs: dict, round_steps: int, device, flops) -> dict[str, Meter]:
    """Run every job's batches, ``round_steps`` at a time per job in turn. A turn is timed as
    a whole (one device sync at each end), so the GPU queue stays full within it."""
    meters = {name: Meter() for name in jobs}
    done = dict.fromkeys(jobs, 0)
    while any(done[n] < len(jobs[n][1]) for n in jobs):
        for name, (step, batches) in jobs.items():
            turn = batches[done[name] : done[name] + round_steps]
            if not turn:
                continue
            sync(device)
            began = time.perf_counter()
            outputs = [step(batch) for batch in turn]
            sync(device)
            meters[name].seconds += time.perf_counter() - began
            for batch, out in zip(turn, outputs, strict=True):
                meters[name].count(batch, flops(batch["attention_mask"].sum(dim=1).numpy()))
                if out is not None:
                    meters[name].losses.append(float(out))
            done[name] += len(turn)
    return meters


def pinned(batches: list[dict], device: torch.device) -> list[dict]:
    """Page-locked host batches on a GPU, so the non-blocking copies really overlap."""
    if device.type != "cuda":
        return batches
    return [{k: v.pin_memory() for k, v in batch.items()} for batch in batches]


# ------------------------------------------------------------------ main


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--model",
        choices=["auto", "minilm", "bert-base"],
        default="auto",
        help="auto: minilm on CPU, bert-base on GPU",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto: bf16 autocast on GPUs that have it, else fp32",
    )
    parser.add_argument("--steps", type=int, default=24, help="timed optimizer steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    parser.add_argument("--batch-size", type=int, default=None, help="16 on CPU, 32 on GPU")
    parser.add_argument("--round-steps", type=int, default=4, help="steps per turn")
    parser.add_argument("--eval-windows", type=int, default=None, help="512 on CPU, all on GPU")
    parser.add_argument("--eval-batch-size", type=int, default=None, help="64 CPU, 256 GPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 peak")
    parser.add_argument("--squad-dir", type=Path, default=DEFAULT_SQUAD_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-proc", type=int, default=None, help="processes building windows")
    parser.add_argument(
        "--shape-warmup",
        choices=["auto", "on", "off"],
        default="auto",
        help="time a second pass over the same batches (auto: on GPU)",
    )
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        parser.exit(2, "--device cuda: no CUDA device is visible to PyTorch; use --device cpu.\n")
    on_gpu = args.device == "cuda" or (args.device == "auto" and cuda)
    args.device = torch.device("cuda" if on_gpu else "cpu")
    args.model = args.model if args.model != "auto" else ("bert-base" if on_gpu else "minilm")
    if args.precision == "auto":
        args.precision = "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"
    args.batch_size = args.batch_size or (32 if on_gpu else 16)
    args.eval_batch_size = args.eval_batch_size or (256 if on_gpu else 64)
    if args.eval_windows is None:
        args.eval_windows = 0 if on_gpu else 512  # 0: the whole dev set
    args.shape_warmup = args.shape_warmup == "on" or (args.shape_warmup == "auto" and on_gpu)
    return args


def load_features(args, tokenizer):
    from qaexp.features import build_features

    paths = [squad_file(args.squad_dir, f) for f in (TRAIN_FILE, DEV_FILE)]
    if None in paths:
        return None
    windows = {"max_length": MAX_LENGTH, "stride": STRIDE, "num_proc": args.num_proc}
    train = build_features(load_examples(paths[0]), tokenizer, train=True, **windows)
    dev = build_features(load_examples(paths[1]), tokenizer, train=False, **windows)
    return train, dev


def draw_windows(args, train, dev) -> tuple[np.ndarray, np.ndarray, object]:
    """Warm-up and timed training windows (random, disjoint) and the evaluation windows."""
    rng = np.random.default_rng(args.seed)
    pool = rng.choice(len(train), (args.warmup + args.steps) * args.batch_size, replace=False)
    warm, timed_pool = np.split(pool, [args.warmup * args.batch_size])
    rows = np.arange(len(dev))
    if args.eval_windows:
        rows = np.sort(rng.choice(len(dev), args.eval_windows, replace=False))
    return warm, timed_pool, dev.select(rows)


def run_side_by_side(args, train, dev, tokenizer) -> dict:
    """Both methods' warm-up, timed training and timed evaluation; the measured record."""
    device, size = args.device, args.batch_size
    warm, timed_pool, eval_features = draw_windows(args, train, dev)
    base = build_model(args.model, device)
    flops = FlopModel.of(base)
    runners = {
        "seed": Runner(copy.deepcopy(base), device, args.precision, args.compile, fused=False),
        "qaexp": Runner(base, device, args.precision, args.compile, fused=True),
    }
    make = {"seed": seed_batches, "qaexp": qaexp_batches}
    make_eval = {"seed": seed_eval_batches, "qaexp": qaexp_eval_batches}

    def jobs(windows):
        return {
            n: (r.train_step, pinned(make[n](train, windows, tokenizer, size), device))
            for n, r in runners.items()
        }

    eval_jobs = {
        n: (
            r.eval_step,
            pinned(make_eval[n](eval_features, tokenizer, args.eval_batch_size), device),
        )
        for n, r in runners.items()
    }
    print(
        f"Warming up ({args.warmup} steps each), then {args.steps} timed steps each ...", flush=True
    )
    alternate(jobs(warm), args.round_steps, device, flops.train_flops)
    timed_jobs = jobs(timed_pool)
    first_pass = {}
    if args.shape_warmup:
        # On a GPU the first batch of each new width pays one-off costs (cuDNN attention
        # builds an execution plan per shape): a whole epoch sees each width hundreds of
        # times, so the steady state is the second pass over the same batches.
        first_pass["train"] = alternate(timed_jobs, args.round_steps, device, flops.train_flops)
        first_pass["eval"] = alternate(eval_jobs, 1, device, flops.eval_flops)
    trained = alternate(timed_jobs, args.round_steps, device, flops.train_flops)
    # One untimed eval batch each first (kernel selection for inference shapes).
    first = {n: (step, batches[:1]) for n, (step, batches) in eval_jobs.items()}
    alternate(first, 1, device, flops.eval_flops)
    evaluated = alternate(eval_jobs, 1, device, flops.eval_flops)
    return {
        "trained": trained,
        "evaluated": evaluated,
        "flops": flops,
        "eval_windows": len(eval_features),
        "first_pass": first_pass,
    }


def make_record(args, train, measured: dict) -> dict:
    from qaexp.batching import window_lengths

    info = machine()
    peak = peak_tflops(info["gpu"], args.peak_tflops) if args.device.type == "cuda" else None
    lengths = window_lengths(train)
    trained, evaluated = measured["trained"], measured["evaluated"]
    record = {
        "bench": "training",
        **info,
        "device": args.device.type,
        "model": args.model,
        "precision": args.precision,
        "compile": args.compile,
        "batch_size": args.batch_size,
        "max_length": MAX_LENGTH,
        "peak_tflops": peak,
        "non_embedding_params": measured["flops"].non_embedding_params,
        "train_windows_full_set": len(train),
        "train_mean_tokens": round(float(lengths.mean()), 1),
        "qaexp_real_token_share_full_epoch": round(
            grouped_padding_share(lengths, args.batch_size), 3
        ),
        "train": {n: m.summary(peak, len(train)) for n, m in trained.items()},
        "eval": {n: m.summary(peak, None) for n, m in evaluated.items()},
        "eval_windows": measured["eval_windows"],
        "eval_batch_size": args.eval_batch_size,
        "mean_loss": {n: round(float(np.mean(m.losses)), 4) for n, m in trained.items()},
    }
    for stage, meters in measured["first_pass"].items():
        record[f"{stage}_first_pass"] = {n: m.summary(peak, None) for n, m in meters.items()}
    for stage in ("train", "eval", "train_first_pass", "eval_first_pass"):
        if stage not in record:
            continue
        ours, seed = record[stage]["qaexp"], record[stage]["seed"]
        record[f"{stage}_speedup"] = round(ours["windows_per_s"] / seed["windows_per_s"], 2)
    return record


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import datasets

    datasets.disable_progress_bars()
    if args.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    tokenizer = minilm_tokenizer()
    loaded = load_features(args, tokenizer)
    if loaded is None:
        return 0
    train, dev = loaded
    record = make_record(args, train, run_side_by_side(args, train, dev, tokenizer))
    report(record)
    print_json(record)
    return 0


def report(record: dict) -> None:
    where = record["gpu"] or f"{record['cpus']} CPUs (load {record['load_average']} at the end)"
    header = [
        "method",
        "windows/s",
        "real tok/s",
        "real share",
        "useful TFLOP/s",
        "MFU",
        f"{EPOCHS} epochs (proj.)",
    ]
    rows = []
    for name, label in (("seed", "seed: fixed 384"), ("qaexp", "qaexp: dynamic, grouped")):
        r = record["train"][name]
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        rows.append(
            [
                label,
                r["windows_per_s"],
                r["real_tokens_per_s"],
                r["real_token_share"],
                r["useful_tflops_per_s"],
                mfu,
                _duration(r["projected_2_epochs_s"]),
            ]
        )
    rows.append(["qaexp / seed", f"{record['train_speedup']:.2f}x", "", "", "", "", ""])
    print_table(
        f"Training: {record['model']} ({record['precision']}, batch {record['batch_size']}, "
        f"max_length {record['max_length']}, {record['train']['seed']['steps']} steps each) "
        f"on {where}",
        header,
        rows,
    )
    print(
        f"Full train set: {record['train_windows_full_set']} windows, mean "
        f"{record['train_mean_tokens']} tokens; qaexp's sampler over a whole epoch computes "
        f"{100 * record['qaexp_real_token_share_full_epoch']:.1f}% real tokens. Mean loss "
        f"over the timed steps: seed {record['mean_loss']['seed']:.3f}, qaexp "
        f"{record['mean_loss']['qaexp']:.3f}."
    )
    rows = []
    for name, label in (("seed", "seed: in order, fixed 384"), ("qaexp", "qaexp: length-sorted")):
        r = record["eval"][name]
        rows.append([label, r["windows_per_s"], r["real_tokens_per_s"], r["real_token_share"]])
    rows.append(["qaexp / seed", f"{record['eval_speedup']:.2f}x", "", ""])
    print_table(
        f"Evaluation: {record['eval_windows']} dev windows, batch {record['eval_batch_size']}",
        ["method", "windows/s", "real tok/s", "real share"],
        rows,
    )
    if "train_first_pass" in record:
        print(
            "First pass over the same batches (each new width pays one-off costs; not timed "
            "above): windows/s training seed "
            f"{record['train_first_pass']['seed']['windows_per_s']:.1f}, qaexp "
            f"{record['train_first_pass']['qaexp']['windows_per_s']:.1f} "
            f"({record['train_first_pass_speedup']:.2f}x); evaluation seed "
            f"{record['eval_first_pass']['seed']['windows_per_s']:.1f}, qaexp "
            f"{record['eval_first_pass']['qaexp']['windows_per_s']:.1f} "
            f"({record['eval_first_pass_speedup']:.2f}x)."
        )


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"


if __name__ == "__main__":
    sys.exit(main())
