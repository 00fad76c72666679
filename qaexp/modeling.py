"""Model and tokenizer loading: Hub ids, local checkpoints, the embedded MiniLM, and randomly
initialised architectures for tests."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from qaexp.config import ModelConfig, ModelInit, embedded_model_path
from qaexp.errors import QAExpError
from qaexp.hub import ensure_hub_reachable

log = logging.getLogger(__name__)


def _from_pretrained(loader, name_or_path: str, key: str, **kwargs):
    """`loader.from_pretrained` with a clear error; the Hub is only asked when the name is
    neither a local folder nor in the local cache."""
    if Path(name_or_path).expanduser().exists():
        try:
            return loader.from_pretrained(str(Path(name_or_path).expanduser()), **kwargs)
        except (OSError, ValueError) as err:
            raise QAExpError(
                f"{key}={name_or_path} is a local path but not a loadable Hugging Face "
                f"checkpoint ({err}). Point it at a folder written by save_pretrained "
                "(config.json, weights, tokenizer files)."
            ) from err
    try:
        return loader.from_pretrained(name_or_path, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass  # not cached: go to the Hub
    ensure_hub_reachable(f"The checkpoint {key}={name_or_path}")
    try:
        return loader.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        raise QAExpError(
            f"Could not load {key}={name_or_path} from the Hugging Face Hub ({err}). Check the "
            "name, or use a local checkpoint with model.name_or_path=PATH."
        ) from err


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    name = cfg.tokenizer or cfg.name_or_path
    key = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
    return _require_fast(_from_pretrained(AutoTokenizer, name, key), name, key)


def _require_fast(tokenizer: PreTrainedTokenizerBase, name: str, key: str):
    if not tokenizer.is_fast:
        raise QAExpError(
            f"{key}={name} has no fast (Rust) tokenizer; qaexp needs offset mappings, which "
            "only fast tokenizers give. Pick a model with a tokenizer.json."
        )
    return tokenizer


def load_model(cfg: ModelConfig) -> PreTrainedModel:
    """The QA model: pretrained weights (a fresh QA head when the checkpoint has none), or a
    random initialisation of the checkpoint's architecture with ``cfg.architecture`` applied."""
    kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    if cfg.init == ModelInit.random:
        config = _from_pretrained(AutoConfig, cfg.name_or_path, "model.name_or_path")
        for key, value in cfg.architecture.items():
            if not hasattr(config, key):
                raise QAExpError(
                    f"model.architecture.{key}: {type(config).__name__} has no such setting."
                )
            setattr(config, key, value)
        return AutoModelForQuestionAnswering.from_config(config, **kwargs)
    model = _from_pretrained(
        AutoModelForQuestionAnswering, cfg.name_or_path, "model.name_or_path", **kwargs
    )
    if not is_qa_checkpoint(model):
        # transformers' table of the new head's keys goes to qaexp.log (qaexp.console).
        log.info("A fresh QA head was initialised (expected for a base checkpoint).")
    return model


EMBEDDED_MODEL_NAME = "MiniLM-L6-H384-uncased (embedded)"


def describe_model(cfg: ModelConfig) -> str:
    """The model as what it is, for logs and model cards, never an install path: a Hub id, the
    embedded MiniLM's name, "random BertConfig(hidden 64, 2 layers)", or the last two parts
    of a local checkpoint folder."""
    name = cfg.name_or_path
    if cfg.init == ModelInit.random:
        config = _from_pretrained(AutoConfig, name, "model.name_or_path")
        arch = {**config.to_dict(), **cfg.architecture}
        size = f"hidden {arch.get('hidden_size', '?')}, {arch.get('num_hidden_layers', '?')} layers"
        return f"random {type(config).__name__}({size})"
    path = Path(name).expanduser()
    if not path.exists():
        return name  # a Hub id
    try:
        if path.resolve() == Path(embedded_model_path()).resolve():
            return EMBEDDED_MODEL_NAME
    except QAExpError:
        pass  # the embedded model's package is not installed
    return "local checkpoint " + "/".join(path.resolve().parts[-2:])


def is_qa_checkpoint(model: PreTrainedModel) -> bool:
    """Whether the weights were saved from a question-answering model, so that its QA head is
    trained (a base checkpoint gets a freshly initialised head on load)."""
    return any(a.endswith("ForQuestionAnswering") for a in model.config.architectures or [])


def looks_like_local_path(name: str) -> bool:
    """True for names that cannot be Hub ids ("./x", "/x", "~/x", "a/b/c"): a missing folder
    is then a typo to report, not a model to fetch."""
    return (
        name.startswith((".", "/", "~"))
        or name.count("/") >= 2
        or (os.sep != "/" and os.sep in name)
    )


def load_qa_checkpoint(
    name_or_path: str, key: str = "checkpoint"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A question-answering model and its tokenizer from a local folder, the local Hugging
    Face cache or the Hub; `key` names the setting in error messages."""
    if looks_like_local_path(name_or_path) and not Path(name_or_path).expanduser().exists():
        raise QAExpError(
            f"{key}={name_or_path}: no such folder. Point it at a checkpoint folder written by "
            "save_pretrained (a qaexp run's outputs/runs/DATE/TIME/checkpoint, say) or at a "
            "Hub model id such as distilbert-base-cased-distilled-squad."
        )
    tokenizer = _require_fast(_from_pretrained(AutoTokenizer, name_or_path, key), name_or_path, key)
    model = _from_pretrained(AutoModelForQuestionAnswering, name_or_path, key)
    if not is_qa_checkpoint(model):
        log.warning(
            "%s=%s was not saved as a question-answering model: its QA head is freshly "
            "initialised, so its answers are random.",
            key,
            name_or_path,
        )
    return model, tokenizer
