"""The label check on real SQuAD v1.1: the share of labelled train windows whose labels decode
back to their gold answer through the (normalised) offsets, every miss listed, and the share
of dev answers that lie in some window; with the offsets raw and normalised side by side.

    python benchmarks/label_recovery.py [--squad-dir DIR] [--max-length 384 --stride 128]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import (
    DEFAULT_SQUAD_DIR,
    DEV_FILE,
    TRAIN_FILE,
    load_examples,
    minilm_tokenizer,
    squad_file,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--squad-dir", type=Path)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--stride", type=int, default=128)
    args = parser.parse_args()
    squad_dir = args.squad_dir or DEFAULT_SQUAD_DIR
    train_path, dev_path = squad_file(squad_dir, TRAIN_FILE), squad_file(squad_dir, DEV_FILE)
    if not (train_path and dev_path):
        return
    from qaexp.features import build_features
    from qaexp.training.labels import check_eval_reachability, check_train_labels

    cache = str(Path(tempfile.gettempdir()) / "qaexp-label-recovery")  # reruns reuse windows
    train, dev = load_examples(train_path, cache), load_examples(dev_path, cache)
    tokenizer = minilm_tokenizer()
    report = {}
    for normalise in (False, True):
        began = time.perf_counter()
        kwargs = {"max_length": args.max_length, "stride": args.stride}
        windows = build_features(
            train, tokenizer, train=True, normalise_offsets=normalise, **kwargs
        )
        dev_windows = build_features(
            dev, tokenizer, train=False, normalise_offsets=normalise, **kwargs
        )
        check = check_train_labels(windows, train, shown=len(windows))  # every miss
        check_eval_reachability(dev_windows, dev, check)
        name = "normalised" if normalise else "raw"
        report[name] = {
            "labelled_windows": check.labelled,
            "recovered": check.recovered,
            "recovery": check.recovery,
            "dev_answerable": check.answerable_eval,
            "dev_reachable": check.reachable_eval,
            "seconds": round(time.perf_counter() - began, 1),
        }
        print(f"offsets {name}: {check.describe()} ({report[name]['seconds']} s)")
        for example_id, gold, decoded in check.misses:
            print(f"  miss {example_id}: gold {gold!r}, labels give {decoded}")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
