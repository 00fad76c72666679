"""`hparams_search=optuna`: an Optuna study driving ordinary qaexp jobs through Hydra's launcher.

Why qaexp has its own sweeper: the released hydra-optuna-sweeper (1.3.0) pins optuna<3,
whose SQL storage fails on SQLAlchemy 2, so its study lives in memory and a stopped search
starts over; and it evaluates each job as a whole, so no trial can be pruned. This plugin
uses optuna's ask-and-tell API directly:

- the study lives in `storage` (default: `optuna.db`, SQLite, in the sweep folder); running
  the same command with the same `hydra.sweep.dir` continues it, and several processes can
  share it: `n_trials` counts the study's finished (complete or pruned) and running trials;
- each batch of `n_jobs` trials goes to the configured launcher (hydra/launcher=parallel runs
  them at once), each trial in the sweep folder's subfolder named by its trial number;
- a trial's job reports its F1 after every epoch and stops when `pruner` says so
  (qaexp/tracking/trial.py), and the trial is told PRUNED;
- after every batch the study's best trial goes to `optimization_results.yaml`.

A trial left RUNNING by a sweeper that was killed (its jobs die with it) is failed when the
search starts again, and its point queued as a new trial (once), so a resume started at once
runs it again. Each trial records the sweeper process that runs it (`qaexp_owner`: host, pid
and, on Linux, the process's start time, so a reused pid is not taken for it): on the same
host a trial whose owner is gone is failed at once. For an owner on another host (a study
shared through a database server) nothing tells whether it is alive but its heartbeat, which
the sweeper records every HEARTBEAT_S seconds: such a trial is failed once its heartbeat is
4 x HEARTBEAT_S old, and a resume started before that does not run its point. The killed
trial's run folder is marked interrupted (summary.json), so the sweep does not count it as a
failed job.
"""

import copy
import json
import logging
import os
import socket
import sys
import threading
import warnings
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.qaexp_sweeper.space import SearchSpace, override_value, search_space
from qaexp.tracking.lock import process_exists
from qaexp.tracking.rundir import SUMMARY_FILE, write_json_atomic, write_text_atomic
from qaexp.tracking.trial import PRUNED_ATTR, PRUNER_ATTR, STORAGE_ENV, STUDY_ENV, TRIAL_ENV

log = logging.getLogger(__name__)

STORAGE_FILE = "optuna.db"
RESULTS_FILE = "optimization_results.yaml"
HEARTBEAT_S = 30  # a RUNNING trial without a heartbeat for 4x this is stale
OWNER_ATTR = "qaexp_owner"  # trial system attribute: the sweeper process running the trial


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.qaexp_sweeper.optuna_sweeper.OptunaSweeper"
    direction: str = "maximize"
    study_name: str = "qaexp"
    storage: str | None = None  # an optuna storage URL; null: SQLite in the sweep folder
    n_trials: int = 20  # finished (complete or pruned) trials the study should reach
    n_jobs: int = 1  # trials handed to the launcher at once
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler"})
    pruner: Any = None  # a `_target_` config of an optuna pruner; null: never prune
    params: dict[str, str] | None = None


ConfigStore.instance().store(
    group="hydra/sweeper", name="qaexp_optuna", node=OptunaSweeperConf, provider="qaexp"
)


def plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


class Heartbeat:
    """Records a heartbeat for the running trials every HEARTBEAT_S seconds (a thread)."""

    def __init__(self, storage: Any, trial_ids: list[int]):
        self.storage, self.trial_ids = storage, trial_ids
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name="optuna-heartbeat")

    def _beat(self) -> None:
        while True:
            for trial_id in self.trial_ids:
                self.storage.record_heartbeat(trial_id)
            if self.stopped.wait(HEARTBEAT_S):
                return

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()


class OptunaSweeper(Sweeper):
    def __init__(self, **params: Any) -> None:
        self.params = {key: plain(value) for key, value in params.items()}
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.sweep_dir = Path()

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        # Hydra instantiated the sampler and the pruner with the sweeper: keep their configs
        # (the jobs build their own pruner; a continued study reseeds the sampler).
        self.params["pruner"] = plain(config.hydra.sweeper.pruner)
        self.params["sampler"] = plain(config.hydra.sweeper.sampler)

    def storage_url(self) -> str:
        return self.params["storage"] or f"sqlite:///{self.sweep_dir / STORAGE_FILE}"

    def open_study(self) -> Any:
        """The study, created or (same storage and study_name) continued; trials that a
        killed process left RUNNING are failed and their points queued again."""
        import optuna
        from hydra.utils import instantiate

        from qaexp.tracking.trial import open_storage

        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        study = optuna.create_study(
            study_name=self.params["study_name"],
            storage=open_storage(self.storage_url(), heartbeat_s=HEARTBEAT_S),
            direction=self.params["direction"],
            load_if_exists=True,
        )
        self.fail_stale_trials(study)
        sampler = dict(self.params["sampler"] or {})
        if sampler.get("seed") is not None:
            # The same seed again would sample the first points again: a continued study
            # offsets it by its trial count (still reproducible for a given history).
            sampler["seed"] += len(study.trials)
        if sampler:
            study.sampler = instantiate(sampler)
        return study

    def fail_stale_trials(self, study: Any) -> None:
        """Fail the RUNNING trials whose sweeper is gone (on this host: at once; elsewhere:
        after the heartbeat grace, as optuna.storages.fail_stale_trials would) and queue each
        one's point again, once."""
        import optuna
        from optuna.trial import TrialState

        storage = study._storage
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            stale = set(storage._get_stale_trial_ids(study._study_id))  # what Optuna would fail
            retry = storage.get_heartbeat_stale_trial_callback()
            for trial in running:
                if trial._trial_id not in stale and not owner_gone(
                    trial.system_attrs.get(OWNER_ATTR)
                ):
                    continue
                with suppress(optuna.exceptions.UpdateFinishedTrialError):  # another process
                    if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                        before = len(study.get_trials(deepcopy=False))
                        retry(study, copy.deepcopy(storage.get_trial(trial._trial_id)))
                        self.mark_killed(trial, len(study.get_trials(deepcopy=False)) > before)

    def mark_killed(self, trial: Any, queued: bool) -> None:
        """Say so, and mark the run folder of a trial whose sweeper was killed interrupted,
        not failed (the search runs its point again as a new trial, once)."""
        again = "queued again as a new trial" if queued else "not queued again (retried once)"
        log.warning(
            "Optuna trial %d was left running by a sweeper that is gone: failed, its point %s",
            trial.number,
            again,
        )
        run_dir = self.run_dir(trial)
        summary_path = run_dir / SUMMARY_FILE
        try:
            summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        except (OSError, ValueError):
            summary = {}
        if run_dir.is_dir() and summary.get("status") not in ("completed", "pruned"):
            note = f"killed with its sweeper; its point was {again}"
            write_json_atomic(summary_path, {**summary, "status": "interrupted", "error": note})

    def sweep(self, arguments: list[str]) -> None:
        """Run trials until the study has n_trials finished or running ones; write results."""
        space = search_space(self.params["params"], arguments)
        study = self.open_study()
        log.info(
            "Optuna study %r in %s: %d trials wanted, %d finished; searching %s",
            study.study_name,
            self.storage_url(),
            self.params["n_trials"],
            len(finished(study)),
            ", ".join(space.distributions) or "nothing",
        )
        failed: list[str] = []
        try:
            while (count := self.trials_to_ask(study)) > 0:
                batch = [ask(study, space) for _ in range(count)]
                failed += self.run_batch(study, space, batch)
                if not finished(study):
                    break  # every trial failed so far: more would fail the same way
        finally:
            self.write_results(study)
        if failed:  # a sweep with a failed job exits non-zero, after the others ran
            log.error(
                "%d trial(s) of the Optuna search failed: %s; see their qaexp.log. The others "
                "are in the study and in %s.",
                len(failed),
                ", ".join(failed),
                self.sweep_dir / RESULTS_FILE,
            )
            sys.exit(1)

    def trials_to_ask(self, study: Any) -> int:
        from optuna.trial import TrialState

        taken = len(finished(study)) + len(study.get_trials(False, states=(TrialState.RUNNING,)))
        return max(0, min(self.params["n_jobs"], self.params["n_trials"] - taken))

    def run_batch(self, study: Any, space: SearchSpace, batch: list) -> list[str]:
        """Launch one batch of trials and tell the study how each ended; returns the run
        folders of the trials that failed. On a stop signal the batch is told first."""
        for trial in batch:
            trial.set_user_attr(PRUNER_ATTR, self.params["pruner"])
        overrides = [self.trial_overrides(space, trial) for trial in batch]
        returns: list[JobReturn] = []
        try:
            with Heartbeat(study._storage, [t._trial_id for t in batch]):
                returns = list(self.launcher.launch(overrides, initial_job_idx=batch[0].number))
        finally:
            failed = [
                str(self.run_dir(trial))
                for trial, ret in zip_returns(batch, returns)
                if not tell(study, trial, self.run_dir(trial), ret)
            ]
        return failed

    def run_dir(self, trial: Any) -> Path:
        return self.sweep_dir / str(trial.number)

    def trial_overrides(self, space: SearchSpace, trial: Any) -> list[str]:
        """The trial's job: its sampled values, its own run folder (the trial number, unique
        among processes sharing the study) and where to report (the job's environment)."""
        return [
            *space.overrides(trial.params),
            f"hydra.sweep.subdir={trial.number}",
            f"++hydra.job.env_set.{STORAGE_ENV}={override_value(self.storage_url())}",
            f"++hydra.job.env_set.{STUDY_ENV}={override_value(self.params['study_name'])}",
            f"++hydra.job.env_set.{TRIAL_ENV}={trial._trial_id}",
        ]

    def write_results(self, study: Any) -> None:
        """The study's best trial so far, and its trial counts, in the sweep folder."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
        results: dict[str, Any] = {
            "name": study.study_name,
            "storage": self.storage_url(),
            "direction": self.params["direction"],
            "trials": {k: v for k, v in counts.items() if v},
            "best_params": None,
            "best_value": None,
        }
        if any(t.state == TrialState.COMPLETE for t in trials):
            best = study.best_trial
            results.update(
                best_params=best.params,
                best_value=best.value,
                best_trial=best.number,
                best_run_dir=str(self.run_dir(best)),
            )
        write_text_atomic(self.sweep_dir / RESULTS_FILE, yaml.safe_dump(results, sort_keys=False))
        log.info(
            "Optuna results: %s", json.dumps({k: results[k] for k in ("best_params", "best_value")})
        )


def process_owner() -> dict:
    """This process, as a trial's owner."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": started(os.getpid())}


def started(pid: int) -> str | None:
    """When process `pid` started (Linux: clock ticks after boot, field 22 of
    /proc/PID/stat); "exited" for a process that exited but was not yet reaped (a zombie);
    None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return "exited" if fields[0] in ("Z", "X") else fields[19]


def owner_gone(owner: dict | None) -> bool:
    """Whether a trial's owner is known to be gone: a process of this host whose pid no
    longer exists, has exited, or now belongs to a process started at another time. An owner
    on another host (or none recorded) is never known gone: the heartbeat decides."""
    if not owner or owner.get("host") != socket.gethostname():
        return False
    pid = int(owner["pid"])
    if not process_exists(pid):
        return True
    now, then = started(pid), owner.get("started")
    return now == "exited" or (None not in (now, then) and now != then)


def ask(study: Any, space: SearchSpace) -> Any:
    """A new trial (a queued one first: the point of a trial that a killed process left),
    owned by this process."""
    with warnings.catch_warnings():  # the sweeper keeps the heartbeat itself (Heartbeat)
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        trial = study.ask(space.distributions)
    study._storage.set_trial_system_attr(trial._trial_id, OWNER_ATTR, process_owner())
    return trial


def finished(study: Any) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def zip_returns(batch: list, returns: list[JobReturn]) -> list[tuple[Any, JobReturn | None]]:
    """Each trial with its job's return (None when the launcher stopped before returning)."""
    return [(trial, returns[i] if i < len(returns) else None) for i, trial in enumerate(batch)]


def tell(study: Any, trial: Any, run_dir: Path, ret: JobReturn | None) -> bool:
    """Tell the study how the trial's job ended: pruned (the job marked it), complete (its
    return value; the run's summary.json when the launcher was stopped), or failed (a job
    stopped by a signal also queues its point again, for the continued search)."""
    from optuna.trial import TrialState

    if study._storage.get_trial_user_attrs(trial._trial_id).get(PRUNED_ATTR) is not None:
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        return True
    value, status = None, None
    if ret is not None and ret.status == JobStatus.COMPLETED:
        value = ret.return_value
    elif ret is None and (run_dir / SUMMARY_FILE).is_file():
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        status = summary.get("status")
        value = summary.get("best_f1") if status == "completed" else None
    if value is None:
        error = ret._return_value if ret is not None else "stopped before it finished"
        log.error("Optuna trial %d failed (%s): %s", trial.number, run_dir, error)
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        if status == "interrupted":  # stopped by a signal: the continued search runs it again
            study.enqueue_trial(trial.params, skip_if_exists=False)
        return False
    study.tell(trial, float(value), skip_if_finished=True)
    return True
