"""Kill-anywhere driver for tests/test_crash.py: `python -m tests.crash_driver WORKDIR`.

Imports torch, transformers and qaexp once, then runs every attempt of a tiny training run in
a forked child (seconds each instead of a fresh interpreter's start-up):

1. `straight/`: an uninterrupted run that lists its crash points (qaexp.faults trace);
2. `chain/`: one run killed with SIGKILL at each crash point in turn (`kill_chain`), every
   attempt resuming the previous one's run directory, then finished;
3. `timed/`: the same, killed at a few instants drawn from the clock.

Prints one JSON line: the points, and for each attempt how it ended.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import traceback
from pathlib import Path

from omegaconf import OmegaConf

import qaexp.training.loop  # noqa: F401  (imported once, before the forks)
from qaexp.training import train
from tests.conftest import TINY_RUN, compose

CRASH_RUN = [
    *TINY_RUN,
    "trainer.epochs=3",
    "data.synthetic.train_size=16",
    "data.synthetic.eval_size=8",
    "trainer.train_batch_size=8",
    "trainer.resume=true",
    "trainer.keep_state=true",  # the final state too, so every state tensor can be compared
]
TIMED_KILLS = 4


def attempt(cfg, run_dir: Path, log: Path, env: dict[str, str], kill_after: float | None):
    """Train in a forked child with `env` set; returns (how it ended, seconds)."""
    began = time.time()
    pid = os.fork()
    if pid == 0:  # the child: train, never return into the driver
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ.update(env)
        code = 0
        try:
            train(cfg, run_dir)
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    done, status = 0, 0
    if kill_after is not None:
        deadline = began + kill_after
        while time.time() < deadline and done == 0:
            done, status = os.waitpid(pid, os.WNOHANG)
            time.sleep(0.02)
        if done == 0:
            os.kill(pid, signal.SIGKILL)
    if done == 0:
        _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}", time.time() - began
    return f"exit {os.WEXITSTATUS(status)}", time.time() - began


def kill_chain(cfg, run_dir: Path, log: Path, points: list[str]) -> list[list]:
    """Kill one run at every point of `points` it can still reach, in order: each attempt
    resumes the last one and dies at the first remaining point it passes (a point that a
    resume skips, such as the second half of a state swap it recovered, is not retried)."""
    trace, outcomes, left = run_dir.with_suffix(".trace"), [], list(points)
    while left:
        env = {"QAEXP_CRASH_AT": ",".join(left), "QAEXP_CRASH_TRACE": str(trace)}
        ended, seconds = attempt(cfg, run_dir, log, env, None)
        if ended != f"signal {signal.SIGKILL.value}":
            break
        key = trace.read_text().splitlines()[-1]
        outcomes.append([key, ended, round(seconds, 1)])
        left = left[left.index(key) + 1 :]
    return outcomes


def main(workdir: Path) -> None:
    cfg = OmegaConf.to_object(compose(CRASH_RUN))
    trace_file = workdir / "trace.txt"
    log = workdir / "attempts.log"
    straight, took = attempt(
        cfg, workdir / "straight", log, {"QAEXP_CRASH_TRACE": str(trace_file)}, None
    )
    points = trace_file.read_text().splitlines()
    outcomes = kill_chain(cfg, workdir / "chain", log, points)
    final, _ = attempt(cfg, workdir / "chain", log, {}, None)
    timing = random.Random(0)
    for n in range(TIMED_KILLS):  # a second chain, killed at instants drawn from the clock
        after = took * timing.uniform(0.1, 0.6)
        ended, seconds = attempt(cfg, workdir / "timed", log, {}, after)
        outcomes.append([f"timed {n}: {after:.1f}s", ended, round(seconds, 1)])
    timed, _ = attempt(cfg, workdir / "timed", log, {}, None)
    report = {"straight": straight, "straight_seconds": round(took, 1), "final": final}
    print(json.dumps({**report, "timed_final": timed, "points": points, "outcomes": outcomes}))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
