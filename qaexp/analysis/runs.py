"""The runs a comparison reads: one RunResult per run folder (metrics.jsonl, summary.json,
.hydra/overrides.yaml), and RunGroup, the runs of one setting that differ only in `seed`.

The lowest comparison tool module: plot and compare import it, it imports neither.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qaexp.analysis.answers import ANSWERS_FILE, Answers, percent, read_answers
from qaexp.analysis.report import ordered_labels
from qaexp.analysis.seeds import Spread, spread
from qaexp.errors import QAExpError
from qaexp.tracking.lock import is_held
from qaexp.tracking.rundir import (
    CHECKPOINT_DIR,
    JOB_CONFIG,
    METRICS_FILE,
    SUMMARY_FILE,
    checkpoint_epoch,
    read_metrics,
)

log = logging.getLogger("qaexp.compare")

OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
REPLICATE_KEY = "seed"  # runs that differ only in this override are replicates of one setting
RUNNING = "running"  # a live process holds the run-folder lock
SUMMARY_DAMAGED = "summary damaged"  # summary.json exists but cannot be read


@dataclass
class RunResult:
    """One run as the comparison sees it; the numbers come from its metrics.jsonl."""

    label: str
    overrides: dict[str, str]  # as typed on the command line (shown)
    status: str  # summary.json's status, RUNNING, SUMMARY_DAMAGED, or "failed" without one
    epochs: list[dict]
    # The override values as the run parsed them (`true`, `True` -> True; `1e-4`, `0.0001` ->
    # 0.0001): what tells settings apart. From `overrides` when not given.
    settings: dict[str, Hashable] = field(default_factory=dict)
    results_complete: bool = False  # SUMMARY_DAMAGED: metrics and checkpoint are complete
    note: str | None = None  # what is wrong with the run's files, and what to do
    path: Path | None = None  # the run folder
    answers: Answers | None = None  # the best epoch's answers.jsonl (completed runs)
    answers_problem: str | None = None  # why there are none: a paragraph naming the file

    def __post_init__(self) -> None:
        for key, value in self.overrides.items():
            self.settings.setdefault(key, parsed_value(value))

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
        return self.status == "completed" or (
            self.status == SUMMARY_DAMAGED and self.results_complete
        )

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


def read_status(run_dir: Path) -> tuple[str, str | None]:
    """The run's status and, when its summary.json is damaged, a note naming the file and
    what to do. A running job (a live process holds its run-folder lock) is RUNNING; one that
    wrote no summary and no longer runs was killed: failed."""
    if is_held(run_dir):
        return RUNNING, None
    path = run_dir / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
        status = summary["status"]
        if not isinstance(status, str):
            raise TypeError(f"status is {status!r}")
        return status, None
    except FileNotFoundError:
        return "failed", None
    except (OSError, ValueError, KeyError, TypeError) as err:
        why = f"{type(err).__name__}: {err}" if not isinstance(err, OSError) else err.strerror
        return SUMMARY_DAMAGED, f"{path} cannot be read ({why})"


def configured_epochs(run_dir: Path) -> tuple[int | None, str | None]:
    """trainer.epochs and trainer.save_checkpoint from the run's composed config."""
    trainer = (read_config(run_dir) or {}).get("trainer") or {}
    epochs = trainer.get("epochs")
    return (epochs if isinstance(epochs, int) else None), trainer.get("save_checkpoint")


def results_complete(run_dir: Path, epochs: list[dict]) -> tuple[bool, str]:
    """Whether metrics.jsonl holds every configured epoch and checkpoint/ a complete copy of
    one of them; and a few words saying what is there."""
    expected, policy = configured_epochs(run_dir)
    recorded = [e.get("epoch") for e in epochs]
    kept = checkpoint_epoch(run_dir / CHECKPOINT_DIR)
    checkpoint = "no checkpoint" if kept is None else f"checkpoint/ epoch {kept}"
    if expected is None:
        return False, f"{len(recorded)} epoch(s) in {METRICS_FILE}, {checkpoint}"
    wanted = list(range(1, expected + 1)) if expected else [0]
    has_checkpoint = kept in recorded or policy == "none" or not expected
    what = f"{len(recorded)} of {len(wanted)} epoch(s) in {METRICS_FILE}, {checkpoint}"
    return recorded == wanted and has_checkpoint, what


def damaged_summary_note(run_dir: Path, problem: str, complete: bool, what: str) -> str:
    """One paragraph: which summary.json is damaged, what the comparison does, what to do."""
    if complete:
        return (
            f"{problem}, but the run's results are complete ({what}): the comparison shows "
            f"it from {METRICS_FILE}. The summary's own records (wall time, versions, config) "
            "are lost: restore the file from a backup, or rerun the job into a new folder if "
            "you need them (trainer.resume=true in this folder would train it again)."
        )
    state = (run_dir / "state").is_dir()
    return (
        f"{problem}, and the run's results are incomplete ({what}): it is counted as not "
        "completed. "
        + (
            "Continue it with trainer.resume=true (its state/ is saved)."
            if state
            else "Rerun the job (no saved state/ to continue from)."
        )
    )


def read_epochs(run_dir: Path) -> list[dict]:
    """metrics.jsonl; a run killed while writing it is shown without epochs, not fatal."""
    try:
        return read_metrics(run_dir)
    except ValueError as err:
        log.warning(
            "%s: unreadable (%s); the run is shown without its epochs.", run_dir / METRICS_FILE, err
        )
        return []


def read_run(run_dir: Path, label: str) -> RunResult:
    """One run folder as the comparison sees it; a damaged summary.json is named in a
    warning."""
    status, problem = read_status(run_dir)
    epochs = read_epochs(run_dir)
    overrides = read_overrides(run_dir)
    run = RunResult(label, overrides, status, epochs, settings_of(run_dir, overrides), path=run_dir)
    if problem:
        run.results_complete, what = results_complete(run_dir, epochs)
        run.note = damaged_summary_note(run_dir, problem, run.results_complete, what)
        log.warning("%s", run.note)
    return run


def load_runs(paths: list[Path]) -> list[RunResult]:
    runs = []
    for run_dir, label in find_run_dirs(paths):
        run = read_run(run_dir, label)
        if run.completed:
            try:
                run.answers = read_answers(run_dir / ANSWERS_FILE)
            except QAExpError as err:
                run.answers_problem = str(err)
        runs.append(run)
    return runs


# --- settings as the runs parsed them ---------------------------------------------------


@functools.lru_cache(maxsize=4096)  # a sweep repeats its values
def parsed_value(value: str) -> Hashable:
    """An override value as Hydra parses it, comparable: `true`/`True` -> True, `1`/`1.0` ->
    1 (Python's 1 == 1.0), `1e-4`/`0.0001` -> 0.0001; lists and dicts as their text."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_override(f"key={value}").value()
    except Exception:  # not a value Hydra can parse (a hand-edited file): the text itself
        return value
    return parsed if isinstance(parsed, Hashable) else json.dumps(parsed, sort_keys=True)


def read_config(run_dir: Path) -> dict | None:
    """The run's composed config (.hydra/config.yaml, unresolved), or None."""
    try:
        config = yaml.safe_load((run_dir / JOB_CONFIG).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def settings_of(run_dir: Path, overrides: dict[str, str]) -> dict[str, Hashable]:
    """Each override's value as the run used it: the typed value in its composed config
    (`optimizer.lr=1` and `=1.0` are both 1.0 there; `trainer.resume=True` is true), else as
    Hydra parses the text (config groups such as `model=tiny`, keys outside the config)."""
    config = read_config(run_dir) or {}
    settings = {}
    for key, text in overrides.items():
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        typed = value is not None and not isinstance(value, (dict, list))
        if typed and isinstance(value, str) and "${" in value:  # an interpolation
            typed = False
        settings[key] = value if typed else parsed_value(text)
    return settings


def differing_keys(runs: list[RunResult]) -> list[str]:
    """Override keys whose value is not the same in every run (a missing key counts), values
    compared as the runs parsed them."""
    missing = object()
    keys = sorted({key for run in runs for key in run.overrides})
    return [key for key in keys if len({run.settings.get(key, missing) for run in runs}) > 1]


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
    groups: dict[frozenset, RunGroup] = {}
    for run in runs:
        setting = {k: v for k, v in run.overrides.items() if k != REPLICATE_KEY}
        key = frozenset((k, v) for k, v in run.settings.items() if k != REPLICATE_KEY)
        groups.setdefault(key, RunGroup(setting, [])).runs.append(run)
    return sorted(
        groups.values(), key=lambda g: (not g.completed, -(g.spread("best F1").mean or 0.0))
    )


def has_replicates(groups: list[RunGroup]) -> bool:
    return any(len(group.done) > 1 for group in groups)
