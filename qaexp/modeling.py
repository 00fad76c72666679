"""Model and tokenizer loading: Hub ids, local checkpoints, the embedded MiniLM, and randomly
initialised architectures for tests."""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from qaexp.config import ModelConfig, ModelInit
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
    tokenizer = _from_pretrained(AutoTokenizer, name, key)
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
    return _from_pretrained(
        AutoModelForQuestionAnswering, cfg.name_or_path, "model.name_or_path", **kwargs
    )
