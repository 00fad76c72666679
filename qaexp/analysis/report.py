"""Reports on per-question answers: one run's slices (n, EM, F1, 95% bootstrap intervals),
and two runs on the same questions (flips, the paired test, per-slice differences, the most
telling flipped questions), as markdown and as JSON."""

from __future__ import annotations

import re
from dataclasses import asdict

import numpy as np

from qaexp.analysis.answers import Answers, percent
from qaexp.analysis.bootstrap import (
    INTERVAL_RESAMPLES,
    LEVEL,
    RESAMPLES,
    SEED,
    flips,
    interval,
    paired_test,
)
from qaexp.analysis.confidence import confidence_markdown, confidence_table
from qaexp.analysis.slices import FAMILIES
from qaexp.errors import QAExpError
from qaexp.tracking.base import SLICE_PREFIX

SHOWN_FLIPS = 3  # flipped questions shown each way


def slug(text: str) -> str:
    """A dashboard-safe name: `how many/much` -> `how_many_much`, `5+` -> `5plus`."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower().replace("+", "plus")).strip("_")


def ordered_labels(family: str, labels: np.ndarray) -> list[str]:
    """The family's labels present in `labels`, in display order."""
    present = set(labels.tolist())
    known = [label for label in FAMILIES.get(family, ()) if label in present]
    return known + sorted(present - set(known))


def slice_table(
    exact: np.ndarray,
    f1: np.ndarray,
    slices: dict[str, np.ndarray],
    resamples: int = INTERVAL_RESAMPLES,
) -> dict:
    """{"all": row, family: [row, ...]}: per slice n, EM and F1 (percent, summed in order as
    the metrics are) with 95% bootstrap intervals."""
    rng = np.random.default_rng(SEED)

    def row(label: str, mask: np.ndarray | slice) -> dict:
        em_i, f1_i = interval(exact[mask], resamples, rng), interval(f1[mask], resamples, rng)
        return {
            "slice": label,
            "n": len(exact[mask]),
            "exact_match": percent(exact[mask]),
            "exact_match_interval": [em_i.low, em_i.high],
            "f1": percent(f1[mask]),
            "f1_interval": [f1_i.low, f1_i.high],
        }

    table = {"all": row("all", slice(None))}
    for family, labels in slices.items():
        table[family] = [row(label, labels == label) for label in ordered_labels(family, labels)]
    return table


def slice_scalars(exact: np.ndarray, f1: np.ndarray, slices: dict[str, np.ndarray]) -> dict:
    """Each slice's F1 as a tracker scalar, `eval/slice/<family>/<label>` (no intervals)."""
    return {
        f"{SLICE_PREFIX}{slug(family)}/{slug(label)}": percent(f1[labels == label])
        for family, labels in slices.items()
        for label in ordered_labels(family, labels)
    }


def _fmt(value: float) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.2f}"


def slice_markdown(table: dict) -> str:
    """The slice table as markdown: one block per family."""
    lines = [
        f"| slice | n | EM | EM {LEVEL:.0%} interval | F1 | F1 {LEVEL:.0%} interval |",
        "|---|---:|---:|---|---:|---|",
    ]
    for family, rows in table.items():
        for row in [rows] if family == "all" else rows:
            name = "all questions" if family == "all" else f"{family}: {row['slice']}"
            em_low, em_high = row["exact_match_interval"]
            f1_low, f1_high = row["f1_interval"]
            lines.append(
                f"| {name} | {row['n']} | {_fmt(row['exact_match'])} | "
                f"{_fmt(em_low)} - {_fmt(em_high)} | {_fmt(row['f1'])} | "
                f"{_fmt(f1_low)} - {_fmt(f1_high)} |"
            )
    return "\n".join(lines) + "\n"


def run_report(answers: Answers, name: str) -> tuple[str, dict]:
    """(analysis.md, analysis.json) of one run's answers."""
    table = slice_table(answers.exact, answers.f1, answers.slices)
    payload = {
        "run": name,
        "epoch": answers.epoch,
        "questions": len(answers),
        "interval": f"{LEVEL:.0%} percentile bootstrap over the slice's questions, "
        f"{INTERVAL_RESAMPLES} resamples",
        "slices": table,
    }
    text = (
        f"# Answers of {name}, epoch {answers.epoch}, by slice\n\n"
        f"{len(answers)} questions; EM/F1 in %, with {LEVEL:.0%} bootstrap intervals over "
        "the slice's questions (how far the score could move on another draw of questions "
        "like these; narrow for large slices, wide for small ones). Slice definitions: "
        "docs/analysis.md.\n\n" + slice_markdown(table)
    )
    confidence = confidence_table(answers)
    if confidence is not None:
        payload["confidence"] = confidence
        text += "\n" + confidence_markdown(confidence)
    return text, payload


def check_same_questions(a: Answers, b: Answers) -> None:
    """Two runs are paired only on the same questions in the same order: refuse otherwise."""
    if a.ids == b.ids:
        return
    only_a = set(a.ids) - set(b.ids)
    only_b = set(b.ids) - set(a.ids)
    reason = (
        f"{len(only_a)} questions only in the first (e.g. {sorted(only_a)[:2]}), "
        f"{len(only_b)} only in the second (e.g. {sorted(only_b)[:2]})"
        if only_a or only_b
        else "the same ids in another order"
    )
    raise QAExpError(
        f"{a.path} and {b.path} answer different evaluation questions ({len(a)} vs "
        f"{len(b)}: {reason}): they were evaluated on different data, so a paired "
        "comparison would be meaningless. Compare runs evaluated on the same "
        "data.validation_file / data settings."
    )


def pair_analysis(a: Answers, b: Answers, name_a: str, name_b: str) -> dict:
    """Run B against run A on the same questions: flips, paired bootstrap of the F1 and EM
    differences, per-slice differences and the most telling flipped questions."""
    check_same_questions(a, b)
    rng = np.random.default_rng(SEED)
    f1_test = paired_test(a.f1, b.f1, RESAMPLES, rng)
    em_test = paired_test(a.exact, b.exact, RESAMPLES, rng)
    counted = flips(a.exact, b.exact, a.f1, b.f1)
    per_slice = {}
    for family, labels in a.slices.items():
        per_slice[family] = [
            {
                "slice": label,
                "n": int((labels == label).sum()),
                "f1_a": percent(a.f1[labels == label]),
                "f1_b": percent(b.f1[labels == label]),
                "difference": percent(b.f1[labels == label]) - percent(a.f1[labels == label]),
            }
            for label in ordered_labels(family, labels)
        ]
    change = b.f1 - a.f1
    shown = {
        "wrong_to_right": np.argsort(-change, kind="stable")[:SHOWN_FLIPS],
        "right_to_wrong": np.argsort(change, kind="stable")[:SHOWN_FLIPS],
    }
    examples = {
        way: [
            {
                "id": a.ids[i],
                "question": a.rows[i]["question"],
                "context": a.rows[i]["context"],
                "gold": a.rows[i]["gold"],
                "answer_a": a.rows[i]["prediction"],
                "answer_b": b.rows[i]["prediction"],
                "f1_a": float(a.f1[i]) * 100,
                "f1_b": float(b.f1[i]) * 100,
            }
            for i in rows
            if change[i] != 0
        ]
        for way, rows in shown.items()
    }
    return {
        "a": name_a,
        "b": name_b,
        "questions": len(a),
        "f1_a": percent(a.f1),
        "f1_b": percent(b.f1),
        "paired_f1": asdict(f1_test),
        "paired_exact_match": asdict(em_test),
        "flips": asdict(counted),
        "slices": per_slice,
        "flipped_questions": examples,
    }


def p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def paired_line(pair: dict) -> str:
    """One line: the F1 difference B - A, its interval and p, and the EM flips, naming the
    runs (`pair["a"]`, `pair["b"]`) so that no direction is left to guess."""
    test, flip = pair["paired_f1"], pair["flips"]
    a, b = pair["a"], pair["b"]
    verdict = "a real difference" if test["p"] < 1 - LEVEL else "within question-sampling noise"
    return (
        f"F1 {test['difference']:+.2f} ({b} - {a}), {LEVEL:.0%} interval "
        f"[{test['low']:+.2f}, {test['high']:+.2f}], {p_text(test['p'])}: {verdict}; "
        f"EM flips: {flip['wrong_to_right']} questions right only in {b}, "
        f"{flip['right_to_wrong']} right only in {a}; F1 points gained by {b} "
        f"+{flip['f1_gained']:.2f}, lost -{flip['f1_lost']:.2f}"
    )


def pair_markdown(pair: dict) -> str:
    """The pair report as markdown."""
    test = pair["paired_f1"]
    em = pair["paired_exact_match"]
    flip = pair["flips"]
    lines = [
        f"# {pair['b']} vs {pair['a']}, question by question",
        "",
        f"{pair['questions']} questions, the same in both runs. F1 {_fmt(pair['f1_a'])} -> "
        f"{_fmt(pair['f1_b'])}.",
        "",
        "## Paired test (B - A)",
        "",
        f"Paired bootstrap over questions ({test['resamples']} resamples): it asks whether "
        "another draw of questions like these could give the opposite sign. It holds with one "
        "seed per setting, but says nothing about seed-to-seed noise (training twice with "
        "other seeds): the same model retrained can differ by about as much.",
        "",
        f"- F1: {test['difference']:+.2f} points, {LEVEL:.0%} interval "
        f"[{test['low']:+.2f}, {test['high']:+.2f}], {p_text(test['p'])}",
        f"- EM: {em['difference']:+.2f} points, {LEVEL:.0%} interval "
        f"[{em['low']:+.2f}, {em['high']:+.2f}], {p_text(em['p'])}",
        "",
        "## Flips",
        "",
        f"- EM: {flip['wrong_to_right']} wrong -> right, {flip['right_to_wrong']} right -> "
        f"wrong ({flip['both_right']} right in both, {flip['both_wrong']} wrong in both)",
        f"- F1: {flip['f1_changed']} questions changed; +{flip['f1_gained']:.2f} points "
        f"gained, -{flip['f1_lost']:.2f} lost",
        "",
        "## By slice (F1)",
        "",
        "| slice | n | F1 A | F1 B | B - A |",
        "|---|---:|---:|---:|---:|",
    ]
    for family, rows in pair["slices"].items():
        lines += [
            f"| {family}: {r['slice']} | {r['n']} | {_fmt(r['f1_a'])} | {_fmt(r['f1_b'])} | "
            f"{r['difference']:+.2f} |"
            for r in rows
        ]
    for way, title in (("wrong_to_right", "Gained by B"), ("right_to_wrong", "Lost by B")):
        lines += ["", f"## {title} (largest F1 changes)", ""]
        shown = pair["flipped_questions"][way]
        if not shown:
            lines.append("- none")
        for q in shown:
            lines += [
                f"- **{q['question']}** (`{q['id']}`)",
                f"  - context: {q['context']}",
                f"  - gold: {' | '.join(q['gold']) or '(no answer)'}",
                f"  - A: {q['answer_a']!r} (F1 {q['f1_a']:.0f}); B: {q['answer_b']!r} "
                f"(F1 {q['f1_b']:.0f})",
            ]
    return "\n".join(lines) + "\n"
