"""Answer quality on real SQuAD: a plain seed-style training loop vs qaexp, same data, same
hyperparameters, several seeds, side by side.

    python benchmarks/bench_quality.py                                  # CPU, 1 seed each
    python benchmarks/bench_quality.py --device cuda --seeds 0 1 2 3 --jobs 8

Every run fine-tunes MiniLM-L6 (embedded) on the first --train-examples SQuAD train examples
and reports EM/F1 on the first --eval-examples dev questions after every epoch. Variants:

- seed: the seed notebook's Accelerate loop written plainly: windows padded to max_length,
  shuffled, `AdamW(model.parameters())` (weight decay on every parameter), a linear schedule
  with warmup, no gradient clipping;
- seed+clip: the same with gradient clipping at 1.0;
- qaexp: `python -m qaexp` with its defaults for the same recipe (per-batch padding, length
  groups, no decay on biases/LayerNorm, clipping at 1.0, fused AdamW);
- qaexp-fixed, qaexp-noclip, qaexp-nogroup: qaexp with one default changed
  (trainer.pad_to_max_length=true, optimizer.max_grad_norm=null, trainer.group_by_length=false);
- qaexp-seedlike: qaexp with the seed's fixed padding and no clipping (what is left differs
  from the seed only in the weight-decay groups and the fused optimizer step).

Both sides build the same windows (qaexp.features, tested equal to the seed's labels) and
score with qaexp's post-processing and metric (tested equal to the seed's loop and to the
official script), so the comparison isolates the training loop. On a GPU the runs train in
fp32 without TF32 (the CPU's arithmetic) unless --mixed-precision fp16/bf16 asks for autocast
(fp16 with loss scaling) and TF32, on both sides. Runs are independent processes; --jobs runs
several at once (a GPU fits many MiniLM runs). Prints per-seed scores, the mean and standard
deviation per variant, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import (
    DEFAULT_SQUAD_DIR,
    DEV_FILE,
    REPO,
    TRAIN_FILE,
    load_examples,
    machine,
    print_json,
    print_table,
    squad_file,
)

QAEXP_VARIANTS = {
    "qaexp": [],
    "qaexp-fixed": ["trainer.pad_to_max_length=true"],
    "qaexp-noclip": ["optimizer.max_grad_norm=null"],
    "qaexp-nogroup": ["trainer.group_by_length=false"],
    "qaexp-seedlike": ["trainer.pad_to_max_length=true", "optimizer.max_grad_norm=null"],
}
SEED_VARIANTS = {"seed": None, "seed+clip": 1.0}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--squad-dir", type=Path, default=DEFAULT_SQUAD_DIR)
    p.add_argument(
        "--variants",
        nargs="+",
        default=["seed", "qaexp"],
        choices=[*SEED_VARIANTS, *QAEXP_VARIANTS],
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[42])
    p.add_argument("--jobs", type=int, default=1, help="runs at once")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--mixed-precision",
        choices=["no", "fp16", "bf16"],
        default="no",
        help="GPU only: autocast (fp16 with loss scaling) and TF32 for every run",
    )
    p.add_argument("--model", default=None, help="checkpoint folder (default: embedded MiniLM)")
    p.add_argument("--train-examples", type=int, default=3000)
    p.add_argument("--eval-examples", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--stride", type=int, default=128)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--out", type=Path, default=None, help="folder for run outputs")
    p.add_argument("--worker", choices=list(SEED_VARIANTS), help=argparse.SUPPRESS)
    p.add_argument("--worker-seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-result", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def model_path(args) -> str:
    from qaexp.config import embedded_model_path

    return args.model or embedded_model_path()


# ------------------------------------------------------------- the seed's loop, written plainly


def seed_loop(args, seed: int, clip: float | None) -> list[dict]:
    import torch
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader
    from transformers import (
        AutoModelForQuestionAnswering,
        AutoTokenizer,
        DataCollatorWithPadding,
        get_scheduler,
    )

    from qaexp.features import build_features
    from qaexp.metrics import squad_metrics
    from qaexp.postprocess import postprocess_predictions

    set_seed(seed)
    device = torch.device(args.device)
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision)
    torch.backends.cuda.matmul.allow_tf32 = half is not None
    scaler = torch.amp.GradScaler("cuda", enabled=half == torch.float16)
    path = model_path(args)
    tokenizer = AutoTokenizer.from_pretrained(path)
    train_raw = load_examples(squad_file(args.squad_dir, TRAIN_FILE))
    dev_raw = load_examples(squad_file(args.squad_dir, DEV_FILE))
    train_raw = train_raw.select(range(min(args.train_examples, len(train_raw))))
    dev_raw = dev_raw.select(range(min(args.eval_examples, len(dev_raw))))
    windows = {"max_length": args.max_length, "stride": args.stride}
    train = build_features(train_raw, tokenizer, train=True, **windows)
    dev = build_features(dev_raw, tokenizer, train=False, **windows)
    model = AutoModelForQuestionAnswering.from_pretrained(path).to(device)
    pad = DataCollatorWithPadding(tokenizer, padding="max_length", max_length=args.max_length)
    columns = [c for c in ("input_ids", "attention_mask", "token_type_ids") if c in train.features]
    loader = DataLoader(
        train.select_columns([*columns, "start_positions", "end_positions"]),
        batch_size=args.batch_size,
        shuffle=True,
        collate_fn=pad,
    )
    dev_loader = DataLoader(dev.select_columns(columns), batch_size=64, collate_fn=pad)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    total = args.epochs * len(loader)
    scheduler = get_scheduler(
        "linear",
        optimizer,
        num_warmup_steps=int(args.warmup_ratio * total),
        num_training_steps=total,
    )
    references = dict(zip(dev_raw["id"], (a["text"] for a in dev_raw["answers"]), strict=True))
    history = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        for batch in loader:
            with torch.autocast(device.type, dtype=half, enabled=half is not None):
                loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            scaler.scale(loss).backward()
            if clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad()
        model.eval()
        starts, ends = [], []
        with torch.no_grad():
            for batch in dev_loader:
                with torch.autocast(device.type, dtype=half, enabled=half is not None):
                    out = model(**{k: v.to(device) for k, v in batch.items()})
                starts.append(out.start_logits.float().cpu())
                ends.append(out.end_logits.float().cpu())
        predictions = postprocess_predictions(
            dev_raw, dev, torch.cat(starts).numpy(), torch.cat(ends).numpy()
        )
        history.append({"epoch": epoch, **squad_metrics(predictions, references)})
    return history


# ------------------------------------------------------------------------------- qaexp's runs


def qaexp_command(args, variant: str, seed: int, run_dir: Path) -> list[str]:
    tf32 = str(args.mixed_precision != "no").lower()
    hardware = (
        [
            "hardware=gpu",
            f"hardware.mixed_precision={args.mixed_precision}",
            f"hardware.tf32={tf32}",
        ]
        if args.device == "cuda"
        else ["hardware=cpu"]
    )
    model = [f"model.name_or_path={args.model}"] if args.model else []
    return [
        sys.executable,
        "-m",
        "qaexp",
        "model=minilm",
        *model,
        "data=squad_json",
        "logger=none",
        f"data.train_file={args.squad_dir / TRAIN_FILE}",
        f"data.validation_file={args.squad_dir / DEV_FILE}",
        f"data.max_train_samples={args.train_examples}",
        f"data.max_eval_samples={args.eval_examples}",
        f"max_length={args.max_length}",
        f"stride={args.stride}",
        f"seed={seed}",
        f"trainer.epochs={args.epochs}",
        f"trainer.train_batch_size={args.batch_size}",
        f"optimizer.lr={args.lr}",
        f"optimizer.warmup_ratio={args.warmup_ratio}",
        f"optimizer.weight_decay={args.weight_decay}",
        "trainer.save_checkpoint=none",
        "trainer.save_state=false",
        *hardware,
        *QAEXP_VARIANTS[variant],
        f"hydra.run.dir={run_dir}",
    ]


def run_one(args, variant: str, seed: int, out: Path) -> dict:
    """One run in its own process; returns its per-epoch EM/F1 (or the failure)."""
    from qaexp.tracking.rundir import read_metrics

    run_dir = out / f"{variant}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    if variant in SEED_VARIANTS:
        result = run_dir / "history.json"
        # The worker gets this run's own arguments, with paths made absolute (it runs in REPO).
        paths = [
            "--squad-dir",
            str(args.squad_dir),
            *(["--model", args.model] if args.model else []),
        ]
        command = [
            sys.executable,
            __file__,
            *args.argv,
            *paths,
            "--worker",
            variant,
            "--worker-seed",
            str(seed),
            "--worker-result",
            str(result),
        ]
    else:
        command = qaexp_command(args, variant, seed, run_dir)
    began = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode
    seconds = time.perf_counter() - began
    if code:
        return {"variant": variant, "seed": seed, "failed": code, "seconds": seconds}
    if variant in SEED_VARIANTS:
        history = json.loads(result.read_text())
    else:
        history = [{k: r[k] for k in ("epoch", "exact_match", "f1")} for r in read_metrics(run_dir)]
    return {"variant": variant, "seed": seed, "history": history, "seconds": seconds}


def summarise(runs: list[dict], variants: list[str]) -> dict:
    summary = {}
    for variant in variants:
        done = [r for r in runs if r["variant"] == variant and "history" in r]
        finals = [r["history"][-1] for r in done]
        f1 = [f["f1"] for f in finals]
        em = [f["exact_match"] for f in finals]
        summary[variant] = {
            "runs": len(done),
            "failed": sum(r["variant"] == variant and "failed" in r for r in runs),
            "em_mean": statistics.fmean(em) if em else None,
            "f1_mean": statistics.fmean(f1) if f1 else None,
            "f1_sd": statistics.stdev(f1) if len(f1) > 1 else None,
            "f1_min": min(f1, default=None),
            "f1_max": max(f1, default=None),
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.worker:
        history = seed_loop(args, args.worker_seed, SEED_VARIANTS[args.worker])
        args.worker_result.write_text(json.dumps(history))
        return 0
    if not (squad_file(args.squad_dir, TRAIN_FILE) and squad_file(args.squad_dir, DEV_FILE)):
        return 0
    if args.mixed_precision != "no" and args.device != "cuda":
        sys.exit("--mixed-precision fp16/bf16 needs --device cuda (the CPU runs train in fp32).")
    args.squad_dir = args.squad_dir.resolve()
    if args.model and Path(args.model).exists():  # a folder, not a Hub id
        args.model = str(Path(args.model).resolve())
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_quality_"))
    jobs = [(v, s) for s in args.seeds for v in args.variants]
    # The first run alone builds the datasets caches the others then read.
    runs = [run_one(args, *jobs[0], out)]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        runs += list(pool.map(lambda job: run_one(args, *job, out), jobs[1:]))
    rows = []
    for r in sorted(runs, key=lambda r: (args.variants.index(r["variant"]), r["seed"])):
        if "failed" in r:
            rows.append([r["variant"], r["seed"], "failed", "", "", f"{r['seconds']:.0f}"])
            continue
        first, last = r["history"][0], r["history"][-1]
        rows.append(
            [
                r["variant"],
                r["seed"],
                f"{first['f1']:.2f}",
                f"{last['exact_match']:.2f}",
                f"{last['f1']:.2f}",
                f"{r['seconds']:.0f}",
            ]
        )
    print_table(
        f"EM/F1 on {args.eval_examples} dev questions ({out})",
        [
            "variant",
            "seed",
            "F1 epoch 1",
            f"EM epoch {args.epochs}",
            f"F1 epoch {args.epochs}",
            "seconds",
        ],
        rows,
    )
    summary = summarise(runs, args.variants)
    print_table(
        "per variant (final epoch)",
        ["variant", "runs", "EM mean", "F1 mean", "F1 sd", "F1 min", "F1 max"],
        [
            [
                v,
                s["runs"],
                *(
                    ("-" if x is None else f"{x:.2f}")
                    for x in (s["em_mean"], s["f1_mean"], s["f1_sd"], s["f1_min"], s["f1_max"])
                ),
            ]
            for v, s in summary.items()
        ],
    )
    print_json(
        {
            "benchmark": "quality",
            "machine": machine(),
            "settings": {
                k: v
                for k, v in vars(args).items()
                if not k.startswith("worker") and k not in ("out", "argv")
            }
            | {"squad_dir": str(args.squad_dir)},
            "summary": summary,
            "runs": runs,
        },
    )
    return 0 if all("history" in r for r in runs) else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
