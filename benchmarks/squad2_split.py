"""Split the SQuAD v2.0 dev set by article into training and evaluation files.

There is no SQuAD v2.0 training set here, so the dev set's first 25 articles train and its
last 10 evaluate (no paragraph is in both). The two files are official nested SQuAD v2.0
JSON (`data=squad_json` reads them, `is_impossible` included):

    python benchmarks/squad2_split.py OUT_DIR [--dev ../shared/data/squad2/dev-v2.0.json]
    python -m qaexp model=minilm data=squad_json \\
      data.train_file=OUT_DIR/train-first25.json data.validation_file=OUT_DIR/eval-last10.json \\
      max_length=256 trainer.epochs=2 optimizer.lr=5e-5 trainer.train_batch_size=16

The data stays out of the repository: write it to a folder outside it (or an ignored one).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_DEV = Path(__file__).resolve().parents[1].parent / "shared/data/squad2/dev-v2.0.json"
TRAIN_ARTICLES = 25
EVAL_ARTICLES = 10


def split_articles(document: dict, train: int, evaluation: int) -> tuple[dict, dict]:
    """The first `train` and the last `evaluation` articles, each as a SQuAD JSON document."""
    articles = document["data"]
    if train + evaluation > len(articles):
        raise SystemExit(
            f"{train} + {evaluation} articles asked for, the file has {len(articles)}."
        )
    version = document.get("version", "v2.0")
    return (
        {"version": version, "data": articles[:train]},
        {"version": version, "data": articles[len(articles) - evaluation :]},
    )


def counts(document: dict) -> tuple[int, int]:
    """(questions, unanswerable questions) of a SQuAD JSON document."""
    qas = [qa for a in document["data"] for p in a["paragraphs"] for qa in p["qas"]]
    return len(qas), sum(bool(qa.get("is_impossible")) for qa in qas)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder for the two files")
    parser.add_argument("--dev", type=Path, default=DEFAULT_DEV, help="dev-v2.0.json")
    parser.add_argument("--train-articles", type=int, default=TRAIN_ARTICLES)
    parser.add_argument("--eval-articles", type=int, default=EVAL_ARTICLES)
    args = parser.parse_args(argv)
    document = json.loads(args.dev.read_text(encoding="utf-8"))
    train, evaluation = split_articles(document, args.train_articles, args.eval_articles)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    names = {
        f"train-first{args.train_articles}.json": train,
        f"eval-last{args.eval_articles}.json": evaluation,
    }
    for name, part in names.items():
        path = args.out_dir / name
        path.write_text(json.dumps(part, ensure_ascii=False), encoding="utf-8")
        questions, impossible = counts(part)
        print(
            f"{path}: {len(part['data'])} articles, {questions} questions, "
            f"{impossible} unanswerable"
        )


if __name__ == "__main__":
    main()
