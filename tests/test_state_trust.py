"""Trusting a run folder and its state: one writer per run folder (an OS lock), a saved state
checked against its checksums before anything loads, and a resume on changed data refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import (
    REPO,
    SMALL_RUN,
    TINY_RUN,
    read_jsonl,
    run_cli,
    run_qaexp,
    start_qaexp,
)
from tests.test_resume import comparable

pytestmark = pytest.mark.processes  # starts processes: the leak guard scans the host

LOCK = ".qaexp.lock"


def wait_for(condition, what: str, proc: subprocess.Popen | None = None, timeout: float = 180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def training_started(run_dir: Path) -> bool:
    log = run_dir / "qaexp.log"
    return log.is_file() and "Training " in log.read_text()


# --- one writer per run folder ----------------------------------------------------------------


def test_second_writer_is_refused_and_the_first_finishes_unharmed(tmp_path):
    """A second process for a running run's folder (here a resume) gets one paragraph naming
    the holder's pid and host, exit 2; the first run is not disturbed: it completes with the
    numbers and weights of a run that nobody disturbed."""
    first = start_qaexp([*SMALL_RUN, "hydra.run.dir=run"], tmp_path)
    try:
        wait_for(lambda: training_started(tmp_path / "run"), "the first run to train", first)
        first.send_signal(signal.SIGSTOP)  # hold it mid-run while the second one starts
        second = run_cli([*SMALL_RUN, "hydra.run.dir=run", "trainer.resume=true"], tmp_path)
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=600)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"pid {first.pid} on host {socket.gethostname()}" in second.stderr
    assert "in use by another qaexp process" in second.stderr
    assert "Traceback" not in second.stderr
    assert first.returncode == 0, stderr[-3000:]

    # The reference runs as the first run did, in a process of its own (same threads).
    reference = run_qaexp([*SMALL_RUN, "hydra.run.dir=reference"], tmp_path)
    assert reference.returncode == 0, reference.stderr[-3000:]
    run, ref = tmp_path / "run", tmp_path / "reference"
    assert comparable(read_jsonl(run / "metrics.jsonl")) == comparable(
        read_jsonl(ref / "metrics.jsonl")
    )
    a, b = (load_file(d / "checkpoint" / "model.safetensors") for d in (run, ref))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert not (run / LOCK).exists()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path):
    """A kernel lock dies with its process: after a SIGKILL the lock file is left, naming the
    dead pid, and a resume takes the folder over and completes."""
    first = start_qaexp([*SMALL_RUN, "hydra.run.dir=run"], tmp_path)
    lock = tmp_path / "run" / LOCK
    try:
        wait_for(lambda: training_started(tmp_path / "run"), "the first run to train", first)
        assert json.loads(lock.read_text())["pid"] == first.pid
    finally:
        first.kill()
        first.communicate(timeout=60)
    assert json.loads(lock.read_text())["pid"] == first.pid  # left behind by the dead run
    resumed = run_cli([*SMALL_RUN, "hydra.run.dir=run", "trainer.resume=true"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
    assert not lock.exists()


def test_a_resumed_sweep_job_is_refused_while_its_first_launch_still_runs(tmp_path):
    """The sweep command run again with trainer.resume=true while the job still runs from
    the first launch: the job is refused (the sweep exits 2), its folder is left to the
    running job, which completes."""
    sweep = ["--multirun", *SMALL_RUN, "hydra.sweep.dir=sweep", "seed=1"]
    first = start_qaexp(sweep, tmp_path)
    job = tmp_path / "sweep" / "0"
    try:
        wait_for(lambda: training_started(job), "the sweep job to train", first)
        first.send_signal(signal.SIGSTOP)
        again = run_cli([*sweep, "trainer.resume=true"], tmp_path)
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=600)
    assert again.returncode == 2, again.stderr[-3000:]
    assert f"pid {first.pid} on host {socket.gethostname()}" in again.stderr
    assert first.returncode == 0, stderr[-3000:]
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "completed" and "error" not in summary


HOLD = """
import sys, time
from pathlib import Path
from qaexp.tracking.lock import Role, RunFolderLock
lock = RunFolderLock(Path(sys.argv[1]), Role[sys.argv[2]])
try:
    lock.acquire()
except Exception as err:
    print("refused:", err, flush=True)
    sys.exit(2)
print("held", flush=True)
time.sleep(float(sys.argv[3]))
"""


def hold_lock(folder: Path, role: str, seconds: float = 300) -> subprocess.Popen:
    """A process that takes `folder`'s lock in `role`, says so, and keeps it."""
    return subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder), role, str(seconds)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )


def test_workers_outliving_their_launcher_keep_the_folder(tmp_path):
    """A job hands the training byte to its workers' rank 0 (no deadlock); workers whose job
    was killed still keep a second run out, and the paragraph says so."""
    from qaexp.tracking.lock import Role, RunFolderBusy, RunFolderLock

    job = RunFolderLock(tmp_path, Role.run)
    job.acquire()
    job.hand_training_to_workers()
    rank0 = hold_lock(tmp_path, "training")
    try:
        assert rank0.stdout.readline().strip() == "held"  # takes the byte the job handed over
        os.close(job.fd)  # the job is killed (its lock dies, its file stays); the worker trains
        with pytest.raises(RunFolderBusy) as refused:
            RunFolderLock(tmp_path, Role.run).acquire()
    finally:
        rank0.kill()
        rank0.communicate(timeout=60)
    assert "launching job has ended" in str(refused.value)
    assert f"pid {rank0.pid} on host {socket.gethostname()}" in str(refused.value)
    taken = RunFolderLock(tmp_path, Role.run)
    taken.acquire()  # the worker's lock died with it
    taken.release()


# --- a state verified before it loads -----------------------------------------------------------


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A completed one-epoch run on JSON Lines files, its state kept: (run dir, args)."""
    from qaexp.data.synthetic import iter_examples

    folder = tmp_path_factory.mktemp("trained")
    write_jsonl(folder / "train.jsonl", list(iter_examples(60, 0, "train")))
    write_jsonl(folder / "dev.jsonl", list(iter_examples(20, 0, "validation")))
    args = [
        *TINY_RUN,
        "data=files",
        f"data.train_file={folder / 'train.jsonl'}",
        f"data.validation_file={folder / 'dev.jsonl'}",
        "trainer.epochs=1",
        "trainer.keep_state=true",
    ]
    result = run_cli([*args, "hydra.run.dir=run"], folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder / "run", args


def test_summary_and_state_record_the_data_fingerprint(trained):
    run_dir, _ = trained
    summary = json.loads((run_dir / "summary.json").read_text())
    fingerprint = summary["data_fingerprint"]
    assert fingerprint["train"]["source"] == f"data.train_file={run_dir.parent / 'train.jsonl'}"
    assert fingerprint["validation"]["examples"] == 20
    assert all(len(split["sha256"]) == 64 for split in fingerprint.values())
    manifest = json.loads((run_dir / "state" / "manifest.json").read_text())
    assert manifest["data"] == fingerprint
    assert {"model.safetensors", "optimizer.bin", "random_states_0.pkl"} <= manifest["files"].keys()


@pytest.mark.parametrize("name", ["random_states_0.pkl", "optimizer.bin", "model.safetensors"])
def test_a_truncated_state_file_is_refused_naming_it(trained, tmp_path, name):
    run_dir, args = trained
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    damaged = copy / "state" / name
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size // 2])
    result = run_cli([*args, "hydra.run.dir=resumed", f"trainer.resume_from={copy}"], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"{damaged} does not match the checksum" in result.stderr
    # the way on: the checkpoint's weights, or a fresh start
    assert f"model.name_or_path={copy / 'checkpoint'}" in result.stderr
    assert "Traceback" not in result.stderr


def test_random_states_that_accelerate_cannot_restore_are_an_error(trained, tmp_path):
    """Accelerate only logs "Could not load random states" and trains on with other random
    numbers: a state whose RNG file passes its checksum but cannot be restored is refused."""
    from qaexp.caches import file_digest

    run_dir, args = trained
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    rng = copy / "state" / "random_states_0.pkl"
    torch.save({"unexpected": 1}, rng)
    manifest_file = copy / "state" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["files"]["random_states_0.pkl"] = file_digest(rng)
    manifest_file.write_text(json.dumps(manifest))
    result = run_cli([*args, "hydra.run.dir=resumed", f"trainer.resume_from={copy}"], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "could not restore the random states" in result.stderr
    assert "Traceback" not in result.stderr


# --- data changed between segments --------------------------------------------------------------


@pytest.fixture
def edited(trained):
    """Edit a data file of the trained run in place (one question reworded); restored after."""
    folder = trained[0].parent
    saved = {name: (folder / name).read_bytes() for name in ("train.jsonl", "dev.jsonl")}

    def edit(name: str) -> Path:
        path = folder / name
        lines = path.read_text().splitlines()
        record = json.loads(lines[0])
        record["question"] = "Which " + record["question"]
        path.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
        return path

    yield edit
    for name, content in saved.items():
        (folder / name).write_bytes(content)


@pytest.mark.parametrize(
    ("name", "key"), [("train.jsonl", "train_file"), ("dev.jsonl", "validation_file")]
)
def test_a_resume_on_changed_data_is_refused_naming_the_file(trained, edited, tmp_path, name, key):
    run_dir, args = trained
    path = edited(name)
    result = run_cli([*args, "hydra.run.dir=resumed", f"trainer.resume_from={run_dir}"], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert f"data.{key}={path}" in result.stderr and "data changed" in result.stderr
    assert "trainer.allow_data_change=true" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_resume_on_changed_data_continues_when_asked(trained, edited, tmp_path):
    run_dir, args = trained
    edited("train.jsonl")
    result = run_cli(
        [
            *args,
            "hydra.run.dir=resumed",
            f"trainer.resume_from={run_dir}",
            "trainer.allow_data_change=true",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trainer.allow_data_change=true asks" in result.stderr
    before = json.loads((run_dir / "summary.json").read_text())["data_fingerprint"]
    after = json.loads((tmp_path / "resumed" / "summary.json").read_text())["data_fingerprint"]
    assert after["train"]["sha256"] != before["train"]["sha256"]
    assert after["validation"] == before["validation"]


def test_a_data_file_rewritten_with_the_same_content_resumes(trained, tmp_path):
    """The fingerprint is of the content: a file touched or copied back resumes."""
    run_dir, args = trained
    train = run_dir.parent / "train.jsonl"
    os.utime(train, (time.time() + 5, time.time() + 5))
    result = run_cli([*args, "hydra.run.dir=resumed", f"trainer.resume_from={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
