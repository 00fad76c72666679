"""The comparison plot: F1 per epoch (one line per run, or per setting with its seed spread
as a band) over best F1 by sweep parameter (each run a point, mean ± sd where values repeat).

Drawn with matplotlib's object API on the Agg canvas: no pyplot, no display, no global
backend switch, so it works in batch jobs and inside a Hydra callback.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

from qaexp.analysis.runs import REPLICATE_KEY, RunGroup, RunResult, has_replicates, short_value
from qaexp.analysis.seeds import spread

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MAX_LABELLED_RUNS = 10  # more lines than this: the rest are drawn grey, without a legend entry
MAX_PARAMETER_PANELS = 5  # the Optuna space has 5 dimensions
MAX_SLICE_RUNS = 4  # runs drawn side by side in the per-slice panel


def run_label(run: RunResult, keys: list[str], position: int | None = None) -> str:
    """`3: max_length=256, stride=64` (the run folder, then its differing overrides); runs
    that differ in no override and share a folder name get their rank (`output (#2)`)."""
    parts = [f"{k}={short_value(run.overrides[k])}" for k in keys if k in run.overrides]
    suffix = "" if run.completed else f" [{run.status}]"
    if parts:
        return f"{run.label}: {', '.join(parts)}{suffix}"
    return f"{run.label}{f' (#{position})' if position else ''}{suffix}"


def run_colors(runs: list[RunResult]) -> dict[str, str]:
    """One colour per run, shared by every panel: the best MAX_LABELLED_RUNS get tab10
    colours (runs ranked best first), the rest grey."""
    return {run.label: f"C{i}" if i < MAX_LABELLED_RUNS else "0.75" for i, run in enumerate(runs)}


def plot_f1_per_epoch(ax: Axes, runs: list[RunResult], keys: list[str]) -> None:
    """One line per run (runs ranked best first); runs that did not complete are dashed."""
    colors = run_colors(runs)
    names = [run.label for run in runs]
    for i, run in enumerate(runs):
        position = i + 1 if names.count(run.label) > 1 else None
        epochs = [e["epoch"] for e in run.epochs]
        f1 = [e["f1"] for e in run.epochs]
        style = "-" if run.completed else "--"
        if i < MAX_LABELLED_RUNS:
            ax.plot(
                epochs,
                f1,
                style,
                marker="o",
                color=colors[run.label],
                label=run_label(run, keys, position),
            )
        elif epochs:
            ax.plot(epochs, f1, style, color=colors[run.label], linewidth=0.8, zorder=0)
    if len(runs) > MAX_LABELLED_RUNS:
        ax.plot([], [], color="0.75", label=f"{len(runs) - MAX_LABELLED_RUNS} more runs")
    epochs = {e["epoch"] for run in runs for e in run.epochs}
    finish_epoch_axes(ax, epochs, "dev F1 (%)", "F1 per epoch")


def finish_epoch_axes(ax: Axes, epochs: set[int], ylabel: str, title: str) -> None:
    """Epoch ticks (when few), labels, grid and the legend beside the panel."""
    if epochs and len(epochs) <= 12:
        ax.set_xticks(sorted(epochs))
    ax.margins(x=0.1)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _as_numbers(values: list[str]) -> list[float] | None:
    try:
        return [float(v) for v in values]
    except ValueError:
        return None


def plot_best_f1_by(
    ax: Axes, runs: list[RunResult], key: str, colors: dict[str, str] | None = None
) -> None:
    """Best F1 of each completed run against one sweep parameter, with the mean per value."""
    done = [r for r in runs if r.completed and r.best]
    values = [str(r.settings.get(key, "default")) for r in done]  # `true`, `True`: one value
    best = [r.best["f1"] for r in done]
    numbers = _as_numbers(values)
    if numbers is None:  # categorical: one slot per distinct value, in first-seen order
        slots = {v: i for i, v in enumerate(dict.fromkeys(sorted(values)))}
        xs = [float(slots[v]) for v in values]
        ax.set_xticks(list(slots.values()), list(slots), rotation=20)
    else:
        xs = numbers
        distinct = sorted(set(xs))
        if distinct and distinct[0] > 0 and distinct[-1] / distinct[0] >= 10:
            ax.set_xscale("log")
        if len(distinct) <= 6:
            # slanted: neighbouring values on a log axis (3e-05, 5e-05) would overlap
            ax.set_xticks(distinct, [f"{x:g}" for x in distinct], rotation=30)
            ax.minorticks_off()
    by_x: dict[float, list[float]] = defaultdict(list)
    for x, f1 in zip(xs, best, strict=True):
        by_x[x].append(f1)
    colors = colors or run_colors(runs)
    ax.scatter(xs, best, c=[colors[r.label] for r in done], s=40, zorder=3)
    if len(by_x) < len(xs):  # a mean per value only where values repeat (a grid, not lr)
        spreads = sorted((x, spread(v)) for x, v in by_x.items())
        ax.errorbar(
            [x for x, _ in spreads],
            [s.mean for _, s in spreads],
            yerr=[s.sd or 0.0 for _, s in spreads],
            fmt="-",
            color="0.4",
            linewidth=1,
            capsize=4,
            zorder=2,
            label="mean ± sd of runs",
        )
    ax.margins(x=0.15)
    ax.set_xlabel(key)
    ax.set_title(f"best F1 by {key}")
    ax.grid(alpha=0.3)


def group_colors(groups: list[RunGroup]) -> dict[str, str]:
    """Each run in its setting's colour (the setting's line in the top panel)."""
    return {
        run.label: f"C{i}" if i < MAX_LABELLED_RUNS else "0.75"
        for i, group in enumerate(groups)
        for run in group.runs
    }


def plot_group_f1_per_epoch(ax: Axes, groups: list[RunGroup], keys: list[str]) -> None:
    """One line per setting: mean F1 per epoch over its seeds, with a ± sd band."""
    for i, group in enumerate(groups[:MAX_LABELLED_RUNS]):
        per_epoch = group.f1_per_epoch()
        if not per_epoch:
            continue
        epochs = list(per_epoch)
        mean = [s.mean for s in per_epoch.values()]
        sd = [s.sd or 0.0 for s in per_epoch.values()]
        parts = [f"{k}={short_value(group.setting[k])}" for k in keys if k in group.setting]
        # Runs that differ in no override: the same setting, not a list of folder paths.
        label = f"{', '.join(parts) or 'same overrides'} (n={len(group.done)})"
        ax.plot(epochs, mean, "-", marker="o", color=f"C{i}", label=label)
        ax.fill_between(
            epochs,
            [m - d for m, d in zip(mean, sd, strict=True)],
            [m + d for m, d in zip(mean, sd, strict=True)],
            color=f"C{i}",
            alpha=0.2,
        )
    epochs = {e for group in groups for e in group.f1_per_epoch()}
    finish_epoch_axes(ax, epochs, "dev F1 (%), mean ± sd over seeds", "F1 per epoch by setting")


def plot_slice_f1(ax: Axes, runs: list[RunResult], keys: list[str]) -> None:
    """F1 by slice of the best epoch's answers: one bar per run (the best runs that have
    answers.jsonl, ranked, in their colours) for each slice, slices grouped by family."""
    colors = run_colors(runs)
    shown = [run for run in runs if run.answers is not None][:MAX_SLICE_RUNS]
    names = list(dict.fromkeys(name for run in shown for name in run.slice_f1()))
    width = 0.8 / max(len(shown), 1)
    for i, run in enumerate(shown):
        f1 = run.slice_f1()
        xs = [j + (i - (len(shown) - 1) / 2) * width for j in range(len(names))]
        ax.bar(
            xs,
            [f1.get(name, 0.0) for name in names],
            width,
            color=colors[run.label],
            label=run_label(run, keys),
        )
    families = [name.split(": ")[0] for name in names]
    starts = [j for j in range(len(names)) if j == 0 or families[j] != families[j - 1]]
    raised = False  # family names over one or two bars alternate in height, not to overlap
    for begin, end in zip(starts, [*starts[1:], len(names)], strict=True):
        if begin:
            ax.axvline(begin - 0.5, color="0.6", linewidth=0.8)
        raised = end - begin < 3 and not raised
        ax.text(
            (begin + end - 1) / 2,
            1.06 if raised else 1.01,
            families[begin],
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    labels = [name.split(": ", 1)[-1] for name in names]
    ax.set_xticks(range(len(names)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel("F1 (%), best epoch")
    ax.set_title("F1 by slice (answers.jsonl; n per slice in comparison.md)", pad=28)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def plot_comparison(
    runs: list[RunResult], groups: list[RunGroup], keys: list[str], path: Path
) -> None:
    """Write the comparison figure as a PNG to `path` (runs and groups ranked best first);
    with replicated settings the seed is not a panel: its spread is the band and bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    replicated = has_replicates(groups)
    if replicated:
        keys = [k for k in keys if k != REPLICATE_KEY]
    panels = keys[:MAX_PARAMETER_PANELS]
    columns = max(len(panels), 2)
    slices = any(run.answers is not None for run in runs)
    heights = [4.0] + ([4.0] if panels else []) + ([5.0] if slices else [])
    fig = Figure(figsize=(4.2 * columns, sum(heights)), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(heights), columns, height_ratios=heights)
    top = fig.add_subplot(grid[0, :])
    if replicated:
        plot_group_f1_per_epoch(top, groups, keys)
    else:
        plot_f1_per_epoch(top, runs, keys)
    shared = None
    for i, key in enumerate(panels):
        ax = fig.add_subplot(grid[1, i], sharey=shared)
        shared = shared or ax
        plot_best_f1_by(ax, runs, key, group_colors(groups) if replicated else None)
        if i == 0:
            ax.set_ylabel("best dev F1 (%)")
        if ax.get_legend_handles_labels()[0] and not any(a.get_legend() for a in fig.axes[1:]):
            ax.legend(fontsize=8, frameon=False)
    if slices:
        plot_slice_f1(fig.add_subplot(grid[-1, :]), runs, keys)
    completed = sum(r.completed for r in runs)
    settings = f", {len(groups)} setting{'s' if len(groups) != 1 else ''}" if replicated else ""
    fig.suptitle(f"{len(runs)} runs ({completed} completed){settings}")
    fig.savefig(path, format="png", dpi=110)
