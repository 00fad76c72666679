"""Data: load raw examples (Hub, official SQuAD JSON, flat files, synthetic) as
``datasets.Dataset``s in the HF ``squad`` schema: id, title, context, question,
answers{text, answer_start}; an unanswerable question (SQuAD v2.0) has empty answer lists.

Every source is materialised into the datasets cache (Arrow files with a stable
fingerprint), so feature building on top of it is cached and reused across runs.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import datasets

from qaexp.caches import verified_dataset
from qaexp.config import ColumnsConfig, DataConfig, DataSource
from qaexp.errors import QAExpError
from qaexp.hub import ensure_hub_reachable

log = logging.getLogger(__name__)

SQUAD_FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "title": datasets.Value("string"),
        "context": datasets.Value("string"),
        "question": datasets.Value("string"),
        "answers": {
            "text": datasets.List(datasets.Value("string")),
            "answer_start": datasets.List(datasets.Value("int32")),
        },
    }
)

SPLITS = ("train", "validation")
FILE_SPLIT_KEYS = {"train": "data.train_file", "validation": "data.validation_file"}
# File extension -> the `datasets` packaged builder that reads it.
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def load_raw_datasets(cfg: DataConfig, splits: tuple[str, ...] = SPLITS) -> datasets.DatasetDict:
    """The configured source's `splits` (both by default; evaluate-only runs ask for
    "validation" alone), each cut to ``max_*_samples`` (the first N examples)."""
    if cfg.source == DataSource.hub:
        raw = _load_hub(cfg)
    elif cfg.source == DataSource.json:
        files = {"train": cfg.train_file, "validation": cfg.validation_file}
        raw = datasets.DatasetDict(
            {s: load_squad_json(files[s], FILE_SPLIT_KEYS[s], cfg.cache_dir) for s in splits}
        )
    elif cfg.source == DataSource.files:
        files = {"train": cfg.train_file, "validation": cfg.validation_file}
        raw = datasets.DatasetDict(
            {s: load_flat_file(files[s], FILE_SPLIT_KEYS[s], cfg) for s in splits}
        )
    else:
        raw = _load_synthetic(cfg, splits)
    raw = datasets.DatasetDict({split: raw[split] for split in splits})
    limits = {"train": cfg.max_train_samples, "validation": cfg.max_eval_samples}
    for split in splits:
        limit = limits[split]
        if limit is not None and limit < len(raw[split]):
            raw[split] = raw[split].select(range(limit))
    return raw


def _load_hub(cfg: DataConfig) -> datasets.DatasetDict:
    ensure_hub_reachable(f"The dataset data.hub_id={cfg.hub_id}")
    try:
        loaded = datasets.load_dataset(cfg.hub_id, cfg.hub_config, cache_dir=cfg.cache_dir)
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as err:
        raise QAExpError(
            f"Could not load the dataset data.hub_id={cfg.hub_id} from the Hugging Face Hub "
            f"({type(err).__name__}: {err}). Check the name, or work offline with "
            "data=squad_json data.train_file=PATH data.validation_file=PATH (official SQuAD "
            "JSON), data=files (your own JSON Lines, CSV or Parquet files) or data=synthetic."
        ) from err
    missing = [s for s in (cfg.train_split, cfg.validation_split) if s not in loaded]
    if missing:
        raise QAExpError(
            f"The dataset {cfg.hub_id} has no split {missing[0]!r} (it has "
            f"{sorted(loaded)}); set data.train_split / data.validation_split."
        )
    return datasets.DatasetDict(
        {
            "train": to_squad_schema(loaded[cfg.train_split], cfg.columns, cfg.hub_id),
            "validation": to_squad_schema(loaded[cfg.validation_split], cfg.columns, cfg.hub_id),
        }
    )


def load_squad_json(path: str | None, key: str, cache_dir: str | None = None) -> datasets.Dataset:
    """An official SQuAD v1.1 or v2.0 JSON file as a flat Dataset (one row per question; a
    v2.0 question with ``is_impossible`` gets empty answer lists)."""
    if not path:
        raise QAExpError(
            f"{key} is not set: data=squad_json needs data.train_file=PATH and "
            "data.validation_file=PATH (official SQuAD v1.1 or v2.0 JSON files)."
        )
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        example = "train-v1.1.json" if "train" in key else "dev-v1.1.json"
        raise QAExpError(
            f"{key}={path}: no such file ({file}). Point it at an official SQuAD v1.1 JSON "
            f"file, e.g. {example}."
        )
    stat = file.stat()
    try:
        return materialise(
            _iter_squad_json,
            cache_dir=cache_dir,
            # The file's identity and state are part of the cache key, so an edited file is
            # re-read while an unchanged one is reused.
            gen_kwargs={"path": str(file), "stamp": f"{stat.st_size}-{stat.st_mtime_ns}"},
        )
    except datasets.exceptions.DatasetGenerationError as err:
        if isinstance(err.__cause__, QAExpError):
            raise err.__cause__ from None
        raise


def _iter_squad_json(path: str, stamp: str) -> Iterator[dict]:
    del stamp  # only part of the cache key
    try:
        with open(path, encoding="utf-8") as fh:
            document = json.load(fh)
    except json.JSONDecodeError as err:
        hint = ""
        if err.msg == "Extra data":  # several JSON values: JSON Lines
            hint = " It looks like JSON Lines (one record per line): use data=files for those."
        raise QAExpError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})." + hint
        ) from err
    except UnicodeDecodeError as err:
        raise QAExpError(f"{path} is not UTF-8 text ({err}).") from err
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        flat = isinstance(document, list) and all(isinstance(r, dict) for r in document[:1])
        raise QAExpError(
            f'{path} is not official SQuAD JSON: expected {{"version": ..., "data": [...]}} '
            "at the top level."
            + (" It holds a list of flat records: use data=files for those." if flat else "")
        )
    for a, article in enumerate(document["data"]):
        paragraphs = _typed_field(article, "paragraphs", list, path, f"data[{a}]")
        title = _title(article, path, f"data[{a}]")
        for p, paragraph in enumerate(paragraphs):
            where = f"data[{a}].paragraphs[{p}]"
            context = _typed_field(paragraph, "context", str, path, where)
            for q, qa in enumerate(_typed_field(paragraph, "qas", list, path, where)):
                yield _squad_record(qa, title, context, path, f"{where}.qas[{q}]")


def _field(record: object, name: str, path: str, where: str):
    if not isinstance(record, dict) or name not in record:
        raise QAExpError(f"{path}: the record at {where} has no field {name!r}.")
    return record[name]


def _typed_field(record: object, name: str, kind: type, path: str, where: str):
    """record[name], refused (naming the place) when missing, null or of another type."""
    value = _field(record, name, path, where)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise QAExpError(
            f"{path}: {where}.{name} must be a {kind.__name__}, got {value!r:.60} "
            f"({type(value).__name__})."
        )
    return value


def _title(article: object, path: str, where: str) -> str:
    title = article.get("title", "") if isinstance(article, dict) else ""
    if not isinstance(title, str):
        raise QAExpError(f"{path}: {where}.title must be a string, got {title!r:.60}.")
    return title


def _question_id(qa: object, path: str, where: str) -> str:
    """The id as a string: strings and integers only, so that no two ids can collide or
    split after conversion (null -> "None", 1.0 -> "1.0" beside 1 -> "1")."""
    value = _field(qa, "id", path, where)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise QAExpError(
            f"{path}: {where}.id must be a string or an integer, got {value!r:.60} "
            f"({type(value).__name__})."
        )
    return str(value)


def _answer(answer: object, path: str, where: str) -> tuple[str, int]:
    text = _typed_field(answer, "text", str, path, where)
    start = _typed_field(answer, "answer_start", int, path, where)
    return text, start


def _squad_record(qa: dict, title: str, context: str, path: str, where: str) -> dict:
    example_id = _question_id(qa, path, where)
    question = _typed_field(qa, "question", str, path, where)
    answers = qa.get("answers", []) if isinstance(qa, dict) else []
    if isinstance(qa, dict) and qa.get("is_impossible"):  # SQuAD v2.0: no answer
        answers = []
    if not isinstance(answers, list):
        raise QAExpError(f"{path}: {where}.answers must be a list, got {answers!r:.60}.")
    pairs = [_answer(a, path, f"{where}.answers[{i}]") for i, a in enumerate(answers)]
    return {
        "id": example_id,
        "title": title,
        "context": context,
        "question": question,
        "answers": {"text": [t for t, _ in pairs], "answer_start": [s for _, s in pairs]},
    }


def _load_synthetic(cfg: DataConfig, splits: tuple[str, ...]) -> datasets.DatasetDict:
    from qaexp.data.synthetic import iter_examples

    syn = cfg.synthetic
    sizes = {"train": syn.train_size, "validation": syn.eval_size}
    return datasets.DatasetDict(
        {
            split: materialise(
                iter_examples,
                cache_dir=cfg.cache_dir,
                gen_kwargs={
                    "num_examples": sizes[split],
                    "seed": syn.seed,
                    "split": split,
                    "long_context_fraction": syn.long_context_fraction,
                    "unanswerable_fraction": syn.unanswerable_fraction,
                },
            )
            for split in splits
        }
    )


def load_flat_file(path: str | None, key: str, cfg: DataConfig) -> datasets.Dataset:
    """A JSON Lines, CSV or Parquet file of flat records, read by `datasets` (so cached and
    fingerprinted) and mapped to the squad schema with ``data.columns``."""
    if not path:
        raise QAExpError(
            f"{key} is not set: data=files needs data.train_file=PATH and "
            "data.validation_file=PATH (JSON Lines, CSV or Parquet files)."
        )
    file = Path(path).expanduser().resolve()
    builder = FILE_BUILDERS.get(file.suffix.lower())
    if builder is None:
        raise QAExpError(
            f"{key}={path}: unknown file type {file.suffix!r}; data=files reads "
            f"{', '.join(FILE_BUILDERS)} (JSON Lines, CSV, Parquet)."
        )
    if not file.is_file():
        raise QAExpError(f"{key}={path}: no such file ({file}).")
    try:
        loaded = datasets.load_dataset(
            builder, data_files=str(file), split="train", cache_dir=cfg.cache_dir
        )
    except (datasets.exceptions.DatasetGenerationError, ValueError, OSError, StopIteration) as err:
        # A file without a single record: datasets finds no rows (csv) or no schema (json).
        if isinstance(err, StopIteration) or "corresponds to no data" in str(err):
            raise QAExpError(f"{key}={path} holds no questions.") from err
        raise QAExpError(
            f"{key}={path}: `datasets` could not read it as {builder} "
            f"({type(err).__name__}: {str(err)[:300]}). Check the file's format."
        ) from err
    if "data" in loaded.column_names and cfg.columns.question not in loaded.column_names:
        raise QAExpError(
            f'{key}={path} is an official nested SQuAD JSON file ({{"data": [...]}}): '
            "use data=squad_json for it; data=files reads flat records, one per question."
        )
    return to_squad_schema(loaded, cfg.columns, f"{key}={path}")


def _mapped_columns(columns: ColumnsConfig) -> dict[str, str | None]:
    """The columns a flat dataset must have: context, question and the answer column(s)."""
    if columns.answer_text:
        answers = {"answer_text": columns.answer_text, "answer_start": columns.answer_start}
    else:
        answers = {"answers": columns.answers}
    return {"context": columns.context, "question": columns.question, **answers}


def to_squad_schema(
    dataset: datasets.Dataset, columns: ColumnsConfig, where: str
) -> datasets.Dataset:
    """`dataset` with its mapped columns renamed, converted and cast to SQUAD_FEATURES."""
    if len(dataset) == 0:
        raise QAExpError(f"{where} holds no questions.")
    absent = [
        f"data.columns.{name}={column}"
        if column
        else f"data.columns.{name} (needed with data.columns.answer_text)"
        for name, column in _mapped_columns(columns).items()
        if column not in dataset.column_names
    ]
    if absent:
        raise QAExpError(
            f"{where}: no column for {', '.join(absent)}. Its columns are "
            f"{dataset.column_names}; map them with data.columns.id/title/context/question/"
            "answers, or data.columns.answer_text + data.columns.answer_start for answers in "
            "two flat columns."
        )
    return dataset.map(
        _squad_batch,
        batched=True,
        remove_columns=dataset.column_names,
        features=SQUAD_FEATURES,
        with_indices=True,
        fn_kwargs={"columns": columns, "names": dataset.column_names, "where": where},
        desc="squad schema",
    )


def _as_list(value: object) -> list:
    """A flat answer cell as a list: None or "" -> [], a scalar -> [it], a list as it is."""
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _nested_answers(value: object, where: str, row: int) -> tuple[list, list]:
    """(texts, starts) of a nested answers cell: {text: [...], answer_start: [...]}, or a list
    of {text, answer_start} records as in the official JSON."""
    if value is None:
        return [], []
    if isinstance(value, dict):
        return _as_list(value.get("text")), _as_list(value.get("answer_start"))
    if isinstance(value, list) and all(isinstance(a, dict) for a in value):
        return [a.get("text") for a in value], [a.get("answer_start") for a in value]
    raise QAExpError(
        f"{where}: row {row}'s answers are {type(value).__name__} {str(value)[:80]!r}, not "
        "{text: [...], answer_start: [...]}. A CSV cannot nest them: give the answer in two "
        "columns and set data.columns.answer_text=NAME data.columns.answer_start=NAME."
    )


def _squad_batch(
    batch: dict, indices: list[int], columns: ColumnsConfig, names: list[str], where: str
) -> dict:
    """One batch of mapped records in the squad schema (Dataset.map, batched)."""
    size = len(indices)
    if columns.answer_text:
        texts = [_as_list(v) for v in batch[columns.answer_text]]
        starts = [_as_list(v) for v in batch[columns.answer_start]]
    else:
        pairs = [
            _nested_answers(v, where, i)
            for v, i in zip(batch[columns.answers], indices, strict=True)
        ]
        texts, starts = [p[0] for p in pairs], [p[1] for p in pairs]
    if "is_impossible" in names:  # SQuAD v2.0 flag: such a question has no answer
        impossible = [bool(v) for v in batch["is_impossible"]]
        texts = [[] if no else t for t, no in zip(texts, impossible, strict=True)]
        starts = [[] if no else s for s, no in zip(starts, impossible, strict=True)]
    ids = batch[columns.id] if columns.id in names else indices
    titles = batch[columns.title] if columns.title in names else [""] * size
    return {
        "id": [str(i) for i in ids],
        "title": [t or "" for t in titles],
        "context": batch[columns.context],
        "question": batch[columns.question],
        "answers": [
            {"text": [str(x) for x in t], "answer_start": _starts(s, where, i)}
            for t, s, i in zip(texts, starts, indices, strict=True)
        ],
    }


def _starts(values: list, where: str, row: int) -> list[int]:
    try:
        return [int(x) for x in values]
    except (TypeError, ValueError) as err:
        raise QAExpError(
            f"{where}: row {row} has an answer start that is not an integer ({values!r:.80}); "
            "answer_start is the character offset of the answer in the context."
        ) from err


def materialise(generator, cache_dir: str | None, gen_kwargs: dict) -> datasets.Dataset:
    """The generator's records as a Dataset in the squad schema, materialised into the
    datasets cache; a cached copy that is damaged is rebuilt (qaexp.caches)."""
    from datasets.io.generator import GeneratorDatasetInputStream

    def build(fresh: bool) -> datasets.Dataset:
        stream = GeneratorDatasetInputStream(
            generator=generator, features=SQUAD_FEATURES, cache_dir=cache_dir, gen_kwargs=gen_kwargs
        )
        if fresh:
            shutil.rmtree(stream.builder.cache_dir, ignore_errors=True)
        return stream.read()

    return verified_dataset(build, f"data of {generator.__name__}({gen_kwargs})")
