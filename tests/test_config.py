"""Config tier: every group option composes into a valid typed config; bad overrides fail
at start naming the key."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from qaexp.config import QAExpConfig
from tests.conftest import CONF_DIR, compose, run_qaexp

GROUPS = ["model", "data", "optimizer", "hardware", "trainer", "logger", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS for o in options(g)], ids=lambda x: str(x)
)
def test_every_group_option_composes(group, option):
    extra = []
    if option == "squad_json":
        extra = ["data.train_file=a.json", "data.validation_file=b.json"]
    cfg = compose([f"{group}={option}", *extra])
    typed = OmegaConf.to_object(cfg)  # resolves interpolations and checks every type
    assert isinstance(typed, QAExpConfig)


def test_groups_present():
    for group in GROUPS:
        assert options(group), f"conf/{group} has no options"
    assert {"bert-base-cased", "distilbert-base-cased", "roberta-base", "minilm", "tiny"} <= set(
        options("model")
    )
    assert {"squad", "squad_json", "synthetic"} <= set(options("data"))
    assert {"quickstart", "bert_base_squad"} <= set(options("experiment"))


def test_defaults_follow_the_seed():
    cfg = OmegaConf.to_object(compose([]))
    assert cfg.model.name_or_path == "bert-base-cased"
    assert (cfg.max_length, cfg.stride, cfg.n_best, cfg.max_answer_length) == (384, 128, 20, 30)
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (2e-5, 0.01)
    assert cfg.data.hub_id == "rajpurkar/squad"


def test_bert_base_recipe():
    cfg = OmegaConf.to_object(compose(["experiment=bert_base_squad"]))
    assert cfg.model.name_or_path == "bert-base-cased"
    assert cfg.trainer.epochs == 3 and cfg.trainer.train_batch_size == 8
    assert cfg.optimizer.lr == 2e-5 and cfg.optimizer.weight_decay == 0.01
    assert cfg.hardware.mixed_precision.value == "fp16"


def test_quickstart_is_offline():
    from pathlib import Path

    cfg = OmegaConf.to_object(compose(["experiment=quickstart"]))
    assert Path(cfg.model.name_or_path, "config.json").is_file()  # the embedded MiniLM
    assert cfg.data.source.value == "synthetic"


def test_local_checkpoint_path_override():
    cfg = compose(["model=minilm", "model.name_or_path=/some/checkpoint"])
    assert cfg.model.name_or_path == "/some/checkpoint"


def test_command_line_sweep_keys_are_top_level():
    cfg = compose(["stride=64", "max_length=256"])
    assert (cfg.stride, cfg.max_length) == (64, 256)


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigCompositionException, match="trainer.epochs") as err:
        compose(["trainer.epochs=abc"])
    assert "could not be converted to Integer" in str(err.value.__cause__)


def test_typo_fails_naming_the_key():
    with pytest.raises(ConfigCompositionException, match="trainer.epoch=3") as err:
        compose(["trainer.epoch=3"])
    assert "Key 'epoch' not in 'TrainerConfig'" in str(err.value.__cause__)


def test_bad_enum_lists_choices():
    with pytest.raises(ConfigCompositionException, match="hardware.mixed_precision") as err:
        compose(["hardware.mixed_precision=fp8"])
    assert "bf16" in str(err.value.__cause__)  # the valid choices are listed


def test_cli_typo_exits_nonzero_with_the_key(tmp_path):
    result = run_qaexp(["experiment=quickstart", "trainer.epoch=3"], cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "trainer.epoch" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_cli_unknown_option_exits_nonzero(tmp_path):
    result = run_qaexp(["model=bert-large-nonexistent"], cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "bert-large-nonexistent" in result.stderr


def test_engine_is_a_checked_choice():
    cfg = OmegaConf.to_object(compose(["trainer.engine=hf"]))
    assert cfg.trainer.engine.value == "hf"
    assert OmegaConf.to_object(compose([])).trainer.engine.value == "accelerate"
    with pytest.raises(ConfigCompositionException, match="trainer.engine") as err:
        compose(["trainer.engine=pytorch"])
    assert "accelerate" in str(err.value.__cause__)  # the valid choices are listed


def test_hub_settings_default_to_no_push():
    hub = OmegaConf.to_object(compose(["hub.repo_id=me/model"])).hub
    assert (hub.push, hub.repo_id, hub.private) == (False, "me/model", False)
