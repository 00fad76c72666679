"""What a run records about itself tells the truth: the data named in the run block and the
model card, readable settings, and a full disk or a file-size limit that names the file it
was writing and leaves no staging folder behind."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from tests.conftest import compose

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
