"""Model and tokenizer loading: Hub ids, local checkpoints, the embedded MiniLM, and randomly
initialised architectures for tests."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
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

KEY = "model.name_or_path"  # the setting error messages name


# A local folder must hold one of each group to be loaded as that part of a checkpoint.
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spm.model",  # DeBERTa-v2/v3 (converted to a fast tokenizer on load)
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
    """The run's tokenizer, checked against the model's config (see check_tokenizer_fits),
    giving token_type_ids only when the model uses them."""
    name = cfg.tokenizer or cfg.name_or_path
    key = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
    tokenizer = _require_fast(_from_pretrained(AutoTokenizer, name, key), name, key)
    config = model_config(cfg)
    check_tokenizer_fits(tokenizer, config, name, key)
    return fit_model_inputs(tokenizer, config)


# The attention implementations transformers can load, each with the class flag saying the
# model supports it; "eager" (plain PyTorch) is always there.
ATTENTION_FLAGS = {
    "sdpa": "_supports_sdpa",
    "flash_attention_2": "_supports_flash_attn",
    "flash_attention_3": "_supports_flash_attn",
    "flex_attention": "_supports_flex_attn",
}


def qa_model_class(config, name: str, key: str) -> type[PreTrainedModel]:
    """The question-answering class transformers has for the config's model type."""
    try:
        return AutoModelForQuestionAnswering._model_mapping[type(config)]
    except KeyError:
        raise QAExpError(
            f"{key}={name} is a {type(config).__name__} ({config.model_type}) model, for which "
            "transformers has no question-answering class (no ...ForQuestionAnswering): qaexp "
            "fine-tunes extractive QA heads. Use an encoder such as BERT, RoBERTa, DeBERTa-v3, "
            "ModernBERT, XLM-RoBERTa or ELECTRA (the options in conf/model/)."
        ) from None


def attention_implementations(model_class: type[PreTrainedModel]) -> list[str]:
    """The attention implementations `model_class` supports, eager first."""
    flags = ATTENTION_FLAGS.items()
    return ["eager", *(name for name, flag in flags if getattr(model_class, flag, False))]


def choose_attention(cfg: ModelConfig, config) -> str:
    """model.attn_implementation, or (null) SDPA where the model supports it, else eager;
    refused in one paragraph when the model cannot take it."""
    supported = attention_implementations(qa_model_class(config, cfg.name_or_path, KEY))
    wanted = cfg.attn_implementation
    if wanted is None:
        return "sdpa" if "sdpa" in supported else "eager"
    if wanted not in supported:
        raise QAExpError(
            f"model.attn_implementation={wanted}: {type(config).__name__} models "
            f"({cfg.name_or_path}) support {', '.join(supported)}. Set one of these, or "
            "model.attn_implementation=null to take SDPA where the model has it, else eager."
        )
    if wanted == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise QAExpError(
                "model.attn_implementation=flash_attention_2 needs the flash-attn package and "
                "a CUDA GPU, which this machine lacks; use model.attn_implementation=sdpa."
            )
    return wanted


def describe_inputs(cfg: ModelConfig) -> str:
    """The run block's model line: the attention implementation and the token types (for an
    ONNX export: its quantization, answered by ONNX Runtime)."""
    config = model_config(cfg)
    types = "token_type_ids" if uses_token_types(config) else "no token_type_ids"
    if is_export(cfg.name_or_path):
        quantization = read_export_record(cfg.name_or_path).get("quantization", "unknown")
        return f"ONNX export (quantization {quantization}), answered by ONNX Runtime, {types}"
    supported = attention_implementations(qa_model_class(config, cfg.name_or_path, KEY))
    chosen = choose_attention(cfg, config)
    how = "set" if cfg.attn_implementation else "chosen"
    return f"attention {chosen} ({how}; supports {', '.join(supported)}), {types}"


def uses_token_types(config) -> bool:
    """Whether the model reads token_type_ids: its forward takes them and it has more than
    one token type (DeBERTa-v3: type_vocab_size 0; RoBERTa, XLM-R: 1; ModernBERT: none)."""
    import inspect

    model_class = AutoModelForQuestionAnswering._model_mapping.get(type(config), None)
    takes = model_class is not None and (
        "token_type_ids" in inspect.signature(model_class.forward).parameters
    )
    return takes and (getattr(config, "type_vocab_size", 0) or 0) >= 2


def fit_model_inputs(tokenizer: PreTrainedTokenizerBase, config) -> PreTrainedTokenizerBase:
    """The tokenizer without token_type_ids when the model does not use them (no column
    in the windows, none in the batches)."""
    if not uses_token_types(config) and "token_type_ids" in tokenizer.model_input_names:
        tokenizer.model_input_names = [
            n for n in tokenizer.model_input_names if n != "token_type_ids"
        ]
    return tokenizer


# Model types whose position ids start after the padding index (RoBERTa's scheme): they take
# max_position_embeddings - pad_token_id - 1 tokens.
PADDING_OFFSET_POSITIONS = {
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "data2vec-text",
}


def max_positions(config) -> int | None:
    """The longest input the model's position embeddings take (None: no limit, as for
    DeBERTa with relative positions only)."""
    if config.model_type.startswith("deberta") and not getattr(
        config, "position_biased_input", True
    ):
        return None
    limit = getattr(config, "max_position_embeddings", None)
    if limit and config.model_type in PADDING_OFFSET_POSITIONS:
        limit -= (config.pad_token_id or 0) + 1
    return limit


def check_max_length(cfg: ModelConfig, max_length: int) -> None:
    """max_length must fit the model's position embeddings."""
    config = model_config(cfg)
    limit = max_positions(config)
    if limit is not None and max_length > limit:
        raise QAExpError(
            f"max_length={max_length} is longer than {cfg.name_or_path} takes: its "
            f"{type(config).__name__} has position embeddings for {limit} tokens "
            f"(config.json max_position_embeddings). Use max_length={limit} or less."
        )


def model_config(cfg: ModelConfig):
    """The model's config: the checkpoint's (an ONNX export's config.json too), with
    ``cfg.architecture`` applied for init=random; refused when its head is not a
    question-answering head."""
    config = _from_pretrained(AutoConfig, cfg.name_or_path, KEY)
    check_qa_config(config, cfg.name_or_path, KEY)
    qa_model_class(config, cfg.name_or_path, KEY)
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
    config = model_config(cfg)  # refuses a head that is not a QA head before loading weights
    if is_export(cfg.name_or_path):
        return load_export_model(cfg.name_or_path)
    kwargs = {"attn_implementation": choose_attention(cfg, config)}
    if cfg.init == ModelInit.random:
        return AutoModelForQuestionAnswering.from_config(config, **kwargs)
    model = _from_pretrained(
        AutoModelForQuestionAnswering, cfg.name_or_path, "model.name_or_path", **kwargs
    )
    if not is_qa_checkpoint(model):
        # transformers' table of the new head's keys goes to qaexp.log (qaexp.console).
        log.info("A fresh QA head was initialised (expected for a base checkpoint).")
    return model


# What marks a folder as an ONNX export (`python -m qaexp.export`): its record of the source,
# the opset and the accuracy gate.
EXPORT_RECORD = "export.json"


def is_export(folder: str | Path) -> bool:
    return (Path(folder).expanduser() / EXPORT_RECORD).is_file()


def read_export_record(folder: str | Path) -> dict:
    return json.loads((Path(folder).expanduser() / EXPORT_RECORD).read_text())


# How a run loads an ONNX export as its model (trainer.epochs=0): qaexp.serving's ONNX Runtime
# session, handed over by the entry point (qaexp.__main__), which sits above the serving
# package; the layers below it never import serving.
_export_loader: Callable[[str], torch.nn.Module] | None = None


def serve_exports_with(loader: Callable[[str], torch.nn.Module] | None) -> None:
    """Let runs evaluate ONNX exports: `loader(folder)` returns the export as a model."""
    global _export_loader
    _export_loader = loader


def load_export_model(name_or_path: str) -> torch.nn.Module:
    """The export in `name_or_path` as a model answering ``model(**batch)``; refused where no
    loader was handed over (a process not started by ``python -m qaexp``)."""
    if _export_loader is None:
        raise QAExpError(
            f"model.name_or_path={name_or_path} is an ONNX export (it holds {EXPORT_RECORD}), "
            "which only python -m qaexp trainer.epochs=0 evaluates. Score it with python -m "
            f"qaexp.predict checkpoint={name_or_path} input=DEV.json, or point "
            "model.name_or_path at its source checkpoint."
        )
    return _export_loader(name_or_path)


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
    qa_model_class(config, name_or_path, key)
    check_tokenizer_fits(tokenizer, config, name_or_path, key)
    tokenizer = fit_model_inputs(tokenizer, config)
    model = _from_pretrained(AutoModelForQuestionAnswering, name_or_path, key)
    if not is_qa_checkpoint(model):
        log.warning(
            "%s=%s was not saved as a question-answering model: its QA head is freshly "
            "initialised, so its answers are random.",
            key,
            name_or_path,
        )
    return model, tokenizer
