"""Compare runs: `python -m qaexp.compare PATH... [--out DIR]` (entry: qaexp/compare/).

Reads what runs wrote (metrics.jsonl, summary.json, .hydra/overrides.yaml) from a --multirun
folder or from several run folders, prints a table sorted by best F1 (with the overrides that
differ between the runs) and writes comparison.csv, comparison.md and comparison.png. A
--multirun keeps its comparison current in its sweep folder, refreshed as each job ends
(`SweepComparison`, a Hydra callback registered in conf/config.yaml).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

try:
    import fcntl
except ImportError:  # not POSIX: comparisons written by concurrent jobs are not serialised
    fcntl = None

from qaexp.analysis.plot import plot_comparison
from qaexp.analysis.report import pair_analysis, paired_line
from qaexp.analysis.runs import (
    METRICS,
    SUMMARY_DAMAGED,
    RunGroup,
    RunResult,
    differing_keys,
    group_replicates,
    has_replicates,
    load_runs,
    rank,
    short_value,
)
from qaexp.analysis.seeds import ALPHA, welch_test
from qaexp.errors import QAExpError
from qaexp.tracking.rundir import replaced_atomically, write_text_atomic

__all__ = ["SweepComparison", "load_runs", "main", "refresh_comparison", "write_comparison"]

log = logging.getLogger("qaexp.compare")

OUTPUT_FILES = ("comparison.csv", "comparison.md", "comparison.png")
LOCK_FILE = ".comparison.lock"
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


NO_NOISE_ESTIMATE = (
    "One seed per setting: these differences have no noise estimate (seed-to-seed spread "
    "of F1 is often about a point). Add `seed=1,2,3` to the sweep to measure it."
)
MAX_PAIRS_GROUPS = 8  # more settings than this: each is tested against the top one only


def _mean_sd(group: RunGroup, metric: str) -> str | None:
    s = group.spread(metric)
    if s.mean is None:
        return None
    digits = 1 if metric in ("train s", "windows/s") else 2
    return f"{s.mean:.{digits}f}" + ("" if s.sd is None else f" ± {s.sd:.{digits}f}")


def versus_top(group: RunGroup, top: RunGroup) -> tuple[float | None, float | None, str]:
    """Difference in mean best F1 from the top setting, Welch's p, and the verdict."""
    if group is top:
        return None, None, "top"
    mean, top_mean = group.spread("best F1").mean, top.spread("best F1").mean
    if mean is None or top_mean is None:
        return None, None, "-"
    test = welch_test(group.values("best F1"), top.values("best F1"))
    if test is None:
        return mean - top_mean, None, "no noise estimate (n < 2)"
    verdict = "beyond seed noise" if test.beyond_noise else "within seed noise"
    return test.difference, test.p, f"{test.difference:+.2f}, {p_text(test.p)}: {verdict}"


def p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def group_table(groups: list[RunGroup], keys: list[str]) -> tuple[list, list, list, list]:
    """(markdown header, markdown rows, CSV header, CSV rows) of the grouped comparison:
    for each metric its mean ± sd (the CSV: `metric` = mean and `metric sd`)."""
    settings = [k for k in keys if k != "seed"]
    metrics = list(METRICS)
    header = ["runs", *settings, "n", "status", *metrics, "vs top (best F1, Welch)"]
    csv_header = ["runs", *settings, "n", "status"]
    csv_header += [c for m in metrics for c in (m, f"{m} sd")]
    csv_header += ["best F1 difference vs top", "p vs top", "vs top"]
    rows, csv_rows = [], []
    for group in groups:
        first = [group.label, *(group.setting.get(k, "") for k in settings)]
        first += [len(group.done), group.status]
        difference, p, verdict = versus_top(group, groups[0])
        rows.append([*first, *(_mean_sd(group, m) for m in metrics), verdict])
        spreads = [group.spread(m) for m in metrics]
        csv_rows.append(
            [*first, *(v for s in spreads for v in (s.mean, s.sd)), difference, p, verdict]
        )
    return header, rows, csv_header, csv_rows


def setting_name(group: RunGroup, keys: list[str]) -> str:
    return ", ".join(f"{k}={short_value(group.setting[k])}" for k in keys if k in group.setting)


def noise_section(groups: list[RunGroup]) -> str:
    """Which differences in mean best F1 between settings exceed the seed-to-seed noise."""
    keys = [k for k in differing_keys([r for g in groups for r in g.runs]) if k != "seed"]
    done = [g for g in groups if len(g.done) > 1]
    if len(done) > MAX_PAIRS_GROUPS:
        pairs = [(done[0], g) for g in done[1:]]
    else:
        pairs = [(a, b) for i, a in enumerate(done) for b in done[i + 1 :]]
    lines = [
        "## Differences beyond the seed noise",
        "",
        f"Welch's t-test on best F1 (two-sided, alpha {ALPHA}; no correction for testing "
        "several pairs, so with many settings expect an occasional false alarm):",
        "",
    ]
    for a, b in pairs:
        test = welch_test(a.values("best F1"), b.values("best F1"))
        verdict = "beyond seed noise" if test.beyond_noise else "within seed noise"
        lines.append(
            f"- {setting_name(a, keys) or a.label} vs {setting_name(b, keys) or b.label}: "
            f"{test.difference:+.2f} F1 (t={test.t:.2f}, df={test.df:.1f}, {p_text(test.p)}): "
            f"{verdict}"
        )
    if not pairs:
        lines.append("- fewer than two settings with 2+ completed seeds: nothing to test")
    single = [g.label for g in groups if len(g.done) == 1]
    if single:
        lines.append(f"\nOne completed seed only (no noise estimate): runs {'; '.join(single)}.")
    return "\n".join(lines) + "\n"


MAX_PAIRED_RUNS = 10  # runs tested against the best one, question by question
MAX_SLICE_RUNS = 6  # runs shown side by side in the per-slice table


def slice_columns(runs: list[RunResult]) -> list[str]:
    """`F1 family: slice` for every slice of any run's answers, in the runs' order."""
    names = dict.fromkeys(name for run in rank(runs) for name in run.slice_f1())
    return [f"F1 {name}" for name in names]


def with_slice_columns(
    header: list[str], rows: list[list[Any]], labels: list[str], runs: list[RunResult]
) -> tuple[list[str], list[list[Any]]]:
    """The CSV table with each row's per-slice F1 appended (a grouped row: the mean over
    the setting's runs that have answers)."""
    columns = slice_columns(runs)
    if not columns:
        return header, rows
    by_label = {run.label: run.slice_f1() for run in runs}
    extended = []
    for row, label in zip(rows, labels, strict=True):
        per_run = [by_label[name] for name in label.split(",") if by_label.get(name)]
        values = []
        for column in columns:
            found = [f1[column[3:]] for f1 in per_run if column[3:] in f1]
            values.append(sum(found) / len(found) if found else None)
        extended.append([*row, *values])
    return [*header, *columns], extended


def run_name(run: RunResult, keys: list[str]) -> str:
    """`run 1 (stride=128)`: the run folder and the overrides that tell it from the others."""
    parts = [f"{k}={short_value(run.overrides[k])}" for k in keys if k in run.overrides]
    return f"run {run.label}" + (f" ({', '.join(parts)})" if parts else "")


def slice_section(runs: list[RunResult]) -> str:
    """F1 by slice of the best epoch's answers: one row per slice, one column per run."""
    shown = [run for run in rank(runs) if run.answers is not None][:MAX_SLICE_RUNS]
    if not shown:
        return ""
    per_run = [run.slice_f1() for run in shown]
    keys = differing_keys(runs)
    header = ["slice", "n", *(f"F1 {run_name(run, keys)}" for run in shown)]
    counts = {
        f"{family}: {label}": int((labels == label).sum())
        for family, labels in shown[0].answers.slices.items()
        for label in set(labels.tolist())
    }
    names = list(dict.fromkeys(name for f1 in per_run for name in f1))
    rows = [[name, counts.get(name), *(f1.get(name) for f1 in per_run)] for name in names]
    return (
        "\n## F1 by slice\n\nThe best epoch's answers of each run (answers.jsonl), split by "
        "question word, answer length, windows per context, where the answer lies, "
        "question-context word overlap (docs/analysis.md):\n\n" + markdown_table(header, rows)
    )


def paired_section(runs: list[RunResult], seeds_tested: bool = False) -> str:
    """Each completed run against the best run on the same questions (paired bootstrap);
    `seeds_tested`: the comparison has Welch's seed-noise test above."""
    ranked = [run for run in rank(runs) if run.completed and run.best]
    keys = differing_keys(runs)
    seed_noise = (
        "the Welch test above does"
        if seeds_tested
        else "add seed=1,2,3 to the sweep for a test of it"
    )
    lines = [
        "## Against the best run, question by question",
        "",
        "Paired bootstrap over the evaluation questions (each run - the best, 10,000 "
        "resamples): whether another draw of questions like these could reverse the "
        "difference. It holds with one seed per setting, but says nothing about seed-to-seed "
        f"noise ({seed_noise}).",
        "",
    ]
    missing = [run for run in ranked if run.answers is None]
    top = next((run for run in ranked if run.answers is not None), None)
    if top is None:
        lines.append("- no completed run has answers.jsonl: nothing to pair")
    else:
        lines[2] = lines[2].replace("the best", f"run {top.label}", 1)
        others = [run for run in ranked if run.answers is not None and run is not top]
        for run in others[:MAX_PAIRED_RUNS]:
            try:
                pair = pair_analysis(
                    top.answers, run.answers, f"run {top.label}", f"run {run.label}"
                )
            except QAExpError as err:
                lines.append(f"- run {run.label}: not paired: {err}")
                continue
            lines.append(f"- {run_name(run, keys)} vs {run_name(top, keys)}: {paired_line(pair)}")
        if not others:
            lines.append("- only one run has answers.jsonl: nothing to pair")
        if len(others) > MAX_PAIRED_RUNS:
            lines.append(f"- {len(others) - MAX_PAIRED_RUNS} more runs not paired")
    if missing:
        names = ", ".join(run.label for run in missing)
        example = missing[0].path / "checkpoint" if missing[0].path else "RUN/checkpoint"
        lines.append(
            f"\nWithout per-question answers (answers.jsonl missing or unreadable): runs "
            f"{names}; their slices and flips are not shown. Runs made before qaexp wrote "
            "answers.jsonl get one by evaluating their checkpoint: python -m qaexp <the run's "
            f"overrides> trainer.epochs=0 model.name_or_path={example}."
        )
    return "\n".join(lines) + "\n"


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


def not_completed(runs: list[RunResult]) -> str:
    """`2 run(s) did not complete: 4 (failed), 5 (running)`, naming each run."""
    missing = [run for run in runs if not run.completed]
    if not missing:
        return "every run completed"
    named = ", ".join(f"{run.label} ({run.status})" for run in missing)
    return f"{len(missing)} run(s) did not complete: {named}"


def run_notes(runs: list[RunResult]) -> str:
    """A section naming the runs whose files are damaged, and what to do about each."""
    notes = [f"- {run.label}: {run.note}" for run in runs if run.note]
    return "\n## Damaged run files\n\n" + "\n".join(notes) + "\n" if notes else ""


def write_comparison(runs: list[RunResult], out_dir: Path) -> str:
    """Write comparison.csv, .md and .png into out_dir; return the markdown table. Runs that
    differ only in `seed` are one row (mean ± sd) when any setting has several seeds."""
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_replicates(runs)
    keys = differing_keys(runs)
    intro = f"# Comparison of {len(runs)} runs\n\n"
    if has_replicates(groups):
        header, rows, csv_header, csv_rows = group_table(groups, keys)
        csv_header, csv_rows = with_slice_columns(
            csv_header, csv_rows, [g.label for g in groups], runs
        )
        table = markdown_table(header, rows)
        intro += (
            f"{len(groups)} settings, ranked by mean best dev F1 (EM/F1 in %; mean ± sd "
            f"over the seeds, n completed); {not_completed(runs)}.\n\n"
        )
        outro = "\n" + noise_section(groups)
    else:
        header, rows = table_rows(runs)
        csv_header, csv_rows = with_slice_columns(header, rows, [r.label for r in rank(runs)], runs)
        table = markdown_table(header, rows)
        intro += f"Ranked by best dev F1 (EM/F1 in %); {not_completed(runs)}.\n\n"
        outro = "\n" + NO_NOISE_ESTIMATE + "\n"
    outro += run_notes(runs)
    csv_path, md_path, png_path = (out_dir / name for name in OUTPUT_FILES)
    write_text_atomic(csv_path, csv_text(csv_header, csv_rows))
    outro += slice_section(runs) + "\n" + paired_section(runs, has_replicates(groups))
    write_text_atomic(md_path, intro + table + outro)
    if any(run.epochs for run in runs):
        with replaced_atomically(png_path) as tmp:
            plot_comparison(rank(runs), groups, keys, tmp)
    else:  # an empty plot says nothing; a stale one would mislead
        png_path.unlink(missing_ok=True)
        log.info("No comparison plot: no run has recorded an epoch's metrics yet.")
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


@contextmanager
def comparison_lock(out_dir: Path) -> Iterator[None]:
    """Serialise comparisons written into one folder: jobs that end together each refresh
    it, and the last to take the lock reads every result written before it (POSIX flock)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK_FILE, "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def refresh_comparison(sweep_dir: Path) -> str | None:
    """Rewrite the sweep folder's comparison from what its jobs have written so far; return
    the table. Never fails (the jobs' results are safe already): warns and returns None."""
    try:
        with comparison_lock(sweep_dir):
            return write_comparison(load_runs([sweep_dir]), sweep_dir)
    except Exception as err:
        log.warning(
            "Could not write the comparison into %s (%s); run `python -m qaexp.compare %s`.",
            sweep_dir,
            err,
            sweep_dir,
        )
        return None


class SweepComparison(Callback):
    """Keeps comparison.{md,csv,png} of a --multirun current in its sweep folder: refreshed
    when each job ends (completed, failed or stopped; Hydra skips the end-of-sweep hook when
    a job fails) and once more, printed, when the sweep ends."""

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN:
            refresh_comparison(Path(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = refresh_comparison(sweep_dir)
        if table is not None:
            log.info("Comparison (also in %s/comparison.md):\n%s", sweep_dir, table)
        SWEEP_FAILURES[:] = failed_jobs(sweep_dir)
        if SWEEP_FAILURES:
            log.error(
                "%d job(s) failed: %s; each job's paragraph is in its qaexp.log.",
                len(SWEEP_FAILURES),
                "; ".join(SWEEP_FAILURES),
            )


# The failed jobs of the last sweep this process ran (qaexp's entry point exits 2 on them).
SWEEP_FAILURES: list[str] = []


def failed_jobs(sweep_dir: Path) -> list[str]:
    """`#N (settings)` for each job of the sweep whose summary says it failed (or is damaged
    and its results incomplete), by the settings that differ between the jobs."""
    try:
        runs = load_runs([sweep_dir])
    except QAExpError:
        return []  # no job wrote anything (the callback never fails a sweep)
    keys = differing_keys(runs)
    return [
        f"#{run.label} ({' '.join(f'{k}={run.overrides.get(k)}' for k in keys) or 'defaults'})"
        for run in runs
        if run.status == "failed" or (run.status == SUMMARY_DAMAGED and not run.completed)
    ]


if __name__ == "__main__":
    sys.exit(main())
