"""One writer per run folder: an OS lock on RUN/.qaexp.lock, held for the life of a run.

The lock is a POSIX record lock (``fcntl.lockf``, i.e. fcntl F_SETLK), chosen over ``flock``
because it is what network file systems implement across machines: NFSv3 through lockd/NLM,
NFSv4 natively, Lustre mounted with ``-o flock``, GPFS/Spectrum Scale, BeeGFS. What holds:

- the kernel (or the NFS server) drops the lock when the holding process ends, however it
  ends (SIGKILL, the OOM killer, a crash): a lock of a dead process is free by construction,
  and the pid, host and start time written in the file only serve the refusal message;
- on NFS the lock of a process whose *machine* died is freed when that machine's NFSv4
  lease runs out (about 90 s) or, with NFSv3, when lockd's statd learns that it rebooted;
- a file system without working locks (Lustre mounted ``-o localflock`` or without
  ``flock``, some FUSE mounts) cannot be trusted: ENOLCK/EOPNOTSUPP/ENOSYS give a warning and
  the run goes on unprotected; ``-o localflock`` only excludes writers on the same node.

POSIX locks belong to a process and are not inherited by forked children (data-loader
workers, forked sweep jobs), and closing *any* descriptor of the file drops them, so nothing
but this module opens the lock file. Two bytes are locked: byte 0 by the job (the process
that owns the run: a single-process run, the launcher of its workers, rank 0 of torchrun or
srun) and byte 1 by the process that trains as rank 0 (the same process, or the first worker
the job started). A second run needs both, so it is refused while the job runs and also while
workers outlive a killed launcher. The job removes the file when it ends, still holding the
lock; a process that locked a file just removed checks the path and starts over.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

from qaexp.errors import QAExpError

log = logging.getLogger(__name__)

LOCK_FILE = ".qaexp.lock"
BUSY = {errno.EACCES, errno.EAGAIN}
UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunFolderBusy(QAExpError):
    """Another live process writes this run folder; nothing here was touched."""


class Role(Enum):
    """Which bytes of the lock file a process holds (see the module doc)."""

    run = (0, 2)  # the job that also trains as rank 0: bytes 0 and 1
    job = (0, 1)  # a job whose workers train: byte 0 (byte 1 handed to its rank 0)
    training = (1, 1)  # rank 0 of the workers a job started: byte 1


def holder_record() -> dict:
    """What the lock file says about its holder: pid, host, start time (UTC), command."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": " ".join(sys.argv)[:300],
    }


class RunFolderLock:
    """The lock of one run folder held by this process (use `run_folder_lock`)."""

    def __init__(self, run_dir: Path, role: Role):
        self.path = Path(run_dir) / LOCK_FILE
        self.role = role
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take this role's bytes without waiting, or raise RunFolderBusy naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                self._lock(fd, self.role)
            except OSError as err:
                orphaned = err.errno in BUSY and self.role == Role.run and _job_gone(fd)
                holder = _read_record(fd)
                os.close(fd)
                if err.errno in UNSUPPORTED:
                    log.warning(
                        "Could not lock the run folder %s (%s): this file system offers no "
                        "locks, so nothing stops a second run from writing into the same "
                        "folder. Make sure only one run uses it.",
                        self.path.parent,
                        os.strerror(err.errno),
                    )
                    return
                if err.errno not in BUSY:
                    raise OSError(err.errno, err.strerror, str(self.path)) from err
                raise RunFolderBusy(busy_message(self.path, holder, orphaned)) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed it as it ended: lock the new file
        self.fd = fd
        self._write(fd)

    @staticmethod
    def _lock(fd: int, role: Role) -> None:
        """All of the role's bytes or none (F_SETLK locks a range whole or fails)."""
        import fcntl

        start, length = role.value
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, length, start)

    def _write(self, fd: int) -> None:
        """Record the holder: the job replaces the file's content, rank 0 of its workers adds
        itself under "training"."""
        record = holder_record()
        if self.role == Role.training:
            record = {**(_read_record(fd) or {}), "training": record}
        data = json.dumps(record).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)

    def hand_training_to_workers(self) -> None:
        """A job about to start its workers: free byte 1 for their rank 0 (byte 0 stays)."""
        if self.fd is None or self.role != Role.run:
            return
        import fcntl

        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, 1)
        self.role = Role.job

    def release(self) -> None:
        """The job removes the file while still holding it; closing the file unlocks it."""
        if self.fd is None:
            return
        try:
            if self.role != Role.training and _same_file(self.fd, self.path):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None


@contextmanager
def run_folder_lock(run_dir: Path, role: Role = Role.run) -> Iterator[RunFolderLock]:
    """Hold `run_dir`'s lock in `role` for the block; raise RunFolderBusy (touching nothing
    in the folder) when another live process holds it."""
    lock = RunFolderLock(run_dir, role)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


def is_held(run_dir: Path) -> bool:
    """Whether a live process holds `run_dir`'s lock (the run is running), for readers such as
    the comparison. The probe locks both bytes for an instant and frees them; it must not run
    in a process that holds the lock itself (closing the probe would drop that lock)."""
    import fcntl

    try:
        fd = os.open(Path(run_dir) / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    except OSError:  # no lock file: no run holds it (or the folder is a read-only copy)
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 2, 0)
    except OSError as err:
        return err.errno in BUSY
    finally:
        os.close(fd)  # frees the probe's lock, if it took one
    return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _read_record(fd: int) -> dict | None:
    """The holder record in the lock file, read through `fd` (never a second descriptor: its
    close would drop this process's locks); None when empty or unreadable."""
    try:
        record = json.loads(os.pread(fd, 65536, 0) or b"null")
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _job_gone(fd: int) -> bool:
    """Byte 0 is free although the folder is locked: workers outlive the job that started
    them (their launcher was killed)."""
    import fcntl

    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
    except OSError:
        return False
    fcntl.lockf(fd, fcntl.LOCK_UN, 1, 0)
    return True


def _describe(record: dict | None) -> tuple[str, str]:
    """(who, how to stop it) for a holder record."""
    if not record or "pid" not in record:
        return "a process that has not written its pid and host yet", ""
    pid, host = record["pid"], record.get("host", "?")
    return (
        f"pid {pid} on host {host}, started {record.get('started', '?')}",
        f" (kill {pid} on {host})",
    )


def busy_message(path: Path, record: dict | None, orphaned: bool = False) -> str:
    """One paragraph: who holds the run folder and what to do."""
    if orphaned:
        holder, stop = _describe((record or {}).get("training"))
        who = f"training workers whose launching job has ended: their rank 0 is {holder}"
    else:
        holder, stop = _describe(record)
        who = f"another qaexp process: {holder}"
    return (
        f"The run folder {path.parent} is in use by {who} (recorded in {path}). Two processes "
        "writing one run folder would mix their states and results, so this one stops "
        f"without touching it. Wait for that run to end or stop it first{stop}, or give this "
        "run another folder (hydra.run.dir=PATH, or hydra.sweep.dir=PATH for a sweep). The "
        "lock of a process that has ended is free at once; on NFS the lock of a machine that "
        "died is freed when its lease expires."
    )


def process_exists(pid: int) -> bool:
    """Whether a process of this host has `pid` (any user's: a pid it may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
