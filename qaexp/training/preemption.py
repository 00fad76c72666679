"""Graceful stops: SIGTERM (`kill`, scancel, a SLURM preemption), SIGUSR2 (SLURM's warning
before a time limit or a preemption, as submitit asks for it) or Ctrl-C asks the training loop
to stop at the next optimizer step and save its state; the entry point then says how to
resume, or (SIGUSR2 under SLURM) requeues the job."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)


class GracefulStop:
    """Context manager: while active, the first SIGTERM/SIGUSR2/SIGINT sets `requested`
    instead of killing the process; a second Ctrl-C interrupts at once. The handlers that were
    there before (e.g. submitit's requeue handler) are put back on exit."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

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
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = name
        log.warning("%s received: stopping after the current step and saving the state", name)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
