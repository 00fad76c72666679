"""Shared fixtures: the embedded tokenizer, the SQuAD folder, Hydra composition, and a runner
for `python -m qaexp` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# QAEXP_SQUAD_DIR points the squad tests elsewhere (e.g. from a git worktree).
SQUAD_DIR = Path(os.environ.get("QAEXP_SQUAD_DIR") or REPO.parent / "shared" / "data" / "squad")
CONF_DIR = REPO / "conf"


# The second lane: the cluster tier, which mostly waits on SLURM (begin-time delays, a
# 3-minute time limit), and the multi-process and crash tiers beside it, about a third of the
# suite's time in all (pytest's slowest-durations list in CI's log shows the split).
SECOND_LANE = ("tests/cluster/", "tests/test_distributed.py", "tests/test_crash.py")


def pytest_xdist_make_scheduler(config, log):
    """Two lanes under pytest-xdist (`-n 2`, the default in pyproject.toml): SECOND_LANE's
    files in one worker while every other test runs, in its usual order, in the other. Each
    lane is one process as in a plain run, so session and module fixtures are built once;
    `-n 0` runs everything in this process. (A scheduler, not `--dist loadgroup`: with pytest
    9.2 loadgroup's group suffix never reaches the scheduler, and tests went round-robin.)"""
    from xdist.scheduler import LoadScopeScheduling

    class TwoLanes(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "second" if nodeid.startswith(SECOND_LANE) else "main"

    return TwoLanes(config, log)


def _listening_ports(process) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in process.net_connections(kind="inet")
        if c.status == "LISTEN"
    }


# Set by run_qaexp: the running test started a `python -m ...` subprocess, whose own workers
# may outlive it re-parented, so the guard also scans the host for them.
STARTED_SUBPROCESS = [False]


def _own_processes(me, basetemp: Path, scan_host: bool) -> list:
    """Processes of this test session: children of pytest and, with `scan_host`, processes
    whose working folder lies under pytest's temporary folder (workers re-parented after
    their launcher exited)."""
    import psutil

    found = {p.pid: p for p in me.children(recursive=True)}
    if not scan_host:
        return list(found.values())
    for proc in psutil.process_iter(["pid", "cwd"]):
        cwd = proc.info.get("cwd")
        if cwd and proc.pid != me.pid and Path(cwd).is_relative_to(basetemp):
            found.setdefault(proc.pid, proc)
    return list(found.values())


@pytest.fixture(autouse=True)
def no_process_or_port_left_behind(tmp_path_factory, request):
    """Every test ends with no process it started still running and no port it opened still
    listening. Processes get 15 s to finish exiting; any still alive then are killed (so they
    cannot disturb later tests) and the test errors, naming their command lines. Tests that
    start processes (run_qaexp, or marked `processes`) also get the host-wide scan for
    re-parented workers; the others only the cheap check of pytest's own children."""
    import psutil

    me = psutil.Process()
    basetemp = tmp_path_factory.getbasetemp().resolve()
    STARTED_SUBPROCESS[0] = bool(request.node.get_closest_marker("processes"))
    before = {p.pid for p in _own_processes(me, basetemp, STARTED_SUBPROCESS[0])}
    ports_before = _listening_ports(me)
    yield
    if "wandb" in sys.modules:
        # A test that ran wandb in this process started wandb's service process; stop it the
        # way wandb's API does (it also drops WANDB_SERVICE, which subprocesses would inherit).
        sys.modules["wandb"].teardown()
    new = [p for p in _own_processes(me, basetemp, STARTED_SUBPROCESS[0]) if p.pid not in before]
    _, alive = psutil.wait_procs(new, timeout=15)
    described = []
    for proc in alive:
        try:
            described.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:200]}")
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    ports = _listening_ports(me) - ports_before
    problems = [f"process left running ({d})" for d in described]
    problems += [f"port left listening: {ip}:{port}" for ip, port in sorted(ports)]
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture(scope="session")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    from qaexp.config import embedded_model_path

    return AutoTokenizer.from_pretrained(embedded_model_path())


@pytest.fixture(scope="session")
def squad_dir() -> Path:
    if not (SQUAD_DIR / "dev-v1.1.json").is_file():
        pytest.skip(f"SQuAD JSON not found in {SQUAD_DIR}")
    return SQUAD_DIR


@pytest.fixture(scope="session")
def squad_dev(squad_dir):
    from qaexp.data import load_squad_json

    return load_squad_json(str(squad_dir / "dev-v1.1.json"), "data.validation_file")


@pytest.fixture(scope="session")
def squad_train(squad_dir):
    from qaexp.data import load_squad_json

    return load_squad_json(str(squad_dir / "train-v1.1.reconstructed.json"), "data.train_file")


def compose(overrides: list[str]):
    """The job config for `overrides`, composed as `python -m qaexp` would."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from qaexp.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=False)


def run_qaexp(
    args: list[str], cwd: Path, timeout: int = 600, module: str = "qaexp", env: dict | None = None
):
    """Run `python -m <module> args` in a subprocess; returns the CompletedProcess."""
    STARTED_SUBPROCESS[0] = True
    env = {
        **os.environ,
        # The checkout first; keep the caller's entries (packages installed with --target).
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        **(env or {}),
    }
    env.pop("WANDB_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_cli(args: list[str], cwd: Path, module: str = "qaexp", env: dict | None = None):
    """`python -m <module> args` run inside the test process, as torchtune's recipe tests do:
    the real entry point with argv, working folder and environment patched, stdout/stderr
    captured; returns a CompletedProcess like `run_qaexp`. No cold torch import per run, so
    the end-to-end tier is fast; signals and multi-process launches keep `run_qaexp`."""
    import contextlib
    import io
    import logging

    out, err = io.StringIO(), io.StringIO()
    saved = (list(sys.argv), os.getcwd(), dict(os.environ), list(logging.root.handlers))
    os.environ.update({"HF_HUB_DISABLE_PROGRESS_BARS": "1", **(env or {})})
    os.environ.pop("WANDB_API_KEY", None)
    sys.argv = [module, *args]
    os.chdir(cwd)
    logging.root.handlers = []  # the entry point's logging setup applies, as in a process
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = _call_main(module, args)
    finally:
        sys.argv, cwd_before, env_before, handlers = saved
        os.chdir(cwd_before)
        os.environ.clear()
        os.environ.update(env_before)
        _reset_process_state(handlers)
    return subprocess.CompletedProcess([module, *args], code, out.getvalue(), err.getvalue())


def _call_main(module: str, args: list[str]) -> int:
    """The module's main() with the exit code a process would have had."""
    import importlib
    import traceback

    try:
        if module == "qaexp":
            from qaexp.__main__ import main

            main()
            return 0
        return importlib.import_module(module).main(args) or 0
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    except Exception:
        traceback.print_exc()  # what an uncaught exception prints before exit code 1
        return 1


def _reset_process_state(root_handlers: list) -> None:
    """Undo what one in-process run leaves in the process: Hydra's global state, the
    Accelerate singletons, the logging handlers Hydra added."""
    import logging

    from accelerate.state import AcceleratorState
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    AcceleratorState._reset_state(reset_partial_state=True)
    for handler in list(logging.root.handlers):
        if handler not in root_handlers:
            handler.close()
    logging.root.handlers = root_handlers


def start_qaexp(args: list[str], cwd: Path) -> subprocess.Popen:
    """`python -m qaexp args` started in the background (for tests that signal it)."""
    STARTED_SUBPROCESS[0] = True
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "qaexp", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# The tiny debug run (conf/debug/tiny.yaml: random 2-layer BERT, 120/40 synthetic examples,
# 2 epochs, CPU, no tracker); tests of tracking turn a logger on themselves.
TINY_RUN = ["debug=tiny"]

# TINY_RUN with 60 train / 20 eval synthetic examples and 1 epoch (seconds per job), without
# the keys tests sweep or set: max_length, stride, logger.
SWEPT = ("logger=", "data.synthetic.", "trainer.epochs=", "max_length=", "stride=")
SMALL_RUN = [
    *(arg for arg in TINY_RUN if not arg.startswith(SWEPT)),
    "data.synthetic.train_size=60",
    "data.synthetic.eval_size=20",
    "trainer.epochs=1",
]
SINGLE_RUN = [*SMALL_RUN, "max_length=128", "stride=32"]


def small_config(*overrides: str):
    """The typed config of one SINGLE_RUN job (for calling qaexp.train in-process)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_object(compose([*SINGLE_RUN, *overrides]))


EPOCH_KEYS = {
    "epoch",
    "step",
    "train_loss",
    "exact_match",
    "f1",
    "train_seconds",
    "train_windows_per_second",
    "eval_seconds",
}
SUMMARY_KEYS = {
    "status",
    "best_epoch",
    "best_exact_match",
    "best_f1",
    "final_exact_match",
    "final_f1",
    "train_examples",
    "train_windows",
    "eval_examples",
    "eval_windows",
    "wall_seconds",
    "versions",
    "git_commit",
    "config",
}


def assert_run_dir_contract(run_dir: Path, epochs: list[int]) -> dict:
    """Check every file of a completed run directory; return its summary."""
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in records] == epochs
    for record in records:
        assert record.keys() >= EPOCH_KEYS
        assert 0 <= record["exact_match"] <= record["f1"] <= 100
        if record["epoch"] > 0:
            assert record["train_windows_per_second"] > 0
    steps = [r["step"] for r in records]
    assert steps == sorted(steps)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary.keys() >= SUMMARY_KEYS
    assert summary["status"] == "completed"
    assert summary["best_f1"] == max(r["f1"] for r in records)
    assert summary["final_f1"] == records[-1]["f1"]
    assert "torch" in summary["versions"]
    predictions = json.loads((run_dir / "predictions.json").read_text())
    assert len(predictions) == summary["eval_examples"]
    assert (run_dir / "checkpoint" / "config.json").is_file()
    assert (run_dir / "checkpoint" / "tokenizer.json").is_file()
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    leftovers = [p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name != ".hydra"]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    return summary


def tiny_bert_config(tokenizer):
    """A one-layer BERT of hidden size 32 over `tokenizer`'s vocabulary."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )


@pytest.fixture(scope="session")
def tiny_qa_checkpoint(tmp_path_factory, minilm_tokenizer) -> Path:
    """A randomly initialised one-layer BERT QA model + the MiniLM tokenizer, saved as a
    plain save_pretrained folder (what a run's checkpoint/ holds)."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    config = tiny_bert_config(minilm_tokenizer)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_qa") / "checkpoint"
    AutoModelForQuestionAnswering.from_config(config).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return folder
