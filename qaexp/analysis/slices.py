"""Slices of an evaluation set: labels for every question, from the gold data and the windows
the run built (no model output). Each family splits the questions one way; its labels are
listed in `FAMILIES` in display order.

- question word: the first of what/who/when/where/which/why/how many|much/how in the question
  (lower-cased words; "how many" and "how much" before "how"), else "other".
- answer words: whitespace-separated words of the first gold answer: 1, 2, 3-4, 5+.
- windows: how many windows the context was split into: 1, 2, 3+.
- answer position: where the first gold answer lies among its question's windows: "first
  window" (whole inside window 1), "across windows" (else, when a window holds only part
  of it: the answer straddles a window edge), "later window" (whole inside a later window
  and cut by none).
- overlap: the share of the question's distinct words (lower-cased, punctuation turned into
  spaces, split at white space; a/an/the left out) that occur in its context, split at the
  eval set's tertiles: low, mid, high.
- answerable (SQuAD v2.0 data only): answerable / unanswerable.

Unanswerable questions get "none" for answer words and answer position.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NONE = "none"  # answer words / position of an unanswerable question
FAMILIES: dict[str, tuple[str, ...]] = {
    "question word": (
        "what",
        "who",
        "when",
        "where",
        "which",
        "why",
        "how many/much",
        "how",
        "other",
    ),
    "answer words": ("1", "2", "3-4", "5+", NONE),
    "windows": ("1", "2", "3+"),
    "answer position": ("first window", "later window", "across windows", NONE),
    "overlap": ("low", "mid", "high"),
    "answerable": ("answerable", "unanswerable"),
}
_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}“”‘’«»–—]")
_SEPARATOR = "\x00"  # joins texts for `words_of_all` (turned into no word)
_ARTICLES = frozenset(("a", "an", "the"))
# word -> its slice ("whom" and "whose" ask for a person too)
_QUESTION_WORDS = {w: w for w in ("what", "who", "when", "where", "which", "why")} | {
    "whom": "who",
    "whose": "who",
}


def words_of(text: str) -> list[str]:
    """The words the question slices look at: lower-cased, punctuation turned into spaces,
    split at white space."""
    return _PUNCTUATION.sub(" ", text.lower()).split()


def words_of_all(texts: Sequence[str]) -> list[list[str]]:
    """`words_of` every text, with one lower-casing and one substitution over all of them."""
    joined = _PUNCTUATION.sub(" ", _SEPARATOR.join(texts).lower())
    return [part.split() for part in joined.split(_SEPARATOR)] if texts else []


def question_word(question: str | list[str]) -> str:
    """The question word slice of one question (text, or its `words_of`)."""
    words = words_of(question) if isinstance(question, str) else question
    for i, word in enumerate(words):
        if word == "how":
            following = words[i + 1] if i + 1 < len(words) else ""
            return "how many/much" if following in ("many", "much") else "how"
        if word in _QUESTION_WORDS:
            return _QUESTION_WORDS[word]
    return "other"


def answer_words(golds: Sequence[str]) -> str:
    """The answer-length slice: words of the first gold answer."""
    if not golds:
        return NONE
    count = len(golds[0].split())
    return "1" if count <= 1 else "2" if count == 2 else "3-4" if count <= 4 else "5+"


def word_overlap(question: str | list[str], context: str | set[str]) -> float:
    """Share of the question's distinct words (no articles) that occur in the context (each
    as text, or as its `words_of`)."""
    asked = set(words_of(question) if isinstance(question, str) else question) - _ARTICLES
    known = set(words_of(context)) if isinstance(context, str) else context
    return len(asked & known) / len(asked) if asked else 0.0


def tertile_labels(values: np.ndarray) -> np.ndarray:
    """low / mid / high: below the first tertile, up to the second, above it."""
    if len(values) == 0:
        return np.zeros(0, dtype=object)
    low, high = np.quantile(values, [1 / 3, 2 / 3])
    labels = np.full(len(values), "mid", dtype=object)
    labels[values < low] = "low"
    labels[values > high] = "high"
    return labels


def arrow_column(dataset: datasets.Dataset, name: str) -> pa.Array:
    """One column as a single Arrow array (read at once, not row by row)."""
    column = dataset.with_format("arrow")[name]
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def window_spans(windows: datasets.Dataset, ids: Sequence[str]) -> tuple[np.ndarray, ...]:
    """Per window: its question's row in `ids`, and the context characters it covers
    [start, end) (from its offset mapping; null offsets are not context)."""
    example = arrow_column(windows, "example_id")
    offsets = arrow_column(windows, "offset_mapping")
    row = pc.index_in(example.cast(pa.string()), value_set=pa.array(list(ids), pa.string()))
    row = pc.fill_null(row, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = pc.fill_null(pc.list_value_length(offsets), 0).to_numpy(zero_copy_only=False)
    tokens = offsets.flatten()  # one [start, end] per token, null outside the context
    context = tokens.is_valid().to_numpy(zero_copy_only=False)
    pairs = tokens.flatten().to_numpy(zero_copy_only=False).reshape(-1, 2)  # context tokens
    seen = np.concatenate([[0], np.cumsum(context)])  # context tokens before each token
    ends = np.cumsum(lengths)
    before, count = seen[ends - lengths], seen[ends] - seen[ends - lengths]
    span_start = np.full(len(lengths), np.iinfo(np.int64).max)
    span_end = np.full(len(lengths), -1)
    filled = count > 0
    if filled.any():
        span_start[filled] = np.minimum.reduceat(pairs[:, 0], before[filled])
        span_end[filled] = np.maximum.reduceat(pairs[:, 1], before[filled])
    return row, span_start, span_end


def window_slices(
    windows: datasets.Dataset, ids: Sequence[str], answer_start: np.ndarray, answer_end: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(windows, answer position) labels of every question; `answer_start`/`answer_end` are
    the first gold answer's characters [start, end), -1 for an unanswerable question."""
    n = len(ids)
    row, span_start, span_end = window_spans(windows, ids)
    known = row >= 0
    row, span_start, span_end = row[known], span_start[known], span_end[known]
    count = np.bincount(row, minlength=n)
    count_label = np.where(count >= 3, "3+", np.where(count == 2, "2", "1")).astype(object)
    order = np.arange(len(row))
    first_window = np.full(n, len(row))
    np.minimum.at(first_window, row, order)  # windows are in context order: the lowest first
    a, b = answer_start[row], answer_end[row]
    whole = (span_start <= a) & (b <= span_end)
    part = ~whole & (span_start < b) & (a < span_end)
    whole_first = np.zeros(n, dtype=bool)
    whole_first[row[whole & (order == first_window[row])]] = True
    cut = np.zeros(n, dtype=bool)
    cut[row[part]] = True
    position = np.where(
        whole_first, "first window", np.where(cut, "across windows", "later window")
    )
    position = position.astype(object)
    unanswerable = answer_start < 0
    position[unanswerable] = NONE
    position[~unanswerable & (count == 0)] = "across windows"
    return count_label, position


def first_answer_span(answers: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) characters of each question's first gold answer (-1 when it has none),
    from the `answers` column ({"text": [...], "answer_start": [...]} per question)."""
    texts, starts = (pc.struct_field(answers, name) for name in ("text", "answer_start"))
    empty = pc.equal(pc.list_value_length(texts), 0)  # unanswerable: no first answer
    texts, starts = (pc.if_else(empty, pa.scalar(None, c.type), c) for c in (texts, starts))
    first_text, first_start = pc.list_element(texts, 0), pc.list_element(starts, 0)
    length = pc.utf8_length(first_text)  # in characters, as answer_start counts
    start = pc.fill_null(first_start, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    length = pc.fill_null(length, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    return start, np.where(start >= 0, start + length, -1)


def slice_labels(
    examples: datasets.Dataset, windows: datasets.Dataset, unanswerable: bool = False
) -> dict[str, np.ndarray]:
    """Every family's label for every question of `examples` (in its row order), from the
    gold data and the eval `windows` built from it (columns example_id, offset_mapping)."""
    ids, questions, contexts = (
        arrow_column(examples, name).to_pylist() for name in ("id", "question", "context")
    )
    answers = arrow_column(examples, "answers")
    golds = pc.struct_field(answers, "text").to_pylist()
    start, end = first_answer_span(answers)
    count, position = window_slices(windows, ids, start, end)
    distinct = list(dict.fromkeys(contexts))
    known = dict(zip(distinct, map(set, words_of_all(distinct)), strict=True))
    asked = words_of_all(questions)
    overlap = np.array([word_overlap(q, known[c]) for q, c in zip(asked, contexts, strict=True)])
    labels = {
        "question word": np.array([question_word(q) for q in asked], dtype=object),
        "answer words": np.array([answer_words(g) for g in golds], dtype=object),
        "windows": count,
        "answer position": position,
        "overlap": tertile_labels(overlap),
    }
    if unanswerable:
        labels["answerable"] = np.where(start >= 0, "answerable", "unanswerable").astype(object)
    return labels
