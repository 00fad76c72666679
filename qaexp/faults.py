"""Named crash points for the kill-anywhere test: off unless QAEXP_CRASH_AT or
QAEXP_CRASH_TRACE is set, and then only an environment lookup per point.

Each point is keyed ``NAME@EPOCH#N``: the N-th time this process passes NAME while working on
EPOCH (0 before training; a resumed run's setup belongs to the last epoch of its state).
``QAEXP_CRASH_AT=KEY[,KEY...]`` kills the process with SIGKILL at the first of those keys it
passes, as the OOM killer or a power cut would; ``QAEXP_CRASH_TRACE=FILE`` appends every key
passed to FILE (before dying at it), so a test can list the points of a run and see where
each attempt died. ``QAEXP_CRASH_SIGNAL=SIGINT`` (any signal name) sends that signal instead,
at every listed key the process passes: a Ctrl-C arriving at exactly that instant.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_state = {"epoch": 0}
_hits: Counter[str] = Counter()


def set_epoch(epoch: int) -> None:
    """The epoch the following points belong to."""
    _state["epoch"] = epoch


def crash_point(name: str) -> None:
    """Pass the point NAME: record it, or die here when QAEXP_CRASH_AT names it."""
    at, trace = os.environ.get("QAEXP_CRASH_AT"), os.environ.get("QAEXP_CRASH_TRACE")
    if not at and not trace:
        return
    base = f"{name}@{_state['epoch']}"
    _hits[base] += 1
    key = f"{base}#{_hits[base]}"
    if trace:
        with open(trace, "a", encoding="utf-8") as fh:
            fh.write(key + "\n")
    if at and key in at.split(","):
        os.kill(os.getpid(), signal.Signals[os.environ.get("QAEXP_CRASH_SIGNAL", "SIGKILL")])
