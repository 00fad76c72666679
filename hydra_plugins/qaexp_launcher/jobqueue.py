"""A queue of job processes run `len(slots)` at a time, each in its own slot.

Each job is a child process in its own session (so a terminal's Ctrl-C reaches only the
launcher, which then decides), started from its command line (a fresh interpreter) or, when
the job has a `fork` function, forked from this process (whose imports are done already).
When a job's main process exits, whatever it left in its session (data loader workers, a
tracker's service process) is killed before the process is reaped, so no process outlives
its job. SIGTERM or Ctrl-C to the launcher forwards SIGTERM to every running
job, starts no queued job, waits up to `stop_timeout_s` for the jobs to save their state and
exit, then kills what is left; a second signal kills at once.
"""

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from hydra_plugins.qaexp_launcher.slots import Slot

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@dataclass
class QueuedJob:
    """One job: its index, command line and environment, and `fork`: what a forked child
    runs instead of the command line (its exit code), for slots without GPUs; the queue
    fills in the rest."""

    index: int
    argv: list[str]
    env: dict[str, str]
    cwd: str
    fork: Callable[[], int] | None = None
    slot: Slot | None = None
    process: "subprocess.Popen | ForkedProcess | None" = None
    started: float = 0.0
    returncode: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class StopSignals:
    """The stop signals received while the queue runs (first one decides the exit code)."""

    received: list[int] = field(default_factory=list)

    def handle(self, signum: int, frame: object) -> None:
        self.received.append(signum)  # logged by the queue, not here (no I/O in a handler)


@contextmanager
def catching_stop_signals() -> Iterator[StopSignals]:
    stops = StopSignals()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, stops.handle) for sig in STOP_SIGNALS}
    try:
        yield stops
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exited(pid: int) -> bool:
    """Whether the process has exited, without reaping it (its pid stays reserved, so its
    process group can still be signalled safely)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class ForkedProcess:
    """A job forked from this process, in a session of its own, with the slot's environment.

    Forking skips the job's interpreter start and imports (torch, transformers, qaexp: about
    4 s of CPU per job), which the basic launcher pays once per sweep. Only for slots
    without GPUs: CUDA cannot be used in a child forked after its parent touched it. The
    same interface as subprocess.Popen where the queue uses it."""

    def __init__(self, run: Callable[[], int], env: dict[str, str], cwd: str):
        sys.stdout.flush()
        sys.stderr.flush()
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:
            _child(run, env, cwd)  # never returns

    def send_signal(self, sig: int) -> None:
        with suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _child(run: Callable[[], int], env: dict[str, str], cwd: str) -> None:
    """The forked job: leave the launcher's session and signal handlers behind, take the
    slot's environment, run, and exit without unwinding into the launcher's code."""
    code = 1
    try:
        os.setsid()
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        code = run()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        with suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class JobQueue:
    """Runs queued jobs in slots; `on_end(job)` is called as each one ends (in this thread)."""

    def __init__(self, slots: list[Slot], stop_timeout_s: float, poll_s: float = 0.2):
        self.slots = slots
        self.stop_timeout_s = stop_timeout_s
        self.poll_s = poll_s

    def run(self, jobs: list[QueuedJob], on_end: Callable[[QueuedJob], None]) -> int | None:
        """Run every job; return the stop signal's number if a stop was requested."""
        queue, free, running = deque(jobs), list(self.slots), []
        with catching_stop_signals() as stops:
            while (queue or running) and not stops.received:
                while queue and free:
                    running.append(self._start(queue.popleft(), free.pop(0)))
                for job in [j for j in running if _exited(j.process.pid)]:
                    self._reap(job)
                    running.remove(job)
                    free.append(job.slot)
                    free.sort(key=lambda s: s.index)
                    on_end(job)
                if running and not stops.received:
                    time.sleep(self.poll_s)
            if stops.received:
                self._stop(running, stops, queue, on_end)
                return stops.received[0]
        return None

    def _start(self, job: QueuedJob, slot: Slot) -> QueuedJob:
        job.slot = slot
        job.started = time.time()
        env = {**job.env, **slot.env()}
        if job.fork is not None and not slot.gpus:
            job.process = ForkedProcess(job.fork, env, job.cwd)
        else:
            job.process = subprocess.Popen(job.argv, cwd=job.cwd, env=env, start_new_session=True)
        log.info(
            "#%d started in slot %d (GPUs: %s, %d threads), pid %d%s",
            job.index,
            slot.index,
            ",".join(slot.gpus) or "none",
            slot.threads,
            job.process.pid,
            " (forked)" if isinstance(job.process, ForkedProcess) else "",
        )
        return job

    @staticmethod
    def _reap(job: QueuedJob) -> None:
        """Kill what the job left in its session, then collect its exit status."""
        _kill_group(job.process.pid)
        job.returncode = job.process.wait()

    def _stop(
        self,
        running: list[QueuedJob],
        stops: StopSignals,
        queue: deque,
        on_end: Callable[[QueuedJob], None],
    ) -> None:
        log.warning(
            "%s received: SIGTERM to %d running job(s), which save their state; %d "
            "queued job(s) not started",
            signal.Signals(stops.received[0]).name,
            len(running),
            len(queue),
        )
        for job in running:
            job.process.send_signal(signal.SIGTERM)  # not yet reaped: the pid is still its
        deadline = time.monotonic() + self.stop_timeout_s
        waiting = list(running)
        while waiting and time.monotonic() < deadline and len(stops.received) < 2:
            waiting = [j for j in waiting if not _exited(j.process.pid)]
            time.sleep(self.poll_s if waiting else 0)
        for job in waiting:
            log.warning("#%d did not exit in time: killed", job.index)
        for job in running:
            self._reap(job)
            on_end(job)
