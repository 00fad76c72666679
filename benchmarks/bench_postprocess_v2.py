"""SQuAD v2.0 post-processing of the whole v2.0 dev set: a plain per-question loop vs qaexp.

    python benchmarks/bench_postprocess_v2.py [--squad2-dir PATH] [--repeats N]

Builds the dev eval windows (MiniLM tokenizer, max_length 384, stride 128) with
`qaexp.features.build_features`, draws random logits (seeded; the CLS logits are raised by
`--cls-shift` so that about half the questions come out unanswerable), then times, in one
process, (a) the standard null-score method written as a plain loop over the questions (row
access to every window, argsort and nested n_best loops, the smallest CLS score across the
question's windows) and (b) `qaexp.postprocess.postprocess_predictions_v2` (best of N). It
checks that both give the same answers and null odds, prints a table and one JSON line, and
never fails on a timing.
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
from pathlib import Path

import numpy as np
from common import REPO, load_examples, machine, minilm_tokenizer, print_json, print_table, timed

N_BEST = 20
MAX_ANSWER_LENGTH = 30
MAX_LENGTH = 384
STRIDE = 128
DEV_FILE = "dev-v2.0.json"


def loop_postprocess_v2(examples, features, start_logits, end_logits, threshold=0.0):
    """The standard null-score method, one question at a time, as a plain script writes it."""
    feature_rows = collections.defaultdict(list)
    for row, feature in enumerate(features):
        feature_rows[feature["example_id"]].append(row)
    predictions, null_odds = {}, {}
    for example in examples:
        context, null, best = example["context"], math.inf, None
        for row in feature_rows[example["id"]]:
            offsets = features[row]["offset_mapping"]
            start, end = start_logits[row][: len(offsets)], end_logits[row][: len(offsets)]
            null = min(null, float(start[0] + end[0]))  # the CLS position
            for s in np.argsort(start)[-1 : -N_BEST - 1 : -1].tolist():
                for e in np.argsort(end)[-1 : -N_BEST - 1 : -1].tolist():
                    if offsets[s] is None or offsets[e] is None:
                        continue
                    if e < s or e - s + 1 > MAX_ANSWER_LENGTH:
                        continue
                    score = start[s] + end[e]
                    if best is None or score > best[0]:
                        best = (score, context[offsets[s][0] : offsets[e][1]])
        if best is None:
            predictions[example["id"]], null_odds[example["id"]] = "", math.inf
            continue
        odds = null - float(best[0])
        predictions[example["id"]] = "" if odds > threshold else best[1]
        null_odds[example["id"]] = odds
    return predictions, null_odds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--squad2-dir", type=Path, default=REPO.parent / "shared/data/squad2")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of the fast path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cls-shift", type=float, default=2.5)
    args = parser.parse_args(argv)

    path = args.squad2_dir / DEV_FILE
    if not path.is_file():
        print(f"SQuAD v2.0 dev set not found at {path}; nothing to benchmark.")
        return 0
    from datasets import disable_progress_bars

    from qaexp.features import build_features
    from qaexp.postprocess import postprocess_predictions_v2

    disable_progress_bars()
    examples = load_examples(path)
    features = build_features(examples, minilm_tokenizer(), MAX_LENGTH, STRIDE, train=False)
    rng = np.random.default_rng(args.seed)
    start = rng.normal(size=(len(features), MAX_LENGTH)).astype(np.float32)
    end = rng.normal(size=(len(features), MAX_LENGTH)).astype(np.float32)
    start[:, 0] += args.cls_shift
    end[:, 0] += args.cls_shift

    (loop_preds, loop_odds), loop_s = timed(loop_postprocess_v2, examples, features, start, end)
    runs = [timed(postprocess_predictions_v2, examples, features, start, end)]
    while len(runs) < args.repeats:
        runs.append(timed(postprocess_predictions_v2, examples, features, start, end))
    (fast_preds, fast_odds), fast_s = runs[0][0], min(seconds for _, seconds in runs)

    differing = sum(loop_preds[k] != fast_preds[k] for k in loop_preds)
    odds_differing = sum(loop_odds[k] != fast_odds[k] for k in loop_odds)
    unanswered = sum(text == "" for text in fast_preds.values())
    unanswerable = sum(not a["text"] for a in examples["answers"])
    print(f"{len(examples)} questions ({unanswerable} unanswerable), {len(features)} windows")
    print_table(
        "SQuAD v2.0 post-processing, whole dev set (random logits)",
        ["method", "seconds", "speed-up"],
        [["plain loop", loop_s, "1x"], ["qaexp", fast_s, f"{loop_s / fast_s:.0f}x"]],
    )
    print(
        f'\nqaexp: best of {args.repeats}; loop: one run. Answered "": {unanswered}; '
        f"predictions differing: {differing}; null odds differing: {odds_differing}"
    )
    print_json(
        {
            "bench": "postprocess_v2",
            "questions": len(examples),
            "windows": len(features),
            "loop_s": round(loop_s, 4),
            "qaexp_s": round(fast_s, 4),
            "ratio": round(loop_s / fast_s, 1),
            "repeats": args.repeats,
            "answered_empty": unanswered,
            "predictions_differing": differing,
            "null_odds_differing": odds_differing,
            **machine(),
        }
    )
    if differing or odds_differing:
        print("MISMATCH between the plain loop and qaexp", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
