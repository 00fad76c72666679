"""Graceful stops: SIGTERM (`kill`, scancel, a SLURM preemption), SIGUSR2 (SLURM's warning
before a time limit or a preemption, as submitit asks for it) or Ctrl-C asks the training loop
to stop at the next optimizer step and save its state; the entry point then says how to
resume, or (SIGUSR2 under SLURM) requeues the job.

A second signal never breaks a state save: one that arrives while the state is being written
waits for the write, and the run then stops. Outside a save, a second Ctrl-C stops the run at
once (the state saved last stays the one a resume continues from); a repeated SIGTERM or
SIGUSR2 (a launcher and SLURM may both send one) only repeats the request. Either way the run
ends as a stopped run: one paragraph, the resume command, exit 128 + the first signal.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TypeVar

from qaexp.errors import RunInterrupted

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)
T = TypeVar("T")


class StopNow(KeyboardInterrupt):
    """A second Ctrl-C: leave at once. A KeyboardInterrupt, so no `except Exception` on the
    way swallows it; GracefulStop turns it into RunInterrupted when it reaches its exit."""


class GracefulStop:
    """Context manager: while active, the first SIGTERM/SIGUSR2/SIGINT sets `requested`
    instead of killing the process, and a second one is handled as the module says (state
    writes go through `saving`). The handlers that were there before (e.g. submitit's
    requeue handler) are put back on exit."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._saving = 0
        self._stop_after_save: str | None = None  # a second Ctrl-C that came during a save

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal number."""
        number = signal.Signals[self.signal_name].value if self.signal_name else signal.SIGTERM
        return 128 + int(number)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.requested:
            self.signal_name = name
            log.warning("%s received: stopping after the current step and saving the state", name)
        elif signum != signal.SIGINT:
            log.warning("%s received again: the run stops after the current step", name)
        elif self._saving:
            if self._stop_after_save is None:
                log.warning("%s received again: the run stops once the state is written", name)
            self._stop_after_save = name
        else:
            raise StopNow(name)

    @contextmanager
    def saving(self) -> Iterator[None]:
        """A state write: a second Ctrl-C during it waits for it, then stops the run."""
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1
        if self._stop_after_save is not None and not self._saving:
            raise StopNow(self._stop_after_save)

    def saved_by(self, save: Callable[..., T]) -> Callable[..., T]:
        """`save`, run inside `saving()`."""

        def protected(*args: object, **kwargs: object) -> T:
            with self.saving():
                return save(*args, **kwargs)

        return protected

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if isinstance(exc, StopNow):
            raise RunInterrupted(
                f"Stopped at once by a second {exc.args[0]} (the first, "
                f"{self.signal_name}, asked for a stop after the current step); a resume "
                "continues from the training state saved last, in the run folder's state/ "
                "(with none saved yet, the run starts over).",
                self.exit_code,
            ) from None
