"""A queue of job processes run `len(slots)` at a time, each in its own slot.

Each job is a child process in its own session (so a terminal's Ctrl-C reaches only the
launcher, which then decides), started from its command line (a fresh interpreter) or, when
the job has a `fork` function, forked from this process (whose imports are done already).
When a job's main process exits, whatever it left in its session (data loader workers, a
tracker's service process) is killed before the process is reaped, so no process outlives
its job. SIGTERM or Ctrl-C to the launcher forwards SIGTERM to every running
job, starts no queued job, waits up to `stop_timeout_s` for the jobs to save their state and
exit, then kills what is left; a second signal kills at once.

What holds when the launcher itself is killed (SIGKILL, the OOM killer), so that no job goes
on writing into the sweep folder, racing a resume of the sweep:

- Each job's main process dies with the launcher. On Linux the kernel sends it SIGKILL when
  the launcher's thread that started it exits (`PR_SET_PDEATHSIG`, set by the job itself
  first thing, then checking that its parent is still the launcher, which closes the race
  with a launcher that died before); the thread that starts the jobs is the one that runs
  the queue, which waits for every job, so it never exits before them. Elsewhere (macOS) a
  thread of the job watches its parent and kills the job's process group within
  `PARENT_WATCH_S` seconds.
- The job's own children (data loader workers, torch's worker processes, a tracker's service
  process) are not signalled by the kernel: they stop by their own parent watch (torch's
  loader workers within a few seconds; torch.multiprocessing workers get SIGINT as their
  parent dies and stop at their next step).
- Nothing is left on disk: a job reads its input (the pickled config) from, and writes its
  result to, temporary files that have no name (unlinked at creation, passed as open file
  descriptors), which the system frees when the last process holding them ends. A folder of
  pickled configs could only be cleaned by a process that outlives the kill.
"""

import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import IO

from hydra_plugins.qaexp_launcher.slots import Slot

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
LAUNCHER_PID_ENV = "QAEXP_LAUNCHER_PID"  # a spawned job's launcher, for its parent watch
PARENT_WATCH_S = 0.5  # where PR_SET_PDEATHSIG is unavailable: how often a job checks
PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The C library, loaded here (a forked child should not have to load a library while another
# thread of the launcher might hold the loader's lock).
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


@dataclass
class QueuedJob:
    """One job: its index, `payload` (the bytes its process reads), command line and
    environment, and `fork`: what a forked child runs instead of the command line (its exit
    code), for slots without GPUs. Both get the file descriptors of the payload and of the
    result as their last two arguments; the queue fills in the rest (`result`: the bytes the
    job wrote, empty when it wrote none; `signalled`: the queue sent it SIGTERM)."""

    index: int
    payload: bytes
    argv: list[str]
    env: dict[str, str]
    cwd: str
    fork: Callable[[int, int], int] | None = None
    slot: Slot | None = None
    process: "subprocess.Popen | ForkedProcess | None" = None
    started: float = 0.0
    returncode: int | None = None
    result: bytes = b""
    signalled: bool = False
    files: tuple = ()
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


def die_with_launcher(launcher_pid: int) -> None:
    """Called first thing in a job's process: end this job when its launcher ends (see the
    module docstring for what holds). Exits at once when the launcher is gone already."""
    if not _set_parent_death_signal(signal.SIGKILL):
        threading.Thread(
            target=_watch_parent, args=(launcher_pid,), daemon=True, name="launcher-watch"
        ).start()
    if os.getppid() != launcher_pid:  # the launcher died before the signal was armed
        os._exit(128 + signal.SIGKILL)


def _set_parent_death_signal(sig: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig) on Linux; False where it is unavailable."""
    prctl = getattr(_LIBC, "prctl", None)
    return prctl is not None and prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _watch_parent(launcher_pid: int) -> None:
    """The job's process group ends when its parent is no longer the launcher."""
    while os.getppid() == launcher_pid:
        time.sleep(PARENT_WATCH_S)
    _kill_group(os.getpgrp())


def _unnamed_file(data: bytes = b"") -> IO[bytes]:
    """A temporary file with no name (nothing to clean up), holding `data`."""
    handle = tempfile.TemporaryFile()  # noqa: SIM115 (open while the job runs; _reap closes it)
    handle.write(data)
    handle.flush()
    return handle


def _read_all(handle: IO[bytes]) -> bytes:
    handle.seek(0)
    return handle.read()


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
        launcher = os.getpid()
        self.pid = os.fork()
        if self.pid == 0:
            _child(run, env, cwd, launcher)  # never returns

    def send_signal(self, sig: int) -> None:
        with suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _child(run: Callable[[], int], env: dict[str, str], cwd: str, launcher: int) -> None:
    """The forked job: die with the launcher, leave its session and signal handlers behind,
    take the slot's environment, run, and exit without unwinding into the launcher's code."""
    code = 1
    try:
        die_with_launcher(launcher)
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
        """Start the job (from this thread, which outlives it: see die_with_launcher), its
        payload and result in unnamed files open only while it runs."""
        job.slot = slot
        job.started = time.time()
        env = {**job.env, **slot.env(), LAUNCHER_PID_ENV: str(os.getpid())}
        job.files = (_unnamed_file(job.payload), _unnamed_file())
        fds = tuple(f.fileno() for f in job.files)
        if job.fork is not None and not slot.gpus:
            job.process = ForkedProcess(partial(job.fork, *fds), env, job.cwd)
        else:
            job.process = subprocess.Popen(
                [*job.argv, *map(str, fds)],
                cwd=job.cwd,
                env=env,
                start_new_session=True,
                pass_fds=fds,
            )
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
        """Kill what the job left in its session, collect its exit status and its result,
        and close its files."""
        _kill_group(job.process.pid)
        job.returncode = job.process.wait()
        job.result = _read_all(job.files[1])
        for handle in job.files:
            handle.close()

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
            job.signalled = True
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
