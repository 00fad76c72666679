"""One sweep job in its own process: `python -m hydra_plugins.qaexp_launcher.job PAYLOAD RESULT`.

PAYLOAD and RESULT are open file descriptors of unnamed temporary files (see jobqueue.py). The
launcher writes PAYLOAD (cloudpickle: Hydra's context and global state, the job's composed
config, the task function); this runs the job through Hydra's own `run_job` (output folder,
.hydra/ files, job logging, callbacks, as the basic launcher does in-process) and writes the
JobReturn to RESULT. A job stopped by a signal exits with the task's own code (143 after
SIGTERM) and writes no RESULT; the launcher then reports it.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from typing import Any

log = logging.getLogger("qaexp.parallel")


def task_reference(task_function: Callable) -> tuple:
    """How a job process finds the task function: by import path when it has one (under
    `python -m qaexp` the function lives in `__main__`, importable as `qaexp.__main__`),
    else the function itself, pickled by value."""
    module = task_function.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is None:
            return ("value", task_function)
        module = spec.name
    return ("import", module, task_function.__qualname__)


def load_task(reference: tuple) -> Callable:
    if reference[0] == "value":
        return reference[1]
    _, module, qualname = reference
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return inspect.unwrap(found)  # the function under @hydra.main, not its command-line wrapper


def limit_threads() -> None:
    """torch's own thread pools follow the slot's OMP_NUM_THREADS (set before torch starts
    any pool; interop threads too, which OMP_NUM_THREADS does not cover)."""
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads is None:
        return
    import torch

    torch.set_num_threads(int(threads))
    with contextlib.suppress(RuntimeError):  # already set by an earlier parallel region
        torch.set_num_interop_threads(int(threads))


def with_device_log(task_function: Callable) -> Callable:
    """The task, preceded by a log line (in the job's log) naming the job's devices."""
    from hydra_plugins.qaexp_launcher.slots import JOB_DEVICES_ENV

    def task(cfg: Any) -> Any:
        log.info("Parallel launcher: this job runs on %s", os.environ.get(JOB_DEVICES_ENV))
        return task_function(cfg)

    return task


def portable_return(ret: Any) -> Any:
    """The JobReturn with an exception that unpickles in the launcher (a job's exception
    class may not pickle: then a RuntimeError carrying its text)."""
    from hydra.core.utils import JobStatus

    if ret.status == JobStatus.FAILED:
        error = ret._return_value
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:
            ret.return_value = RuntimeError(f"{type(error).__name__}: {error}")
    return ret


def log_traceback(ret: Any) -> None:
    """A failed job's traceback goes into its log (the launcher only sees the exception);
    a QAExpError is one paragraph the task has logged already."""
    from hydra.core.utils import JobStatus

    from qaexp.errors import QAExpError

    error = ret._return_value
    if ret.status == JobStatus.FAILED and not isinstance(error, QAExpError):
        log.error("".join(traceback.format_exception(type(error), error, error.__traceback__)))


def read_fd(fd: int) -> bytes:
    """All of file descriptor `fd` (shared with the launcher, so its offset is the end)."""
    with os.fdopen(fd, "rb") as handle:
        handle.seek(0)
        return handle.read()


def write_fd(fd: int, data: bytes) -> None:
    """Write `data` at the start of file descriptor `fd` (the launcher reads it from there
    once this process has exited; a result cut short by a kill does not unpickle: none)."""
    with os.fdopen(fd, "wb") as handle:
        handle.seek(0)
        handle.write(data)


def main(payload_fd: int | str, result_fd: int | str) -> int:
    import cloudpickle
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobStatus, run_job, setup_globals

    payload = pickle.loads(read_fd(int(payload_fd)))
    Singleton.set_state(payload["singletons"])
    setup_globals()
    limit_threads()
    ret = run_job(
        hydra_context=payload["hydra_context"],
        task_function=with_device_log(load_task(payload["task"])),
        config=payload["config"],
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    log_traceback(ret)
    write_fd(int(result_fd), cloudpickle.dumps(portable_return(ret)))
    return 0 if ret.status == JobStatus.COMPLETED else 1


if __name__ == "__main__":
    from hydra_plugins.qaexp_launcher.jobqueue import LAUNCHER_PID_ENV, die_with_launcher

    if LAUNCHER_PID_ENV in os.environ:
        die_with_launcher(int(os.environ[LAUNCHER_PID_ENV]))
    sys.exit(main(*sys.argv[1:]))
