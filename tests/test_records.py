"""What a run records about itself tells the truth: the data named in the run block and the
model card, readable settings, and a full disk or a file-size limit that names the file it
was writing and leaves no staging folder behind."""

from __future__ import annotations

import errno
import json
import resource
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import SINGLE_RUN, compose, run_cli

FILES_DATA = [
    "data=files",
    "data.train_file=/data/train.jsonl",
    "data.validation_file=/d/dev.jsonl",
]


def settings(overrides: list[str]):
    return OmegaConf.to_object(compose(overrides))


# --- the run block's data line ---------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (FILES_DATA, "files train.jsonl (training), dev.jsonl (evaluation)"),
        ([*FILES_DATA, "trainer.epochs=0"], "files dev.jsonl (evaluation)"),
        (
            [
                "data=squad_json",
                "data.train_file=/s/train-v1.1.json",
                "data.validation_file=/s/dev-v1.1.json",
            ],
            "SQuAD JSON train-v1.1.json (training), dev-v1.1.json (evaluation)",
        ),
        (
            ["data=squad"],
            "rajpurkar/squad from the Hub: train split (training), validation split (evaluation)",
        ),
        (["data=synthetic"], "synthetic (qaexp's generator)"),
    ],
)
def test_the_run_block_names_the_data_that_trains_and_evaluates(overrides, expected):
    from qaexp.training.recording import describe_data

    assert describe_data(settings(overrides)) == expected


# --- the model card ------------------------------------------------------------------------


def card_for(overrides: list[str], tmp_path: Path) -> str:
    from qaexp.tracking.share import model_card

    metrics = [{"epoch": 1, "step": 10, "train_loss": 1.5, "exact_match": 40.0, "f1": 50.0}]
    summary = {
        "best_epoch": 1,
        "best_exact_match": 40.0,
        "best_f1": 50.0,
        "train_examples": 120,
        "train_windows": 130,
        "eval_examples": 40,
        "eval_windows": 42,
    }
    return model_card(settings(overrides), summary, metrics, tmp_path)


def test_card_says_what_trained_and_what_evaluated(tmp_path):
    card = card_for(["model=tiny", "model.init=pretrained", *FILES_DATA], tmp_path)
    assert "fine-tuned on the file train.jsonl and evaluated on the file dev.jsonl" in card
    assert "fine-tuned on the file dev.jsonl" not in card
    assert "| training data | the file train.jsonl: 120 examples, 130 windows |" in card
    assert "| evaluation data | the file dev.jsonl: 40 examples, 42 windows |" in card


def test_card_of_a_hub_dataset_names_both_splits(tmp_path):
    card = card_for(["data=squad"], tmp_path)
    assert "on rajpurkar/squad (train split) and evaluated on rajpurkar/squad (validation" in card


def test_card_shows_setting_values_not_enum_names(tmp_path):
    card = card_for(["model=tiny", "optimizer.scheduler=cosine"], tmp_path)
    assert "| optimizer | adamw, lr " in card and "cosine schedule" in card
    assert "OptimizerName" not in card and "SchedulerName" not in card
    metadata = yaml.safe_load(card.split("---")[1])
    assert "Name." not in json.dumps(metadata)


# --- a full disk, a file-size limit ----------------------------------------------------------


@contextmanager
def file_size_limit(nbytes: int):
    """Writes past `nbytes` fail with EFBIG in this process (RLIMIT_FSIZE, SIGXFSZ ignored):
    a real failed write, as a full disk gives one, without filling a disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def hidden_leftovers(run_dir: Path) -> list[str]:
    return sorted(
        p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name != ".hydra"
    )


# The tiny model's weights are about 8 MB and its optimizer state about 16 MB: 12 MB lets the
# state's weights through and stops its optimizer file (written by torch.save, which names
# neither the file nor the errno); 4 MB stops the first weights file (safetensors).
BELOW_OPTIMIZER, BELOW_WEIGHTS = 12_000_000, 4_000_000


def test_a_state_save_that_fails_names_its_file_and_leaves_no_staging_folder(tmp_path):
    args = [*SINGLE_RUN, "trainer.keep_state=true", "hydra.run.dir=run"]  # a state to save
    with file_size_limit(BELOW_OPTIMIZER):
        result = run_cli(args, cwd=tmp_path)
    run_dir = tmp_path / "run"
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    paragraph = next(line for line in result.stderr.splitlines() if "The run failed" in line)
    assert "(EFBIG) at " in paragraph and "optimizer.bin" in paragraph, paragraph
    assert "writing the training state" in paragraph
    assert hidden_leftovers(run_dir) == []  # .state.tmp removed at once, not at a resume
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "failed"


def test_a_checkpoint_save_that_fails_names_its_file_and_leaves_no_staging_folder(tmp_path):
    from qaexp.training import train

    cfg = settings([*SINGLE_RUN, "trainer.epochs=0", "trainer.save_checkpoint=last"])
    with file_size_limit(BELOW_WEIGHTS), pytest.raises(OSError) as err:
        train(cfg, tmp_path / "run")
    assert err.value.errno == errno.EFBIG
    # safetensors removes the weights file it could not finish: the folder is named
    assert err.value.filename == str(tmp_path / "run" / ".checkpoint.tmp")
    assert "writing the checkpoint of epoch 0" in err.value.strerror
    assert hidden_leftovers(tmp_path / "run") == []


class TornWrite(Exception):
    """What a library raises for a failed write, without an errno (as torch.save does)."""


@pytest.mark.parametrize(
    "failure, expected, named",
    [
        (OSError(errno.ENOSPC, "No space left on device"), errno.ENOSPC, "optimizer.bin"),
        (OSError(errno.ENOSPC, "No space", "/r/.state.tmp/x.pkl"), errno.ENOSPC, "x.pkl"),
        (TornWrite("I/O error: No space left on device (os error 28)"), errno.ENOSPC, ""),
        (TornWrite("unexpected pos 576 vs 534"), None, "optimizer.bin"),
    ],
)
def test_a_failed_write_into_a_staging_folder_names_the_file(tmp_path, failure, expected, named):
    from qaexp.tracking.rundir import removed_on_failure

    staged = tmp_path / ".state.tmp"
    with pytest.raises(OSError) as err, removed_on_failure(staged, "the training state"):
        staged.mkdir()
        (staged / "model.safetensors").write_bytes(b"w" * 10)
        (staged / "optimizer.bin").write_bytes(b"o" * 20)  # written last: the one cut short
        raise failure
    assert err.value.errno == expected and err.value.__cause__ is failure
    assert Path(err.value.filename).name == (named or staged.name)
    assert "writing the training state (its unfinished .state.tmp was removed)" in str(err.value)
    assert not staged.exists()


def test_describe_failure_names_a_file_without_an_errno():
    from qaexp.__main__ import describe_failure

    line = describe_failure(OSError(None, "unexpected pos 576, writing the state", "/r/x.bin"))
    assert line == "unexpected pos 576, writing the state at /r/x.bin"


def test_predict_on_a_full_disk_names_the_file_and_leaves_nothing(
    tmp_path, tiny_qa_checkpoint, monkeypatch, caplog
):
    """The output folder passed the check, then the disk filled up while writing: the
    answers journal is named; no official output is written; the same command continues."""
    import logging

    from qaexp.predict import main
    from qaexp.tracking import rundir

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "q.json").write_text(
        json.dumps([{"id": "a", "question": "Who?", "context": "Ada wrote it."}])
    )
    output = tmp_path / "out" / "answers.json"
    monkeypatch.setattr(rundir.os, "fsync", full)
    args = [f"checkpoint={tiny_qa_checkpoint}", f"input={tmp_path / 'q.json'}", f"output={output}"]
    with caplog.at_level(logging.INFO), pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 1
    journal = output.with_suffix(".jsonl")
    assert f"Writing {journal} failed: No space left on device (ENOSPC)" in caplog.text
    assert [p.name for p in (tmp_path / "out").iterdir()] == [journal.name]
    monkeypatch.undo()  # space freed
    main(args)
    assert json.loads(output.read_text()).keys() == {"a"}
