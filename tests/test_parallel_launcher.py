"""hydra/launcher=parallel: jobs run `jobs` at a time in distinct device slots, a failing job
leaves the others complete, SIGTERM stops every job resumably, and the sweep's comparison is
refreshed as each job ends. Device slots are simulated with a fake `devices` list on CPU."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hydra_plugins.qaexp_launcher import slots as slot_planning
from tests.conftest import REPO, assert_run_dir_contract, run_qaexp

JOB = [
    "model=tiny",
    "data=synthetic",
    "data.synthetic.train_size=40",
    "data.synthetic.eval_size=20",
    "hardware=cpu",
    "max_length=128",
    "trainer.epochs=1",
    "logger=none",
]
PARALLEL = [
    "hydra/launcher=parallel",
    "hydra.launcher.jobs=2",
    "hydra.launcher.devices=[0,1]",
    "hydra.launcher.cpus_per_job=1",
]
# Without GPU slots the jobs are forked from the launcher (start_method=auto); with the fake GPU
# slots above they start a fresh interpreter, as on a GPU machine.
SLOTS = {
    "gpu_slots": PARALLEL,
    "cpu_slots": [*PARALLEL[:2], "hydra.launcher.devices=[]", "hydra.launcher.cpus_per_job=1"],
}


def launcher_intervals(stderr: str) -> dict[int, tuple[int, int]]:
    """Each job's (start, end) as the launcher saw it: the positions of its "#i started in
    slot" and "#i completed" lines in the launcher's log. Read from the launcher, not from the
    jobs' files, so a job that trains in under a second still overlaps the job started beside
    it, however long a fresh interpreter takes to import torch."""
    lines = stderr.splitlines()
    starts, ends = {}, {}
    for at, line in enumerate(lines):
        if m := re.search(r"#(\d+) started in slot (\d+)", line):
            starts[int(m.group(1))] = at
        elif m := re.search(r"#(\d+) (completed|failed) \(exit", line):
            ends[int(m.group(1))] = at
    assert starts.keys() == ends.keys(), stderr[-3000:]
    return {i: (starts[i], ends[i]) for i in starts}


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def start_sweep(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "qaexp", "--multirun", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def watch_comparisons(proc: subprocess.Popen, sweep: Path, timeout: float = 600) -> list[int]:
    """Poll a running sweep; return the row count of each distinct comparison.csv seen."""
    seen, last = [], None
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = proc.poll() is not None
        path = sweep / "comparison.csv"
        if path.exists() and path.stat().st_mtime_ns != last:
            last = path.stat().st_mtime_ns
            seen.append(len(read_csv(path)))
        if done:
            return seen
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the sweep did not finish in time")


@pytest.fixture(scope="module", params=sorted(SLOTS))
def four_jobs(request, tmp_path_factory):
    """A 4-job sweep (stride x batch size), 2 at a time: on fake GPU slots 0 and 1 (fresh
    interpreters), or on CPU slots (forked from the launcher)."""
    cwd = tmp_path_factory.mktemp("parallel")
    slots = SLOTS[request.param]
    proc = start_sweep(
        [*JOB, *slots, "stride=24,32", "trainer.train_batch_size=8,16", "hydra.sweep.dir=sw"], cwd
    )
    comparisons = watch_comparisons(proc, cwd / "sw")
    stderr = proc.stderr.read()
    assert proc.returncode == 0, stderr[-3000:]
    return cwd / "sw", comparisons, stderr, request.param


def test_four_jobs_run_two_at_a_time_and_complete(four_jobs):
    sweep, _, stderr, slots = four_jobs
    runs = [sweep / str(i) for i in range(4)]
    for run in runs:
        assert_run_dir_contract(run, epochs=[1])
    intervals = launcher_intervals(stderr)
    assert sorted(intervals) == [0, 1, 2, 3]
    assert most_at_once(list(intervals.values())) == 2
    assert stderr.count("(forked)") == (4 if slots == "cpu_slots" else 0)


def test_concurrent_jobs_hold_distinct_device_slots(four_jobs):
    sweep, _, stderr, slots = four_jobs
    runs = [sweep / str(i) for i in range(4)]
    devices = {r: json.loads((r / "summary.json").read_text())["job_devices"] for r in runs}
    gpus = {"0", "1"} if slots == "gpu_slots" else {None}
    assert {d["cuda_visible_devices"] for d in devices.values()} == gpus
    assert {d["slot"] for d in devices.values()} == {0, 1}
    assert all(d["threads"] == 1 for d in devices.values())
    intervals = launcher_intervals(stderr)
    overlapping = 0
    for a in range(4):
        for b in range(a + 1, 4):
            (sa, ea), (sb, eb) = intervals[a], intervals[b]
            if sa < eb and sb < ea:  # ran at the same time
                overlapping += 1
                assert devices[runs[a]]["slot"] != devices[runs[b]]["slot"]
    assert overlapping >= 1
    log = (runs[0] / "qaexp.log").read_text()
    assert "this job runs on" in log and '"cuda_visible_devices"' in log


def test_comparison_is_refreshed_as_jobs_end(four_jobs):
    sweep, comparisons, _, _ = four_jobs
    assert comparisons[0] < 4, "the first comparison should appear before the sweep ends"
    assert comparisons[-1] == 4
    rows = read_csv(sweep / "comparison.csv")
    assert {r["status"] for r in rows} == {"completed"}


def test_a_failing_job_leaves_the_others_complete(tmp_path):
    """stride=400 does not fit max_length=128: that job fails at start, the others finish,
    the sweep exits non-zero, and the comparison (no end-of-sweep hook) shows all three."""
    result = run_qaexp(
        ["--multirun", *JOB, *SLOTS["cpu_slots"], "stride=24,400,32", "hydra.sweep.dir=sw"],
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "stride" in result.stderr
    for i in (0, 2):
        assert_run_dir_contract(tmp_path / "sw" / str(i), epochs=[1])
    failed = json.loads((tmp_path / "sw" / "1" / "summary.json").read_text())
    assert failed["status"] == "failed"
    rows = {r["run"]: r["status"] for r in read_csv(tmp_path / "sw" / "comparison.csv")}
    assert rows == {"0": "completed", "2": "completed", "1": "failed"}


@pytest.mark.slow
@pytest.mark.parametrize("slots", sorted(SLOTS))
def test_sigterm_stops_every_job_resumably_and_leaves_no_process(tmp_path, slots):
    import psutil

    longer = [*JOB, "data.synthetic.train_size=300", "trainer.epochs=2"]
    proc = start_sweep([*longer, *SLOTS[slots], "stride=24,32,48", "hydra.sweep.dir=sw"], tmp_path)
    logs = [tmp_path / "sw" / str(i) / "qaexp.log" for i in (0, 1)]
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if all(log.exists() and "Training " in log.read_text() for log in logs):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not (tmp_path / "sw" / "2").exists()  # queued, never started
    for i in (0, 1):
        run = tmp_path / "sw" / str(i)
        assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"
        assert (run / "state" / "progress.json").is_file()
    statuses = {r["status"] for r in read_csv(tmp_path / "sw" / "comparison.csv")}
    assert statuses == {"interrupted"}

    overrides = yaml.safe_load((tmp_path / "sw" / "0" / ".hydra" / "overrides.yaml").read_text())
    resumed = run_qaexp([*overrides, "hydra.run.dir=sw/0", "trainer.resume=true"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in (tmp_path / "sw" / "0" / "qaexp.log").read_text()
    assert_run_dir_contract(tmp_path / "sw" / "0", epochs=[1, 2])


# --- slot planning (no processes) -----------------------------------------------------------


def test_slots_pack_gpus_per_job_and_share_the_cores():
    slots = slot_planning.plan_slots(
        ["0", "1", "2", "3"], gpus_per_job=2, jobs=None, cpus_per_job=None, cpus=16
    )
    assert [s.gpus for s in slots] == [("0", "1"), ("2", "3")]
    assert [s.threads for s in slots] == [8, 8]
    env = slots[1].env()
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["OMP_NUM_THREADS"] == "8"
    assert json.loads(env["QAEXP_JOB_DEVICES"])["cuda_visible_devices"] == "2,3"
    assert len(slot_planning.plan_slots(["0", "1", "2"], 1, jobs=2, cpus_per_job=None, cpus=4)) == 2


def test_cpu_slots_limit_threads():
    slots = slot_planning.plan_slots([], gpus_per_job=1, jobs=2, cpus_per_job=1, cpus=2)
    assert [(s.index, s.gpus, s.threads) for s in slots] == [(0, (), 1), (1, (), 1)]
    env = slots[0].env()
    assert "CUDA_VISIBLE_DEVICES" not in env
    assert env["MKL_NUM_THREADS"] == env["RAYON_NUM_THREADS"] == "1"
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    assert len(slot_planning.plan_slots([], 1, jobs=None, cpus_per_job=2, cpus=8)) == 4


def test_impossible_slots_name_the_key():
    with pytest.raises(slot_planning.SlotError, match="gpus_per_job=4 but only 2 GPU"):
        slot_planning.plan_slots(["0", "1"], gpus_per_job=4, jobs=None, cpus_per_job=None, cpus=8)
    with pytest.raises(slot_planning.SlotError, match=r"hydra.launcher.jobs=0: must be a positive"):
        slot_planning.plan_slots([], gpus_per_job=1, jobs=0, cpus_per_job=None, cpus=8)


def test_an_unknown_start_method_is_refused_before_any_job(tmp_path):
    result = run_qaexp(
        ["--multirun", *JOB, *PARALLEL, "hydra.launcher.start_method=fork", "stride=24,32"],
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "hydra.launcher.start_method=fork" in result.stderr and "auto, spawn" in result.stderr
    assert not (tmp_path / "outputs").exists()
