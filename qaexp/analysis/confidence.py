"""How sure a run was of its answers: EM/F1 by thirds of the questions ranked by the answer's
span logit (start + end logit of the best span), and the most confidently wrong answers.

A logit is no probability: it ranks one run's answers, but is not comparable across models
and says nothing on its own scale. A run whose top third is answered much better than its
bottom third can be trusted more where it is sure; a flat line means its scores tell little.
"""

from __future__ import annotations

import numpy as np

from qaexp.analysis.answers import Answers, percent

PARTS = ("most sure third", "middle third", "least sure third")
SHOWN_WRONG = 3  # confidently wrong questions shown


def confidence_table(answers: Answers) -> dict | None:
    """{"thirds": [...], "no_span": n, "confidently_wrong": [...]} or None when the rows carry
    no span logits (a run made before they were kept)."""
    logits = answers.span_logits
    if logits is None:
        return None
    known = np.flatnonzero(~np.isnan(logits))
    ranked = known[np.argsort(-logits[known], kind="stable")]  # ties keep the eval order
    thirds = []
    for name, part in zip(PARTS, np.array_split(ranked, len(PARTS)), strict=True):
        thirds.append(
            {
                "part": name,
                "n": int(part.size),
                "span_logit_min": float(logits[part].min()) if part.size else None,
                "span_logit_max": float(logits[part].max()) if part.size else None,
                "exact_match": percent(answers.exact[part]),
                "f1": percent(answers.f1[part]),
            }
        )
    wrong = [i for i in ranked if answers.f1[i] == 0][:SHOWN_WRONG]
    return {
        "thirds": thirds,
        "no_span": int(len(answers) - known.size),
        "confidently_wrong": [
            {
                "id": answers.ids[i],
                "question": answers.rows[i]["question"],
                "gold": answers.rows[i]["gold"],
                "prediction": answers.rows[i]["prediction"],
                "span_logit": float(logits[i]),
            }
            for i in wrong
        ],
    }


def confidence_markdown(table: dict) -> str:
    """The confidence section of analysis.md."""
    lines = [
        "## Confidence (span logit)",
        "",
        "Questions ranked by the answer's span logit (start + end logit of the best span: it "
        "ranks this run's answers, it is not a probability), cut into thirds. EM that falls "
        "from the top third to the bottom one means the logit says when to trust an answer.",
        "",
        "| part | n | span logit | EM | F1 |",
        "|---|---:|---|---:|---:|",
    ]
    for row in table["thirds"]:
        span = (
            "-" if row["n"] == 0 else f"{row['span_logit_min']:.2f} to {row['span_logit_max']:.2f}"
        )
        lines.append(
            f"| {row['part']} | {row['n']} | {span} | {_fmt(row['exact_match'])} | "
            f"{_fmt(row['f1'])} |"
        )
    if table["no_span"]:
        lines += ["", f"{table['no_span']} questions had no valid span (no logit)."]
    lines += ["", "Most confidently wrong (highest span logit, F1 0):", ""]
    if not table["confidently_wrong"]:
        lines.append("- none")
    for q in table["confidently_wrong"]:
        gold = " | ".join(q["gold"]) or "(no answer)"
        lines.append(
            f"- **{q['question']}** (`{q['id']}`): answered {q['prediction']!r} "
            f"(span logit {q['span_logit']:.2f}), gold {gold}"
        )
    return "\n".join(lines) + "\n"


def _fmt(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.2f}"
