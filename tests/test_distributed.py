"""Several processes: workers started by the runner (gloo on CPU), external launches,
sweeps, and distributed evaluation that matches one process exactly."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import (
    REPO,
    SINGLE_RUN,
    TINY_RUN,
    assert_run_dir_contract,
    run_qaexp,
)

pytestmark = pytest.mark.processes  # starts processes: the leak guard scans the host

TWO_CPU_WORKERS = ["hardware=cpu", "hardware.num_processes=2"]


def predictions(run_dir) -> dict:
    return json.loads((run_dir / "predictions.json").read_text())


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ddp")
    args = [*TINY_RUN, *TWO_CPU_WORKERS, "trainer.epochs=1", "hydra.run.dir=run"]
    result = run_qaexp(args, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result


@pytest.mark.slow
def test_two_workers_write_one_complete_run_dir(two_process_run):
    cwd, _result = two_process_run
    summary = assert_run_dir_contract(cwd / "run", epochs=[1])
    assert summary["num_processes"] == 2
    assert [p.name for p in cwd.iterdir()] == ["run"]  # one run directory, nothing else
    log = (cwd / "run" / "qaexp.log").read_text()
    assert "x 2 processes x 1 accumulation = 32" in log  # 16 per device x 2
    assert log.count("- epoch 1:") == 1  # only the main process logs


@pytest.mark.slow
def test_workers_leave_no_process_or_port_behind(two_process_run):
    import psutil

    cwd, _ = two_process_run
    leftovers = []
    for proc in psutil.process_iter(["pid", "cwd"]):
        if proc.info["cwd"] == str(cwd):
            leftovers.append(proc.info["pid"])
    assert not leftovers


@pytest.mark.slow
def test_eval_with_one_and_two_processes_is_identical(two_process_run, tmp_path):
    cwd, _ = two_process_run
    checkpoint = cwd / "run" / "checkpoint"
    evaluate = [
        *TINY_RUN,
        "model=minilm",
        f"model.name_or_path={checkpoint}",
        "trainer.epochs=0",
        "trainer.eval_batch_size=7",  # uneven batches across the two ranks
    ]
    one = run_qaexp([*evaluate, "hardware=cpu", "hydra.run.dir=one"], cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_qaexp([*evaluate, *TWO_CPU_WORKERS, "hydra.run.dir=two"], cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert predictions(tmp_path / "one") == predictions(tmp_path / "two")
    # the checkpoint is the trained model, so it also reproduces the training run's answers
    assert predictions(tmp_path / "one") == predictions(cwd / "run")


@pytest.mark.slow
def test_multirun_jobs_each_launch_their_own_workers(tmp_path):
    args = [
        "--multirun",
        *TINY_RUN,
        *TWO_CPU_WORKERS,
        "trainer.epochs=1",
        "stride=24,32",
        "hydra.sweep.dir=sweep",
    ]
    result = run_qaexp(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        summary = assert_run_dir_contract(tmp_path / "sweep" / job, epochs=[1])
        assert summary["num_processes"] == 2
    strides = {
        json.loads((tmp_path / "sweep" / j / "summary.json").read_text())["config"]["stride"]
        for j in "01"
    }
    assert strides == {24, 32}


@pytest.mark.slow
def test_torchrun_ranks_share_one_run_dir(tmp_path):
    """An external launch: every rank runs `python -m qaexp`, all join one process group
    and agree on one run directory under the default outputs/ layout."""
    args = [
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "qaexp",
        *TINY_RUN,
        "hardware=cpu",
        "trainer.epochs=1",
    ]
    result = run_qaexp(args, cwd=tmp_path, module="torch.distributed.run")
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = [p for p in (tmp_path / "outputs" / "runs").glob("*/*") if p.is_dir()]
    assert len(run_dirs) == 1
    summary = assert_run_dir_contract(run_dirs[0], epochs=[1])
    assert summary["num_processes"] == 2


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep(tmp_path):
    args = [
        "--multirun",
        "hydra/launcher=local",
        *TINY_RUN,
        "hardware=cpu",
        "trainer.epochs=1",
        "stride=24,32",
        "hydra.sweep.dir=sweep",
    ]
    result = run_qaexp(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert_run_dir_contract(tmp_path / "sweep" / job, epochs=[1])


@pytest.mark.slow
@pytest.mark.squad
def test_real_dev_subset_one_vs_two_processes(squad_dir, tmp_path):
    evaluate = [
        "model=minilm",
        "data=squad_json",
        f"data.train_file={squad_dir / 'dev-v1.1.json'}",
        f"data.validation_file={squad_dir / 'dev-v1.1.json'}",
        "data.max_train_samples=8",
        "data.max_eval_samples=500",
        "trainer.epochs=0",
        "trainer.eval_batch_size=32",
    ]
    one = run_qaexp([*evaluate, "hardware=cpu", "hydra.run.dir=one"], cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_qaexp([*evaluate, *TWO_CPU_WORKERS, "hydra.run.dir=two"], cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    first, second = predictions(tmp_path / "one"), predictions(tmp_path / "two")
    assert len(first) == 500 and first == second


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_one_gpu_mixed_precision(tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    args = [*TINY_RUN, "hardware=gpu", f"hardware.mixed_precision={precision}", "hydra.run.dir=run"]
    result = run_qaexp(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = assert_run_dir_contract(tmp_path / "run", epochs=[1, 2])
    assert summary["mixed_precision"] == precision


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_multi_gpu(tmp_path):
    result = run_qaexp([*TINY_RUN, "hardware=multi_gpu", "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = assert_run_dir_contract(tmp_path / "run", epochs=[1, 2])
    assert summary["num_processes"] == torch.cuda.device_count()


@pytest.mark.slow
def test_a_failing_sweep_job_does_not_stop_the_others(tmp_path):
    """Job 1's stride leaves no room in its windows: it fails at validation, is recorded as
    failed in its own folder, and jobs 0 and 2 still complete."""
    args = [
        "--multirun",
        *TINY_RUN,
        "hardware=cpu",
        "trainer.epochs=1",
        "stride=24,400,32",
        "hydra.sweep.dir=sweep",
    ]
    result = run_qaexp(args, cwd=tmp_path)
    assert result.returncode != 0  # the sweep reports the failure at the end
    assert "stride=400 must be smaller" in result.stderr
    for job in ("0", "2"):
        assert_run_dir_contract(tmp_path / "sweep" / job, epochs=[1])
    failed = json.loads((tmp_path / "sweep" / "1" / "summary.json").read_text())
    assert failed["status"] == "failed" and "stride=400" in failed["error"]


def test_run_stamp_is_cached_per_config_not_per_process(monkeypatch):
    """The stamp resolver runs once per launch config (copies and pickles of it, which is what
    sweep jobs, submitit and requeues get, reuse the value) and never leaks into another
    config composed in the same process."""
    import copy
    import pickle

    from omegaconf import OmegaConf

    import qaexp.launch
    from qaexp.config import register_configs

    register_configs()
    stamps = iter(["stamp-1", "stamp-2"])
    monkeypatch.setattr(qaexp.launch, "agreed_run_stamp", lambda: next(stamps))
    first = OmegaConf.create({"run": "runs/${qaexp.run_stamp:}", "sweep": "m/${qaexp.run_stamp:}"})
    assert (first.run, first.sweep) == ("runs/stamp-1", "m/stamp-1")
    assert copy.deepcopy(first).run == pickle.loads(pickle.dumps(first)).run == "runs/stamp-1"
    second = OmegaConf.create({"run": "runs/${qaexp.run_stamp:}"})
    assert second.run == "runs/stamp-2"


@pytest.mark.parametrize(
    "local_rank, visible, refused", [(0, 1, False), (1, 1, True), (1, 2, False)]
)
def test_a_rank_that_cannot_see_its_gpu_is_told_what_to_ask_for(
    monkeypatch, local_rank, visible, refused
):
    """SLURM's --gpus-per-task gives each task only its own GPU, so local rank 1 would ask
    CUDA for a second device it cannot see: refused with the SLURM options to use."""
    from qaexp.config import Device, HardwareConfig
    from qaexp.errors import QAExpError
    from qaexp.launch import check_rank_has_its_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setenv("LOCAL_RANK", str(local_rank))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    gpu = HardwareConfig(device=Device.gpu)
    if refused:
        with pytest.raises(QAExpError, match="gpus-per-node") as err:
            check_rank_has_its_gpu(gpu)
        assert "local rank 1" in str(err.value) and "CUDA_VISIBLE_DEVICES=3" in str(err.value)
    else:
        check_rank_has_its_gpu(gpu)
    check_rank_has_its_gpu(HardwareConfig(device=Device.cpu))  # a CPU run never needs one


def torchrun(args: list[str], cwd, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", *args],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_two_torchrun_agents_share_one_default_run_dir(tmp_path):
    """Two agents as two nodes on 127.0.0.1 (c10d rendezvous), default folders."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    agent = [
        "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=qaexp-test", "-m", "qaexp",
        *SINGLE_RUN, "hardware=cpu",
    ]  # fmt: skip
    agents = [torchrun(agent, tmp_path) for _ in range(2)]
    errors = [a.communicate(timeout=600)[1] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], errors[0][-3000:] + errors[1][-3000:]
    run_dirs = [p for p in (tmp_path / "outputs" / "runs").glob("*/*") if p.is_dir()]
    assert len(run_dirs) == 1
    assert assert_run_dir_contract(run_dirs[0], epochs=[1])["num_processes"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_torchrun_restart_resumes_in_the_same_run_dir(tmp_path, processes):
    """--max-restarts=1 and a worker killed after epoch 1: the restarted workers find the
    same run dir, resume from the state saved there, and end equal to an uninterrupted run
    on as many processes. One process too: torchrun's agent store holds the run stamp."""
    import psutil

    from tests.test_resume import RESUME_RUN, assert_same_training

    args = [
        "--standalone", f"--nproc_per_node={processes}", "--max-restarts=1",
        "--monitor-interval=0.5", "-m", "qaexp", *RESUME_RUN,
    ]  # fmt: skip
    agent = torchrun(args, tmp_path)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob("outputs/runs/*/*/state/progress.json")):
        assert agent.poll() is None and time.monotonic() < deadline, agent.stderr.read()[-3000:]
        time.sleep(0.2)
    workers = [
        p for p in psutil.Process(agent.pid).children(recursive=True) if "qaexp" in p.cmdline()
    ]
    assert len(workers) == processes
    workers[-1].kill()
    _, stderr = agent.communicate(timeout=600)
    assert agent.returncode == 0, stderr[-3000:]
    (run_dir,) = [p for p in (tmp_path / "outputs" / "runs").glob("*/*") if p.is_dir()]
    assert "Resuming from" in (run_dir / "qaexp.log").read_text()
    assert_run_dir_contract(run_dir, epochs=[1, 2, 3])
    result = run_qaexp(
        [*RESUME_RUN, "hydra.run.dir=straight", f"hardware.num_processes={processes}"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_training(run_dir, tmp_path / "straight")
