"""Features: window SQuAD examples into model inputs (sliding windows over long contexts).

Both builders work on a batch of examples in the HF ``squad`` schema and are meant for
``Dataset.map(fn, batched=True, fn_kwargs={"tokenizer": ..., "max_length": ..., "stride": ...})``.

Semantics (those of the BERT/SQuAD recipe): the question is stripped of surrounding
whitespace; only the context is truncated; a context longer than one window overflows into
further windows that share ``stride`` tokens; the tokenizer's padding side is honoured and
models without ``token_type_ids`` (RoBERTa, DistilBERT) work, because the context is found
through the tokenizer's sequence ids rather than token types.

Windows are not padded unless ``pad_to_max_length=True`` (the seed's behaviour): batches are
padded by the collator, which keeps training on real tokens.

``train_feature_columns``/``eval_feature_columns`` return the same windows as an Arrow table
built from flat NumPy arrays; ``build_features`` maps those, because turning every token (and
every offset pair) into a Python object cost more than tokenizing. ``prepare_*_features``
return them as Python lists.
"""

from __future__ import annotations

import json
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from transformers import PreTrainedTokenizerBase

_NOT_CONTEXT = -1


def _tokenize(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    stride: int,
    pad_to_max_length: bool,
) -> Any:
    """Tokenize question/context pairs into overflowing windows, padded to one width."""
    question_first = tokenizer.padding_side == "right"
    questions = [q.strip() for q in examples["question"]]
    contexts = examples["context"]
    return tokenizer(
        questions if question_first else contexts,
        contexts if question_first else questions,
        max_length=max_length,
        truncation="only_second" if question_first else "only_first",
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        # Pad to the batch's longest window so the label maths below is one array op;
        # the padding is stripped again before the features are stored.
        padding="max_length" if pad_to_max_length else "longest",
        return_tensors="np",
    )


def _context_sequence_index(tokenizer: PreTrainedTokenizerBase) -> int:
    """Which of the two sequences (0 or 1) holds the context (1 unless padding is on the left)."""
    return 1 if tokenizer.padding_side == "right" else 0


def _context_mask(encoded: Any, context_index: int) -> np.ndarray:
    """(windows, width) bool: True where a token belongs to the context."""
    # sequence_ids holds None for special and padding tokens; float conversion maps None to
    # NaN in C, which keeps this free of per-token Python work.
    seq = np.array([enc.sequence_ids for enc in encoded.encodings], dtype=np.float32)
    return seq == context_index


def _row_offsets(keep: np.ndarray) -> pa.Array:
    """Arrow list offsets for windows that keep ``keep.sum(axis=1)`` tokens each."""
    offsets = np.zeros(len(keep) + 1, dtype=np.int32)
    np.cumsum(keep.sum(axis=1), out=offsets[1:])
    return pa.array(offsets)


def _ragged(values: np.ndarray, keep: np.ndarray) -> pa.ListArray:
    """Row i of ``values`` (windows, width) restricted to ``keep[i]``, one Arrow list per
    window, built from the flat kept values (row-major order keeps each window's order)."""
    return pa.ListArray.from_arrays(_row_offsets(keep), pa.array(values[keep]))


def _stored_tokens(encoded: Any, pad_to_max_length: bool) -> np.ndarray:
    """(windows, width) bool: the tokens to store; padding only when padding to max_length."""
    real = encoded["attention_mask"].astype(bool)
    return np.ones_like(real) if pad_to_max_length else real


# Arrow types of the stored columns: the ones `datasets` infers for the same values given as
# Python lists, so the Arrow path stores exactly what a list-returning builder would.
_MODEL_INPUT_TYPES = {"input_ids": np.int32, "attention_mask": np.int8, "token_type_ids": np.int8}


def _model_input_columns(encoded: Any, keep: np.ndarray) -> dict[str, pa.Array]:
    return {
        key: _ragged(encoded[key].astype(dtype, copy=False), keep)
        for key, dtype in _MODEL_INPUT_TYPES.items()
        if key in encoded
    }


def _context_offsets(offsets: np.ndarray, context: np.ndarray, keep: np.ndarray) -> pa.ListArray:
    """Per window, the [start, end) character span of every stored token, null where the token
    is not part of the context (a list<list<int64>> column)."""
    spans = offsets[keep].astype(np.int64, copy=False)  # (stored tokens, 2)
    pairs = pa.ListArray.from_arrays(
        pa.array(np.arange(0, 2 * len(spans) + 1, 2, dtype=np.int32)),
        pa.array(spans.reshape(-1)),
        mask=pa.array(~context[keep]),
    )
    return pa.ListArray.from_arrays(_row_offsets(keep), pairs)


def answer_token_positions(
    offsets: np.ndarray, context_mask: np.ndarray, start_char: np.ndarray, end_char: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Token labels for each window: first and last answer token, or (0, 0) when the answer
    does not lie wholly inside the window's context.

    offsets (W, L, 2), context_mask (W, L), start_char/end_char (W,) with end exclusive.
    Offsets of context tokens increase along the window, so "the last token starting at or
    before the answer start" is a count of such tokens, and likewise for the end.
    """
    width = context_mask.shape[1]
    has_context = context_mask.any(axis=1)
    first = np.argmax(context_mask, axis=1)
    last = width - 1 - np.argmax(context_mask[:, ::-1], axis=1)
    rows = np.arange(len(offsets))
    window_start_char = offsets[rows, first, 0]
    window_end_char = offsets[rows, last, 1]
    inside = has_context & (window_start_char <= start_char) & (window_end_char >= end_char)

    starts_before = context_mask & (offsets[:, :, 0] <= start_char[:, None])
    ends_after = context_mask & (offsets[:, :, 1] >= end_char[:, None])
    start_token = first + starts_before.sum(axis=1) - 1
    end_token = last - ends_after.sum(axis=1) + 1
    return np.where(inside, start_token, 0), np.where(inside, end_token, 0)


def train_feature_columns(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    stride: int,
    pad_to_max_length: bool = False,
) -> pa.Table:
    """`prepare_train_features` as an Arrow table: what `build_features` stores (no Python
    object per token, so building and writing the cache is fast)."""
    encoded = _tokenize(examples, tokenizer, max_length, stride, pad_to_max_length)
    example_index = np.asarray(encoded["overflow_to_sample_mapping"])
    answer_start = np.array([a["answer_start"][0] for a in examples["answers"]], dtype=np.int64)
    answer_length = np.array([len(a["text"][0]) for a in examples["answers"]], dtype=np.int64)
    start_char = answer_start[example_index]
    end_char = start_char + answer_length[example_index]

    mask = _context_mask(encoded, _context_sequence_index(tokenizer))
    starts, ends = answer_token_positions(encoded["offset_mapping"], mask, start_char, end_char)
    columns = _model_input_columns(encoded, _stored_tokens(encoded, pad_to_max_length))
    columns["start_positions"] = pa.array(starts.astype(np.int64, copy=False))
    columns["end_positions"] = pa.array(ends.astype(np.int64, copy=False))
    return pa.table(columns)


def eval_feature_columns(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    stride: int,
    pad_to_max_length: bool = False,
) -> pa.Table:
    """`prepare_eval_features` as an Arrow table: what `build_features` stores."""
    encoded = _tokenize(examples, tokenizer, max_length, stride, pad_to_max_length)
    example_index = np.asarray(encoded["overflow_to_sample_mapping"])
    mask = _context_mask(encoded, _context_sequence_index(tokenizer))
    keep = _stored_tokens(encoded, pad_to_max_length)
    columns = _model_input_columns(encoded, keep)
    columns["offset_mapping"] = _context_offsets(encoded["offset_mapping"], mask, keep)
    columns["example_id"] = pa.array(examples["id"], type=pa.string()).take(example_index)
    return pa.table(columns)


def prepare_train_features(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    stride: int,
    pad_to_max_length: bool = False,
) -> dict[str, list]:
    """Windows with ``start_positions``/``end_positions`` labels (the first answer of each
    example; (0, 0) for windows that do not contain the whole answer)."""
    table = train_feature_columns(examples, tokenizer, max_length, stride, pad_to_max_length)
    return table.to_pydict()


def prepare_eval_features(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    stride: int,
    pad_to_max_length: bool = False,
) -> dict[str, list]:
    """Windows with ``example_id`` and ``offset_mapping`` (``None`` for every token that is
    not part of the context, so post-processing can never pick it)."""
    table = eval_feature_columns(examples, tokenizer, max_length, stride, pad_to_max_length)
    return table.to_pydict()


# Bump when the builders' output changes, so cached features from older code are not reused.
FEATURES_VERSION = 1


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A stable hash of everything in the tokenizer that changes its output.

    The backend's "truncation" and "padding" entries are left out: transformers sets them on
    every call (the builders pass max_length, stride and padding explicitly), so they hold
    whatever the last call used, and a run that found its train windows cached (no call yet)
    would otherwise get a different key for its eval windows than the run that built them.
    """
    from datasets.fingerprint import Hasher

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    state.pop("truncation", None)
    state.pop("padding", None)
    return Hasher.hash(
        [json.dumps(state, sort_keys=True), tokenizer.padding_side, tokenizer.truncation_side]
    )


def build_features(
    examples: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    stride: int,
    train: bool,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Train or eval windows of a whole dataset, cached by the datasets library.

    The cache key is the examples' fingerprint plus the tokenizer, max_length and stride, so
    any run or sweep job with the same settings reuses the windows instead of rebuilding.
    """
    from datasets.fingerprint import Hasher

    builder = train_feature_columns if train else eval_feature_columns
    fingerprint = Hasher.hash(
        [examples._fingerprint, builder.__name__, tokenizer_fingerprint(tokenizer),
         max_length, stride, FEATURES_VERSION]
    )  # fmt: skip
    return examples.map(
        builder,
        batched=True,
        remove_columns=examples.column_names,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "stride": stride},
        new_fingerprint=fingerprint,
        num_proc=num_proc,
        desc=f"Building {'train' if train else 'eval'} features",
    )
