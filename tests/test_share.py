"""Sharing a run: the push settings are checked before training, the model card is written
into the checkpoint, and the upload goes through huggingface_hub.HfApi (tested at that
boundary with fakes: no network)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import yaml
from omegaconf import OmegaConf

import qaexp.tracking.share
from qaexp.config import HubConfig
from qaexp.errors import QAExpError
from qaexp.tracking.share import check_push_settings, model_card, share_run
from qaexp.training import train
from tests.conftest import TINY_RUN, compose, read_jsonl, run_cli

REPO_ID = "someone/tiny-qa"
EVALUATE_TINY = [o for o in TINY_RUN if not o.startswith("trainer.epochs")] + ["trainer.epochs=0"]


def settings(overrides: list[str]):
    return OmegaConf.to_object(compose(overrides))


@pytest.fixture
def hub_ready(monkeypatch):
    """A token and a reachable Hub, as on a logged-in machine."""
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_test_token")
    monkeypatch.setattr(qaexp.tracking.share, "hub_reachable", lambda: True)
    monkeypatch.setattr(qaexp.tracking.share, "hub_offline_requested", lambda: False)


@pytest.fixture
def fake_hub(monkeypatch, hub_ready):
    """HfApi.create_repo/upload_folder replaced by recorders; upload_folder also records the
    files it was given, at the time of the call."""
    calls: dict[str, list] = {"create_repo": [], "upload_folder": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"].append({"repo_id": repo_id, **kwargs})

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        card = (folder / "README.md").read_text()
        calls["upload_folder"].append(
            {**kwargs, "files": sorted(p.name for p in folder.iterdir()), "card": card}
        )
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/1")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["hub.push=true"], "needs the repository to upload to: add hub.repo_id=NAME"),
        (["hub.push=true", "hub.repo_id=not a repo"], "is not a valid Hub repository id"),
        (
            ["hub.push=true", f"hub.repo_id={REPO_ID}", "trainer.save_checkpoint=none"],
            "saves none",
        ),
    ],
)
def test_bad_push_settings_fail_at_once(hub_ready, overrides, match):
    with pytest.raises(QAExpError, match=match):
        check_push_settings(settings(overrides))


def test_no_token_fails_naming_the_fix(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(
        QAExpError, match="no Hugging Face token was found. Log in with `hf auth login`"
    ):
        check_push_settings(settings(["hub.push=true", f"hub.repo_id={REPO_ID}"]))


def test_unreachable_hub_fails_before_training(monkeypatch, hub_ready):
    monkeypatch.setattr(qaexp.tracking.share, "hub_reachable", lambda: False)
    with pytest.raises(QAExpError, match="cannot be reached"):
        check_push_settings(settings(["hub.push=true", f"hub.repo_id={REPO_ID}"]))


def test_no_push_needs_nothing(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    check_push_settings(settings([]))  # no token, no repo: fine without hub.push


def test_cli_without_token_exits_2_before_training(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no stored token either
    result = run_cli(
        [*TINY_RUN, "hub.push=true", f"hub.repo_id={REPO_ID}", "hydra.run.dir=run"],
        cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "no Hugging Face token" in output
    assert "epoch 1" not in output  # failed before any training
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """An evaluate-only run of the tiny model (no push) that keeps a copy of the weights it
    evaluated (save_checkpoint=last): its settings, run dir and summary."""
    cfg = settings([*EVALUATE_TINY, "trainer.save_checkpoint=last"])
    run_dir = tmp_path_factory.mktemp("share") / "run"
    return cfg, run_dir, train(cfg, run_dir)


def test_card_is_written_without_pushing(evaluated):
    _, run_dir, summary = evaluated
    card = (run_dir / "checkpoint" / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "question-answering"
    scores = {m["type"]: m["value"] for m in metadata["model-index"][0]["results"][0]["metrics"]}
    assert scores == {
        "exact_match": round(summary["best_exact_match"], 2),
        "f1": round(summary["best_f1"], 2),
    }


def test_push_uploads_the_checkpoint_with_its_card(evaluated, fake_hub, tmp_path):
    cfg, run_dir, summary = evaluated
    cfg = replace(cfg, hub=HubConfig(push=True, repo_id=REPO_ID, private=True))
    share_run(cfg, run_dir, summary)
    assert fake_hub["create_repo"] == [{"repo_id": REPO_ID, "private": True, "exist_ok": True}]
    [upload] = fake_hub["upload_folder"]
    assert upload["repo_id"] == REPO_ID
    assert Path(upload["folder_path"]) == run_dir / "checkpoint"
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(
        upload["files"]
    )
    assert f"# {REPO_ID}" in upload["card"]
    assert f'qaexp.pipeline("{REPO_ID}")' in upload["card"]
    [epoch] = read_jsonl(run_dir / "metrics.jsonl")
    assert f"| 0 | 0 |  | {epoch['exact_match']:.2f} | {epoch['f1']:.2f} |" in upload["card"]


def test_failed_upload_names_the_repo_and_keeps_the_results(evaluated, fake_hub, monkeypatch):
    cfg, run_dir, summary = evaluated
    cfg = replace(cfg, hub=HubConfig(push=True, repo_id=REPO_ID))

    def broken_upload(self, **kwargs):
        raise RuntimeError("502 Bad Gateway")

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", broken_upload)
    with pytest.raises(QAExpError, match=f"hub.repo_id={REPO_ID} failed .RuntimeError: 502") as err:
        share_run(cfg, run_dir, summary)
    assert "results are intact" in str(err.value) and f"hf upload {REPO_ID}" in str(err.value)
    for name in ("summary.json", "metrics.jsonl", "predictions.json", "checkpoint/README.md"):
        assert (run_dir / name).is_file()


def test_training_run_pushes_at_the_end(fake_hub, tmp_path):
    """Through train(): the push is part of every run that asks for it."""
    cfg = settings([*EVALUATE_TINY, "hub.push=true", f"hub.repo_id={REPO_ID}"])
    summary = train(cfg, tmp_path / "run")
    assert summary["status"] == "completed"
    [upload] = fake_hub["upload_folder"]
    assert Path(upload["folder_path"]) == tmp_path / "run" / "checkpoint"


def test_card_names_hub_data_base_model_and_command(tmp_path):
    cfg = settings(["experiment=bert_base_squad", f"hub.repo_id={REPO_ID}"])
    (tmp_path / ".hydra").mkdir()
    overrides = ["experiment=bert_base_squad", "trainer.epochs=2", "data.max_train_samples=5, 6"]
    (tmp_path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    metrics = [
        {"epoch": 1, "step": 100, "train_loss": 1.25, "exact_match": 70.0, "f1": 80.5},
        {"epoch": 2, "step": 200, "train_loss": 0.9, "exact_match": 81.18, "f1": 88.67},
    ]
    summary = {"best_epoch": 2, "best_exact_match": 81.18, "best_f1": 88.67, "eval_examples": 10570}
    card = model_card(cfg, summary, metrics, tmp_path)
    metadata = yaml.safe_load(card.split("---")[1])
    assert metadata["base_model"] == "bert-base-cased"
    assert metadata["datasets"] == ["rajpurkar/squad"]
    assert metadata["model-index"][0]["results"][0]["dataset"]["type"] == "rajpurkar/squad"
    assert "| 2 | 200 | 0.9000 | 81.18 | 88.67 |" in card
    assert (
        "python -m qaexp experiment=bert_base_squad trainer.epochs=2 'data.max_train_samples=5, 6'"
        in card
    )
