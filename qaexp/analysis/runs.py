"""The runs a comparison reads: one RunResult per run folder (metrics.jsonl, summary.json,
.hydra/overrides.yaml), and RunGroup, the runs of one setting that differ only in `seed`.

The lowest comparison tool module: plot and compare import it, it imports neither.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from qaexp.analysis.answers import ANSWERS_FILE, Answers, percent, read_answers
from qaexp.analysis.report import ordered_labels
from qaexp.analysis.seeds import Spread, spread
from qaexp.errors import QAExpError
from qaexp.tracking.rundir import METRICS_FILE, SUMMARY_FILE, read_metrics

log = logging.getLogger("qaexp.compare")

OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
REPLICATE_KEY = "seed"  # runs that differ only in this override are replicates of one setting


@dataclass
class RunResult:
    """One run as the comparison sees it; the numbers come from its metrics.jsonl."""

    label: str
    overrides: dict[str, str]
    status: str  # summary.json's status; "failed" when the run wrote no summary
    epochs: list[dict]
    path: Path | None = None  # the run folder
    answers: Answers | None = None  # the best epoch's answers.jsonl (completed runs)
    answers_problem: str | None = None  # why there are none: a paragraph naming the file

    def slice_f1(self) -> dict[str, float]:
        """F1 of each slice (`family: slice`) of the best epoch's answers; {} without them."""
        if self.answers is None:
            return {}
        return {
            f"{family}: {label}": percent(self.answers.f1[labels == label])
            for family, labels in self.answers.slices.items()
            for label in ordered_labels(family, labels)
        }

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
        """status, then every metric of METRICS, with the best epoch after the EM/F1."""
        values = {name: read(self) for name, read in METRICS.items()}
        order = ["best F1", "best EM", "final F1", "final EM"]
        return {
            "status": self.status,
            **{k: values.pop(k) for k in order},
            "best epoch": (self.best or {}).get("epoch"),
            **values,
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
    runs = []
    for run_dir, label in find_run_dirs(paths):
        run = RunResult(
            label, read_overrides(run_dir), read_status(run_dir), read_epochs(run_dir), run_dir
        )
        if run.completed:
            try:
                run.answers = read_answers(run_dir / ANSWERS_FILE)
            except QAExpError as err:
                run.answers_problem = str(err)
        runs.append(run)
    return runs


def differing_keys(runs: list[RunResult]) -> list[str]:
    """Override keys whose value is not the same in every run (a missing key counts)."""
    keys = sorted({key for run in runs for key in run.overrides})
    return [key for key in keys if len({run.overrides.get(key) for run in runs}) > 1]


def rank(runs: list[RunResult]) -> list[RunResult]:
    """Completed runs by best F1 (highest first), then the runs that did not complete."""
    return sorted(runs, key=lambda r: (not r.completed, -(r.best or {}).get("f1", -1.0)))


def short_value(value: str) -> str:
    """An override value for display: sampled floats such as `3.071057367777371e-05` to 4
    significant digits (the CSV keeps them all), anything else as it is."""
    if len(value) <= 8:
        return value
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


# --- seeds as replicates ---------------------------------------------------------------

METRICS = {  # comparison column -> how to read it from one run
    "best F1": lambda r: (r.best or {}).get("f1"),
    "best EM": lambda r: (r.best or {}).get("exact_match"),
    "final F1": lambda r: (r.final or {}).get("f1"),
    "final EM": lambda r: (r.final or {}).get("exact_match"),
    "train s": lambda r: r.train_seconds if r.epochs else None,
    "windows/s": lambda r: r.windows_per_second,
}


@dataclass
class RunGroup:
    """The runs of one setting: the same overrides except `seed`. Its numbers come from
    its completed runs (failed or interrupted ones are counted in `status` only)."""

    setting: dict[str, str]
    runs: list[RunResult]

    @property
    def label(self) -> str:
        return ",".join(run.label for run in self.runs)

    @property
    def done(self) -> list[RunResult]:
        return [run for run in self.runs if run.completed and run.best]

    @property
    def completed(self) -> bool:
        return bool(self.done)

    @property
    def status(self) -> str:
        counts: dict[str, int] = {}
        for run in self.runs:
            counts[run.status] = counts.get(run.status, 0) + 1
        return ", ".join(f"{n} {status}" for status, n in counts.items())

    def values(self, metric: str) -> list[float]:
        read = METRICS[metric]
        return [v for v in (read(run) for run in self.done) if v is not None]

    def spread(self, metric: str) -> Spread:
        return spread(self.values(metric))

    def f1_per_epoch(self) -> dict[int, Spread]:
        """Mean and spread of F1 at each epoch over the completed runs."""
        by_epoch: dict[int, list[float]] = {}
        for run in self.done:
            for e in run.epochs:
                by_epoch.setdefault(e["epoch"], []).append(e["f1"])
        return {epoch: spread(v) for epoch, v in sorted(by_epoch.items())}


def group_replicates(runs: list[RunResult]) -> list[RunGroup]:
    """Runs grouped by their overrides without `seed`, ranked like runs: completed groups by
    mean best F1, highest first, then groups with no completed run."""
    groups: dict[tuple, RunGroup] = {}
    for run in runs:
        setting = {k: v for k, v in run.overrides.items() if k != REPLICATE_KEY}
        key = tuple(sorted(setting.items()))
        groups.setdefault(key, RunGroup(setting, [])).runs.append(run)
    return sorted(
        groups.values(), key=lambda g: (not g.completed, -(g.spread("best F1").mean or 0.0))
    )


def has_replicates(groups: list[RunGroup]) -> bool:
    return any(len(group.done) > 1 for group in groups)
