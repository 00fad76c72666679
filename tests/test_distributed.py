"""Several processes: workers started by the runner (gloo on CPU), external launches,
sweeps, and distributed evaluation that matches one process exactly."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import TINY_RUN, assert_run_dir_contract, run_qaexp

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
    assert "2 process(es)" in log and "= 32 effective" in log  # 16 per device x 2
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
