"""The documented commands run from a user's own experiment folder, on the package as the
README installs it (`pip install -e ".[dev]"`), with nothing pointing Python at the clone.

Every other test puts the clone on PYTHONPATH; these take it away, so an install that hides a
part of qaexp (Hydra's plugins under setuptools' editable import hook) fails here as it would
for a user. They run where the interpreter's installed qaexp is this checkout (CI, a developer's
clone) and skip elsewhere (a git worktree sharing another clone's environment)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SMALL_RUN, STARTED_SUBPROCESS

pytestmark = pytest.mark.processes  # starts processes: the leak guard scans the host


def user_env() -> dict[str, str]:
    """The environment of a user's shell: no PYTHONPATH, no clone on sys.path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "WANDB_API_KEY")}
    return {**env, "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def run_as_user(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    STARTED_SUBPROCESS[0] = True
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def user_folder(tmp_path_factory) -> Path:
    """An empty experiment folder outside the clone, where `import qaexp` finds this checkout
    through the installed package only."""
    folder = tmp_path_factory.mktemp("experiment")
    assert not folder.resolve().is_relative_to(REPO)
    probe = run_as_user(["-c", "import qaexp; print(qaexp.__file__)"], folder, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"qaexp is not installed in this interpreter: {probe.stderr[-300:]}")
    installed = Path(probe.stdout.strip()).resolve()
    if not installed.is_relative_to(REPO):
        pytest.skip(f"the installed qaexp is {installed}, not this checkout {REPO}")
    return folder


def best_f1s(sweep: Path) -> dict[str, float]:
    return {
        job.name: json.loads((job / "summary.json").read_text())["best_f1"]
        for job in sorted(sweep.iterdir())
        if (job / "summary.json").is_file()
    }


@pytest.mark.parametrize("start_method", ["auto", "spawn"])
def test_parallel_launcher_from_a_user_folder(user_folder, start_method):
    sweep = user_folder / f"parallel-{start_method}"
    done = run_as_user(
        [
            "-m",
            "qaexp",
            "--multirun",
            "hydra/launcher=parallel",
            f"hydra.launcher.start_method={start_method}",
            f"hydra.sweep.dir={sweep.name}",
            *SMALL_RUN,
            "seed=1,2",
        ],
        user_folder,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Could not load" not in done.stderr
    assert sorted(best_f1s(sweep)) == ["0", "1"]
    assert (sweep / "comparison.md").is_file()


def test_optuna_search_from_a_user_folder(user_folder):
    done = run_as_user(
        [
            "-m",
            "qaexp",
            "hparams_search=optuna",
            "hydra.sweeper.n_trials=2",
            "hydra.sweep.dir=search",
            *SMALL_RUN,
            "trainer.save_checkpoint=none",
        ],
        user_folder,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(best_f1s(user_folder / "search")) == ["0", "1"]
    assert (user_folder / "search" / "optimization_results.yaml").is_file()


def test_quickstart_config_from_a_user_folder(user_folder):
    """The README's first command resolves (configs, embedded model) from a user's folder."""
    shown = run_as_user(
        ["-m", "qaexp", "experiment=quickstart", "--cfg", "job", "--resolve"], user_folder, 120
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "source: synthetic" in shown.stdout
