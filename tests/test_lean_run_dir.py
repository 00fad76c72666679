"""Lean run directories: a completed run drops its resume state unless trainer.keep_state=true,
trainer.save_checkpoint keeps the best, the last or no weights, and an evaluate-only run keeps
no second copy of the weights it loaded."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from tests.conftest import SINGLE_RUN, read_jsonl, run_cli

# Two epochs at a learning rate where they differ, so best and last can be told apart.
TWO_EPOCHS = [*SINGLE_RUN, "trainer.epochs=2", "optimizer.lr=1e-3"]


def folder_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(tmp_path, *overrides: str):
    result = run_cli([*TWO_EPOCHS, *overrides, "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return tmp_path / "run"


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    return run(tmp_path_factory.mktemp("default"))


def test_completed_run_drops_state_and_keeps_the_best_checkpoint(default_run):
    names = {p.name for p in default_run.iterdir()}
    assert "state" not in names and "checkpoint" in names
    assert not [n for n in names if n.startswith(".") and n != ".hydra"]  # no staged folders
    # Only the checkpoint holds weights: the folder is the checkpoint plus a few small files.
    assert folder_bytes(default_run) - folder_bytes(default_run / "checkpoint") < 1_000_000


def test_keep_state_keeps_the_last_epochs_state(tmp_path, default_run):
    kept = run(tmp_path, "trainer.keep_state=true")
    progress = json.loads((kept / "state" / "progress.json").read_text())
    assert progress["epoch"] == 3 and len(progress["history"]) == 2  # both epochs done
    assert (kept / "state" / "optimizer.bin").is_file()
    assert folder_bytes(kept) > folder_bytes(default_run) + folder_bytes(kept / "checkpoint")


@pytest.mark.parametrize("policy", ["last", "none"])
def test_save_checkpoint_policy(tmp_path, default_run, policy):
    run_dir = run(tmp_path, f"trainer.save_checkpoint={policy}")
    assert read_jsonl(run_dir / "metrics.jsonl") != []
    if policy == "none":
        assert not (run_dir / "checkpoint").exists()
        return
    records = read_jsonl(run_dir / "metrics.jsonl")
    best = max(records, key=lambda r: r["f1"])["epoch"]
    last = load_file(run_dir / "checkpoint" / "model.safetensors")
    kept_best = load_file(default_run / "checkpoint" / "model.safetensors")
    same = all((last[k] == kept_best[k]).all() for k in last)
    assert same == (best == 2)  # last == best only when the last epoch was the best
    assert "epoch 2, the last" in (run_dir / "checkpoint" / "README.md").read_text()


def test_save_checkpoint_rejects_other_values(tmp_path):
    result = run_cli([*SINGLE_RUN, "trainer.save_checkpoint=sometimes"], cwd=tmp_path)
    assert result.returncode == 2
    assert "best, last, none" in result.stderr
