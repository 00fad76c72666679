"""Training cost of each encoder family against a BERT of the same size: the tiny checkpoints
of tests/families.py (hidden 32, 1 layer, a 600-token vocabulary of each family's own kind)
and a BertConfig of the same sizes (with SDPA and with eager attention), fed the same
synthetic windows padded to max_length, timed side by side in interleaved rounds on the CPU
(the fastest round per model). Prints seconds per optimizer step and the ratio to BERT;
never fails on a timing.

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


def training_step(
    folder: Path, examples, batch_size: int, width: int, attention: str | None = None
):
    """One optimizer step of the checkpoint in `folder` on a fixed batch, as a callable."""
    import torch

    from qaexp.config import ModelConfig
    from qaexp.features import prepare_train_features
    from qaexp.modeling import load_model, load_tokenizer

    cfg = ModelConfig(name_or_path=str(folder), attn_implementation=attention)
    tokenizer, model = load_tokenizer(cfg), load_model(cfg)
    windows = prepare_train_features(examples, tokenizer, width, 32, pad_to_max_length=True)
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in windows]
    names += ["start_positions", "end_positions"]
    tensors = {n: torch.tensor(windows[n][:batch_size]) for n in names}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        model(**tensors).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up
    return step


def timed(step, steps: int) -> float:
    began = time.perf_counter()
    for _ in range(steps):
        step()
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
    shape = (examples, args.batch_size, args.max_length)
    steps = {name: training_step(folder, *shape) for name, folder in folders.items()}
    # BERT with DeBERTa's attention implementation: what eager attention alone costs.
    steps["bert-eager"] = training_step(folders["bert"], *shape, attention="eager")
    # Rounds interleave the models, and the fastest round of each counts: other load on a
    # shared machine then slows every model alike, or none.
    rounds = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rounds[name].append(timed(step, args.steps))
    timings = {name: min(times) for name, times in rounds.items()}
    print(f"{'model':<12} {'s/step':>8} {'vs BERT':>8}")
    for name, seconds in timings.items():
        print(f"{name:<12} {seconds:8.4f} {seconds / timings['bert']:8.2f}")
    print(json.dumps({"seconds_per_step": timings, **vars(args)}))


if __name__ == "__main__":
    main()
