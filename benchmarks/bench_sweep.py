"""Sweep wall time: hydra/launcher=parallel vs Hydra's basic launcher, same jobs, side by side.

    python benchmarks/bench_sweep.py                      # 4 jobs, 2 at a time, 1 thread each
    python benchmarks/bench_sweep.py --jobs 4 --cpus-per-job 4 --train-size 400

Runs one 4-job sweep (tiny model, synthetic data, `stride=32,48 seed=1,2`, 2 epochs) twice:
with the basic launcher (jobs one after another in the sweep's process, torch using every
core) and with `hydra/launcher=parallel` (`--jobs` at a time, `--cpus-per-job` threads each).
Each sweep gets its own empty datasets cache, so both build their features cold. Prints both
wall times, the ratio parallel / basic (the goal on 2 cores: at most 0.75) and one JSON line.
On a machine with GPUs, `--gpu` runs the parallel sweep with `hardware=gpu` and one job per
GPU instead (the basic launcher's jobs each take one GPU, one after another).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, machine, print_json, print_table


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2, help="parallel jobs at a time")
    parser.add_argument("--cpus-per-job", type=int, default=1)
    parser.add_argument("--train-size", type=int, default=160)
    parser.add_argument("--eval-size", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="hardware=gpu, one job per GPU")
    return parser.parse_args()


def sweep_args(args: argparse.Namespace) -> list[str]:
    return [
        "--multirun",
        "model=tiny",
        "data=synthetic",
        f"hardware={'gpu' if args.gpu else 'cpu'}",
        f"data.synthetic.train_size={args.train_size}",
        f"data.synthetic.eval_size={args.eval_size}",
        f"trainer.epochs={args.epochs}",
        "max_length=128",
        "trainer.train_batch_size=16",
        "logger=none",
        "stride=32,48",
        "seed=1,2",
    ]


def launcher_args(args: argparse.Namespace) -> dict[str, list[str]]:
    parallel = ["hydra/launcher=parallel"]
    if not args.gpu:
        parallel += [
            f"hydra.launcher.jobs={args.jobs}",
            f"hydra.launcher.cpus_per_job={args.cpus_per_job}",
        ]
    return {"basic": ["hydra/launcher=basic"], "parallel": parallel}


def run_sweep(name: str, extra: list[str], args: argparse.Namespace, tmp: Path) -> dict:
    """Run one sweep in its own folder and datasets cache; its wall time and job results."""
    folder = tmp / name
    folder.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_DATASETS_CACHE": str(folder / "cache"),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    command = [sys.executable, "-m", "qaexp", *sweep_args(args), *extra, "hydra.sweep.dir=sweep"]
    began = time.perf_counter()
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        sys.exit(f"the {name} sweep failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    summaries = [json.loads(p.read_text()) for p in sorted(folder.glob("sweep/*/summary.json"))]
    return {
        "seconds": seconds,
        "jobs": len(summaries),
        "best_f1": [s["best_f1"] for s in summaries],
        "job_devices": [s.get("job_devices") for s in summaries],
    }


def main() -> None:
    args = parse_args()
    info = machine()
    print(f"Machine: {info}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        for name, extra in launcher_args(args).items():
            print(f"Running the 4-job sweep with the {name} launcher ...", flush=True)
            results[name] = run_sweep(name, extra, args, Path(tmp))
    ratio = results["parallel"]["seconds"] / results["basic"]["seconds"]
    print_table(
        "4-job sweep wall time (s)",
        ["launcher", "wall s", "jobs", "best F1 per job"],
        [
            [name, r["seconds"], r["jobs"], " ".join(f"{f:.1f}" for f in r["best_f1"])]
            for name, r in results.items()
        ],
    )
    print(
        f"\nparallel / basic wall time: {ratio:.2f}x (goal: <= 0.75x); load average now "
        f"{os.getloadavg()[0]:.2f}"
    )
    print_json(
        {
            "benchmark": "sweep",
            "machine": info,
            "args": vars(args),
            "results": results,
            "ratio_parallel_over_basic": round(ratio, 3),
            "load_average_end": round(os.getloadavg()[0], 2),
        }
    )


if __name__ == "__main__":
    main()
