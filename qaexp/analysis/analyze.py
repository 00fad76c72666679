"""Answers question by question: `python -m qaexp.analyze RUN [OTHER_RUN] [--out DIR]`
(entry: qaexp/analyze.py).

One run: its best epoch's answers (answers.jsonl) by slice, with 95% bootstrap intervals,
printed and written as analysis.md + analysis.json (into the run folder, or --out). Two runs:
OTHER_RUN against RUN on the same questions (flips, the paired bootstrap test, per-slice
differences, the most telling flipped questions), printed and written as pair-analysis.md +
pair-analysis.json (into --out, default the current folder). Bad input (a run that has not
finished, a missing or damaged answers.jsonl, runs evaluated on different questions): one
paragraph, exit code 2, nothing written.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from qaexp.analysis.answers import ANSWERS_FILE, Answers, read_answers
from qaexp.analysis.report import pair_analysis, pair_markdown, run_report
from qaexp.errors import QAExpError
from qaexp.tracking.rundir import SUMMARY_FILE, write_json_atomic, write_text_atomic

log = logging.getLogger("qaexp.analyze")

RUN_FILES = ("analysis.md", "analysis.json")
PAIR_FILES = ("pair-analysis.md", "pair-analysis.json")


def finished_answers(run_dir: Path) -> Answers:
    """The answers of a run that has ended; a run still running (or killed before it wrote
    summary.json) is refused: its answers.jsonl may be replaced by a later epoch."""
    if not run_dir.is_dir():
        raise QAExpError(f"{run_dir}: no such folder; give a run folder (outputs/runs/DATE/TIME).")
    try:
        status = json.loads((run_dir / SUMMARY_FILE).read_text()).get("status")
    except (OSError, ValueError):
        status = None
    if status is None:
        raise QAExpError(
            f"{run_dir} has no readable {SUMMARY_FILE}: the run is still running (or was "
            "killed before it ended), so its answers.jsonl may still change. Wait for it to "
            "end, or resume it with trainer.resume=true, then analyze it."
        )
    return read_answers(run_dir / ANSWERS_FILE)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m qaexp.analyze",
        description="A run's answers by slice, or two runs compared question by question.",
    )
    parser.add_argument("run", type=Path, metavar="RUN", help="a run folder")
    parser.add_argument(
        "other", type=Path, nargs="?", metavar="OTHER_RUN", help="a second run folder (B)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the report (default: RUN for one run, the current folder for two)",
    )
    return parser.parse_args(argv)


def analyze(run: Path, other: Path | None, out: Path | None) -> str:
    """Build the report, then write it (nothing is written when anything is refused)."""
    a = finished_answers(run)
    if other is None:
        text, payload = run_report(a, str(run))
        names, out = RUN_FILES, out or run
    else:
        b = finished_answers(other)
        payload = pair_analysis(a, b, str(run), str(other))
        text, names, out = pair_markdown(payload), PAIR_FILES, out or Path.cwd()
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / names[0], text)
    write_json_atomic(out / names[1], payload)
    log.info("Wrote %s in %s", ", ".join(names), out)
    return text


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        text = analyze(args.run, args.other, args.out)
    except QAExpError as err:
        log.error("%s", err)
        return 2
    except OSError as err:
        log.error("Could not write the report: %s (%s).", err.strerror or err, err.filename)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
