"""Share a run: a model card in the checkpoint folder, and the upload to the Hugging Face Hub.

The card (``checkpoint/README.md``) is written at the end of every run that saved a
checkpoint, pushed or not: YAML metadata the Hub reads (library, pipeline tag, datasets,
base model, an EM/F1 model-index) and a body with the results per epoch, the command and the
configuration. With ``hub.push=true`` the checkpoint folder, card included, is uploaded from
the main process. Whether a push can work at all (a repo id, a token, a reachable Hub) is
checked before training, so a long run never ends in a missing token.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

import yaml

from qaexp.config import CheckpointPolicy, DataSource, HubConfig, ModelInit, QAExpConfig
from qaexp.errors import QAExpError
from qaexp.hub import hub_endpoint, hub_offline_requested, hub_reachable
from qaexp.modeling import describe_model
from qaexp.tracking.rundir import CHECKPOINT_DIR, read_metrics, write_text_atomic

log = logging.getLogger(__name__)

CARD_FILE = "README.md"


def check_push_settings(settings: QAExpConfig) -> None:
    """Fail now, before any training, when `hub.push=true` could not succeed at the end."""
    cfg = settings.hub
    if not cfg.push:
        return
    from huggingface_hub import get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not cfg.repo_id:
        raise QAExpError(
            "hub.push=true needs the repository to upload to: add hub.repo_id=NAME, e.g. "
            "hub.repo_id=your-name/minilm-squad (it is created when it does not exist)."
        )
    try:
        validate_repo_id(cfg.repo_id)
    except HFValidationError as err:
        raise QAExpError(
            f"hub.repo_id={cfg.repo_id} is not a valid Hub repository id: {err}"
        ) from err
    if settings.trainer.save_checkpoint == CheckpointPolicy.none:
        raise QAExpError(
            "hub.push=true uploads the run's checkpoint, but trainer.save_checkpoint=none "
            "saves none; drop one of the two."
        )
    if get_token() is None:
        raise QAExpError(
            f"hub.push=true hub.repo_id={cfg.repo_id}, but no Hugging Face token was found. "
            "Log in with `hf auth login` or set HF_TOKEN to a token with write access, then "
            "run again (or drop hub.push=true). This is checked before training so that a run "
            "never finishes without its upload."
        )
    if hub_offline_requested() or not hub_reachable():
        raise QAExpError(
            f"hub.push=true hub.repo_id={cfg.repo_id}, but the Hugging Face Hub "
            f"({hub_endpoint()}) cannot be reached from this machine"
            f"{' (HF_HUB_OFFLINE is set)' if hub_offline_requested() else ''}. Run where the "
            "Hub is reachable, or train without hub.push=true and upload the run's "
            "checkpoint/ folder later with `hf upload NAME PATH/checkpoint`."
        )


def share_run(cfg: QAExpConfig, run_dir: Path, summary: dict) -> None:
    """Write the model card into the run's checkpoint and push it when asked (main process)."""
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    checkpoint = Path(run_dir) / CHECKPOINT_DIR
    if not checkpoint.is_dir():
        return  # no weights kept (trainer.save_checkpoint=none, evaluate-only): nothing to share
    write_model_card(checkpoint, model_card(cfg, summary, read_metrics(run_dir), run_dir))
    if cfg.hub.push:
        push_checkpoint(cfg.hub, checkpoint)


def write_model_card(checkpoint: Path, card: str) -> Path:
    path = checkpoint / CARD_FILE
    write_text_atomic(path, card)
    return path


def push_checkpoint(cfg: HubConfig, checkpoint: Path) -> str:
    """Create the repo if needed and upload the checkpoint folder; return the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(cfg.repo_id, private=cfg.private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=cfg.repo_id, folder_path=str(checkpoint), commit_message=cfg.commit_message
        )
    # The network boundary: whatever the Hub client raises (HTTP status, connection, auth,
    # file errors), the user gets one paragraph, and the run's results stay as written.
    except Exception as err:
        raise QAExpError(
            f"Uploading {checkpoint} to hub.repo_id={cfg.repo_id} failed "
            f"({type(err).__name__}: {err}). Training finished and its results are intact in "
            f"{checkpoint.parent}; once the cause is fixed, upload them with "
            f"`hf upload {cfg.repo_id} {checkpoint}`."
        ) from err
    url = getattr(commit, "commit_url", None) or f"{hub_endpoint()}/{cfg.repo_id}"
    log.info("Pushed the checkpoint and its model card to %s", url)
    return url


def run_command(run_dir: Path) -> str | None:
    """The command line that produced the run: Hydra's record of the overrides, else argv."""
    overrides = Path(run_dir) / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        args = yaml.safe_load(overrides.read_text()) or []
    elif sys.argv and sys.argv[0].endswith(os.path.join("qaexp", "__main__.py")):
        args = sys.argv[1:]
    else:
        return None  # called from Python, not from the command line
    return shlex.join(["python", "-m", "qaexp", *map(str, args)])


def _dataset_description(cfg: QAExpConfig) -> tuple[str, str | None]:
    """A readable name of the evaluation data, and its Hub id when it has one."""
    data = cfg.data
    if data.source == DataSource.hub:
        return f"{data.hub_id} ({data.validation_split} split)", data.hub_id
    return _file_description(cfg, data.validation_file), None


def _training_data_description(cfg: QAExpConfig) -> str:
    """A readable name of the data the weights were trained on."""
    data = cfg.data
    if data.source == DataSource.hub:
        return f"{data.hub_id} ({data.train_split} split)"
    return _file_description(cfg, data.train_file)


def _file_description(cfg: QAExpConfig, file: str | None) -> str:
    if cfg.data.source == DataSource.json:
        return f"the SQuAD JSON file {Path(file or '').name}"
    if cfg.data.source == DataSource.files:
        return f"the file {Path(file or '').name}"
    return "qaexp's synthetic reading-comprehension data"


def _base_model(cfg: QAExpConfig) -> str | None:
    """The Hub id the weights started from; None for local folders and random inits."""
    name = cfg.model.name_or_path
    if cfg.model.init == ModelInit.random or Path(name).expanduser().exists():
        return None
    return name


def _card_metadata(cfg: QAExpConfig, summary: dict, model_name: str) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    dataset_name, dataset_id = _dataset_description(cfg)
    common = {
        "task_type": "question-answering",
        "task_name": "Extractive Question Answering",
        "dataset_type": dataset_id or cfg.data.source.value,
        "dataset_name": dataset_name,
        "dataset_split": cfg.data.validation_split if dataset_id else "validation",
    }
    results = [
        EvalResult(
            metric_type=key, metric_name=name, metric_value=round(summary[best], 2), **common
        )
        for key, name, best in (
            ("exact_match", "Exact Match", "best_exact_match"),
            ("f1", "F1", "best_f1"),
        )
        if summary.get(best) is not None
    ]
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="question-answering",
        base_model=_base_model(cfg),
        datasets=[dataset_id] if dataset_id else None,
        metrics=["exact_match", "f1"],
        tags=["question-answering", "extractive-qa", "qaexp"],
        model_name=model_name,
        eval_results=results or None,
    )
    return data.to_yaml().rstrip() + "\n"


def _results_table(metrics: list[dict]) -> str:
    def number(value: float | None, digits: int) -> str:
        return "" if value is None else f"{value:.{digits}f}"

    rows = [
        "| epoch | step | train loss | exact match | F1 |",
        "|---:|---:|---:|---:|---:|",
    ]
    rows += [
        f"| {m['epoch']} | {m['step']} | {number(m.get('train_loss'), 4)} | "
        f"{number(m['exact_match'], 2)} | {number(m['f1'], 2)} |"
        for m in metrics
    ]
    return "\n".join(rows)


def _null_threshold_section(summary: dict) -> str | None:
    """SQuAD v2.0 runs: what "no answer" means for this checkpoint, and its threshold."""
    v2 = summary.get("squad_v2")
    if not v2:
        return None

    def pct(key: str) -> str:
        return "n/a" if v2.get(key) is None else f"{v2[key]:.2f}"

    return (
        "## Unanswerable questions (SQuAD v2.0)\n\n"
        'The model answers "" (no answer) when its null score (the CLS position\'s start + '
        "end logits) beats the best span by more than `null_score_diff_threshold`. The "
        "threshold recorded with these weights (`null_threshold.json`, used by "
        "`qaexp.pipeline` and `python -m qaexp.predict`) is "
        f"**{summary.get('null_score_diff_threshold')}**, the one that reached the best F1 on "
        f"the evaluation data: best F1 {pct('best_f1')}, best exact {pct('best_exact')}. "
        f"At the run's threshold: exact {pct('exact')}, F1 {pct('f1')}; answerable "
        f"questions ({v2.get('HasAns_total')}) exact {pct('HasAns_exact')} / F1 "
        f"{pct('HasAns_f1')}; unanswerable ({v2.get('NoAns_total')}) exact "
        f"{pct('NoAns_exact')}."
    )


def _settings_table(cfg: QAExpConfig, summary: dict) -> str:
    t, o = cfg.trainer, cfg.optimizer
    settings = {
        "base model": f"`{describe_model(cfg.model)}` ({cfg.model.init.value})",
        "training data": (
            f"{_training_data_description(cfg)}: {summary.get('train_examples', 0)} examples, "
            f"{summary.get('train_windows', 0)} windows"
            if t.epochs
            else "none (evaluated as loaded)"
        ),
        "evaluation data": f"{_dataset_description(cfg)[0]}: {summary.get('eval_examples')} "
        f"examples, {summary.get('eval_windows')} windows",
        "max_length / stride": f"{cfg.max_length} / {cfg.stride} tokens",
        "epochs": t.epochs,
        "batch size": f"{t.train_batch_size} per device x {summary.get('num_processes', 1)} "
        f"process(es) x {t.gradient_accumulation_steps} accumulation step(s)",
        "optimizer": f"{o.name.value}, lr {o.lr:g}, weight decay {o.weight_decay:g}, "
        f"warmup ratio {o.warmup_ratio:g}, {o.scheduler.value} schedule",
        "precision": summary.get("mixed_precision"),
        "engine": t.engine.value,
        "seed": cfg.seed,
    }
    rows = ["| setting | value |", "|---|---|"]
    rows += [f"| {key} | {value} |" for key, value in settings.items()]
    return "\n".join(rows)


def shareable_config(cfg: QAExpConfig, summary: dict) -> dict:
    """The run's config with the model named by what it is instead of a local path."""
    config = dict(summary.get("config", {}))
    if "model" in config and Path(cfg.model.name_or_path).expanduser().exists():
        config["model"] = {**config["model"], "name_or_path": describe_model(cfg.model)}
    return config


def weights_origin(cfg: QAExpConfig, best: int | None, epochs: int) -> str:
    """Which epoch the checkpoint holds (trainer.save_checkpoint)."""
    if not cfg.trainer.epochs:
        return "the model as loaded."
    if cfg.trainer.save_checkpoint == CheckpointPolicy.last:
        return f"epoch {epochs}, the last."
    return f"epoch {best}, the best by F1 on the evaluation data."


def model_card(cfg: QAExpConfig, summary: dict, metrics: list[dict], run_dir: Path) -> str:
    """The README.md of a run's checkpoint: Hub metadata, results, command and config."""
    model_name = cfg.hub.repo_id or "qaexp extractive QA model"
    location = cfg.hub.repo_id or "PATH/TO/checkpoint"
    dataset_name, _ = _dataset_description(cfg)
    command = run_command(run_dir)
    versions = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("versions", {}).items()))
    best = summary.get("best_epoch")
    base = f"`{describe_model(cfg.model)}`"
    trained_on = _training_data_description(cfg)
    if not cfg.trainer.epochs:
        origin = f"{base} ({cfg.model.init.value} weights), evaluated without training on"
    elif cfg.model.init == ModelInit.random:
        origin = (
            f"trained from a random initialisation of {base}'s architecture on {trained_on} "
            "and evaluated on"
        )
    else:
        origin = f"{base} fine-tuned on {trained_on} and evaluated on"
    sections = [
        f"---\n{_card_metadata(cfg, summary, model_name)}---",
        f"# {model_name}",
        f"An extractive question-answering model: {origin} {dataset_name} with qaexp. Given a question and a context, it marks "
        "the span of the context that answers the question. These weights are those of "
        + weights_origin(cfg, best, len(metrics)),
        "## Results",
        f"SQuAD {'v2.0' if summary.get('squad_v2') else 'v1.1'} exact match and F1 (percent) "
        f"on {summary.get('eval_examples')} "
        f"evaluation questions after every epoch:\n\n{_results_table(metrics)}",
        _null_threshold_section(summary),
        "## Use it",
        "```python\nimport qaexp\n\n"
        f'qa = qaexp.pipeline("{location}")\n'
        'qa(question="Who wrote it?", context="It was written by Ada Lovelace.")\n```\n\n'
        "The folder is a plain `AutoModelForQuestionAnswering` checkpoint, so transformers "
        f'loads it directly (`AutoModelForQuestionAnswering.from_pretrained("{location}")`), '
        'and transformers 4.x serves it with `pipeline("question-answering", ...)`.',
        "## How it was made",
        (f"```bash\n{command}\n```" if command else "Run from Python (`qaexp.train.train`)."),
        _settings_table(cfg, summary),
        "<details><summary>Full configuration</summary>\n\n```yaml\n"
        + yaml.safe_dump(shareable_config(cfg, summary), sort_keys=False).rstrip()
        + "\n```\n\n</details>",
        f"Framework versions: {versions}; qaexp commit {summary.get('git_commit')}.",
    ]
    return "\n\n".join(s for s in sections if s) + "\n"
