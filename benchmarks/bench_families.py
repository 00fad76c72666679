"""Training cost of each encoder family against a BERT of the same size, and of qaexp's
training step against a bare torch loop on the same model: the tiny checkpoints of
tests/families.py (hidden 32, 1 layer, a 600-token vocabulary of each family's own kind) and a
BertConfig of the same sizes (with SDPA and with eager attention), fed the same synthetic
windows padded to max_length, timed side by side in interleaved rounds on the CPU (the fastest
round per model and loop).

Two loops per model, on the same batch tensors and identical weights:
- bare: the checkpoint loaded by `AutoModelForQuestionAnswering.from_pretrained` (transformers'
  own attention choice), `torch.optim.AdamW(model.parameters())` and
  `model(**batch).loss.backward(); opt.step(); opt.zero_grad()`; no qaexp code;
- qaexp: the model from `qaexp.modeling.load_model`, qaexp's optimizer and schedule, prepared
  by qaexp's Accelerator, trained by the loop's own `EpochRunner.run` over an "epoch" of that
  one batch repeated (accumulate, the loss tally on the device, backward, clipping when set,
  optimizer and scheduler step, the progress bar and the check every 20 steps), with qaexp's
  default settings.
Prints seconds per optimizer step (fastest round), qaexp / bare per model (of the fastest
rounds, and round by round: the median and interquartile range of the ratio of the two loops
run back to back) and each model's bare ratio to BERT; never fails on a timing.

    python benchmarks/bench_families.py [--steps 10 --rounds 5] [--max-length 128]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (puts the checkout on sys.path)


def bert_of_the_same_size(folder: Path, texts: list[str]) -> Path:
    """A BERT QA model with the families' layer sizes over a WordPiece vocabulary."""
    import torch
    from transformers import AutoModelForQuestionAnswering, BertConfig

    from tests.families import BUILDERS, SIZE

    _, tokenizer = BUILDERS["electra"](folder, texts)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), **SIZE)
    AutoModelForQuestionAnswering.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def batch_tensors(folder: Path, examples, batch_size: int, width: int) -> dict:
    """One batch of qaexp's training windows for the checkpoint's tokenizer, padded to `width`,
    with only the inputs the model takes (no token type ids for models without them)."""
    import torch

    from qaexp.config import ModelConfig
    from qaexp.features import prepare_train_features
    from qaexp.modeling import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(folder)))
    windows = prepare_train_features(examples, tokenizer, width, 32, pad_to_max_length=True)
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in windows]
    names += ["start_positions", "end_positions"]
    return {n: torch.tensor(windows[n][:batch_size]) for n in names}


def bare_steps(folder: Path, batch: dict, attention: str | None = None):
    """`steps` optimizer steps in plain torch on a fixed batch, as a callable: no qaexp code."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    kwargs = {"attn_implementation": attention} if attention else {}
    model = AutoModelForQuestionAnswering.from_pretrained(folder, **kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def train(steps: int) -> None:
        for _ in range(steps):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

    train(1)  # warm-up
    return train


def qaexp_steps(folder: Path, batch: dict, attention: str | None = None):
    """`steps` optimizer steps of qaexp's training loop on a fixed batch, as a callable: the
    model, optimizer, schedule and Accelerator as a run builds them (default settings, CPU),
    trained by the loop's own `EpochRunner.run` over that batch repeated."""
    from qaexp.config import Device, QAExpConfig
    from qaexp.modeling import load_model
    from qaexp.training.loop import EpochRunner
    from qaexp.training.optimizer import make_optimizer, make_scheduler
    from qaexp.training.preemption import GracefulStop
    from qaexp.training.runtime import make_accelerator
    from qaexp.training.state import Progress

    cfg = QAExpConfig()
    cfg.model.name_or_path, cfg.model.attn_implementation = str(folder), attention
    cfg.hardware.device = Device.cpu
    accelerator = make_accelerator(cfg.hardware, cfg.trainer)
    model = load_model(cfg.model)
    optimizer = make_optimizer(model, cfg.optimizer)
    scheduler = make_scheduler(optimizer, cfg.optimizer, total_steps=1_000_000)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    def train(steps: int) -> None:
        runner = EpochRunner(model, [batch] * steps, optimizer, scheduler, accelerator, cfg, stop)
        runner.run(Progress())

    stop = GracefulStop()  # never entered: no signal handlers, never requested
    train(1)  # warm-up
    return train


def timed(train, steps: int) -> float:
    began = time.perf_counter()
    train(steps)
    return (time.perf_counter() - began) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    # One thread: other load on a shared machine then slows every model alike.
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from qaexp.data.synthetic import generate_examples
    from tests.families import FAMILIES, build_family_checkpoint, corpus

    texts = corpus()
    records = generate_examples(args.batch_size * 2, seed=3)
    examples = {key: [r[key] for r in records] for key in records[0]}
    base = Path(tempfile.mkdtemp(prefix="qaexp-families-"))
    folders = {"bert": bert_of_the_same_size(base / "bert", texts)}
    folders |= {f: build_family_checkpoint(f, base / f, texts) for f in FAMILIES}
    batches = {
        name: batch_tensors(folder, examples, args.batch_size, args.max_length)
        for name, folder in folders.items()
    }
    # BERT with DeBERTa's attention implementation: what eager attention alone costs.
    models = {name: (folder, batches[name], None) for name, folder in folders.items()}
    models["bert-eager"] = (folders["bert"], batches["bert"], "eager")
    steps = {}
    for name, model in models.items():
        steps[(name, "bare")] = bare_steps(*model)
        steps[(name, "qaexp")] = qaexp_steps(*model)
    # Rounds interleave the models; within a round a model's two loops run back to back, in
    # alternating order. The fastest round of each counts for s/step, and qaexp/bare is also
    # taken round by round (both loops under the same load), its median over the rounds.
    rounds = {key: [] for key in steps}
    for number in range(args.rounds):
        loops = ("bare", "qaexp") if number % 2 == 0 else ("qaexp", "bare")
        for name in models:
            for loop in loops:
                rounds[(name, loop)].append(timed(steps[(name, loop)], args.steps))
    best = {key: min(times) for key, times in rounds.items()}
    paired = {
        name: np.array(rounds[(name, "qaexp")]) / np.array(rounds[(name, "bare")])
        for name in models
    }
    bert = best[("bert", "bare")]
    print(f"threads: {torch.get_num_threads()}")
    print(
        f"{'model':<12} {'bare s/step':>12} {'qaexp s/step':>13} {'qaexp/bare':>11} "
        f"{'per round: median [IQR]':>24} {'bare vs BERT':>13}"
    )
    for name in models:
        bare, ours = best[(name, "bare")], best[(name, "qaexp")]
        low, median, high = np.percentile(paired[name], [25, 50, 75])
        spread = f"{median:.2f} [{low:.2f}-{high:.2f}]"
        print(
            f"{name:<12} {bare:12.4f} {ours:13.4f} {ours / bare:11.2f} {spread:>24} "
            f"{bare / bert:13.2f}"
        )
    seconds = {name: {loop: best[(name, loop)] for loop in ("bare", "qaexp")} for name in models}
    ratios = {name: float(np.median(values)) for name, values in paired.items()}
    print(json.dumps({"seconds_per_step": seconds, "qaexp_over_bare_median": ratios, **vars(args)}))


if __name__ == "__main__":
    main()
