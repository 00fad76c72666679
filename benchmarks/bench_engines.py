"""Side by side: qaexp's Accelerate loop and transformers.Trainer (trainer.engine=hf) on the
same model, data and settings, one after the other in one process. Prints each engine's EM/F1
after every epoch, its training throughput, and the hf/accelerate ratios.

    python benchmarks/bench_engines.py                      # MiniLM on synthetic data, CPU
    python benchmarks/bench_engines.py hardware=gpu data.synthetic.train_size=4000
    python benchmarks/bench_engines.py --out runs/engines   # keep the two run directories

Extra arguments are Hydra overrides, applied to both runs. Run directories go to a temporary
folder unless --out names one. Timings on a shared machine move with its load: compare the two rows, not runs on
different days.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from qaexp.__main__ import config_dir
from qaexp.tracking.rundir import read_metrics
from qaexp.training import train

ENGINES = ("accelerate", "hf")
DEFAULTS = [
    "model=minilm",
    "data=synthetic",
    "hardware=cpu",
    "data.synthetic.train_size=400",
    "data.synthetic.eval_size=100",
    "data.synthetic.long_context_fraction=0",
    "max_length=192",
    "stride=64",
    "optimizer.lr=1e-4",
    "optimizer.warmup_ratio=0.1",
    "trainer.epochs=2",
    "trainer.train_batch_size=16",
]


def run_engine(engine: str, overrides: list[str], root: Path) -> list[dict]:
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, f"trainer.engine={engine}"])
    run_dir = root / engine
    train(OmegaConf.to_object(cfg), run_dir)
    return read_metrics(run_dir)


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="keep the run directories here")
    args, extra = parser.parse_known_args()
    overrides = [*DEFAULTS, *extra]
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for engine in ENGINES:
            results[engine] = run_engine(engine, overrides, args.out or Path(scratch))
    print("overrides:", " ".join(overrides))
    print(f"{'engine':<11} {'epoch':>5} {'loss':>7} {'EM':>6} {'F1':>6} {'windows/s':>10}")
    for engine, epochs in results.items():
        for e in epochs:
            print(
                f"{engine:<11} {e['epoch']:>5} {e['train_loss']:>7.4f} {e['exact_match']:>6.2f} "
                f"{e['f1']:>6.2f} {e['train_windows_per_second']:>10.2f}"
            )
    hf, acc = results["hf"][-1], results["accelerate"][-1]
    speed = [
        sum(e["train_windows_per_second"] for e in results[x]) / len(results[x]) for x in ENGINES
    ]
    print(
        f"hf / accelerate: final F1 {hf['f1']:.2f} / {acc['f1']:.2f} "
        f"(difference {hf['f1'] - acc['f1']:+.2f}), mean training throughput ratio "
        f"{speed[1] / speed[0]:.2f}"
    )


if __name__ == "__main__":
    main()
