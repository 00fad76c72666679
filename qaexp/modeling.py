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


# A local folder must hold one of each group to be loaded as that part of a checkpoint.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _missing_files(folder: Path, loader) -> str | None:
    """What a local checkpoint folder lacks for `loader` (None: nothing): transformers would
    otherwise fall back silently (a 5-token vocabulary without tokenizer files)."""
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    if loader is AutoTokenizer:
        wanted = TOKENIZER_FILES
    elif loader is AutoModelForQuestionAnswering:
        wanted = WEIGHT_FILES
    else:
        wanted = ("config.json",)
    if folder.is_dir() and not names & set(wanted):
        return f"it has no {' / '.join(wanted)}"
    if folder.is_dir() and loader is not AutoTokenizer and "config.json" not in names:
        return "it has no config.json"
    return None


def _load_local(loader, folder: Path, key: str, **kwargs):
    """`loader.from_pretrained` of a local folder, refusing missing and unreadable files."""
    missing = _missing_files(folder, loader)
    if missing:
        raise QAExpError(
            f"{key}={folder} is not a complete checkpoint: {missing}. Point it at a folder "
            "written by save_pretrained (config.json, weights, tokenizer files), e.g. a qaexp "
            "run's checkpoint/."
        )
    try:
        return loader.from_pretrained(str(folder), **kwargs)
    except QAExpError:
        raise
    except Exception as err:  # corrupt weights raise OSError, ValueError, RuntimeError, ...
        raise QAExpError(
            f"{key}={folder} is a local path but not a loadable Hugging Face checkpoint: "
            f"{type(err).__name__}: {str(err)[:300]}. The files in it may be truncated or "
            "corrupt; point it at a folder written by save_pretrained (config.json, weights, "
            "tokenizer files)."
        ) from err


def _from_pretrained(loader, name_or_path: str, key: str, **kwargs):
    """`loader.from_pretrained` with a clear error; the Hub is only asked when the name is
    neither a local folder nor in the local cache."""
    if Path(name_or_path).expanduser().exists():
        return _load_local(loader, Path(name_or_path).expanduser(), key, **kwargs)
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


def check_qa_config(config, name: str, key: str) -> None:
    """A question-answering head has two outputs (start and end logits): refuse others."""
    if getattr(config, "num_labels", 2) != 2:
        architectures = ", ".join(config.architectures or []) or type(config).__name__
        raise QAExpError(
            f"{key}={name} has a head with {config.num_labels} outputs ({architectures}, "
            "config.json num_labels), not a question-answering head (2: start and end). Use a "
            "question-answering checkpoint or a base model."
        )


def check_tokenizer_fits(tokenizer: PreTrainedTokenizerBase, config, name: str, key: str) -> None:
    """The tokenizer must belong to the model: its ids must fit the model's embeddings, and
    a vocabulary far smaller than them means the wrong (or a fallback) tokenizer."""
    size, embeddings = len(tokenizer), getattr(config, "vocab_size", None)
    if embeddings and (size > embeddings or size < embeddings // 2):
        raise QAExpError(
            f"{key}={name}: its tokenizer has {size} tokens but the model's embeddings have "
            f"{embeddings} (config.json vocab_size), so it is not this model's tokenizer. Check "
            "the tokenizer files in the folder (tokenizer.json, vocab.txt) or model.tokenizer."
        )


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The run's tokenizer, checked against the model's config (see check_tokenizer_fits)."""
    name = cfg.tokenizer or cfg.name_or_path
    key = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
    tokenizer = _require_fast(_from_pretrained(AutoTokenizer, name, key), name, key)
    check_tokenizer_fits(tokenizer, model_config(cfg), name, key)
    return tokenizer


def model_config(cfg: ModelConfig):
    """The model's config: the checkpoint's, with ``cfg.architecture`` applied for
    init=random; refused when its head is not a question-answering head."""
    config = _from_pretrained(AutoConfig, cfg.name_or_path, "model.name_or_path")
    check_qa_config(config, cfg.name_or_path, "model.name_or_path")
    if cfg.init == ModelInit.random:
        for key, value in cfg.architecture.items():
            if not hasattr(config, key):
                raise QAExpError(
                    f"model.architecture.{key}: {type(config).__name__} has no such setting."
                )
            setattr(config, key, value)
    return config


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
        return AutoModelForQuestionAnswering.from_config(model_config(cfg), **kwargs)
    model_config(cfg)  # refuses a head that is not a QA head before loading weights
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
    config = _from_pretrained(AutoConfig, name_or_path, key)
    check_qa_config(config, name_or_path, key)
    check_tokenizer_fits(tokenizer, config, name_or_path, key)
    model = _from_pretrained(AutoModelForQuestionAnswering, name_or_path, key)
    if not is_qa_checkpoint(model):
        log.warning(
            "%s=%s was not saved as a question-answering model: its QA head is freshly "
            "initialised, so its answers are random.",
            key,
            name_or_path,
        )
    return model, tokenizer
