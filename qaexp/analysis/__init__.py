"""Why a run wins: per-question answers, slices, and paired run-vs-run statistics.

The public entry for a run's answers and their analysis:

- `QuestionSet.build(examples, windows)`: the eval questions with their slice labels;
  `.rows(epoch, predictions)` are answers.jsonl's rows (written by the run directory code).
- `read_answers(path)`: answers.jsonl back as columns (damaged or missing: a QAExpError).
- `run_report(answers, name)`: one run's slices (n, EM, F1, 95% bootstrap intervals).
- `pair_analysis(a, b, name_a, name_b)`: two runs on the same questions: flips, the paired
  bootstrap test, per-slice differences, the most telling flipped questions.

The sub-package holds the tools that read what runs wrote (compare.py with runs.py,
seeds.py, plot.py: `python -m qaexp.compare`; analyze.py: `python -m qaexp.analyze`) and the
analysis core they share with training (slices, answers, bootstrap, report, questions:
numpy and the SQuAD metric, no run folder written), which a run uses to write
answers.jsonl. It sits between training and tracking; training imports only the core.
"""

from qaexp.analysis.answers import (
    ANSWERS_FILE,
    LAST_ANSWERS_FILE,
    Answers,
    answers_text,
    percent,
    question_scores,
    read_answers,
)
from qaexp.analysis.bootstrap import Flips, PairedTest, flips, interval, paired_test
from qaexp.analysis.questions import QuestionSet
from qaexp.analysis.report import (
    pair_analysis,
    pair_markdown,
    paired_line,
    run_report,
    slice_scalars,
    slice_table,
)
from qaexp.analysis.slices import FAMILIES, slice_labels

__all__ = [
    "ANSWERS_FILE",
    "FAMILIES",
    "LAST_ANSWERS_FILE",
    "Answers",
    "Flips",
    "PairedTest",
    "QuestionSet",
    "answers_text",
    "flips",
    "interval",
    "pair_analysis",
    "pair_markdown",
    "paired_line",
    "paired_test",
    "percent",
    "question_scores",
    "read_answers",
    "run_report",
    "slice_labels",
    "slice_scalars",
    "slice_table",
]
