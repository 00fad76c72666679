"""Feature building on the real SQuAD train and dev sets: the seed's method vs qaexp, side by side.

    python benchmarks/bench_features.py [--squad-dir PATH] [--train-examples N] [--num-proc N]

Both build windows with the MiniLM tokenizer (max_length 384, stride 128) through
`Dataset.map(batched=True)` into a fresh datasets cache, then build them again (cached):

- seed: every window padded to max_length, labels found by walking each window token by
  token in Python, eval offsets masked with a per-token list comprehension (a plain
  re-implementation of the seed notebook's method);
- qaexp: `qaexp.features.build_features`, exactly what a run does (unpadded windows, NumPy
  labels, Arrow columns, an explicit cache key).

It checks that both give the same windows and labels, prints a table and one JSON line, and
never fails on a timing. The cached figures are a second `map` call in the same process; that a
fresh process finds the cache too is tested in tests/test_feature_cache.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from common import (
    DEFAULT_SQUAD_DIR,
    DEV_FILE,
    TRAIN_FILE,
    load_examples,
    machine,
    minilm_tokenizer,
    print_json,
    print_table,
    squad_file,
    timed,
)

MAX_LENGTH = 384
STRIDE = 128

# ------------------------------------------------------------------ the seed's method, afresh


def _seed_tokenize(examples, tokenizer):
    return tokenizer(
        [q.strip() for q in examples["question"]],
        examples["context"],
        max_length=MAX_LENGTH,
        truncation="only_second",
        stride=STRIDE,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )


def _walk_to_labels(spans, sequence, first_char, last_char):
    """Token positions of the answer in one window, found by walking the tokens."""
    lo = 0
    while sequence[lo] != 1:
        lo += 1
    hi = lo
    while hi + 1 < len(sequence) and sequence[hi + 1] == 1:
        hi += 1
    if spans[lo][0] > first_char or spans[hi][1] < last_char:
        return 0, 0
    start = lo
    while start <= hi and spans[start][0] <= first_char:
        start += 1
    end = hi
    while end >= lo and spans[end][1] >= last_char:
        end -= 1
    return start - 1, end + 1


def seed_train_features(examples, tokenizer):
    encoded = _seed_tokenize(examples, tokenizer)
    owners = encoded.pop("overflow_to_sample_mapping")
    all_spans = encoded.pop("offset_mapping")
    starts, ends = [], []
    for window, spans in enumerate(all_spans):
        answer = examples["answers"][owners[window]]
        first_char = answer["answer_start"][0]
        last_char = first_char + len(answer["text"][0])
        start, end = _walk_to_labels(spans, encoded.sequence_ids(window), first_char, last_char)
        starts.append(start)
        ends.append(end)
    encoded["start_positions"] = starts
    encoded["end_positions"] = ends
    return encoded


def seed_eval_features(examples, tokenizer):
    encoded = _seed_tokenize(examples, tokenizer)
    owners = encoded.pop("overflow_to_sample_mapping")
    encoded["example_id"] = [examples["id"][owner] for owner in owners]
    masked = []
    for window, spans in enumerate(encoded["offset_mapping"]):
        parts = encoded.sequence_ids(window)
        masked.append(
            [span if part == 1 else None for span, part in zip(spans, parts, strict=True)]
        )
    encoded["offset_mapping"] = masked
    return encoded


def seed_build(examples, tokenizer, train: bool, num_proc: int | None):
    return examples.map(
        seed_train_features if train else seed_eval_features,
        batched=True,
        remove_columns=examples.column_names,
        fn_kwargs={"tokenizer": tokenizer},
        num_proc=num_proc,
    )


# ------------------------------------------------------------------ qaexp


def qaexp_build(examples, tokenizer, train: bool, num_proc: int | None):
    from qaexp.features import build_features

    return build_features(examples, tokenizer, MAX_LENGTH, STRIDE, train=train, num_proc=num_proc)


# ------------------------------------------------------------------ comparison


def same_windows(seed, ours, train: bool) -> bool:
    """Same windows (the seed's padded to max_length, ours not), and the same labels or the
    same context offsets. Checked outside the timings."""
    import numpy as np
    import pyarrow.compute as pc

    seed_table, our_table = seed.with_format("arrow")[:], ours.with_format("arrow")[:]
    if len(seed_table) != len(our_table):
        return False
    lengths = pc.list_value_length(our_table["input_ids"]).to_numpy()
    padded = pc.list_flatten(seed_table["input_ids"]).to_numpy().reshape(len(seed), -1)
    real = np.arange(padded.shape[1])[None, :] < lengths[:, None]
    if not np.array_equal(padded[real], pc.list_flatten(our_table["input_ids"]).to_numpy()):
        return False
    if train:
        return all(seed_table[c].equals(our_table[c]) for c in ("start_positions", "end_positions"))
    seed_offsets = seed_table["offset_mapping"].to_pylist()
    our_offsets = our_table["offset_mapping"].to_pylist()
    return all(a[: len(b)] == b for a, b in zip(seed_offsets, our_offsets, strict=True))


def cache_bytes(features) -> int:
    return sum(Path(f["filename"]).stat().st_size for f in features.cache_files)


def measure(build, examples, tokenizer, train, num_proc) -> dict:
    """Cold build (empty cache), then the same build again (cached)."""
    cold, cold_s = timed(build, examples, tokenizer, train, num_proc)
    cached, cached_s = timed(build, examples, tokenizer, train, num_proc)
    files = [f["filename"] for f in cold.cache_files]
    return {
        "features": cold,
        "cold_s": cold_s,
        "cached_s": cached_s,
        "cache_reused": [f["filename"] for f in cached.cache_files] == files,
        "cache_mb": cache_bytes(cold) / 2**20,
    }


METHODS = {"seed": seed_build, "qaexp": qaexp_build}


def compare_split(path: Path, train: bool, tokenizer, args) -> dict:
    """Best of ``args.repeats`` side-by-side rounds (alternating which method goes first, so
    a change in the machine's load hits both); each round starts from empty caches."""
    best: dict[str, dict] = {}
    same = True
    for round_ in range(args.repeats):
        caches = {name: tempfile.mkdtemp(prefix=f"bench-{name}-") for name in METHODS}
        try:
            results = {}
            for name in sorted(METHODS, reverse=round_ % 2 == 1):
                examples = load_examples(path, caches[name])
                if train and args.train_examples:
                    examples = examples.select(range(args.train_examples))
                results[name] = measure(METHODS[name], examples, tokenizer, train, args.num_proc)
            same &= same_windows(results["seed"]["features"], results["qaexp"]["features"], train)
        finally:
            for cache in caches.values():
                shutil.rmtree(cache, ignore_errors=True)
        for name, result in results.items():
            kept = best.setdefault(name, result)
            for key in ("cold_s", "cached_s"):
                kept[key] = min(kept[key], result[key])
            kept["cache_reused"] &= result["cache_reused"]
    seed, ours = best["seed"], best["qaexp"]
    return {
        "examples": len(examples),
        "windows": len(ours["features"]),
        "seed_cold_s": round(seed["cold_s"], 3),
        "qaexp_cold_s": round(ours["cold_s"], 3),
        "seed_cached_s": round(seed["cached_s"], 3),
        "qaexp_cached_s": round(ours["cached_s"], 3),
        "seed_cache_reused": seed["cache_reused"],
        "qaexp_cache_reused": ours["cache_reused"],
        "seed_cache_mb": round(seed["cache_mb"], 1),
        "qaexp_cache_mb": round(ours["cache_mb"], 1),
        "same_windows": same,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--squad-dir", type=Path, default=DEFAULT_SQUAD_DIR)
    parser.add_argument("--train-examples", type=int, default=None, help="first N (all)")
    parser.add_argument("--num-proc", type=int, default=None, help="Dataset.map num_proc")
    parser.add_argument("--repeats", type=int, default=2, help="side-by-side rounds (best of)")
    args = parser.parse_args(argv)

    paths = {
        split: squad_file(args.squad_dir, f)
        for split, f in (("train", TRAIN_FILE), ("dev", DEV_FILE))
    }
    if None in paths.values():
        return 0
    import datasets

    datasets.disable_progress_bars()
    tokenizer = minilm_tokenizer()
    record = {"bench": "features", "num_proc": args.num_proc, "repeats": args.repeats}
    rows = []
    for split, path in paths.items():
        r = record[split] = compare_split(path, split == "train", tokenizer, args)
        for stage in ("cold", "cached"):
            seed_s, ours_s = r[f"seed_{stage}_s"], r[f"qaexp_{stage}_s"]
            rows.append(
                [
                    f"{split} {stage}",
                    r["examples"],
                    r["windows"],
                    seed_s,
                    ours_s,
                    f"{seed_s / ours_s:.2f}x",
                ]
            )
    record.update(machine())  # the load average as the runs end
    print_table(
        f"Feature building, MiniLM tokenizer, max_length {MAX_LENGTH}, stride {STRIDE}: best of "
        f"{args.repeats} ({record['cpus']} CPUs, load {record['load_average']} at the end, "
        f"num_proc {args.num_proc})",
        ["stage", "examples", "windows", "seed (s)", "qaexp (s)", "speed-up"],
        rows,
    )
    for split in paths:
        r = record[split]
        print(
            f"{split}: cache reused seed={r['seed_cache_reused']} qaexp={r['qaexp_cache_reused']}; "
            f"cache size seed {r['seed_cache_mb']} MB, qaexp {r['qaexp_cache_mb']} MB; "
            f"same windows and labels: {r['same_windows']}"
        )
    print_json(record)
    if not all(record[split]["same_windows"] for split in paths):
        print("MISMATCH between the seed's features and qaexp's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
