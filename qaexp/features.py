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

Offsets are normalised for every tokenizer family (``normalise_spans``): SentencePiece "▁"
tokenizers (DeBERTa-v2/v3, XLM-R) can give a token the space before it, or the span of the
character after it, so that it overlaps its neighbour (huggingface/tokenizers#1775); a context
token's span starts at its first non-space character, ends after its last one, and never
reaches into the next token. Labels and answers built from them carry no surrounding spaces.

``train_feature_columns``/``eval_feature_columns`` return the same windows as an Arrow table
built from flat per-token NumPy arrays, and ``build_features`` maps those: no padded
(windows, width) arrays to convert and strip, and no Python object per token or offset pair
on the way to the cache. ``prepare_*_features`` return the same windows as Python lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from itertools import chain
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from transformers import PreTrainedTokenizerBase

from qaexp.caches import verified_dataset


def _tokenize(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    stride: int,
    pad_to_max_length: bool,
) -> Any:
    """Tokenize question/context pairs into overflowing windows (Python lists, unpadded
    unless padding to max_length: half the tokens to convert on SQuAD)."""
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
        padding="max_length" if pad_to_max_length else False,
    )


def _context_sequence_index(tokenizer: PreTrainedTokenizerBase) -> int:
    """Which of the two sequences (0 or 1) holds the context (1 unless padding is on the left)."""
    return 1 if tokenizer.padding_side == "right" else 0


# Arrow types of the stored columns: the ones `datasets` infers for the same values given as
# Python lists, so the Arrow path stores exactly what a list-returning builder would.
_MODEL_INPUT_TYPES = {"input_ids": np.int32, "attention_mask": np.int8, "token_type_ids": np.int8}


@dataclass
class _Windows:
    """Every window of a batch, concatenated: one entry per token in the flat arrays."""

    row_offsets: np.ndarray  # (windows + 1,) where each window starts in the flat arrays
    model_inputs: dict[str, np.ndarray]  # input_ids, attention_mask[, token_type_ids]
    spans: np.ndarray  # (tokens, 2) [start, end) characters of each token
    context: np.ndarray  # (tokens,) True where the token belongs to the context
    example_index: np.ndarray  # (windows,) the example each window comes from

    def list_column(self, values: pa.Array) -> pa.ListArray:
        """One Arrow list per window over flat per-token ``values``."""
        return pa.ListArray.from_arrays(pa.array(self.row_offsets), values)


# Every code point Python's str.isspace() calls whitespace (the tokenizers split on these).
_WHITESPACE = np.array([c for c in range(0x3100) if chr(c).isspace()], dtype=np.uint32)


def normalise_spans(
    spans: np.ndarray,
    context: np.ndarray,
    token_text: np.ndarray,
    text: str,
) -> np.ndarray:
    """Context token spans that start at their first non-space character, end after their
    last one and never overlap the next context token (which keeps the character). A token
    of spaces only, or one whose character the next token holds, gets an empty span.

    ``token_text`` (tokens,) is where each token's own context starts in ``text``, the batch's
    contexts joined; spans (tokens, 2) are [start, end) within the token's context. Only
    context tokens change; a context's tokens are consecutive within a window.
    """
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    index = np.arange(len(codes) + 1)
    solid = np.append(~np.isin(codes, _WHITESPACE), True)  # a sentinel past the end
    next_solid = np.minimum.accumulate(np.where(solid, index, len(codes))[::-1])[::-1]
    last_solid = np.maximum.accumulate(np.where(solid, index, -1))
    # Other tokens' spans are in the question's characters: read as empty spans at 0 here.
    begin = np.where(context, spans[:, 0] + token_text, 0)
    end = np.where(context, spans[:, 1] + token_text, 0)
    start = np.minimum(next_solid[begin], end)
    stop = np.maximum(last_solid[np.maximum(end - 1, 0)] + 1, start)
    stop = np.where(end > begin, stop, start)
    # The next token of the same context, when there is one, keeps the characters it shares.
    following = np.append(context[1:], False) & context
    next_start = np.append(start[1:], np.iinfo(np.int64).max)
    stop = np.maximum(np.where(following, np.minimum(stop, next_start), stop), start)
    normalised = np.stack([start, stop], axis=1) - token_text[:, None]
    return np.where(context[:, None], normalised, spans)


def _windows(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    stride: int,
    pad_to_max_length: bool,
    normalise_offsets: bool = True,
) -> _Windows:
    """The batch's windows as flat arrays: the tokenizer's per-window lists go through one
    C-level pass per column, with no per-token Python and no padding to convert and strip."""
    encoded = _tokenize(examples, tokenizer, max_length, stride, pad_to_max_length)
    lengths = np.fromiter(map(len, encoded["input_ids"]), dtype=np.int64)
    total = int(lengths.sum())
    row_offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=row_offsets[1:])
    inputs = {
        key: np.fromiter(chain.from_iterable(encoded[key]), dtype=dtype, count=total)
        for key, dtype in _MODEL_INPUT_TYPES.items()
        if key in encoded
    }
    pairs = chain.from_iterable(chain.from_iterable(encoded["offset_mapping"]))
    spans = np.fromiter(pairs, dtype=np.int64, count=2 * total).reshape(-1, 2)
    # sequence_ids holds None for special and padding tokens; a float array maps None to NaN.
    sequence = chain.from_iterable(enc.sequence_ids for enc in encoded.encodings)
    context = np.array(list(sequence), dtype=np.float32) == _context_sequence_index(tokenizer)
    example_index = np.asarray(encoded["overflow_to_sample_mapping"], dtype=np.int64)
    if normalise_offsets:
        contexts = examples["context"]
        context_start = np.zeros(len(contexts), dtype=np.int64)
        np.cumsum([len(c) for c in contexts[:-1]], out=context_start[1:])
        window = np.repeat(np.arange(len(lengths)), lengths)
        token_text = context_start[example_index[window]]
        spans = normalise_spans(spans, context, token_text, "".join(contexts))
    return _Windows(row_offsets, inputs, spans, context, example_index)


def _model_input_columns(windows: _Windows) -> dict[str, pa.Array]:
    return {key: windows.list_column(pa.array(v)) for key, v in windows.model_inputs.items()}


def _context_offsets(windows: _Windows) -> pa.ListArray:
    """Per window, the [start, end) character span of every token, null where the token is
    not part of the context (a list<list<int64>> column)."""
    pairs = pa.ListArray.from_arrays(
        pa.array(np.arange(0, 2 * len(windows.spans) + 1, 2, dtype=np.int32)),
        pa.array(windows.spans.reshape(-1)),
        mask=pa.array(~windows.context),
    )
    return windows.list_column(pairs)


def answer_token_positions(
    row_offsets: np.ndarray,
    spans: np.ndarray,
    context: np.ndarray,
    start_char: np.ndarray,
    end_char: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Token labels for each window: first and last answer token, or (0, 0) when the answer
    does not lie wholly inside the window's context.

    Windows are concatenated: window w holds tokens ``row_offsets[w]:row_offsets[w + 1]`` of
    spans (tokens, 2) and context (tokens,); start_char/end_char (windows,), end exclusive.
    Offsets of context tokens increase along the window, so "the last token starting at or
    before the answer start" is a count of such tokens, and likewise for the end.
    """
    begins = row_offsets[:-1]
    if not len(begins):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    window = np.repeat(np.arange(len(begins)), np.diff(row_offsets))
    local = np.arange(len(context)) - begins[window]
    count = np.add.reduceat(context.astype(np.int64), begins)
    has_context = count > 0
    # Windows are never empty (special tokens), so reduceat sees no empty segment.
    first = np.minimum.reduceat(np.where(context, local, np.iinfo(np.int64).max), begins)
    first = np.where(has_context, first, 0)
    last = first + count - 1
    window_start_char = spans[begins + first, 0]
    window_end_char = spans[begins + np.maximum(last, 0), 1]
    inside = has_context & (window_start_char <= start_char) & (window_end_char >= end_char)

    starts_before = context & (spans[:, 0] <= start_char[window])
    ends_after = context & (spans[:, 1] >= end_char[window])
    start_token = first + np.add.reduceat(starts_before.astype(np.int64), begins) - 1
    end_token = last - np.add.reduceat(ends_after.astype(np.int64), begins) + 1
    return np.where(inside, start_token, 0), np.where(inside, end_token, 0)


def first_answers(answers: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Start character and length of each example's first answer; (-1, 0) for an
    unanswerable question (an empty ``text`` list, SQuAD v2.0)."""
    starts = [a["answer_start"][0] if a["text"] else -1 for a in answers]
    lengths = [len(a["text"][0]) if a["text"] else 0 for a in answers]
    return np.array(starts, dtype=np.int64), np.array(lengths, dtype=np.int64)


def train_feature_columns(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    stride: int,
    pad_to_max_length: bool = False,
    normalise_offsets: bool = True,
    label_check: bool = False,
) -> pa.Table:
    """`prepare_train_features` as an Arrow table: what `build_features` stores (no Python
    object per token, so building and writing the cache is fast). With `label_check`, also
    the LABEL_CHECK_COLUMNS: what each window's labels decode to, for qaexp's label check."""
    windows = _windows(
        examples, tokenizer, max_length, stride, pad_to_max_length, normalise_offsets
    )
    answer_start, answer_length = first_answers(examples["answers"])
    start_char = answer_start[windows.example_index]
    end_char = start_char + answer_length[windows.example_index]

    starts, ends = answer_token_positions(
        windows.row_offsets, windows.spans, windows.context, start_char, end_char
    )
    # An unanswerable question (no answer text) is labelled like a window missing the answer.
    answerable = (answer_start >= 0)[windows.example_index]
    starts, ends = np.where(answerable, starts, 0), np.where(answerable, ends, 0)
    columns = _model_input_columns(windows)
    columns["start_positions"] = pa.array(starts.astype(np.int64, copy=False))
    columns["end_positions"] = pa.array(ends.astype(np.int64, copy=False))
    if not label_check:
        return pa.table(columns)
    label_start, label_end = labelled_characters(windows, starts, ends)
    columns[LABEL_START_CHAR] = pa.array(label_start)
    columns[LABEL_END_CHAR] = pa.array(label_end)
    ids = pa.array(examples["id"], type=pa.string())
    columns["example_id"] = ids.take(pa.array(windows.example_index))
    return pa.table(columns)


# The label check's columns of the train windows (read and dropped before training):
# the context characters [start, end) the labelled tokens cover, NO_LABEL where the window
# has no answer, BROKEN_LABEL where the labelled tokens do not hold the answer's characters
# alone (end before start, or a neighbour's offsets reaching into the span).
LABEL_START_CHAR, LABEL_END_CHAR = "label_start_char", "label_end_char"
LABEL_CHECK_COLUMNS = (LABEL_START_CHAR, LABEL_END_CHAR, "example_id")
NO_LABEL, BROKEN_LABEL = -1, -2


def labelled_characters(
    windows: _Windows, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per window, the context characters its start/end labels decode to through the
    offsets (see LABEL_START_CHAR): a direct decoding to compare with the gold answer."""
    begins = windows.row_offsets[:-1].astype(np.int64)
    labelled = starts > 0
    first, last = begins + starts, begins + ends
    span_start = windows.spans[first, 0]
    span_end = windows.spans[last, 1]
    before, after = np.maximum(first - 1, 0), np.minimum(last + 1, len(windows.spans) - 1)
    spills_before = windows.context[before] & (windows.spans[before, 1] > span_start)
    spills_after = windows.context[after] & (windows.spans[after, 0] < span_end)
    broken = (ends < starts) | spills_before | spills_after
    start_char = np.where(broken, BROKEN_LABEL, span_start)
    end_char = np.where(broken, BROKEN_LABEL, span_end)
    return np.where(labelled, start_char, NO_LABEL), np.where(labelled, end_char, NO_LABEL)


def eval_feature_columns(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    stride: int,
    pad_to_max_length: bool = False,
    normalise_offsets: bool = True,
) -> pa.Table:
    """`prepare_eval_features` as an Arrow table: what `build_features` stores. Tokens whose
    normalised span is empty (spaces only) are left out of the context: never an answer."""
    windows = _windows(
        examples, tokenizer, max_length, stride, pad_to_max_length, normalise_offsets
    )
    if normalise_offsets:
        windows.context &= windows.spans[:, 1] > windows.spans[:, 0]
    columns = _model_input_columns(windows)
    columns["offset_mapping"] = _context_offsets(windows)
    ids = pa.array(examples["id"], type=pa.string())
    columns["example_id"] = ids.take(pa.array(windows.example_index))
    return pa.table(columns)


def prepare_train_features(
    examples: dict[str, list],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    stride: int,
    pad_to_max_length: bool = False,
) -> dict[str, list]:
    """Windows with ``start_positions``/``end_positions`` labels (the first answer of each
    example; (0, 0), the CLS position, for windows that do not contain the whole answer and
    for every window of an unanswerable question, whose ``answers.text`` is empty)."""
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
FEATURES_VERSION = 3  # 2: labels of left-padding tokenizers fixed; 3: normalised offsets


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
        [
            json.dumps(state, sort_keys=True),
            tokenizer.padding_side,
            tokenizer.truncation_side,
            list(tokenizer.model_input_names),  # token_type_ids or not
        ]
    )


def build_features(
    examples: datasets.Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    stride: int,
    train: bool,
    num_proc: int | None = None,
    normalise_offsets: bool = True,
) -> datasets.Dataset:
    """Train or eval windows of a whole dataset, cached by the datasets library.

    The cache key is the examples' fingerprint plus the tokenizer, max_length and stride, so
    any run or sweep job with the same settings reuses the windows instead of rebuilding; a
    cached file that fails its checksum is rebuilt (qaexp.caches). Train windows carry the
    LABEL_CHECK_COLUMNS (drop them before training).
    """
    from datasets.fingerprint import Hasher

    builder = train_feature_columns if train else eval_feature_columns
    fingerprint = Hasher.hash(
        [
            examples._fingerprint,
            builder.__name__,
            tokenizer_fingerprint(tokenizer),
            max_length,
            stride,
            normalise_offsets,
            FEATURES_VERSION,
        ]
    )
    fn_kwargs = {
        "tokenizer": tokenizer,
        "max_length": max_length,
        "stride": stride,
        "normalise_offsets": normalise_offsets,
    }
    if train:
        fn_kwargs["label_check"] = True
    build = partial(
        _map_windows,
        examples,
        builder,
        fn_kwargs,
        fingerprint,
        num_proc,
    )
    return verified_dataset(build, f"{'train' if train else 'eval'} windows")


def _map_windows(
    examples: datasets.Dataset,
    builder,
    fn_kwargs: dict,
    fingerprint: str,
    num_proc: int | None,
    fresh: bool,
) -> datasets.Dataset:
    """One `Dataset.map` of a builder over the examples (fresh: ignore the cached file)."""
    return examples.map(
        builder,
        batched=True,
        remove_columns=examples.column_names,
        fn_kwargs=fn_kwargs,
        new_fingerprint=fingerprint,
        num_proc=num_proc,
        load_from_cache_file=not fresh,
        desc=f"Building {'train' if builder is train_feature_columns else 'eval'} features",
    )
