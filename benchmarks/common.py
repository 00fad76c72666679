"""Helpers shared by the benchmarks: the SQuAD files, the MiniLM tokenizer, the machine's
description, and the table + JSON-line report every benchmark prints."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_SQUAD_DIR = Path(os.environ.get("QAEXP_SQUAD_DIR") or REPO.parent / "shared/data/squad")
TRAIN_FILE = "train-v1.1.reconstructed.json"
DEV_FILE = "dev-v1.1.json"


def squad_file(squad_dir: Path, name: str) -> Path | None:
    """The file, or None (after saying so) when it is absent: benchmarks then exit 0."""
    path = squad_dir / name
    if not path.is_file():
        print(f"SQuAD file not found at {path}; nothing to benchmark (use --squad-dir).")
        return None
    return path


def load_examples(path: Path, cache_dir: str | None = None):
    """An official SQuAD JSON file as qaexp reads it (HF squad schema, cached Arrow)."""
    from qaexp.data import load_squad_json

    return load_squad_json(str(path), "--squad-dir", cache_dir)


def minilm_tokenizer():
    """The embedded MiniLM-L6 tokenizer (uncased, BERT's 30,522-token vocabulary)."""
    from transformers import AutoTokenizer

    from qaexp.config import embedded_model_path

    return AutoTokenizer.from_pretrained(embedded_model_path())


def machine() -> dict:
    """Where the numbers come from: CPUs, load, library versions and the GPU if any."""
    import torch

    info = {
        "cpus": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    return info


def timed(fn: Callable, *args, **kwargs) -> tuple[object, float]:
    began = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - began


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    """A plain fixed-width table: first column left-aligned, the rest right-aligned."""
    cells = [[_cell(v) for v in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        first = row[0].ljust(widths[0])
        rest = [v.rjust(w) for v, w in zip(row[1:], widths[1:], strict=True)]
        print("  ".join([first, *rest]))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def print_json(record: dict) -> None:
    """The machine-readable result: one JSON object on one line."""
    print(json.dumps(record, sort_keys=False))
