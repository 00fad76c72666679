"""The job's side of an Optuna search: report the F1 after each epoch to the study's trial,
and stop the run when the study's pruner says the trial is not promising.

`hparams_search=optuna` (hydra_plugins/qaexp_sweeper) asks the study for a trial and starts an
ordinary job for it with three environment variables: the study's storage URL and name, and
the trial's id. The job opens the same storage (a SQLite file in the sweep folder by default, so it works
from a subprocess of the parallel launcher as well as in the sweeper's own process), reports
`trial.report(f1, epoch)` and asks `trial.should_prune()` with the pruner the sweeper stored
in the trial. A pruned trial is marked in the storage (user attribute `pruned_at_epoch`), so
the sweeper records it as PRUNED; its run ends with status "pruned" in summary.json.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)

STORAGE_ENV = "QAEXP_OPTUNA_STORAGE"
STUDY_ENV = "QAEXP_OPTUNA_STUDY"
TRIAL_ENV = "QAEXP_OPTUNA_TRIAL_ID"
PRUNER_ATTR = "pruner"  # trial user attribute: the pruner's `_target_` config
PRUNED_ATTR = "pruned_at_epoch"  # trial user attribute set when the job stops early
SQLITE_TIMEOUT_S = 60  # several processes write one SQLite file: wait for its lock


class TrialPruned(Exception):
    """The study's pruner stopped this trial after an epoch (not an error: status 'pruned')."""


def open_storage(url: str, heartbeat_s: int | None = None) -> Any:
    """Optuna's storage for `url`; SQLite waits up to a minute for another process's lock
    instead of failing at once (the jobs of a parallel search share the file).

    With `heartbeat_s` (the sweeper's side), a RUNNING trial whose heartbeat is older than
    4 x heartbeat_s is stale: `fail_stale_trials` fails it and queues its point again.
    """
    import warnings

    import optuna

    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    if heartbeat_s is None:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=heartbeat_s,
            grace_period=4 * heartbeat_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=1
            ),
        )


class TrialReporter:
    """Reports a job's per-epoch F1 to its Optuna trial (main process only)."""

    def __init__(self, storage_url: str, study_name: str, trial_id: int):
        import optuna
        from hydra.utils import instantiate

        storage = open_storage(storage_url)
        pruner_cfg = storage.get_trial_user_attrs(trial_id).get(PRUNER_ATTR)
        study = optuna.load_study(
            study_name=study_name,
            storage=storage,
            pruner=instantiate(pruner_cfg) if pruner_cfg else optuna.pruners.NopPruner(),
            sampler=optuna.samplers.RandomSampler(),  # the job samples nothing
        )
        self.trial = optuna.trial.Trial(study, trial_id)

    @classmethod
    def from_env(cls) -> TrialReporter | None:
        """The reporter of the trial this job runs for; None outside an Optuna search."""
        if not in_search():
            return None
        return cls(os.environ[STORAGE_ENV], os.environ[STUDY_ENV], int(os.environ[TRIAL_ENV]))

    def report(self, epoch: int, f1: float, last: bool = False) -> bool:
        """Report `f1` at step `epoch`; True when the pruner stops the trial here (never
        after the `last` epoch: that run is complete)."""
        self.trial.report(f1, step=epoch)
        if last or not self.trial.should_prune():
            return False
        self.trial.set_user_attr(PRUNED_ATTR, epoch)
        log.info(
            "Optuna trial %d pruned after epoch %d (F1 %.2f): the pruner found it unpromising",
            self.trial.number,
            epoch,
            f1,
        )
        return True


def in_search() -> bool:
    """Whether this process runs a trial of an Optuna search."""
    return all(os.environ.get(name) for name in (STORAGE_ENV, STUDY_ENV, TRIAL_ENV))
