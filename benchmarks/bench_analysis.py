"""Slices and the paired test on the full SQuAD v1.1 dev set (10,570 questions).

    python benchmarks/bench_analysis.py [--squad-dir PATH] [--repeats N]

Builds the dev windows (MiniLM tokenizer, max_length 384, stride 128; cached by datasets,
as a run has them already) and two runs' answers made from the gold answers (seeded): run A
answers 70% of the questions exactly, 15% with a word too many, 15% with a wrong span; run
B redraws 20% of A's answers the same way ("close": two settings of one model), or all of
them ("independent": two unrelated models, the most work for the bootstrap). Then it times,
best of N repeats:

- slices: every question's labels from the gold data and the windows (`slice_labels`);
- slice table: n, EM, F1 and 95% bootstrap intervals (2,000 resamples) of every slice;
- paired test: the paired bootstrap of the F1 and EM differences (10,000 resamples each)
  and the flip counts;
- the textbook paired bootstrap of the F1 difference (an index matrix of 10,000 x 10,570
  draws, in chunks) side by side with qaexp's, for the ratio.

The per-question scoring (done once per epoch by the run, not by the analysis) is timed
too. Prints a table and one JSON line; never fails on a timing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import (
    DEFAULT_SQUAD_DIR,
    DEV_FILE,
    load_examples,
    machine,
    minilm_tokenizer,
    print_json,
    print_table,
    squad_file,
)
from datasets import disable_progress_bars

from qaexp.analysis import QuestionSet, flips, paired_test, percent, slice_labels, slice_table
from qaexp.features import build_features
from qaexp.metrics import squad_metrics

RESAMPLES = 10_000


def answer_like(golds: list[str], context: str, rng: np.random.Generator) -> str:
    """Exact (70%), a word too many (15%) or a wrong span of the context (15%)."""
    draw = rng.random()
    if draw < 0.70:
        return golds[0]
    if draw < 0.85:
        return golds[0] + " " + context.split()[int(rng.integers(len(context.split())))]
    words = context.split()
    start = int(rng.integers(max(len(words) - 3, 1)))
    return " ".join(words[start : start + int(rng.integers(1, 4))])


def make_runs(examples, share: float, seed: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    golds = [a["text"] for a in examples["answers"]]
    contexts, ids = list(examples["context"]), list(examples["id"])
    a = {q: answer_like(g, c, rng) for q, g, c in zip(ids, golds, contexts, strict=True)}
    b = {
        q: answer_like(g, c, rng) if rng.random() < share else a[q]
        for q, g, c in zip(ids, golds, contexts, strict=True)
    }
    return a, b


def textbook_paired_bootstrap(d: np.ndarray, resamples: int, rng: np.random.Generator):
    """Resampled means of d from explicit index draws (chunks of 500 resamples)."""
    means = []
    for begin in range(0, resamples, 500):
        rows = min(500, resamples - begin)
        idx = rng.integers(0, len(d), (rows, len(d)))
        means.append(d[idx].mean(axis=1))
    return np.percentile(np.concatenate(means), [2.5, 97.5])


CPU_SECONDS: dict[str, float] = {}  # the same steps in CPU time of this process (less load-bound)


def best_of(repeats: int, fn, name: str | None = None) -> tuple[object, float]:
    """fn's result and its best wall time over `repeats` runs (its best CPU time under
    `name` in CPU_SECONDS: on a shared machine the wall time also counts other work)."""
    times, cpu, result = [], [], None
    for _ in range(repeats):
        began, began_cpu = time.perf_counter(), time.process_time()
        result = fn()
        times.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)
    if name:
        CPU_SECONDS[name] = min(cpu)
    return result, min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--squad-dir", type=Path, default=DEFAULT_SQUAD_DIR)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    path = squad_file(args.squad_dir, DEV_FILE)
    if path is None:
        return
    disable_progress_bars()
    examples = load_examples(path)
    windows = build_features(examples, minilm_tokenizer(), 384, 128, train=False)
    questions = QuestionSet.build(examples, windows)
    references = dict(zip(questions.ids, questions.golds, strict=True))
    rows, record = [], {"questions": len(examples), "windows": len(windows), **machine()}
    for name, share in (("close", 0.2), ("independent", 1.0)):
        pred_a, pred_b = make_runs(examples, share, seed=0)
        (rows_a, rows_b), scoring = best_of(
            1, lambda a=pred_a, b=pred_b: (questions.rows(1, a), questions.rows(1, b))
        )
        exact_a, f1_a, exact_b, f1_b = (
            np.array([r[key] for r in rows]) for rows in (rows_a, rows_b) for key in ("exact", "f1")
        )
        assert percent(f1_a) == squad_metrics(pred_a, references)["f1"]
        labels, t_slices = best_of(args.repeats, lambda: slice_labels(examples, windows), "slices")
        _, t_table = best_of(
            args.repeats, lambda e=exact_a, f=f1_a, s=labels: slice_table(e, f, s), "slice table"
        )

        def paired(fa=f1_a, fb=f1_b, ea=exact_a, eb=exact_b):
            return paired_test(fa, fb), paired_test(ea, eb), flips(ea, eb, fa, fb)

        (test, _, counted), t_paired = best_of(args.repeats, paired, "paired")
        (low, high), t_textbook = best_of(
            1,
            lambda d=f1_b - f1_a: textbook_paired_bootstrap(d, RESAMPLES, np.random.default_rng(0)),
        )
        total = t_slices + t_table + t_paired
        rows.append(
            [
                name,
                f"{test.difference:+.2f} [{test.low:+.2f}, {test.high:+.2f}]",
                f"[{100 * low:+.2f}, {100 * high:+.2f}]",
                counted.f1_changed,
                t_slices,
                t_table,
                t_paired,
                total,
                t_textbook,
                t_textbook / t_paired,
                sum(CPU_SECONDS.values()),
                scoring / 2,
            ]
        )
        record[name] = {
            "f1_a": percent(f1_a),
            "f1_b": percent(f1_b),
            "paired_f1": [test.difference, test.low, test.high, test.p],
            "textbook_interval": [100 * low, 100 * high],
            "questions_changed": counted.f1_changed,
            "slices_s": t_slices,
            "slice_table_s": t_table,
            "paired_s": t_paired,
            "total_s": total,
            "cpu_s": dict(CPU_SECONDS, total=sum(CPU_SECONDS.values())),
            "textbook_paired_f1_s": t_textbook,
            "scoring_per_run_s": scoring / 2,
        }
    print_table(
        f"SQuAD v1.1 dev: {len(examples)} questions, {len(windows)} windows; seconds, best of "
        f"{args.repeats}",
        [
            "runs A, B",
            "F1 B-A [95%]",
            "textbook [95%]",
            "changed",
            "slices",
            "slice table",
            "paired",
            "total",
            "textbook",
            "ratio",
            "total CPU",
            "scoring/run",
        ],
        rows,
    )
    print_json(record)


if __name__ == "__main__":
    main()
