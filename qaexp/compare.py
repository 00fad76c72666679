"""Compare runs: `python -m qaexp.compare PATH... [--out DIR]`.

Reads what runs wrote (metrics.jsonl, summary.json, .hydra/overrides.yaml) from a --multirun
folder or from several run folders, prints a table sorted by best F1 (with the overrides that
differ between the runs) and writes comparison.csv, comparison.md and comparison.png. A
--multirun writes its comparison into its sweep folder when it ends (`SweepComparison`, a
Hydra callback registered in conf/config.yaml).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from qaexp.errors import QAExpError
from qaexp.tracking.rundir import METRICS_FILE, SUMMARY_FILE, read_metrics

log = logging.getLogger(__name__)

OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
OUTPUT_FILES = ("comparison.csv", "comparison.md", "comparison.png")
RESULT_COLUMNS = (
    "status",
    "best F1",
    "best EM",
    "final F1",
    "final EM",
    "best epoch",
    "train s",
    "windows/s",
)


@dataclass
class RunResult:
    """One run as the comparison sees it; the numbers come from its metrics.jsonl."""

    label: str
    overrides: dict[str, str]
    status: str  # summary.json's status; "failed" when the run wrote no summary
    epochs: list[dict]

    @property
    def completed(self) -> bool:
        return self.status == "completed"

    @property
    def best(self) -> dict | None:
        return max(self.epochs, key=lambda e: e["f1"], default=None)

    @property
    def final(self) -> dict | None:
        return self.epochs[-1] if self.epochs else None

    @property
    def train_seconds(self) -> float:
        return sum(e.get("train_seconds") or 0.0 for e in self.epochs)

    @property
    def windows_per_second(self) -> float | None:
        """Training windows per second over all epochs (each epoch weighted by its time)."""
        windows = sum(
            (e.get("train_windows_per_second") or 0.0) * (e.get("train_seconds") or 0.0)
            for e in self.epochs
        )
        return windows / self.train_seconds if self.train_seconds else None

    def results(self) -> dict[str, Any]:
        best, final = self.best or {}, self.final or {}
        return {
            "status": self.status,
            "best F1": best.get("f1"),
            "best EM": best.get("exact_match"),
            "final F1": final.get("f1"),
            "final EM": final.get("exact_match"),
            "best epoch": best.get("epoch"),
            "train s": self.train_seconds if self.epochs else None,
            "windows/s": self.windows_per_second,
        }


# --- reading run folders ---------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    return any((path / name).is_file() for name in (OVERRIDES_FILE, METRICS_FILE, SUMMARY_FILE))


def _folder_order(path: Path) -> tuple:
    """Job folders 0, 1, ..., 10 in numeric order, other names after them."""
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def find_run_dirs(paths: list[Path]) -> list[tuple[Path, str]]:
    """(run folder, label) for each path that is a run folder, and for each run folder
    directly inside a path that is not (a --multirun folder holds 0/, 1/, ...)."""
    found = []
    for path in paths:
        if not path.is_dir():
            raise QAExpError(f"{path}: no such folder; give run folders or a --multirun folder.")
        if is_run_dir(path):
            found.append((path, str(path)))
            continue
        children = sorted(
            (c for c in path.iterdir() if c.is_dir() and is_run_dir(c)), key=_folder_order
        )
        found += [(child, child.name if len(paths) == 1 else str(child)) for child in children]
    if not found:
        shown = " ".join(str(p) for p in paths)
        raise QAExpError(
            f"No runs found in {shown}: a run folder holds {METRICS_FILE}, {SUMMARY_FILE} or "
            f"{OVERRIDES_FILE}, and a --multirun folder holds run folders 0/, 1/, ...; give "
            "one of those."
        )
    return found


def read_overrides(run_dir: Path) -> dict[str, str]:
    """The command-line overrides of a run as {key: value} (`+key=v` and `++key=v` too)."""
    path = run_dir / OVERRIDES_FILE
    if not path.is_file():
        return {}
    overrides = {}
    for item in yaml.safe_load(path.read_text()) or []:
        key, _, value = str(item).partition("=")
        overrides[key.lstrip("+~")] = value
    return overrides


def read_status(run_dir: Path) -> str:
    """summary.json's status; a run that wrote no (readable) summary did not finish: failed."""
    try:
        return json.loads((run_dir / SUMMARY_FILE).read_text()).get("status", "failed")
    except (OSError, ValueError):
        return "failed"


def read_epochs(run_dir: Path) -> list[dict]:
    """metrics.jsonl; a run killed while writing it is shown without epochs, not fatal."""
    try:
        return read_metrics(run_dir)
    except ValueError as err:
        log.warning(
            "%s: unreadable (%s); the run is shown without its epochs.", run_dir / METRICS_FILE, err
        )
        return []


def load_runs(paths: list[Path]) -> list[RunResult]:
    return [
        RunResult(label, read_overrides(run_dir), read_status(run_dir), read_epochs(run_dir))
        for run_dir, label in find_run_dirs(paths)
    ]


# --- the table -------------------------------------------------------------------------


def differing_keys(runs: list[RunResult]) -> list[str]:
    """Override keys whose value is not the same in every run (a missing key counts)."""
    keys = sorted({key for run in runs for key in run.overrides})
    return [key for key in keys if len({run.overrides.get(key) for run in runs}) > 1]


def rank(runs: list[RunResult]) -> list[RunResult]:
    """Completed runs by best F1 (highest first), then the runs that did not complete."""
    return sorted(runs, key=lambda r: (not r.completed, -(r.best or {}).get("f1", -1.0)))


def table_rows(runs: list[RunResult]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows (raw values) of the comparison, ranked."""
    keys = differing_keys(runs)
    v2 = squad_v2_columns(runs)
    header = ["run", *keys, *RESULT_COLUMNS, *v2]
    rows = [
        [
            run.label,
            *(run.overrides.get(k, "") for k in keys),
            *run.results().values(),
            *squad_v2_values(run, v2),
        ]
        for run in rank(runs)
    ]
    return header, rows


# --- SQuAD v2.0 columns (runs with unanswerable questions) ------------------------------

# column -> metrics.jsonl key of the best epoch
SQUAD_V2_COLUMNS = {
    "HasAns F1": "HasAns_f1",
    "NoAns EM": "NoAns_exact",
    "v2 best F1": "best_f1",
    "null thresh": "best_f1_thresh",
}


def squad_v2_columns(runs: list[RunResult]) -> list[str]:
    """The SQuAD v2.0 columns, when any run recorded v2.0 metrics (else none)."""
    recorded = any("best_f1_thresh" in epoch for run in runs for epoch in run.epochs)
    return list(SQUAD_V2_COLUMNS) if recorded else []


def squad_v2_values(run: RunResult, columns: list[str]) -> list[Any]:
    """The run's best epoch's values for `columns` (None where it has none)."""
    best = run.best or {}
    return [best.get(SQUAD_V2_COLUMNS[c]) for c in columns]


def short_value(value: str) -> str:
    """An override value for display: sampled floats such as `3.071057367777371e-05` to 4
    significant digits (the CSV keeps them all), anything else as it is."""
    if len(value) <= 8:
        return value
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def _cell(column: str, value: Any) -> str:
    """Display text: 2 decimals for EM/F1, 1 for times and rates, short override values."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if column in ("train s", "windows/s") else f"{value:.2f}"
    return short_value(str(value))


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table with padded columns, readable as plain text too."""
    cells = [header, *([_cell(c, v) for c, v in zip(header, row, strict=True)] for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(s.ljust(w) for s, w in zip(line, widths, strict=True)) + " |"
        for line in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines) + "\n"


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return out.getvalue()


# --- writing ---------------------------------------------------------------------------


def _write_atomic(path: Path, write: Any) -> None:
    """Call write(tmp_path), then move the finished file into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_comparison(runs: list[RunResult], out_dir: Path) -> str:
    """Write comparison.csv, .md and .png into out_dir; return the markdown table."""
    from qaexp.compare_plot import plot_comparison

    out_dir.mkdir(parents=True, exist_ok=True)
    header, rows = table_rows(runs)
    table = markdown_table(header, rows)
    failed = sum(not run.completed for run in runs)
    intro = (
        f"# Comparison of {len(runs)} runs\n\nRanked by best dev F1 (EM/F1 in %); "
        f"{failed} run(s) did not complete.\n\n"
    )
    csv_path, md_path, png_path = (out_dir / name for name in OUTPUT_FILES)
    _write_atomic(csv_path, lambda p: p.write_text(csv_text(header, rows)))
    _write_atomic(md_path, lambda p: p.write_text(intro + table))
    _write_atomic(png_path, lambda p: plot_comparison(rank(runs), differing_keys(runs), p))
    return table


# --- command line and Hydra callback ---------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m qaexp.compare",
        description="Compare qaexp runs: a table sorted by best F1, plus "
        + ", ".join(OUTPUT_FILES)
        + ".",
    )
    parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="a --multirun folder, or run folders"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the files (default: the folder given; the "
        "current folder when several are given)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the comparison table to stdout (the command's output) and write the files."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    out_dir = args.out or (args.paths[0] if len(args.paths) == 1 else Path.cwd())
    try:
        runs = load_runs(args.paths)
        table = write_comparison(runs, out_dir)
    except QAExpError as err:
        log.error("%s", err)
        return 2
    sys.stdout.write(table)
    log.info("Wrote %s in %s", ", ".join(OUTPUT_FILES), out_dir)
    return 0


class SweepComparison(Callback):
    """When a --multirun ends, write the comparison of its jobs into the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            table = write_comparison(load_runs([sweep_dir]), sweep_dir)
        except Exception as err:  # the jobs' results are safe already: never fail the sweep
            log.warning(
                "Could not write the comparison into %s (%s); run `python -m qaexp.compare %s`.",
                sweep_dir,
                err,
                sweep_dir,
            )
            return
        log.info("Comparison (also in %s/comparison.md):\n%s", sweep_dir, table)


if __name__ == "__main__":
    sys.exit(main())
