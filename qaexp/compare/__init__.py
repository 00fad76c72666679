"""`python -m qaexp.compare`: the comparison of runs, kept under its command's name. The code
lives in qaexp.analysis (compare.py with runs.py, seeds.py, plot.py), beside the
per-question analysis it shows; this package only names its entry points."""

from qaexp.analysis.compare import (
    SWEEP_FAILURES,
    SweepComparison,
    load_runs,
    main,
    refresh_comparison,
    table_rows,
    write_comparison,
)

__all__ = [
    "SWEEP_FAILURES",
    "SweepComparison",
    "load_runs",
    "main",
    "refresh_comparison",
    "table_rows",
    "write_comparison",
]
