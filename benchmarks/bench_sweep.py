"""Sweep wall time: hydra/launcher=parallel vs Hydra's basic launcher, same jobs, side by side.

    python benchmarks/bench_sweep.py                      # 4 jobs, 2 at a time, 1 thread each
    python benchmarks/bench_sweep.py --jobs 4 --cpus-per-job 4 --train-size 400

Runs one 4-job sweep (tiny model, synthetic data, `stride=32,48 seed=1,2`, 2 epochs; 4,000
training examples by default, about half a minute per job on 2 cores: shorter jobs gain
less, since each still builds its own features and model) twice:
with the basic launcher (jobs one after another in the sweep's process, torch using every
core) and with `hydra/launcher=parallel` (`--jobs` at a time, `--cpus-per-job` threads each).
Each sweep gets its own empty datasets cache, so both build their features cold. Prints both
wall times, the ratio parallel / basic (the goal on 2 cores: at most 0.75) and one JSON line.
On a machine with GPUs, `--gpu` runs the parallel sweep with `hardware=gpu` and one job per
GPU instead (the basic launcher's jobs each take one GPU, one after another).

`--experiment quickstart` times the README's quickstart sweep instead
(`experiment=quickstart stride=64,128`: the embedded MiniLM, two jobs) with both launchers and
prints each job's own wall time, so the two jobs' overlap is visible.
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
    parser.add_argument("--train-size", type=int, default=4000)
    parser.add_argument("--eval-size", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="hardware=gpu, one job per GPU")
    parser.add_argument(
        "--launchers", default="basic,parallel",
        help="comma-separated, in order: basic, parallel, parallel-spawn (the parallel "
        "launcher with start_method=spawn: every job a fresh interpreter); the first is the "
        "reference of the ratios",
    )  # fmt: skip
    parser.add_argument(
        "--experiment", choices=["tiny", "quickstart"], default="tiny",
        help="tiny: the 4-job synthetic sweep; quickstart: experiment=quickstart stride=64,128",
    )  # fmt: skip
    return parser.parse_args()


def sweep_args(args: argparse.Namespace) -> list[str]:
    hardware = f"hardware={'gpu' if args.gpu else 'cpu'}"
    if args.experiment == "quickstart":
        return ["--multirun", "experiment=quickstart", hardware, "logger=none", "stride=64,128"]
    return [
        "--multirun",
        "model=tiny",
        "data=synthetic",
        hardware,
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
    launchers = {
        "basic": ["hydra/launcher=basic"],
        "parallel": parallel,
        "parallel-spawn": [*parallel, "hydra.launcher.start_method=spawn"],
    }
    return {name: launchers[name] for name in args.launchers.split(",")}


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
        "job_seconds": [round(s["wall_seconds"], 1) for s in summaries],
        "load_average_end": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    args = parse_args()
    info = machine()
    print(f"Machine: {info}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        for name, extra in launcher_args(args).items():
            print(f"Running the {args.experiment} sweep with the {name} launcher ...", flush=True)
            results[name] = run_sweep(name, extra, args, Path(tmp))
    reference, *others = results
    ratios = {
        f"{name}/{reference}": results[name]["seconds"] / results[reference]["seconds"]
        for name in others
    }
    print_table(
        f"{args.experiment} sweep wall time (s)",
        ["launcher", "wall s", "jobs", "wall s per job", "best F1 per job", "load after"],
        [
            [
                name,
                r["seconds"],
                r["jobs"],
                " ".join(f"{t:.1f}" for t in r["job_seconds"]),
                " ".join(f"{f:.1f}" for f in r["best_f1"]),
                r["load_average_end"],
            ]
            for name, r in results.items()
        ],
    )
    for name, ratio in ratios.items():
        print(f"\n{name} wall time: {ratio:.2f}x (parallel/basic goal: <= 0.75x)")
    print(f"load average now {os.getloadavg()[0]:.2f}")
    print_json(
        {
            "benchmark": "sweep",
            "machine": info,
            "args": vars(args),
            "results": results,
            "ratios": {name: round(ratio, 3) for name, ratio in ratios.items()},
            "load_average_end": round(os.getloadavg()[0], 2),
        }
    )


if __name__ == "__main__":
    main()
