"""Training cost of each encoder family against a BERT of the same size: the tiny checkpoints
of tests/families.py (hidden 32, 1 layer, a 600-token vocabulary of each family's own kind)
and a BertConfig of the same sizes, fed the same synthetic windows (question + context of the
synthetic generator, each family's tokenizer), timed side by side over the same optimizer
steps on the CPU. Prints seconds per step and the ratio to BERT; never fails on a timing.

    python benchmarks/bench_families.py [--steps 30] [--batch-size 16] [--max-length 128]
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


def seconds_per_step(folder: Path, examples, steps: int, batch_size: int, width: int) -> float:
    import torch

    from qaexp.config import ModelConfig
    from qaexp.features import prepare_train_features
    from qaexp.modeling import load_model, load_tokenizer

    cfg = ModelConfig(name_or_path=str(folder))
    tokenizer, model = load_tokenizer(cfg), load_model(cfg)
    windows = prepare_train_features(examples, tokenizer, width, 32, pad_to_max_length=True)
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in windows]
    names += ["start_positions", "end_positions"]
    tensors = {n: torch.tensor(windows[n][:batch_size]) for n in names}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for step in range(steps + 3):  # 3 warm-up steps
        if step == 3:
            began = time.perf_counter()
        model(**tensors).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - began) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()
    from qaexp.data.synthetic import generate_examples
    from tests.families import FAMILIES, build_family_checkpoint, corpus

    texts = corpus()
    records = generate_examples(args.batch_size * 2, seed=3)
    examples = {key: [r[key] for r in records] for key in records[0]}
    base = Path(tempfile.mkdtemp(prefix="qaexp-families-"))
    folders = {"bert": bert_of_the_same_size(base / "bert", texts)}
    folders |= {f: build_family_checkpoint(f, base / f, texts) for f in FAMILIES}
    timings = {
        name: seconds_per_step(folder, examples, args.steps, args.batch_size, args.max_length)
        for name, folder in folders.items()
    }
    print(f"{'model':<12} {'s/step':>8} {'vs BERT':>8}")
    for name, seconds in timings.items():
        print(f"{name:<12} {seconds:8.4f} {seconds / timings['bert']:8.2f}")
    print(json.dumps({"seconds_per_step": timings, **vars(args)}))


if __name__ == "__main__":
    main()
