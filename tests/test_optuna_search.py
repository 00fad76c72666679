"""hparams_search=optuna on qaexp's own sweeper: the search space in Hydra's override syntax,
the job's per-epoch report to its trial, and a real search that prunes, is stopped and resumes
from its SQLite storage without repeating a finished trial."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hydra_plugins.qaexp_sweeper.space import override_value, search_space
from qaexp.errors import QAExpError
from qaexp.tracking.trial import (
    PRUNED_ATTR,
    PRUNER_ATTR,
    STORAGE_ENV,
    STUDY_ENV,
    TRIAL_ENV,
    TrialReporter,
    open_storage,
)
from tests.conftest import SMALL_RUN, read_jsonl, run_cli, run_qaexp

# --- the search space -------------------------------------------------------------------


def test_space_reads_the_documented_syntax():
    space = search_space(
        {
            "optimizer.lr": "tag(log, interval(1e-5, 2e-4))",
            "trainer.epochs": "choice(1, 2, 3)",
            "stride": "64,128",
            "trainer.train_batch_size": "range(8, 33, 8)",
            "optimizer.warmup_ratio": "range(0.0, 0.3, 0.1)",
        },
        [],
    )
    dists = space.distributions
    assert dists["optimizer.lr"] == FloatDistribution(1e-5, 2e-4, log=True)
    assert dists["trainer.epochs"] == CategoricalDistribution([1, 2, 3])
    assert dists["stride"] == CategoricalDistribution([64, 128])
    # range() as Hydra's basic sweeper runs it: stop excluded
    assert dists["trainer.train_batch_size"] == IntDistribution(8, 32, step=8)
    warmup = dists["optimizer.warmup_ratio"]
    assert (warmup.low, warmup.high, warmup.step) == (0.0, pytest.approx(0.2), 0.1)


def test_command_line_sweeps_replace_and_plain_values_fix():
    space = search_space(
        {"optimizer.lr": "interval(1e-5, 2e-4)", "stride": "choice(64, 128)"},
        ["stride=32,48,64", "optimizer.lr=3e-5", "hparams_search=optuna", "max_length=96,128"],
    )
    assert space.distributions == {
        "stride": CategoricalDistribution([32, 48, 64]),
        "max_length": CategoricalDistribution([96, 128]),
    }
    assert space.fixed == ["optimizer.lr=3e-5", "hparams_search=optuna"]
    assert space.overrides({"stride": 48, "max_length": 96}) == [
        "optimizer.lr=3e-5",
        "hparams_search=optuna",
        "stride=48",
        "max_length=96",
    ]


@pytest.mark.parametrize(
    "bad", ["stride=tag(log, choice(64, 128))", "stride=range(64, 64)", "x=glob(*)"]
)
def test_unusable_space_names_the_override(bad):
    with pytest.raises(QAExpError, match=bad.split("=")[0]):
        search_space({}, [bad])


@pytest.mark.parametrize(
    "value",
    [3e-05, 128, True, None, "bert-base-cased", "a b", "it's", "x\\'y", "sqlite:////a/b c.db"],
)
def test_override_values_parse_back_to_the_value(value):
    (parsed,) = OverridesParser.create().parse_overrides([f"key={override_value(value)}"])
    assert parsed.value() == value


# --- the job's report to its trial ------------------------------------------------------


def trial_in(tmp_path: Path, pruner: dict | None) -> tuple[str, int]:
    """A study in a SQLite file with one running trial that carries `pruner`."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url), direction="maximize")
    trial = study.ask()
    trial.set_user_attr(PRUNER_ATTR, pruner)
    return url, trial._trial_id


def test_reporter_reports_each_epoch_and_marks_a_pruned_trial(tmp_path, monkeypatch):
    url, trial_id = trial_in(
        tmp_path, {"_target_": "optuna.pruners.ThresholdPruner", "lower": 50.0}
    )
    for name, value in ((STORAGE_ENV, url), (STUDY_ENV, "s"), (TRIAL_ENV, str(trial_id))):
        monkeypatch.setenv(name, value)
    reporter = TrialReporter.from_env()
    assert reporter.report(1, 60.0) is False
    assert reporter.report(2, 40.0) is True  # below the threshold
    frozen = open_storage(url).get_trial(trial_id)
    assert frozen.intermediate_values == {1: 60.0, 2: 40.0}
    assert frozen.user_attrs[PRUNED_ATTR] == 2


def test_reporter_never_prunes_the_last_epoch(tmp_path):
    url, trial_id = trial_in(tmp_path, {"_target_": "optuna.pruners.ThresholdPruner", "lower": 101})
    reporter = TrialReporter(url, "s", trial_id)
    assert reporter.report(3, 10.0, last=True) is False
    assert PRUNED_ATTR not in open_storage(url).get_trial_user_attrs(trial_id)


def test_no_reporter_outside_a_search(monkeypatch):
    for name in (STORAGE_ENV, STUDY_ENV, TRIAL_ENV):
        monkeypatch.delenv(name, raising=False)
    assert TrialReporter.from_env() is None


def test_a_trial_left_running_by_a_killed_process_is_failed_and_queued_again(tmp_path, monkeypatch):
    """A RUNNING trial whose heartbeat stopped (its sweeper was killed) is failed when the
    search opens the study again, and its point is queued for the next trial."""
    import time

    from hydra_plugins.qaexp_sweeper import optuna_sweeper

    monkeypatch.setattr(optuna_sweeper, "HEARTBEAT_S", 1)  # stale after 4 s
    sweeper = optuna_sweeper.OptunaSweeper(
        direction="maximize",
        study_name="s",
        storage=None,
        sampler={"_target_": "optuna.samplers.RandomSampler", "seed": 0},
        pruner=None,
    )
    sweeper.sweep_dir = tmp_path
    study = sweeper.open_study()
    orphan = optuna_sweeper.ask(study, search_space({}, ["x=interval(0,1)"]))
    study._storage.record_heartbeat(orphan._trial_id)
    time.sleep(5)
    reopened = sweeper.open_study()
    states = {t.number: t.state.name for t in reopened.trials}
    assert states == {0: "FAIL", 1: "WAITING"}
    assert reopened.trials[1].params == orphan.params  # the same point, run again
    assert optuna_sweeper.ask(reopened, search_space({}, ["x=interval(0,1)"])).number == 1


@pytest.mark.parametrize(
    ("owner", "failed"),
    [
        ("gone", True),  # this host, the process is gone: failed at once
        ("reused", True),  # this host, the pid now belongs to another process
        ("alive", False),  # this host, alive (another sweeper sharing the study)
        ("elsewhere", False),  # another host: only its heartbeat can tell
    ],
)
def test_a_trial_whose_sweeper_is_gone_is_failed_at_once(tmp_path, owner, failed):
    """Within the heartbeat grace, a RUNNING trial is failed and its point queued again when
    its owner process is known gone; its killed run folder is marked interrupted."""
    import subprocess
    import sys

    from hydra_plugins.qaexp_sweeper import optuna_sweeper

    sweeper = optuna_sweeper.OptunaSweeper(
        direction="maximize", study_name="s", storage=None, sampler=None, pruner=None
    )
    sweeper.sweep_dir = tmp_path
    study = sweeper.open_study()
    trial = optuna_sweeper.ask(study, search_space({}, ["x=interval(0,1)"]))
    study._storage.record_heartbeat(trial._trial_id)
    recorded = optuna_sweeper.process_owner()
    if owner in ("gone", "elsewhere"):
        exited = subprocess.Popen([sys.executable, "-c", "pass"])
        exited.wait()
        recorded["pid"] = exited.pid
    if owner == "reused":
        recorded["started"] = "1"
    if owner == "elsewhere":
        recorded["host"] = "another-host"
    study._storage.set_trial_system_attr(trial._trial_id, optuna_sweeper.OWNER_ATTR, recorded)
    (tmp_path / "0").mkdir()  # the killed job's run folder, without a summary
    reopened = sweeper.open_study()
    states = {t.number: t.state.name for t in reopened.trials}
    if not failed:
        assert states == {0: "RUNNING"}
        assert not (tmp_path / "0" / "summary.json").exists()
        return
    assert states == {0: "FAIL", 1: "WAITING"}
    assert reopened.trials[1].params == trial.params
    summary = json.loads((tmp_path / "0" / "summary.json").read_text())
    assert summary["status"] == "interrupted"


def test_a_trial_stopped_by_a_signal_is_failed_and_its_point_queued(tmp_path):
    from hydra_plugins.qaexp_sweeper.optuna_sweeper import tell

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    trial = study.ask({"x": FloatDistribution(0.0, 1.0)})
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    assert tell(study, trial, tmp_path / "0", None) is False
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]
    again = study.ask({"x": FloatDistribution(0.0, 1.0)})
    assert (again.number, again.params) == (1, trial.params)  # the same point, run again


# --- a real search: prune, stop, resume -------------------------------------------------

# Every trial searches optimizer.lr only; a threshold no F1 reaches prunes every trial after
# its first epoch unless that epoch is its last (1-epoch trials complete, 2-epoch ones are
# pruned), so the outcome of each trial is known in advance.
SEARCH = [
    *SMALL_RUN,
    "trainer.save_checkpoint=none",
    "hparams_search=optuna",
    "max_length=128",
    "stride=32",
    "trainer.train_batch_size=16",
    "hydra/sweeper/pruner=threshold",
    "hydra.sweeper.pruner.lower=101",
    "hydra.sweep.dir=search",
]


def summaries(search: Path) -> dict[str, dict]:
    return {
        d.name: json.loads((d / "summary.json").read_text())
        for d in sorted(search.iterdir())
        if d.is_dir() and d.name.isdigit()
    }


@pytest.fixture(scope="module")
def resumed_search(tmp_path_factory):
    """2 one-epoch trials; the same command again with n_trials=4 and 2 epochs per trial."""
    cwd = tmp_path_factory.mktemp("optuna")
    first = run_cli([*SEARCH, "hydra.sweeper.n_trials=2", "trainer.epochs=1"], cwd=cwd)
    assert first.returncode == 0, first.stderr[-3000:]
    search = cwd / "search"
    before = {name: (search / name / "summary.json").stat().st_mtime_ns for name in ("0", "1")}
    second = run_cli([*SEARCH, "hydra.sweeper.n_trials=4", "trainer.epochs=2"], cwd=cwd)
    assert second.returncode == 0, second.stderr[-3000:]
    return search, before


@pytest.mark.slow
def test_search_resumes_without_repeating_finished_trials(resumed_search):
    search, before = resumed_search
    runs = summaries(search)
    assert list(runs) == ["0", "1", "2", "3"]  # one folder per trial number
    for name, mtime in before.items():  # the first command's trials ran once
        assert (search / name / "summary.json").stat().st_mtime_ns == mtime
    study = optuna.load_study(study_name="qaexp", storage=f"sqlite:///{search / 'optuna.db'}")
    states = [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    assert len({t.params["optimizer.lr"] for t in study.trials}) == 4


@pytest.mark.slow
def test_pruned_trials_stop_early_and_are_marked_pruned(resumed_search):
    search, _ = resumed_search
    runs = summaries(search)
    assert [runs[n]["status"] for n in runs] == ["completed", "completed", "pruned", "pruned"]
    for name in ("2", "3"):  # 2 epochs asked, stopped after the first
        assert runs[name]["config"]["trainer"]["epochs"] == 2
        assert [e["epoch"] for e in read_jsonl(search / name / "metrics.jsonl")] == [1]
        assert "pruned after epoch 1" in (search / name / "qaexp.log").read_text()
    with open(search / "comparison.csv", newline="") as fh:
        rows = {r["run"]: r["status"] for r in csv.DictReader(fh)}
    assert rows == {"0": "completed", "1": "completed", "2": "pruned", "3": "pruned"}


@pytest.mark.slow
def test_best_params_are_the_best_complete_trial(resumed_search):
    search, _ = resumed_search
    runs = summaries(search)
    results = yaml.safe_load((search / "optimization_results.yaml").read_text())
    best = max(("0", "1"), key=lambda n: runs[n]["best_f1"])
    assert results["best_value"] == pytest.approx(runs[best]["best_f1"])
    assert results["best_trial"] == int(best)
    assert results["best_params"] == {"optimizer.lr": runs[best]["config"]["optimizer"]["lr"]}
    assert results["trials"] == {"complete": 2, "pruned": 2}


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.parametrize("devices", ["[0,1]", "[]"])
def test_parallel_launcher_runs_trials_at_once_and_they_report_from_their_processes(
    tmp_path, devices
):
    """Two trials handed to hydra/launcher=parallel together: each job, in its own process
    (a fresh interpreter on the fake GPU slots, forked from the launcher on CPU slots),
    reports to the study's SQLite file and is pruned after its first of 2 epochs."""
    parallel = [
        "hydra/launcher=parallel",
        "hydra.launcher.jobs=2",
        f"hydra.launcher.devices={devices}",
        "hydra.launcher.cpus_per_job=1",
    ]
    args = [*SEARCH, *parallel, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2"]
    # CPU-slot jobs are forks of the launcher: run it in its own process, not in pytest's
    run = run_cli if devices != "[]" else run_qaexp
    result = run([*args, "trainer.epochs=2"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    search = tmp_path / "search"
    runs = summaries(search)
    assert [r["status"] for r in runs.values()] == ["pruned", "pruned"]
    assert {r["job_devices"]["slot"] for r in runs.values()} == {0, 1}  # both at once
    study = optuna.load_study(study_name="qaexp", storage=f"sqlite:///{search / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    assert all(t.intermediate_values.keys() == {1} for t in study.trials)
